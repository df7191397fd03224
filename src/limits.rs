//! The one bound on buffer sizes. No object can span more than `isize::MAX` bytes (Rust's slices
//! and C's pointer arithmetic both assume it), so a float32 buffer holds at most `MAX_FLOATS`
//! elements. Every size formed from caller input — a tensor length, the N × len of a per-sample
//! matrix, a DLPack shape's element count, the sum over all tensors — goes through `floats`
//! before any slice of that size is made or any memory is sized by it.

/// The most float32 elements one buffer can hold (`isize::MAX` bytes).
pub const MAX_FLOATS: usize = isize::MAX as usize / std::mem::size_of::<f32>();

/// `rows × len` as an element count, or `None` when that many floats cannot exist in one buffer
/// (the product overflows, or its bytes exceed `isize::MAX`).
pub fn floats(rows: usize, len: usize) -> Option<usize> {
    rows.checked_mul(len).filter(|&n| n <= MAX_FLOATS)
}

/// The element count of a shape (every dimension ≥ 0) as `floats` bounds it: `None` when the
/// product overflows or exceeds `MAX_FLOATS` (a product that wraps around 2^64 is never taken
/// for a small tensor).
pub fn shape_floats(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| floats(acc, usize::try_from(d).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_isize_max_bytes() {
        assert_eq!(floats(1, MAX_FLOATS), Some(MAX_FLOATS));
        assert_eq!(floats(1, MAX_FLOATS + 1), None);
        // N·len fits in usize, N·len·4 bytes does not fit in isize (issue 17: N = 2^61, len 5).
        assert_eq!(floats(1 << 61, 5), None);
        assert_eq!(floats(1 << 40, 1 << 22), None);
        assert_eq!(floats(usize::MAX, 2), None);
        assert_eq!(floats(0, usize::MAX), Some(0));
        assert_eq!(floats(1 << 20, 5), Some(5 << 20));
    }

    #[test]
    fn shapes_that_wrap_are_refused() {
        assert_eq!(shape_floats(&[]), Some(1));
        assert_eq!(shape_floats(&[2, 3]), Some(6));
        assert_eq!(shape_floats(&[0, i64::MAX]), Some(0));
        // 3 × 6148914691236517207 = 2^64 + 5: wraps to 5 in u64 arithmetic.
        assert_eq!(shape_floats(&[3, 6_148_914_691_236_517_207]), None);
        assert_eq!(shape_floats(&[1 << 32, 1 << 32, 5]), None);
        assert_eq!(shape_floats(&[1 << 61, 5]), None);
        assert_eq!(shape_floats(&[-1, 5]), None);
    }
}

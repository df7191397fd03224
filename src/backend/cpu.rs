//! CPU kernels: single-pass fused elementwise updates, and reductions accumulated in f64 over a
//! fixed number of lanes (so the order of additions, and hence the bits, never depend on the
//! machine or thread count, and the lanes let the compiler vectorise).
//!
//! Per-element state is stored interleaved (`S` = `()`, `f32` or `[f32; 2]`), so one slice walk
//! touches each element's state once.

/// Independent f64 accumulators per reduction; fixed, so results are reproducible bit for bit.
pub const LANES: usize = 8;

/// Element-wise state of an algorithm: how many f32 values each parameter element carries.
pub trait ElemState: Copy + Default + Send + Sync + 'static {
    const FLOATS: usize;
    fn write(&self, out: &mut Vec<f32>);
    fn read(values: &[f32]) -> Self;
}

impl ElemState for () {
    const FLOATS: usize = 0;
    fn write(&self, _: &mut Vec<f32>) {}
    fn read(_: &[f32]) -> Self {}
}

impl ElemState for f32 {
    const FLOATS: usize = 1;
    fn write(&self, out: &mut Vec<f32>) {
        out.push(*self);
    }
    fn read(values: &[f32]) -> Self {
        values[0]
    }
}

impl ElemState for [f32; 2] {
    const FLOATS: usize = 2;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(self);
    }
    fn read(values: &[f32]) -> Self {
        [values[0], values[1]]
    }
}

/// Flattens element states to floats (checkpoints).
pub fn states_to_floats<S: ElemState>(states: &[S]) -> Vec<f32> {
    let mut out = Vec::with_capacity(states.len() * S::FLOATS);
    states.iter().for_each(|s| s.write(&mut out));
    out
}

pub fn states_from_floats<S: ElemState>(floats: &[f32], len: usize) -> Vec<S> {
    if S::FLOATS == 0 {
        return vec![S::default(); len];
    }
    floats.chunks_exact(S::FLOATS).map(S::read).collect()
}

/// One fused pass: `delta = step(g, θ, &mut state)`, then `θ ← θ − delta`.
#[inline]
pub fn update<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], step: F) {
    assert!(param.len() == grad.len() && state.len() == param.len(), "update: buffer lengths differ");
    for ((theta, &g), st) in param.iter_mut().zip(grad).zip(state.iter_mut()) {
        *theta -= step(g, *theta, st);
    }
}

/// Advances the state as `update` would, leaves θ alone, and returns `Σ g·delta` (f64, lanes).
#[inline]
pub fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
    assert!(param.len() == grad.len() && state.len() == param.len(), "advance_dot: buffer lengths differ");
    let mut lanes = [0.0f64; LANES];
    let mut chunks = param.chunks_exact(LANES).zip(grad.chunks_exact(LANES)).zip(state.chunks_exact_mut(LANES));
    for ((p, g), st) in &mut chunks {
        for k in 0..LANES {
            lanes[k] += f64::from(g[k]) * f64::from(step(g[k], p[k], &mut st[k]));
        }
    }
    let tail = param.len() - param.len() % LANES;
    for i in tail..param.len() {
        lanes[i - tail] += f64::from(grad[i]) * f64::from(step(grad[i], param[i], &mut state[i]));
    }
    sum_lanes(&lanes)
}

/// `θ ← θ − scale·delta`, with delta recomputed from the (already advanced) state.
#[inline]
pub fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
    assert!(param.len() == grad.len() && state.len() == param.len(), "apply_scaled: buffer lengths differ");
    for ((theta, &g), st) in param.iter_mut().zip(grad).zip(state) {
        *theta -= scale * delta(g, *theta, st);
    }
}

/// Adds lanes in a fixed order.
#[inline]
pub fn sum_lanes(lanes: &[f64; LANES]) -> f64 {
    // Pairwise, so the error grows with log(LANES) rather than LANES.
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// `K` reductions at once over `0..len`: `Σ_i f(i)[k]`, each in f64 lanes.
#[inline]
pub fn reduce<const K: usize, F: FnMut(usize) -> [f64; K]>(len: usize, mut f: F) -> [f64; K] {
    let mut lanes = [[0.0f64; LANES]; K];
    let full = len - len % LANES;
    let mut i = 0;
    while i < full {
        for lane in 0..LANES {
            let v = f(i + lane);
            for k in 0..K {
                lanes[k][lane] += v[k];
            }
        }
        i += LANES;
    }
    for j in full..len {
        let v = f(j);
        for k in 0..K {
            lanes[k][j - full] += v[k];
        }
    }
    let mut out = [0.0; K];
    for k in 0..K {
        out[k] = sum_lanes(&lanes[k]);
    }
    out
}

/// `Σ a_i b_i` in f64 lanes.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    reduce::<1, _>(a.len(), |i| [f64::from(a[i]) * f64::from(b[i])])[0]
}

/// True when every element is finite; a vectorisable pass (no early exit).
pub fn all_finite(x: &[f32]) -> bool {
    // A float is finite iff its exponent bits are not all ones; OR-reduce a flag per element.
    x.chunks(1024).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// Index of the first non-finite element (for the error message; called only on failure).
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| !v.is_finite())
}

/// Index of the first negative element.
pub fn first_negative(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| *v < 0.0)
}

/// Columns handled per block when a per-sample matrix is reduced: the block's rows stay in cache
/// while every row is visited, so the matrix is read from memory once.
pub const COLUMN_BLOCK: usize = 1024;

/// Per-sample spread of one block of columns `[start, start + out.len())`:
/// `out[j] = Σ_i (k·x_ij)² − N·center_j²` (with `k·x_ij` the per-sample value and `N` rows),
/// computed as `Σ_i dev² + 2·center·Σ_i dev` with `dev = k·x_ij − center_j`, so that a mean
/// gradient much larger than the spread does not cancel the spread away (f64 throughout).
/// With `center = 0` it is the plain sum of squares `S`.
pub fn spread_from_rows(rows: &[f32], n_rows: usize, len: usize, start: usize, k: f64, center: &[f32], out: &mut [f64]) {
    let width = out.len();
    assert!(rows.len() == n_rows * len && start + width <= len && center.len() == width, "spread_from_rows: bad block");
    let mut sum_dev = [0.0f64; COLUMN_BLOCK];
    let sum_dev = &mut sum_dev[..width];
    out.iter_mut().for_each(|o| *o = 0.0);
    for row in rows.chunks_exact(len) {
        for (((x, c), sq), s) in row[start..start + width].iter().zip(center).zip(out.iter_mut()).zip(sum_dev.iter_mut()) {
            let dev = k * f64::from(*x) - f64::from(*c);
            *sq += dev * dev;
            *s += dev;
        }
    }
    for ((o, s), c) in out.iter_mut().zip(sum_dev.iter()).zip(center) {
        *o += 2.0 * f64::from(*c) * s;
    }
}

/// The same spread from the vector `S = Σ_i x_i²` (entries scaled by `k²`):
/// `out[j] = k²·S_j − N·center_j²`, in f64. Its precision is bounded by the caller's float32 `S`.
pub fn spread_from_sum_sq(sum_sq: &[f32], n_rows: usize, k: f64, center: &[f32], out: &mut [f64]) {
    let (k2, n) = (k * k, n_rows as f64);
    for ((o, s), c) in out.iter_mut().zip(sum_sq).zip(center) {
        *o = k2 * f64::from(*s) - n * f64::from(*c) * f64::from(*c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_is_independent_of_tail_handling() {
        let a: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let naive: f64 = a.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
        let lanes = dot(&a, &a);
        assert!((naive - lanes).abs() <= 1e-12 * naive, "{naive} vs {lanes}");
    }

    #[test]
    fn advance_dot_matches_update() {
        let grad: Vec<f32> = (0..37).map(|i| i as f32 - 10.0).collect();
        let mut p1 = vec![1.0f32; 37];
        let mut s1 = vec![0.5f32; 37];
        let mut s2 = s1.clone();
        update(&mut p1, &grad, &mut s1, |g, _, s| {
            *s = 0.9 * *s + g;
            0.1 * *s
        });
        let d = advance_dot(&vec![1.0f32; 37], &grad, &mut s2, |g, _, s| {
            *s = 0.9 * *s + g;
            0.1 * *s
        });
        assert_eq!(s1, s2);
        let expected: f64 = grad.iter().zip(&p1).map(|(g, p)| f64::from(*g) * f64::from(1.0 - *p)).sum();
        assert!((d - expected).abs() < 1e-4 * expected.abs());
    }

    #[test]
    fn spread_forms_agree_and_resist_cancellation() {
        // 3 samples of 2 columns: large common mean, small spread.
        let rows = [1000.0f32, 1.0, 1000.5, 2.0, 999.5, 3.0];
        let center = [1000.0f32, 2.0];
        let mut from_rows = [0.0f64; 2];
        spread_from_rows(&rows, 3, 2, 0, 1.0, &center, &mut from_rows);
        assert_eq!(from_rows, [0.5, 2.0]);
        let sum_sq = [1000.0f32 * 1000.0 + 1000.5 * 1000.5 + 999.5 * 999.5, 14.0];
        let mut from_sum_sq = [0.0f64; 2];
        spread_from_sum_sq(&sum_sq, 3, 1.0, &center, &mut from_sum_sq);
        assert!((from_sum_sq[1] - 2.0).abs() < 1e-12);
        // scale k: rows given as x/N (BackPACK's mean convention) with k = N recover the same spread
        let scaled: Vec<f32> = rows.iter().map(|x| x / 4.0).collect();
        let mut from_scaled = [0.0f64; 2];
        spread_from_rows(&scaled, 3, 2, 0, 4.0, &center, &mut from_scaled);
        assert_eq!(from_scaled, from_rows);
    }

    #[test]
    fn finiteness() {
        assert!(all_finite(&[1.0, 2.0]));
        assert!(!all_finite(&[1.0, f32::NAN]));
        assert_eq!(first_non_finite(&[1.0, 2.0, f32::INFINITY]), Some(2));
    }
}

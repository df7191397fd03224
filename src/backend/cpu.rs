//! CPU kernels: single-pass fused elementwise updates, and reductions accumulated in f64 over a
//! fixed number of lanes (so the order of additions, and hence the bits, never depend on the
//! machine or thread count, and the lanes let the compiler vectorise).
//!
//! Per-element state is stored interleaved (`S` = `()`, `f32` or `[f32; 2]`), so one slice walk
//! touches each element's state once.

/// Independent f64 accumulators per reduction; fixed, so results are reproducible bit for bit.
pub const LANES: usize = 8;

/// Whether the AVX2 kernels run: the CPU has AVX2 and `AUTOLR_PORTABLE` is not set (read once).
#[cfg(target_arch = "x86_64")]
fn use_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::env::var_os("AUTOLR_PORTABLE").is_none())
}

/// Runs a kernel compiled for AVX2 when the CPU has it, else the portable build of the same
/// code. Both give the same bits: the operations and their order are identical (no FMA
/// contraction; square root and division are correctly rounded at any vector width), only the
/// vector width changes. `AUTOLR_PORTABLE=1` in the environment forces the portable build (the
/// tests use it to check that claim on whole runs).
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if use_avx2() {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { avx2::$kernel($($arg),*) };
            }
        }
        kernels::$kernel($($arg),*)
    }};
}

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

/// `n` copies of `value`, or an error — not a process abort — when the memory cannot be had.
pub fn filled<T: Clone>(n: usize, value: T) -> crate::error::Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        crate::error::Error::invalid(format!(
            "cannot allocate the optimizer's state for a tensor of {n} elements ({} bytes each)",
            std::mem::size_of::<T>()
        ))
    })?;
    v.resize(n, value);
    Ok(v)
}

/// One `filled` vector per tensor.
pub fn filled_per_tensor<T: Clone>(lens: &[usize], value: T) -> crate::error::Result<Vec<Vec<T>>> {
    lens.iter().map(|&n| filled(n, value.clone())).collect()
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
    dispatch!(update(param, grad, state, step))
}

/// Advances the state as `update` would, leaves θ alone, and returns `Σ g·delta` (f64, lanes).
#[inline]
pub fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
    assert!(param.len() == grad.len() && state.len() == param.len(), "advance_dot: buffer lengths differ");
    dispatch!(advance_dot(param, grad, state, step))
}

/// `θ ← θ − scale·delta`, with delta recomputed from the (already advanced) state.
#[inline]
pub fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
    assert!(param.len() == grad.len() && state.len() == param.len(), "apply_scaled: buffer lengths differ");
    dispatch!(apply_scaled(param, grad, state, scale, delta))
}

/// The weighted inner products of AutoOpt-style solves, in f64 lanes:
/// `[Σ w s, Σ w x x, Σ w x y, Σ w y y]`.
#[inline]
pub fn weighted_moments(w: &[f32], x: &[f32], y: &[f32], s: &[f32]) -> [f64; 4] {
    assert!(w.len() == x.len() && x.len() == y.len() && y.len() == s.len(), "weighted_moments: lengths differ");
    dispatch!(weighted_moments(w, x, y, s))
}

/// `(a[i], b[i]) = f(&state[i], x[i])` over a block: elementwise work feeding a reduction.
#[inline]
pub fn map_pairs<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], a: &mut [f32], b: &mut [f32], f: F) {
    assert!(state.len() == x.len() && x.len() == a.len() && a.len() == b.len(), "map_pairs: lengths differ");
    dispatch!(map_pairs(state, x, a, b, f))
}

/// True when every element is finite (a vectorised pass, no early exit).
#[inline]
pub fn all_finite(x: &[f32]) -> bool {
    dispatch!(all_finite(x))
}

/// The loops themselves, written so the compiler vectorises them: elementwise work in f32, then
/// f64 accumulation over `LANES` fixed lanes.
mod kernels {
    use super::{sum_lanes, LANES};

    /// A `LANES`-long chunk as an array, so indexing it needs no bounds checks.
    #[inline(always)]
    fn lanes_of<T>(chunk: &[T]) -> &[T; LANES] {
        chunk.try_into().expect("chunks_exact yields LANES elements")
    }

    #[inline(always)]
    pub fn update<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], step: F) {
        for ((theta, &g), st) in param.iter_mut().zip(grad).zip(state.iter_mut()) {
            *theta -= step(g, *theta, st);
        }
    }

    #[inline(always)]
    pub fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
        let mut lanes = [0.0f64; LANES];
        let mut chunks = param.chunks_exact(LANES).zip(grad.chunks_exact(LANES)).zip(state.chunks_exact_mut(LANES));
        for ((p, g), st) in &mut chunks {
            let (p, g): (&[f32; LANES], &[f32; LANES]) = (lanes_of(p), lanes_of(g));
            let mut delta = [0.0f32; LANES];
            for k in 0..LANES {
                delta[k] = step(g[k], p[k], &mut st[k]);
            }
            for k in 0..LANES {
                lanes[k] += f64::from(g[k]) * f64::from(delta[k]);
            }
        }
        let tail = param.len() - param.len() % LANES;
        for i in tail..param.len() {
            lanes[i - tail] += f64::from(grad[i]) * f64::from(step(grad[i], param[i], &mut state[i]));
        }
        sum_lanes(&lanes)
    }

    #[inline(always)]
    pub fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
        for ((theta, &g), st) in param.iter_mut().zip(grad).zip(state) {
            *theta -= scale * delta(g, *theta, st);
        }
    }

    #[inline(always)]
    pub fn weighted_moments(w: &[f32], x: &[f32], y: &[f32], s: &[f32]) -> [f64; 4] {
        // Each product in f32 (relative error 1e-7, far below what the solve needs), each sum in f64.
        let mut lanes = [[0.0f64; LANES]; 4];
        let full = w.len() - w.len() % LANES;
        let chunks = w[..full].chunks_exact(LANES).zip(x[..full].chunks_exact(LANES)).zip(y[..full].chunks_exact(LANES)).zip(s[..full].chunks_exact(LANES));
        for (((w, x), y), s) in chunks {
            let (w, x, y, s) = (lanes_of(w), lanes_of(x), lanes_of(y), lanes_of(s));
            // All products of the chunk first, as plain f32 vectors, then the widening sums.
            let mut products = [[0.0f32; LANES]; 4];
            for k in 0..LANES {
                let (wx, wy) = (w[k] * x[k], w[k] * y[k]);
                products[0][k] = w[k] * s[k];
                products[1][k] = wx * x[k];
                products[2][k] = wx * y[k];
                products[3][k] = wy * y[k];
            }
            for (lane, product) in lanes.iter_mut().zip(&products) {
                for k in 0..LANES {
                    lane[k] += f64::from(product[k]);
                }
            }
        }
        finish_moments(lanes, &w[full..], &x[full..], &y[full..], &s[full..])
    }

    /// Adds the tail (fewer than `LANES` elements) into the first lanes and sums the lanes.
    #[inline(always)]
    pub fn finish_moments(mut lanes: [[f64; LANES]; 4], w: &[f32], x: &[f32], y: &[f32], s: &[f32]) -> [f64; 4] {
        for i in 0..w.len() {
            let (wx, wy) = (w[i] * x[i], w[i] * y[i]);
            lanes[0][i] += f64::from(w[i] * s[i]);
            lanes[1][i] += f64::from(wx * x[i]);
            lanes[2][i] += f64::from(wx * y[i]);
            lanes[3][i] += f64::from(wy * y[i]);
        }
        lanes.map(|l| sum_lanes(&l))
    }

    #[inline(always)]
    pub fn map_pairs<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], a: &mut [f32], b: &mut [f32], f: F) {
        for (((st, &xi), ai), bi) in state.iter().zip(x).zip(a.iter_mut()).zip(b.iter_mut()) {
            (*ai, *bi) = f(st, xi);
        }
    }

    #[inline(always)]
    pub fn accumulate_deviations(values: &[f32], center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
        for (((v, c), sq), dev) in values.iter().zip(center).zip(sum_sq.iter_mut()).zip(sum_dev.iter_mut()) {
            let d = v - c;
            *sq += d * d;
            *dev += d;
        }
    }

    #[inline(always)]
    pub fn all_finite(x: &[f32]) -> bool {
        // v − v is 0 for a finite v and NaN for NaN or ±Inf; NaN then survives every addition.
        let mut acc = [0.0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for k in 0..16 {
                acc[k] += c[k] - c[k];
            }
        }
        for (k, v) in chunks.remainder().iter().enumerate() {
            acc[k] += v - v;
        }
        acc.iter().all(|a| *a == 0.0)
    }
}

/// The same kernels compiled with AVX2 enabled.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::kernels;

    #[target_feature(enable = "avx2")]
    pub unsafe fn update<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], step: F) {
        kernels::update(param, grad, state, step)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
        kernels::advance_dot(param, grad, state, step)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
        kernels::apply_scaled(param, grad, state, scale, delta)
    }

    /// Written with intrinsics: the compiler's own vectorisation of the portable loop shuffles
    /// lanes and runs at half of memory speed. Same operations, same per-lane order as
    /// `kernels::weighted_moments`, so the same bits.
    #[target_feature(enable = "avx2")]
    pub unsafe fn weighted_moments(w: &[f32], x: &[f32], y: &[f32], s: &[f32]) -> [f64; 4] {
        use std::arch::x86_64::*;
        const _: () = assert!(super::LANES == 8, "one __m256 of f32 per chunk");
        let full = w.len() - w.len() % 8;
        // lanes[j] = (elements 0..4, elements 4..8) of sum j, as in the portable kernel.
        let mut lanes = [[_mm256_setzero_pd(); 2]; 4];
        let mut i = 0;
        while i < full {
            let (wv, xv) = (_mm256_loadu_ps(w.as_ptr().add(i)), _mm256_loadu_ps(x.as_ptr().add(i)));
            let (yv, sv) = (_mm256_loadu_ps(y.as_ptr().add(i)), _mm256_loadu_ps(s.as_ptr().add(i)));
            let (wx, wy) = (_mm256_mul_ps(wv, xv), _mm256_mul_ps(wv, yv));
            let products = [_mm256_mul_ps(wv, sv), _mm256_mul_ps(wx, xv), _mm256_mul_ps(wx, yv), _mm256_mul_ps(wy, yv)];
            for (lane, product) in lanes.iter_mut().zip(products) {
                lane[0] = _mm256_add_pd(lane[0], _mm256_cvtps_pd(_mm256_castps256_ps128(product)));
                lane[1] = _mm256_add_pd(lane[1], _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(product)));
            }
            i += 8;
        }
        let mut out = [[0.0f64; 8]; 4];
        for (o, lane) in out.iter_mut().zip(lanes) {
            _mm256_storeu_pd(o.as_mut_ptr(), lane[0]);
            _mm256_storeu_pd(o.as_mut_ptr().add(4), lane[1]);
        }
        kernels::finish_moments(out, &w[full..], &x[full..], &y[full..], &s[full..])
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn map_pairs<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], a: &mut [f32], b: &mut [f32], f: F) {
        kernels::map_pairs(state, x, a, b, f)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn accumulate_deviations(values: &[f32], center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
        kernels::accumulate_deviations(values, center, sum_sq, sum_dev)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn all_finite(x: &[f32]) -> bool {
        kernels::all_finite(x)
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

/// Index of the first non-finite element (for the error message; called only on failure).
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| !v.is_finite())
}

/// True when no element is negative (NaN passes: finiteness is checked separately).
pub fn all_non_negative(x: &[f32]) -> bool {
    x.chunks(4096).all(|c| c.iter().fold(true, |ok, v| ok & !(*v < 0.0)))
}

/// Index of the first negative element.
pub fn first_negative(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| *v < 0.0)
}

/// Columns handled per block when a per-sample matrix is reduced: the block's rows stay in cache
/// while every row is visited, so the matrix is read from memory once.
pub const COLUMN_BLOCK: usize = 4096;

/// Per-sample spread of one block of columns `[start, start + out.len())`:
/// `out[j] = Σ_i (k·x_ij)² − N·center_j²` (with `k·x_ij` the per-sample value and `N` rows),
/// computed as `Σ_i dev² + 2·center·Σ_i dev` with `dev = k·x_ij − center_j`, so that a mean
/// gradient much larger than the spread does not cancel the spread away. With `center = 0` it
/// is the plain sum of squares `S`.
pub fn spread_from_rows(rows: &[f32], n_rows: usize, len: usize, start: usize, k: f64, center: &[f32], out: &mut [f64]) {
    let width = out.len();
    assert!(rows.len() == n_rows * len && start + width <= len && center.len() == width, "spread_from_rows: bad block");
    // Per row in f32: dev = k·x − c is exact when k·x and c are close (Sterbenz), which is
    // exactly when the spread is small; the sums over N rows add only N·ε relative error.
    // Heap scratch, not the stack: a host thread may have a small stack.
    let (mut sum_sq, mut sum_dev, mut scaled) = (vec![0.0f32; width], vec![0.0f32; width], vec![0.0f32; width]);
    let k = k as f32;
    for row in rows.chunks_exact(len) {
        let row = &row[start..start + width];
        if k == 1.0 {
            accumulate_deviations(row, center, &mut sum_sq, &mut sum_dev);
        } else {
            scaled.iter_mut().zip(row).for_each(|(s, x)| *s = k * x);
            accumulate_deviations(&scaled, center, &mut sum_sq, &mut sum_dev);
        }
    }
    for (((o, sq), dev), c) in out.iter_mut().zip(sum_sq.iter()).zip(sum_dev.iter()).zip(center) {
        *o = f64::from(*sq) + 2.0 * f64::from(*c) * f64::from(*dev);
    }
}

#[inline]
fn accumulate_deviations(values: &[f32], center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
    dispatch!(accumulate_deviations(values, center, sum_sq, sum_dev))
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
        let lanes = reduce::<1, _>(a.len(), |i| [f64::from(a[i]) * f64::from(a[i])])[0];
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
    fn weighted_moments_same_bits_on_every_path() {
        let n = 1003;
        let v = |k: u32| (0..n).map(|i| ((i as u32 * 2654435761u32 ^ k) >> 9) as f32 / 8_388_608.0 - 0.7).collect::<Vec<f32>>();
        let (w, x, y, s) = (v(1), v(2), v(3), v(4));
        let portable = kernels::weighted_moments(&w, &x, &y, &s);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked).
            let vectorised = unsafe { avx2::weighted_moments(&w, &x, &y, &s) };
            assert_eq!(portable.map(f64::to_bits), vectorised.map(f64::to_bits));
        }
        let naive: f64 = w.iter().zip(&s).map(|(a, b)| f64::from(a * b)).sum();
        assert!((portable[0] - naive).abs() < 1e-9 * naive.abs().max(1.0));
    }

    #[test]
    fn finiteness() {
        assert!(all_finite(&[1.0, 2.0]));
        assert!(!all_finite(&[1.0, f32::NAN]));
        assert_eq!(first_non_finite(&[1.0, 2.0, f32::INFINITY]), Some(2));
    }
}

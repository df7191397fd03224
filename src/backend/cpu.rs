//! CPU kernels: single-pass fused elementwise updates, and reductions accumulated in f64 over a
//! fixed number of lanes (so the order of additions, and hence the bits, never depend on the
//! machine or thread count, and the lanes let the compiler vectorise).
//!
//! Per-element state is stored interleaved (`S` = `()`, `f32` or `[f32; 2]`), so one slice walk
//! touches each element's state once.

/// Independent f64 accumulators per reduction; fixed, so results are reproducible bit for bit.
pub const LANES: usize = 8;

/// Which build of the kernels runs.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Build {
    Portable,
    Avx2,
    Avx512,
}

/// The widest build the CPU runs, or the portable one when `AUTOLR_PORTABLE` is set (read once).
#[cfg(target_arch = "x86_64")]
fn build() -> Build {
    static BUILD: std::sync::OnceLock<Build> = std::sync::OnceLock::new();
    *BUILD.get_or_init(|| {
        if std::env::var_os("AUTOLR_PORTABLE").is_some() {
            Build::Portable
        } else if std::arch::is_x86_feature_detected!("avx512f") {
            Build::Avx512
        } else if std::arch::is_x86_feature_detected!("avx2") {
            Build::Avx2
        } else {
            Build::Portable
        }
    })
}

/// Runs a kernel compiled for AVX-512 or AVX2 when the CPU has it, else the portable build of
/// the same code. All give the same bits: the operations and their order are identical (no FMA
/// contraction; square root and division are correctly rounded at any vector width), only the
/// vector width changes. `AUTOLR_PORTABLE=1` in the environment forces the portable build (the
/// tests use it to check that claim on whole runs; `kernels_give_the_same_bits_in_every_build`
/// checks it kernel by kernel).
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match build() {
                // SAFETY: the CPU supports AVX-512F (checked by `build`).
                Build::Avx512 => return unsafe { avx512::$kernel($($arg),*) },
                // SAFETY: the CPU supports AVX2 (checked by `build`).
                Build::Avx2 => return unsafe { avx2::$kernel($($arg),*) },
                Build::Portable => {}
            }
        }
        kernels::$kernel($($arg),*)
    }};
}

pub use super::ElemState;
use super::{
    refuse_assigning, Commit, Communicator, Deferred, Device, DotRule, ElementRule, KernelRule, Memory, MomentRule, NestedRule, Record, ReduceOp, ReduceValues,
    SampleTensor, SampleView, SampledRule, SolveRule, Tensor, TensorMut,
};
use crate::error::{Error, Result};

pub use super::filled;

/// One `filled` vector per tensor.
pub fn filled_per_tensor<T: Clone>(lens: &[usize], value: T) -> crate::error::Result<Vec<Vec<T>>> {
    let mut out = filled(lens.len(), Vec::new())?;
    for (slot, &n) in out.iter_mut().zip(lens) {
        *slot = filled(n, value.clone())?;
    }
    Ok(out)
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

/// One fused pass that sets each element: `θ ← next(g, θ, &mut state)`.
#[inline]
pub fn assign<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], next: F) {
    assert!(param.len() == grad.len() && state.len() == param.len(), "assign: buffer lengths differ");
    dispatch!(assign(param, grad, state, next))
}

/// One fused pass of a nested rule: `θ ← next(g, θ, &mut z, &mut state)`, two state buffers
/// (the rule's own variable and its inner rule's state) walked beside θ and g.
#[inline]
pub fn nested<S: Copy, F: Fn(f32, f32, &mut f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], z: &mut [f32], state: &mut [S], next: F) {
    assert!(param.len() == grad.len() && z.len() == param.len() && state.len() == param.len(), "nested: buffer lengths differ");
    dispatch!(nested(param, grad, z, state, next))
}

/// `update` over contiguous parts of the elements on up to `threads()` workers, when the pass
/// touches at least `FLOATS_PER_THREAD` floats per worker (else on the calling thread alone).
/// Each element is computed exactly as `update` computes it, so the bits do not depend on the
/// split. For a pass that follows a threaded reduction over data too large for the caches
/// (AutoOpt's pass 2): one core does not reach the memory bandwidth that two do.
pub fn update_in_parts<S: Copy + Send, F: Fn(f32, f32, &mut S) -> f32 + Sync>(param: &mut [f32], grad: &[f32], state: &mut [S], step: F) {
    assert!(param.len() == grad.len() && state.len() == param.len(), "update: buffer lengths differ");
    let floats = param.len() * (2 + std::mem::size_of::<S>() / 4);
    let workers = threads().min(floats / FLOATS_PER_THREAD).max(1);
    let part = param.len().div_ceil(workers).max(1);
    let parts = param.chunks_mut(part).zip(grad.chunks(part)).zip(state.chunks_mut(part));
    on_workers(parts, |((p, g), st)| update(p, g, st, &step));
}

/// Advances the state as `update` would, leaves θ alone, and returns `Σ g·delta` (f64, lanes).
#[inline]
pub fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
    assert!(param.len() == grad.len() && state.len() == param.len(), "advance_dot: buffer lengths differ");
    dispatch!(advance_dot(param, grad, state, step))
}

/// `θ ← next(g, θ, &mut state)` per element, returning `Σ w·(θ − θ')` (f64, lanes; the
/// difference formed in f64, where it is exact).
#[inline]
pub fn assign_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], weight: &[f32], state: &mut [S], next: F) -> f64 {
    assert!(param.len() == grad.len() && weight.len() == param.len() && state.len() == param.len(), "assign_dot: buffer lengths differ");
    dispatch!(assign_dot(param, grad, weight, state, next))
}

/// `θ ← θ − scale·delta`, with delta recomputed from the (already advanced) state.
#[inline]
pub fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
    assert!(param.len() == grad.len() && state.len() == param.len(), "apply_scaled: buffer lengths differ");
    dispatch!(apply_scaled(param, grad, state, scale, delta))
}

/// `[Σ_i x_i, Σ_i y_i]` with `[x_i, y_i] = dot(g_i, θ_i, &mut state_i)`, in f64 lanes (the
/// reduction passes of the peers, docs/algorithms.md §6); the advanced states are stored back
/// only with `write` (a pass that only reads its state then writes nothing to memory).
#[inline]
pub fn dot_pass<S: Copy, F: Fn(f32, f32, &mut S) -> [f64; 2]>(param: &[f32], grad: &[f32], state: &mut [S], write: bool, dot: F) -> [f64; 2] {
    assert!(param.len() == state.len() && grad.len() == state.len(), "dot_pass: lengths differ");
    dispatch!(dot_pass(param, grad, state, write, dot))
}

/// The weighted inner products of AutoOpt-style solves, with the weight `w` and the second
/// vector `y` formed per element as `(w, y) = f(&state[i], x[i])`:
/// `[Σ w s, Σ w x x, Σ w x y, Σ w y y]`, and whether any `s` is negative.
///
/// Each product is rounded to f32 and `CHUNKS_PER_WIDENING` of them are summed in f32 (relative
/// error ~4·2⁻²⁴, far below what the solve needs) before one widening add into f64 lanes: the
/// widening adds, not memory, bound this loop when every product is widened.
#[inline]
pub fn weighted_moments<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], s: &[f32], f: F) -> ([f64; 4], bool) {
    assert!(state.len() == x.len() && x.len() == s.len(), "weighted_moments: lengths differ");
    dispatch!(weighted_moments(state, x, s, f))
}

/// Chunks of `LANES` products summed in f32 before they are widened (see `weighted_moments`).
const CHUNKS_PER_WIDENING: usize = 4;
/// Elements per widening step.
const GROUP: usize = LANES * CHUNKS_PER_WIDENING;

/// True when every element is finite (a vectorised pass, no early exit).
#[inline]
pub fn all_finite(x: &[f32]) -> bool {
    dispatch!(all_finite(x))
}

/// The loops themselves, written so the compiler vectorises them: elementwise work in f32, then
/// f64 accumulation over `LANES` fixed lanes.
// Indexed loops over fixed-size lanes are what vectorise here (iterator chains over several
// arrays did not).
#[allow(clippy::needless_range_loop)]
mod kernels {
    use super::{sum_lanes, SpreadValue, CHUNKS_PER_WIDENING, COLUMNS_AT_ONCE, GROUP, LANES};

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
    pub fn assign<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], next: F) {
        for ((theta, &g), st) in param.iter_mut().zip(grad).zip(state.iter_mut()) {
            *theta = next(g, *theta, st);
        }
    }

    #[inline(always)]
    pub fn nested<S: Copy, F: Fn(f32, f32, &mut f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], z: &mut [f32], state: &mut [S], next: F) {
        for (((theta, &g), z), st) in param.iter_mut().zip(grad).zip(z.iter_mut()).zip(state.iter_mut()) {
            *theta = next(g, *theta, z, st);
        }
    }

    /// Elements whose f64 products one loop forms before a second loop adds them into the
    /// lanes. The loop over a block vectorises a rule's arithmetic at the full vector width;
    /// a `LANES`-wide body, unrolled, is vectorised only in part for rules with a square root
    /// or a division (Adam's, Adagrad's, RMSprop's, AutoOpt's).
    const BLOCK: usize = 32 * LANES;

    /// `lanes[i % LANES] += values[i]`, in increasing i; `values` starts at an element whose
    /// index is a multiple of `LANES`.
    #[inline(always)]
    fn add_values(lanes: &mut [f64; LANES], values: &[f64]) {
        let mut sums = *lanes;
        let mut runs = values.chunks_exact(LANES);
        for run in &mut runs {
            let run = lanes_of(run);
            // A whole run's sum in one expression: one vector add (a `+=` per lane was kept
            // as eight scalar adds).
            sums = std::array::from_fn(|k| sums[k] + run[k]);
        }
        for (k, v) in runs.remainder().iter().enumerate() {
            sums[k] += v;
        }
        *lanes = sums;
    }

    #[inline(always)]
    pub fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
        let mut lanes = [0.0f64; LANES];
        let mut products = [0.0f64; BLOCK];
        for ((p, g), st) in param.chunks(BLOCK).zip(grad.chunks(BLOCK)).zip(state.chunks_mut(BLOCK)) {
            // Indexed over slices of one length: the form the loop vectoriser takes.
            let n = p.len();
            let (g, st, products) = (&g[..n], &mut st[..n], &mut products[..n]);
            for i in 0..n {
                products[i] = f64::from(g[i]) * f64::from(step(g[i], p[i], &mut st[i]));
            }
            add_values(&mut lanes, products);
        }
        sum_lanes(&lanes)
    }

    #[inline(always)]
    pub fn assign_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], weight: &[f32], state: &mut [S], next: F) -> f64 {
        let mut lanes = [0.0f64; LANES];
        let mut chunks = param.chunks_exact_mut(LANES).zip(grad.chunks_exact(LANES)).zip(weight.chunks_exact(LANES)).zip(state.chunks_exact_mut(LANES));
        for (((p, g), w), st) in &mut chunks {
            let (g, w): (&[f32; LANES], &[f32; LANES]) = (lanes_of(g), lanes_of(w));
            let p: &mut [f32; LANES] = p.try_into().expect("chunks_exact_mut yields LANES elements");
            for k in 0..LANES {
                let new = next(g[k], p[k], &mut st[k]);
                lanes[k] += f64::from(w[k]) * (f64::from(p[k]) - f64::from(new));
                p[k] = new;
            }
        }
        let tail = param.len() - param.len() % LANES;
        for i in tail..param.len() {
            let new = next(grad[i], param[i], &mut state[i]);
            lanes[i - tail] += f64::from(weight[i]) * (f64::from(param[i]) - f64::from(new));
            param[i] = new;
        }
        sum_lanes(&lanes)
    }

    /// Two sums of `dot(g, θ, &mut state)` in one pass, element i + lane in lane `lane` of its
    /// run of `LANES` (`reduce`'s order, so the same bits), a whole run at a time so that `dot`
    /// is vectorised across the lanes (indexing each buffer per element was not). The run's
    /// states are copied in and out whole: a state of two floats (Prodigy's s and p0) written
    /// in place field by field was stored one lane at a time.
    #[inline(always)]
    pub fn dot_pass<S: Copy, F: Fn(f32, f32, &mut S) -> [f64; 2]>(param: &[f32], grad: &[f32], state: &mut [S], write: bool, dot: F) -> [f64; 2] {
        let mut lanes = [[0.0f64; LANES]; 2];
        let mut chunks = param.chunks_exact(LANES).zip(grad.chunks_exact(LANES)).zip(state.chunks_exact_mut(LANES));
        for ((p, g), st) in &mut chunks {
            let (p, g): (&[f32; LANES], &[f32; LANES]) = (lanes_of(p), lanes_of(g));
            let st: &mut [S; LANES] = st.try_into().expect("chunks_exact_mut yields LANES elements");
            if std::mem::size_of::<S>() > std::mem::size_of::<f32>() {
                // A record of several floats: the run is copied in and out whole (advanced in
                // place, its fields were stored one lane at a time).
                let mut run = *st;
                add_run(&mut lanes, |k| dot(g[k], p[k], &mut run[k]));
                if write {
                    *st = run;
                }
            } else if write {
                // One float: in place is what vectorises (a copied run was not).
                add_run(&mut lanes, |k| dot(g[k], p[k], &mut st[k]));
            } else {
                add_run(&mut lanes, |k| dot(g[k], p[k], &mut st[k].clone()));
            }
        }
        let tail = param.len() - param.len() % LANES;
        for i in tail..param.len() {
            let mut st = state[i];
            let [a, b] = dot(grad[i], param[i], &mut st);
            if write {
                state[i] = st;
            }
            lanes[0][i - tail] += a;
            lanes[1][i - tail] += b;
        }
        [sum_lanes(&lanes[0]), sum_lanes(&lanes[1])]
    }

    /// `f(k)`'s two terms added into lane k of each sum, for every lane of a run.
    #[inline(always)]
    fn add_run(lanes: &mut [[f64; LANES]; 2], mut f: impl FnMut(usize) -> [f64; 2]) {
        for k in 0..LANES {
            let [a, b] = f(k);
            lanes[0][k] += a;
            lanes[1][k] += b;
        }
    }

    #[inline(always)]
    pub fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
        for ((theta, &g), st) in param.iter_mut().zip(grad).zip(state) {
            *theta -= scale * delta(g, *theta, st);
        }
    }

    #[inline(always)]
    pub fn weighted_moments<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], s: &[f32], f: F) -> ([f64; 4], bool) {
        let mut lanes = [[0.0f64; LANES]; 4];
        let mut negative = false;
        let full = x.len() - x.len() % GROUP;
        for start in (0..full).step_by(GROUP) {
            let (w, y) = weights_of(&state[start..start + GROUP], &x[start..start + GROUP], &f);
            let (x, s): (&[f32; GROUP], &[f32; GROUP]) = (group_of(&x[start..]), group_of(&s[start..]));
            let mut partial = [[0.0f32; LANES]; 4];
            for chunk in 0..CHUNKS_PER_WIDENING {
                for k in 0..LANES {
                    let i = chunk * LANES + k;
                    let (wx, wy) = (w[i] * x[i], w[i] * y[i]);
                    partial[0][k] += w[i] * s[i];
                    partial[1][k] += wx * x[i];
                    partial[2][k] += wx * y[i];
                    partial[3][k] += wy * y[i];
                }
            }
            for (lane, partial) in lanes.iter_mut().zip(&partial) {
                for k in 0..LANES {
                    lane[k] += f64::from(partial[k]);
                }
            }
            negative |= s.iter().fold(false, |found, v| found | (*v < 0.0));
        }
        let (sums, tail_negative) = finish_moments(lanes, &state[full..], &x[full..], &s[full..], &f);
        (sums, negative | tail_negative)
    }

    /// A `GROUP`-long run as an array (its first `GROUP` elements), so indexing needs no checks.
    #[inline(always)]
    pub fn group_of(run: &[f32]) -> &[f32; GROUP] {
        run[..GROUP].try_into().expect("a full group remains")
    }

    /// `(w, y)` of one group, as two f32 arrays the products then load as vectors.
    #[inline(always)]
    pub fn weights_of<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], f: &F) -> ([f32; GROUP], [f32; GROUP]) {
        let (mut w, mut y) = ([0.0f32; GROUP], [0.0f32; GROUP]);
        let (state, x): (&[S; GROUP], &[f32; GROUP]) = (state.try_into().expect("a full group"), group_of(x));
        for i in 0..GROUP {
            (w[i], y[i]) = f(&state[i], x[i]);
        }
        (w, y)
    }

    /// Adds the tail (fewer than `GROUP` elements) into the lanes, each product widened on its
    /// own, and sums the lanes.
    #[inline(always)]
    pub fn finish_moments<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(mut lanes: [[f64; LANES]; 4], state: &[S], x: &[f32], s: &[f32], f: &F) -> ([f64; 4], bool) {
        let mut negative = false;
        for i in 0..x.len() {
            let (w, y) = f(&state[i], x[i]);
            let (wx, wy) = (w * x[i], w * y);
            let lane = i % LANES;
            lanes[0][lane] += f64::from(w * s[i]);
            lanes[1][lane] += f64::from(wx * x[i]);
            lanes[2][lane] += f64::from(wx * y);
            lanes[3][lane] += f64::from(wy * y);
            negative |= s[i] < 0.0;
        }
        (lanes.map(|l| sum_lanes(&l)), negative)
    }

    /// `sum_sq += d²`, `sum_dev += d` with `d = k·x − c`, for the rows in order: per column,
    /// the additions are the same whatever `R` is, so grouping rows changes no bit. `R` rows at
    /// once keep the two sums in registers across rows; `COLUMNS_AT_ONCE` columns at a time use
    /// a cache line's worth (64 bytes) of each row per iteration.
    #[inline(always)]
    pub fn accumulate_deviations<const R: usize>(rows: [&[f32]; R], k: f32, center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
        let width = center.len();
        let rows: [&[f32]; R] = rows.map(|row| &row[..width]);
        let (sum_sq, sum_dev) = (&mut sum_sq[..width], &mut sum_dev[..width]);
        let full = width - width % COLUMNS_AT_ONCE;
        for j in (0..full).step_by(COLUMNS_AT_ONCE) {
            let columns = j..j + COLUMNS_AT_ONCE;
            let c: &[f32; COLUMNS_AT_ONCE] = center[columns.clone()].try_into().expect("a whole chunk");
            let sq: &mut [f32; COLUMNS_AT_ONCE] = (&mut sum_sq[columns.clone()]).try_into().expect("a whole chunk");
            let dev: &mut [f32; COLUMNS_AT_ONCE] = (&mut sum_dev[columns.clone()]).try_into().expect("a whole chunk");
            let (mut sq_j, mut dev_j) = (*sq, *dev);
            for row in &rows {
                prefetch(row, j + PREFETCH_AHEAD);
                let x: &[f32; COLUMNS_AT_ONCE] = row[columns.clone()].try_into().expect("a whole chunk");
                for l in 0..COLUMNS_AT_ONCE {
                    let d = k * x[l] - c[l];
                    sq_j[l] += d * d;
                    dev_j[l] += d;
                }
            }
            (*sq, *dev) = (sq_j, dev_j);
        }
        for j in full..width {
            let (mut sq_j, mut dev_j) = (sum_sq[j], sum_dev[j]);
            for row in &rows {
                let d = k * row[j] - center[j];
                sq_j += d * d;
                dev_j += d;
            }
            (sum_sq[j], sum_dev[j]) = (sq_j, dev_j);
        }
    }

    /// `out[j] = sum_sq[j] + 2·center[j]·sum_dev[j]`, formed in f64 (see `spread_from_rows`).
    #[inline(always)]
    pub fn finish_spread<T: SpreadValue>(sum_sq: &[f32], sum_dev: &[f32], center: &[f32], out: &mut [T]) {
        for (((o, sq), dev), c) in out.iter_mut().zip(sum_sq).zip(sum_dev).zip(center) {
            *o = T::from_f64(f64::from(*sq) + 2.0 * f64::from(*c) * f64::from(*dev));
        }
    }

    /// Columns ahead of the current one at which `accumulate_deviations` asks for each row's
    /// next line: four lines. The hardware prefetchers lose ground on eight interleaved row
    /// streams that each advance only a line per iteration; with this hint the reduction ran
    /// at 0.80–0.84 of a plain read of the matrix on two threads, against 0.68–0.70 without
    /// (paired runs, 2e6 columns, N = 32).
    const PREFETCH_AHEAD: usize = 4 * COLUMNS_AT_ONCE;

    /// A hint to start loading the line holding `row[at]` into the caches.
    #[inline(always)]
    fn prefetch(row: &[f32], at: usize) {
        // SAFETY: SSE is part of x86-64; `at` may lie past the end of the row (wrapping_add,
        // no out-of-bounds offset), which is fine: a prefetch never faults and has no
        // architectural effect.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(row.as_ptr().wrapping_add(at).cast())
        };
        // Elsewhere the hardware prefetchers alone serve.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (row, at);
    }

    /// Runs of the input walked side by side by `all_finite`: one core reads a buffer larger
    /// than its caches faster as several streams than as one (paired runs, 4e7 bytes, thread
    /// CPU time, AVX-512: 2.5–2.7 ms as four streams against 3.7–3.9 ms as one).
    const FINITE_STREAMS: usize = 4;
    /// Elements of each stream per iteration: a cache line (64 bytes).
    const FINITE_CHUNK: usize = 16;

    /// `|v|` as bits: below `0x7f80_0000` (+Inf) exactly when v is finite; NaNs lie above. An
    /// integer maximum of these is one cheap operation per vector, with no dependency on the
    /// floating-point unit's latency.
    #[inline(always)]
    fn magnitude_bits(v: f32) -> u32 {
        v.to_bits() & 0x7fff_ffff
    }

    #[inline(always)]
    pub fn all_finite(x: &[f32]) -> bool {
        let run = x.len() / (FINITE_STREAMS * FINITE_CHUNK) * FINITE_CHUNK;
        let mut largest = [[0u32; FINITE_CHUNK]; FINITE_STREAMS];
        for at in (0..run).step_by(FINITE_CHUNK) {
            for (stream, largest) in largest.iter_mut().enumerate() {
                let chunk: &[f32; FINITE_CHUNK] = x[stream * run + at..][..FINITE_CHUNK].try_into().expect("a whole chunk");
                for k in 0..FINITE_CHUNK {
                    largest[k] = largest[k].max(magnitude_bits(chunk[k]));
                }
            }
        }
        let rest = x[FINITE_STREAMS * run..].iter().fold(0, |m, v| m.max(magnitude_bits(*v)));
        largest.iter().flatten().fold(rest, |m, v| m.max(*v)) < f32::INFINITY.to_bits()
    }
}

/// The kernels' wrappers compiled with one target feature enabled: the portable code, inlined
/// into a function the compiler may vectorise for that feature.
#[cfg(target_arch = "x86_64")]
macro_rules! compiled_with {
    ($feature:literal) => {
        #[target_feature(enable = $feature)]
        pub unsafe fn update<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], step: F) {
            kernels::update(param, grad, state, step)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn assign<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], state: &mut [S], next: F) {
            kernels::assign(param, grad, state, next)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn nested<S: Copy, F: Fn(f32, f32, &mut f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], z: &mut [f32], state: &mut [S], next: F) {
            kernels::nested(param, grad, z, state, next)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn advance_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &[f32], grad: &[f32], state: &mut [S], step: F) -> f64 {
            kernels::advance_dot(param, grad, state, step)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn assign_dot<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(param: &mut [f32], grad: &[f32], weight: &[f32], state: &mut [S], next: F) -> f64 {
            kernels::assign_dot(param, grad, weight, state, next)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn dot_pass<S: Copy, F: Fn(f32, f32, &mut S) -> [f64; 2]>(param: &[f32], grad: &[f32], state: &mut [S], write: bool, dot: F) -> [f64; 2] {
            kernels::dot_pass(param, grad, state, write, dot)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn apply_scaled<S: Copy, F: Fn(f32, f32, &S) -> f32>(param: &mut [f32], grad: &[f32], state: &[S], scale: f32, delta: F) {
            kernels::apply_scaled(param, grad, state, scale, delta)
        }

        #[target_feature(enable = $feature)]
        pub unsafe fn all_finite(x: &[f32]) -> bool {
            kernels::all_finite(x)
        }
    };
}

/// The kernels compiled with AVX2 enabled.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{kernels, SpreadValue, CHUNKS_PER_WIDENING, GROUP, LANES};

    compiled_with!("avx2");

    /// Written with intrinsics: the compiler's own vectorisation of the portable loop shuffles
    /// lanes and runs at half of memory speed. Same operations, same per-lane order as
    /// `kernels::weighted_moments`, so the same bits.
    #[target_feature(enable = "avx2")]
    pub unsafe fn weighted_moments<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], s: &[f32], f: F) -> ([f64; 4], bool) {
        use std::arch::x86_64::*;
        const _: () = assert!(LANES == 8, "one __m256 of f32 per chunk");
        let full = x.len() - x.len() % GROUP;
        // lanes[j] = (elements 0..4, elements 4..8) of sum j, as in the portable kernel.
        let mut lanes = [[_mm256_setzero_pd(); 2]; 4];
        let mut negative = _mm256_setzero_ps();
        let mut start = 0;
        while start < full {
            let (w, y) = kernels::weights_of(&state[start..start + GROUP], &x[start..start + GROUP], &f);
            let (xg, sg) = (kernels::group_of(&x[start..]), kernels::group_of(&s[start..]));
            let mut partial = [_mm256_setzero_ps(); 4];
            for chunk in 0..CHUNKS_PER_WIDENING {
                let at = chunk * LANES;
                let (wv, xv) = (_mm256_loadu_ps(w.as_ptr().add(at)), _mm256_loadu_ps(xg.as_ptr().add(at)));
                let (yv, sv) = (_mm256_loadu_ps(y.as_ptr().add(at)), _mm256_loadu_ps(sg.as_ptr().add(at)));
                let (wx, wy) = (_mm256_mul_ps(wv, xv), _mm256_mul_ps(wv, yv));
                let products = [_mm256_mul_ps(wv, sv), _mm256_mul_ps(wx, xv), _mm256_mul_ps(wx, yv), _mm256_mul_ps(wy, yv)];
                for (p, product) in partial.iter_mut().zip(products) {
                    *p = _mm256_add_ps(*p, product);
                }
                // Ordered, non-signalling `s < 0`: false for NaN, as in the portable kernel.
                negative = _mm256_or_ps(negative, _mm256_cmp_ps::<_CMP_LT_OQ>(sv, _mm256_setzero_ps()));
            }
            for (lane, p) in lanes.iter_mut().zip(partial) {
                lane[0] = _mm256_add_pd(lane[0], _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
                lane[1] = _mm256_add_pd(lane[1], _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(p)));
            }
            start += GROUP;
        }
        let mut out = [[0.0f64; LANES]; 4];
        for (o, lane) in out.iter_mut().zip(lanes) {
            _mm256_storeu_pd(o.as_mut_ptr(), lane[0]);
            _mm256_storeu_pd(o.as_mut_ptr().add(4), lane[1]);
        }
        let (sums, tail_negative) = kernels::finish_moments(out, &state[full..], &x[full..], &s[full..], &f);
        (sums, _mm256_movemask_ps(negative) != 0 || tail_negative)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn accumulate_deviations<const R: usize>(rows: [&[f32]; R], k: f32, center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
        kernels::accumulate_deviations(rows, k, center, sum_sq, sum_dev)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn finish_spread<T: SpreadValue>(sum_sq: &[f32], sum_dev: &[f32], center: &[f32], out: &mut [T]) {
        kernels::finish_spread(sum_sq, sum_dev, center, out)
    }
}

/// The elementwise kernels compiled with AVX-512F enabled: the fixed-rate steps' update pass and
/// the NaN check run at in-place memory speed only with 16-wide vectors (README "Step speed
/// (CPU)"). The per-sample reductions stay AVX2's: their loop shapes (rows and columns per
/// iteration, prefetch distance) were measured for it.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{avx2, kernels, SpreadValue};

    compiled_with!("avx512f");

    /// AVX2's (an AVX-512 CPU has AVX2).
    pub unsafe fn weighted_moments<S: Copy, F: Fn(&S, f32) -> (f32, f32)>(state: &[S], x: &[f32], s: &[f32], f: F) -> ([f64; 4], bool) {
        avx2::weighted_moments(state, x, s, f)
    }

    /// AVX2's.
    pub unsafe fn accumulate_deviations<const R: usize>(rows: [&[f32]; R], k: f32, center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
        avx2::accumulate_deviations(rows, k, center, sum_sq, sum_dev)
    }

    /// AVX2's.
    pub unsafe fn finish_spread<T: SpreadValue>(sum_sq: &[f32], sum_dev: &[f32], center: &[f32], out: &mut [T]) {
        avx2::finish_spread(sum_sq, sum_dev, center, out)
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
// Indexed by lane on purpose: element i + lane goes to lane `lane` (the fixed summation order).
#[allow(clippy::needless_range_loop)]
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
    // `!(v < 0)` and not `v >= 0`: NaN must pass here.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    x.chunks(4096).all(|c| c.iter().fold(true, |ok, v| ok & !(*v < 0.0)))
}

/// Worker threads for the block reductions: `AUTOLR_NUM_THREADS` (a positive integer), else
/// every core the process may use (read once).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("AUTOLR_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Below this many input floats per call a reduction runs on the calling thread: starting
/// workers costs tens of microseconds.
const FLOATS_PER_THREAD: usize = 1 << 20;

/// `f(scratch, block)` for every block in `0..n_blocks`, in block order in the result. Blocks
/// are split into contiguous runs over up to `threads()` workers (each with its own scratch from
/// `scratch`) when the call reads at least `FLOATS_PER_THREAD` floats per worker. Each block's
/// result is computed the same way on any thread, and the caller combines them in block order,
/// so the bits never depend on the number of threads.
pub fn map_blocks<T: Send, W>(n_blocks: usize, floats: usize, scratch: impl Fn() -> W + Sync, f: impl Fn(&mut W, usize) -> T + Sync) -> Vec<T> {
    let workers = threads().min(n_blocks).min(floats / FLOATS_PER_THREAD).max(1);
    let run = |blocks: std::ops::Range<usize>| {
        let mut w = scratch();
        blocks.map(|b| f(&mut w, b)).collect::<Vec<T>>()
    };
    let per_worker = n_blocks.div_ceil(workers).max(1);
    let runs = (0..n_blocks).step_by(per_worker).map(|first| first..(first + per_worker).min(n_blocks));
    on_workers(runs, run).into_iter().flatten().collect()
}

/// `f(part)` for every part, in part order: the first part on the calling thread, each other on
/// a scoped worker of its own (none is started for a single part). A worker's panic is re-raised
/// here, on the caller's thread (the C ABI's guard catches it).
fn on_workers<P: Send, T: Send>(mut parts: impl Iterator<Item = P>, f: impl Fn(P) -> T + Sync) -> Vec<T> {
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    let f = &f;
    std::thread::scope(|scope| {
        // A worker's panic is recorded for alr_last_error like the caller's own, not printed.
        let handles: Vec<_> = parts.map(|part| scope.spawn(move || crate::error::quiet_panics(|| f(part)))).collect();
        let mut out = vec![f(first)];
        out.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        out
    })
}

/// Index of the first negative element.
pub fn first_negative(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| *v < 0.0)
}

/// Columns handled per block when a per-sample matrix is reduced: the block's rows stay in cache
/// while every row is visited, so the matrix is read from memory once.
pub const COLUMN_BLOCK: usize = 32768;

/// A spread value as stored by its consumer: f64, or rounded once to f32 (the precision of the
/// products it is summed with, and half the cache traffic).
pub trait SpreadValue: Copy {
    fn from_f64(value: f64) -> Self;
}

impl SpreadValue for f64 {
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value
    }
}

impl SpreadValue for f32 {
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

/// Scratch of `spread_from_rows`: the running per-column sums over the rows of one block. Made
/// once per pass (or per worker) and reused for every block: a fresh allocation per block is
/// returned to the OS and faulted back in page by page each time (measured at 2e6 columns,
/// N = 32: ~3800 page faults per step, and steps twice as long as with the scratch reused).
pub struct RowSums {
    sum_sq: Vec<f32>,
    sum_dev: Vec<f32>,
}

impl RowSums {
    /// Room for blocks of up to `width` columns (on the heap: a host thread may have a small stack).
    pub fn new(width: usize) -> Self {
        RowSums { sum_sq: vec![0.0; width], sum_dev: vec![0.0; width] }
    }
}

/// Per-sample spread of one block of columns `[start, start + out.len())`:
/// `out[j] = Σ_i (k·x_ij)² − N·center_j²` (with `k·x_ij` the per-sample value and `N` rows),
/// computed as `Σ_i dev² + 2·center·Σ_i dev` with `dev = k·x_ij − center_j`, so that a mean
/// gradient much larger than the spread does not cancel the spread away. With `center = 0` it
/// is the plain sum of squares `S`.
// One block of one tensor: the matrix, its shape, the block, the scale and centre, scratch, out.
#[allow(clippy::too_many_arguments)]
pub fn spread_from_rows<T: SpreadValue>(rows: &[f32], n_rows: usize, len: usize, start: usize, k: f64, center: &[f32], sums: &mut RowSums, out: &mut [T]) {
    let width = out.len();
    assert!(rows.len() == n_rows * len && start + width <= len && center.len() == width && sums.sum_sq.len() >= width, "spread_from_rows: bad block");
    // Per row in f32: dev = k·x − c is exact when k·x and c are close (Sterbenz), which is
    // exactly when the spread is small; the sums over N rows add only N·ε relative error.
    let (sum_sq, sum_dev) = (&mut sums.sum_sq[..width], &mut sums.sum_dev[..width]);
    sum_sq.fill(0.0);
    sum_dev.fill(0.0);
    let k = k as f32;
    let mut row_groups = rows.chunks_exact(ROWS_AT_ONCE * len);
    for group in &mut row_groups {
        let group: [&[f32]; ROWS_AT_ONCE] = std::array::from_fn(|r| &group[r * len + start..r * len + start + width]);
        accumulate_deviations(group, k, center, sum_sq, sum_dev);
    }
    for row in row_groups.remainder().chunks_exact(len) {
        accumulate_deviations([&row[start..start + width]], k, center, sum_sq, sum_dev);
    }
    finish_spread(sum_sq, sum_dev, center, out);
}

#[inline]
fn finish_spread<T: SpreadValue>(sum_sq: &[f32], sum_dev: &[f32], center: &[f32], out: &mut [T]) {
    dispatch!(finish_spread(sum_sq, sum_dev, center, out))
}

/// Rows of a per-sample block reduced together (their sums stay in registers across them).
/// Eight, not more: each row is a separate stream through memory with its own pointer, and with
/// sixteen the pointers no longer fit in general registers (the compiled loop reloads them from
/// the stack). In paired runs on two threads, eight rows with a cache line's worth per iteration
/// read the matrix at 0.79–0.91 of the speed of a plain sum over it, sixteen at 0.71–0.84.
const ROWS_AT_ONCE: usize = 8;

/// Columns of a per-sample block reduced per iteration: a cache line's worth (64 bytes) of f32.
const COLUMNS_AT_ONCE: usize = 16;

#[inline]
fn accumulate_deviations<const R: usize>(rows: [&[f32]; R], k: f32, center: &[f32], sum_sq: &mut [f32], sum_dev: &mut [f32]) {
    dispatch!(accumulate_deviations(rows, k, center, sum_sq, sum_dev))
}

/// The same spread from the vector `S = Σ_i x_i²` (entries scaled by `k²`):
/// `out[j] = k²·S_j − N·center_j²`, in f64. Its precision is bounded by the caller's float32 `S`.
pub fn spread_from_sum_sq(sum_sq: &[f32], n_rows: usize, k: f64, center: &[f32], out: &mut [f64]) {
    let (k2, n) = (k * k, n_rows as f64);
    for ((o, s), c) in out.iter_mut().zip(sum_sq).zip(center) {
        *o = k2 * f64::from(*s) - n * f64::from(*c) * f64::from(*c);
    }
}

/// The CPU: state in host memory, every primitive run on the calling thread (and, for passes
/// over large tensors, on `threads()` scoped workers), every check answered at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

/// Per-tensor sums of a reduction pass, and which tensors each record adds.
pub struct Sums {
    per_tensor: Vec<[f64; 4]>,
    owners: Vec<Vec<usize>>,
    /// Per record, the sums over every process (`reduce_sums`), read by the next solve.
    reduced: Option<Vec<[f64; 4]>>,
}

impl Sums {
    /// Each record's tensors' sums added in tensor order (with `last_is_max`, the fourth slot
    /// their maximum, from 0 as a sum: a sampled pass's maxima are ≥ 0).
    fn per_record(&self, last_is_max: bool) -> Vec<[f64; 4]> {
        self.owners
            .iter()
            .map(|tensors| {
                let mut total = [0.0f64; 4];
                for &t in tensors {
                    for (slot, (s, v)) in total.iter_mut().zip(self.per_tensor[t]).enumerate() {
                        *s = if last_is_max && slot == 3 { s.max(v) } else { *s + v };
                    }
                }
                total
            })
            .collect()
    }
}

/// Records' sums combined over every process: slots 0–2 (0–3 unless `last_is_max`) in one sum,
/// the fourth slots in one maximum. Both calls are made before the values are judged, so that
/// every process makes the same calls; then non-finite values are an error on every process.
fn all_reduce_records(records: Vec<[f64; 4]>, last_is_max: bool, comm: &dyn Communicator) -> Result<Vec<[f64; 4]>> {
    let summed = if last_is_max { 3 } else { 4 };
    let mut sums: Vec<f64> = records.iter().flat_map(|r| r[..summed].to_vec()).collect();
    let sum_result = comm.all_reduce(ReduceValues::Host(&mut sums), ReduceOp::Sum);
    let mut maxima: Vec<f64> = records.iter().map(|r| r[3]).collect();
    let max_result = if last_is_max { comm.all_reduce(ReduceValues::Host(&mut maxima), ReduceOp::Max) } else { Ok(()) };
    sum_result.and(max_result).map_err(super::reduce_failed)?;
    let reduced: Vec<[f64; 4]> = sums.chunks_exact(summed).zip(&maxima).map(|(s, &m)| std::array::from_fn(|i| if i < summed { s[i] } else { m })).collect();
    if let Some(r) = reduced.iter().position(|s| !s.iter().all(|v| v.is_finite())) {
        return Err(Error::non_finite(format!(
            "record {r}'s sums over all processes are not finite: the inputs of this or another process held a NaN or Inf \
             (or a sum overflowed); no process changed anything"
        )));
    }
    Ok(reduced)
}

/// The floats of a buffer in host memory (the optimizer checks where every buffer lives, so
/// another memory here is a bug, reported rather than dereferenced).
fn host<'t>(x: &Tensor<'t>) -> Result<&'t [f32]> {
    x.as_host().ok_or_else(|| Error::invalid(format!("a buffer in {} was given to a CPU optimizer", x.memory())))
}

fn host_mut<'t>(x: &'t mut TensorMut) -> Result<&'t mut [f32]> {
    let memory = x.memory();
    x.as_host_mut().ok_or_else(|| Error::invalid(format!("a buffer in {memory} was given to a CPU optimizer")))
}

fn same_len(what: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::shape(format!("{what}: buffers of {a} and {b} elements")));
    }
    Ok(())
}

/// Σ_j w (k² S_j − N g_j²), Σ w g g, Σ w g y, Σ w y y over one tensor, in column blocks added in
/// block order (the blocks may run on several threads: `map_blocks`), so the bits do not depend
/// on the thread count.
fn spread_moments<S: ElemState, F: Fn(&S, f32) -> (f32, f32) + Sync>(grad: &[f32], state: &[S], samples: &SampleView, weights: F) -> Result<[f64; 4]> {
    let (n, k, len) = (samples.n, samples.k, grad.len());
    let data = match samples.data {
        SampleTensor::SumSq(s) | SampleTensor::Rows(s) => host(&s)?,
    };
    let rows = matches!(samples.data, SampleTensor::Rows(_));
    // Block scratch (one per worker, reused by its blocks) for the per-sample matrix only; on
    // the heap, not the stack: a host thread may have a small stack.
    let scratch_len = if rows { COLUMN_BLOCK.min(len) } else { 0 };
    let block_scratch = || (vec![0.0f32; scratch_len], RowSums::new(scratch_len));
    let reduce_block = |(spread, sums): &mut (Vec<f32>, RowSums), block: usize| {
        let (start, end) = (block * COLUMN_BLOCK, ((block + 1) * COLUMN_BLOCK).min(len));
        let (g, st) = (&grad[start..end], &state[start..end]);
        if rows {
            let spread = &mut spread[..end - start];
            spread_from_rows(data, n, len, start, k, g, sums, spread);
            weighted_moments(st, g, spread, &weights).0
        } else {
            // Σ w (k² S − N g²) = k² Σ w S − N a: both sums are f64, so nothing cancels that a
            // per-element difference would have kept.
            let ([w_s, a, c, e], negative) = weighted_moments(st, g, &data[start..end], &weights);
            // A negative S poisons the sum (the caller then reports which input).
            let w_s = if negative { f64::NAN } else { w_s };
            [k * k * w_s - n as f64 * a, a, c, e]
        }
    };
    let floats_read = len * if rows { n + 1 + S::FLOATS } else { 2 + S::FLOATS };
    let blocks = map_blocks(len.div_ceil(COLUMN_BLOCK), floats_read, block_scratch, reduce_block);
    Ok(blocks.into_iter().fold([0.0f64; 4], |total, block| std::array::from_fn(|i| total[i] + block[i])))
}

impl Device for Cpu {
    type State<S: ElemState> = Vec<S>;
    type Records<R: Record> = Vec<R>;
    type Sums = Sums;

    fn memory(&self) -> Memory {
        Memory::Host
    }

    fn require(&self, _kernels: &[&'static str]) -> Result<()> {
        Ok(())
    }

    fn alloc<S: ElemState>(&self, len: usize) -> Result<Vec<S>> {
        filled(len, S::default())
    }

    fn with_state<S: ElemState, T>(&self, state: &Vec<S>, f: impl FnOnce(&[S]) -> T) -> Result<T> {
        Ok(f(state))
    }

    fn write_state<S: ElemState>(&self, state: &mut Vec<S>, values: &[S]) -> Result<()> {
        same_len("state", state.len(), values.len())?;
        state.copy_from_slice(values);
        Ok(())
    }

    fn copy_state<S: ElemState>(&self, dst: &mut Vec<S>, src: &Vec<S>) -> Result<()> {
        self.write_state(dst, src)
    }

    fn records<R: Record>(&self, values: &[R]) -> Result<Vec<R>> {
        Ok(values.to_vec())
    }

    fn read_records<R: Record>(&self, records: &Vec<R>) -> Result<Vec<R>> {
        Ok(records.clone())
    }

    fn write_records<R: Record>(&self, records: &mut Vec<R>, values: &[R]) -> Result<()> {
        same_len("records", records.len(), values.len())?;
        records.copy_from_slice(values);
        Ok(())
    }

    fn copy_records<R: Record>(&self, dst: &mut Vec<R>, src: &Vec<R>) -> Result<()> {
        self.write_records(dst, src)
    }

    fn state_view<'s>(&self, state: &'s mut Vec<f32>) -> TensorMut<'s> {
        TensorMut::host(state)
    }

    fn sums(&self, lens: &[usize], owners: &[Vec<usize>]) -> Result<Sums> {
        Ok(Sums { per_tensor: filled(lens.len(), [0.0; 4])?, owners: owners.to_vec(), reduced: None })
    }

    fn update<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Vec<R::State>,
    ) -> Result<()> {
        let p = R::prepare(c, &records[at]);
        let (param, grad) = (host_mut(param)?, host(grad)?);
        if R::ASSIGNS {
            assign(param, grad, state, |g, theta, st: &mut R::State| R::next(&p, g, theta, st));
            return Ok(());
        }
        let advance = |g, theta, st: &mut R::State| R::advance(&p, g, theta, st);
        if R::AFTER_THREADED_REDUCTION {
            update_in_parts(param, grad, state, advance);
        } else {
            update(param, grad, state, advance);
        }
        Ok(())
    }

    fn update_scaled<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Vec<R::State>,
        scale: f32,
    ) -> Result<()> {
        refuse_assigning::<R>()?;
        let p = R::prepare(c, &records[at]);
        // advance_dot's advance, then apply_scaled's `θ − scale·delta` from the advanced state:
        // the same bits as the two passes.
        update(host_mut(param)?, host(grad)?, state, |g, theta, st: &mut R::State| {
            R::advance(&p, g, theta, st);
            scale * R::delta(&p, g, theta, st)
        });
        Ok(())
    }

    fn update_nested<R: NestedRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        inner: &<R::Inner as KernelRule>::Coeffs,
        param: &mut TensorMut,
        grad: &Tensor,
        z: &mut Vec<f32>,
        state: &mut Vec<<R::Inner as KernelRule>::State>,
    ) -> Result<()> {
        let (p, q) = (R::prepare(c, &records[at]), R::Inner::prepare(inner, &()));
        nested(host_mut(param)?, host(grad)?, z, state, |g, theta, z: &mut f32, st: &mut <R::Inner as KernelRule>::State| R::next(&p, &q, g, theta, z, st));
        Ok(())
    }

    fn advance_dot<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: &TensorMut,
        grad: &Tensor,
        state: &mut Vec<R::State>,
    ) -> Result<f64> {
        let p = R::prepare(c, &records[at]);
        let param = param.as_host().ok_or_else(|| Error::invalid("a device buffer was given to a CPU optimizer"))?;
        // Σ g·delta: the displacement a wrapper scales (for most rules advance's own value; the
        // peers' is the step itself, not the float32 move next to θ).
        Ok(advance_dot(param, host(grad)?, state, |g, theta, st| {
            R::advance(&p, g, theta, st);
            R::delta(&p, g, theta, st)
        }))
    }

    fn assign_dot<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        weight: &Tensor,
        state: &mut Vec<R::State>,
    ) -> Result<f64> {
        if !R::ASSIGNS {
            return Err(Error::invalid(format!("kernel {} moves θ by a displacement: assign_dot is for a rule that sets θ", R::KERNEL)));
        }
        let p = R::prepare(c, &records[at]);
        let (param, grad, weight) = (host_mut(param)?, host(grad)?, host(weight)?);
        same_len("assign_dot", param.len(), state.len())?;
        same_len("assign_dot", grad.len(), state.len())?;
        same_len("assign_dot", weight.len(), state.len())?;
        Ok(assign_dot(param, grad, weight, state, |g, theta, st: &mut R::State| R::next(&p, g, theta, st)))
    }

    fn apply_scaled<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &Vec<R::State>,
        scale: f32,
    ) -> Result<()> {
        let p = R::prepare(c, &records[at]);
        apply_scaled(host_mut(param)?, host(grad)?, state, scale, |g, theta, st| R::delta(&p, g, theta, st));
        Ok(())
    }

    fn dots<R: DotRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: &Tensor,
        grad: &Tensor,
        state: &mut Vec<R::State>,
        sums: &mut Sums,
        tensor: usize,
        commit: Commit,
    ) -> Result<()> {
        let p = R::prepare(c, &records[at]);
        let (param, grad) = (host(param)?, host(grad)?);
        same_len("dots", param.len(), state.len())?;
        same_len("dots", grad.len(), state.len())?;
        // A measuring pass (sharded) leaves the state as it was; so does one whose rule says this
        // launch changes nothing (DoG after its first step).
        let write = commit == Commit::Write && R::changes_state(&p);
        let [x, y] = dot_pass(param, grad, state, write, |g, theta, st| R::dot(&p, g, theta, st));
        sums.per_tensor[tensor] = [x, y, 0.0, 0.0];
        Ok(())
    }

    fn moments<M: MomentRule>(
        &self,
        c: &M::Coeffs,
        records: &Vec<M::Record>,
        at: usize,
        grad: &Tensor,
        state: &Vec<M::State>,
        samples: &SampleView,
        sums: &mut Sums,
        tensor: usize,
    ) -> Result<()> {
        let p = M::prepare(c, &records[at]);
        sums.per_tensor[tensor] = spread_moments(host(grad)?, state, samples, |st, g| M::weights(&p, st, g))?;
        Ok(())
    }

    fn sampled<R: SampledRule>(
        &self,
        c: &R::Coeffs,
        records: &Vec<R::Record>,
        at: usize,
        param: Option<&mut TensorMut>,
        grad: &Tensor,
        h: &Tensor,
        samples: Option<&SampleView>,
        state: &mut Vec<R::State>,
        sums: &mut Sums,
        tensor: usize,
        commit: Commit,
    ) -> Result<()> {
        let p = R::prepare(c, &records[at]);
        let (grad, h, len) = (host(grad)?, host(h)?, state.len());
        same_len("sampled", grad.len(), len)?;
        same_len("sampled", h.len(), len)?;
        // A measuring pass moves nothing either.
        let mut theta = match param.filter(|_| commit == Commit::Write) {
            Some(param) => Some(host_mut(param)?),
            None => None,
        };
        let data = match samples.map(|s| s.data) {
            Some(SampleTensor::SumSq(d) | SampleTensor::Rows(d)) => Some(host(&d)?),
            None => None,
        };
        // Block scratch on the heap, not the stack: a host thread may have a small stack.
        let block = COLUMN_BLOCK.min(len);
        let rows = matches!(samples.map(|s| s.data), Some(SampleTensor::Rows(_)));
        let (zero, mut x) = (vec![0.0f32; block], vec![0.0f64; block]);
        let mut row_sums = RowSums::new(if rows { block } else { 0 });
        let mut total = [0.0f64; 4];
        for start in (0..len).step_by(COLUMN_BLOCK) {
            let end = (start + COLUMN_BLOCK).min(len);
            let (x, g, h, st) = (&mut x[..end - start], &grad[start..end], &h[start..end], &mut state[start..end]);
            match (samples, data) {
                (Some(s), Some(data)) => {
                    // About 0 the spread is the plain sum of squares S = Σ_i (k x_ij)².
                    if rows {
                        spread_from_rows(data, s.n, len, start, s.k, &zero[..end - start], &mut row_sums, x);
                    } else {
                        spread_from_sum_sq(&data[start..end], s.n, s.k, &zero[..end - start], x);
                    }
                    x.iter_mut().for_each(|v| *v /= s.n as f64);
                }
                _ => x.iter_mut().zip(g).for_each(|(x, &g)| *x = f64::from(g) * f64::from(g)),
            }
            match theta.as_deref_mut() {
                Some(theta) => {
                    for ((((th, e), &g), &x), &h) in theta[start..end].iter_mut().zip(st.iter_mut()).zip(g).zip(x.iter()).zip(h) {
                        *th -= R::advance(&p, g, x, h, e).displacement;
                    }
                }
                None => {
                    let mut max = total[3] as f32;
                    let [s0, s1, s2] = reduce::<3, _>(g.len(), |j| {
                        let out = match commit {
                            Commit::Write => R::advance(&p, g[j], x[j], h[j], &mut st[j]),
                            Commit::Measure => R::advance(&p, g[j], x[j], h[j], &mut st[j].clone()),
                        };
                        max = max.max(out.max);
                        out.sums
                    });
                    total = [total[0] + s0, total[1] + s1, total[2] + s2, f64::from(max)];
                }
            }
        }
        sums.per_tensor[tensor] = total;
        Ok(())
    }

    fn totals(&self, sums: &Sums) -> Result<Vec<[f64; 4]>> {
        Ok(sums.per_record(false))
    }

    fn solve<S: SolveRule>(&self, p: &S::Params, coeffs: &Vec<S::Coeffs>, records: &mut Vec<S::Record>, sums: &mut Sums) -> Result<Option<usize>> {
        let totals = match sums.reduced.take() {
            Some(reduced) => reduced,
            None => sums.per_record(S::LAST_IS_MAX),
        };
        if S::REQUIRE_FINITE {
            if let Some(r) = totals.iter().position(|s| !s.iter().all(|v| v.is_finite())) {
                return Ok(Some(r));
            }
        }
        for ((record, c), s) in records.iter_mut().zip(coeffs).zip(&totals) {
            S::solve(p, c, s, record);
        }
        Ok(None)
    }

    fn reduce_sums(&self, sums: &mut Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()> {
        let local = sums.per_record(last_is_max);
        sums.reduced = Some(all_reduce_records(local, last_is_max, comm)?);
        Ok(())
    }

    fn abstain(&self, sums: &Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()> {
        all_reduce_records(vec![[f64::NAN; 4]; sums.owners.len()], last_is_max, comm).map(|_| ())
    }

    fn check(&self, what: &str, tensor: usize, x: &Tensor, non_negative: bool) -> Result<()> {
        let x = host(x)?;
        if non_negative {
            if !all_non_negative(x) {
                if let Some(i) = first_negative(x) {
                    return Err(Error::invalid(format!("tensor {tensor}: {what}[{i}] = {} is negative; it must be ≥ 0", x[i])));
                }
            }
        } else if !all_finite(x) {
            let i = first_non_finite(x).unwrap_or(0);
            return Err(Error::non_finite(format!("tensor {tensor}: {what}[{i}] is {}", x[i])));
        }
        Ok(())
    }

    fn begin_step(&self) {}

    fn capturing(&self) -> Result<bool> {
        Ok(false)
    }

    fn settle(&self) -> std::result::Result<(), Deferred> {
        Ok(())
    }
}

/// `update` in one named build; `false` (nothing done) where this CPU cannot run it.
#[cfg(test)]
pub(crate) fn update_in<S: Copy, F: Fn(f32, f32, &mut S) -> f32>(build: Build, param: &mut [f32], grad: &[f32], state: &mut [S], step: F) -> bool {
    match build {
        Build::Portable => {
            kernels::update(param, grad, state, step);
            true
        }
        #[cfg(target_arch = "x86_64")]
        Build::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: AVX2 is present (checked).
            unsafe { avx2::update(param, grad, state, step) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        Build::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F is present (checked).
            unsafe { avx512::update(param, grad, state, step) };
            true
        }
        _ => false,
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
    fn dot_pass_gives_the_bits_of_reduce() {
        // 1003 elements: whole runs of LANES and a tail. The state update and both sums must be
        // reduce's, bit for bit (the peers' checkpoints and conformance depend on the order).
        let grad: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let param: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.11).cos()).collect();
        let dot = |g: f32, theta: f32, s: &mut f32| {
            *s = 0.9 * *s + g;
            [f64::from(g) * f64::from(theta), f64::from(s.abs()) / 3.0]
        };
        let (mut s1, mut s2, mut s3) = (vec![0.25f32; 1003], vec![0.25f32; 1003], vec![0.25f32; 1003]);
        let want = reduce::<2, _>(grad.len(), |i| dot(grad[i], param[i], &mut s1[i]));
        let got = dot_pass(&param, &grad, &mut s2, true, dot);
        assert_eq!(s1, s2);
        assert_eq!(want.map(f64::to_bits), got.map(f64::to_bits));
        // Without `write`, the same sums and the state untouched (runs and tail).
        let read = dot_pass(&param, &grad, &mut s3, false, dot);
        assert_eq!(want.map(f64::to_bits), read.map(f64::to_bits));
        assert!(s3.iter().all(|&s| s == 0.25));
    }

    #[test]
    fn advance_dot_gives_the_bits_of_reduce() {
        // Blocks of BLOCK elements, a partial last block and a tail of a run: the sum must be
        // reduce's (element i in lane i % LANES), bit for bit, on every build.
        for n in [5, 1003, 2 * 256 + 19] {
            let grad: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 10f32.powi((i % 9) as i32 - 4)).collect();
            let param: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let step = |g: f32, theta: f32, v: &mut f32| {
                *v = 0.99 * *v + 0.01 * g * g;
                0.1 * g / (v.sqrt() + 1e-8) + 1e-3 * theta
            };
            let (mut v1, mut v2) = (vec![0.25f32; n], vec![0.25f32; n]);
            let want = reduce::<1, _>(n, |i| [f64::from(grad[i]) * f64::from(step(grad[i], param[i], &mut v1[i]))])[0];
            let got = advance_dot(&param, &grad, &mut v2, step);
            assert_eq!(v1, v2, "n = {n}");
            assert_eq!(want.to_bits(), got.to_bits(), "n = {n}");
        }
    }

    #[test]
    fn advance_dot_sums_a_tail_in_its_own_lanes() {
        // Products 2^53 in lane 0 and 1 in lanes 1, 2, 3 (the tail of a run): in their lanes
        // they sum to 2^53 + 2 exactly; added into one lane they would round to 2^53.
        let mut grad = vec![0.0f32; 12];
        grad[0] = 2f32.powi(53);
        grad[9..].fill(1.0);
        let got = advance_dot(&[0.0; 12], &grad, &mut [(); 12], |_, _, _| 1.0);
        assert_eq!(got, 2f64.powi(53) + 2.0);
    }

    #[test]
    fn chosen_keeps_every_bit() {
        for (new, old) in [(1.5f32, -0.0f32), (f32::NAN, 2.0), (f32::INFINITY, f32::from_bits(0x7fc0_1234)), (-0.0, f32::MIN_POSITIVE / 4.0)] {
            assert_eq!(super::super::chosen(true, new, old).to_bits(), new.to_bits());
            assert_eq!(super::super::chosen(false, new, old).to_bits(), old.to_bits());
        }
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
        let d = advance_dot(&[1.0f32; 37], &grad, &mut s2, |g, _, s| {
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
        spread_from_rows(&rows, 3, 2, 0, 1.0, &center, &mut RowSums::new(2), &mut from_rows);
        assert_eq!(from_rows, [0.5, 2.0]);
        let sum_sq = [1000.0f32 * 1000.0 + 1000.5 * 1000.5 + 999.5 * 999.5, 14.0];
        let mut from_sum_sq = [0.0f64; 2];
        spread_from_sum_sq(&sum_sq, 3, 1.0, &center, &mut from_sum_sq);
        assert!((from_sum_sq[1] - 2.0).abs() < 1e-12);
        // scale k: rows given as x/N (BackPACK's mean convention) with k = N recover the same spread
        let scaled: Vec<f32> = rows.iter().map(|x| x / 4.0).collect();
        let mut from_scaled = [0.0f64; 2];
        spread_from_rows(&scaled, 3, 2, 0, 4.0, &center, &mut RowSums::new(2), &mut from_scaled);
        assert_eq!(from_scaled, from_rows);
    }

    #[test]
    fn weighted_moments_same_bits_on_every_path() {
        // Lengths below, at and past whole groups, so the tail path is covered too.
        for n in [7, GROUP, 1003] {
            let v = |k: u32| (0..n).map(|i| (((i as u32 * 2654435761u32) ^ k) >> 9) as f32 / 8_388_608.0 - 0.7).collect::<Vec<f32>>();
            let (state, x, mut s) = (v(1), v(2), v(4));
            let pair = |st: &f32, xi: f32| (*st * 1.5, xi - *st);
            let portable = kernels::weighted_moments(&state, &x, &s, pair);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked).
                let vectorised = unsafe { avx2::weighted_moments(&state, &x, &s, pair) };
                assert_eq!(portable.0.map(f64::to_bits), vectorised.0.map(f64::to_bits));
                assert_eq!(portable.1, vectorised.1);
            }
            // Against a plain f64 sum of the same f32 products (only the f32 partial sums differ).
            let naive = |j: usize| -> f64 {
                (0..n)
                    .map(|i| {
                        let (w, yy) = pair(&state[i], x[i]);
                        f64::from([w * s[i], w * x[i] * x[i], w * x[i] * yy, w * yy * yy][j])
                    })
                    .sum()
            };
            for j in 0..4 {
                assert!((portable.0[j] - naive(j)).abs() < 1e-6 * naive(j).abs().max(1.0), "sum {j}: {} vs {}", portable.0[j], naive(j));
            }
            // A negative s anywhere, in a group or in the tail, is reported.
            assert!(portable.1, "v(4) has negative entries");
            s.iter_mut().for_each(|x| *x = x.abs());
            assert!(!kernels::weighted_moments(&state, &x, &s, pair).1);
            s[n - 1] = -1.0;
            assert!(weighted_moments(&state, &x, &s, pair).1);
        }
    }

    #[test]
    fn grouped_rows_give_the_same_bits() {
        // More rows than one group of ROWS_AT_ONCE, and a remainder after the groups.
        let (n_rows, len) = (19, 37);
        let rows: Vec<f32> = (0..n_rows * len).map(|i| ((i as f32) * 0.731).sin() * 3.0).collect();
        let center: Vec<f32> = (0..len).map(|j| (j as f32 * 0.1).cos()).collect();
        let mut grouped = vec![0.0f64; 20];
        spread_from_rows(&rows, n_rows, len, 10, 1.0, &center[10..30], &mut RowSums::new(20), &mut grouped);
        // One row at a time, in order.
        let (mut sq, mut dev) = (vec![0.0f32; 20], vec![0.0f32; 20]);
        for row in rows.chunks_exact(len) {
            kernels::accumulate_deviations([&row[10..30]], 1.0, &center[10..30], &mut sq, &mut dev);
        }
        let single: Vec<f64> = (0..20).map(|j| f64::from(sq[j]) + 2.0 * f64::from(center[10 + j]) * f64::from(dev[j])).collect();
        assert_eq!(grouped, single);
    }

    #[test]
    fn update_in_parts_gives_the_bits_of_update() {
        // Long enough for every worker `threads()` allows (up to 8: 3 floats an element here),
        // with a length no split divides evenly.
        let n = threads().min(8) * FLOATS_PER_THREAD / 2 + 7;
        let grad: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let step = |g: f32, theta: f32, st: &mut f32| {
            *st = 0.9 * *st + g * g;
            0.125 + 0.01 * *st + 1e-3 * theta // ≥ 0.125: every element moves
        };
        let (mut theta_whole, mut state_whole) = (vec![0.5f32; n], vec![0.25f32; n]);
        update(&mut theta_whole, &grad, &mut state_whole, step);
        let (mut theta_parts, mut state_parts) = (vec![0.5f32; n], vec![0.25f32; n]);
        update_in_parts(&mut theta_parts, &grad, &mut state_parts, step);
        assert!(theta_whole.iter().zip(&theta_parts).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(state_whole.iter().zip(&state_parts).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(theta_parts.iter().all(|t| *t != 0.5), "every part was updated");
    }

    #[test]
    fn finiteness() {
        assert!(all_finite(&[1.0, 2.0]));
        assert!(!all_finite(&[1.0, f32::NAN]));
        assert_eq!(first_non_finite(&[1.0, 2.0, f32::INFINITY]), Some(2));
        // One bad value anywhere: in each of the streams, at a chunk's edges, in the tail; and
        // the largest finite value passes.
        let n = 4 * 16 * 5 + 13;
        let mut x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 1e30).collect();
        x[7] = f32::MAX;
        x[9] = -f32::MAX;
        assert!(all_finite(&x) && kernels::all_finite(&x));
        for at in [0, 15, 16, 79, 80, 161, 255, 319, n - 13, n - 1] {
            for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(!all_finite(&y) && !kernels::all_finite(&y), "{bad} at {at} passed");
            }
        }
        assert!(all_finite(&[]));
    }
}

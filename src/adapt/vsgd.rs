//! vSGD (paper 002: Schaul, Zhang & LeCun, *No More Pesky Learning Rates*, ICML 2013): learning
//! rates from running averages of the gradient, its second moment and the curvature
//! (docs/algorithms.md §2).
//!
//! vSGD-l, per element (Algorithm 1, §4.1–4.2), with `x = S/N` (per-sample data) or `g²`:
//! `gbar, vbar, hbar ← (1 − 1/τ)·avg + (1/τ)·(g, x, max(h, ε))`,
//! `ρ = gbar² / (vbar/n + (n−1)/n·gbar²)`, `η = ρ / hbar`, `τ ← (1 − ρ)·τ + 1`, `θ ← θ − η g`.
//! vSGD-g (eq. 8, §5) puts `l`, the average of `Σ x`, in place of vbar and `h⁺ = max hbar` in
//! place of hbar: one ρ, η and τ for all parameters. vSGD-b is vSGD-g within each group (§5's
//! blocks).
//!
//! Slow start (§4.4): steps 1 … n0 move nothing. With 1/τ replaced by 1/t the same averages are
//! then arithmetic means; at the end of step n0, vbar (or l) is multiplied by C and τ = 2.
//!
//! The curvature is the caller's (bbprop / diagonal Gauss-Newton, §4.3) or, without one, the
//! finite difference of vSGD-fd (Schaul & LeCun 2013) through the gradient callback.

use crate::algorithm::{Accepts, Algorithm, Context};
use crate::backend::cpu::{self, ElemState, COLUMN_BLOCK};
use crate::backend::{host_params, host_params_mut, TensorMut};
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, GradFn, HostInputs, Layout, SampleData, Samples, StepInputs};
use crate::options::OptionSpec;
use std::ops::{Add, Div, Mul, Range, Sub};

/// Which learning rates vSGD adapts (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// vSGD-l: one rate per element.
    Local,
    /// vSGD-g: one rate for all parameters.
    Global,
    /// vSGD-b: one rate per group.
    Block,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Local => "vsgd-l",
            Variant::Global => "vsgd-g",
            Variant::Block => "vsgd-b",
        }
    }
}

pub fn specs() -> Vec<OptionSpec> {
    vec![
        // The number of slow-start steps sets when the first move happens (§4.4).
        OptionSpec::integer("n0", 10.0, 0.0, f64::INFINITY).structural(),
        // Unset (NaN) means the paper's rule C = d/10, d = all parameters of the optimizer: the
        // Fashion-MNIST benchmark (README, "Sensitivity") diverged with Schaul's C = 2 and not
        // with d/10, so d/10 is the default; any positive value overrides it.
        OptionSpec::positive("slow_start_c", f64::NAN).global().unset_by_default(),
        OptionSpec::positive("eps", 1e-9).global(),
    ]
}

/// vSGD-l's averages of one element (Algorithm 1) and its memory size τ.
#[derive(Debug, Clone, Copy, Default)]
struct LocalElem {
    gbar: f32,
    vbar: f32,
    hbar: f32,
    tau: f32,
}

/// vSGD-g/-b's averages of one element. `Σ gbar²` and `h⁺ = max hbar` need them per element
/// (neither is a function of averaged sums), while the second moment does not: all elements of
/// a unit share τ, so `Σ_i vbar_i` would be exactly the unit's `l`, kept as one scalar.
#[derive(Debug, Clone, Copy, Default)]
struct SharedElem {
    gbar: f32,
    hbar: f32,
}

impl ElemState for LocalElem {
    const FLOATS: usize = 4;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&[self.gbar, self.vbar, self.hbar, self.tau]);
    }
    fn read(v: &[f32]) -> Self {
        LocalElem { gbar: v[0], vbar: v[1], hbar: v[2], tau: v[3] }
    }
}

impl SharedElem {
    /// A state the averages can reach (checkpoints).
    fn possible(&self) -> bool {
        self.gbar.is_finite() && self.hbar >= 0.0
    }
}

impl ElemState for SharedElem {
    const FLOATS: usize = 2;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&[self.gbar, self.hbar]);
    }
    fn read(v: &[f32]) -> Self {
        SharedElem { gbar: v[0], hbar: v[1] }
    }
}

/// What the finite difference (δ = gbar + ε) and `h⁺` read of either element state.
trait Averages: ElemState {
    fn gbar(&self) -> f32;
    fn hbar(&self) -> f32;
}

impl Averages for LocalElem {
    fn gbar(&self) -> f32 {
        self.gbar
    }
    fn hbar(&self) -> f32 {
        self.hbar
    }
}

impl Averages for SharedElem {
    fn gbar(&self) -> f32 {
        self.gbar
    }
    fn hbar(&self) -> f32 {
        self.hbar
    }
}

/// The scalars of vSGD-g (one unit) or of one vSGD-b group.
#[derive(Debug, Clone, Copy)]
struct Unit {
    /// Average of `Σ x` over the unit (§4.1's `l`).
    l: f64,
    tau: f64,
    eta: f64,
}

/// The arithmetic of ρ, η and τ: f32 in the element passes (so they vectorise), f64 for a unit's
/// sums.
trait Real: Copy + PartialOrd + From<f32> + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> {}

impl<T: Copy + PartialOrd + From<f32> + Add<Output = T> + Sub<Output = T> + Mul<Output = T> + Div<Output = T>> Real for T {}

/// `max(a, floor)`; a NaN `a` gives `floor`, as `f32::max` does.
#[inline(always)]
fn at_least<T: Real>(a: T, floor: T) -> T {
    if a > floor {
        a
    } else {
        floor
    }
}

/// What ρ and η depend on besides the state: `n` (N with per-sample data, else 1) and ε.
#[derive(Debug, Clone, Copy)]
struct Rates<T> {
    /// 1/n and (n − 1)/n.
    inv_n: T,
    frac: T,
    eps: T,
}

impl Rates<f64> {
    fn new(n: f64, eps: f64) -> Self {
        Rates { inv_n: 1.0 / n, frac: (n - 1.0) / n, eps }
    }

    fn to_f32(self) -> Rates<f32> {
        Rates { inv_n: self.inv_n as f32, frac: self.frac as f32, eps: self.eps as f32 }
    }
}

impl<T: Real> Rates<T> {
    /// `ρ = gbar² / max(v/n + (n−1)/n·gbar², ε)`: eq. 7 (element) or eq. 8 (unit) with the
    /// minibatch form of docs/algorithms.md §2 — the share of the squared mean in the second moment.
    #[inline(always)]
    fn rho(&self, gbar_sq: T, second_moment: T) -> T {
        gbar_sq / at_least(second_moment * self.inv_n + self.frac * gbar_sq, self.eps)
    }

    /// `η = ρ / max(curvature, ε)`.
    #[inline(always)]
    fn eta(&self, rho: T, curvature: T) -> T {
        rho / at_least(curvature, self.eps)
    }
}

/// `(1 − 1/τ)·avg + (1/τ)·sample`: the running averages of §4.1 — and, with 1/τ = 1/t, the
/// arithmetic means of the slow start (§4.4).
#[inline(always)]
fn average(avg: f64, sample: f64, inv_tau: f64) -> f64 {
    (1.0 - inv_tau) * avg + inv_tau * sample
}

/// `average` of a float32 average, formed in f64: when the average is much smaller than the
/// sample (a mean gradient near 0 amid noise) the two terms cancel, and float32 arithmetic would
/// leave the average with the sample's rounding error rather than its own.
#[inline(always)]
fn average_f32(avg: f32, sample: f64, inv_tau: f32) -> f32 {
    average(f64::from(avg), sample, f64::from(inv_tau)) as f32
}

/// `τ ← max((1 − ρ)·τ + 1, 1)` (§4.2): the memory grows by one per small step and falls back
/// towards 1 after a step close to the Newton step.
#[inline(always)]
fn next_tau<T: Real>(tau: T, rho: T) -> T {
    let one = T::from(1.0);
    at_least((one - rho) * tau + one, one)
}

/// Where a step stands in the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Step `t` of 1 … n0 (§4.4): averages with 1/t, no move; `finish` is C at step n0.
    SlowStart {
        t: u64,
        finish: Option<f64>,
    },
    Regular,
}

impl LocalElem {
    const FRESH: LocalElem = LocalElem { gbar: 0.0, vbar: 0.0, hbar: 0.0, tau: 1.0 };

    /// A state the averages can reach (checkpoints).
    fn possible(&self) -> bool {
        self.gbar.is_finite() && self.vbar >= 0.0 && self.hbar >= 0.0 && self.tau.is_finite() && self.tau >= 1.0
    }

    /// The three averages of Algorithm 1 with weight `inv_tau` on this step's sample.
    #[inline(always)]
    fn average(&mut self, g: f32, x: f64, h: f32, inv_tau: f32, eps: f32) {
        self.gbar = average_f32(self.gbar, g.into(), inv_tau);
        self.vbar = average_f32(self.vbar, x, inv_tau);
        self.hbar = average_f32(self.hbar, at_least(h, eps).into(), inv_tau);
    }

    /// Algorithm 1 for one element after the slow start; returns its displacement η g.
    #[inline(always)]
    fn advance(&mut self, g: f32, x: f64, h: f32, rates: &Rates<f32>) -> f32 {
        self.average(g, x, h, 1.0 / self.tau, rates.eps);
        let rho = self.rho(rates);
        self.tau = next_tau(self.tau, rho);
        rates.eta(rho, self.hbar) * g
    }

    #[inline(always)]
    fn rho(&self, rates: &Rates<f32>) -> f32 {
        rates.rho(self.gbar * self.gbar, self.vbar)
    }

    /// The η of the step that produced this state (the same operations as `advance`, so apply
    /// and the read-back see the η that step used, bit for bit).
    #[inline(always)]
    fn eta(&self, rates: &Rates<f32>) -> f32 {
        rates.eta(self.rho(rates), self.hbar)
    }
}

/// One tensor's inputs to a pass.
#[derive(Clone, Copy)]
struct TensorInputs<'a> {
    tensor: usize,
    grad: &'a [f32],
    /// The caller's curvature, or the finite-difference estimate.
    curvature: &'a [f32],
    samples: Option<&'a Samples<&'a [f32]>>,
}

impl TensorInputs<'_> {
    /// Runs `pass(columns, x)` in blocks of `COLUMN_BLOCK` columns, with `x` per element of the
    /// block in f64: `S/N` from the per-sample data (either form, either scale convention), or
    /// `g²` without per-sample data (docs/algorithms.md §2) — exactly the square a gbar = g has, so
    /// that ρ = 1 holds exactly at τ = 1.
    fn for_each_block(&self, mut pass: impl FnMut(Range<usize>, &[f64])) {
        let (t, len) = (self.tensor, self.grad.len());
        // Block scratch on the heap, not the stack: a host thread may have a small stack.
        let block = COLUMN_BLOCK.min(len);
        let per_sample_rows = matches!(self.samples, Some(Samples { data: SampleData::PerSample(_), .. }));
        let (zero, mut x) = (vec![0.0f32; block], vec![0.0f64; block]);
        let mut sums = cpu::RowSums::new(if per_sample_rows { block } else { 0 });
        for start in (0..len).step_by(COLUMN_BLOCK) {
            let end = (start + COLUMN_BLOCK).min(len);
            let x = &mut x[..end - start];
            match self.samples {
                None => x.iter_mut().zip(&self.grad[start..end]).for_each(|(x, &g)| *x = f64::from(g) * f64::from(g)),
                Some(samples) => {
                    let n = samples.batch_size;
                    // Entries are k·g_i: k = 1 ("sample") or N ("mean"); around 0 the spread is S = Σ (k·entry)².
                    let k = samples.square_scale().sqrt();
                    match &samples.data {
                        SampleData::SumSq(s) => cpu::spread_from_sum_sq(&s[t][start..end], n, k, &zero[..end - start], x),
                        SampleData::PerSample(rows) => cpu::spread_from_rows(rows[t], n, len, start, k, &zero[..end - start], &mut sums, x),
                    }
                    x.iter_mut().for_each(|s| *s /= n as f64);
                }
            }
            pass(start..end, x);
        }
    }
}

/// One pass of Algorithm 1 over a tensor: advances every element and, when `theta` is given
/// (the fused step), moves θ by s in the same pass; otherwise returns `Σ g·s` (propose).
fn local_pass(elems: &mut [LocalElem], inputs: TensorInputs, phase: Phase, rates: &Rates<f32>, mut theta: Option<&mut [f32]>) -> f64 {
    let mut g_dot_s = 0.0;
    inputs.for_each_block(|cols, x| {
        let (g, h, st) = (&inputs.grad[cols.clone()], &inputs.curvature[cols.clone()], &mut elems[cols.clone()]);
        let (x, h, st) = (&x[..g.len()], &h[..g.len()], &mut st[..g.len()]);
        match (phase, theta.as_deref_mut()) {
            (Phase::SlowStart { t, finish }, _) => {
                let inv_t = 1.0 / t as f32;
                st.iter_mut().zip(g).zip(x).zip(h).for_each(|(((e, &g), &x), &h)| e.average(g, x, h, inv_t, rates.eps));
                if let Some(c) = finish {
                    // End of the slow start: overestimate the second moment by C, τ = 2 (§4.4).
                    st.iter_mut().for_each(|e| (e.vbar, e.tau) = (c as f32 * e.vbar, 2.0));
                }
            }
            (Phase::Regular, Some(theta)) => {
                for ((((th, e), &g), &x), &h) in theta[cols].iter_mut().zip(st.iter_mut()).zip(g).zip(x).zip(h) {
                    *th -= e.advance(g, x, h, rates);
                }
            }
            (Phase::Regular, None) => {
                g_dot_s += cpu::reduce::<1, _>(g.len(), |j| [f64::from(g[j]) * f64::from(st[j].advance(g[j], x[j], h[j], rates))])[0];
            }
        }
    });
    g_dot_s
}

/// What pass 1 of vSGD-g/-b gathers over a unit.
#[derive(Debug, Clone, Copy, Default)]
struct UnitSums {
    gbar_sq: f64,
    x: f64,
    g_sq: f64,
    /// `h⁺ = max hbar`.
    h_plus: f32,
}

/// Pass 1 of vSGD-g/-b over a tensor: advances gbar and hbar with the unit's 1/τ (1/t in the
/// slow start) and adds `Σ gbar²`, `Σ x`, `Σ g²` and `max hbar` to `sums`.
fn shared_pass(elems: &mut [SharedElem], inputs: TensorInputs, inv_tau: f32, eps: f32, sums: &mut UnitSums) {
    inputs.for_each_block(|cols, x| {
        let (g, h, st) = (&inputs.grad[cols.clone()], &inputs.curvature[cols.clone()], &mut elems[cols]);
        let (x, h, st) = (&x[..g.len()], &h[..g.len()], &mut st[..g.len()]);
        let [gbar_sq, x_sum, g_sq] = cpu::reduce::<3, _>(g.len(), |j| {
            let e = &mut st[j];
            e.gbar = average_f32(e.gbar, g[j].into(), inv_tau);
            e.hbar = average_f32(e.hbar, at_least(h[j], eps).into(), inv_tau);
            let (gbar, gj) = (f64::from(e.gbar), f64::from(g[j]));
            [gbar * gbar, x[j], gj * gj]
        });
        sums.gbar_sq += gbar_sq;
        sums.x += x_sum;
        sums.g_sq += g_sq;
        sums.h_plus = st.iter().fold(sums.h_plus, |m, e| m.max(e.hbar));
    });
}

impl Unit {
    const FRESH: Unit = Unit { l: 0.0, tau: 1.0, eta: 0.0 };

    /// Scalars a unit can reach (checkpoints).
    fn possible(&self) -> bool {
        self.l.is_finite() && self.l >= 0.0 && self.tau.is_finite() && self.tau >= 1.0 && self.eta.is_finite() && self.eta >= 0.0
    }

    /// vSGD-g on a unit's sums (eq. 8): l's average, then (after the slow start) ρ, `η = ρ/h⁺`, τ.
    fn advance(&mut self, sums: &UnitSums, phase: Phase, inv_tau: f64, rates: &Rates<f64>) {
        self.l = average(self.l, sums.x, inv_tau);
        match phase {
            Phase::SlowStart { finish: Some(c), .. } => {
                self.l *= c;
                self.tau = 2.0;
            }
            Phase::SlowStart { finish: None, .. } => {}
            Phase::Regular => {
                let rho = rates.rho(sums.gbar_sq, self.l);
                self.eta = rates.eta(rho, f64::from(sums.h_plus));
                self.tau = next_tau(self.tau, rho);
            }
        }
    }
}

/// Buffers of the finite difference, kept between steps (allocated on first use, not saved).
#[derive(Default)]
struct Scratch {
    /// θ + δ, where the callback evaluates the gradient.
    shifted: Vec<Vec<f32>>,
    /// ∇f(θ + δ), then overwritten by the curvature estimate h.
    curvature: Vec<Vec<f32>>,
}

/// `h = |∇f(θ + δ) − g| / max(|δ|, ε)` with `δ = gbar + ε`, gbar the average before this step,
/// on the same batch (docs/algorithms.md §2 decision: vSGD-fd of Schaul & LeCun 2013). In float32,
/// θ + δ is rounded; δ is taken as the step actually represented, `(θ + δ) − θ`, so h is the
/// difference quotient of the two points evaluated — 0/ε where θ + δ rounds to θ.
fn finite_difference<E: Averages>(
    elems: &[Vec<E>],
    params: &[&[f32]],
    grads: &[&[f32]],
    grad_fn: &mut GradFn,
    eps: f32,
    check_finite: bool,
    scratch: &mut Scratch,
) -> Result<()> {
    if scratch.shifted.is_empty() {
        // Sized by the caller's tensors: a failed allocation is an error, not an abort.
        let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
        scratch.curvature = cpu::filled_per_tensor(&lens, 0.0)?;
        scratch.shifted = cpu::filled_per_tensor(&lens, 0.0)?;
    }
    for ((shifted, theta), st) in scratch.shifted.iter_mut().zip(params).zip(elems) {
        for ((s, &th), e) in shifted.iter_mut().zip(theta.iter()).zip(st) {
            *s = th + (e.gbar() + eps);
        }
    }
    let points: Vec<&[f32]> = scratch.shifted.iter().map(Vec::as_slice).collect();
    let mut outs: Vec<&mut [f32]> = scratch.curvature.iter_mut().map(Vec::as_mut_slice).collect();
    grad_fn(&points, &mut outs).map_err(|why| Error::callback(format!("the gradient callback failed at θ + δ (vSGD finite differences): {why}")))?;
    for (t, out) in outs.iter_mut().enumerate() {
        if check_finite && !cpu::all_finite(out) {
            let i = cpu::first_non_finite(out).unwrap_or(0);
            return Err(Error::non_finite(format!("tensor {t}: the gradient callback returned grad[{i}] = {} at θ + δ (vSGD finite differences)", out[i])));
        }
        for ((h, &g), (&s, &th)) in out.iter_mut().zip(grads[t]).zip(points[t].iter().zip(params[t].iter())) {
            *h = (*h - g).abs() / (s - th).abs().max(eps);
        }
    }
    Ok(())
}

/// `max hbar` over `tensors` (0 before the first step).
fn max_hbar<E: Averages>(elems: &[Vec<E>], tensors: &[usize]) -> f64 {
    tensors.iter().flat_map(|&t| elems[t].iter()).fold(0.0f32, |m, e| m.max(e.hbar())).into()
}

/// `[min, median, max]`; the median of an even count is the mean of the two middle values.
fn min_median_max(mut values: Vec<f64>) -> [f64; 3] {
    if values.is_empty() {
        return [0.0; 3];
    }
    let (count, mid) = (values.len(), values.len() / 2);
    let (lower, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    let median = if count % 2 == 1 { upper } else { 0.5 * (lower.iter().copied().fold(f64::NEG_INFINITY, f64::max) + upper) };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [min, median, max]
}

enum State {
    /// vSGD-l: per tensor, per element.
    Local(Vec<Vec<LocalElem>>),
    /// vSGD-g/-b: per-element averages, and per unit its scalars and tensors.
    Shared { elems: Vec<Vec<SharedElem>>, units: Vec<Unit>, unit_tensors: Vec<Vec<usize>> },
}

/// vSGD-l, -g or -b (docs/algorithms.md §2).
pub struct Vsgd {
    variant: Variant,
    /// Steps taken, the slow-start steps included.
    steps: u64,
    /// n and ε of the last step: vsgd-l recomputes η from its state with them (apply, lr, telemetry).
    rates: Rates<f64>,
    state: State,
    scratch: Scratch,
}

impl Vsgd {
    /// A fresh state: zero averages, τ = 1 (what the first step sees when n0 = 0).
    pub fn new(variant: Variant, layout: &Layout) -> Result<Self> {
        let state = match variant {
            Variant::Local => State::Local(cpu::filled_per_tensor(&layout.lens, LocalElem::FRESH)?),
            Variant::Global | Variant::Block => {
                let unit_tensors = if variant == Variant::Global { vec![(0..layout.n_tensors()).collect()] } else { layout.members.clone() };
                State::Shared {
                    elems: cpu::filled_per_tensor(&layout.lens, SharedElem::default())?,
                    units: crate::backend::filled(unit_tensors.len(), Unit::FRESH)?,
                    unit_tensors,
                }
            }
        };
        // `rates` is set by every step before anything reads it (nothing does before step n0 + 1).
        Ok(Vsgd { variant, steps: 0, rates: Rates::new(1.0, 0.0), state, scratch: Scratch::default() })
    }

    fn n0(ctx: &Context) -> u64 {
        ctx.options.get(0, "n0") as u64
    }

    /// The unit whose rate group `group` uses.
    fn unit_of(&self, group: usize) -> usize {
        if self.variant == Variant::Global {
            0
        } else {
            group
        }
    }

    /// Everything that may fail comes first — the finite-difference curvature when the caller
    /// gives none — so that an error leaves the state as it was; then the step is counted.
    fn begin(&mut self, ctx: &Context, params: &[&[f32]], inputs: &HostInputs, callbacks: &mut Callbacks) -> Result<Phase> {
        let eps = ctx.options.get(0, "eps");
        if inputs.curvature.is_none() {
            let grad_fn = callbacks.grad_fn.as_mut().ok_or_else(|| missing_curvature(self.variant))?;
            let check = ctx.options.flag(0, "check_finite");
            match &self.state {
                State::Local(e) => finite_difference(e, params, &inputs.grads, grad_fn, eps as f32, check, &mut self.scratch)?,
                State::Shared { elems, .. } => finite_difference(elems, params, &inputs.grads, grad_fn, eps as f32, check, &mut self.scratch)?,
            }
        }
        self.steps += 1;
        self.rates = Rates::new(inputs.samples.as_ref().map_or(1.0, |s| s.batch_size as f64), eps);
        let n0 = Self::n0(ctx);
        Ok(if self.steps <= n0 {
            let finish = (self.steps == n0).then(|| match ctx.options.get(0, "slow_start_c") {
                c if c.is_nan() => ctx.layout.lens.iter().sum::<usize>() as f64 / 10.0,
                c => c,
            });
            Phase::SlowStart { t: self.steps, finish }
        } else {
            Phase::Regular
        })
    }

    /// Advances the state by one step of `phase` and returns `Σ g·s`; vsgd-l also moves θ in
    /// the same pass when `theta` is given.
    fn advance(&mut self, phase: Phase, inputs: &HostInputs, mut theta: Option<&mut [&mut [f32]]>) -> f64 {
        let curvature: Vec<&[f32]> = match &inputs.curvature {
            Some(h) => h.clone(),
            None => self.scratch.curvature.iter().map(Vec::as_slice).collect(),
        };
        let tensor = |t: usize| TensorInputs { tensor: t, grad: inputs.grads[t], curvature: curvature[t], samples: inputs.samples.as_ref() };
        let (rates, element_rates) = (self.rates, self.rates.to_f32());
        match &mut self.state {
            State::Local(elems) => {
                (0..elems.len()).map(|t| local_pass(&mut elems[t], tensor(t), phase, &element_rates, theta.as_mut().map(|p| &mut *p[t]))).sum()
            }
            State::Shared { elems, units, unit_tensors } => {
                let mut g_dot_s = 0.0;
                for (unit, tensors) in units.iter_mut().zip(unit_tensors.iter()) {
                    let inv_tau = match phase {
                        Phase::SlowStart { t, .. } => 1.0 / t as f64,
                        Phase::Regular => 1.0 / unit.tau,
                    };
                    let mut sums = UnitSums::default();
                    for &t in tensors {
                        shared_pass(&mut elems[t], tensor(t), inv_tau as f32, element_rates.eps, &mut sums);
                    }
                    unit.advance(&sums, phase, inv_tau, &rates);
                    if phase == Phase::Regular {
                        // Σ g·(η g) = η Σ g², up to the float32 rounding of each displacement.
                        g_dot_s += f64::from(unit.eta as f32) * sums.g_sq;
                    }
                }
                g_dot_s
            }
        }
    }

    /// The group's η values (one per element for vsgd-l) after the last regular step.
    fn etas(&self, ctx: &Context, group: usize) -> Vec<f64> {
        match &self.state {
            State::Local(elems) => {
                let rates = self.rates.to_f32();
                ctx.layout.members[group].iter().flat_map(|&t| elems[t].iter().map(move |e| f64::from(e.eta(&rates)))).collect()
            }
            State::Shared { units, .. } => vec![units[self.unit_of(group)].eta],
        }
    }

    /// `h⁺` of the group: max hbar over the group (l, b) or over all tensors (g).
    fn h_plus(&self, ctx: &Context, group: usize) -> f64 {
        match &self.state {
            State::Local(elems) => max_hbar(elems, &ctx.layout.members[group]),
            State::Shared { elems, unit_tensors, .. } => max_hbar(elems, &unit_tensors[self.unit_of(group)]),
        }
    }
}

impl Vsgd {
    /// `θ ← θ − scale·η g` from the advanced state (the slow start moves nothing).
    fn apply_host(&self, ctx: &Context, params: &mut [&mut [f32]], inputs: &HostInputs, scale: f32) {
        if self.steps <= Self::n0(ctx) {
            return;
        }
        match &self.state {
            State::Local(elems) => {
                let rates = self.rates.to_f32();
                for (t, p) in params.iter_mut().enumerate() {
                    cpu::apply_scaled(p, inputs.grads[t], &elems[t], scale, |g, _, e| e.eta(&rates) * g);
                }
            }
            State::Shared { elems, units, unit_tensors } => {
                for (unit, tensors) in units.iter().zip(unit_tensors) {
                    let eta = unit.eta as f32;
                    for &t in tensors {
                        cpu::apply_scaled(params[t], inputs.grads[t], &elems[t], scale, |g, _, _| eta * g);
                    }
                }
            }
        }
    }
}

fn missing_curvature(variant: Variant) -> Error {
    Error::invalid(format!(
        "{} needs a curvature estimate: pass curvature (a non-negative diagonal per tensor, e.g. BackPACK's DiagGGN) \
         or a gradient callback (Python: grad_closure) so it can use finite differences",
        variant.name()
    ))
}

impl Algorithm for Vsgd {
    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts { per_sample: true, curvature: true, grad_fn: true, ..Accepts::default() }
    }

    fn check(&self, _ctx: &Context, inputs: &StepInputs, callbacks: &Callbacks) -> Result<()> {
        if inputs.curvature.is_none() && callbacks.grad_fn.is_none() {
            return Err(missing_curvature(self.variant));
        }
        Ok(())
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<f64> {
        let inputs = inputs.host()?;
        let phase = self.begin(ctx, &host_params(params)?, &inputs, callbacks)?;
        Ok(self.advance(phase, &inputs, None))
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        let inputs = inputs.host()?;
        self.apply_host(ctx, &mut host_params_mut(params)?, &inputs, scale);
        Ok(())
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        let inputs = inputs.host()?;
        let mut params = host_params_mut(params)?;
        let phase = {
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            self.begin(ctx, &views, &inputs, callbacks)?
        };
        if self.variant == Variant::Local {
            self.advance(phase, &inputs, Some(&mut params));
        } else {
            // η of a unit needs the whole unit's sums: a second pass is unavoidable.
            self.advance(phase, &inputs, None);
            self.apply_host(ctx, &mut params, &inputs, 1.0);
        }
        Ok(())
    }

    /// vsgd-l: the median η of the group's elements; vsgd-g/-b: the unit's η; 0 in the slow start.
    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        if self.steps <= Self::n0(ctx) {
            return Ok(0.0);
        }
        Ok(min_median_max(self.etas(ctx, group))[1])
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        let n0 = Self::n0(ctx);
        let slow = self.steps <= n0;
        // τ is set at the end of step n0 (2) or starts at 1 without slow start; 0 until then.
        let tau = if self.steps == 0 || self.steps < n0 {
            [0.0; 3]
        } else {
            match &self.state {
                State::Local(elems) => min_median_max(ctx.layout.members[group].iter().flat_map(|&t| elems[t].iter().map(|e| f64::from(e.tau))).collect()),
                State::Shared { units, .. } => [units[self.unit_of(group)].tau; 3],
            }
        };
        let eta = if slow { [0.0; 3] } else { min_median_max(self.etas(ctx, group)) };
        Ok(vec![
            ("tau_min", tau[0]),
            ("tau_median", tau[1]),
            ("tau_max", tau[2]),
            ("eta_min", eta[0]),
            ("eta_median", eta[1]),
            ("eta_max", eta[2]),
            ("h_plus", self.h_plus(ctx, group)),
            ("slow_start", if self.steps > 0 && slow { 1.0 } else { 0.0 }),
        ])
    }

    fn started(&self) -> Result<bool> {
        Ok(self.steps > 0)
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        w.u64(self.steps);
        w.f64s(&[self.rates.inv_n, self.rates.frac, self.rates.eps]);
        match &self.state {
            State::Local(elems) => elems.iter().for_each(|e| w.elem_states(e)),
            State::Shared { elems, units, .. } => {
                elems.iter().for_each(|e| w.elem_states(e));
                w.f64s(&units.iter().flat_map(|u| [u.l, u.tau, u.eta]).collect::<Vec<_>>());
            }
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let steps = r.count("vSGD step count")?;
        let v = r.f64s_exact(3, "vSGD rates")?;
        let rates = Rates { inv_n: v[0], frac: v[1], eps: v[2] };
        // 1/n and (n−1)/n of some n ≥ 1, and ε ≥ 0 (0 only before the first regular step).
        let possible = (v[0] > 0.0 && v[0] <= 1.0) && (0.0..1.0).contains(&v[1]) && v[2].is_finite() && v[2] >= 0.0;
        if !possible {
            return Err(Error::checkpoint(format!("checkpoint vSGD rates [1/n, (n−1)/n, ε] = {v:?} are impossible (corrupted?)")));
        }
        let name = self.variant.name();
        // Averages of finite g, of squares and of floored curvatures, and τ ≥ 1 (docs/algorithms.md §2).
        let rule = "gbar is finite, vbar and hbar ≥ 0, τ ≥ 1";
        let state = match &self.state {
            State::Local(_) => State::Local(crate::checkpoint::read_elem_states(r, &ctx.layout.lens, name, LocalElem::possible, rule)?),
            State::Shared { units, unit_tensors, .. } => {
                let elems = crate::checkpoint::read_elem_states(r, &ctx.layout.lens, name, SharedElem::possible, rule)?;
                let v = r.f64s_exact(3 * units.len(), "vSGD unit scalars")?;
                let units: Vec<Unit> = v.chunks_exact(3).map(|c| Unit { l: c[0], tau: c[1], eta: c[2] }).collect();
                if let Some(u) = units.iter().position(|u| !u.possible()) {
                    return Err(Error::checkpoint(format!(
                        "checkpoint vSGD unit {u} = {:?} is impossible: l and η ≥ 0 and finite, τ ≥ 1 (corrupted?)",
                        units[u]
                    )));
                }
                State::Shared { elems, units, unit_tensors: unit_tensors.clone() }
            }
        };
        (self.steps, self.rates, self.state) = (steps, rates, state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Tensor;
    use crate::optimizer::SampleScale;
    use crate::options::Options;
    use crate::registry;

    #[test]
    fn min_median_max_takes_the_mean_of_the_middle_pair() {
        assert_eq!(min_median_max(vec![3.0, 1.0, 2.0]), [1.0, 2.0, 3.0]);
        assert_eq!(min_median_max(vec![4.0, 1.0, 3.0, 2.0]), [1.0, 2.5, 4.0]);
        assert_eq!(min_median_max(vec![]), [0.0; 3]);
    }

    #[test]
    fn rho_is_one_without_noise_and_zero_without_signal() {
        for n in [1.0, 7.0] {
            let rates = Rates::new(n, 1e-9);
            // A noiseless gradient: every sample equals the mean, x = gbar².
            assert!((rates.rho(4.0, 4.0) - 1.0).abs() < 1e-15);
            assert_eq!(rates.rho(0.0, 3.0), 0.0);
            // ε floors the denominator.
            assert_eq!(rates.rho(0.0, 0.0), 0.0);
        }
        // n = 4 samples with mean 1 and second moment 3: ρ = 1 / (3/4 + 3/4).
        assert!((Rates::new(4.0, 1e-9).rho(1.0, 3.0) - 1.0 / 1.5).abs() < 1e-15);
        assert_eq!(next_tau(5.0, 1.2), 1.0, "τ never drops below 1");
        assert_eq!(next_tau(5.0f32, 0.5), 3.5);
    }

    #[test]
    fn finite_difference_uses_the_step_float32_represents() {
        let mut elems = vec![vec![LocalElem::FRESH; 3]];
        elems[0][2].gbar = 1e-7;
        let optimum = [1.0f32, 0.0, 1.0];
        let (theta, hessian) = (vec![1.5f32, 0.0, 1.0], [2.0f32, 4.0, 8.0]);
        let grad: Vec<f32> = (0..3).map(|i| hessian[i] * (theta[i] - optimum[i])).collect();
        let mut quadratic: GradFn = Box::new(|at: &[&[f32]], out: &mut [&mut [f32]]| {
            (0..3).for_each(|i| out[0][i] = hessian[i] * (at[0][i] - optimum[i]));
            Ok(())
        });
        let mut scratch = Scratch::default();
        let params: Vec<&[f32]> = vec![&theta];
        finite_difference(&elems, &params, &[&grad], &mut quadratic, 1e-9, true, &mut scratch).unwrap();
        let h = &scratch.curvature[0];
        // δ = ε: 1.5 + 1e-9 rounds to 1.5, so the two gradients agree and h = 0/ε = 0.
        assert_eq!(h[0], 0.0);
        // At 0 the step 1e-9 is represented: the quotient is the curvature.
        assert!((h[1] - 4.0).abs() < 1e-6, "{}", h[1]);
        // 1 + (1e-7 + 1e-9) rounds to 1 + 2⁻²³: dividing by the nominal δ would give 8·1.18.
        assert!((h[2] - 8.0).abs() < 1e-6, "{}", h[2]);
    }

    fn context_parts(name: &str, lens: &[usize], groups: &[usize]) -> (Layout, Options) {
        let layout = Layout::new(lens, Some(groups)).unwrap();
        let options = Options::new(registry::specs(name, "").unwrap(), layout.n_groups()).unwrap();
        (layout, options)
    }

    /// Deterministic pseudo-random numbers in [-1, 1).
    fn noise(seed: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    /// propose + apply(1) is the fused step bit for bit, through the slow start and after, and
    /// propose returns Σ g·s of the move that apply makes.
    #[test]
    fn propose_then_apply_is_the_fused_step() {
        let lens = [5usize, 1100, 3];
        for variant in [Variant::Local, Variant::Global, Variant::Block] {
            let (layout, mut options) = context_parts(variant.name(), &lens, &[0, 0, 1]);
            options.set(variant.name(), "n0", None, 3.0).unwrap();
            let ctx = Context { layout: &layout, options: &options };
            let (mut fused, mut split) = (Vsgd::new(variant, &layout).unwrap(), Vsgd::new(variant, &layout).unwrap());
            let mut theta_fused: Vec<Vec<f32>> = lens.iter().map(|&n| noise(1, n)).collect();
            let mut theta_split = theta_fused.clone();
            for step in 0..12u32 {
                let grads: Vec<Vec<f32>> =
                    theta_fused.iter().zip(&lens).map(|(th, &n)| th.iter().zip(noise(step + 2, n)).map(|(t, e)| 2.0 * t + 0.3 * e).collect()).collect();
                let curvature: Vec<Vec<f32>> = lens.iter().map(|&n| vec![2.0; n]).collect();
                let sum_sq: Vec<Vec<f32>> = grads.iter().map(|g| g.iter().map(|v| 4.0 * v * v + 0.1).collect()).collect();
                let mut inputs = StepInputs::new(grads.iter().map(Vec::as_slice).collect());
                inputs.curvature = Some(curvature.iter().map(Tensor::from).collect());
                inputs.samples =
                    Some(Samples { data: SampleData::SumSq(sum_sq.iter().map(Tensor::from).collect()), scale: SampleScale::Sample, batch_size: 4 });
                let mut p: Vec<TensorMut> = theta_fused.iter_mut().map(|t| TensorMut::host(t)).collect();
                fused.step(&ctx, &mut p, &inputs, &mut Callbacks::default()).unwrap();
                let before = theta_split.clone();
                let mut p: Vec<TensorMut> = theta_split.iter_mut().map(|t| TensorMut::host(t)).collect();
                let g_dot_s = split.propose(&ctx, &p, &inputs, &mut Callbacks::default()).unwrap();
                split.apply(&ctx, &mut p, &inputs, 1.0).unwrap();
                assert_eq!(theta_fused, theta_split, "{variant:?} step {step}");
                let moved: f64 = before
                    .iter()
                    .flatten()
                    .zip(theta_split.iter().flatten())
                    .zip(grads.iter().flatten())
                    .map(|((b, a), g)| f64::from(*g) * f64::from(b - a))
                    .sum();
                assert!((g_dot_s - moved).abs() <= 1e-5 * moved.abs().max(1e-30), "{variant:?} step {step}: {g_dot_s} vs {moved}");
                assert_eq!(step < 3, moved == 0.0, "{variant:?}: the slow start moves nothing, the first regular step moves");
            }
        }
    }
}

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

use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{
    abstain, filled, host_params, host_tensors, reduced_pass, Commit, Device, ElemState, ElementRule, KernelRule, Memory, Record, SampleTensor, SampleView,
    Sampled, SampledRule, SolveRule, Tensor, TensorMut,
};
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, GradFn, Layout, SampleData, StepInputs};
use crate::options::OptionSpec;
use std::ops::{Add, Div, Mul, Sub};

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

/// vSGD-l's averages of one element (Algorithm 1) and its memory size τ (cuda/vsgd.cu's twin).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalElem {
    pub gbar: f32,
    pub vbar: f32,
    pub hbar: f32,
    pub tau: f32,
}

/// vSGD-g/-b's averages of one element. `Σ gbar²` and `h⁺ = max hbar` need them per element
/// (neither is a function of averaged sums), while the second moment does not: all elements of
/// a unit share τ, so `Σ_i vbar_i` would be exactly the unit's `l`, kept as one scalar.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SharedElem {
    pub gbar: f32,
    pub hbar: f32,
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

/// The scalars of vSGD-g (one unit) or of one vSGD-b group: one record each, advanced on the
/// device by [`UnitSolve`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Unit {
    /// Average of `Σ x` over the unit (§4.1's `l`).
    pub l: f64,
    pub tau: f64,
    pub eta: f64,
}

impl Record for Unit {}

impl Unit {
    /// Scalars a unit can reach (checkpoints).
    fn possible(&self) -> bool {
        self.l.is_finite() && self.l >= 0.0 && self.tau.is_finite() && self.tau >= 1.0 && self.eta.is_finite() && self.eta >= 0.0
    }
}

/// The arithmetic of ρ, η and τ: f32 in the element passes (so they vectorise), f64 for a unit's
/// sums.
pub(crate) trait Real: Copy + PartialOrd + From<f32> + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> {}

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
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates<T> {
    /// 1/n and (n − 1)/n.
    pub inv_n: T,
    pub frac: T,
    pub eps: T,
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

/// A slow-start step of vSGD-l (§2.4): the averages with weight 1/t, no move; at step n0
/// (`finishing`) vbar is multiplied by C and τ = 2.
pub(crate) struct LocalSlowStart;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowStartCoeffs {
    pub inv_t: f32,
    pub eps: f32,
    pub c: f32,
    pub finishing: u32,
}

impl KernelRule for LocalSlowStart {
    type State = LocalElem;
    type Coeffs = SlowStartCoeffs;
    type Record = ();
    type Prepared = SlowStartCoeffs;
    const KERNEL: &'static str = "alr_vsgd_local_slow_start";
    fn prepare(c: &SlowStartCoeffs, _: &()) -> SlowStartCoeffs {
        *c
    }
}

impl SampledRule for LocalSlowStart {
    #[inline(always)]
    fn advance(p: &SlowStartCoeffs, g: f32, x: f64, h: f32, e: &mut LocalElem) -> Sampled {
        e.average(g, x, h, p.inv_t, p.eps);
        if p.finishing != 0 {
            // End of the slow start: overestimate the second moment by C, τ = 2 (§4.4).
            (e.vbar, e.tau) = (p.c * e.vbar, 2.0);
        }
        Sampled::default()
    }
}

/// A regular step of vSGD-l (Algorithm 1): displacement η g, and `g·(η g)` for GI's φ.
pub(crate) struct LocalStep;

impl KernelRule for LocalStep {
    type State = LocalElem;
    type Coeffs = Rates<f32>;
    type Record = ();
    type Prepared = Rates<f32>;
    const KERNEL: &'static str = "alr_vsgd_local_step";
    fn prepare(c: &Rates<f32>, _: &()) -> Rates<f32> {
        *c
    }
}

impl SampledRule for LocalStep {
    #[inline(always)]
    fn advance(rates: &Rates<f32>, g: f32, x: f64, h: f32, e: &mut LocalElem) -> Sampled {
        let displacement = e.advance(g, x, h, rates);
        Sampled { displacement, sums: [f64::from(g) * f64::from(displacement), 0.0, 0.0], max: 0.0 }
    }
}

/// vSGD-l's move `η g` from the state a step advanced (GI's apply): the state is only read.
pub(crate) struct LocalMove;

impl KernelRule for LocalMove {
    type State = LocalElem;
    type Coeffs = Rates<f32>;
    type Record = ();
    type Prepared = Rates<f32>;
    const KERNEL: &'static str = "alr_vsgd_local_move";
    fn prepare(c: &Rates<f32>, _: &()) -> Rates<f32> {
        *c
    }
}

impl ElementRule for LocalMove {
    #[inline(always)]
    fn advance(rates: &Rates<f32>, g: f32, theta: f32, e: &mut LocalElem) -> f32 {
        Self::delta(rates, g, theta, e)
    }
    #[inline(always)]
    fn delta(rates: &Rates<f32>, g: f32, _: f32, e: &LocalElem) -> f32 {
        e.eta(rates) * g
    }
}

/// Pass 1 of vSGD-g/-b (eq. 8): advances gbar and hbar with the unit's 1/τ (1/t in the slow
/// start, `slow_inv_t` > 0) and gathers `[Σ gbar², Σ x, Σ g², max hbar]`.
pub(crate) struct SharedAverages;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct AverageCoeffs {
    /// 1/t in the slow start; 0 after it (the unit's τ then sets the weight).
    pub slow_inv_t: f64,
    pub eps: f32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct AveragePrepared {
    inv_tau: f32,
    eps: f32,
}

/// 1/τ of a unit's averages this step: 1/t in the slow start, else from its τ.
fn unit_inv_tau(slow_inv_t: f64, unit: &Unit) -> f64 {
    if slow_inv_t > 0.0 {
        slow_inv_t
    } else {
        1.0 / unit.tau
    }
}

impl KernelRule for SharedAverages {
    type State = SharedElem;
    type Coeffs = AverageCoeffs;
    type Record = Unit;
    type Prepared = AveragePrepared;
    const KERNEL: &'static str = "alr_vsgd_shared_averages";
    fn prepare(c: &AverageCoeffs, unit: &Unit) -> AveragePrepared {
        AveragePrepared { inv_tau: unit_inv_tau(c.slow_inv_t, unit) as f32, eps: c.eps }
    }
}

impl SampledRule for SharedAverages {
    #[inline(always)]
    fn advance(p: &AveragePrepared, g: f32, x: f64, h: f32, e: &mut SharedElem) -> Sampled {
        e.gbar = average_f32(e.gbar, g.into(), p.inv_tau);
        e.hbar = average_f32(e.hbar, at_least(h, p.eps).into(), p.inv_tau);
        let (gbar, g) = (f64::from(e.gbar), f64::from(g));
        Sampled { displacement: 0.0, sums: [gbar * gbar, x, g * g], max: e.hbar }
    }
}

/// What a unit's solve needs of the step.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnitParams {
    pub rates: Rates<f64>,
    /// 1/t in the slow start; 0 after it.
    pub slow_inv_t: f64,
    /// C, applied at the end of the slow start (`finishing`).
    pub c: f64,
    pub finishing: u32,
}

/// vSGD-g on a unit's sums (eq. 8): l's average, then (after the slow start) ρ, `η = ρ/h⁺`, τ.
pub(crate) struct UnitSolve;

impl SolveRule for UnitSolve {
    type Record = Unit;
    type Coeffs = ();
    type Params = UnitParams;
    const KERNEL: &'static str = "alr_vsgd_unit_solve";
    /// The inputs were checked; ρ and η are bounded by the ε floors.
    const REQUIRE_FINITE: bool = false;
    const LAST_IS_MAX: bool = true;
    fn solve(p: &UnitParams, _: &(), sums: &[f64; 4], unit: &mut Unit) {
        let [gbar_sq, x, _, h_plus] = *sums;
        unit.l = average(unit.l, x, unit_inv_tau(p.slow_inv_t, unit));
        if p.slow_inv_t > 0.0 {
            if p.finishing != 0 {
                unit.l *= p.c;
                unit.tau = 2.0;
            }
            return;
        }
        let rho = p.rates.rho(gbar_sq, unit.l);
        unit.eta = p.rates.eta(rho, h_plus);
        unit.tau = next_tau(unit.tau, rho);
    }
}

/// vSGD-g/-b's move `η g` with the unit's η read from its record.
pub(crate) struct SharedMove;

impl KernelRule for SharedMove {
    type State = SharedElem;
    type Coeffs = ();
    type Record = Unit;
    type Prepared = f32;
    const KERNEL: &'static str = "alr_vsgd_shared_move";
    fn prepare(_: &(), unit: &Unit) -> f32 {
        unit.eta as f32
    }
}

impl ElementRule for SharedMove {
    #[inline(always)]
    fn advance(eta: &f32, g: f32, theta: f32, e: &mut SharedElem) -> f32 {
        Self::delta(eta, g, theta, e)
    }
    #[inline(always)]
    fn delta(eta: &f32, g: f32, _: f32, _: &SharedElem) -> f32 {
        eta * g
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
/// difference quotient of the two points evaluated — 0/ε where θ + δ rounds to θ. The callback
/// reads host memory, so this runs on the CPU only.
#[allow(clippy::too_many_arguments)] // the state, the caller's buffers and callback, the options, the scratch
fn finite_difference<D: Device, E: Averages>(
    device: &D,
    elems: &[D::State<E>],
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
        scratch.curvature = crate::backend::cpu::filled_per_tensor(&lens, 0.0)?;
        scratch.shifted = crate::backend::cpu::filled_per_tensor(&lens, 0.0)?;
    }
    for ((shifted, theta), st) in scratch.shifted.iter_mut().zip(params).zip(elems) {
        device.with_state(st, |st| {
            for ((s, &th), e) in shifted.iter_mut().zip(theta.iter()).zip(st) {
                *s = th + (e.gbar() + eps);
            }
        })?;
    }
    let points: Vec<&[f32]> = scratch.shifted.iter().map(Vec::as_slice).collect();
    let mut outs: Vec<&mut [f32]> = scratch.curvature.iter_mut().map(Vec::as_mut_slice).collect();
    grad_fn(&points, &mut outs).map_err(|why| Error::callback(format!("the gradient callback failed at θ + δ (vSGD finite differences): {why}")))?;
    for (t, out) in outs.iter_mut().enumerate() {
        if check_finite && !crate::backend::cpu::all_finite(out) {
            let i = crate::backend::cpu::first_non_finite(out).unwrap_or(0);
            return Err(Error::non_finite(format!("tensor {t}: the gradient callback returned grad[{i}] = {} at θ + δ (vSGD finite differences)", out[i])));
        }
        for ((h, &g), (&s, &th)) in out.iter_mut().zip(grads[t]).zip(points[t].iter().zip(params[t].iter())) {
            *h = (*h - g).abs() / (s - th).abs().max(eps);
        }
    }
    Ok(())
}

/// `max hbar` over `tensors` (0 before the first step).
fn max_hbar<D: Device, E: Averages>(device: &D, elems: &[D::State<E>], tensors: &[usize]) -> Result<f64> {
    let mut max = 0.0f32;
    for &t in tensors {
        max = device.with_state(&elems[t], |st| st.iter().fold(max, |m, e| m.max(e.hbar())))?;
    }
    Ok(max.into())
}

/// `[min, median, max]`; the median of an even count is the mean of the two middle values.
pub(crate) fn min_median_max(mut values: Vec<f64>) -> [f64; 3] {
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

enum State<D: Device> {
    /// vSGD-l: per tensor, per element.
    Local(Vec<D::State<LocalElem>>),
    /// vSGD-g/-b: per-element averages, and per unit its record and tensors.
    Shared { elems: Vec<D::State<SharedElem>>, units: D::Records<Unit>, n_units: usize },
}

/// vSGD-l, -g or -b (docs/algorithms.md §2), on any device; the finite-difference curvature
/// (its callback reads host memory) on the CPU only.
pub struct Vsgd<D: Device> {
    device: D,
    variant: Variant,
    /// Steps taken, the slow-start steps included.
    steps: u64,
    /// n and ε of the last step: vsgd-l recomputes η from its state with them (apply, lr, telemetry).
    rates: Rates<f64>,
    state: State<D>,
    /// Per-tensor sums of pass 1; unit u adds its tensors (all of them for vsgd-g and for
    /// vsgd-l's Σ g·s, its group's for vsgd-b).
    sums: D::Sums,
    no_record: D::Records<()>,
    no_coeffs: D::Records<()>,
    scratch: Scratch,
    /// Sharded: the communicator that adds (and maxes) vsgd-g/-b's pass-1 sums over processes.
    shards: Shards,
}

impl<D: Device> Vsgd<D> {
    /// A fresh state: zero averages, τ = 1 (what the first step sees when n0 = 0).
    pub fn new(variant: Variant, layout: &Layout, device: &D, shards: Shards) -> Result<Self> {
        // vsgd-l's one sum (Σ g·s) and vsgd-g's unit add every tensor; vsgd-b's units are the groups.
        let unit_tensors = match variant {
            Variant::Local | Variant::Global => vec![(0..layout.n_tensors()).collect()],
            Variant::Block => layout.members.clone(),
        };
        let state = match variant {
            Variant::Local => {
                device.require(&[LocalSlowStart::KERNEL, LocalStep::KERNEL, LocalMove::KERNEL])?;
                let mut elems = device.alloc_per_tensor::<LocalElem>(&layout.lens)?;
                for (e, &len) in elems.iter_mut().zip(&layout.lens) {
                    device.write_state(e, &filled(len, LocalElem::FRESH)?)?;
                }
                State::Local(elems)
            }
            Variant::Global | Variant::Block => {
                device.require(&[SharedAverages::KERNEL, UnitSolve::KERNEL, SharedMove::KERNEL])?;
                let fresh = Unit { l: 0.0, tau: 1.0, eta: 0.0 };
                State::Shared {
                    elems: device.alloc_per_tensor(&layout.lens)?,
                    units: device.records(&filled(unit_tensors.len(), fresh)?)?,
                    n_units: unit_tensors.len(),
                }
            }
        };
        Ok(Vsgd {
            variant,
            steps: 0,
            // Set by every step before anything reads it (nothing does before step n0 + 1).
            rates: Rates::new(1.0, 0.0),
            state,
            sums: device.sums(&layout.lens, &unit_tensors)?,
            no_record: device.records(&[()])?,
            no_coeffs: device.records(&filled(unit_tensors.len(), ())?)?,
            scratch: Scratch::default(),
            device: device.clone(),
            shards,
        })
    }
}

impl<D: Device> Vsgd<D> {
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

    /// The tensors whose elements unit `unit` of group `group` covers.
    fn unit_tensors(&self, ctx: &Context, group: usize) -> Vec<usize> {
        match self.variant {
            Variant::Global => (0..ctx.layout.n_tensors()).collect(),
            Variant::Local | Variant::Block => ctx.layout.members[group].clone(),
        }
    }

    /// The finite-difference curvature when the caller gives none, and where the step stands
    /// with its rates; nothing of the state changes (`advance` counts the step once it passes).
    fn begin(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<(Phase, Rates<f64>)> {
        let eps = ctx.options.get(0, "eps");
        if inputs.curvature.is_none() {
            let grad_fn = callbacks.grad_fn.as_mut().ok_or_else(|| missing_curvature(self.variant))?;
            let check = ctx.options.flag(0, "check_finite");
            let (params, grads) = (host_params(params)?, host_tensors(&inputs.grads)?);
            match &self.state {
                State::Local(e) => finite_difference(&self.device, e, &params, &grads, grad_fn, eps as f32, check, &mut self.scratch)?,
                State::Shared { elems, .. } => finite_difference(&self.device, elems, &params, &grads, grad_fn, eps as f32, check, &mut self.scratch)?,
            }
        }
        let rates = Rates::new(inputs.samples.as_ref().map_or(1.0, |s| s.batch_size as f64), eps);
        let (t, n0) = (self.steps + 1, Self::n0(ctx));
        let phase = if t <= n0 {
            let finish = (t == n0).then(|| match ctx.options.get(0, "slow_start_c") {
                c if c.is_nan() => ctx.layout.lens.iter().sum::<usize>() as f64 / 10.0,
                c => c,
            });
            Phase::SlowStart { t, finish }
        } else {
            Phase::Regular
        };
        Ok((phase, rates))
    }

    /// Advances the state by one step of `phase` and counts it; vsgd-l also moves θ in the same
    /// pass when `theta` is given and the step is past the slow start. A failed reduction over
    /// shards changes nothing.
    fn advance(&mut self, ctx: &Context, (phase, rates): (Phase, Rates<f64>), inputs: &StepInputs, theta: Option<&mut [TensorMut]>) -> Result<()> {
        self.passes(ctx, phase, rates, inputs, theta)?;
        self.steps += 1;
        self.rates = rates;
        Ok(())
    }

    fn passes(&mut self, ctx: &Context, phase: Phase, rates: Rates<f64>, inputs: &StepInputs, mut theta: Option<&mut [TensorMut]>) -> Result<()> {
        let curvature: Vec<Tensor> = match &inputs.curvature {
            Some(h) => h.clone(),
            None => self.scratch.curvature.iter().map(|h| Tensor::host(h)).collect(),
        };
        let samples = inputs.samples.as_ref();
        // Each entry of the caller's data is k·g_i: k = 1 ("sample") or N ("mean", g_i/N given).
        let view = |t: usize| {
            samples.map(|s| SampleView {
                data: match &s.data {
                    SampleData::SumSq(b) => SampleTensor::SumSq(b[t]),
                    SampleData::PerSample(b) => SampleTensor::Rows(b[t]),
                },
                n: s.batch_size,
                k: s.square_scale().sqrt(),
            })
        };
        let element_rates = rates.to_f32();
        let (slow_inv_t, finish) = match phase {
            Phase::SlowStart { t, finish } => (1.0 / t as f64, finish),
            Phase::Regular => (0.0, None),
        };
        let (device, sums, no_record) = (&self.device, &mut self.sums, &self.no_record);
        match &mut self.state {
            State::Local(elems) => {
                for (t, state) in elems.iter_mut().enumerate() {
                    let (grad, h, samples) = (&inputs.grads[t], &curvature[t], view(t));
                    match phase {
                        Phase::SlowStart { t: step, .. } => {
                            let c = SlowStartCoeffs {
                                inv_t: 1.0 / step as f32,
                                eps: element_rates.eps,
                                c: finish.unwrap_or(0.0) as f32,
                                finishing: u32::from(finish.is_some()),
                            };
                            device.sampled::<LocalSlowStart>(&c, no_record, 0, None, grad, h, samples.as_ref(), state, sums, t, Commit::Write)?;
                        }
                        Phase::Regular => {
                            let param = theta.as_deref_mut().map(|p| &mut p[t]);
                            device.sampled::<LocalStep>(&element_rates, no_record, 0, param, grad, h, samples.as_ref(), state, sums, t, Commit::Write)?;
                        }
                    }
                }
            }
            State::Shared { elems, units, .. } => {
                let c = AverageCoeffs { slow_inv_t, eps: element_rates.eps };
                let global = self.variant == Variant::Global;
                reduced_pass::<UnitSolve, D>(device, sums, self.shards.as_deref(), true, |sums, commit| {
                    for (t, state) in elems.iter_mut().enumerate() {
                        let unit = if global { 0 } else { ctx.layout.groups[t] };
                        let (grad, h) = (&inputs.grads[t], &curvature[t]);
                        device.sampled::<SharedAverages>(&c, units, unit, None, grad, h, view(t).as_ref(), state, sums, t, commit)?;
                    }
                    Ok(())
                })?;
                let params = UnitParams { rates, slow_inv_t, c: finish.unwrap_or(0.0), finishing: u32::from(finish.is_some()) };
                device.solve::<UnitSolve>(&params, &self.no_coeffs, units, sums)?;
            }
        }
        Ok(())
    }

    /// `Σ g·s` of the step just advanced (without moving θ): vsgd-l's from its pass, vsgd-g/-b's
    /// `Σ_units η Σ g²` (up to the float32 rounding of each displacement). 0 in the slow start.
    fn proposed_dot(&self, ctx: &Context) -> Result<f64> {
        if self.steps <= Self::n0(ctx) {
            return Ok(0.0);
        }
        let totals = self.device.totals(&self.sums)?;
        Ok(match &self.state {
            State::Local(_) => totals[0][0],
            State::Shared { units, .. } => self.device.read_records(units)?.iter().zip(&totals).map(|(u, s)| f64::from(u.eta as f32) * s[2]).sum(),
        })
    }

    /// The group's η values (one per element for vsgd-l) after the last regular step.
    fn etas(&self, ctx: &Context, group: usize) -> Result<Vec<f64>> {
        match &self.state {
            State::Local(elems) => {
                let rates = self.rates.to_f32();
                let mut etas = Vec::new();
                for &t in &ctx.layout.members[group] {
                    self.device.with_state(&elems[t], |st| etas.extend(st.iter().map(|e| f64::from(e.eta(&rates)))))?;
                }
                Ok(etas)
            }
            State::Shared { units, .. } => Ok(vec![self.device.read_records(units)?[self.unit_of(group)].eta]),
        }
    }

    /// `θ ← θ − η g` (or, with a wrapper's `scale`, `θ − scale·η g`) from the state the step
    /// advanced (nothing in the slow start): the bits of `apply` at that scale.
    fn move_by(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: Option<f32>) -> Result<()> {
        if self.steps <= Self::n0(ctx) {
            return Ok(());
        }
        let rates = self.rates.to_f32();
        for (t, param) in params.iter_mut().enumerate() {
            let (grad, unit) = (&inputs.grads[t], self.unit_of(ctx.layout.groups[t]));
            match &mut self.state {
                State::Local(elems) => self.device.update_by::<LocalMove>(&rates, &self.no_record, 0, param, grad, &mut elems[t], scale)?,
                State::Shared { elems, units, .. } => self.device.update_by::<SharedMove>(&(), units, unit, param, grad, &mut elems[t], scale)?,
            }
        }
        Ok(())
    }

    /// `h⁺` of the group: max hbar over the group (l, b) or over all tensors (g).
    fn h_plus(&self, ctx: &Context, group: usize) -> Result<f64> {
        let tensors = self.unit_tensors(ctx, group);
        match &self.state {
            State::Local(elems) => max_hbar(&self.device, elems, &tensors),
            State::Shared { elems, .. } => max_hbar(&self.device, elems, &tensors),
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

impl<D: Device> Algorithm for Vsgd<D> {
    fn name(&self) -> &'static str {
        self.variant.name()
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts { per_sample: true, curvature: true, grad_fn: true, ..Accepts::default() }
    }

    fn check(&self, ctx: &Context, inputs: &StepInputs, callbacks: &Callbacks) -> Result<()> {
        if self.shards.is_some() && ctx.options.get(0, "slow_start_c").is_nan() {
            // C = d/10 counts every parameter, which no shard sees.
            return Err(Error::invalid(format!(
                "{} over shards: set slow_start_c (its default d/10 counts the parameters of every shard)",
                self.variant.name()
            )));
        }
        if inputs.curvature.is_none() {
            if callbacks.grad_fn.is_none() {
                return Err(missing_curvature(self.variant));
            }
            if self.device.memory() != Memory::Host {
                return Err(Error::unsupported(format!(
                    "{}'s finite differences evaluate a host gradient callback, so on {} it needs the caller's curvature (pass curvature)",
                    self.variant.name(),
                    self.device.memory()
                )));
            }
        }
        Ok(())
    }

    /// vsgd-g/-b reduce pass 1's sums (two calls: the sums, and h⁺'s maximum); vsgd-l reduces nothing.
    fn abstain(&mut self, _ctx: &Context) -> bool {
        matches!(self.state, State::Shared { .. }) && abstain::<UnitSolve, D>(&self.device, &self.sums, self.shards.as_deref())
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<f64> {
        let begun = self.begin(ctx, params, inputs, callbacks)?;
        self.advance(ctx, begun, inputs, None)?;
        self.proposed_dot(ctx)
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        if self.steps <= Self::n0(ctx) {
            return Ok(());
        }
        for (t, param) in params.iter_mut().enumerate() {
            let grad = &inputs.grads[t];
            match &self.state {
                State::Local(elems) => self.device.apply_scaled::<LocalMove>(&self.rates.to_f32(), &self.no_record, 0, param, grad, &elems[t], scale)?,
                State::Shared { elems, units, .. } => {
                    let unit = self.unit_of(ctx.layout.groups[t]);
                    self.device.apply_scaled::<SharedMove>(&(), units, unit, param, grad, &elems[t], scale)?
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        let begun = self.begin(ctx, params, inputs, callbacks)?;
        if self.variant == Variant::Local {
            return self.advance(ctx, begun, inputs, Some(params));
        }
        // η of a unit needs the whole unit's sums: a second pass is unavoidable.
        self.advance(ctx, begun, inputs, None)?;
        self.move_by(ctx, params, inputs, None)
    }

    /// The step moving θ by `scale·η g` (schedule-free's base), with no sum read on the host.
    fn step_scaled(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks, scale: f32) -> Result<()> {
        let begun = self.begin(ctx, params, inputs, callbacks)?;
        self.advance(ctx, begun, inputs, None)?;
        self.move_by(ctx, params, inputs, Some(scale))
    }

    /// vsgd-l: the median η of the group's elements; vsgd-g/-b: the unit's η; 0 in the slow start.
    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        if self.steps <= Self::n0(ctx) {
            return Ok(0.0);
        }
        Ok(min_median_max(self.etas(ctx, group)?)[1])
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        let n0 = Self::n0(ctx);
        let slow = self.steps <= n0;
        // τ is set at the end of step n0 (2) or starts at 1 without slow start; 0 until then.
        let tau = if self.steps == 0 || self.steps < n0 {
            [0.0; 3]
        } else {
            match &self.state {
                State::Local(elems) => {
                    let mut taus = Vec::new();
                    for &t in &ctx.layout.members[group] {
                        self.device.with_state(&elems[t], |st| taus.extend(st.iter().map(|e| f64::from(e.tau))))?;
                    }
                    min_median_max(taus)
                }
                State::Shared { units, .. } => [self.device.read_records(units)?[self.unit_of(group)].tau; 3],
            }
        };
        let eta = if slow { [0.0; 3] } else { min_median_max(self.etas(ctx, group)?) };
        Ok(vec![
            ("tau_min", tau[0]),
            ("tau_median", tau[1]),
            ("tau_max", tau[2]),
            ("eta_min", eta[0]),
            ("eta_median", eta[1]),
            ("eta_max", eta[2]),
            ("h_plus", self.h_plus(ctx, group)?),
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
            State::Local(elems) => elems.iter().try_for_each(|e| self.device.with_state(e, |e| w.elem_states(e)))?,
            State::Shared { elems, units, .. } => {
                elems.iter().try_for_each(|e| self.device.with_state(e, |e| w.elem_states(e)))?;
                w.f64s(&self.device.read_records(units)?.iter().flat_map(|u| [u.l, u.tau, u.eta]).collect::<Vec<_>>());
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
        // Everything is read and checked before anything is written.
        match &mut self.state {
            State::Local(elems) => {
                let values = crate::checkpoint::read_elem_states(r, &ctx.layout.lens, name, LocalElem::possible, rule)?;
                for (e, v) in elems.iter_mut().zip(&values) {
                    self.device.write_state(e, v)?;
                }
            }
            State::Shared { elems, units, n_units } => {
                let values = crate::checkpoint::read_elem_states(r, &ctx.layout.lens, name, SharedElem::possible, rule)?;
                let v = r.f64s_exact(3 * *n_units, "vSGD unit scalars")?;
                let loaded: Vec<Unit> = v.chunks_exact(3).map(|c| Unit { l: c[0], tau: c[1], eta: c[2] }).collect();
                if let Some(u) = loaded.iter().position(|u| !u.possible()) {
                    let Unit { l, tau, eta } = loaded[u];
                    return Err(Error::checkpoint(format!(
                        "checkpoint vSGD unit {u} = {:?} is impossible: l and η ≥ 0 and finite, τ ≥ 1 {}",
                        loaded[u],
                        crate::checkpoint::doubt([l, tau, eta].iter().any(|v| !v.is_finite()))
                    )));
                }
                for (e, v) in elems.iter_mut().zip(&values) {
                    self.device.write_state(e, v)?;
                }
                self.device.write_records(units, &loaded)?;
            }
        }
        (self.steps, self.rates) = (steps, rates);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::optimizer::{SampleScale, Samples};
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
        finite_difference(&Cpu, &elems, &params, &[&grad], &mut quadratic, 1e-9, true, &mut scratch).unwrap();
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
        let options = Options::new(registry::specs(name, "", "").unwrap(), layout.n_groups()).unwrap();
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
            let (mut fused, mut split) = (Vsgd::new(variant, &layout, &Cpu, None).unwrap(), Vsgd::new(variant, &layout, &Cpu, None).unwrap());
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

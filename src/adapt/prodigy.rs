//! Prodigy (Mishchenko & Defazio 2023) as prodigyopt 1.1.2's `Prodigy` implements it
//! (docs/algorithms.md §6: the reference *is* the specification): Adam whose step size
//! `dlr = d · lr · bias` has `d` estimated from `⟨g, x0 − x⟩`.
//!
//! One step, with `d`, `k` (steps taken) and the options of param group 0 global, as the
//! reference reads them (`betas`, `beta3`, `decouple`, `use_bias_correction`, `d_coef`,
//! `growth_rate`; `d0` is global here), `lr` the largest group lr (every group's lr is that or 0):
//!
//! ```text
//! bias = √(1 − β2^(k+1)) / (1 − β1^(k+1))   (1 without use_bias_correction)
//! dlr  = d · lr · bias
//! per group with lr > 0, per element (g ← g + λθ first when weight decay is coupled):
//!     num += (d/d0) · dlr · g·(p0 − θ)
//!     m ← β1 m + d(1−β1) g            (no m when β1 = 0)
//!     v ← β2 v + d²(1−β2) g²
//!     s ← β3 s + (d/d0) · (safeguard_warmup ? d : dlr) · g
//!     den += |s|
//! den = 0: return (no move; k, d and the numerator stay; the moments did absorb g)
//! numerator ← β3 · numerator + num;  d_hat = d_coef · numerator / den
//! d = d0: d ← max(d, d_hat);  d_max ← max(d_max, d_hat);  d ← min(d_max, d · growth_rate)
//! every group (lr 0 too), with the *old* dlr and the *new* d:
//!     θ ← θ − dlr λ θ (decoupled decay);  θ ← θ − dlr · m / (√v + d ε)   (β1 = 0: dlr · d · g)
//! ```
//!
//! On a device every scalar lives in one `#[repr(C)]` record: pass 1 (`Absorb`, a dot pass over
//! s and p0) advances s and reduces `[Σ g·(p0 − θ), Σ |s|]`; the solve updates the record; pass 2
//! (`Step`, over the moments, a buffer of their own) absorbs g into m and v with the step's old d
//! — which is what the reference's first loop does, and the moments enter no sum — then moves θ,
//! its coefficients read from the record. So pass 1 reads g, θ, s, p0 and writes s; pass 2 reads
//! g, θ, m, v and writes θ, m, v: each buffer is read once and written once where it changes,
//! the least two passes can move. Nothing is read back to the host.

use std::marker::PhantomData;

use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{abstain, chosen, reduced_pass, Device, DotRule, ElemState, ElementRule, KernelRule, Record, SolveRule, TensorMut};
use crate::base::WEIGHT_DECAY;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::{OptionSpec, Options};

pub fn specs() -> Vec<OptionSpec> {
    vec![
        // Per group, but every group's lr must be the largest one or 0 (the reference's rule).
        OptionSpec::non_negative("lr", 1.0),
        // Whether it is 0 is structural: the m buffer exists only when β1 > 0 (as in the
        // reference, which reads β1 each step, so a scheduler may change it above 0).
        OptionSpec::fraction("beta1", 0.9).structural_at_zero(),
        OptionSpec::fraction("beta2", 0.999).global(),
        // Unset (NaN): √β2, the reference's `beta3=None`.
        OptionSpec::real("beta3", f64::NAN, 0.0, 1.0).unset_by_default().global(),
        OptionSpec::positive("eps", 1e-8),
        WEIGHT_DECAY,
        OptionSpec::flag("decouple", true).global(),
        OptionSpec::flag("use_bias_correction", false).global(),
        OptionSpec::flag("safeguard_warmup", false),
        // d starts at d0, and d/d0 scales the estimate: fixed once training starts.
        OptionSpec::positive("d0", 1e-6).structural(),
        OptionSpec::positive("d_coef", 1.0).global(),
        GROWTH_RATE,
    ]
}

/// `growth_rate`: unset (NaN) is the references' default `float('inf')` (no bound).
pub const GROWTH_RATE: OptionSpec = OptionSpec::positive("growth_rate", f64::NAN).unset_by_default().global();

/// The growth bound, ∞ when unset.
pub fn growth_rate(o: &Options) -> f64 {
    let g = o.get(0, "growth_rate");
    if g.is_nan() {
        f64::INFINITY
    } else {
        g
    }
}

/// The references' rule for per-group learning rates: each is the largest one or 0.
pub fn check_group_lrs(name: &str, o: &Options) -> Result<()> {
    let lr = max_lr(o);
    if let Some(g) = (0..o.n_groups()).find(|&g| o.get(g, "lr") != lr && o.get(g, "lr") != 0.0) {
        return Err(Error::invalid(format!(
            "'{name}': group {g} has lr {} but the largest lr is {lr}; as in the reference, a group's lr is either the largest one or 0",
            o.get(g, "lr")
        )));
    }
    Ok(())
}

/// `max(group['lr'] for group in param_groups)`.
pub fn max_lr(o: &Options) -> f64 {
    (0..o.n_groups()).map(|g| o.get(g, "lr")).fold(0.0, f64::max)
}

/// The reference's bias correction `((1 − β2^(k+1))^0.5) / (1 − β1^(k+1))`, with Python's
/// `**` (libm `pow`) so the f64 bits agree.
pub fn bias_correction(on: bool, beta1: f64, beta2: f64, k: u64) -> f64 {
    if !on {
        return 1.0;
    }
    let t = (k + 1) as f64;
    (1.0 - beta2.powf(t)).powf(0.5) / (1.0 - beta1.powf(t))
}

/// `a·b + c` rounded once to f32, as torch's CPU kernels form `add_(x, alpha=a)` and `addcmul_`
/// (a fused multiply-add); formed in f64 (the product is exact there), so no FMA instruction is
/// needed and the bits do not depend on the build.
#[inline(always)]
pub fn fma32(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// The displacement `θ − θ_new` that makes the device's `θ ← θ − displacement` land on
/// `θ_new` (exactly, whenever θ_new is within a factor 2 of θ: then both subtractions are exact).
#[inline(always)]
pub fn displacement(theta: f32, new: f32) -> f32 {
    theta - new
}

/// Python's `max(a, b)`: `b` only when `b > a` (a NaN `b` keeps `a`).
pub fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's `min(a, b)`: `b` only when `b < a`.
pub fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// The global options (those the reference reads from param group 0), passed by value to
/// every launch (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Global {
    /// The largest group lr.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub beta3: f64,
    pub d0: f64,
    pub d_coef: f64,
    /// ∞ when unset.
    pub growth_rate: f64,
    pub bias_correction: u32,
    pub pad: u32,
}

impl Global {
    pub fn of(o: &Options) -> Self {
        let beta2 = o.get(0, "beta2");
        let beta3 = o.get(0, "beta3");
        Global {
            lr: max_lr(o),
            beta1: o.get(0, "beta1"),
            beta2,
            beta3: if beta3.is_nan() { beta2.sqrt() } else { beta3 },
            d0: o.get(0, "d0"),
            d_coef: o.get(0, "d_coef"),
            growth_rate: growth_rate(o),
            bias_correction: u32::from(o.flag(0, "use_bias_correction")),
            pad: 0,
        }
    }

    /// `dlr = d · lr · bias` of the step the record is about to take.
    pub fn dlr(&self, r: &Estimate) -> f64 {
        r.d * self.lr * bias_correction(self.bias_correction != 0, self.beta1, self.beta2, r.k)
    }
}

/// The global scalars (`#[repr(C)]`: what a solve kernel would update on a GPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub d: f64,
    pub d_max: f64,
    /// The running numerator `Σ β3^… (d/d0) dlr g·(p0 − θ)`.
    pub d_numerator: f64,
    /// The last `Σ |s|`.
    pub d_denom: f64,
    pub d_hat: f64,
    /// dlr of the last step that moved (0 before).
    pub dlr: f64,
    /// Steps begun (the first initialises p0); steps taken (`k`); steps skipped (Σ|s| = 0).
    pub begun: u64,
    pub k: u64,
    pub skips: u64,
    /// 1: the step being taken moves θ.
    pub moved: u32,
    pub pad: u32,
    /// d before the step's solve: what pass 2's moments absorb g with (not saved: a step's).
    pub d_before: f64,
}

impl Record for Estimate {}

impl Estimate {
    fn fresh(d0: f64) -> Self {
        Estimate { d: d0, d_max: d0, ..Estimate::default() }
    }
}

/// Pass 1's share of an element: `s` and `p0`, the buffers d's estimate reads (the reference's
/// `s` and `p0`). Kept apart from the moments, so that pass 2 reads only what it needs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimator {
    pub s: f32,
    pub p0: f32,
}

impl ElemState for Estimator {
    const FLOATS: usize = 2;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&[self.s, self.p0]);
    }
    fn read(x: &[f32]) -> Self {
        Estimator { s: x[0], p0: x[1] }
    }
}

impl Estimator {
    fn possible(&self) -> bool {
        self.s.is_finite() && self.p0.is_finite()
    }
}

/// Pass 2's share of an element: the moments, `[m, v]`, or `[v]` when β1 = 0 (the reference's
/// `exp_avg`, `exp_avg_sq`, and no `exp_avg` at β1 = 0).
pub trait Moments: ElemState {
    const HAS_M: bool;
    const STEP_KERNEL: &'static str;
    /// `m ← β1 m + coef_m g`, `v ← β2 v + coef_v g²` (no m without m) where the group is
    /// active, stored through `chosen` either way: a store under a branch is a masked scatter
    /// on every element where the compiler vectorises the pass.
    fn absorb(&mut self, p: &StepPrepared, g: f32);
    /// What the step divides by `√v + dε`: m, or g itself without m.
    fn direction(&self, g: f32) -> f32;
    fn v(&self) -> f32;
    fn possible(&self) -> bool;
}

/// `[m, v]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WithM {
    pub m: f32,
    pub v: f32,
}

/// `[v]` (β1 = 0).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NoM {
    pub v: f32,
}

impl ElemState for WithM {
    const FLOATS: usize = 2;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&[self.m, self.v]);
    }
    fn read(x: &[f32]) -> Self {
        WithM { m: x[0], v: x[1] }
    }
}

impl ElemState for NoM {
    const FLOATS: usize = 1;
    fn write(&self, out: &mut Vec<f32>) {
        out.push(self.v);
    }
    fn read(x: &[f32]) -> Self {
        NoM { v: x[0] }
    }
}

/// The reference's `exp_avg_sq.mul_(β2).addcmul_(grad, grad, value=…)` where the group is active.
#[inline(always)]
fn absorbed_v(p: &StepPrepared, v: f32, g: f32) -> f32 {
    chosen(p.active, fma32(p.coef_v * g, g, p.beta2 * v), v)
}

impl Moments for WithM {
    const HAS_M: bool = true;
    const STEP_KERNEL: &'static str = "alr_prodigy_step_m";
    #[inline(always)]
    fn absorb(&mut self, p: &StepPrepared, g: f32) {
        // `exp_avg.mul_(β1).add_(grad, alpha=…)`.
        self.m = chosen(p.active, fma32(g, p.coef_m, p.beta1 * self.m), self.m);
        self.v = absorbed_v(p, self.v, g);
    }
    #[inline(always)]
    fn direction(&self, _g: f32) -> f32 {
        self.m
    }
    #[inline(always)]
    fn v(&self) -> f32 {
        self.v
    }
    fn possible(&self) -> bool {
        self.m.is_finite() && crate::checkpoint::second_moment(self.v)
    }
}

impl Moments for NoM {
    const HAS_M: bool = false;
    const STEP_KERNEL: &'static str = "alr_prodigy_step";
    #[inline(always)]
    fn absorb(&mut self, p: &StepPrepared, g: f32) {
        self.v = absorbed_v(p, self.v, g);
    }
    #[inline(always)]
    fn direction(&self, g: f32) -> f32 {
        g
    }
    #[inline(always)]
    fn v(&self) -> f32 {
        self.v
    }
    fn possible(&self) -> bool {
        crate::checkpoint::second_moment(self.v)
    }
}

/// One element as a checkpoint holds it: the moments, then s and p0 (`[m, v, s, p0]`, or
/// `[v, s, p0]` at β1 = 0: the reference's buffers, in one record per element).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Saved<M> {
    moments: M,
    estimator: Estimator,
}

impl<M: Moments> ElemState for Saved<M> {
    const FLOATS: usize = M::FLOATS + Estimator::FLOATS;
    fn write(&self, out: &mut Vec<f32>) {
        self.moments.write(out);
        self.estimator.write(out);
    }
    fn read(x: &[f32]) -> Self {
        Saved { moments: M::read(&x[..M::FLOATS]), estimator: Estimator::read(&x[M::FLOATS..]) }
    }
}

/// Pass 1's by-value scalars of one group (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbsorbCoeffs {
    pub global: Global,
    /// λ where weight decay is coupled (`decouple` = 0), else 0.
    pub coupled_decay: f64,
    pub safeguard_warmup: u32,
    /// The group's lr is > 0 (a group with lr 0 absorbs nothing, as in the reference).
    pub active: u32,
}

impl AbsorbCoeffs {
    fn of(o: &Options, group: usize, global: Global) -> Self {
        AbsorbCoeffs {
            global,
            coupled_decay: if o.flag(0, "decouple") { 0.0 } else { o.get(group, "weight_decay") },
            safeguard_warmup: u32::from(o.flag(group, "safeguard_warmup")),
            active: u32::from(o.get(group, "lr") > 0.0),
        }
    }
}

/// Pass 1's per-element scalars, formed from the record once per launch.
#[derive(Debug, Clone, Copy)]
pub struct AbsorbPrepared {
    lambda: f32,
    beta3: f32,
    coef_s: f32,
    active: bool,
    first: bool,
}

/// Pass 1: `p0 ← θ` at the first step; s absorbs g; `[g·(p0 − θ), |s|]`. (The moments absorb
/// g in pass 2, with this step's old d: they do not enter the sums.)
pub struct Absorb;

impl KernelRule for Absorb {
    type State = Estimator;
    type Coeffs = AbsorbCoeffs;
    type Record = Estimate;
    type Prepared = AbsorbPrepared;
    const KERNEL: &'static str = "alr_prodigy_absorb";
    fn prepare(c: &AbsorbCoeffs, r: &Estimate) -> AbsorbPrepared {
        let g = &c.global;
        let (d, dlr) = (r.d, g.dlr(r));
        // Each f32 coefficient is the reference's Python float, rounded once (torch's `alpha`).
        AbsorbPrepared {
            lambda: c.coupled_decay as f32,
            beta3: g.beta3 as f32,
            coef_s: ((d / g.d0) * if c.safeguard_warmup != 0 { d } else { dlr }) as f32,
            active: c.active != 0,
            first: r.begun == 0,
        }
    }
}

impl DotRule for Absorb {
    #[inline(always)]
    fn dot(p: &AbsorbPrepared, g: f32, theta: f32, st: &mut Estimator) -> [f64; 2] {
        let p0 = chosen(p.first, theta, st.p0);
        // The reference's `grad.add_(p, alpha=decay)`, then `s.mul_(β3).add_(grad, alpha=…)`; a
        // group with lr 0 absorbs nothing and adds 0 (a select: a store under a branch is a
        // masked scatter where the pass is vectorised).
        let g = if p.lambda != 0.0 { fma32(theta, p.lambda, g) } else { g };
        let s = chosen(p.active, fma32(g, p.coef_s, p.beta3 * st.s), st.s);
        *st = Estimator { s, p0 };
        if p.active {
            [f64::from(g) * f64::from(p0 - theta), f64::from(s.abs())]
        } else {
            [0.0, 0.0]
        }
    }
}

/// The d update from `[Σ g·(p0 − θ), Σ |s|]` over every group's tensors.
pub struct Solve;

impl SolveRule for Solve {
    type Record = Estimate;
    type Coeffs = ();
    type Params = Global;
    const KERNEL: &'static str = "alr_prodigy_solve";
    // Non-finite sums (overflow) propagate as in the reference: the moments have moved already.
    const REQUIRE_FINITE: bool = false;
    fn solve(g: &Global, _: &(), sums: &[f64; 4], r: &mut Estimate) {
        let (d, dlr) = (r.d, g.dlr(r));
        let numerator = g.beta3 * r.d_numerator + (d / g.d0) * dlr * sums[0];
        let den = sums[1];
        r.begun += 1;
        r.d_before = d;
        if den == 0.0 {
            // The reference returns before the step: k, d and the numerator are not stored.
            r.moved = 0;
            r.skips += 1;
            return;
        }
        let (mut d_new, mut d_max, mut d_hat) = (d, r.d_max, d);
        if g.lr > 0.0 {
            d_hat = g.d_coef * numerator / den;
            if d == g.d0 {
                d_new = py_max(d_new, d_hat);
            }
            d_max = py_max(d_max, d_hat);
            d_new = py_min(d_max, d_new * g.growth_rate);
        }
        *r = Estimate { d: d_new, d_max, d_numerator: numerator, d_denom: den, d_hat, dlr, k: r.k + 1, moved: 1, ..*r };
    }
}

/// Pass 2's by-value scalars of one group (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StepCoeffs {
    pub eps: f64,
    pub coupled_decay: f64,
    pub decoupled_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// The group's lr is > 0: its moments absorb g (a group with lr 0 keeps them, and moves).
    pub active: u32,
    pub pad: u32,
}

impl StepCoeffs {
    fn of(o: &Options, group: usize) -> Self {
        let (decouple, lambda) = (o.flag(0, "decouple"), o.get(group, "weight_decay"));
        StepCoeffs {
            eps: o.get(group, "eps"),
            coupled_decay: if decouple { 0.0 } else { lambda },
            decoupled_decay: if decouple { lambda } else { 0.0 },
            beta1: o.get(0, "beta1"),
            beta2: o.get(0, "beta2"),
            active: u32::from(o.get(group, "lr") > 0.0),
            pad: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StepPrepared {
    active: bool,
    beta1: f32,
    coef_m: f32,
    beta2: f32,
    coef_v: f32,
    moved: bool,
    scale: f32,
    eps: f32,
    decay: f32,
    lambda: f32,
}

/// Pass 2: the moments absorb g with this step's old d (`m ← β1 m + d(1−β1) g`,
/// `v ← β2 v + d²(1−β2) g²`, as the reference's first loop does), then `θ ← θ − dlr λ θ` and
/// `θ ← θ − scale · direction / (√v + d ε)` (the reference's two roundings) with the record's old
/// dlr and new d.
pub struct Step<M>(PhantomData<M>);

impl<M: Moments> KernelRule for Step<M> {
    type State = M;
    type Coeffs = StepCoeffs;
    type Record = Estimate;
    type Prepared = StepPrepared;
    const KERNEL: &'static str = M::STEP_KERNEL;
    fn prepare(c: &StepCoeffs, r: &Estimate) -> StepPrepared {
        let d = r.d_before;
        StepPrepared {
            active: c.active != 0,
            // Each f32 coefficient is the reference's Python float, rounded once (torch's `alpha`).
            beta1: c.beta1 as f32,
            coef_m: (d * (1.0 - c.beta1)) as f32,
            beta2: c.beta2 as f32,
            coef_v: (d * d * (1.0 - c.beta2)) as f32,
            moved: r.moved != 0,
            // torch's `value=-dlr` (with m) or `value=-dlr * d` (without).
            scale: if M::HAS_M { r.dlr as f32 } else { (r.dlr * r.d) as f32 },
            eps: (r.d * c.eps) as f32,
            decay: (c.decoupled_decay * r.dlr) as f32,
            lambda: c.coupled_decay as f32,
        }
    }
}

impl<M: Moments> ElementRule for Step<M> {
    /// The reference's new θ, as the displacement that lands on it.
    #[inline(always)]
    fn advance(p: &StepPrepared, g: f32, theta: f32, st: &mut M) -> f32 {
        let g = if p.lambda != 0.0 { fma32(theta, p.lambda, g) } else { g };
        st.absorb(p, g);
        if !p.moved {
            return 0.0;
        }
        // `p.add_(p, alpha=-decay·dlr)`, then `p.addcdiv_(m, denom, value=-dlr)`.
        let decayed = if p.decay != 0.0 { fma32(theta, -p.decay, theta) } else { theta };
        displacement(theta, decayed - p.scale * st.direction(g) / (st.v().sqrt() + p.eps))
    }
    /// The step itself, `dlr λ θ + scale · direction / (√v + d ε)`, not the float32 move it
    /// makes next to θ (which a wrapper's scale would otherwise multiply: docs/algorithms.md §3,
    /// "Numerics").
    #[inline(always)]
    fn delta(p: &StepPrepared, g: f32, theta: f32, st: &M) -> f32 {
        if !p.moved {
            return 0.0;
        }
        let g = if p.lambda != 0.0 { fma32(theta, p.lambda, g) } else { g };
        let step = p.scale * st.direction(g) / (st.v().sqrt() + p.eps);
        if p.decay != 0.0 {
            fma32(theta, p.decay, step)
        } else {
            step
        }
    }
}

/// The moments, by layout.
enum AllMoments<D: Device> {
    WithM(Vec<D::State<WithM>>),
    NoM(Vec<D::State<NoM>>),
}

/// Everything Prodigy learns; built at the first step, once the structural options are fixed.
struct State<D: Device> {
    estimate: D::Records<Estimate>,
    no_coeffs: D::Records<()>,
    sums: D::Sums,
    /// Per tensor: s and p0 (pass 1's), and the moments (pass 2's).
    estimators: Vec<D::State<Estimator>>,
    moments: AllMoments<D>,
}

/// Pass 1's sums of every tensor in one record (d is global), group by group, in registration
/// order within a group (the reference's loop order); D-Adapt Adam's too.
pub fn global_sums<D: Device>(device: &D, ctx: &Context) -> Result<D::Sums> {
    let order: Vec<usize> = ctx.layout.members.iter().flatten().copied().collect();
    device.sums(&ctx.layout.lens, &[order])
}

impl<D: Device> State<D> {
    fn new(device: &D, ctx: &Context) -> Result<Self> {
        let lens = &ctx.layout.lens;
        Ok(State {
            estimate: device.records(&[Estimate::fresh(ctx.options.get(0, "d0"))])?,
            no_coeffs: device.records(&[()])?,
            sums: global_sums(device, ctx)?,
            estimators: device.alloc_per_tensor(lens)?,
            moments: if ctx.options.get(0, "beta1") > 0.0 {
                AllMoments::WithM(device.alloc_per_tensor(lens)?)
            } else {
                AllMoments::NoM(device.alloc_per_tensor(lens)?)
            },
        })
    }
}

pub struct Prodigy<D: Device> {
    device: D,
    state: Option<State<D>>,
    /// Sharded: the communicator that adds pass 1's per-step sums over the processes.
    shards: Shards,
}

impl<D: Device> Prodigy<D> {
    pub fn new(device: &D, shards: Shards) -> Result<Self> {
        device.require(&[Absorb::KERNEL, WithM::STEP_KERNEL, NoM::STEP_KERNEL, Solve::KERNEL])?;
        Ok(Prodigy { device: device.clone(), state: None, shards })
    }

    fn state(&mut self, ctx: &Context) -> Result<&mut State<D>> {
        if self.state.is_none() {
            self.state = Some(State::new(&self.device, ctx)?);
        }
        Ok(self.state.as_mut().expect("just built"))
    }

    fn estimate(&self, ctx: &Context) -> Result<Estimate> {
        match &self.state {
            Some(s) => Ok(self.device.read_records(&s.estimate)?[0]),
            None => Ok(Estimate::fresh(ctx.options.get(0, "d0"))),
        }
    }

    /// Pass 1 over every tensor, then the solve.
    fn absorb(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs) -> Result<()> {
        let (device, shards, fresh) = (self.device.clone(), self.shards.clone(), self.state.is_none());
        let global = Global::of(ctx.options);
        let s = self.state(ctx)?;
        let (estimators, estimate) = (&mut s.estimators, &s.estimate);
        // Only this step's sums are reduced; the running numerator is the record's (§7).
        let reduced = reduced_pass::<Solve, D>(&device, &mut s.sums, shards.as_deref(), true, |sums, commit| {
            for (group, members) in ctx.layout.members.iter().enumerate() {
                let c = AbsorbCoeffs::of(ctx.options, group, global);
                for &t in members {
                    let (param, grad) = (params[t].view(), &inputs.grads[t]);
                    device.dots::<Absorb>(&c, estimate, 0, &param, grad, &mut estimators[t], sums, t, commit)?;
                }
            }
            Ok(())
        });
        if reduced.is_err() && fresh {
            // A failed reduction changes nothing: not even the state the first step built.
            self.state = None;
        }
        reduced?;
        let s = self.state.as_mut().expect("built above");
        device.solve::<Solve>(&global, &s.no_coeffs, &mut s.estimate, &mut s.sums)?;
        Ok(())
    }

    /// Pass 1 and the solve, then pass 2 (scaled by a wrapper's `scale` when given).
    fn take_step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: Option<f32>) -> Result<()> {
        self.absorb(ctx, params, inputs)?;
        let (d, s) = (&self.device, self.state.as_mut().expect("absorb built it"));
        match &mut s.moments {
            AllMoments::WithM(e) => each_tensor(ctx, |c, t| d.update_by::<Step<WithM>>(c, &s.estimate, 0, &mut params[t], &inputs.grads[t], &mut e[t], scale))?,
            AllMoments::NoM(e) => each_tensor(ctx, |c, t| d.update_by::<Step<NoM>>(c, &s.estimate, 0, &mut params[t], &inputs.grads[t], &mut e[t], scale))?,
        };
        Ok(())
    }
}

/// Runs pass 2 over every tensor with `f(coeffs, tensor, buffers)`.
fn each_tensor<T>(ctx: &Context, mut f: impl FnMut(&StepCoeffs, usize) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (group, members) in ctx.layout.members.iter().enumerate() {
        let c = StepCoeffs::of(ctx.options, group);
        for &t in members {
            out.push(f(&c, t)?);
        }
    }
    Ok(out)
}

impl<D: Device> Algorithm for Prodigy<D> {
    fn name(&self) -> &'static str {
        "prodigy"
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts::default()
    }

    /// Pass 1's sums are reduced once a step (its state is built first, as a step would).
    fn abstain(&mut self, ctx: &Context) -> bool {
        if self.shards.is_none() {
            return false;
        }
        // Before the first step the state is not built, and a refused step builds nothing: the
        // calls are over the sums the first step would have.
        let fresh;
        let sums = match &self.state {
            Some(s) => &s.sums,
            None => match global_sums(&self.device, ctx) {
                Ok(sums) => {
                    fresh = sums;
                    &fresh
                }
                Err(_) => return false,
            },
        };
        abstain::<Solve, D>(&self.device, sums, self.shards.as_deref())
    }

    fn check(&self, ctx: &Context, _inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        // The options reach the kernels by value: a graph would replay the captured ones.
        crate::algorithm::refuse_capture(&self.device, "prodigy", "its options as launch arguments")?;
        check_group_lrs("prodigy", ctx.options)
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        self.absorb(ctx, params, inputs)?;
        let (d, s) = (&self.device, self.state.as_mut().expect("absorb built it"));
        let dots = match &mut s.moments {
            AllMoments::WithM(e) => each_tensor(ctx, |c, t| d.advance_dot::<Step<WithM>>(c, &s.estimate, 0, &params[t], &inputs.grads[t], &mut e[t]))?,
            AllMoments::NoM(e) => each_tensor(ctx, |c, t| d.advance_dot::<Step<NoM>>(c, &s.estimate, 0, &params[t], &inputs.grads[t], &mut e[t]))?,
        };
        Ok(dots.iter().sum())
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        let (d, s) = (&self.device, self.state.as_ref().expect("apply follows propose, which builds the state"));
        match &s.moments {
            AllMoments::WithM(e) => each_tensor(ctx, |c, t| d.apply_scaled::<Step<WithM>>(c, &s.estimate, 0, &mut params[t], &inputs.grads[t], &e[t], scale))?,
            AllMoments::NoM(e) => each_tensor(ctx, |c, t| d.apply_scaled::<Step<NoM>>(c, &s.estimate, 0, &mut params[t], &inputs.grads[t], &e[t], scale))?,
        };
        Ok(())
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        self.take_step(ctx, params, inputs, None)
    }

    fn step_scaled(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks, scale: f32) -> Result<()> {
        self.take_step(ctx, params, inputs, Some(scale))
    }

    /// The step size the last step used: `dlr = d · lr · bias` (0 before the first step), for
    /// a group with lr > 0; 0 for a group with lr 0 (its moments are frozen, as in the reference).
    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(if ctx.options.get(group, "lr") > 0.0 { self.estimate(ctx)?.dlr } else { 0.0 })
    }

    fn momentum(&self, ctx: &Context, _group: usize) -> Result<f64> {
        Ok(ctx.options.get(0, "beta1"))
    }

    fn telemetry(&self, ctx: &Context, _group: usize) -> Result<Vec<(&'static str, f64)>> {
        let e = self.estimate(ctx)?;
        Ok(vec![
            ("d", e.d),
            ("d_hat", e.d_hat),
            ("d_max", e.d_max),
            ("d_numerator", e.d_numerator),
            ("d_denom", e.d_denom),
            ("dlr", e.dlr),
            ("steps", e.k as f64),
            ("skips", e.skips as f64),
        ])
    }

    fn started(&self) -> Result<bool> {
        Ok(self.state.is_some())
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        let Some(s) = &self.state else {
            w.u64(0);
            return Ok(());
        };
        let d = &self.device;
        let e = d.read_records(&s.estimate)?[0];
        w.u64(e.begun);
        w.counts(&[e.k, e.skips]);
        w.f64s(&[e.d, e.d_max, e.d_numerator, e.d_denom, e.d_hat, e.dlr]);
        match &s.moments {
            AllMoments::WithM(m) => save_elements(d, m, &s.estimators, w),
            AllMoments::NoM(m) => save_elements(d, m, &s.estimators, w),
        }
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let begun = r.count("Prodigy steps begun")?;
        if begun == 0 {
            self.state = None;
            return Ok(());
        }
        let counts = r.counts_exact(2, "Prodigy step and skip counts")?;
        let v = r.f64s_exact(6, "Prodigy estimates")?;
        let e = Estimate {
            d: v[0],
            d_max: v[1],
            d_numerator: v[2],
            d_denom: v[3],
            d_hat: v[4],
            dlr: v[5],
            begun,
            k: counts[0],
            skips: counts[1],
            moved: 0,
            pad: 0,
            d_before: 0.0,
        };
        check_estimate(&e, ctx.options.get(0, "d0"))?;
        let mut s = State::new(&self.device, ctx)?;
        let (d, lens) = (&self.device, &ctx.layout.lens);
        match &mut s.moments {
            AllMoments::WithM(m) => load_elements(d, r, lens, m, &mut s.estimators)?,
            AllMoments::NoM(m) => load_elements(d, r, lens, m, &mut s.estimators)?,
        }
        self.device.write_records(&mut s.estimate, &[e])?;
        self.state = Some(s);
        Ok(())
    }
}

/// Every tensor's elements as a checkpoint holds them (`Saved`: the moments, s, p0).
fn save_elements<D: Device, M: Moments>(d: &D, moments: &[D::State<M>], estimators: &[D::State<Estimator>], w: &mut Writer) -> Result<()> {
    for (m, e) in moments.iter().zip(estimators) {
        let saved =
            d.with_state(m, |m| d.with_state(e, |e| m.iter().zip(e).map(|(&moments, &estimator)| Saved { moments, estimator }).collect::<Vec<_>>()))??;
        w.elem_states(&saved);
    }
    Ok(())
}

/// `save_elements`' inverse, each element checked before anything is written.
fn load_elements<D: Device, M: Moments>(
    d: &D,
    r: &mut Reader,
    lens: &[usize],
    moments: &mut [D::State<M>],
    estimators: &mut [D::State<Estimator>],
) -> Result<()> {
    let possible = |s: &Saved<M>| s.moments.possible() && s.estimator.possible();
    let states = crate::checkpoint::read_elem_states(r, lens, "prodigy", possible, "m, s and p0 must be finite, v ≥ 0")?;
    for ((m, e), saved) in moments.iter_mut().zip(estimators.iter_mut()).zip(&states) {
        let (ms, es): (Vec<M>, Vec<Estimator>) = saved.iter().map(|s| (s.moments, s.estimator)).unzip();
        d.write_state(m, &ms)?;
        d.write_state(e, &es)?;
    }
    Ok(())
}

/// What every step keeps true: `0 ≤ d ≤ d_max` (d shrinks, to 0 by underflow, under a growth
/// rate below 1), `d_max ≥ d0` (it only grows from d0), the numerator finite, `Σ|s| ≥ 0`,
/// `dlr ≥ 0`, and every begun step either taken or skipped.
fn check_estimate(e: &Estimate, d0: f64) -> Result<()> {
    let non_finite = [e.d, e.d_max, e.d_numerator, e.d_denom, e.d_hat, e.dlr].iter().any(|v| !v.is_finite());
    let bad = |why: &str| Err(Error::checkpoint(format!("checkpoint Prodigy estimate: {why} {}", crate::checkpoint::doubt(non_finite))));
    if !(e.d.is_finite() && e.d >= 0.0 && e.d_max.is_finite() && e.d <= e.d_max && e.d_max >= d0) {
        return bad(&format!("d = {} and d_max = {} break 0 ≤ d ≤ d_max, d_max ≥ d0 = {d0}", e.d, e.d_max));
    }
    if !(e.d_numerator.is_finite() && e.d_hat.is_finite()) {
        return bad("the numerator or d_hat is not finite");
    }
    if !(e.d_denom.is_finite() && e.d_denom >= 0.0 && e.dlr.is_finite() && e.dlr >= 0.0) {
        return bad("Σ|s| or dlr is negative or not finite");
    }
    if e.k.checked_add(e.skips) != Some(e.begun) {
        return bad(&format!("{} steps taken and {} skipped of {} begun", e.k, e.skips, e.begun));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Optimizer;

    fn global() -> Global {
        Global { lr: 1.0, beta1: 0.9, beta2: 0.999, beta3: 0.999f64.sqrt(), d0: 1e-6, d_coef: 1.0, growth_rate: f64::INFINITY, bias_correction: 0, pad: 0 }
    }

    #[test]
    fn the_solve_is_the_references_d_update() {
        let g = global();
        let mut r = Estimate::fresh(1e-6);
        r.d_numerator = 2e-12;
        r.begun = 1;
        r.k = 1;
        Solve::solve(&g, &(), &[3.0, 1e-5, 0.0, 0.0], &mut r);
        let numerator = g.beta3 * 2e-12 + 1.0 * 1e-6 * 3.0;
        let d_hat = numerator / 1e-5;
        assert_eq!((r.d_numerator, r.d_hat, r.d_max, r.d), (numerator, d_hat, d_hat, d_hat), "d = d0: d ← max(d, d_hat)");
        assert_eq!((r.dlr, r.k, r.begun, r.moved), (1e-6, 2, 2, 1), "the step uses the old d");
        // Once d has left d0 it moves only through d_max, bounded by the growth rate.
        let bounded = Global { growth_rate: 1.5, ..g };
        let before = r;
        Solve::solve(&bounded, &(), &[1e3, 1e-5, 0.0, 0.0], &mut r);
        assert!(r.d_max > before.d_max && r.d == before.d * 1.5, "{r:?}");
        // A smaller d_hat keeps d_max; without a bound d catches up with it.
        let before = r;
        assert!(before.d < before.d_max);
        Solve::solve(&g, &(), &[-1.0, 1.0, 0.0, 0.0], &mut r);
        assert_eq!((r.d, r.d_max), (before.d_max, before.d_max));
        assert!(r.d_hat < before.d_max, "{r:?}");
    }

    #[test]
    fn a_zero_denominator_skips_the_step() {
        let mut r = Estimate::fresh(1e-6);
        Solve::solve(&global(), &(), &[0.0, 0.0, 0.0, 0.0], &mut r);
        assert_eq!((r.begun, r.k, r.skips, r.moved, r.d, r.d_numerator), (1, 0, 1, 0, 1e-6, 0.0));
        let c = StepCoeffs { eps: 1e-8, coupled_decay: 0.0, decoupled_decay: 0.1, beta1: 0.9, beta2: 0.999, active: 1, pad: 0 };
        let p = <Step<WithM> as KernelRule>::prepare(&c, &r);
        assert_eq!(Step::<WithM>::delta(&p, 1.0, 2.0, &WithM { m: 1.0, v: 1.0 }), 0.0, "no move, not even decay");
        // The moments still absorb g, with the d the step began with (the reference's first loop).
        let mut moments = WithM { m: 1.0, v: 1.0 };
        assert_eq!(Step::<WithM>::advance(&p, 1.0, 2.0, &mut moments), 0.0);
        assert_eq!(moments, WithM { m: fma32(1.0, (1e-6 * 0.1f64) as f32, 0.9), v: fma32((1e-12 * (1.0 - 0.999f64)) as f32, 1.0, 0.999) });
    }

    #[test]
    fn a_zero_gradient_moves_nothing_and_counts_no_step() {
        let mut opt = Optimizer::new("prodigy", &[3, 2], None).unwrap();
        opt.set_option("weight_decay", None, 0.1).unwrap();
        let (mut a, mut b) = (vec![1.0f32, -2.0, 0.5], vec![0.25f32, 4.0]);
        let zeros = (vec![0.0f32; 3], vec![0.0f32; 2]);
        opt.step(&mut [&mut a, &mut b], &StepInputs::new(vec![&zeros.0[..], &zeros.1[..]]), &mut Callbacks::default()).unwrap();
        assert_eq!((a.clone(), b.clone()), (vec![1.0, -2.0, 0.5], vec![0.25, 4.0]));
        let t = opt.telemetry(0).unwrap();
        let get = |k: &str| t.iter().find(|(n, _)| *n == k).unwrap().1;
        assert_eq!((get("steps"), get("skips"), get("d")), (0.0, 1.0, 1e-6));
        // p0 was taken at that first step: a real gradient now moves θ and starts the count.
        let g = (vec![1.0f32, -1.0, 0.5], vec![0.3f32, 0.2]);
        opt.step(&mut [&mut a, &mut b], &StepInputs::new(vec![&g.0[..], &g.1[..]]), &mut Callbacks::default()).unwrap();
        assert_ne!(a, vec![1.0, -2.0, 0.5]);
        assert_eq!(opt.lr(0).unwrap(), 1e-6, "dlr = d0 · lr at the first step that moves");
    }

    #[test]
    fn group_lrs_are_the_largest_or_zero() {
        let mut opt = Optimizer::new("prodigy", &[3, 2], None).unwrap();
        let (mut a, mut b) = (vec![1.0f32; 3], vec![1.0f32; 2]);
        let g = (vec![1.0f32; 3], vec![1.0f32; 2]);
        opt.set_option("lr", Some(1), 0.5).unwrap();
        let e = opt.step(&mut [&mut a, &mut b], &StepInputs::new(vec![&g.0[..], &g.1[..]]), &mut Callbacks::default()).unwrap_err();
        assert!(e.message.contains("largest"), "{}", e.message);
        opt.set_option("lr", Some(1), 0.0).unwrap();
        opt.step(&mut [&mut a, &mut b], &StepInputs::new(vec![&g.0[..], &g.1[..]]), &mut Callbacks::default()).unwrap();
        assert_eq!(opt.lr(1).unwrap(), 0.0);
        assert!(opt.lr(0).unwrap() > 0.0);
    }

    #[test]
    fn a_loaded_estimate_must_be_possible() {
        let good = Estimate {
            d: 2e-6,
            d_max: 3e-6,
            d_numerator: 1.0,
            d_denom: 2.0,
            d_hat: 3e-6,
            dlr: 1e-6,
            begun: 5,
            k: 4,
            skips: 1,
            moved: 0,
            pad: 0,
            d_before: 0.0,
        };
        check_estimate(&good, 1e-6).unwrap();
        let bad = [
            Estimate { d: 4e-6, ..good },
            Estimate { d: f64::NAN, ..good },
            Estimate { d: -1.0, ..good },
            Estimate { d: 4e-6, d_max: 3e-6, ..good },
            Estimate { d_max: 5e-7, d: 4e-7, ..good },
            Estimate { d_numerator: f64::INFINITY, ..good },
            Estimate { d_denom: -1.0, ..good },
            Estimate { dlr: f64::NAN, ..good },
            Estimate { skips: 2, ..good },
        ];
        for e in bad {
            assert!(check_estimate(&e, 1e-6).is_err(), "{e:?} accepted");
        }
    }
}

//! Schedule-free (Defazio et al. 2024; docs/algorithms.md §6), as the authors' `schedulefree`
//! 1.4.1 (`AdamWScheduleFree`, `SGDScheduleFree`) defines it, over any other algorithm of the
//! library (the *base*).
//!
//! Three sequences: the gradient is taken at `y = (1−β) z + β x` (the caller's parameters while
//! training), `z` is stepped by the base, and `x` (the caller's parameters for evaluation) is
//! the average of the `z`s with weights `c_{t+1} = w_t / Σ w`, `w_t = (t+1)^r · lr_max^p`. Per
//! step and group, in the reference's order:
//!
//! ```text
//! lr = lr · min((k+1)/warmup_steps, 1),  lr_max = max(lr, lr_max),  w = (k+1)^r lr_max^p,
//! Σw += w,  c = w / Σw (0 when Σw = 0)
//! z' = z − lr·λ·y − s                  s: the base's displacement, at the gradient g(y), on z
//! y' = lerp(y, z, c) + (β(1−c) − 1)·(z − z')
//! ```
//!
//! which is the reference's `y.lerp_(z, c); y.add_(g', α = lr(β(1−c)−1)); z.sub_(g', α = lr)`
//! with `lr·g' = lr·λ·y + s`. Over `adamw`/`adam` the base runs without its first moment
//! (β1 = 0: `AdamWScheduleFree` is Adam without momentum, β is its `betas[0]`), so
//! `s = lr·g/(√v̂ + ε)`; over `sgd`, `s = lr·g`. A fixed-rate base takes schedule-free's
//! (scheduled) `lr` as its own; an automatic base keeps its own rate, scaled by `lr` (a factor,
//! 1 by default) times the warmup. The base's own weight decay (`base_weight_decay`) acts at z,
//! schedule-free's (`weight_decay`) at y, as the reference's wrapper documents.
//!
//! The per-step scalars live in one f64 record per group advanced by a solve (on a GPU, in
//! device memory). Over a fixed-rate base the step is one pass (`Step`): per element it reads
//! g, y, z and the base's state once and writes y, z and the state once, the three stages'
//! arithmetic in the order above, so the state is z and the base's own, nothing more. An
//! automatic base (one or more passes with reductions between them, which overwrites z with z'
//! in its last) runs its own passes on z, and y's update then needs the old z besides z' and y:
//! neither z' nor y gives it back exactly (`z' + s` and `z₁ + lr·λ·y` round), so a scratch copy
//! of the previous z, one float per element, is kept for these bases only (rewritten before
//! every read, never saved). The same bits without it would take each automatic base's last
//! pass fused with the interpolation (a kernel per base rule); a per-step allocation would cost
//! 4 bytes per element of page faults on every CPU step and a synchronising allocation on every
//! GPU step.
//!
//! Over gi (`Base::Gi`, docs/algorithms.md §3.3) GI's move steps z — φ = η·g·s and the move
//! scale k in z's frame, `z' = z − lr·λ·y − lr·k·s` — and GI's adaptation reads the decrease of
//! the caller's move instead: the pass that writes y' also sums φ_y = Σ g·(y − y') (the
//! `assign_dot` primitive, CPU only as GI is), and ρ = (f − f+)/(φ_y/2) with f+ at y'.
//!
//! The two parameter views: `set_mode` swaps the caller's buffers between y (training) and
//! x (evaluation) in place, `x = lerp(y, z, 1 − 1/β)` and `y = lerp(x, z, 1 − β)`, as the
//! reference's `eval()`/`train()`.

use std::marker::PhantomData;

use crate::adapt::gi::{Gi, Move};
use crate::algorithm::{Accepts, Algorithm, Context};
use crate::backend::{Commit, Device, DotRule, ElementRule, KernelRule, NestedRule, Record, SolveRule, TensorMut};
use crate::base::{adagrad::Adagrad, adam::Adam, momentum::Momentum, rmsprop::RmsProp, sgd::Sgd, Fixed, FixedRate, Rule, WEIGHT_DECAY};
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, Layout, StepInputs};
use crate::options::{OptionSpec, Options};
use crate::registry;

/// The names: the wrapper and its two aliases.
pub fn is_schedule_free(name: &str) -> bool {
    matches!(name, "schedule-free" | "sf-adamw" | "sf-sgd")
}

/// The base an alias fixes.
pub fn fixed_base(name: &str) -> Option<&'static str> {
    match name {
        "sf-adamw" => Some("adamw"),
        "sf-sgd" => Some("sgd"),
        _ => None,
    }
}

/// `schedule-free`'s base when none is set: adamw, so that it is `AdamWScheduleFree` (the
/// reference's flagship and the AlgoPerf entry).
pub const DEFAULT_BASE: &str = "adamw";

/// The interpolation β's option name: `AdamWScheduleFree`'s `betas[0]` over adam/adamw (whose
/// own β1 it replaces), else `SGDScheduleFree`'s `momentum`.
pub fn beta_name(base: &str) -> &'static str {
    if matches!(base, "adam" | "adamw") {
        "beta1"
    } else {
        "momentum"
    }
}

/// How a base option appears in schedule-free's table (`None`: schedule-free sets it).
fn renamed(base: &str, name: &'static str) -> Option<&'static str> {
    match name {
        "lr" if registry::is_fixed_rate(base) => None,
        "lr" => Some("base_lr"),
        // Over gi, `base_lr` is GI's initial η (its `lr`, above); GI's own `base_lr` (an
        // automatic base's rate under GI, §3.1) moves one level down with GI's base, which is
        // `base_base` here (docs/algorithms.md §3.3).
        "base_lr" if base == "gi" => Some("base_base_lr"),
        "beta1" if matches!(base, "adam" | "adamw") => None,
        "momentum" => Some("base_momentum"),
        "weight_decay" => Some("base_weight_decay"),
        other => Some(other),
    }
}

fn check_base(base: &str) -> Result<()> {
    if is_schedule_free(base) {
        return Err(Error::invalid(format!(
            "schedule-free cannot wrap '{base}': its base is any other algorithm (a fixed-rate rule, auto-*, vsgd-*, tlr, gi, a peer)"
        )));
    }
    Ok(())
}

/// The options of schedule-free over `base` (the base of an alias is its own), over gi with
/// GI's base `base_base` (docs/algorithms.md §3.3).
pub fn specs(name: &str, base: &str, base_base: &str) -> Result<Vec<OptionSpec>> {
    let base = fixed_base(name).unwrap_or(base);
    check_base(base)?;
    let base_specs = registry::specs(base, base_base, "")?;
    let lr = if registry::is_fixed_rate(base) {
        // The references' defaults over adamw and sgd; the base's own over another rule.
        let own = base_specs.iter().find(|s| s.name == "lr").map_or(1e-3, |s| s.default);
        let lr = match base {
            "adam" | "adamw" => 0.0025,
            "sgd" => 1.0,
            _ => own,
        };
        OptionSpec::non_negative("lr", lr)
    } else {
        // A factor on an automatic base's own step, one for all groups (as the warmup).
        OptionSpec::non_negative("lr", 1.0).global()
    };
    let mut specs = vec![
        lr,
        OptionSpec { lo_open: true, ..OptionSpec::fraction(beta_name(base), 0.9) },
        WEIGHT_DECAY,
        OptionSpec::integer("warmup_steps", 0.0, 0.0, 1e15).global(),
        OptionSpec::non_negative("r", 0.0),
        OptionSpec::non_negative("weight_lr_power", 2.0),
    ];
    for spec in base_specs {
        if let Some(name) = renamed(base, spec.name) {
            specs.push(OptionSpec { name, ..spec });
        }
    }
    Ok(specs)
}

/// The base's own option table, read from schedule-free's; a fixed-rate base's `lr` per group
/// is `lrs[g]` (the scheduled rate of this step).
fn base_options(base: &str, base_base: &str, options: &Options, lrs: &[f64]) -> Result<Options> {
    let mut view = options.view(base, registry::specs(base, base_base, "")?, |name| renamed(base, name))?;
    // What schedule-free sets itself: a fixed-rate base's lr (this step's scheduled one), and
    // Adam's β1 (0: the interpolation takes the first moment's place).
    let own: Vec<&'static str> = view.specs().iter().map(|s| s.name).filter(|&n| renamed(base, n).is_none()).collect();
    for name in own {
        if name == "lr" {
            for (group, &lr) in lrs.iter().enumerate() {
                view.set(base, "lr", Some(group), lr)?;
            }
        } else {
            view.set(base, name, None, 0.0)?;
        }
    }
    Ok(view)
}

/// `lr · min((k+1)/warmup_steps, 1)` (the reference's `sched`).
fn scheduled(lr: f64, k: u64, warmup_steps: f64) -> f64 {
    let k = k as f64;
    let sched = if k < warmup_steps { (k + 1.0) / warmup_steps } else { 1.0 };
    lr * sched
}

/// One group's averaging scalars (`#[repr(C)]`: what a solve kernel would update on a GPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Average {
    /// Steps taken (the reference's `k`).
    pub k: u64,
    /// The scheduled learning rate of the last step.
    pub lr: f64,
    /// The largest scheduled rate so far (−1 before the first step).
    pub lr_max: f64,
    /// The last step's weight `(k+1)^r · lr_max^p` and their sum.
    pub weight: f64,
    pub weight_sum: f64,
    /// `weight / weight_sum`: x's averaging weight of the last step.
    pub ckp1: f64,
}

impl Default for Average {
    fn default() -> Self {
        Average { k: 0, lr: 0.0, lr_max: -1.0, weight: 0.0, weight_sum: 0.0, ckp1: 0.0 }
    }
}

impl Record for Average {}

/// A group's options the solve reads.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AverageOptions {
    pub lr: f64,
    pub warmup_steps: f64,
    pub r: f64,
    pub weight_lr_power: f64,
}

impl Record for AverageOptions {}

impl Average {
    /// One step of the reference's per-group scalars, in its order.
    pub fn advance(&mut self, o: &AverageOptions) {
        let lr = scheduled(o.lr, self.k, o.warmup_steps);
        // Python's max(lr, lr_max): lr unless lr_max is larger.
        self.lr_max = if self.lr_max > lr { self.lr_max } else { lr };
        self.weight = ((self.k + 1) as f64).powf(o.r) * self.lr_max.powf(o.weight_lr_power);
        self.weight_sum += self.weight;
        // The reference catches ZeroDivisionError (lr = 0 so far) with c = 0.
        self.ckp1 = if self.weight_sum == 0.0 { 0.0 } else { self.weight / self.weight_sum };
        self.lr = lr;
        self.k += 1;
    }
}

/// Every group's scalars, one step on.
pub struct Advance;

impl SolveRule for Advance {
    type Record = Average;
    type Coeffs = AverageOptions;
    type Params = ();
    const KERNEL: &'static str = "alr_sf_advance";
    const REQUIRE_FINITE: bool = false;
    fn solve(_: &(), o: &AverageOptions, _sums: &[f64; 4], a: &mut Average) {
        a.advance(o);
    }
}

/// torch's `lerp(a, b, w)` (its scalar formula, no FMA).
#[inline(always)]
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// The first step: `z ← y` (the reference's clone of the parameters). Param y, state z.
pub struct InitZ;

impl KernelRule for InitZ {
    type State = f32;
    type Coeffs = ();
    type Record = ();
    type Prepared = ();
    const KERNEL: &'static str = "alr_sf_init_z";
    fn prepare(_: &(), _: &()) {}
}

impl DotRule for InitZ {
    #[inline(always)]
    fn dot(_: &(), _g: f32, y: f32, z: &mut f32) -> [f64; 2] {
        *z = y;
        [0.0, 0.0]
    }
}

/// `w ← z`, then `z ← z − lr·λ·y` (weight decay at y). Param z, "gradient" y, state w (z
/// before the step). Coefficient: λ of the group.
pub struct DecayAtY;

impl KernelRule for DecayAtY {
    type State = f32;
    type Coeffs = f64;
    type Record = Average;
    /// lr·λ
    type Prepared = f32;
    const KERNEL: &'static str = "alr_sf_decay_at_y";
    fn prepare(lambda: &f64, a: &Average) -> f32 {
        (a.lr * lambda) as f32
    }
}

impl ElementRule for DecayAtY {
    #[inline(always)]
    fn advance(decay: &f32, y: f32, z: f32, previous: &mut f32) -> f32 {
        *previous = z;
        Self::delta(decay, y, z, previous)
    }
    #[inline(always)]
    fn delta(decay: &f32, y: f32, _z: f32, _previous: &f32) -> f32 {
        // No decay leaves z's bits alone (the reference skips the term).
        if *decay == 0.0 {
            0.0
        } else {
            decay * y
        }
    }
}

/// y's coefficients of one step: x's weight c and `β(1−c) − 1`.
#[derive(Clone, Copy)]
pub struct Interpolation {
    c: f32,
    b: f32,
}

/// `y ← lerp(y, z, c) + (β(1−c) − 1)·(z − z')`. Param y, "gradient" z', state z (before the
/// step). Coefficient: β of the group.
pub struct Interpolate;

impl KernelRule for Interpolate {
    type State = f32;
    type Coeffs = f64;
    type Record = Average;
    type Prepared = Interpolation;
    const KERNEL: &'static str = "alr_sf_interpolate";
    fn prepare(beta: &f64, a: &Average) -> Interpolation {
        Interpolation { c: a.ckp1 as f32, b: (beta * (1.0 - a.ckp1) - 1.0) as f32 }
    }
}

impl ElementRule for Interpolate {
    const ASSIGNS: bool = true;
    #[inline(always)]
    fn next(p: &Interpolation, z_new: f32, y: f32, z: &mut f32) -> f32 {
        lerp(y, *z, p.c) + p.b * (*z - z_new)
    }
    #[inline(always)]
    fn advance(p: &Interpolation, z_new: f32, y: f32, z: &mut f32) -> f32 {
        y - Self::next(p, z_new, y, z)
    }
    #[inline(always)]
    fn delta(p: &Interpolation, z_new: f32, y: f32, z: &f32) -> f32 {
        y - Self::next(p, z_new, y, &mut { *z })
    }
}

/// A group's coefficients of the fused step over a fixed-rate base: λ (at y) and β.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepCoeffs {
    pub weight_decay: f64,
    pub beta: f64,
}

/// The fused step's scalars of one launch: `DecayAtY`'s and `Interpolate`'s.
#[derive(Clone, Copy)]
pub struct StepScalars {
    decay: f32,
    y: Interpolation,
}

/// One whole step over the fixed-rate base `R` in one pass: `z₁ = z − lr·λ·y`,
/// `z' = z₁ − advance(g, z₁)` (the base's own step on z, its state advanced), and
/// `y ← lerp(y, z, c) + (β(1−c) − 1)·(z − z')` — `DecayAtY`, the base and `Interpolate`
/// exactly as the three passes run them. Param y, state z; the base's state beside.
pub struct Step<R>(PhantomData<R>);

/// The fused step's kernel over each fixed-rate rule (cuda/schedule_free.cu).
pub trait FusedRule: Rule {
    const STEP_KERNEL: &'static str;
}

impl FusedRule for Sgd {
    const STEP_KERNEL: &'static str = "alr_sf_sgd_step";
}
impl FusedRule for Momentum {
    const STEP_KERNEL: &'static str = "alr_sf_momentum_step";
}
impl FusedRule for Adagrad {
    const STEP_KERNEL: &'static str = "alr_sf_adagrad_step";
}
impl FusedRule for RmsProp {
    const STEP_KERNEL: &'static str = "alr_sf_rmsprop_step";
}
impl<const DECOUPLED: bool> FusedRule for Adam<DECOUPLED> {
    // AdamW is Adam's kernel with the decoupled decay in its coefficients (as on its own).
    const STEP_KERNEL: &'static str = "alr_sf_adam_step";
}

impl<R: FusedRule> KernelRule for Step<R> {
    type State = f32;
    type Coeffs = StepCoeffs;
    type Record = Average;
    type Prepared = StepScalars;
    const KERNEL: &'static str = R::STEP_KERNEL;
    fn prepare(c: &StepCoeffs, a: &Average) -> StepScalars {
        StepScalars { decay: DecayAtY::prepare(&c.weight_decay, a), y: Interpolate::prepare(&c.beta, a) }
    }
}

impl<R: FusedRule> NestedRule for Step<R> {
    type Inner = Fixed<R>;
    #[inline(always)]
    fn next(p: &StepScalars, base: &R::Coeffs, g: f32, y: f32, z: &mut f32, state: &mut R::State) -> f32 {
        let z_old = *z;
        let decayed = z_old - DecayAtY::delta(&p.decay, y, z_old, &z_old);
        *z = decayed - Fixed::<R>::advance(base, g, decayed, state);
        Interpolate::next(&p.y, *z, y, &mut { z_old })
    }
}

/// A base whose step schedule-free runs in its own single pass (a fixed-rate rule).
pub trait FusedBase<D: Device>: Send {
    fn algorithm(&self) -> &dyn Algorithm;
    fn algorithm_mut(&mut self) -> &mut dyn Algorithm;
    /// The algorithm on its own (no schedule-free around it).
    fn into_algorithm(self: Box<Self>) -> Box<dyn Algorithm>;
    /// The fused step's kernel.
    fn step_kernel(&self) -> &'static str;
    /// One step (`Step`) over every tensor: y in `params`, z in `z`, the base's options in `ctx`.
    fn step_fused(
        &mut self,
        ctx: &Context,
        coeffs: &[StepCoeffs],
        averages: &D::Records<Average>,
        params: &mut [TensorMut],
        inputs: &StepInputs,
        z: &mut [D::State<f32>],
    ) -> Result<()>;
}

impl<R: FusedRule, D: Device> FusedBase<D> for FixedRate<R, D> {
    fn algorithm(&self) -> &dyn Algorithm {
        self
    }
    fn algorithm_mut(&mut self) -> &mut dyn Algorithm {
        self
    }
    fn into_algorithm(self: Box<Self>) -> Box<dyn Algorithm> {
        self
    }
    fn step_kernel(&self) -> &'static str {
        R::STEP_KERNEL
    }
    fn step_fused(
        &mut self,
        ctx: &Context,
        coeffs: &[StepCoeffs],
        averages: &D::Records<Average>,
        params: &mut [TensorMut],
        inputs: &StepInputs,
        z: &mut [D::State<f32>],
    ) -> Result<()> {
        self.step_nested::<Step<R>>(ctx, coeffs, averages, params, inputs, z)
    }
}

/// Schedule-free's base: a fixed-rate rule stepped in the fused pass, any other algorithm
/// stepped by its own passes on z, or GI, whose move steps z and whose adaptation reads the
/// decrease of y's move (docs/algorithms.md §3.3).
pub enum Base<D: Device> {
    Fused(Box<dyn FusedBase<D>>),
    Own(Box<dyn Algorithm>),
    Gi(Box<OverGi>),
}

/// GI as schedule-free's base, with what the composition adds to GI's state.
pub struct OverGi {
    gi: Gi,
    /// The last adapting step's φ_y = Σ g·(y − y') (0 before one): telemetry, saved after
    /// GI's state.
    phi_y: f64,
}

impl OverGi {
    pub fn new(gi: Gi) -> Self {
        OverGi { gi, phi_y: 0.0 }
    }

    /// η's adaptation after an adapting move (§3.3), from this process's part `own` of φ_y:
    /// φ_y summed over the processes, then ρ = (f − f+)/(φ_y/2) as GI's (f − f+)/(φ/2). A φ_y ≤ 0
    /// or non-finite gives no prediction: η is kept, the step counted as skipped. Over shards
    /// the sum comes after the move, which stands if the reduction fails (as after a failed
    /// loss callback): η is then not adapted.
    fn adapt(&mut self, options: &Options, moved: &Move, own: f64, params: &[TensorMut], callbacks: &mut Callbacks) -> Result<()> {
        let phi_y = self.gi.summed(own).map_err(|why| Error {
            after_change: true,
            ..Error::callback(format!("the reduce callback failed on φ_y ({why}); the parameters were moved, η was not adapted"))
        })?;
        self.phi_y = phi_y;
        let usable = phi_y > 0.0 && phi_y.is_finite();
        self.gi.conclude(options, moved, phi_y / 2.0, usable, params, callbacks)
    }
}

impl<D: Device> Base<D> {
    fn algorithm(&self) -> &dyn Algorithm {
        match self {
            Base::Fused(b) => b.algorithm(),
            Base::Own(b) => b.as_ref(),
            Base::Gi(b) => &b.gi,
        }
    }
    fn algorithm_mut(&mut self) -> &mut dyn Algorithm {
        match self {
            Base::Fused(b) => b.algorithm_mut(),
            Base::Own(b) => b.as_mut(),
            Base::Gi(b) => &mut b.gi,
        }
    }
}

/// `θ ← lerp(θ, z, w)`: to x (`w = 1 − 1/β`) or back to y (`w = 1 − β`). Param θ,
/// "gradient" z, no state. Coefficient: w.
pub struct Swap;

impl KernelRule for Swap {
    type State = ();
    type Coeffs = f32;
    type Record = ();
    type Prepared = f32;
    const KERNEL: &'static str = "alr_sf_swap";
    fn prepare(w: &f32, _: &()) -> f32 {
        *w
    }
}

impl ElementRule for Swap {
    const ASSIGNS: bool = true;
    #[inline(always)]
    fn next(w: &f32, z: f32, theta: f32, _: &mut ()) -> f32 {
        lerp(theta, z, *w)
    }
    #[inline(always)]
    fn advance(w: &f32, z: f32, theta: f32, st: &mut ()) -> f32 {
        theta - Self::next(w, z, theta, st)
    }
    #[inline(always)]
    fn delta(w: &f32, z: f32, theta: f32, _: &()) -> f32 {
        theta - lerp(theta, z, *w)
    }
}

/// `previous ← z`, then `z ← z − lr·λ·y` over every tensor (an automatic base's first pass).
fn decay_at_y<D: Device>(
    device: &D,
    options: &Options,
    layout: &Layout,
    averages: &D::Records<Average>,
    params: &[TensorMut],
    z: &mut [D::State<f32>],
    previous: &mut [D::State<f32>],
) -> Result<()> {
    for (t, (z, previous)) in z.iter_mut().zip(previous.iter_mut()).enumerate() {
        let group = layout.groups[t];
        let mut z = device.state_view(z);
        device.update::<DecayAtY>(&options.get(group, "weight_decay"), averages, group, &mut z, &params[t].view(), previous)?;
    }
    Ok(())
}

/// `y ← lerp(y, z, c) + (β(1−c) − 1)·(z − z')` over every tensor, z the previous z (an
/// automatic base's last pass).
#[allow(clippy::too_many_arguments)] // the step's buffers and the β's option name
fn interpolate<D: Device>(
    device: &D,
    options: &Options,
    layout: &Layout,
    beta_name: &str,
    averages: &D::Records<Average>,
    params: &mut [TensorMut],
    z: &mut [D::State<f32>],
    previous: &mut [D::State<f32>],
) -> Result<()> {
    for (t, (z, previous)) in z.iter_mut().zip(previous.iter_mut()).enumerate() {
        let group = layout.groups[t];
        let z = device.state_view(z);
        device.update::<Interpolate>(&options.get(group, beta_name), averages, group, &mut params[t], &z.view(), previous)?;
    }
    Ok(())
}

/// Undoes an automatic base's refused step: z ← its copy from before the step (`previous`,
/// written by `decay_at_y`), the averages ← `before` (device copies: no synchronisation).
fn restore<D: Device>(
    device: &D,
    z: &mut [D::State<f32>],
    previous: &[D::State<f32>],
    averages: &mut D::Records<Average>,
    before: &D::Records<Average>,
) -> Result<()> {
    for (z, previous) in z.iter_mut().zip(previous) {
        device.copy_state(z, previous)?;
    }
    device.copy_records(averages, before)
}

pub struct ScheduleFree<D: Device> {
    name: &'static str,
    base_name: String,
    /// GI's base when the base is gi (docs/algorithms.md §3.3); "" otherwise.
    base_base: String,
    base: Base<D>,
    device: D,
    z: Vec<D::State<f32>>,
    /// z before the step being taken, for an automatic base (gi too) only (scratch: rewritten
    /// before every use, not saved; why that base needs it is in the module's header). None
    /// over a fixed-rate base.
    previous: Vec<D::State<f32>>,
    units: Vec<D::State<()>>,
    averages: D::Records<Average>,
    /// The averages before the step being taken, for an automatic base (gi too) only (scratch,
    /// as `previous`); none over a fixed-rate base.
    averages_before: D::Records<Average>,
    average_options: D::Records<AverageOptions>,
    sums: D::Sums,
    no_record: D::Records<()>,
    /// Steps taken (every group steps together: each record's `k`).
    steps: u64,
    /// The caller's parameters are y (true) or x.
    train: bool,
}

impl<D: Device> ScheduleFree<D> {
    pub fn new(name: &str, base_name: &str, base_base: &str, base: Base<D>, device: &D, layout: &Layout) -> Result<Self> {
        let name = registry::ALGORITHMS.iter().copied().find(|&n| n == name).ok_or_else(|| Error::invalid(format!("unknown algorithm '{name}'")))?;
        check_base(base_name)?;
        let lens = &layout.lens;
        let n_groups = layout.n_groups();
        let (previous, averages_before) = match &base {
            Base::Fused(fused) => {
                device.require(&[fused.step_kernel()])?;
                (Vec::new(), device.records(&[])?)
            }
            Base::Own(_) | Base::Gi(_) => (device.alloc_per_tensor(lens)?, device.records(&crate::backend::filled(n_groups, Average::default())?)?),
        };
        Ok(ScheduleFree {
            name,
            base_name: base_name.to_string(),
            base_base: base_base.to_string(),
            base,
            z: device.alloc_per_tensor(lens)?,
            previous,
            units: device.alloc_per_tensor(lens)?,
            averages: device.records(&crate::backend::filled(n_groups, Average::default())?)?,
            averages_before,
            average_options: device.records(&crate::backend::filled(n_groups, AverageOptions::default())?)?,
            sums: device.sums(lens, &layout.members)?,
            no_record: device.records(&[()])?,
            device: device.clone(),
            steps: 0,
            train: true,
        })
    }

    fn fixed_rate(&self) -> bool {
        registry::is_fixed_rate(&self.base_name)
    }

    /// The base's options for the step after `k` steps.
    fn base_options(&self, options: &Options, k: u64) -> Result<Options> {
        let warmup = options.get(0, "warmup_steps");
        let lrs: Vec<f64> = (0..options.n_groups()).map(|g| scheduled(options.get(g, "lr"), k, warmup)).collect();
        base_options(&self.base_name, &self.base_base, options, &lrs)
    }

    fn average_options(&self, options: &Options) -> Vec<AverageOptions> {
        (0..options.n_groups())
            .map(|g| AverageOptions {
                lr: options.get(g, "lr"),
                warmup_steps: options.get(0, "warmup_steps"),
                r: options.get(g, "r"),
                weight_lr_power: options.get(g, "weight_lr_power"),
            })
            .collect()
    }

    fn average(&self, group: usize) -> Result<Average> {
        Ok(self.device.read_records(&self.averages)?[group])
    }
}

impl<D: Device> Algorithm for ScheduleFree<D> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn accepts(&self, ctx: &Context) -> Accepts {
        let base = match self.base_options(ctx.options, self.steps) {
            Ok(options) => self.base.algorithm().accepts(&Context { layout: ctx.layout, options: &options }),
            Err(_) => Accepts::default(),
        };
        // Callbacks would evaluate the model at the base's point z, not at y — except GI's loss,
        // taken at y and called back at y' (the caller's parameters, docs/algorithms.md §3.3).
        // The inputs are checked before the step, even for a base that checks its own:
        // schedule-free's passes before the base's would change z and the averages first.
        let over_gi = matches!(self.base, Base::Gi(_));
        Accepts { loss: over_gi && base.loss, loss_fn: over_gi && base.loss_fn, grad_fn: false, checks_own_inputs: false, ..base }
    }

    fn check(&self, ctx: &Context, inputs: &StepInputs, callbacks: &Callbacks) -> Result<()> {
        if !self.train {
            return Err(Error::wrong_state(format!(
                "'{}' is in eval mode (the parameters hold x): switch back with alr_set_mode(ALR_MODE_TRAIN) (Python and torch: opt.train()) before a step",
                self.name
            )));
        }
        // The first step's z ← y and the scale of an automatic base's step are decided on the
        // host: a graph would replay them as captured.
        crate::algorithm::refuse_capture(&self.device, self.name, "its first-step initialisation and its base's scale")?;
        let options = self.base_options(ctx.options, self.steps)?;
        self.base.algorithm().check(&Context { layout: ctx.layout, options: &options }, inputs, callbacks)
    }

    fn propose(&mut self, _ctx: &Context, _params: &[TensorMut], _inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        // GI over schedule-free is refused when the optimizer is built; nothing calls this.
        Err(Error::unsupported("schedule-free cannot be wrapped: its step moves y, z and x, not one displacement a wrapper could scale"))
    }

    fn apply(&self, _ctx: &Context, _params: &mut [TensorMut], _inputs: &StepInputs, _scale: f32) -> Result<()> {
        Err(Error::unsupported("schedule-free cannot be wrapped: its step moves y, z and x, not one displacement a wrapper could scale"))
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        let o = ctx.options;
        let layout = ctx.layout;
        let base_opts = self.base_options(o, self.steps)?;
        let base_ctx = Context { layout, options: &base_opts };
        let beta_name = beta_name(&self.base_name);
        let scale = scheduled(o.get(0, "lr"), self.steps, o.get(0, "warmup_steps")) as f32;
        let ScheduleFree { device, base, z, previous, averages, averages_before, average_options, sums, no_record, steps, .. } = self;
        if *steps == 0 {
            for (t, z) in z.iter_mut().enumerate() {
                device.dots::<InitZ>(&(), no_record, 0, &params[t].view(), &inputs.grads[t], z, sums, t, Commit::Write)?;
            }
        }
        // Over gi, an adapting step's GI with its move and this process's part of φ_y.
        let mut adapting = None;
        // An automatic base's step (GI's too) may be refused by a reduction over shards after
        // the averages advanced and z was decayed (§7: another process's inputs were bad):
        // both go back then, so that nothing changed.
        if !matches!(base, Base::Fused(_)) {
            device.copy_records(averages_before, averages)?;
        }
        device.solve::<Advance>(&(), average_options, averages, sums)?;
        match base {
            Base::Fused(base) => {
                let coeffs: Vec<StepCoeffs> =
                    (0..layout.n_groups()).map(|g| StepCoeffs { weight_decay: o.get(g, "weight_decay"), beta: o.get(g, beta_name) }).collect();
                base.step_fused(&base_ctx, &coeffs, averages, params, inputs, z)?;
            }
            Base::Own(base) => {
                decay_at_y(device, o, layout, averages, params, z, previous)?;
                let stepped = {
                    let mut zs: Vec<TensorMut> = z.iter_mut().map(|z| device.state_view(z)).collect();
                    base.step_scaled(&base_ctx, &mut zs, inputs, callbacks, scale)
                };
                if let Err(refused) = stepped {
                    restore(device, z, previous, averages, averages_before)?;
                    return Err(refused);
                }
                interpolate(device, o, layout, beta_name, averages, params, z, previous)?;
            }
            Base::Gi(over) => {
                decay_at_y(device, o, layout, averages, params, z, previous)?;
                // GI's move on z (§3: k from φ = η·g·s in z's frame), scaled by lr:
                // z' = z − lr·λ·y − lr·k·s.
                let moved = {
                    let mut zs: Vec<TensorMut> = z.iter_mut().map(|z| device.state_view(z)).collect();
                    over.gi.make_move(&base_ctx, &mut zs, inputs, callbacks, scale)
                };
                let moved = match moved {
                    Ok(moved) => moved,
                    Err(refused) => {
                        // Refused before the move (a reduction of φ or of the base's sums over
                        // shards, §7).
                        restore(device, z, previous, averages, averages_before)?;
                        return Err(refused);
                    }
                };
                if moved.adapts {
                    // y' and this process's part of φ_y = Σ g·(y − y') in one pass per tensor
                    // (each with its group's c, β).
                    let mut own = 0.0;
                    for (t, (z, previous)) in z.iter_mut().zip(previous.iter_mut()).enumerate() {
                        let group = layout.groups[t];
                        let z = device.state_view(z);
                        own += device.assign_dot::<Interpolate>(
                            &o.get(group, beta_name),
                            averages,
                            group,
                            &mut params[t],
                            &z.view(),
                            &inputs.grads[t],
                            previous,
                        )?;
                    }
                    adapting = Some((over, moved, own));
                } else {
                    interpolate(device, o, layout, beta_name, averages, params, z, previous)?;
                }
            }
        }
        // The move is made: the step counts, also when GI's adaptation then fails.
        *steps += 1;
        match adapting {
            Some((over, moved, own)) => over.adapt(&base_opts, &moved, own, params, callbacks),
            None => Ok(()),
        }
    }

    fn set_mode(&mut self, ctx: &Context, params: &mut [TensorMut], train: bool) -> Result<()> {
        // Over gi the report is about y', which eval would overwrite with x.
        if self.awaiting_report() {
            return Err(Error::wrong_state("the last step is waiting for its loss: call alr_report_loss first"));
        }
        if train == self.train {
            // The reference's protocol calls train() before the first step; that one is fine.
            if train && self.steps == 0 {
                return Ok(());
            }
            let (mode, call) = if train { ("train", "ALR_MODE_TRAIN") } else { ("eval", "ALR_MODE_EVAL") };
            return Err(Error::wrong_state(format!(
                "'{}' is already in {mode} mode: {call} twice would move the parameters away from both y and x",
                self.name
            )));
        }
        if self.steps > 0 {
            let beta_name = beta_name(&self.base_name);
            let ScheduleFree { device, z, units, no_record, .. } = self;
            for (t, (z, unit)) in z.iter_mut().zip(units.iter_mut()).enumerate() {
                let beta = ctx.options.get(ctx.layout.groups[t], beta_name);
                let w = (if train { 1.0 - beta } else { 1.0 - 1.0 / beta }) as f32;
                let z = device.state_view(z);
                device.update::<Swap>(&w, no_record, 0, &mut params[t], &z.view(), unit)?;
            }
        }
        self.train = train;
        Ok(())
    }

    fn options_changed(&mut self, ctx: &Context) -> Result<()> {
        let values = self.average_options(ctx.options);
        self.device.write_records(&mut self.average_options, &values)?;
        let options = self.base_options(ctx.options, self.steps)?;
        self.base.algorithm_mut().options_changed(&Context { layout: ctx.layout, options: &options })
    }

    fn discard_steps(&mut self, n: u64) {
        self.steps = self.steps.saturating_sub(n);
        self.base.algorithm_mut().discard_steps(n);
    }

    /// Over shards the base's reductions are the step's first (schedule-free's own passes
    /// reduce nothing).
    fn abstain(&mut self, ctx: &Context) -> bool {
        let Ok(options) = self.base_options(ctx.options, self.steps) else { return false };
        self.base.algorithm_mut().abstain(&Context { layout: ctx.layout, options: &options })
    }

    /// GI's second phase under schedule-free (docs/algorithms.md §3.3): f+ at y'.
    fn report_loss(&mut self, ctx: &Context, loss_after: f64) -> Result<()> {
        let options = self.base_options(ctx.options, self.steps)?;
        match &mut self.base {
            Base::Gi(over) => over.gi.report_loss(&Context { layout: ctx.layout, options: &options }, loss_after),
            _ => Err(crate::algorithm::takes_no_report(self.name)),
        }
    }

    fn awaiting_report(&self) -> bool {
        self.base.algorithm().awaiting_report()
    }

    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        let lr = if self.steps == 0 { ctx.options.get(group, "lr") } else { self.average(group)?.lr };
        if self.fixed_rate() {
            return Ok(lr);
        }
        let options = self.base_options(ctx.options, self.steps)?;
        Ok(lr * self.base.algorithm().lr(&Context { layout: ctx.layout, options: &options }, group)?)
    }

    fn momentum(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(ctx.options.get(group, beta_name(&self.base_name)))
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        let a = self.average(group)?;
        let mut entries = vec![
            ("ckp1", a.ckp1),
            ("sf_lr", a.lr),
            ("weight", a.weight),
            ("weight_sum", a.weight_sum),
            ("lr_max", a.lr_max),
            ("train_mode", if self.train { 1.0 } else { 0.0 }),
        ];
        let options = self.base_options(ctx.options, self.steps)?;
        let base_ctx = Context { layout: ctx.layout, options: &options };
        entries.extend(match &self.base {
            // GI's, then φ_y, then GI's base's (§3.3).
            Base::Gi(over) => over.gi.telemetry_with(&base_ctx, group, &[("phi_y", over.phi_y)])?,
            base => base.algorithm().telemetry(&base_ctx, group)?,
        });
        Ok(entries)
    }

    fn started(&self) -> Result<bool> {
        Ok(self.steps > 0 || self.base.algorithm().started()?)
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        let averages = self.device.read_records(&self.averages)?;
        w.u32(u32::from(self.train));
        w.counts(&averages.iter().map(|a| a.k).collect::<Vec<_>>());
        let fields: [fn(&Average) -> f64; 5] = [|a| a.lr, |a| a.lr_max, |a| a.weight, |a| a.weight_sum, |a| a.ckp1];
        for field in fields {
            w.f64s(&averages.iter().map(field).collect::<Vec<_>>());
        }
        if self.steps > 0 {
            for z in &self.z {
                self.device.with_state(z, |z| w.elem_states(z))?;
            }
        }
        w.str(self.base.algorithm().name());
        self.base.algorithm().save(w)?;
        // The composition's own part, after GI's state (§3.3).
        if let Base::Gi(over) = &self.base {
            w.f64s(&[over.phi_y]);
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let train = match r.u32()? {
            0 => false,
            1 => true,
            other => return Err(Error::checkpoint(format!("checkpoint schedule-free mode is {other}; it is 0 (eval) or 1 (train) (corrupted?)"))),
        };
        let n_groups = ctx.layout.n_groups();
        let ks = r.counts_exact(n_groups, "schedule-free step counts")?;
        let steps = ks[0];
        if let Some(g) = ks.iter().position(|&k| k != steps) {
            return Err(Error::checkpoint(format!(
                "checkpoint schedule-free group {g} took {} steps, group 0 {steps}: every group steps together (corrupted?)",
                ks[g]
            )));
        }
        let mut read = |what: &str, possible: fn(f64) -> bool, rule: &str| -> Result<Vec<f64>> {
            let v = r.f64s_exact(n_groups, &format!("schedule-free {what}"))?;
            crate::checkpoint::check_values(&v, &format!("schedule-free {what}"), possible, rule)?;
            Ok(v)
        };
        let lr = read("lr", |v| v.is_finite() && v >= 0.0, "a rate is finite and ≥ 0")?;
        let lr_max = read("lr_max", |v| v.is_finite() && v >= -1.0, "it is −1 before the first step, then a rate ≥ 0")?;
        let weight = read("weight", |v| v.is_finite() && v >= 0.0, "a weight is finite and ≥ 0")?;
        let weight_sum = read("weight_sum", |v| v.is_finite() && v >= 0.0, "a sum of weights is finite and ≥ 0")?;
        let ckp1 = read("ckp1", |v| (0.0..=1.0).contains(&v), "an averaging weight is in [0, 1]")?;
        let averages: Vec<Average> =
            (0..n_groups).map(|g| Average { k: steps, lr: lr[g], lr_max: lr_max[g], weight: weight[g], weight_sum: weight_sum[g], ckp1: ckp1[g] }).collect();
        for (g, a) in averages.iter().enumerate() {
            let fresh = Average::default();
            if (steps == 0 && *a != fresh) || (steps > 0 && (a.lr_max < 0.0 || a.weight > a.weight_sum)) {
                let doubt = crate::checkpoint::doubt([a.lr, a.lr_max, a.weight, a.weight_sum, a.ckp1].iter().any(|v| !v.is_finite()));
                return Err(Error::checkpoint(format!("checkpoint schedule-free group {g} scalars {a:?} are impossible after {steps} steps {doubt}")));
            }
        }
        let mut zs = Vec::new();
        if steps > 0 {
            for (t, &len) in ctx.layout.lens.iter().enumerate() {
                let what = format!("schedule-free z of tensor {t}");
                let z = r.f32s_exact(len, &what)?;
                crate::checkpoint::check_values(&z, &what, f32::is_finite, "it is finite")?;
                zs.push(z);
            }
        }
        r.expect_name(self.base.algorithm().name())?;
        let options = self.base_options(ctx.options, steps)?;
        self.base.algorithm_mut().load(&Context { layout: ctx.layout, options: &options }, r)?;
        // The composition's own part (a fresh algorithm is loaded into: an error drops it).
        if let Base::Gi(over) = &mut self.base {
            let phi_y = r.f64s_exact(1, "schedule-free over gi φ_y")?[0];
            if steps == 0 && phi_y != 0.0 {
                return Err(Error::checkpoint(format!(
                    "checkpoint φ_y = {phi_y} before the first step is impossible: it is 0 until a step adapts (corrupted?)"
                )));
            }
            over.phi_y = phi_y;
        }
        for (buffer, values) in self.z.iter_mut().zip(&zs) {
            self.device.write_state(buffer, values)?;
        }
        self.device.write_records(&mut self.averages, &averages)?;
        let values = self.average_options(ctx.options);
        self.device.write_records(&mut self.average_options, &values)?;
        (self.steps, self.train) = (steps, train);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_option_name_is_taken_twice() {
        let others = || registry::ALGORITHMS.iter().copied().filter(|&b| b != "gi" && !is_schedule_free(b));
        for (base, base_base) in others().map(|b| (b, "")).chain(others().map(|b| ("gi", b))) {
            let specs = specs("schedule-free", base, base_base).unwrap();
            for (i, s) in specs.iter().enumerate() {
                assert!(specs[..i].iter().all(|o| o.name != s.name), "over {base}/{base_base}: option '{}' twice", s.name);
            }
        }
        assert!(specs("schedule-free", "sf-sgd", "").is_err());
        assert!(specs("schedule-free", "gi", "gi").is_err());
    }

    /// Over gi (docs/algorithms.md §3.3): GI's `lr` is `base_lr`, an automatic base's own `lr`
    /// under GI (`base_lr` there) is `base_base_lr`, GI's base's momentum and weight decay are
    /// `base_momentum` and `base_weight_decay`, GI's other options keep their names.
    #[test]
    fn over_gi_the_options_are_renamed_one_level_down() {
        let names = |base_base: &str| -> Vec<&'static str> { specs("schedule-free", "gi", base_base).unwrap().iter().map(|s| s.name).collect() };
        let over_prodigy = names("prodigy");
        for name in ["lr", "momentum", "base_lr", "base_base_lr", "f_star", "R", "up", "down", "hi", "lo", "adapt_every", "base_weight_decay", "d0"] {
            assert!(over_prodigy.contains(&name), "{name} missing: {over_prodigy:?}");
        }
        let base_lr = specs("schedule-free", "gi", "prodigy").unwrap().into_iter().find(|s| s.name == "base_lr").unwrap();
        assert_eq!(base_lr.default, 1.0, "GI's initial η over an automatic base");
        let over_momentum = names("momentum");
        assert!(over_momentum.contains(&"base_momentum") && !over_momentum.contains(&"base_base_lr"), "{over_momentum:?}");
        let eta0 = specs("schedule-free", "gi", "momentum").unwrap().into_iter().find(|s| s.name == "base_lr").unwrap();
        assert_eq!(eta0.default, 1e-3, "GI's initial η over a fixed-rate base");
    }

    #[test]
    fn the_scalars_follow_the_reference() {
        // warmup 3, r = 0.5, p = 2: by hand from the reference's formulas.
        let o = AverageOptions { lr: 0.3, warmup_steps: 3.0, r: 0.5, weight_lr_power: 2.0 };
        let mut a = Average::default();
        let mut sum = 0.0;
        for k in 0..6u64 {
            a.advance(&o);
            let lr = 0.3 * if k < 3 { (k + 1) as f64 / 3.0 } else { 1.0 };
            let w = ((k + 1) as f64).powf(0.5) * lr.powf(2.0);
            sum += w;
            assert_eq!((a.k, a.lr, a.lr_max, a.weight, a.weight_sum, a.ckp1), (k + 1, lr, lr, w, sum, w / sum));
        }
        // lr = 0: the reference's ZeroDivisionError gives c = 0.
        let mut a = Average::default();
        a.advance(&AverageOptions { lr: 0.0, ..o });
        assert_eq!((a.ckp1, a.weight_sum), (0.0, 0.0));
    }

    #[test]
    fn the_previous_z_is_kept_for_an_automatic_base_only() {
        use crate::backend::{cpu::Cpu, AnyDevice};
        let layout = Layout::new(&[5, 3], None).unwrap();
        let fused = Base::Fused(Box::new(FixedRate::<Sgd, Cpu>::new(&Cpu, &layout.lens, 2, false).unwrap()));
        assert!(ScheduleFree::new("sf-sgd", "sgd", "", fused, &Cpu, &layout).unwrap().previous.is_empty());
        let own = Base::Own(registry::build("auto-sgd", "", "", &layout, &AnyDevice::Cpu(Cpu), false, &None).unwrap());
        let sf = ScheduleFree::new("schedule-free", "auto-sgd", "", own, &Cpu, &layout).unwrap();
        assert_eq!(sf.previous.iter().map(Vec::len).collect::<Vec<_>>(), [5, 3]);
    }

    /// Schedule-free over gi (docs/algorithms.md §3.3) on `½ Σ h (θ − c)²` over two tensors in
    /// two groups, with a gradient noise that changes per step.
    mod over_gi {
        use crate::backend::TensorMut;
        use crate::{AlrStatus, Callbacks, Optimizer, StepInputs};

        const LENS: [usize; 2] = [9, 4];

        fn h(t: usize, i: usize) -> f32 {
            1.0 + 0.3 * ((t * 7 + i) % 5) as f32
        }

        fn loss(ps: &[&[f32]]) -> f64 {
            ps.iter()
                .enumerate()
                .map(|(t, p)| p.iter().enumerate().map(|(i, &v)| 0.5 * f64::from(h(t, i)) * f64::from(v - 0.1 * i as f32).powi(2)).sum::<f64>())
                .sum()
        }

        fn grads(ps: &[Vec<f32>], step: usize) -> Vec<Vec<f32>> {
            let noise = |t: usize, i: usize| 0.05 * ((((step * 31 + t * 17 + i * 13) % 11) as f32) - 5.0);
            ps.iter().enumerate().map(|(t, p)| p.iter().enumerate().map(|(i, &v)| h(t, i) * (v - 0.1 * i as f32) + noise(t, i)).collect()).collect()
        }

        fn start() -> Vec<Vec<f32>> {
            LENS.iter().enumerate().map(|(t, &n)| (0..n).map(|i| 1.5 - 0.37 * (i + t) as f32).collect()).collect()
        }

        fn over_gi(base_base: &str) -> Optimizer {
            let mut opt = Optimizer::new("schedule-free", &LENS, Some(&[0, 1])).unwrap();
            opt.set_option_str("base", "gi").unwrap();
            opt.set_option_str("base_base", base_base).unwrap();
            opt
        }

        fn views(ps: &[Vec<f32>]) -> Vec<&[f32]> {
            ps.iter().map(Vec::as_slice).collect()
        }

        /// One step at `params` with the loss there; `closure`: f+ by the loss callback, else
        /// the step waits for a report.
        fn step(opt: &mut Optimizer, params: &mut [Vec<f32>], t: usize, closure: bool) -> crate::Result<()> {
            let g = grads(params, t);
            let mut inputs = StepInputs::new(g.iter().map(Vec::as_slice).collect());
            inputs.loss = Some(loss(&views(params)));
            let mut callbacks = Callbacks::default();
            if closure {
                callbacks.loss_fn = Some(Box::new(|ps: &[&[f32]]| Ok(loss(ps))));
            }
            let mut ps: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            opt.step(&mut ps, &inputs, &mut callbacks)
        }

        fn telemetry(opt: &mut Optimizer, name: &str) -> f64 {
            opt.telemetry(0).unwrap().into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no telemetry {name}")).1
        }

        fn bits(ps: &[Vec<f32>]) -> Vec<Vec<u32>> {
            ps.iter().map(|p| p.iter().map(|v| v.to_bits()).collect()).collect()
        }

        /// §3.3: with up = down = 1 (η fixed) and f_star unset, schedule-free over gi is
        /// schedule-free over GI's base with that base's step scaled by η — bit for bit, as
        /// propose/apply is the scaled step (an automatic base: GI runs a fixed-rate one at lr 1).
        #[test]
        fn with_a_fixed_eta_it_is_its_base_scaled_by_eta() {
            for base in ["prodigy", "dog", "dadapt-adam"] {
                let mut composed = over_gi(base);
                for (name, value) in [("up", 1.0), ("down", 1.0), ("base_lr", 0.5)] {
                    composed.set_option(name, None, value).unwrap();
                }
                let mut plain = Optimizer::new("schedule-free", &LENS, Some(&[0, 1])).unwrap();
                plain.set_option_str("base", base).unwrap();
                plain.set_option("lr", None, 0.5).unwrap();
                let (mut a, mut b) = (start(), start());
                for t in 0..25 {
                    step(&mut composed, &mut a, t, true).unwrap();
                    let g = grads(&b, t);
                    let inputs = StepInputs::new(g.iter().map(Vec::as_slice).collect());
                    let mut ps: Vec<&mut [f32]> = b.iter_mut().map(Vec::as_mut_slice).collect();
                    plain.step(&mut ps, &inputs, &mut Callbacks::default()).unwrap();
                    assert_eq!(bits(&a), bits(&b), "{base}: step {t}");
                    assert_eq!(composed.lr(1).unwrap(), plain.lr(1).unwrap(), "{base}: step {t}");
                }
                assert_ne!(bits(&a), bits(&start()), "{base}: nothing moved");
                assert_eq!(telemetry(&mut composed, "eta"), 0.5);
            }
        }

        /// φ_y is Σ g·(y − y') over every tensor (each group with its own β), ρ the observed
        /// decrease over φ_y/2, and η follows ρ (§3.3).
        #[test]
        fn rho_divides_by_the_decrease_of_ys_move() {
            let mut opt = over_gi("momentum");
            // A narrow band, so that η moves both ways in a short run.
            for (name, value) in [("base_lr", 0.05), ("hi", 1.1), ("lo", 0.9)] {
                opt.set_option(name, None, value).unwrap();
            }
            opt.set_option("momentum", Some(1), 0.6).unwrap();
            let mut params = start();
            let (mut grown, mut shrunk) = (false, false);
            for t in 0..40 {
                let (before, g, f) = (params.clone(), grads(&params, t), loss(&views(&params)));
                let (eta, skipped) = (telemetry(&mut opt, "eta"), telemetry(&mut opt, "skipped"));
                step(&mut opt, &mut params, t, true).unwrap();
                let phi_y: f64 = (0..LENS.len())
                    .flat_map(|k| (0..LENS[k]).map(move |i| (k, i)))
                    .map(|(k, i)| f64::from(g[k][i]) * (f64::from(before[k][i]) - f64::from(params[k][i])))
                    .sum();
                let reported = telemetry(&mut opt, "phi_y");
                assert!((reported - phi_y).abs() <= 1e-12 * phi_y.abs(), "step {t}: φ_y {reported} vs Σ g·(y − y') = {phi_y}");
                if telemetry(&mut opt, "skipped") > skipped {
                    // φ ≤ 0 (the momentum points uphill on this batch): GI's plain step, η kept.
                    assert_eq!((telemetry(&mut opt, "rho"), telemetry(&mut opt, "eta")), (0.0, eta), "step {t}");
                    continue;
                }
                let rho = (f - loss(&views(&params))) / (reported / 2.0);
                assert_eq!(telemetry(&mut opt, "rho"), rho, "step {t}");
                let expected = if rho > 1.1 {
                    1.2 * eta
                } else if rho < 0.9 {
                    0.5 * eta
                } else {
                    eta
                };
                assert_eq!(telemetry(&mut opt, "eta"), expected, "step {t}: ρ = {rho}");
                (grown, shrunk) = (grown || expected > eta, shrunk || expected < eta);
            }
            assert!(grown && shrunk, "η never grew or never shrank: the test does not exercise ρ");
            assert!(loss(&views(&params)) < 0.5 * loss(&views(&start())));
        }

        /// Schedule-free's lr = 0 keeps z and y: φ_y = 0 gives no prediction, so η is kept and
        /// the step counted as skipped (once), the loss callback not called.
        #[test]
        fn no_decrease_of_y_adapts_nothing() {
            let mut opt = over_gi("sgd");
            opt.set_option("lr", None, 0.0).unwrap();
            let mut params = start();
            for t in 0..3 {
                let g = grads(&params, t);
                let mut inputs = StepInputs::new(g.iter().map(Vec::as_slice).collect());
                inputs.loss = Some(loss(&views(&params)));
                let mut callbacks = Callbacks { loss_fn: Some(Box::new(|_: &[&[f32]]| Err("called without a prediction".to_string()))), ..Default::default() };
                let mut ps: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
                opt.step(&mut ps, &inputs, &mut callbacks).unwrap();
                assert_eq!((telemetry(&mut opt, "phi_y"), telemetry(&mut opt, "skipped")), (0.0, (t + 1) as f64));
                assert!(telemetry(&mut opt, "phi") > 0.0);
            }
            assert_eq!(telemetry(&mut opt, "eta"), 1e-3);
            assert_eq!(bits(&params), bits(&start()));
        }

        /// The two-phase protocol (§3.2, §3.3): the step writes y' and waits; the report adapts η
        /// as the callback would. While it waits, a step, a save and a mode switch are refused
        /// (ALR_WRONG_STATE) with nothing changed, and a report without a waiting step too.
        #[test]
        fn a_reported_loss_is_the_callbacks() {
            let (mut called, mut reported) = (over_gi("adam"), over_gi("adam"));
            for opt in [&mut called, &mut reported] {
                // hi = lo = 1: every report moves η, so a lost one shows.
                for (name, value) in [("base_lr", 0.02), ("adapt_every", 2.0), ("hi", 1.0), ("lo", 1.0)] {
                    opt.set_option(name, None, value).unwrap();
                }
            }
            let (mut a, mut b) = (start(), start());
            let refused = |e: crate::Error| assert_eq!(e.status, AlrStatus::AlrWrongState, "{}", e.message);
            refused(reported.report_loss(1.0).unwrap_err());
            for t in 0..12 {
                step(&mut called, &mut a, t, true).unwrap();
                step(&mut reported, &mut b, t, false).unwrap();
                assert_eq!(bits(&a), bits(&b), "step {t}");
                if t % 2 == 0 {
                    let waiting = b.clone();
                    refused(step(&mut reported, &mut b, t, false).unwrap_err());
                    refused(reported.save().unwrap_err());
                    let mut ps: Vec<TensorMut> = b.iter_mut().map(|p| TensorMut::host(p)).collect();
                    refused(reported.set_mode(&mut ps, false).unwrap_err());
                    assert_eq!(bits(&b), bits(&waiting), "step {t}: a refused call moved the parameters");
                    reported.report_loss(loss(&views(&b))).unwrap();
                } else {
                    refused(reported.report_loss(1.0).unwrap_err());
                }
                assert_eq!(called.save().unwrap(), reported.save().unwrap(), "step {t}");
            }
            assert_ne!(telemetry(&mut called, "eta"), 0.02, "η never adapted");
        }

        /// GI runs on the CPU only, so does schedule-free over it (§3.3).
        #[test]
        fn it_is_unsupported_on_cuda() {
            use crate::backend::DeviceKind;
            use crate::registry::check_composition_runs_on;
            let e = check_composition_runs_on(DeviceKind::Cuda, "schedule-free", "gi").unwrap_err();
            assert_eq!(e.status, AlrStatus::AlrUnsupported);
            assert!(e.message.contains("CPU only") && e.message.contains("ALR_DEVICE_CPU"), "{}", e.message);
            assert!(check_composition_runs_on(DeviceKind::Cpu, "schedule-free", "gi").is_ok());
            assert!(check_composition_runs_on(DeviceKind::Cuda, "schedule-free", "prodigy").is_ok());
        }

        /// φ_y is saved after GI's state (the composition's own part of the checkpoint): 0
        /// before the first step, and any other value there is refused.
        #[test]
        fn a_phi_y_before_the_first_step_is_refused() {
            use crate::algorithm::Context;
            use crate::backend::{cpu::Cpu, AnyDevice};
            use crate::checkpoint::{Reader, Writer};
            use crate::options::Options;
            use crate::registry;
            let layout = crate::Layout::new(&LENS, None).unwrap();
            let options = Options::new(registry::specs("schedule-free", "gi", "sgd").unwrap(), layout.n_groups()).unwrap();
            let ctx = Context { layout: &layout, options: &options };
            let build = || registry::build("schedule-free", "gi", "sgd", &layout, &AnyDevice::Cpu(Cpu), false, &None).unwrap();
            let mut w = Writer::to_vec();
            build().save(&mut w).unwrap();
            let mut bytes = w.finish().unwrap().0;
            // The last field, before the 8-byte checksum.
            let at = bytes.len() - 16;
            assert_eq!(bytes[at..at + 8], 0f64.to_le_bytes());
            build().load(&ctx, &mut Reader::fields(&bytes)).unwrap();
            bytes[at..at + 8].copy_from_slice(&0.5f64.to_le_bytes());
            let e = build().load(&ctx, &mut Reader::fields(&bytes)).unwrap_err();
            assert_eq!(e.status, AlrStatus::AlrBadCheckpoint);
            assert!(e.message.contains("φ_y = 0.5 before the first step"), "{}", e.message);
        }

        #[test]
        fn base_base_is_only_gis_base_under_schedule_free() {
            let mut opt = Optimizer::new("schedule-free", &LENS, None).unwrap();
            let e = opt.set_option_str("base_base", "adam").unwrap_err();
            assert!(e.message.contains("set base = 'gi' first"), "{}", e.message);
            opt.set_option_str("base", "gi").unwrap();
            assert_eq!(opt.base_base(), "sgd", "GI's default base");
            assert!(opt.set_option_str("base_base", "gi").is_err());
            assert!(opt.set_option_str("base_base", "sf-sgd").is_err());
            assert_eq!(opt.base_base(), "sgd", "a refused base_base changed it");
            opt.set_option_str("base", "adam").unwrap();
            assert_eq!(opt.base_base(), "");
            let mut gi = Optimizer::new("gi", &LENS, None).unwrap();
            assert!(gi.set_option_str("base_base", "adam").is_err());
        }
    }

    #[test]
    fn lerp_is_torchs() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp(1.0, 3.0, 1.0), 3.0);
        assert_eq!(lerp(2.0, -4.0, -1.0 / 9.0), 2.0 + (-1.0f32 / 9.0) * -6.0);
    }
}

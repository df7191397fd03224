//! TLR, the trainable learning rate (paper 004): SGD with momentum μ and coupled weight decay λ
//! whose learning rate α — one for all tensors, or one per group with `per_group` (the paper's
//! per-layer rates, §3) — is itself trained (docs/algorithms.md §4).
//!
//! α minimises the augmented loss `L_α(α) = L(θ − α G)` (eq. 2) by a bounded Newton step: its
//! slope is `−⟨G_t, G_{t−1}⟩` (eq. 7), its curvature `(‖G_t‖² − ⟨G_t, G_{t−1}⟩)/α` (eq. 8), and
//! with eq. 9's bound on the step one update is
//!
//! ```text
//! ip = G·G_prev,  nn = G·G,  den = max(4 (nn − ip), ip / c),  α ← α (1 + ip / den)
//! ```
//!
//! so α grows by at most (1 + c) and shrinks by at most a quarter per update.
//!
//! * `window = 1` — GD-TLR (Algorithm 2): `G_t = g + λθ`, the step's gradient before momentum;
//!   from step 2 on, α is updated before the parameter step that uses it (lines 5–7).
//! * `window = K > 1` — the SGD extension (§4, eq. 10): `G = (θ_snapshot − θ)/α`, the summed
//!   step of the last K steps; α is updated once per window, from the second window on. A
//!   window closes at the start of the step after its last one, the first moment θ after that
//!   step's displacement is seen — so a step a wrapper (GI) scaled is measured as applied, and
//!   `lr()` is always the α the last step used.
//!
//! The parameter step itself is torch's SGD: `m ← μ m + G` (`m ← G` on the first step),
//! `θ ← θ − α m` (decision 23 of the reference: m holds gradient units, so a new α rescales it).

use std::marker::PhantomData;

use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{abstain, reduced_pass, Device, DotRule, ElemState, ElementRule, KernelRule, Record, TensorMut};
use crate::base::WEIGHT_DECAY;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::{OptionSpec, Structure};

pub fn specs() -> Vec<OptionSpec> {
    vec![
        // The initial α seeds the trained state, so it is fixed once training starts; it may
        // still differ per group (with per_group).
        OptionSpec { structure: Structure::Fixed, ..OptionSpec::positive("lr", 0.01) },
        OptionSpec::positive("c", 0.25),
        // Structural: the momentum buffer exists only when μ > 0.
        OptionSpec::fraction("momentum", 0.0).structural(),
        WEIGHT_DECAY,
        OptionSpec::integer("window", 1.0, 1.0, f64::INFINITY).structural(),
        OptionSpec::flag("per_group", false).structural(),
        OptionSpec::non_negative("alpha_min", 1e-12),
    ]
}

/// Options that belong to α itself: one value for all groups unless α is per group.
const RATE_OPTIONS: [&str; 3] = ["lr", "c", "alpha_min"];

/// The outcome of one α update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaUpdate {
    /// The new α; the old one when the update is degenerate.
    pub alpha: f64,
    /// Eq. 9's denominator `max(4 (nn − ip), ip / c)`.
    pub den: f64,
    /// The update was applied with the (1 + c) growth bound binding (`ip/c ≥ 4 (nn − ip)`).
    pub capped: bool,
}

/// One α update (Algorithm 2 line 5; eqs. 7–9) from `ip = G·G_prev` and `nn = G·G`.
///
/// For `ip > 0`, `den ≥ ip/c` bounds the growth by `1 + c`; for `ip < 0`, `den = 4 (nn + |ip|)`
/// bounds the shrink factor below by 3/4. `den ≤ 0` happens only when `G = 0` (then there is
/// nothing to learn from): that, or anything non-finite, leaves α unchanged. α never drops below
/// `alpha_min`.
pub fn update_alpha(alpha: f64, ip: f64, nn: f64, c: f64, alpha_min: f64) -> AlphaUpdate {
    let newton = 4.0 * (nn - ip);
    let cap = ip / c;
    let den = newton.max(cap);
    let unchanged = AlphaUpdate { alpha, den, capped: false };
    if !(ip.is_finite() && nn.is_finite() && den.is_finite()) || den <= 0.0 {
        return unchanged;
    }
    let next = alpha * (1.0 + ip / den);
    if !next.is_finite() {
        return unchanged;
    }
    AlphaUpdate { alpha: next.max(alpha_min), den, capped: cap >= newton }
}

/// One element's part in the parameter step: nothing, or the momentum buffer.
pub trait Direction: Copy {
    /// Takes `G = g + λθ` (and `keep`: μ, or 0 on the first step) and returns the direction
    /// the step moves along (`m`, or `G` itself).
    fn advance(&mut self, keep: f32, big_g: f32) -> f32;
    /// The direction of the step just advanced.
    fn direction(&self, big_g: f32) -> f32;
}

impl Direction for () {
    #[inline(always)]
    fn advance(&mut self, _keep: f32, big_g: f32) -> f32 {
        big_g
    }
    #[inline(always)]
    fn direction(&self, big_g: f32) -> f32 {
        big_g
    }
}

impl Direction for f32 {
    #[inline(always)]
    fn advance(&mut self, keep: f32, big_g: f32) -> f32 {
        *self = keep * *self + big_g;
        *self
    }
    #[inline(always)]
    fn direction(&self, _big_g: f32) -> f32 {
        *self
    }
}

/// One trained α and what its latest update saw (`#[repr(C)]`: cuda/tlr.cu's RateRecord, which
/// the training kernel updates on a GPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    pub alpha: f64,
    /// `ip` and `den` of the latest update attempt (0 before the first).
    pub ip: f64,
    pub den: f64,
    /// Applied updates where the (1 + c) bound was binding.
    pub cap_hits: u64,
}

impl Record for Rate {}

impl Rate {
    fn fresh(alpha: f64) -> Rate {
        Rate { alpha, ip: 0.0, den: 0.0, cap_hits: 0 }
    }

    fn train(&mut self, ip: f64, nn: f64, c: f64, alpha_min: f64) {
        let update = update_alpha(self.alpha, ip, nn, c, alpha_min);
        self.alpha = update.alpha;
        self.ip = ip;
        self.den = update.den;
        self.cap_hits += u64::from(update.capped);
    }
}

/// A unit's options of the α update (`#[repr(C)]`: the training kernel's coefficients).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateOptions {
    pub c: f64,
    pub alpha_min: f64,
}

impl Record for RateOptions {}

/// One α update per unit from its sums `[ip, nn]` (eq. 9).
pub struct Train;

impl crate::backend::SolveRule for Train {
    type Record = Rate;
    type Coeffs = RateOptions;
    type Params = ();
    const KERNEL: &'static str = "alr_tlr_train";
    // A non-finite ip or nn leaves α unchanged (update_alpha), as a zero G does.
    const REQUIRE_FINITE: bool = false;
    fn solve(_: &(), o: &RateOptions, sums: &[f64; 4], rate: &mut Rate) {
        rate.train(sums[0], sums[1], o.c, o.alpha_min);
    }
}

/// The parameter step's by-value scalars (`#[repr(C)]`, the kernel's argument).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StepCoeffs {
    pub(crate) weight_decay: f32,
    /// μ, or 0 on the first step (torch clones G into the buffer).
    pub(crate) keep: f32,
}

/// The parameter step with the unit's current α.
#[derive(Clone, Copy)]
pub struct Prepared {
    alpha: f32,
    weight_decay: f32,
    keep: f32,
}

/// SGD(+momentum) with the unit's α: `m ← keep·m + G`, `θ ← θ − α m` (or `α G` without a buffer).
pub struct SgdStep<M>(PhantomData<M>);

/// The momentum buffer's element type and the kernel of the step with it.
pub trait Buffer: Direction + ElemState {
    const KERNEL: &'static str;
}

impl Buffer for () {
    const KERNEL: &'static str = "alr_tlr_step_plain";
}

impl Buffer for f32 {
    const KERNEL: &'static str = "alr_tlr_step_momentum";
}

impl<M: Buffer> KernelRule for SgdStep<M> {
    type State = M;
    type Coeffs = StepCoeffs;
    type Record = Rate;
    type Prepared = Prepared;
    const KERNEL: &'static str = M::KERNEL;
    fn prepare(c: &StepCoeffs, rate: &Rate) -> Prepared {
        Prepared { alpha: rate.alpha as f32, weight_decay: c.weight_decay, keep: c.keep }
    }
}

impl<M: Buffer> ElementRule for SgdStep<M> {
    #[inline(always)]
    fn advance(p: &Prepared, g: f32, theta: f32, m: &mut M) -> f32 {
        p.alpha * m.advance(p.keep, g + p.weight_decay * theta)
    }
    #[inline(always)]
    fn delta(p: &Prepared, g: f32, theta: f32, m: &M) -> f32 {
        p.alpha * m.direction(g + p.weight_decay * theta)
    }
}

/// Algorithm 2, lines 5 and 7: `[G_t·G_{t−1}, G_t·G_t]` with `G_t = g + λθ` (the same f32
/// expression as the parameter step's), keeping `G_t`.
pub struct StepDots;

impl KernelRule for StepDots {
    type State = f32;
    /// λ
    type Coeffs = f32;
    type Record = ();
    type Prepared = f32;
    const KERNEL: &'static str = "alr_tlr_step_dots";
    fn prepare(lambda: &f32, _: &()) -> f32 {
        *lambda
    }
}

impl DotRule for StepDots {
    #[inline(always)]
    fn dot(lambda: &f32, g: f32, theta: f32, previous: &mut f32) -> [f64; 2] {
        let now = g + lambda * theta;
        let before = std::mem::replace(previous, now);
        [f64::from(now) * f64::from(before), f64::from(now) * f64::from(now)]
    }
}

/// A window's element state: θ at the start of the open window, and `G` of the last closed one.
pub type WindowElem = [f32; 2];

/// Eq. 10 when a window closes: `G = (θ_snapshot − θ)/α` (α was constant over the window),
/// `[G·G_prev, G·G]`, then `G_prev ← G` and `θ_snapshot ← θ`.
pub struct WindowDots;

impl KernelRule for WindowDots {
    type State = WindowElem;
    type Coeffs = ();
    type Record = Rate;
    type Prepared = f64;
    const KERNEL: &'static str = "alr_tlr_window_dots";
    fn prepare(_: &(), rate: &Rate) -> f64 {
        rate.alpha
    }
}

impl DotRule for WindowDots {
    #[inline(always)]
    fn dot(alpha: &f64, _g: f32, theta: f32, st: &mut WindowElem) -> [f64; 2] {
        let now = (f64::from(st[0]) - f64::from(theta)) / alpha;
        let before = f64::from(st[1]);
        st[1] = now as f32;
        st[0] = theta;
        [now * before, now * now]
    }
}

/// The first window opens: `θ_snapshot ← θ`.
pub struct OpenWindow;

impl KernelRule for OpenWindow {
    type State = WindowElem;
    type Coeffs = ();
    type Record = ();
    type Prepared = ();
    const KERNEL: &'static str = "alr_tlr_open_window";
    fn prepare(_: &(), _: &()) {}
}

impl DotRule for OpenWindow {
    #[inline(always)]
    fn dot(_: &(), _g: f32, theta: f32, st: &mut WindowElem) -> [f64; 2] {
        st[0] = theta;
        [0.0, 0.0]
    }
}

/// What α is trained from, per tensor and element.
enum Memory<D: Device> {
    /// `window = 1`: `G_{t−1}` (Algorithm 2, line 7).
    Step(Vec<D::State<f32>>),
    /// `window = K > 1` (eq. 10): `[θ_snapshot, G_prev]`.
    Window(Vec<D::State<WindowElem>>),
}

/// The base's momentum buffer `m`, per tensor and element, allocated only when μ > 0.
enum Buffers<D: Device> {
    Plain(Vec<D::State<()>>),
    Momentum(Vec<D::State<f32>>),
}

/// Everything TLR learns; built at the first step, once the structural options are fixed.
struct State<D: Device> {
    /// One α per group, or one for all. Unit u's options are those of group u (group 0 when
    /// global, where `check` keeps them equal across groups).
    per_group: bool,
    window: u64,
    /// Steps begun (t of Algorithm 2, counting from 1).
    steps: u64,
    rates: D::Records<Rate>,
    rate_options: D::Records<RateOptions>,
    memory: Memory<D>,
    buffers: Buffers<D>,
    sums: D::Sums,
    no_record: D::Records<()>,
}

fn units(ctx: &Context) -> usize {
    if ctx.options.flag(0, "per_group") {
        ctx.layout.n_groups()
    } else {
        1
    }
}

impl<D: Device> State<D> {
    fn new(device: &D, ctx: &Context) -> Result<Self> {
        let o = ctx.options;
        let lens = &ctx.layout.lens;
        let per_group = o.flag(0, "per_group");
        let n_units = units(ctx);
        let window = o.get(0, "window") as u64;
        let owners = if per_group { ctx.layout.members.clone() } else { vec![(0..lens.len()).collect()] };
        Ok(State {
            per_group,
            window,
            steps: 0,
            rates: device.records(&(0..n_units).map(|u| Rate::fresh(o.get(u, "lr"))).collect::<Vec<_>>())?,
            rate_options: device.records(&rate_options(ctx))?,
            memory: if window == 1 { Memory::Step(device.alloc_per_tensor(lens)?) } else { Memory::Window(device.alloc_per_tensor(lens)?) },
            buffers: if o.get(0, "momentum") > 0.0 {
                Buffers::Momentum(device.alloc_per_tensor(lens)?)
            } else {
                Buffers::Plain(device.alloc_per_tensor(lens)?)
            },
            sums: device.sums(lens, &owners)?,
            no_record: device.records(&[()])?,
        })
    }

    fn unit_of_group(&self, group: usize) -> usize {
        if self.per_group {
            group
        } else {
            0
        }
    }

    /// The parameter step's scalars of every tensor, and the unit whose α it uses.
    fn coeffs(&self, ctx: &Context) -> Vec<(StepCoeffs, usize)> {
        let o = ctx.options;
        let keep = if self.steps == 1 { 0.0 } else { o.get(0, "momentum") as f32 };
        let step = |&g: &usize| (StepCoeffs { weight_decay: o.get(g, "weight_decay") as f32, keep }, self.unit_of_group(g));
        ctx.layout.groups.iter().map(step).collect()
    }

    /// Whether step `t` trains α (Algorithm 2 from the second step; a window from the second
    /// closed window on: window j closes at step jK + 1).
    fn trains(&self, t: u64) -> bool {
        match &self.memory {
            Memory::Step(_) => t > 1,
            Memory::Window(_) => t > self.window.saturating_mul(2) && (t - 1) % self.window == 0,
        }
    }

    /// Everything of a step before the parameter step: counts it, and trains α where this
    /// step does (over shards: with its dots summed over the processes, where a failure changes
    /// nothing).
    fn begin_step(&mut self, device: &D, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, shards: &Shards) -> Result<()> {
        let t = self.steps + 1;
        let (layout, grads, train) = (ctx.layout, &inputs.grads, self.trains(t));
        let (window, per_group) = (self.window, self.per_group);
        let (memory, no_record, rates) = (&mut self.memory, &self.no_record, &self.rates);
        let comm = if train { shards.as_deref() } else { None };
        reduced_pass::<Train, D>(device, &mut self.sums, comm, true, |sums, commit| {
            match memory {
                Memory::Step(previous) => {
                    // Algorithm 2: G_t·G_{t−1} trains α before the step (line 5); G_t is kept (line 7).
                    for (tensor, prev) in previous.iter_mut().enumerate() {
                        let lambda = ctx.options.get(layout.groups[tensor], "weight_decay") as f32;
                        device.dots::<StepDots>(&lambda, no_record, 0, &params[tensor].view(), &grads[tensor], prev, sums, tensor, commit)?;
                    }
                }
                Memory::Window(elems) if t == 1 => {
                    for (tensor, st) in elems.iter_mut().enumerate() {
                        device.dots::<OpenWindow>(&(), no_record, 0, &params[tensor].view(), &grads[tensor], st, sums, tensor, commit)?;
                    }
                }
                Memory::Window(elems) if (t - 1) % window == 0 => {
                    // The window that ended with the last step closes now, when θ after its last
                    // displacement is first seen: eq. 10's G = (θ_snapshot − θ)/α is then the
                    // displacement that really happened, also when a wrapper (GI) scaled it.
                    for (tensor, st) in elems.iter_mut().enumerate() {
                        let unit = if per_group { layout.groups[tensor] } else { 0 };
                        device.dots::<WindowDots>(&(), rates, unit, &params[tensor].view(), &grads[tensor], st, sums, tensor, commit)?;
                    }
                }
                Memory::Window(_) => {}
            }
            Ok(())
        })?;
        if train {
            device.solve::<Train>(&(), &self.rate_options, &mut self.rates, &mut self.sums)?;
        }
        self.steps = t;
        Ok(())
    }
}

/// Every unit's α-update options (unit u's are group u's).
fn rate_options(ctx: &Context) -> Vec<RateOptions> {
    (0..units(ctx)).map(|u| RateOptions { c: ctx.options.get(u, "c"), alpha_min: ctx.options.get(u, "alpha_min") }).collect()
}

/// Built without options (see `registry::build`): the state takes its shape at the first step.
pub struct Tlr<D: Device> {
    device: D,
    state: Option<State<D>>,
    /// Sharded: the communicator that adds the dots α is trained from over the processes.
    shards: Shards,
}

impl<D: Device> Tlr<D> {
    pub fn new(device: &D, shards: Shards) -> Result<Self> {
        let mut kernels = vec![<SgdStep<()> as KernelRule>::KERNEL, <SgdStep<f32> as KernelRule>::KERNEL, <Train as crate::backend::SolveRule>::KERNEL];
        kernels.extend([StepDots::KERNEL, WindowDots::KERNEL, OpenWindow::KERNEL]);
        device.require(&kernels)?;
        Ok(Tlr { device: device.clone(), state: None, shards })
    }

    /// The group's rate, or what it will start from before the first step.
    fn rate(&self, ctx: &Context, group: usize) -> Result<Rate> {
        Ok(match &self.state {
            Some(s) => self.device.read_records(&s.rates)?[s.unit_of_group(group)],
            None => Rate::fresh(ctx.options.get(group, "lr")),
        })
    }

    /// The state, built at the first step.
    fn state(&mut self, ctx: &Context) -> Result<&mut State<D>> {
        if self.state.is_none() {
            self.state = Some(State::new(&self.device, ctx)?);
        }
        Ok(self.state.as_mut().expect("just built"))
    }

    /// One step: α's training, then the parameter pass (scaled by a wrapper's `scale` when given).
    fn take_step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: Option<f32>) -> Result<()> {
        let (device, shards) = (self.device.clone(), self.shards.clone());
        let s = self.state(ctx)?;
        s.begin_step(&device, ctx, params, inputs, &shards)?;
        let coeffs = s.coeffs(ctx);
        match &mut s.buffers {
            Buffers::Plain(b) => step_pass(&device, &s.rates, &coeffs, b, params, inputs, scale),
            Buffers::Momentum(b) => step_pass(&device, &s.rates, &coeffs, b, params, inputs, scale),
        }
    }
}

/// The fused parameter step of every tensor.
fn step_pass<D: Device, M: Buffer>(
    device: &D,
    rates: &D::Records<Rate>,
    coeffs: &[(StepCoeffs, usize)],
    buffers: &mut [D::State<M>],
    params: &mut [TensorMut],
    inputs: &StepInputs,
    scale: Option<f32>,
) -> Result<()> {
    for (t, (buffer, (c, unit))) in buffers.iter_mut().zip(coeffs).enumerate() {
        device.update_by::<SgdStep<M>>(c, rates, *unit, &mut params[t], &inputs.grads[t], buffer, scale)?;
    }
    Ok(())
}

/// GI's proposal: the buffers advanced, θ left alone, `Σ g·s` returned.
fn propose_pass<D: Device, M: Buffer>(
    device: &D,
    rates: &D::Records<Rate>,
    coeffs: &[(StepCoeffs, usize)],
    buffers: &mut [D::State<M>],
    params: &[TensorMut],
    inputs: &StepInputs,
) -> Result<f64> {
    let mut g_dot_s = 0.0;
    for (t, (buffer, (c, unit))) in buffers.iter_mut().zip(coeffs).enumerate() {
        g_dot_s += device.advance_dot::<SgdStep<M>>(c, rates, *unit, &params[t], &inputs.grads[t], buffer)?;
    }
    Ok(g_dot_s)
}

/// `θ ← θ − scale·α·direction` from the advanced buffers (GI's second pass).
fn apply_pass<D: Device, M: Buffer>(
    device: &D,
    rates: &D::Records<Rate>,
    coeffs: &[(StepCoeffs, usize)],
    buffers: &[D::State<M>],
    params: &mut [TensorMut],
    inputs: &StepInputs,
    scale: f32,
) -> Result<()> {
    for (t, (buffer, (c, unit))) in buffers.iter().zip(coeffs).enumerate() {
        device.apply_scaled::<SgdStep<M>>(c, rates, *unit, &mut params[t], &inputs.grads[t], buffer, scale)?;
    }
    Ok(())
}

impl<D: Device> Algorithm for Tlr<D> {
    fn name(&self) -> &'static str {
        "tlr"
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts::default()
    }

    fn check(&self, ctx: &Context, _inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        // Which steps train α, and the first step's momentum, are decided on the host.
        crate::algorithm::refuse_capture(&self.device, "tlr", "its schedule (which steps train α)")?;
        let o = ctx.options;
        if o.flag(0, "per_group") {
            return Ok(());
        }
        for name in RATE_OPTIONS {
            let first = o.get(0, name);
            if let Some(g) = (1..o.n_groups()).find(|&g| o.get(g, name) != first) {
                return Err(Error::invalid(format!(
                    "option '{name}' is {} for group {g} but {first} for group 0: with per_group = false one α serves every group, so set it without a group (or set per_group = true)",
                    o.get(g, name)
                )));
            }
        }
        Ok(())
    }

    /// A step that trains α reduces its dots (one call); the others reduce nothing.
    fn abstain(&mut self, _ctx: &Context) -> bool {
        // The state is built at the first step, which trains nothing.
        let Some(s) = &self.state else { return false };
        s.trains(s.steps + 1) && abstain::<Train, D>(&self.device, &s.sums, self.shards.as_deref())
    }

    fn options_changed(&mut self, ctx: &Context) -> Result<()> {
        if let Some(s) = &mut self.state {
            self.device.write_records(&mut s.rate_options, &rate_options(ctx))?;
        }
        Ok(())
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        let (device, shards) = (self.device.clone(), self.shards.clone());
        let s = self.state(ctx)?;
        s.begin_step(&device, ctx, params, inputs, &shards)?;
        let coeffs = s.coeffs(ctx);
        match &mut s.buffers {
            Buffers::Plain(b) => propose_pass(&device, &s.rates, &coeffs, b, params, inputs),
            Buffers::Momentum(b) => propose_pass(&device, &s.rates, &coeffs, b, params, inputs),
        }
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        let s = self.state.as_ref().expect("apply follows propose, which builds the state");
        let coeffs = s.coeffs(ctx);
        match &s.buffers {
            Buffers::Plain(b) => apply_pass(&self.device, &s.rates, &coeffs, b, params, inputs, scale),
            Buffers::Momentum(b) => apply_pass(&self.device, &s.rates, &coeffs, b, params, inputs, scale),
        }
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        self.take_step(ctx, params, inputs, None)
    }

    fn step_scaled(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks, scale: f32) -> Result<()> {
        self.take_step(ctx, params, inputs, Some(scale))
    }

    fn discard_steps(&mut self, n: u64) {
        if let Some(s) = &mut self.state {
            s.steps = s.steps.saturating_sub(n);
        }
    }

    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(self.rate(ctx, group)?.alpha)
    }

    fn momentum(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(ctx.options.get(group, "momentum"))
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        let rate = self.rate(ctx, group)?;
        Ok(vec![("alpha", rate.alpha), ("ip", rate.ip), ("den", rate.den), ("cap_hits", rate.cap_hits as f64)])
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
        w.u64(s.steps);
        let rates = d.read_records(&s.rates)?;
        w.f64s(&rates.iter().map(|r| r.alpha).collect::<Vec<_>>());
        w.f64s(&rates.iter().map(|r| r.ip).collect::<Vec<_>>());
        w.f64s(&rates.iter().map(|r| r.den).collect::<Vec<_>>());
        w.counts(&rates.iter().map(|r| r.cap_hits).collect::<Vec<_>>());
        match &s.memory {
            Memory::Step(previous) => {
                for b in previous {
                    d.with_state(b, |b| w.elem_states(b))?;
                }
            }
            Memory::Window(elems) => {
                // Snapshots of every tensor, then every tensor's previous G.
                for slot in 0..2 {
                    for b in elems {
                        d.with_state(b, |b| w.elem_column(b, slot))?;
                    }
                }
            }
        }
        if let Buffers::Momentum(m) = &s.buffers {
            for b in m {
                d.with_state(b, |b| w.elem_states(b))?;
            }
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let steps = r.count("TLR step count")?;
        if steps == 0 {
            self.state = None;
            return Ok(());
        }
        let mut s = State::new(&self.device, ctx)?;
        s.steps = steps;
        let n_units = units(ctx);
        let alpha = r.f64s_exact(n_units, "TLR α per unit")?;
        let ip = r.f64s_exact(n_units, "TLR ip per unit")?;
        let den = r.f64s_exact(n_units, "TLR den per unit")?;
        let cap_hits = r.counts_exact(n_units, "TLR cap hits per unit")?;
        // α only ever takes values `α (1 + ip/den)` with a positive factor, floored at alpha_min.
        crate::checkpoint::check_values(&alpha, "TLR α", |a| a.is_finite() && a > 0.0, "α is finite and > 0")?;
        if let Some(u) = cap_hits.iter().position(|&c| c > steps) {
            return Err(Error::checkpoint(format!("checkpoint TLR unit {u} hit its cap {} times in {steps} steps (corrupted?)", cap_hits[u])));
        }
        let rates: Vec<Rate> = (0..n_units).map(|u| Rate { alpha: alpha[u], ip: ip[u], den: den[u], cap_hits: cap_hits[u] }).collect();
        let lens = &ctx.layout.lens;
        let mut read = |what: &str| -> Result<Vec<Vec<f32>>> {
            lens.iter()
                .enumerate()
                .map(|(t, &len)| {
                    let what = format!("TLR {what} of tensor {t}");
                    let b = r.f32s_exact(len, &what)?;
                    crate::checkpoint::check_values(&b, &what, f32::is_finite, "it is finite")?;
                    Ok(b)
                })
                .collect()
        };
        let d = &self.device;
        match &mut s.memory {
            Memory::Step(previous) => {
                for (b, v) in previous.iter_mut().zip(read("previous G")?) {
                    d.write_state(b, &v)?;
                }
            }
            Memory::Window(elems) => {
                let (snapshot, previous) = (read("window snapshot")?, read("previous window G")?);
                for ((b, snap), prev) in elems.iter_mut().zip(snapshot).zip(previous) {
                    let joined: Vec<WindowElem> = snap.into_iter().zip(prev).map(|(a, b)| [a, b]).collect();
                    d.write_state(b, &joined)?;
                }
            }
        }
        if let Buffers::Momentum(m) = &mut s.buffers {
            for (b, v) in m.iter_mut().zip(read("momentum buffer")?) {
                d.write_state(b, &v)?;
            }
        }
        d.write_records(&mut s.rates, &rates)?;
        self.state = Some(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::optimizer::Layout;
    use crate::options::Options;

    /// Schedule-free's scaled step of an automatic base gives the bits of GI's two passes.
    #[test]
    fn update_scaled_is_advance_dot_then_apply_scaled() {
        use crate::backend::{Device, Tensor};
        let cpu = Cpu;
        let c = StepCoeffs { weight_decay: 0.01, keep: 0.9 };
        let rates = cpu.records(&[Rate { alpha: 0.37, ..Rate::default() }]).unwrap();
        let grad: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        let start: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).cos()).collect();
        let (mut two_passes, mut one_pass) = (start.clone(), start.clone());
        let (mut m_two, mut m_one) = (cpu.alloc::<f32>(37).unwrap(), cpu.alloc::<f32>(37).unwrap());
        let g = Tensor::host(&grad);
        for _ in 0..3 {
            cpu.advance_dot::<SgdStep<f32>>(&c, &rates, 0, &TensorMut::host(&mut two_passes), &g, &mut m_two).unwrap();
            cpu.apply_scaled::<SgdStep<f32>>(&c, &rates, 0, &mut TensorMut::host(&mut two_passes), &g, &m_two, 0.3).unwrap();
            cpu.update_scaled::<SgdStep<f32>>(&c, &rates, 0, &mut TensorMut::host(&mut one_pass), &g, &mut m_one, 0.3).unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one_pass), bits(&two_passes));
        assert_eq!(bits(&m_one), bits(&m_two));
        assert_ne!(bits(&one_pass), bits(&start));
    }

    fn views(params: &mut [Vec<f32>]) -> Vec<TensorMut<'_>> {
        params.iter_mut().map(|p| TensorMut::host(p)).collect()
    }

    const C: f64 = 0.25;

    #[test]
    fn growth_is_bounded_by_one_plus_c() {
        for &(ip, nn) in &[(1.0, 1.0), (1.0, 1.1), (0.5, 100.0), (1e-9, 1.0), (3.0, 2.0), (1e6, 1e6)] {
            let u = update_alpha(1.0, ip, nn, C, 0.0);
            assert!(u.alpha > 1.0 && u.alpha <= 1.0 + C, "ip {ip} nn {nn}: {u:?}");
        }
        // Identical consecutive gradients: no curvature seen, the cap decides.
        let u = update_alpha(2.0, 4.0, 4.0, C, 0.0);
        assert_eq!(u, AlphaUpdate { alpha: 2.0 * (1.0 + C), den: 4.0 / C, capped: true });
        // Far from the cap: the Newton step α (1 + ip / (4 (nn − ip))).
        let u = update_alpha(1.0, 1.0, 101.0, C, 0.0);
        assert_eq!(u, AlphaUpdate { alpha: 1.0 + 1.0 / 400.0, den: 400.0, capped: false });
    }

    #[test]
    fn shrink_is_bounded_by_three_quarters() {
        for &(ip, nn) in &[(-1.0, 1.0), (-1.0, 0.0), (-1e6, 1.0), (-1e-9, 1.0), (-2.0, 1.0)] {
            let u = update_alpha(1.0, ip, nn, C, 0.0);
            assert!(u.alpha < 1.0 && u.alpha >= 0.75, "ip {ip} nn {nn}: {u:?}");
            assert!(!u.capped);
        }
        // The bound is reached only as nn / |ip| → 0.
        assert_eq!(update_alpha(1.0, -1.0, 0.0, C, 0.0).alpha, 0.75);
    }

    #[test]
    fn orthogonal_gradients_keep_alpha() {
        assert_eq!(update_alpha(0.3, 0.0, 2.0, C, 0.0).alpha, 0.3);
    }

    #[test]
    fn degenerate_inputs_keep_alpha() {
        // G = 0: den = 0.
        let u = update_alpha(0.3, 0.0, 0.0, C, 0.0);
        assert_eq!((u.alpha, u.den, u.capped), (0.3, 0.0, false));
        for &(ip, nn) in &[(f64::NAN, 1.0), (1.0, f64::NAN), (f64::INFINITY, 1.0), (1.0, f64::INFINITY), (-1.0, f64::INFINITY)] {
            let u = update_alpha(0.3, ip, nn, C, 0.0);
            assert_eq!(u.alpha, 0.3, "ip {ip} nn {nn}");
            assert!(!u.capped);
        }
        // A finite update that overflows α.
        assert_eq!(update_alpha(f64::MAX, 1.0, 1.0, C, 0.0).alpha, f64::MAX);
    }

    #[test]
    fn alpha_min_is_a_floor() {
        assert_eq!(update_alpha(1e-12, -1.0, 0.0, C, 1e-12).alpha, 1e-12);
        assert_eq!(update_alpha(1.0, -1.0, 0.0, C, 0.9).alpha, 0.9);
    }

    fn options(window: f64, momentum: f64) -> (Layout, Options) {
        let layout = Layout::new(&[5, 11], Some(&[0, 0])).unwrap();
        let mut options = Options::new(specs(), layout.n_groups()).unwrap();
        options.set("tlr", "window", None, window).unwrap();
        options.set("tlr", "momentum", None, momentum).unwrap();
        options.set("tlr", "weight_decay", None, 0.01).unwrap();
        (layout, options)
    }

    fn grads(step: usize) -> Vec<Vec<f32>> {
        [5, 11].iter().map(|&n| (0..n).map(|i| ((i * 7 + step * 3) as f32 * 0.61).sin() + 0.3).collect()).collect()
    }

    #[test]
    fn propose_then_apply_is_the_fused_step() {
        for (window, momentum) in [(1.0, 0.0), (1.0, 0.8), (3.0, 0.0), (3.0, 0.8)] {
            let (layout, options) = options(window, momentum);
            let ctx = Context { layout: &layout, options: &options };
            let (mut fused, mut split) = (Tlr::new(&Cpu, None).unwrap(), Tlr::new(&Cpu, None).unwrap());
            let mut p_fused: Vec<Vec<f32>> = vec![vec![0.5; 5], vec![-0.25; 11]];
            let mut p_split = p_fused.clone();
            for step in 0..20 {
                let g = grads(step);
                let inputs = StepInputs::new(g.iter().map(|x| &x[..]).collect());
                fused.step(&ctx, &mut views(&mut p_fused), &inputs, &mut Callbacks::default()).unwrap();
                let mut split_views = views(&mut p_split);
                split.propose(&ctx, &split_views, &inputs, &mut Callbacks::default()).unwrap();
                split.apply(&ctx, &mut split_views, &inputs, 1.0).unwrap();
            }
            assert_eq!(p_fused, p_split, "window {window} momentum {momentum}");
            assert_eq!(fused.lr(&ctx, 0).unwrap(), split.lr(&ctx, 0).unwrap());
            assert!(fused.lr(&ctx, 0).unwrap() != 0.01, "α never trained");
        }
    }

    #[test]
    fn a_window_measures_the_displacement_actually_applied() {
        // A wrapper applying half of every proposed step: the window's G must be what moved.
        let (layout, options) = options(3.0, 0.0);
        let ctx = Context { layout: &layout, options: &options };
        let mut tlr = Tlr::new(&Cpu, None).unwrap();
        let mut params: Vec<Vec<f32>> = vec![vec![0.5; 5], vec![-0.25; 11]];
        let start = params.clone();
        for step in 0..4 {
            let g = grads(step);
            let inputs = StepInputs::new(g.iter().map(|x| &x[..]).collect());
            let mut step_views = views(&mut params);
            tlr.propose(&ctx, &step_views, &inputs, &mut Callbacks::default()).unwrap();
            if step < 3 {
                tlr.apply(&ctx, &mut step_views, &inputs, 0.5).unwrap();
            }
        }
        // Step 4 closed the first window (steps 1–3) from the parameters it saw.
        let Some(State { memory: Memory::Window(elems), rates, .. }) = &tlr.state else { panic!("window state") };
        for t in 0..2 {
            for i in 0..params[t].len() {
                assert_eq!(elems[t][i][0], params[t][i], "the snapshot is θ after the window");
                let moved = ((f64::from(start[t][i]) - f64::from(params[t][i])) / rates[0].alpha) as f32;
                assert_eq!(elems[t][i][1], moved);
            }
        }
    }
}

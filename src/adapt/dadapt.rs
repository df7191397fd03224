//! D-Adaptation for Adam (Defazio & Mishchenko 2023) as dadaptation 3.2's `DAdaptAdam`
//! implements it (docs/algorithms.md §6: the reference *is* the specification).
//!
//! One step, with `d`, `k` and the options the reference reads from param group 0 global
//! (`betas`, `decouple`, `use_bias_correction`, `growth_rate`; `d0`), `lr` the largest group lr
//! (every group's lr is that or 0), `√β2` formed as `β2 ** 0.5`:
//!
//! ```text
//! dlr = d · lr · bias       (bias = √(1 − β2^(k+1)) / (1 − β1^(k+1)), or 1)
//! per group with lr > 0, per element (g ← g + λθ first when weight decay is coupled):
//!     num += dlr · g · s / (√v + ε)         (s and v *before* this step's update)
//!     m ← β1 m + dlr(1−β1) g
//!     v ← β2 v + (1−β2) g²
//!     s ← √β2 s + dlr(1−√β2) g
//!     Σ|s| += |s|
//! numerator ← √β2 · numerator + (1−√β2) · num
//! Σ|s| = 0: return (no move; k, d and the numerator stay; the moments did absorb g)
//! d_hat = numerator / ((1−√β2) Σ|s|);  d ← max(d, min(d_hat, d · growth_rate))
//! every group: θ ← θ − dlr λ θ (decoupled decay, old dlr);  θ ← θ − m / (√v + ε)
//! ```
//!
//! Pass 1 (`Absorb`, a dot pass) advances the moments and reduces `[Σ g s/(√v+ε), Σ |s|]`, the
//! solve updates the one `#[repr(C)]` record, pass 2 (`Step`) reads from it; nothing is read
//! back to the host. (The step itself does not depend on this step's d, only on whether
//! Σ|s| = 0; a fused single pass would need a device primitive that updates and reduces at once.)

use crate::adapt::prodigy::{bias_correction, check_group_lrs, displacement, fma32, global_sums, growth_rate, max_lr, py_max, py_min, GROWTH_RATE};
use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{abstain, reduced_pass, Device, DotRule, ElemState, ElementRule, KernelRule, Record, SolveRule, TensorMut};
use crate::base::WEIGHT_DECAY;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::{OptionSpec, Options};

pub fn specs() -> Vec<OptionSpec> {
    vec![
        // Per group, but every group's lr must be the largest one or 0 (the reference's rule).
        OptionSpec::non_negative("lr", 1.0),
        OptionSpec::fraction("beta1", 0.9).global(),
        OptionSpec::fraction("beta2", 0.999).global(),
        OptionSpec::positive("eps", 1e-8),
        WEIGHT_DECAY,
        OptionSpec::flag("decouple", false).global(),
        OptionSpec::flag("use_bias_correction", false).global(),
        // d starts at d0: fixed once training starts.
        OptionSpec::positive("d0", 1e-6).structural(),
        GROWTH_RATE,
    ]
}

/// The global options, by value to every launch (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Global {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// `β2 ** 0.5`
    pub sqrt_beta2: f64,
    pub growth_rate: f64,
    pub bias_correction: u32,
    pub pad: u32,
}

impl Global {
    pub fn of(o: &Options) -> Self {
        let beta2 = o.get(0, "beta2");
        Global {
            lr: max_lr(o),
            beta1: o.get(0, "beta1"),
            beta2,
            sqrt_beta2: beta2.powf(0.5),
            growth_rate: growth_rate(o),
            bias_correction: u32::from(o.flag(0, "use_bias_correction")),
            pad: 0,
        }
    }

    pub fn dlr(&self, r: &Estimate) -> f64 {
        r.d * self.lr * bias_correction(self.bias_correction != 0, self.beta1, self.beta2, r.k)
    }
}

/// The global scalars (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub d: f64,
    /// `numerator_weighted`
    pub numerator: f64,
    /// The last `Σ |s|` (`sk_l1`).
    pub sk_l1: f64,
    pub d_hat: f64,
    /// dlr of the last step that moved (0 before).
    pub dlr: f64,
    pub begun: u64,
    pub k: u64,
    pub skips: u64,
    pub moved: u32,
    pub pad: u32,
}

impl Record for Estimate {}

/// One element: `[s, m, v]` (the reference's buffers).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Elem {
    pub s: f32,
    pub m: f32,
    pub v: f32,
}

impl ElemState for Elem {
    const FLOATS: usize = 3;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(&[self.s, self.m, self.v]);
    }
    fn read(x: &[f32]) -> Self {
        Elem { s: x[0], m: x[1], v: x[2] }
    }
}

fn possible(e: &Elem) -> bool {
    e.s.is_finite() && e.m.is_finite() && crate::checkpoint::second_moment(e.v)
}

/// Pass 1's by-value scalars of one group (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbsorbCoeffs {
    pub global: Global,
    pub eps: f64,
    /// λ where weight decay is coupled, else 0.
    pub coupled_decay: f64,
    pub active: u32,
    pub pad: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct AbsorbPrepared {
    lambda: f32,
    eps: f32,
    beta1: f32,
    coef_m: f32,
    beta2: f32,
    coef_v: f32,
    sqrt_beta2: f32,
    coef_s: f32,
    active: bool,
}

pub struct Absorb;

impl KernelRule for Absorb {
    type State = Elem;
    type Coeffs = AbsorbCoeffs;
    type Record = Estimate;
    type Prepared = AbsorbPrepared;
    const KERNEL: &'static str = "alr_dadapt_adam_absorb";
    fn prepare(c: &AbsorbCoeffs, r: &Estimate) -> AbsorbPrepared {
        let g = &c.global;
        let dlr = g.dlr(r);
        AbsorbPrepared {
            lambda: c.coupled_decay as f32,
            eps: c.eps as f32,
            beta1: g.beta1 as f32,
            // The reference's `r * dlr * (1 - beta1)` with layer_scale r = 1.
            coef_m: (dlr * (1.0 - g.beta1)) as f32,
            beta2: g.beta2 as f32,
            coef_v: (1.0 - g.beta2) as f32,
            sqrt_beta2: g.sqrt_beta2 as f32,
            coef_s: (dlr * (1.0 - g.sqrt_beta2)) as f32,
            active: c.active != 0,
        }
    }
}

impl DotRule for Absorb {
    #[inline(always)]
    fn dot(p: &AbsorbPrepared, g: f32, theta: f32, e: &mut Elem) -> [f64; 2] {
        if !p.active {
            return [0.0, 0.0];
        }
        // torch's fused `add_(x, alpha=…)` and `addcmul_` (see prodigy::fma32).
        let g = if p.lambda != 0.0 { fma32(theta, p.lambda, g) } else { g };
        let num = f64::from(g) * f64::from(e.s / (e.v.sqrt() + p.eps));
        e.m = fma32(g, p.coef_m, p.beta1 * e.m);
        e.v = fma32(p.coef_v * g, g, p.beta2 * e.v);
        e.s = fma32(g, p.coef_s, p.sqrt_beta2 * e.s);
        [num, f64::from(e.s.abs())]
    }
}

pub struct Solve;

impl SolveRule for Solve {
    type Record = Estimate;
    type Coeffs = ();
    type Params = Global;
    const KERNEL: &'static str = "alr_dadapt_adam_solve";
    const REQUIRE_FINITE: bool = false;
    fn solve(g: &Global, _: &(), sums: &[f64; 4], r: &mut Estimate) {
        let (d, dlr) = (r.d, g.dlr(r));
        let numerator = g.sqrt_beta2 * r.numerator + (1.0 - g.sqrt_beta2) * (dlr * sums[0]);
        let sk_l1 = sums[1];
        r.begun += 1;
        if sk_l1 == 0.0 {
            r.moved = 0;
            r.skips += 1;
            return;
        }
        let (mut d_new, mut d_hat) = (d, d);
        if g.lr > 0.0 {
            d_hat = numerator / ((1.0 - g.sqrt_beta2) * sk_l1);
            d_new = py_max(d, py_min(d_hat, d * g.growth_rate));
        }
        *r = Estimate { d: d_new, numerator, sk_l1, d_hat, dlr, k: r.k + 1, moved: 1, ..*r };
    }
}

/// Pass 2's by-value scalars of one group (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StepCoeffs {
    pub eps: f64,
    pub decoupled_decay: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct StepPrepared {
    moved: bool,
    eps: f32,
    decay: f32,
}

/// Pass 2: `θ ← θ − dlr λ θ`, then `θ ← θ − m / (√v + ε)` (the reference's two roundings).
pub struct Step;

impl KernelRule for Step {
    type State = Elem;
    type Coeffs = StepCoeffs;
    type Record = Estimate;
    type Prepared = StepPrepared;
    const KERNEL: &'static str = "alr_dadapt_adam_step";
    fn prepare(c: &StepCoeffs, r: &Estimate) -> StepPrepared {
        StepPrepared { moved: r.moved != 0, eps: c.eps as f32, decay: (c.decoupled_decay * r.dlr) as f32 }
    }
}

impl ElementRule for Step {
    /// The reference's new θ, as the displacement that lands on it.
    #[inline(always)]
    fn advance(p: &StepPrepared, _g: f32, theta: f32, e: &mut Elem) -> f32 {
        if !p.moved {
            return 0.0;
        }
        // `p.add_(p, alpha=-decay·dlr)`, then `p.addcdiv_(m, denom, value=-1)`.
        let decayed = if p.decay != 0.0 { fma32(theta, -p.decay, theta) } else { theta };
        displacement(theta, decayed - e.m / (e.v.sqrt() + p.eps))
    }
    /// The step itself, `dlr λ θ + m / (√v + ε)` (see prodigy's `Step::delta`).
    #[inline(always)]
    fn delta(p: &StepPrepared, _g: f32, theta: f32, e: &Elem) -> f32 {
        if !p.moved {
            return 0.0;
        }
        let step = e.m / (e.v.sqrt() + p.eps);
        if p.decay != 0.0 {
            fma32(theta, p.decay, step)
        } else {
            step
        }
    }
}

struct State<D: Device> {
    estimate: D::Records<Estimate>,
    no_coeffs: D::Records<()>,
    sums: D::Sums,
    elems: Vec<D::State<Elem>>,
}

pub struct DAdaptAdam<D: Device> {
    device: D,
    state: Option<State<D>>,
    /// Sharded: the communicator that adds pass 1's per-step sums over the processes.
    shards: Shards,
}

fn fresh(o: &Options) -> Estimate {
    Estimate { d: o.get(0, "d0"), ..Estimate::default() }
}

impl<D: Device> DAdaptAdam<D> {
    pub fn new(device: &D, shards: Shards) -> Result<Self> {
        device.require(&[Absorb::KERNEL, Step::KERNEL, Solve::KERNEL])?;
        Ok(DAdaptAdam { device: device.clone(), state: None, shards })
    }

    fn new_state(&self, ctx: &Context) -> Result<State<D>> {
        let d = &self.device;
        Ok(State {
            estimate: d.records(&[fresh(ctx.options)])?,
            no_coeffs: d.records(&[()])?,
            sums: global_sums(d, ctx)?,
            elems: d.alloc_per_tensor(&ctx.layout.lens)?,
        })
    }

    fn estimate(&self, ctx: &Context) -> Result<Estimate> {
        match &self.state {
            Some(s) => Ok(self.device.read_records(&s.estimate)?[0]),
            None => Ok(fresh(ctx.options)),
        }
    }

    fn absorb(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs) -> Result<()> {
        let fresh = self.state.is_none();
        if fresh {
            self.state = Some(self.new_state(ctx)?);
        }
        let (device, s) = (&self.device, self.state.as_mut().expect("just built"));
        let o = ctx.options;
        let global = Global::of(o);
        let decouple = o.flag(0, "decouple");
        let (elems, estimate) = (&mut s.elems, &s.estimate);
        // Only this step's sums are reduced; the running numerator is the record's (§7).
        let reduced = reduced_pass::<Solve, D>(device, &mut s.sums, self.shards.as_deref(), true, |sums, commit| {
            for (group, members) in ctx.layout.members.iter().enumerate() {
                let c = AbsorbCoeffs {
                    global,
                    eps: o.get(group, "eps"),
                    coupled_decay: if decouple { 0.0 } else { o.get(group, "weight_decay") },
                    active: u32::from(o.get(group, "lr") > 0.0),
                    pad: 0,
                };
                for &t in members {
                    device.dots::<Absorb>(&c, estimate, 0, &params[t].view(), &inputs.grads[t], &mut elems[t], sums, t, commit)?;
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
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let c = step_coeffs(ctx.options, group);
            for &t in members {
                d.update_by::<Step>(&c, &s.estimate, 0, &mut params[t], &inputs.grads[t], &mut s.elems[t], scale)?;
            }
        }
        Ok(())
    }
}

fn step_coeffs(o: &Options, group: usize) -> StepCoeffs {
    let decoupled_decay = if o.flag(0, "decouple") { o.get(group, "weight_decay") } else { 0.0 };
    StepCoeffs { eps: o.get(group, "eps"), decoupled_decay }
}

impl<D: Device> Algorithm for DAdaptAdam<D> {
    fn name(&self) -> &'static str {
        "dadapt-adam"
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
        crate::algorithm::refuse_capture(&self.device, "dadapt-adam", "its options as launch arguments")?;
        check_group_lrs("dadapt-adam", ctx.options)
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        self.absorb(ctx, params, inputs)?;
        let (d, s) = (&self.device, self.state.as_mut().expect("absorb built it"));
        let mut g_dot_s = 0.0;
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let c = step_coeffs(ctx.options, group);
            for &t in members {
                g_dot_s += d.advance_dot::<Step>(&c, &s.estimate, 0, &params[t], &inputs.grads[t], &mut s.elems[t])?;
            }
        }
        Ok(g_dot_s)
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        let (d, s) = (&self.device, self.state.as_ref().expect("apply follows propose, which builds the state"));
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let c = step_coeffs(ctx.options, group);
            for &t in members {
                d.apply_scaled::<Step>(&c, &s.estimate, 0, &mut params[t], &inputs.grads[t], &s.elems[t], scale)?;
            }
        }
        Ok(())
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        self.take_step(ctx, params, inputs, None)
    }

    fn step_scaled(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks, scale: f32) -> Result<()> {
        self.take_step(ctx, params, inputs, Some(scale))
    }

    /// The step size the last step put into m: `dlr = d · lr · bias` (0 before the first step)
    /// for a group with lr > 0; 0 for a group with lr 0 (its moments are frozen).
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
            ("numerator", e.numerator),
            ("sk_l1", e.sk_l1),
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
        w.f64s(&[e.d, e.numerator, e.sk_l1, e.d_hat, e.dlr]);
        for b in &s.elems {
            d.with_state(b, |b| w.elem_states(b))?;
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let begun = r.count("D-Adapt Adam steps begun")?;
        if begun == 0 {
            self.state = None;
            return Ok(());
        }
        let counts = r.counts_exact(2, "D-Adapt Adam step and skip counts")?;
        let v = r.f64s_exact(5, "D-Adapt Adam estimates")?;
        let e = Estimate { d: v[0], numerator: v[1], sk_l1: v[2], d_hat: v[3], dlr: v[4], begun, k: counts[0], skips: counts[1], moved: 0, pad: 0 };
        // d only grows from d0; the rest is finite, Σ|s| and dlr ≥ 0, every begun step counted once.
        let non_finite = [e.d, e.numerator, e.sk_l1, e.d_hat, e.dlr].iter().any(|v| !v.is_finite());
        let bad = |why: String| Err(Error::checkpoint(format!("checkpoint D-Adapt Adam estimate: {why} {}", crate::checkpoint::doubt(non_finite))));
        let d0 = ctx.options.get(0, "d0");
        if !(e.d.is_finite() && e.d >= d0) {
            return bad(format!("d = {} is not finite and ≥ d0 = {d0}", e.d));
        }
        if !(e.numerator.is_finite() && e.d_hat.is_finite() && e.sk_l1.is_finite() && e.sk_l1 >= 0.0 && e.dlr.is_finite() && e.dlr >= 0.0) {
            return bad("the numerator, d_hat, Σ|s| or dlr is out of range".into());
        }
        if e.k.checked_add(e.skips) != Some(begun) {
            return bad(format!("{} steps taken and {} skipped of {begun} begun", e.k, e.skips));
        }
        let states = crate::checkpoint::read_elem_states(r, &ctx.layout.lens, "dadapt-adam", possible, "s and m must be finite, v ≥ 0")?;
        let mut s = self.new_state(ctx)?;
        s.elems.iter_mut().zip(&states).try_for_each(|(b, v)| self.device.write_state(b, v))?;
        self.device.write_records(&mut s.estimate, &[e])?;
        self.state = Some(s);
        Ok(())
    }
}

//! GI — learning-rate adaptation by Gaussian inference (paper 003, Algorithm 1; docs/algorithms.md §3).
//!
//! A wrapper with one global scale η over any other algorithm of the library (the *base*):
//! `v = η s` where `s` is the step the base would take on its own (a fixed-rate base runs at
//! lr 1, so `v = η W g`). With `φ = g·v`, the move is the Polyak-type step
//! `θ ← θ − v · 2Δf/(φ + R)`, `Δf = max(f − f*, 0)` or `φ/2` without `f*`; then the loss on the
//! same batch at the new θ gives `ρ = (f − f+)/(φ/2)`, the observed over the predicted decrease,
//! and η grows (`ρ > hi`) or shrinks (`ρ < lo`).
//!
//! The base keeps its own state exactly as if it had applied `s` (its momentum and rates live in
//! its own frame); GI scales only the displacement. No parameter-sized buffer is added: the base
//! recomputes `s` from its state in the second pass.
//!
//! The step is two halves, which schedule-free over gi (docs/algorithms.md §3.3) calls on its own
//! frame: `make_move` (propose, φ, the move on the frame it is given) and `conclude` (f+ from the
//! callback or the report, then η from ρ against the decrease it is given: φ/2 here, φ_y/2 of
//! the caller's y there).

use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{reduce_failed, ReduceOp, ReduceValues, TensorMut};
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::{OptionSpec, Options};
use crate::registry;

/// Options GI adds to its base's (the base's `lr` is GI's η; a base with its own meaning of
/// `lr`, like TLR's initial α, takes it as `base_lr`).
pub fn specs(base: &str) -> Result<Vec<OptionSpec>> {
    if base == "gi" {
        return Err(Error::invalid("gi cannot wrap gi; choose another base"));
    }
    if crate::adapt::schedule_free::is_schedule_free(base) {
        return Err(Error::invalid(format!("gi cannot wrap '{base}': a schedule-free step moves y, z and x, not one displacement GI could scale")));
    }
    let fixed_rate = registry::is_fixed_rate(base);
    // The paper's advice: a small η for a fixed-rate base, which the adaptation accelerates;
    // an automatic base already chose its scale, so GI starts from 1.
    let eta0 = if fixed_rate { 1e-3 } else { 1.0 };
    let mut specs = vec![
        // The initial η only: η adapts itself, so changing it later would be silently ignored.
        OptionSpec::positive("lr", eta0).structural(),
        OptionSpec::real("f_star", f64::NAN, f64::NEG_INFINITY, f64::INFINITY).global().unset_by_default(),
        OptionSpec::non_negative("R", 0.0).global(),
        OptionSpec::real("up", 1.2, 1.0, f64::INFINITY).global(),
        OptionSpec { lo_open: true, ..OptionSpec::real("down", 0.5, 0.0, 1.0) }.global(),
        OptionSpec::non_negative("hi", 4.0 / 3.0).global(),
        OptionSpec::non_negative("lo", 0.75).global(),
        OptionSpec::integer("adapt_every", 1.0, 1.0, 1e9).global(),
    ];
    for spec in registry::specs(base, "", "")? {
        match spec.name {
            "lr" if fixed_rate => {}
            "lr" => specs.push(OptionSpec { name: "base_lr", ..spec }),
            // The paper's momentum for a wrapped Momentum/Adam is 0.5 (§3 decision); other
            // bases (TLR's μ) keep their own default.
            "momentum" | "beta1" if matches!(base, "momentum" | "adam" | "adamw") => specs.push(OptionSpec { default: 0.5, ..spec }),
            _ => specs.push(spec),
        }
    }
    Ok(specs)
}

/// The base's own option table, read from GI's (which holds every base option by name).
fn base_options(base: &str, options: &Options) -> Result<Options> {
    let fixed_rate = registry::is_fixed_rate(base);
    options.view(base, registry::specs(base, "", "")?, |name| match name {
        // A fixed-rate base runs at lr 1: GI's η is its rate.
        "lr" if fixed_rate => None,
        "lr" => Some("base_lr"),
        other => Some(other),
    })
}

/// What GI's move leaves for its adaptation (docs/algorithms.md §3): the loss before the move,
/// φ, whether φ gave a usable prediction (§3.1), and whether this step adapts η at all
/// (`adapt_every`).
#[derive(Debug, Clone, Copy)]
pub struct Move {
    loss_before: f64,
    phi: f64,
    usable: bool,
    pub adapts: bool,
}

/// A step that moved θ and waits for the loss after the move (two-phase protocol). Every
/// adapting step without a loss callback waits, also one whose prediction was unusable, so a
/// caller's protocol never depends on φ.
#[derive(Debug, Clone, Copy)]
struct Pending {
    loss_before: f64,
    /// What ρ divides the observed decrease by: φ/2 (§3), or φ_y/2 under schedule-free (§3.3).
    decrease: f64,
    /// False when there was no usable prediction: the report is then taken and ignored.
    usable: bool,
}

pub struct Gi {
    base_name: String,
    base: Box<dyn Algorithm>,
    /// `None` until the first step takes the option `lr` as its start.
    eta: Option<f64>,
    steps: u64,
    skipped: u64,
    phi: f64,
    rho: f64,
    /// The multiplier applied to the base's step this step: η · 2Δf/(φ+R), or η on a skip.
    applied_scale: f64,
    pending: Option<Pending>,
    /// Sharded: the communicator that adds φ's sum over the processes.
    shards: Shards,
}

impl Gi {
    pub fn new(base_name: &str, base: Box<dyn Algorithm>, shards: Shards) -> Self {
        let base_name = base_name.to_string();
        Gi { base_name, base, eta: None, steps: 0, skipped: 0, phi: 0.0, rho: 0.0, applied_scale: f64::NAN, pending: None, shards }
    }

    /// `value` summed over every process (sharded; as it is on whole tensors). Err: why the
    /// communicator failed.
    pub fn summed(&self, value: f64) -> std::result::Result<f64, String> {
        let Some(comm) = self.shards.as_deref() else { return Ok(value) };
        let mut values = [value];
        comm.all_reduce(ReduceValues::Host(&mut values), ReduceOp::Sum)?;
        Ok(values[0])
    }

    /// φ's sum `Σ g·s` over every process (sharded), from this process's.
    /// On whole tensors a non-finite φ is not an error but §3.1's plain step.
    fn reduced(&self, g_dot_s: f64) -> Result<f64> {
        if self.shards.is_none() {
            return Ok(g_dot_s);
        }
        let sum = self.summed(g_dot_s).map_err(reduce_failed)?;
        if !sum.is_finite() {
            // Every process sees the same sum, so every process refuses the step alike.
            return Err(Error::non_finite(
                "φ summed over all processes is not finite: the inputs of this or another process held a NaN or Inf (or the sum overflowed)",
            ));
        }
        Ok(sum)
    }

    fn eta(&self, options: &Options) -> f64 {
        self.eta.unwrap_or_else(|| options.get(0, "lr"))
    }

    fn adapts(&self, options: &Options, step: u64) -> bool {
        (step - 1) % (options.get(0, "adapt_every") as u64) == 0
    }

    /// η ← up·η if ρ > hi, down·η if ρ < lo; a non-finite loss after the move halves η.
    fn adapt(&mut self, options: &Options, pending: Pending, loss_after: f64) {
        if !pending.usable {
            return;
        }
        let eta = self.eta(options);
        self.eta = Some(if !loss_after.is_finite() {
            self.rho = f64::NAN;
            options.get(0, "down") * eta
        } else {
            self.rho = (pending.loss_before - loss_after) / pending.decrease;
            if self.rho > options.get(0, "hi") {
                options.get(0, "up") * eta
            } else if self.rho < options.get(0, "lo") {
                options.get(0, "down") * eta
            } else {
                eta
            }
        });
    }
    /// GI's move on `frame` (docs/algorithms.md §3, Algorithm 1 up to the re-evaluation): the
    /// base proposes s at the caller's gradient and advances its state, φ = η·g·s (one global
    /// sum, over the processes when sharded), and the frame moves by `scale`·k·s with
    /// k = η·2Δf/(φ + R), or η on a plain step (§3.1, counted in `skipped`). `scale` is 1 on
    /// GI's own; schedule-free's (scheduled) `lr` when GI steps its z (§3.3). What the
    /// adaptation needs is returned; nothing is adapted yet.
    pub fn make_move(&mut self, ctx: &Context, frame: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks, scale: f32) -> Result<Move> {
        let options = ctx.options;
        let base_opts = base_options(&self.base_name, options)?;
        let base_ctx = Context { layout: ctx.layout, options: &base_opts };
        let eta = self.eta(options);
        // The base's proposal may fail (a vSGD gradient callback, a reduction of its sums over
        // shards) before anything changed. Over shards φ's reduction follows it, when the base's
        // state has advanced: a snapshot of that state restores it if the reduction fails, so
        // that nothing changes then either (see `abstain`).
        let snapshot = match self.shards {
            Some(_) => {
                let mut w = Writer::to_vec();
                self.base.save(&mut w)?;
                Some(w.finish()?.0)
            }
            None => None,
        };
        let g_dot_s = self.base.propose(&base_ctx, frame, inputs, callbacks)?;
        let phi = match self.reduced(g_dot_s) {
            Ok(sum) => eta * sum,
            Err(failed) => {
                if let Some(bytes) = snapshot {
                    self.base.load(&base_ctx, &mut Reader::fields(&bytes))?;
                }
                return Err(failed);
            }
        };
        self.steps += 1;
        let adapts = self.adapts(options, self.steps);
        self.eta = Some(eta);
        self.phi = phi;
        self.rho = 0.0;
        let f_star = options.get(0, "f_star");
        let loss = inputs.loss.unwrap_or(f64::NAN);
        let delta_f = if f_star.is_nan() { phi / 2.0 } else { (loss - f_star).max(0.0) };
        let factor = 2.0 * delta_f / (phi + options.get(0, "R"));
        // With f* set, a negative φ (the base's step points uphill on this batch) still has the
        // paper's move, which reverses it and keeps the iterates independent of η (paper 003,
        // Fig. 4): decision 18a, docs/algorithms.md §3.1.
        let reversed = !f_star.is_nan() && phi < 0.0;
        let usable = (phi > 0.0 || reversed) && phi.is_finite() && factor.is_finite();
        if usable {
            self.applied_scale = eta * factor;
        } else {
            // No usable prediction: the plain base step at lr η, no adaptation (counted).
            self.applied_scale = eta;
        }
        self.base.apply(&base_ctx, frame, inputs, (f64::from(scale) * self.applied_scale) as f32)?;
        // A reversed step has φ < 0: ρ, which divides by the predicted decrease φ/2, means
        // nothing there, so η is kept.
        let usable = usable && !reversed;
        self.skipped += u64::from(!usable);
        Ok(Move { loss_before: loss, phi, usable, adapts })
    }

    /// The adaptation after an adapting move (§3, §3.2): with a loss callback, f+ from it at
    /// `params` (the caller's parameters, holding the moved point), then η's update; without
    /// one, the step waits for `report_loss`. `decrease` is what ρ divides the observed decrease
    /// by (φ/2 on GI's own; φ_y/2 under schedule-free, §3.3); a decrease that is not
    /// `decrease_usable` adapts nothing and counts as a skip, once per step.
    pub fn conclude(
        &mut self,
        options: &Options,
        moved: &Move,
        decrease: f64,
        decrease_usable: bool,
        params: &[TensorMut],
        callbacks: &mut Callbacks,
    ) -> Result<()> {
        let usable = moved.usable && decrease_usable;
        self.skipped += u64::from(moved.usable && !usable);
        let pending = Pending { loss_before: moved.loss_before, decrease, usable };
        match callbacks.loss_fn.as_mut() {
            None => self.pending = Some(pending),
            Some(_) if !usable => {}
            Some(loss_fn) => {
                let views = params
                    .iter()
                    .map(|p| p.as_host().ok_or_else(|| Error::unsupported("gi's loss callback reads the parameters in host memory")))
                    .collect::<Result<Vec<&[f32]>>>()?;
                let loss_after = loss_fn(&views).map_err(|why| Error {
                    after_change: true,
                    ..Error::callback(format!("the loss callback failed ({why}); the parameters were moved, η was not adapted"))
                })?;
                self.adapt(options, pending, loss_after);
            }
        }
        Ok(())
    }

    /// GI's telemetry (§5: `phi`, `rho`, `eta`, `skipped`), then `extra` (what schedule-free
    /// over GI adds, §3.3), then its base's.
    pub fn telemetry_with(&self, ctx: &Context, group: usize, extra: &[(&'static str, f64)]) -> Result<Vec<(&'static str, f64)>> {
        let mut entries = vec![("phi", self.phi), ("rho", self.rho), ("eta", self.eta(ctx.options)), ("skipped", self.skipped as f64)];
        entries.extend_from_slice(extra);
        let options = base_options(&self.base_name, ctx.options)?;
        entries.extend(self.base.telemetry(&Context { layout: ctx.layout, options: &options }, group)?);
        Ok(entries)
    }
}

impl Algorithm for Gi {
    fn name(&self) -> &'static str {
        "gi"
    }

    fn accepts(&self, ctx: &Context) -> Accepts {
        let base = match base_options(&self.base_name, ctx.options) {
            Ok(options) => self.base.accepts(&Context { layout: ctx.layout, options: &options }),
            Err(_) => Accepts::default(),
        };
        Accepts { loss: true, loss_fn: true, ..base }
    }

    fn check(&self, ctx: &Context, inputs: &StepInputs, callbacks: &Callbacks) -> Result<()> {
        let step = self.steps + 1;
        let f_star_set = !ctx.options.get(0, "f_star").is_nan();
        if inputs.loss.is_none() && (f_star_set || self.adapts(ctx.options, step)) {
            let why = if f_star_set { "f_star is set" } else { "this step adapts η" };
            return Err(Error::invalid(format!("gi needs the loss on this batch at the current parameters ({why}): pass loss")));
        }
        let options = base_options(&self.base_name, ctx.options)?;
        self.base.check(&Context { layout: ctx.layout, options: &options }, inputs, callbacks)
    }

    fn propose(&mut self, _ctx: &Context, _params: &[TensorMut], _inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        // Wrapping GI in GI is refused when the optimizer is built (specs); nothing calls this.
        Err(Error::unsupported("gi cannot be wrapped by another algorithm"))
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        let options = base_options(&self.base_name, ctx.options)?;
        self.base.apply(&Context { layout: ctx.layout, options: &options }, params, inputs, scale)
    }

    fn options_changed(&mut self, ctx: &Context) -> Result<()> {
        let options = base_options(&self.base_name, ctx.options)?;
        self.base.options_changed(&Context { layout: ctx.layout, options: &options })
    }

    fn discard_steps(&mut self, n: u64) {
        self.base.discard_steps(n);
    }

    /// The base's reductions come first in a step; over a base without any, φ's is the first.
    fn abstain(&mut self, ctx: &Context) -> bool {
        let Ok(options) = base_options(&self.base_name, ctx.options) else { return false };
        if self.base.abstain(&Context { layout: ctx.layout, options: &options }) {
            return true;
        }
        if self.shards.is_none() {
            return false;
        }
        // Its outcome is the refusal this process already has.
        let _ = self.reduced(f64::NAN);
        true
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        let moved = self.make_move(ctx, params, inputs, callbacks, 1.0)?;
        if !moved.adapts {
            return Ok(());
        }
        self.conclude(ctx.options, &moved, moved.phi / 2.0, true, params, callbacks)
    }

    fn report_loss(&mut self, ctx: &Context, loss_after: f64) -> Result<()> {
        let pending = self.pending.take().ok_or_else(|| {
            Error::wrong_state("no gi step is waiting for its loss: call alr_report_loss once after each adapting step that had no loss callback")
        })?;
        self.adapt(ctx.options, pending, loss_after);
        Ok(())
    }

    fn awaiting_report(&self) -> bool {
        self.pending.is_some()
    }

    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        let scale = if self.applied_scale.is_nan() { self.eta(ctx.options) } else { self.applied_scale };
        if registry::is_fixed_rate(&self.base_name) {
            return Ok(scale);
        }
        let options = base_options(&self.base_name, ctx.options)?;
        Ok(scale * self.base.lr(&Context { layout: ctx.layout, options: &options }, group)?)
    }

    fn momentum(&self, ctx: &Context, group: usize) -> Result<f64> {
        let options = base_options(&self.base_name, ctx.options)?;
        self.base.momentum(&Context { layout: ctx.layout, options: &options }, group)
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        self.telemetry_with(ctx, group, &[])
    }

    fn started(&self) -> Result<bool> {
        Ok(self.steps > 0 || self.base.started()?)
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        w.f64s(&[self.eta.unwrap_or(f64::NAN), self.phi, self.rho, self.applied_scale]);
        w.counts(&[self.steps, self.skipped]);
        w.str(self.base.name());
        self.base.save(w)
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let v = r.f64s_exact(4, "GI state")?;
        let counts = r.counts_exact(2, "GI step and skip counts")?;
        let (steps, skipped) = (counts[0], counts[1]);
        // η is set by the first step (from `lr`) and only ever multiplied by up or down after.
        let eta = match v[0] {
            eta if eta.is_nan() && steps == 0 => None,
            eta if eta.is_finite() && eta >= 0.0 && steps > 0 => Some(eta),
            eta => {
                return Err(Error::checkpoint(format!(
                    "checkpoint GI η = {eta} after {steps} steps is impossible: η is unset before the first step, then finite and ≥ 0 {}",
                    crate::checkpoint::doubt(!eta.is_finite() && steps > 0)
                )))
            }
        };
        if skipped > steps {
            return Err(Error::checkpoint(format!("checkpoint GI skipped {skipped} of {steps} steps (corrupted?)")));
        }
        r.expect_name(self.base.name())?;
        let options = base_options(&self.base_name, ctx.options)?;
        self.base.load(&Context { layout: ctx.layout, options: &options }, r)?;
        (self.eta, self.steps, self.skipped) = (eta, steps, skipped);
        (self.phi, self.rho, self.applied_scale) = (v[1], v[2], v[3]);
        Ok(())
    }
}

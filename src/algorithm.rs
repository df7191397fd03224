//! The contract between the optimizer (tensors, options, protocol) and one algorithm (math and
//! state). Every algorithm can *propose* its step — advance its state and report `g·s` for the
//! displacement `s` it would apply — separately from *applying* `θ ← θ − k·s`; GI wraps any
//! algorithm through exactly this pair. `step` is the fused path used when nothing wraps it.
//!
//! Algorithms are written over a [`crate::backend::Device`]; what they read of the caller comes
//! as [`TensorMut`] and [`crate::backend::Tensor`] views, host or device memory alike. Reading a
//! rate, telemetry or a checkpoint may fail on a device (its memory has to be read), hence the
//! `Result`s.

use crate::backend::{Communicator, Device, TensorMut};
use crate::checkpoint::{Reader, Writer};
use crate::error::Result;
use crate::optimizer::{Callbacks, Layout, StepInputs};
use crate::options::Options;

/// What an algorithm sees of the optimizer besides its own state.
pub struct Context<'a> {
    pub layout: &'a Layout,
    pub options: &'a Options,
}

/// Which inputs an algorithm uses; anything given that it does not use is an error, not ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accepts {
    pub per_sample: bool,
    pub curvature: bool,
    pub loss: bool,
    pub loss_fn: bool,
    pub grad_fn: bool,
    /// The algorithm detects non-finite gradients and per-sample data (and negative sum_sq)
    /// itself, in a pass that changes nothing, so the optimizer need not read them an extra time.
    pub checks_own_inputs: bool,
}

pub trait Algorithm: Send {
    fn name(&self) -> &'static str;

    /// Which inputs it uses.
    fn accepts(&self, ctx: &Context) -> Accepts;

    /// Algorithm-specific input requirements (presence, N ≥ 2, …), checked before anything changes.
    fn check(&self, _ctx: &Context, _inputs: &StepInputs, _callbacks: &Callbacks) -> Result<()> {
        Ok(())
    }

    /// Advances the state for this step and returns `Σ g·s` over all tensors, where `s` is the
    /// displacement the algorithm would apply on its own. Parameters are only read.
    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<f64>;

    /// `θ ← θ − scale·s` for the step last proposed, recomputing `s` from the state.
    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()>;

    /// One whole step: propose then apply with scale 1. Algorithms override it with a fused pass.
    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        self.propose(ctx, params, inputs, callbacks)?;
        self.apply(ctx, params, inputs, 1.0)
    }

    /// One whole step with its displacement scaled by `scale` (`θ ← θ − scale·s`, schedule-free
    /// over an automatic base): propose then apply. An algorithm written over `Device` overrides
    /// it with its own passes and `Device::update_scaled`, the same arithmetic without the host
    /// sum `propose` returns, so that it runs on a GPU too.
    fn step_scaled(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks, scale: f32) -> Result<()> {
        self.propose(ctx, params, inputs, callbacks)?;
        self.apply(ctx, params, inputs, scale)
    }

    /// Switches the caller's parameters between the training view (`train`) and the evaluation
    /// view. Schedule-free swaps them between y and x; every other algorithm has one view, so
    /// this is a no-op for it.
    fn set_mode(&mut self, _ctx: &Context, _params: &mut [TensorMut], _train: bool) -> Result<()> {
        Ok(())
    }

    /// Sharded training (docs/algorithms.md §7): this process's step was refused before it
    /// began (its own inputs). Makes the calls to the communicator the step would have made
    /// first, with values that make every process refuse the step too, so that no process waits
    /// for this one. An algorithm without reductions makes none. Returns whether it made any
    /// (their outcome is the refusal this process already has).
    fn abstain(&mut self, _ctx: &Context) -> bool {
        false
    }

    /// Options changed (or were loaded): copy what the device's kernels read.
    fn options_changed(&mut self, _ctx: &Context) -> Result<()> {
        Ok(())
    }

    /// The last `n` steps found bad input on the device and changed nothing there: forget them
    /// in what the host counts.
    fn discard_steps(&mut self, _n: u64) {}

    /// Effective learning rate of a group after the last step.
    fn lr(&self, ctx: &Context, group: usize) -> Result<f64>;

    /// Momentum of a group (0 where the algorithm has none).
    fn momentum(&self, _ctx: &Context, _group: usize) -> Result<f64> {
        Ok(0.0)
    }

    /// Internal scalars of a group (docs/algorithms.md §5), by name.
    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>>;

    /// The second phase of GI's two-phase protocol; other algorithms take no report.
    fn report_loss(&mut self, _ctx: &Context, _loss_after: f64) -> Result<()> {
        Err(takes_no_report(self.name()))
    }

    /// True while a step waits for its loss report (no new step may start).
    fn awaiting_report(&self) -> bool {
        false
    }

    /// Whether any step has changed the state (a checkpoint that says the optimizer has not
    /// started, with such a state, is refused: a structural option change would then drop it).
    fn started(&self) -> Result<bool>;

    fn save(&self, w: &mut Writer) -> Result<()>;

    /// Reads the state written by `save` into a freshly built algorithm of the same
    /// configuration, refusing any value the algorithm could not have produced.
    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()>;
}

/// The communicator of an optimizer over shards (None: whole tensors, nothing is reduced).
pub type Shards = Option<std::sync::Arc<dyn Communicator>>;

/// Refuses a step while the device is capturing a graph (CUDA graphs), for an algorithm whose
/// launches carry values its host side forms per step (`what`): a replay would repeat them.
pub fn refuse_capture<D: Device>(device: &D, name: &str, what: &str) -> Result<()> {
    if device.capturing()? {
        return Err(crate::error::Error::unsupported(format!(
            "'{name}' forms {what} on the host each step, so its steps cannot be captured in a CUDA graph yet (auto-* steps can)"
        )));
    }
    Ok(())
}

/// ALR_WRONG_STATE for a loss report to an algorithm that takes none.
pub fn takes_no_report(name: &str) -> crate::error::Error {
    crate::error::Error::wrong_state(format!(
        "algorithm '{name}' takes no loss report: alr_report_loss is only for 'gi' (and 'schedule-free' over gi) after a step without a loss callback"
    ))
}

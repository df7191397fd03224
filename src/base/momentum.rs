//! SGD with momentum, PyTorch's convention (docs/algorithms.md §0):
//! `m ← μ m + (1 − dampening) g` (the first step sets `m ← g`), `θ ← θ − η m`,
//! or with Nesterov `θ ← θ − η (g + μ m)`; `g` includes coupled weight decay `λθ`.

use super::{Rule, WEIGHT_DECAY};
use crate::error::{Error, Result};
use crate::options::{OptionSpec, Options};

pub struct Momentum;

/// `#[repr(C)]`: the same struct, field for field, is the kernel argument in cuda/fixed_rate.cu
/// (layout checked against it by `registry`'s tests).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct MomentumCoeffs {
    pub(crate) lr: f32,
    pub(crate) weight_decay: f32,
    pub(crate) mu: f32,
    /// Multiplier of the old buffer: μ, or 0 on the first step (torch clones g into the buffer).
    pub(crate) keep: f32,
    /// Multiplier of g in the buffer: 1 − dampening, or 1 on the first step.
    pub(crate) gain: f32,
    pub(crate) nesterov: bool,
}

impl Rule for Momentum {
    const NAME: &'static str = "momentum";
    const KERNEL: &'static str = "alr_momentum_step";
    type State = f32;
    type Coeffs = MomentumCoeffs;

    fn specs() -> Vec<OptionSpec> {
        vec![
            OptionSpec::non_negative("lr", 1e-3),
            OptionSpec::fraction("momentum", 0.9),
            OptionSpec::fraction("dampening", 0.0),
            OptionSpec::flag("nesterov", false),
            WEIGHT_DECAY,
        ]
    }

    fn coeffs(o: &Options, group: usize, t: u64, lr: f64) -> MomentumCoeffs {
        let mu = o.get(group, "momentum") as f32;
        let first = t <= 1;
        MomentumCoeffs {
            lr: lr as f32,
            weight_decay: o.get(group, "weight_decay") as f32,
            mu,
            keep: if first { 0.0 } else { mu },
            gain: if first { 1.0 } else { 1.0 - o.get(group, "dampening") as f32 },
            nesterov: o.flag(group, "nesterov"),
        }
    }

    #[inline(always)]
    fn advance(c: &MomentumCoeffs, g: f32, theta: f32, m: &mut f32) -> f32 {
        let g = g + c.weight_decay * theta;
        *m = c.keep * *m + c.gain * g;
        if c.nesterov {
            c.lr * (g + c.mu * *m)
        } else {
            c.lr * *m
        }
    }

    #[inline(always)]
    fn possible(m: &f32) -> bool {
        m.is_finite()
    }

    #[inline(always)]
    fn delta(c: &MomentumCoeffs, g: f32, theta: f32, m: &f32) -> f32 {
        let g = g + c.weight_decay * theta;
        if c.nesterov {
            c.lr * (g + c.mu * *m)
        } else {
            c.lr * *m
        }
    }

    fn check_options(o: &Options, group: usize) -> Result<()> {
        // PyTorch's rule: Nesterov needs a momentum and no dampening.
        if o.flag(group, "nesterov") && (o.get(group, "momentum") <= 0.0 || o.get(group, "dampening") != 0.0) {
            return Err(Error::invalid(format!(
                "group {group}: nesterov needs momentum > 0 and dampening = 0 (got momentum {}, dampening {})",
                o.get(group, "momentum"),
                o.get(group, "dampening")
            )));
        }
        Ok(())
    }

    fn momentum(o: &Options, group: usize) -> f64 {
        o.get(group, "momentum")
    }
}

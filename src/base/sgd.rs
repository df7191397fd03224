//! SGD: `θ ← θ − η (g + λθ)` (docs/algorithms.md §0).

use super::{Rule, WEIGHT_DECAY};
use crate::options::{OptionSpec, Options};

pub struct Sgd;

/// `#[repr(C)]`: the same struct, field for field, is the kernel argument in cuda/fixed_rate.cu
/// (layout checked against it by `registry`'s tests).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SgdCoeffs {
    pub(crate) lr: f32,
    pub(crate) weight_decay: f32,
}

impl Rule for Sgd {
    const NAME: &'static str = "sgd";
    const KERNEL: &'static str = "alr_sgd_step";
    type State = ();
    type Coeffs = SgdCoeffs;

    fn specs() -> Vec<OptionSpec> {
        vec![OptionSpec::non_negative("lr", 1e-3), WEIGHT_DECAY]
    }

    fn coeffs(o: &Options, group: usize, _t: u64, lr: f64) -> SgdCoeffs {
        SgdCoeffs { lr: lr as f32, weight_decay: o.get(group, "weight_decay") as f32 }
    }

    #[inline(always)]
    fn advance(c: &SgdCoeffs, g: f32, theta: f32, state: &mut ()) -> f32 {
        Self::delta(c, g, theta, state)
    }

    #[inline(always)]
    fn possible(_: &()) -> bool {
        true
    }

    #[inline(always)]
    fn delta(c: &SgdCoeffs, g: f32, theta: f32, _: &()) -> f32 {
        c.lr * (g + c.weight_decay * theta)
    }
}

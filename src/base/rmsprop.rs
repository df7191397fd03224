//! RMSprop (docs/algorithms.md §0): `s ← α s + (1−α) g²`, `θ ← θ − η g / (√s + ε)`, `g` with coupled decay.

use super::{Rule, WEIGHT_DECAY};
use crate::options::{OptionSpec, Options};

pub struct RmsProp;

/// `#[repr(C)]`: the same struct, field for field, is the kernel argument in cuda/fixed_rate.cu
/// (layout checked against it by `registry`'s tests).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct RmsPropCoeffs {
    pub(crate) lr: f32,
    pub(crate) weight_decay: f32,
    pub(crate) alpha: f32,
    /// 1 − α formed in f64 (see adam.rs).
    pub(crate) one_minus_alpha: f32,
    pub(crate) eps: f32,
}

impl Rule for RmsProp {
    const NAME: &'static str = "rmsprop";
    const KERNEL: &'static str = "alr_rmsprop_step";
    type State = f32;
    type Coeffs = RmsPropCoeffs;

    fn specs() -> Vec<OptionSpec> {
        vec![OptionSpec::non_negative("lr", 1e-2), OptionSpec::fraction("alpha", 0.99), OptionSpec::positive("eps", 1e-8), WEIGHT_DECAY]
    }

    fn coeffs(o: &Options, group: usize, _t: u64, lr: f64) -> RmsPropCoeffs {
        RmsPropCoeffs {
            lr: lr as f32,
            weight_decay: o.get(group, "weight_decay") as f32,
            alpha: o.get(group, "alpha") as f32,
            one_minus_alpha: (1.0 - o.get(group, "alpha")) as f32,
            eps: o.get(group, "eps") as f32,
        }
    }

    #[inline(always)]
    fn advance(c: &RmsPropCoeffs, g: f32, theta: f32, s: &mut f32) -> f32 {
        let g = g + c.weight_decay * theta;
        *s = c.alpha * *s + c.one_minus_alpha * g * g;
        c.lr * g / (s.sqrt() + c.eps)
    }

    #[inline(always)]
    fn possible(s: &f32) -> bool {
        crate::checkpoint::second_moment(*s)
    }

    #[inline(always)]
    fn delta(c: &RmsPropCoeffs, g: f32, theta: f32, s: &f32) -> f32 {
        let g = g + c.weight_decay * theta;
        c.lr * g / (s.sqrt() + c.eps)
    }
}

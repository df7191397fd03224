//! AdaGrad (docs/algorithms.md §0): `s ← s + g²`, `θ ← θ − η g / (√s + ε)`, `g` with coupled decay.

use super::{Rule, WEIGHT_DECAY};
use crate::options::{OptionSpec, Options};

pub struct Adagrad;

/// `#[repr(C)]`: the same struct, field for field, is the kernel argument in cuda/fixed_rate.cu
/// (layout checked against it by `registry`'s tests).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct AdagradCoeffs {
    pub(crate) lr: f32,
    pub(crate) weight_decay: f32,
    pub(crate) eps: f32,
}

impl Rule for Adagrad {
    const NAME: &'static str = "adagrad";
    const KERNEL: &'static str = "alr_adagrad_step";
    type State = f32;
    type Coeffs = AdagradCoeffs;

    fn specs() -> Vec<OptionSpec> {
        vec![OptionSpec::non_negative("lr", 1e-2), OptionSpec::positive("eps", 1e-10), WEIGHT_DECAY]
    }

    fn coeffs(o: &Options, group: usize, _t: u64, lr: f64) -> AdagradCoeffs {
        AdagradCoeffs { lr: lr as f32, weight_decay: o.get(group, "weight_decay") as f32, eps: o.get(group, "eps") as f32 }
    }

    #[inline(always)]
    fn advance(c: &AdagradCoeffs, g: f32, theta: f32, s: &mut f32) -> f32 {
        let g = g + c.weight_decay * theta;
        *s += g * g;
        c.lr * g / (s.sqrt() + c.eps)
    }

    #[inline(always)]
    fn possible(s: &f32) -> bool {
        crate::checkpoint::second_moment(*s)
    }

    #[inline(always)]
    fn delta(c: &AdagradCoeffs, g: f32, theta: f32, s: &f32) -> f32 {
        let g = g + c.weight_decay * theta;
        c.lr * g / (s.sqrt() + c.eps)
    }
}

//! Adam and AdamW (docs/algorithms.md §0): `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
//! `θ ← θ − η m̂ / (√v̂ + ε)` with `m̂ = m/(1−β1^t)`, `v̂ = v/(1−β2^t)`. Adam adds `λθ` to `g`;
//! AdamW decays the parameter instead (`θ ← θ(1 − ηλ)` first, written here as `+ ηλθ` in the
//! displacement so that GI can scale the whole step).

use super::{Rule, WEIGHT_DECAY};
use crate::options::{OptionSpec, Options};

/// `DECOUPLED = false`: Adam; `true`: AdamW.
pub struct Adam<const DECOUPLED: bool>;

/// `#[repr(C)]`: the same struct, field for field, is the kernel argument in cuda/fixed_rate.cu
/// (layout checked against it by `registry`'s tests).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct AdamCoeffs {
    pub(crate) weight_decay: f32,
    pub(crate) beta1: f32,
    pub(crate) beta2: f32,
    /// 1 − β1 and 1 − β2, formed in f64: 1 − (β as f32) would be off by ~1e-5 relative (as torch does it).
    pub(crate) one_minus_beta1: f32,
    pub(crate) one_minus_beta2: f32,
    /// η / (1 − β1^t)
    pub(crate) step_size: f32,
    /// 1 / √(1 − β2^t)
    pub(crate) inv_sqrt_bias2: f32,
    pub(crate) eps: f32,
    /// η λ (AdamW only; 0 for Adam)
    pub(crate) decoupled_decay: f32,
}

/// The Adam specs; also AutoAdam's `beta2`/`eps`, hence public.
pub fn adam_specs() -> Vec<OptionSpec> {
    vec![
        OptionSpec::non_negative("lr", 1e-3),
        OptionSpec::fraction("beta1", 0.9),
        OptionSpec::fraction("beta2", 0.999),
        OptionSpec::positive("eps", 1e-8),
        WEIGHT_DECAY,
    ]
}

impl<const DECOUPLED: bool> Rule for Adam<DECOUPLED> {
    const NAME: &'static str = if DECOUPLED { "adamw" } else { "adam" };
    // AdamW is Adam's kernel with the decoupled decay in its coefficients.
    const KERNEL: &'static str = "alr_adam_step";
    type State = [f32; 2];
    type Coeffs = AdamCoeffs;

    fn specs() -> Vec<OptionSpec> {
        adam_specs()
    }

    fn coeffs(o: &Options, group: usize, t: u64, lr: f64) -> AdamCoeffs {
        let (beta1, beta2) = (o.get(group, "beta1"), o.get(group, "beta2"));
        let t = t.max(1);
        let weight_decay = o.get(group, "weight_decay");
        AdamCoeffs {
            weight_decay: if DECOUPLED { 0.0 } else { weight_decay as f32 },
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            step_size: (lr / (1.0 - super::bias_power(beta1, t))) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - super::bias_power(beta2, t)).sqrt()) as f32,
            eps: o.get(group, "eps") as f32,
            decoupled_decay: if DECOUPLED { (lr * weight_decay) as f32 } else { 0.0 },
        }
    }

    #[inline(always)]
    fn advance(c: &AdamCoeffs, g: f32, theta: f32, mv: &mut [f32; 2]) -> f32 {
        let g = g + c.weight_decay * theta;
        mv[0] = c.beta1 * mv[0] + c.one_minus_beta1 * g;
        mv[1] = c.beta2 * mv[1] + c.one_minus_beta2 * g * g;
        Self::delta(c, g, theta, mv)
    }

    #[inline(always)]
    fn possible(mv: &[f32; 2]) -> bool {
        mv[0].is_finite() && crate::checkpoint::second_moment(mv[1])
    }

    #[inline(always)]
    fn delta(c: &AdamCoeffs, _g: f32, theta: f32, mv: &[f32; 2]) -> f32 {
        c.step_size * mv[0] / (mv[1].sqrt() * c.inv_sqrt_bias2 + c.eps) + c.decoupled_decay * theta
    }

    fn momentum(o: &Options, group: usize) -> f64 {
        o.get(group, "beta1")
    }
}

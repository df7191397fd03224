//! Fixed-rate update rules (docs/algorithms.md §0). Each rule is a small file: its options, the
//! per-group scalars of a step, and the per-element update. `FixedRate<R>` turns any rule into
//! an algorithm: state allocation, the fused pass, propose/apply for GI, checkpoints.

pub mod adagrad;
pub mod adam;
pub mod momentum;
pub mod rmsprop;
pub mod sgd;

use std::marker::PhantomData;

use crate::algorithm::{Accepts, Algorithm, Context};
use crate::backend::{Device, ElemState, ElementRule, KernelRule, NestedRule, TensorMut};
use crate::checkpoint::{Reader, Writer};
use crate::error::Result;
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::{OptionSpec, Options};

/// One fixed-rate rule: `θ ← θ − delta(g, θ, state)` with the learning rate folded into `Coeffs`.
pub trait Rule: Send + Sync + 'static {
    const NAME: &'static str;
    /// The kernel of `advance` in cuda/fixed_rate.cu.
    const KERNEL: &'static str;
    /// Per-element state (docs/algorithms.md §0's "state" column, nothing more).
    type State: ElemState;
    /// Per-group scalars of one step (learning rate, bias corrections, …); `#[repr(C)]`, the
    /// kernel's argument.
    type Coeffs: Copy + Send + Sync + 'static;

    fn specs() -> Vec<OptionSpec>;

    /// Scalars for `group` at its step `t` (counting from 1) with learning rate `lr`.
    fn coeffs(options: &Options, group: usize, t: u64, lr: f64) -> Self::Coeffs;

    /// Advances one element's state and returns its displacement `delta` (`θ ← θ − delta`).
    fn advance(c: &Self::Coeffs, g: f32, theta: f32, state: &mut Self::State) -> f32;

    /// Whether a loaded element state is one the rule can produce (checkpoints).
    fn possible(state: &Self::State) -> bool;

    /// The displacement of the step just taken, from the advanced state (GI's second pass).
    fn delta(c: &Self::Coeffs, g: f32, theta: f32, state: &Self::State) -> f32;

    /// Combinations of options the ranges alone cannot reject (checked before every step).
    fn check_options(_options: &Options, _group: usize) -> Result<()> {
        Ok(())
    }

    /// The group's momentum as users know it (μ, β1), 0 if none.
    fn momentum(_options: &Options, _group: usize) -> f64 {
        0.0
    }
}

/// A rule as the device's elementwise pass runs it: all its scalars come by value.
pub struct Fixed<R>(PhantomData<R>);

impl<R: Rule> KernelRule for Fixed<R> {
    type State = R::State;
    type Coeffs = R::Coeffs;
    type Record = ();
    type Prepared = R::Coeffs;
    const KERNEL: &'static str = R::KERNEL;
    #[inline(always)]
    fn prepare(c: &R::Coeffs, _: &()) -> R::Coeffs {
        *c
    }
}

impl<R: Rule> ElementRule for Fixed<R> {
    #[inline(always)]
    fn advance(c: &R::Coeffs, g: f32, theta: f32, state: &mut R::State) -> f32 {
        R::advance(c, g, theta, state)
    }
    #[inline(always)]
    fn delta(c: &R::Coeffs, g: f32, theta: f32, state: &R::State) -> f32 {
        R::delta(c, g, theta, state)
    }
}

/// A rule run with its `lr` option — or with a unit learning rate when GI wraps it and owns η.
pub struct FixedRate<R: Rule, D: Device> {
    device: D,
    /// Per tensor, per element.
    states: Vec<D::State<R::State>>,
    /// The rule reads no record; the device's passes take one all the same.
    no_record: D::Records<()>,
    /// Per group: steps taken (Adam's bias correction, momentum's first step).
    steps: Vec<u64>,
    unit_lr: bool,
}

impl<R: Rule, D: Device> FixedRate<R, D> {
    pub fn new(device: &D, lens: &[usize], n_groups: usize, unit_lr: bool) -> Result<Self> {
        device.require(&[R::KERNEL])?;
        Ok(FixedRate {
            states: device.alloc_per_tensor(lens)?,
            no_record: device.records(&[()])?,
            device: device.clone(),
            steps: crate::backend::filled(n_groups, 0)?,
            unit_lr,
        })
    }

    fn coeffs(&self, ctx: &Context, group: usize, t: u64) -> R::Coeffs {
        let lr = if self.unit_lr { 1.0 } else { ctx.options.get(group, "lr") };
        R::coeffs(ctx.options, group, t, lr)
    }

    /// One step: `pass(device, no record, coefficients, tensor, state)` for every tensor, group
    /// by group, each group's step counted once its launches are enqueued (a failed launch
    /// counts none).
    fn each_tensor(
        &mut self,
        ctx: &Context,
        mut pass: impl FnMut(&D, &D::Records<()>, &R::Coeffs, usize, &mut D::State<R::State>) -> Result<()>,
    ) -> Result<()> {
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let t = self.steps[group] + 1;
            let c = self.coeffs(ctx, group, t);
            for &tensor in members {
                pass(&self.device, &self.no_record, &c, tensor, &mut self.states[tensor])?;
            }
            self.steps[group] = t;
        }
        Ok(())
    }

    /// One step of the rule on the variables `z` of a rule `N` that holds it, in `N`'s one pass
    /// over each tensor (schedule-free over this base: `params` are its y). `N`'s coefficients
    /// of a group are `coeffs[group]`, its records `records`, one per group.
    pub fn step_nested<N: NestedRule<Inner = Fixed<R>>>(
        &mut self,
        ctx: &Context,
        coeffs: &[N::Coeffs],
        records: &D::Records<N::Record>,
        params: &mut [TensorMut],
        inputs: &StepInputs,
        z: &mut [D::State<f32>],
    ) -> Result<()> {
        let groups = &ctx.layout.groups;
        self.each_tensor(ctx, |device, _, c, tensor, state| {
            let group = groups[tensor];
            device.update_nested::<N>(&coeffs[group], records, group, c, &mut params[tensor], &inputs.grads[tensor], &mut z[tensor], state)
        })
    }
}

impl<R: Rule, D: Device> Algorithm for FixedRate<R, D> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts::default()
    }

    fn check(&self, ctx: &Context, _inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        // A graph would replay the coefficients (learning rate, bias correction, step number)
        // of the step it captured; AutoOpt's live on the device and replay correctly.
        crate::algorithm::refuse_capture(&self.device, R::NAME, "its coefficients")?;
        (0..ctx.layout.n_groups()).try_for_each(|group| R::check_options(ctx.options, group))
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        let mut g_dot_s = 0.0;
        for (group, members) in ctx.layout.members.iter().enumerate() {
            self.steps[group] += 1;
            let c = self.coeffs(ctx, group, self.steps[group]);
            for &t in members {
                g_dot_s += self.device.advance_dot::<Fixed<R>>(&c, &self.no_record, 0, &params[t], &inputs.grads[t], &mut self.states[t])?;
            }
        }
        Ok(g_dot_s)
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let c = self.coeffs(ctx, group, self.steps[group]);
            for &t in members {
                self.device.apply_scaled::<Fixed<R>>(&c, &self.no_record, 0, &mut params[t], &inputs.grads[t], &self.states[t], scale)?;
            }
        }
        Ok(())
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        self.each_tensor(ctx, |device, no_record, c, tensor, state| {
            device.update::<Fixed<R>>(c, no_record, 0, &mut params[tensor], &inputs.grads[tensor], state)
        })
    }

    fn discard_steps(&mut self, n: u64) {
        self.steps.iter_mut().for_each(|s| *s = s.saturating_sub(n));
    }

    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(if self.unit_lr { 1.0 } else { ctx.options.get(group, "lr") })
    }

    fn momentum(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(R::momentum(ctx.options, group))
    }

    fn telemetry(&self, _ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        // The learning rate is alr_get_lr's; under GI it would read 1 here and confuse.
        Ok(vec![("steps", self.steps[group] as f64)])
    }

    fn started(&self) -> Result<bool> {
        Ok(self.steps.iter().any(|&s| s > 0))
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        w.counts(&self.steps);
        for s in &self.states {
            self.device.with_state(s, |s| w.elem_states(s))?;
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let (steps, states) = read_fixed_rate::<R>(ctx, r)?;
        for (buffer, values) in self.states.iter_mut().zip(&states) {
            self.device.write_state(buffer, values)?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Every tensor's element states of rule `R`.
pub type ElemStates<R> = Vec<Vec<<R as Rule>::State>>;

/// A fixed-rate rule's checkpoint section (its per-group step counts, then every tensor's
/// element states), each value checked to be one the rule can produce.
pub fn read_fixed_rate<R: Rule>(ctx: &Context, r: &mut Reader) -> Result<(Vec<u64>, ElemStates<R>)> {
    let steps = r.counts_exact(ctx.layout.n_groups(), "step counts")?;
    let rule = "a first moment must be finite, a second moment ≥ 0";
    let states = crate::checkpoint::read_elem_states(r, &ctx.layout.lens, R::NAME, R::possible, rule)?;
    Ok((steps, states))
}

/// `β^t` for a bias correction at step `t` (from 1): `powi` as torch's float arithmetic forms
/// it, for every `t` an `i32` holds; beyond that (2^31 steps and more) `powf`, since `t as i32`
/// would turn negative and the correction with it.
pub fn bias_power(beta: f64, t: u64) -> f64 {
    match i32::try_from(t) {
        Ok(t) => beta.powi(t),
        Err(_) => beta.powf(t as f64),
    }
}

/// `weight_decay`, shared by every rule (coupled L2 for all but AdamW, where it is decoupled).
pub const WEIGHT_DECAY: OptionSpec = OptionSpec::non_negative("weight_decay", 0.0);

#[cfg(test)]
mod tests {
    use super::{adagrad::Adagrad, adam::Adam, momentum::Momentum, rmsprop::RmsProp, sgd::Sgd, Rule};
    use crate::backend::cpu::{update_in, Build};
    use crate::backend::ElemState;

    /// Each fixed-rate rule's update, three steps, in the portable build and in every wider one
    /// the CPU runs: the same bits (the claim the CPU backend's runtime dispatch rests on).
    #[test]
    fn kernels_give_the_same_bits_in_every_build() {
        fn same_bits<R: Rule>() {
            let mut options = crate::options::Options::new(R::specs(), 1).expect("options");
            options.set(R::NAME, "weight_decay", None, 0.01).expect("weight_decay");
            // Lengths below a vector, and past whole vectors with a tail; values over many
            // magnitudes, zeros and signs (subnormal products among them).
            for n in [5, 1003] {
                let value = |k: u32, i: usize| {
                    let u = (((i as u32).wrapping_mul(2654435761) ^ k) >> 8) as f32 / 16_777_216.0;
                    (u - 0.5) * 10f32.powi((i % 13) as i32 - 8)
                };
                let grad: Vec<f32> = (0..n).map(|i| if i % 17 == 0 { 0.0 } else { value(1, i) }).collect();
                let theta: Vec<f32> = (0..n).map(|i| value(2, i)).collect();
                let run = |build: Build| {
                    let (mut theta, mut state) = (theta.clone(), vec![R::State::default(); n]);
                    for t in 1..=3 {
                        let c = R::coeffs(&options, 0, t, 1e-2);
                        if !update_in(build, &mut theta, &grad, &mut state, |g, th, st| R::advance(&c, g, th, st)) {
                            return None;
                        }
                    }
                    let mut floats = Vec::new();
                    state.iter().for_each(|s| s.write(&mut floats));
                    Some((theta.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), floats.iter().map(|v| v.to_bits()).collect::<Vec<_>>()))
                };
                let portable = run(Build::Portable).expect("the portable build always runs");
                for build in [Build::Avx2, Build::Avx512] {
                    if let Some(wide) = run(build) {
                        assert!(wide == portable, "{}: {build:?} and portable bits differ (n = {n})", R::NAME);
                    }
                }
                assert!(portable.0.iter().zip(&theta).any(|(a, b)| *a != b.to_bits()), "{}: the steps moved θ", R::NAME);
            }
        }
        same_bits::<Sgd>();
        same_bits::<Momentum>();
        same_bits::<Adam<false>>();
        same_bits::<Adam<true>>();
        same_bits::<Adagrad>();
        same_bits::<RmsProp>();
    }
}

//! AutoOpt (paper 001, Lancewicki & Kopru): a learning rate **and** a momentum per group, from
//! the per-sample gradient variance (docs/algorithms.md §1).
//!
//! Per group and step, with `D = Ĥ⁻¹` the base's diagonal preconditioner and `d` the previous
//! update direction before preconditioning:
//! 1. noise `V = Σ D (S − N g²) / (N (N−1))` (eq. 22, Appendix A), clamped at 0;
//! 2. `a = Σ D g g`, `c = Σ D g d`, `e = Σ D d d` give `Â` (eq. 24) and `b̂ = [V, V]` (eq. 23);
//! 3. the oracle `γ_O` solves `Â γ = b̂` in closed form (eq. 25), falling back to the 1-D
//!    problem `γ = [min(V/a, γ_max), 0]` outside the valid region;
//! 4. smoothing `γ_E ← min((1−ν) γ_O + ν γ_E, γ_max)` (eq. 26);
//! 5. `α = 1 − γ1`, `β = γ2 / α`;
//! 6. direction `ĝ = (1−γ1−γ2) g + γ2 d` (eq. 14), update `θ ← θ − D ⊙ ĝ` (eq. 9), `d ← ĝ`.
//!
//! Two passes over memory: a reduction pass (base state, `V`, `a`, `c`, `e`) and the update pass.

use std::marker::PhantomData;

use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{
    abstain, reduced_pass, refuse_own_bad_inputs, Device, ElemState, ElementRule, KernelRule, Memory, MomentRule, Record, SampleTensor, SampleView, SolveRule,
    TensorMut,
};
use crate::base::adam::adam_specs;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, SampleData, StepInputs};
use crate::options::{OptionSpec, Options};

/// The 2-D solution is rejected as ill-conditioned when `det ≤ DET_RTOL · a e` (the authors' code).
const DET_RTOL: f64 = 1e-12;

/// The base optimizer's diagonal preconditioner `D` and the per-element state carrying it.
pub trait Precond: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    /// Default smoothing ν (eq. 26), chosen by the Fashion-MNIST benchmark (README, "Sensitivity").
    const NU: f64;
    /// The kernels of pass 1 and pass 2 with this preconditioner (cuda/autoopt.cu).
    const MOMENTS_KERNEL: &'static str;
    const UPDATE_KERNEL: &'static str;
    /// `d` alone (SGD), or `[d, v or s]`.
    type State: DirectionSlot;
    fn specs() -> Vec<OptionSpec>;
    /// The group's coefficients at its step `t` (counting from 1).
    fn new(options: &GroupOptions, t: u64) -> Self;
    /// Takes this step's gradient into the base state and returns `D` (eqs. 11–12).
    fn absorb(&self, state: &mut Self::State, g: f32) -> f32;
    /// `D` from the (already advanced) state.
    fn diag(&self, state: &Self::State) -> f32;
    /// Whether a loaded element state is one the algorithm can produce: `d` finite, the base's
    /// `v` or `s` a second moment.
    fn possible(state: &Self::State) -> bool;
}

/// Where an element's state keeps `d`, the last direction before preconditioning: alone (SGD)
/// or first of `[d, v or s]`.
pub trait DirectionSlot: ElemState {
    fn direction(&self) -> f32;
    fn set_direction(&mut self, value: f32);
}

impl DirectionSlot for f32 {
    #[inline(always)]
    fn direction(&self) -> f32 {
        *self
    }
    #[inline(always)]
    fn set_direction(&mut self, value: f32) {
        *self = value;
    }
}

impl DirectionSlot for [f32; 2] {
    #[inline(always)]
    fn direction(&self) -> f32 {
        self[0]
    }
    #[inline(always)]
    fn set_direction(&mut self, value: f32) {
        self[0] = value;
    }
}

/// AutoSGD: `D = 1`.
#[derive(Clone, Copy)]
pub struct Identity;

impl Precond for Identity {
    const NAME: &'static str = "auto-sgd";
    const NU: f64 = 0.9;
    const MOMENTS_KERNEL: &'static str = "alr_autoopt_moments_sgd";
    const UPDATE_KERNEL: &'static str = "alr_autoopt_update_sgd";
    type State = f32;
    fn specs() -> Vec<OptionSpec> {
        Vec::new()
    }
    fn new(_: &GroupOptions, _: u64) -> Self {
        Identity
    }
    #[inline(always)]
    fn absorb(&self, _: &mut f32, _: f32) -> f32 {
        1.0
    }
    #[inline(always)]
    fn diag(&self, _: &f32) -> f32 {
        1.0
    }
    fn possible(d: &f32) -> bool {
        d.is_finite()
    }
}

/// AutoAdaGrad: `s ← s + g²`, `D = 1/(√s + ε)`.
#[derive(Clone, Copy)]
pub struct AdagradDiag {
    eps: f32,
}

impl Precond for AdagradDiag {
    const NAME: &'static str = "auto-adagrad";
    const NU: f64 = 0.9;
    const MOMENTS_KERNEL: &'static str = "alr_autoopt_moments_adagrad";
    const UPDATE_KERNEL: &'static str = "alr_autoopt_update_adagrad";
    type State = [f32; 2];
    fn specs() -> Vec<OptionSpec> {
        vec![OptionSpec::positive("eps", 1e-10)]
    }
    fn new(o: &GroupOptions, _: u64) -> Self {
        AdagradDiag { eps: o.eps as f32 }
    }
    #[inline(always)]
    fn absorb(&self, state: &mut [f32; 2], g: f32) -> f32 {
        state[1] += g * g;
        self.diag(state)
    }
    #[inline(always)]
    fn diag(&self, state: &[f32; 2]) -> f32 {
        1.0 / (state[1].sqrt() + self.eps)
    }
    fn possible(state: &[f32; 2]) -> bool {
        state[0].is_finite() && crate::checkpoint::second_moment(state[1])
    }
}

/// AutoAdam: `v ← β2 v + (1−β2) g²`, `D = 1/(√(v/(1−β2^t)) + ε)`. The first-moment bias
/// factor of eq. 11 is dropped (docs/algorithms.md §1 decision: β is adapted instead).
#[derive(Clone, Copy)]
pub struct AdamDiag {
    beta2: f32,
    /// 1 − β2 formed in f64 (see base/adam.rs).
    one_minus_beta2: f32,
    inv_sqrt_bias2: f32,
    eps: f32,
}

impl Precond for AdamDiag {
    // ν = 0.9 let AutoAdam's loss blow up on both Fashion-MNIST models; the authors' 0.99999 did not.
    const NAME: &'static str = "auto-adam";
    const NU: f64 = 0.99999;
    const MOMENTS_KERNEL: &'static str = "alr_autoopt_moments_adam";
    const UPDATE_KERNEL: &'static str = "alr_autoopt_update_adam";
    type State = [f32; 2];
    fn specs() -> Vec<OptionSpec> {
        adam_specs().into_iter().filter(|s| s.name == "beta2" || s.name == "eps").collect()
    }
    fn new(o: &GroupOptions, t: u64) -> Self {
        AdamDiag {
            beta2: o.beta2 as f32,
            one_minus_beta2: (1.0 - o.beta2) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - crate::base::bias_power(o.beta2, t.max(1))).sqrt()) as f32,
            eps: o.eps as f32,
        }
    }
    #[inline(always)]
    fn absorb(&self, state: &mut [f32; 2], g: f32) -> f32 {
        state[1] = self.beta2 * state[1] + self.one_minus_beta2 * g * g;
        self.diag(state)
    }
    #[inline(always)]
    fn diag(&self, state: &[f32; 2]) -> f32 {
        1.0 / (state[1].sqrt() * self.inv_sqrt_bias2 + self.eps)
    }
    fn possible(state: &[f32; 2]) -> bool {
        state[0].is_finite() && crate::checkpoint::second_moment(state[1])
    }
}

/// One group's options as the kernels read them (`#[repr(C)]`: cuda/autoopt.cu's
/// AutoOptOptions); `eps` and `beta2` are 0 where the base has none.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupOptions {
    pub nu: f64,
    pub gamma_max: f64,
    pub eps: f64,
    pub beta2: f64,
}

impl Record for GroupOptions {}

impl GroupOptions {
    fn of(options: &Options, group: usize) -> Self {
        let has = |name: &str| options.specs().iter().any(|s| s.name == name);
        let get = |name: &str| {
            if has(name) {
                options.get(group, name)
            } else {
                0.0
            }
        };
        GroupOptions { nu: options.get(group, "nu"), gamma_max: options.get(group, "gamma_max"), eps: get("eps"), beta2: get("beta2") }
    }
}

/// One group's scalars: `γ_E`, the last step's estimates and direction, and the counts
/// (`#[repr(C)]`: cuda/autoopt.cu's AutoOptGroup, which the solve kernel writes on a GPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupRecord {
    /// `γ_E` (eq. 26); `γ1` is NaN before the first step, which starts from `[γ_max, 0]`.
    pub gamma: [f64; 2],
    pub noise: f64,
    pub a: f64,
    pub c: f64,
    pub e: f64,
    pub det: f64,
    pub gamma_oracle: [f64; 2],
    /// This step's direction multipliers of `g` and `d` (eq. 14), when `moved`.
    pub coef_g: f32,
    pub coef_d: f32,
    /// 1: the last step moved θ; 0: it was skipped (zero gradient) or none was taken.
    pub moved: i32,
    pub pad: i32,
    pub steps: u64,
    pub fallbacks: u64,
    pub clamps: u64,
    pub skips: u64,
}

impl Record for GroupRecord {}

impl GroupRecord {
    /// Before the first step.
    pub const FRESH: GroupRecord = GroupRecord {
        gamma: [f64::NAN, 0.0],
        noise: 0.0,
        a: 0.0,
        c: 0.0,
        e: 0.0,
        det: 0.0,
        gamma_oracle: [0.0, 0.0],
        coef_g: 0.0,
        coef_d: 0.0,
        moved: 0,
        pad: 0,
        steps: 0,
        fallbacks: 0,
        clamps: 0,
        skips: 0,
    };

    /// `γ_E`, or the `[γ_max, 0]` it will start from before the first step.
    pub fn gamma(&self, gamma_max: f64) -> [f64; 2] {
        if self.steps == 0 {
            [gamma_max, 0.0]
        } else {
            self.gamma
        }
    }

    /// α = 1 − γ1 (step 5).
    pub fn lr(&self, gamma_max: f64) -> f64 {
        1.0 - self.gamma(gamma_max)[0]
    }

    /// β = γ2 / α (step 5).
    pub fn momentum(&self, gamma_max: f64) -> f64 {
        let gamma = self.gamma(gamma_max);
        gamma[1] / (1.0 - gamma[0])
    }

    pub fn telemetry(&self, gamma_max: f64) -> Vec<(&'static str, f64)> {
        let gamma = self.gamma(gamma_max);
        vec![
            ("V", self.noise),
            ("a", self.a),
            ("c", self.c),
            ("e", self.e),
            ("det", self.det),
            ("gamma1_oracle", self.gamma_oracle[0]),
            ("gamma2_oracle", self.gamma_oracle[1]),
            ("gamma1", gamma[0]),
            ("gamma2", gamma[1]),
            ("fallbacks", self.fallbacks as f64),
            ("clamps", self.clamps as f64),
            ("skips", self.skips as f64),
        ]
    }

    /// The direction multipliers of the last step, NaN when it did not move.
    fn direction(&self) -> [f64; 2] {
        if self.moved != 0 {
            [f64::from(self.coef_g), f64::from(self.coef_d)]
        } else {
            [f64::NAN, f64::NAN]
        }
    }

    /// The checkpoint record: γ_E, the counts, the last estimates and the direction
    /// multipliers (NaN: the group did not move).
    fn write(&self, w: &mut Writer) {
        w.f64s(&self.gamma);
        w.counts(&[self.steps, self.fallbacks, self.clamps, self.skips]);
        let [coef_g, coef_d] = self.direction();
        w.f64s(&[self.noise, self.a, self.c, self.e, self.det, self.gamma_oracle[0], self.gamma_oracle[1], coef_g, coef_d]);
    }

    /// A group record as `write` stored it, refused unless AutoOpt could have produced it.
    fn read(r: &mut Reader, group: usize) -> Result<GroupRecord> {
        let gamma = r.f64s_exact(2, "AutoOpt γ_E")?;
        let counts = r.counts_exact(4, "AutoOpt step, fallback, clamp and skip counts")?;
        let v = r.f64s_exact(9, "AutoOpt estimates")?;
        let moved = !v[7].is_nan();
        let record = GroupRecord {
            gamma: [gamma[0], gamma[1]],
            noise: v[0],
            a: v[1],
            c: v[2],
            e: v[3],
            det: v[4],
            gamma_oracle: [v[5], v[6]],
            coef_g: if moved { v[7] as f32 } else { 0.0 },
            coef_d: if moved { v[8] as f32 } else { 0.0 },
            moved: i32::from(moved),
            pad: 0,
            steps: counts[0],
            fallbacks: counts[1],
            clamps: counts[2],
            skips: counts[3],
        };
        record.check(group, moved && v[8].is_nan())?;
        Ok(record)
    }

    /// What every step keeps true (docs/algorithms.md §1): γ_E unset only before the first
    /// step, else `0 ≤ γ < 1` per component with `γ1 + γ2 < 1` (the smoothing is a convex
    /// combination of points of that region, then only lowered); fallbacks, clamps and skips
    /// are counted at most once per step; a moving direction has finite multipliers.
    fn check(&self, group: usize, half_direction: bool) -> Result<()> {
        let bad = |why: &str| Err(Error::checkpoint(format!("checkpoint AutoOpt group {group}: {why} (corrupted?)")));
        let [g1, g2] = self.gamma;
        if self.steps == 0 {
            if !g1.is_nan() || g2 != 0.0 || self.moved != 0 {
                return bad("a group that has not stepped holds a learned γ_E or direction");
            }
        } else if !((0.0..1.0).contains(&g1) && (0.0..1.0).contains(&g2) && g1 + g2 < 1.0) {
            return bad(&format!("γ_E = [{g1}, {g2}] is outside 0 ≤ γ < 1, γ1 + γ2 < 1"));
        }
        if [self.fallbacks, self.clamps, self.skips].iter().any(|&c| c > self.steps) {
            return bad("a fallback, clamp or skip count exceeds the step count");
        }
        if half_direction || (self.moved != 0 && !(self.coef_g.is_finite() && self.coef_d.is_finite())) {
            return bad("the direction multipliers are not finite");
        }
        Ok(())
    }
}

/// AutoOpt's input requirements: per-sample data with N ≥ 2.
fn check_samples(name: &str, batch_size: Option<usize>) -> Result<()> {
    let n = batch_size.ok_or_else(|| {
        Error::invalid(format!("{name} needs per-sample data: pass sum_sq (Σ_i g_i² per tensor) with batch_size, or the N × len per_sample matrices"))
    })?;
    if n < 2 {
        return Err(Error::invalid(format!("{name} needs batch_size N ≥ 2 (got {n}): the per-sample variance is undefined for one sample")));
    }
    Ok(())
}

pub fn specs<P: Precond>() -> Vec<OptionSpec> {
    let mut specs = vec![OptionSpec::fraction("nu", P::NU), OptionSpec { lo_open: true, hi_open: true, ..OptionSpec::real("gamma_max", 0.999, 0.0, 1.0) }];
    specs.extend(P::specs());
    specs
}

/// What one group's last step computed, for the oracle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimates {
    pub noise: f64,
    pub a: f64,
    pub c: f64,
    pub e: f64,
    pub det: f64,
}

/// The oracle `γ_O` (eq. 25) with the fallbacks of docs/algorithms.md §1 step 3; `true` when
/// the 1-D fallback was taken.
pub fn oracle(est: &Estimates, gamma_max: f64) -> ([f64; 2], bool) {
    let Estimates { noise, a, c, e, det } = *est;
    if [noise, a, c, e, det].iter().all(|x| x.is_finite()) && det > DET_RTOL * a * e {
        let gamma1 = noise * (e - c) / det;
        let gamma2 = noise * c / det;
        let valid = gamma1.is_finite() && gamma2.is_finite() && (0.0..=gamma_max).contains(&gamma1) && gamma2 >= 0.0 && gamma1 + gamma2 < 1.0;
        if valid {
            return ([gamma1, gamma2], false);
        }
    }
    ([(noise / a).min(gamma_max), 0.0], true)
}

/// Smoothing (eq. 26): `min((1−ν) γ_O + ν γ_E, γ_max)` per component; `true` when the bound bit.
pub fn smooth(gamma_oracle: [f64; 2], gamma: [f64; 2], nu: f64, gamma_max: f64) -> ([f64; 2], bool) {
    let raw = [(1.0 - nu) * gamma_oracle[0] + nu * gamma[0], (1.0 - nu) * gamma_oracle[1] + nu * gamma[1]];
    let clamped = raw[0] > gamma_max || raw[1] > gamma_max;
    ([raw[0].min(gamma_max), raw[1].min(gamma_max)], clamped)
}

/// Pass 1's weights (eqs. 22–24): `w = D` as the base state will be after absorbing g (the
/// state itself changes in pass 2), `y = d`.
pub struct Moments<P>(PhantomData<P>);

impl<P: Precond> KernelRule for Moments<P> {
    type State = P::State;
    type Coeffs = GroupOptions;
    type Record = GroupRecord;
    type Prepared = P;
    const KERNEL: &'static str = P::MOMENTS_KERNEL;
    fn prepare(c: &GroupOptions, r: &GroupRecord) -> P {
        P::new(c, r.steps + 1)
    }
}

impl<P: Precond> MomentRule for Moments<P> {
    #[inline(always)]
    fn weights(precond: &P, st: &P::State, g: f32) -> (f32, f32) {
        (precond.absorb(&mut st.clone(), g), st.direction())
    }
}

/// The solve (steps 1–5 of docs/algorithms.md §1) from a group's four sums.
pub struct Solve;

/// The solve's by-value scalar: the batch size N.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SolveParams {
    pub n: f64,
}

impl SolveRule for Solve {
    type Record = GroupRecord;
    type Coeffs = GroupOptions;
    type Params = SolveParams;
    const KERNEL: &'static str = "alr_autoopt_solve";
    // A non-finite sum can only come from a non-finite gradient or per-sample value (D > 0 and
    // d are finite), reported before any state moved.
    const REQUIRE_FINITE: bool = true;

    fn solve(p: &SolveParams, o: &GroupOptions, sums: &[f64; 4], gs: &mut GroupRecord) {
        let n = p.n;
        let [spread, a, c, e] = *sums;
        // Step 1: V = Σ D (S − N g²) / (N (N−1)) (eq. 22), clamped at 0.
        let est = Estimates { noise: (spread / (n * (n - 1.0))).max(0.0), a, c, e, det: a * e - c * c };
        let start = gs.gamma(o.gamma_max);
        (gs.noise, gs.a, gs.c, gs.e, gs.det) = (est.noise, a, c, e, est.det);
        gs.steps += 1;
        if a == 0.0 {
            // Zero gradient: nothing to scale; the base state still absorbs g in pass 2
            // (D is formed before the solve), γ_E, d and θ stay as they are.
            (gs.gamma, gs.gamma_oracle, gs.moved) = (start, [0.0, 0.0], 0);
            gs.skips += 1;
            return;
        }
        let (gamma_oracle, fell_back) = oracle(&est, o.gamma_max);
        let (gamma, clamped) = smooth(gamma_oracle, start, o.nu, o.gamma_max);
        (gs.gamma, gs.gamma_oracle) = (gamma, gamma_oracle);
        // Steps 5–6: ĝ = (1 − γ1 − γ2) g + γ2 d (eq. 14).
        (gs.coef_g, gs.coef_d, gs.moved) = ((1.0 - gamma[0] - gamma[1]) as f32, gamma[1] as f32, 1);
        gs.fallbacks += u64::from(fell_back);
        gs.clamps += u64::from(clamped);
    }
}

/// Pass 2: absorbs g into the base state and, where the group moved, sets
/// `d ← ĝ = coef_g g + coef_d d` (eq. 14) with displacement `D ĝ` (eq. 9).
pub struct Update<P>(PhantomData<P>);

/// Pass 2's scalars: the preconditioner at this step, and the direction when the group moved.
#[derive(Clone, Copy)]
pub struct Pass2<P> {
    precond: P,
    direction: Option<(f32, f32)>,
}

impl<P: Precond> KernelRule for Update<P> {
    type State = P::State;
    type Coeffs = GroupOptions;
    type Record = GroupRecord;
    type Prepared = Pass2<P>;
    const KERNEL: &'static str = P::UPDATE_KERNEL;
    fn prepare(c: &GroupOptions, r: &GroupRecord) -> Pass2<P> {
        // The solve has counted this step already.
        Pass2 { precond: P::new(c, r.steps), direction: (r.moved != 0).then_some((r.coef_g, r.coef_d)) }
    }
}

impl<P: Precond> ElementRule for Update<P> {
    const AFTER_THREADED_REDUCTION: bool = true;
    #[inline(always)]
    fn advance(p: &Pass2<P>, g: f32, _theta: f32, st: &mut P::State) -> f32 {
        let diag = p.precond.absorb(st, g);
        match p.direction {
            Some((coef_g, coef_d)) => {
                let direction = coef_g * g + coef_d * st.direction();
                st.set_direction(direction);
                diag * direction
            }
            None => 0.0,
        }
    }
    #[inline(always)]
    fn delta(p: &Pass2<P>, _g: f32, _theta: f32, st: &P::State) -> f32 {
        match p.direction {
            Some(_) => p.precond.diag(st) * st.direction(),
            None => 0.0,
        }
    }
}

/// Which input made a group's sums non-finite (none: an overflow): the same checks and messages
/// as the optimizer's own validation, which AutoOpt skips (`checks_own_inputs`).
fn bad_input<D: Device>(device: &D, inputs: &StepInputs, members: &[usize]) -> Option<Error> {
    let samples = inputs.samples.as_ref().expect("checked: AutoOpt has per-sample data");
    members.iter().find_map(|&t| {
        let (what, data) = match &samples.data {
            SampleData::SumSq(s) => ("sum_sq", s[t]),
            SampleData::PerSample(rows) => ("per_sample", rows[t]),
        };
        [("grad", inputs.grads[t]), (what, data)]
            .iter()
            .find_map(|(what, x)| device.check(what, t, x, false).err())
            .or_else(|| matches!(samples.data, SampleData::SumSq(_)).then(|| device.check("sum_sq", t, &data, true).err()).flatten())
    })
}

pub struct AutoOpt<P: Precond, D: Device> {
    device: D,
    /// Per tensor, per element.
    states: Vec<D::State<P::State>>,
    groups: D::Records<GroupRecord>,
    /// Per group, as the kernels read them (`options_changed`).
    options: D::Records<GroupOptions>,
    /// Pass 1's sums, per tensor; group g adds its members.
    sums: D::Sums,
    /// Sharded: the communicator that adds pass 1's sums over the processes.
    shards: Shards,
}

impl<P: Precond, D: Device> AutoOpt<P, D> {
    pub fn new(device: &D, layout: &crate::optimizer::Layout, shards: Shards) -> Result<Self> {
        device.require(&[P::MOMENTS_KERNEL, P::UPDATE_KERNEL, Solve::KERNEL])?;
        Ok(AutoOpt {
            states: device.alloc_per_tensor(&layout.lens)?,
            groups: device.records(&crate::backend::filled(layout.n_groups(), GroupRecord::FRESH)?)?,
            options: device.records(&crate::backend::filled(layout.n_groups(), GroupOptions::default())?)?,
            sums: device.sums(&layout.lens, &layout.members)?,
            device: device.clone(),
            shards,
        })
    }

    fn record(&self, group: usize) -> Result<GroupRecord> {
        Ok(self.device.read_records(&self.groups)?[group])
    }

    /// Pass 1 and the per-group solve (steps 1–5). Nothing changes when a sum is not finite;
    /// the error then names the input that made it so.
    fn estimate(&mut self, ctx: &Context, inputs: &StepInputs) -> Result<()> {
        let samples = inputs.samples.as_ref().expect("checked: AutoOpt has per-sample data");
        // Each entry of the caller's data is k·g_i: k = 1 ("sample") or N ("mean", g_i/N given).
        let k = samples.square_scale().sqrt();
        let (device, states, groups, comm) = (&self.device, &self.states, &self.groups, self.shards.as_deref());
        // Pass 1 only reads the state: a failed reduction over shards changes nothing.
        reduced_pass::<Solve, D>(device, &mut self.sums, comm, false, |sums, _| {
            for (t, state) in states.iter().enumerate() {
                let group = ctx.layout.groups[t];
                let data = match &samples.data {
                    SampleData::SumSq(s) => SampleTensor::SumSq(s[t]),
                    SampleData::PerSample(rows) => SampleTensor::Rows(rows[t]),
                };
                let view = SampleView { data, n: samples.batch_size, k };
                let options = GroupOptions::of(ctx.options, group);
                device.moments::<Moments<P>>(&options, groups, group, &inputs.grads[t], state, &view, sums, t)?;
            }
            // Sharded, a bad input here would make every process's reduced sums non-finite:
            // this process names it (the others learn that some process refused).
            if comm.is_some() && device.memory() == Memory::Host {
                refuse_own_bad_inputs::<Solve, D>(device, sums, comm, 0..4, |group| bad_input(device, inputs, &ctx.layout.members[group]))?;
            }
            Ok(())
        })?;
        let params = SolveParams { n: samples.batch_size as f64 };
        match self.device.solve::<Solve>(&params, &self.options, &mut self.groups, &mut self.sums)? {
            None => Ok(()),
            Some(group) => Err(bad_input(&self.device, inputs, &ctx.layout.members[group])
                .unwrap_or_else(|| Error::non_finite("the per-sample variance overflowed: per-sample gradients are too large for float32 products"))),
        }
    }

    /// One step: pass 1 and the solve, then pass 2 (its displacement scaled by a wrapper's
    /// `scale` when given).
    fn take_step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: Option<f32>) -> Result<()> {
        self.estimate(ctx, inputs)?;
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let options = GroupOptions::of(ctx.options, group);
            for &t in members {
                self.device.update_by::<Update<P>>(&options, &self.groups, group, &mut params[t], &inputs.grads[t], &mut self.states[t], scale)?;
            }
        }
        Ok(())
    }
}

impl<P: Precond, D: Device> Algorithm for AutoOpt<P, D> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts { per_sample: true, checks_own_inputs: true, ..Accepts::default() }
    }

    fn check(&self, _ctx: &Context, inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        check_samples(P::NAME, inputs.samples.as_ref().map(|s| s.batch_size))
    }

    fn abstain(&mut self, _ctx: &Context) -> bool {
        abstain::<Solve, D>(&self.device, &self.sums, self.shards.as_deref())
    }

    fn options_changed(&mut self, ctx: &Context) -> Result<()> {
        let options: Vec<GroupOptions> = (0..ctx.layout.n_groups()).map(|g| GroupOptions::of(ctx.options, g)).collect();
        self.device.write_records(&mut self.options, &options)
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        self.estimate(ctx, inputs)?;
        let mut g_dot_s = 0.0;
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let options = GroupOptions::of(ctx.options, group);
            for &t in members {
                g_dot_s += self.device.advance_dot::<Update<P>>(&options, &self.groups, group, &params[t], &inputs.grads[t], &mut self.states[t])?;
            }
        }
        Ok(g_dot_s)
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let options = GroupOptions::of(ctx.options, group);
            for &t in members {
                self.device.apply_scaled::<Update<P>>(&options, &self.groups, group, &mut params[t], &inputs.grads[t], &self.states[t], scale)?;
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

    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(self.record(group)?.lr(ctx.options.get(group, "gamma_max")))
    }

    fn momentum(&self, ctx: &Context, group: usize) -> Result<f64> {
        Ok(self.record(group)?.momentum(ctx.options.get(group, "gamma_max")))
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        Ok(self.record(group)?.telemetry(ctx.options.get(group, "gamma_max")))
    }

    fn started(&self) -> Result<bool> {
        Ok(self.device.read_records(&self.groups)?.iter().any(|g| g.steps > 0))
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        self.device.read_records(&self.groups)?.iter().for_each(|gs| gs.write(w));
        for s in &self.states {
            self.device.with_state(s, |s| w.elem_states(s))?;
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let groups = (0..ctx.layout.n_groups()).map(|g| GroupRecord::read(r, g)).collect::<Result<Vec<_>>>()?;
        let rule = "the direction d must be finite, v or s ≥ 0";
        let states = crate::checkpoint::read_elem_states(r, &ctx.layout.lens, P::NAME, P::possible, rule)?;
        for (buffer, values) in self.states.iter_mut().zip(&states) {
            self.device.write_state(buffer, values)?;
        }
        self.device.write_records(&mut self.groups, &groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(noise: f64, a: f64, c: f64, e: f64) -> Estimates {
        Estimates { noise, a, c, e, det: a * e - c * c }
    }

    #[test]
    fn oracle_solves_the_2x2_system() {
        // Â γ = [V, V] with Â = [[a, a−c], [a−c, a−2c+e]] (eq. 24).
        let e = est(0.1, 2.0, 0.5, 1.0);
        let (g, fell_back) = oracle(&e, 0.999);
        assert!(!fell_back);
        let (a, c, ee) = (2.0, 0.5, 1.0);
        let r1 = a * g[0] + (a - c) * g[1];
        let r2 = (a - c) * g[0] + (a - 2.0 * c + ee) * g[1];
        assert!((r1 - 0.1).abs() < 1e-12 && (r2 - 0.1).abs() < 1e-12, "{g:?}");
    }

    #[test]
    fn oracle_falls_back_without_history_and_outside_the_region() {
        // t = 1: d = 0 → c = e = 0 → det = 0.
        assert_eq!(oracle(&est(0.5, 1.0, 0.0, 0.0), 0.999), ([0.5, 0.0], true));
        // V/a above γ_max is clamped.
        assert_eq!(oracle(&est(5.0, 1.0, 0.0, 0.0), 0.999), ([0.999, 0.0], true));
        // c < 0 gives γ2 < 0: rejected.
        assert!(oracle(&est(0.1, 2.0, -0.5, 1.0), 0.999).1);
    }

    #[test]
    fn smoothing_is_bounded() {
        let (g, clamped) = smooth([0.999, 0.5], [0.999, 0.999], 0.9, 0.999);
        assert!(!clamped && g == [0.999, 0.9491]);
        let (g, clamped) = smooth([2.0, 0.0], [0.999, 0.0], 0.5, 0.999);
        assert!(clamped && g[0] == 0.999);
    }
}

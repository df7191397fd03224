//! AutoOpt (paper 001, Lancewicki & Kopru): a learning rate **and** a momentum per group, from
//! the per-sample gradient variance (ALGORITHMS.md §1).
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

use crate::algorithm::{Accepts, Algorithm, Context};
use crate::backend::cpu::{self, ElemState, COLUMN_BLOCK};
use crate::base::adam::adam_specs;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, SampleData, Samples, StepInputs};
use crate::options::{OptionSpec, Options};

/// The 2-D solution is rejected as ill-conditioned when `det ≤ DET_RTOL · a e` (the authors' code).
const DET_RTOL: f64 = 1e-12;

/// The base optimizer's diagonal preconditioner `D` and the per-element state carrying it.
pub trait Precond: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    /// Default smoothing ν (eq. 26), chosen by the Fashion-MNIST benchmark (README, "Sensitivity").
    const NU: f64;
    /// `d` alone (SGD), or `[d, v or s]`.
    type State: DirectionSlot;
    fn specs() -> Vec<OptionSpec>;
    /// The group's coefficients at its step `t` (counting from 1).
    fn new(options: &Options, group: usize, t: u64) -> Self;
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
    type State = f32;
    fn specs() -> Vec<OptionSpec> {
        Vec::new()
    }
    fn new(_: &Options, _: usize, _: u64) -> Self {
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
    type State = [f32; 2];
    fn specs() -> Vec<OptionSpec> {
        vec![OptionSpec::positive("eps", 1e-10)]
    }
    fn new(o: &Options, group: usize, _: u64) -> Self {
        AdagradDiag { eps: o.get(group, "eps") as f32 }
    }
    #[inline(always)]
    fn absorb(&self, state: &mut [f32; 2], g: f32) -> f32 {
        state[1] += g * g;
        self.diag(state)
    }
    #[inline(always)]
    fn diag(&self, state: &[f32; 2]) -> f32 {
        1.0 / (state[1].sqrt() + self.eps)
    }    fn possible(state: &[f32; 2]) -> bool {
        state[0].is_finite() && crate::checkpoint::second_moment(state[1])
    }
}

/// AutoAdam: `v ← β2 v + (1−β2) g²`, `D = 1/(√(v/(1−β2^t)) + ε)`. The first-moment bias
/// factor of eq. 11 is dropped (ALGORITHMS.md §1 decision: β is adapted instead).
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
    type State = [f32; 2];
    fn specs() -> Vec<OptionSpec> {
        adam_specs().into_iter().filter(|s| s.name == "beta2" || s.name == "eps").collect()
    }
    fn new(o: &Options, group: usize, t: u64) -> Self {
        let beta2 = o.get(group, "beta2");
        AdamDiag {
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - crate::base::bias_power(beta2, t.max(1))).sqrt()) as f32,
            eps: o.get(group, "eps") as f32,
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
    }    fn possible(state: &[f32; 2]) -> bool {
        state[0].is_finite() && crate::checkpoint::second_moment(state[1])
    }
}

/// What one group's last step computed (telemetry).
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimates {
    pub noise: f64,
    pub a: f64,
    pub c: f64,
    pub e: f64,
    pub det: f64,
    pub gamma_oracle: [f64; 2],
}

/// One group's scalars; the same 15-value record in a checkpoint whichever device ran the steps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupState {
    /// `γ_E` (eq. 26).
    gamma: [f64; 2],
    steps: u64,
    fallbacks: u64,
    clamps: u64,
    skips: u64,
    last: Estimates,
    /// The multipliers of `g` and `d` in this step's direction (eq. 14); None: skipped.
    direction: Option<(f32, f32)>,
}

impl GroupState {
    /// Before the first step: γ_E is set to [γ_max, 0] then, from the option's value at that time.
    pub(crate) const FRESH: GroupState = GroupState {
        gamma: [f64::NAN, 0.0],
        steps: 0,
        fallbacks: 0,
        clamps: 0,
        skips: 0,
        last: Estimates { noise: 0.0, a: 0.0, c: 0.0, e: 0.0, det: 0.0, gamma_oracle: [0.0, 0.0] },
        direction: None,
    };

    /// `γ_E`, or the `[γ_max, 0]` it will start from before the first step.
    pub(crate) fn gamma(&self, gamma_max: f64) -> [f64; 2] {
        if self.steps == 0 {
            [gamma_max, 0.0]
        } else {
            self.gamma
        }
    }

    /// α = 1 − γ1 (step 5).
    pub(crate) fn lr(&self, gamma_max: f64) -> f64 {
        1.0 - self.gamma(gamma_max)[0]
    }

    /// β = γ2 / α (step 5).
    pub(crate) fn momentum(&self, gamma_max: f64) -> f64 {
        let gamma = self.gamma(gamma_max);
        gamma[1] / (1.0 - gamma[0])
    }

    pub(crate) fn telemetry(&self, gamma_max: f64) -> Vec<(&'static str, f64)> {
        let est = &self.last;
        let gamma = self.gamma(gamma_max);
        vec![
            ("V", est.noise),
            ("a", est.a),
            ("c", est.c),
            ("e", est.e),
            ("det", est.det),
            ("gamma1_oracle", est.gamma_oracle[0]),
            ("gamma2_oracle", est.gamma_oracle[1]),
            ("gamma1", gamma[0]),
            ("gamma2", gamma[1]),
            ("fallbacks", self.fallbacks as f64),
            ("clamps", self.clamps as f64),
            ("skips", self.skips as f64),
        ]
    }

    /// The checkpoint record: γ_E, the counts, the last estimates and the direction
    /// multipliers (NaN: none, the group did not move). The counts travel as integers
    /// (`counts`); their slots here carry them as f64 for the CUDA mirror.
    pub(crate) fn record(&self) -> [f64; 15] {
        let e = &self.last;
        let (coef_g, coef_d) = self.direction.map_or((f64::NAN, f64::NAN), |(g, d)| (f64::from(g), f64::from(d)));
        [
            self.gamma[0],
            self.gamma[1],
            self.steps as f64,
            self.fallbacks as f64,
            self.clamps as f64,
            self.skips as f64,
            e.noise,
            e.a,
            e.c,
            e.e,
            e.det,
            e.gamma_oracle[0],
            e.gamma_oracle[1],
            coef_g,
            coef_d,
        ]
    }

    pub(crate) fn from_record(v: &[f64; 15]) -> GroupState {
        GroupState {
            gamma: [v[0], v[1]],
            steps: v[2] as u64,
            fallbacks: v[3] as u64,
            clamps: v[4] as u64,
            skips: v[5] as u64,
            last: Estimates { noise: v[6], a: v[7], c: v[8], e: v[9], det: v[10], gamma_oracle: [v[11], v[12]] },
            direction: if v[13].is_nan() { None } else { Some((v[13] as f32, v[14] as f32)) },
        }
    }

    /// Steps, fallbacks, clamps and skips.
    fn counts(&self) -> [u64; 4] {
        [self.steps, self.fallbacks, self.clamps, self.skips]
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        let v = self.record();
        w.f64s(&[v[0], v[1]]);
        w.counts(&self.counts());
        w.f64s(&v[6..]);
    }

    /// A group record as `write` stored it, refused unless AutoOpt could have produced it.
    pub(crate) fn read(r: &mut Reader, group: usize) -> Result<GroupState> {
        let gamma = r.f64s_exact(2, "AutoOpt γ_E")?;
        let counts = r.counts_exact(4, "AutoOpt step, fallback, clamp and skip counts")?;
        let rest = r.f64s_exact(9, "AutoOpt estimates")?;
        let mut v = [0.0f64; 15];
        v[..2].copy_from_slice(&gamma);
        v[2..6].iter_mut().zip(&counts).for_each(|(slot, &c)| *slot = c as f64);
        v[6..].copy_from_slice(&rest);
        let gs = GroupState::from_record(&v);
        gs.check(group)?;
        Ok(GroupState { steps: counts[0], fallbacks: counts[1], clamps: counts[2], skips: counts[3], ..gs })
    }

    /// What every step keeps true (ALGORITHMS.md §1): γ_E unset only before the first step,
    /// else `0 ≤ γ ≤ γ_max < 1` per component with `γ1 + γ2 < 1` (the smoothing is a convex
    /// combination of points of that region, then only lowered); fallbacks, clamps and skips
    /// are counted at most once per step; a moving direction has finite multipliers.
    fn check(&self, group: usize) -> Result<()> {
        let bad = |why: &str| Err(Error::checkpoint(format!("checkpoint AutoOpt group {group}: {why} (corrupted?)")));
        let [g1, g2] = self.gamma;
        if self.steps == 0 {
            if !g1.is_nan() || g2 != 0.0 || self.direction.is_some() {
                return bad("a group that has not stepped holds a learned γ_E or direction");
            }
        } else if !((0.0..1.0).contains(&g1) && (0.0..1.0).contains(&g2) && g1 + g2 < 1.0) {
            return bad(&format!("γ_E = [{g1}, {g2}] is outside 0 ≤ γ < 1, γ1 + γ2 < 1"));
        }
        if [self.fallbacks, self.clamps, self.skips].iter().any(|&c| c > self.steps) {
            return bad("a fallback, clamp or skip count exceeds the step count");
        }
        if let Some((cg, cd)) = self.direction {
            if !(cg.is_finite() && cd.is_finite()) {
                return bad("the direction multipliers are not finite");
            }
        }
        Ok(())
    }
}

/// AutoOpt's input requirements (also the CUDA engine's): per-sample data with N ≥ 2.
pub(crate) fn check_samples(name: &str, batch_size: Option<usize>) -> Result<()> {
    let n = batch_size.ok_or_else(|| {
        Error::invalid(format!(
            "{name} needs per-sample data: pass sum_sq (Σ_i g_i² per tensor) with batch_size, or the N × len per_sample matrices"
        ))
    })?;
    if n < 2 {
        return Err(Error::invalid(format!(
            "{name} needs batch_size N ≥ 2 (got {n}): the per-sample variance is undefined for one sample"
        )));
    }
    Ok(())
}

pub struct AutoOpt<P: Precond> {
    /// Per tensor, per element.
    states: Vec<Vec<P::State>>,
    groups: Vec<GroupState>,
}

pub fn specs<P: Precond>() -> Vec<OptionSpec> {
    let mut specs = vec![OptionSpec::fraction("nu", P::NU), OptionSpec { lo_open: true, hi_open: true, ..OptionSpec::real("gamma_max", 0.999, 0.0, 1.0) }];
    specs.extend(P::specs());
    specs
}

/// The oracle `γ_O` (eq. 25) with the fallbacks of ALGORITHMS.md §1 step 3; `true` when the
/// 1-D fallback was taken.
pub fn oracle(est: &Estimates, gamma_max: f64) -> ([f64; 2], bool) {
    let Estimates { noise, a, c, e, det, .. } = *est;
    if [noise, a, c, e, det].iter().all(|x| x.is_finite()) && det > DET_RTOL * a * e {
        let gamma1 = noise * (e - c) / det;
        let gamma2 = noise * c / det;
        let valid = gamma1.is_finite()
            && gamma2.is_finite()
            && (0.0..=gamma_max).contains(&gamma1)
            && gamma2 >= 0.0
            && gamma1 + gamma2 < 1.0;
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

impl<P: Precond> AutoOpt<P> {
    pub fn new(lens: &[usize], n_groups: usize) -> Result<Self> {
        Ok(AutoOpt { states: cpu::filled_per_tensor(lens, P::State::default())?, groups: vec![GroupState::FRESH; n_groups] })
    }

    /// `γ_E`, or the `[γ_max, 0]` it will start from before the first step.
    fn gamma(&self, ctx: &Context, group: usize) -> [f64; 2] {
        self.groups[group].gamma(ctx.options.get(group, "gamma_max"))
    }

    /// Pass 1 over one tensor (reads only): returns
    /// `[Σ D (S − N g²), Σ D g g, Σ D g d, Σ D d d]`, summed over column blocks in block order
    /// (the blocks may run on several threads: `cpu::map_blocks`).
    fn reduce_tensor(precond: P, grad: &[f32], state: &[P::State], samples: &Samples, tensor: usize) -> [f64; 4] {
        let n = samples.batch_size;
        // Each entry of the caller's data is k·g_i: k = 1 ("sample") or N ("mean", g_i/N given).
        let k = samples.square_scale().sqrt();
        let len = grad.len();
        // Block scratch (one per worker, reused by its blocks) for the per-sample matrix only; on
        // the heap, not the stack: a host thread may have a small stack.
        let scratch_len = if matches!(samples.data, SampleData::PerSample(_)) { COLUMN_BLOCK.min(len) } else { 0 };
        let block_scratch = || (vec![0.0f32; scratch_len], cpu::RowSums::new(scratch_len));
        // D as the base state will be after absorbing g (the state itself changes in pass 2), and d.
        let weights = |st: &P::State, gj: f32| (precond.absorb(&mut st.clone(), gj), st.direction());
        let reduce_block = |(spread, sums): &mut (Vec<f32>, cpu::RowSums), block: usize| {
            let (start, end) = (block * COLUMN_BLOCK, ((block + 1) * COLUMN_BLOCK).min(len));
            let (g, st) = (&grad[start..end], &state[start..end]);
            match &samples.data {
                SampleData::SumSq(s) => {
                    // Σ D (k² S − N g²) = k² Σ D S − N a: both sums are f64, so nothing cancels
                    // that a per-element difference would have kept.
                    let ([d_s, a, c, e], negative) = cpu::weighted_moments(st, g, &s[tensor][start..end], weights);
                    // A negative S poisons the sum (reported by `bad_inputs`).
                    let d_s = if negative { f64::NAN } else { d_s };
                    [k * k * d_s - n as f64 * a, a, c, e]
                }
                SampleData::PerSample(rows) => {
                    let spread = &mut spread[..end - start];
                    cpu::spread_from_rows(rows[tensor], n, len, start, k, g, sums, spread);
                    cpu::weighted_moments(st, g, spread, weights).0
                }
            }
        };
        let floats_read = len * match &samples.data {
            SampleData::SumSq(_) => 2 + P::State::FLOATS,
            SampleData::PerSample(_) => n + 1 + P::State::FLOATS,
        };
        let blocks = cpu::map_blocks(len.div_ceil(COLUMN_BLOCK), floats_read, block_scratch, reduce_block);
        blocks.into_iter().fold([0.0f64; 4], |total, block| std::array::from_fn(|i| total[i] + block[i]))
    }

    /// Pass 1 and the per-group solve (steps 1–5), changing nothing. A non-finite sum here can
    /// only come from a non-finite gradient or per-sample value (D > 0 and d are finite), which
    /// is then reported with the tensor and index before any state moved; so the optimizer does
    /// not read those inputs an extra time for AutoOpt (`Accepts::checks_own_inputs`).
    fn estimate(&self, ctx: &Context, inputs: &StepInputs) -> Result<Vec<Solve>> {
        let samples = inputs.samples.as_ref().expect("checked: AutoOpt has per-sample data");
        let n = samples.batch_size as f64;
        let mut solves = Vec::with_capacity(self.groups.len());
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let gs = &self.groups[group];
            let precond = P::new(ctx.options, group, gs.steps + 1);
            let mut sums = [0.0f64; 4];
            for &t in members {
                let part = Self::reduce_tensor(precond, inputs.grads[t], &self.states[t], samples, t);
                sums.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            }
            // A negative S makes the first sum NaN (see reduce_tensor), so this covers it too.
            if !sums.iter().all(|s| s.is_finite()) {
                return Err(bad_inputs(inputs, samples, members));
            }

            let [spread, a, c, e] = sums;
            let mut est = Estimates { noise: (spread / (n * (n - 1.0))).max(0.0), a, c, e, det: a * e - c * c, gamma_oracle: [0.0, 0.0] };
            if a == 0.0 {
                // Zero gradient: nothing to scale; the base state still absorbs g in pass 2
                // (D is formed before the solve), γ_E, d and θ stay as they are.
                solves.push(Solve { est, gamma: gs.gamma, fell_back: false, clamped: false, direction: None });
                continue;
            }
            let gamma_max = ctx.options.get(group, "gamma_max");
            let (gamma_oracle, fell_back) = oracle(&est, gamma_max);
            est.gamma_oracle = gamma_oracle;
            let (gamma, clamped) = smooth(gamma_oracle, self.gamma(ctx, group), ctx.options.get(group, "nu"), gamma_max);
            let direction = Some(((1.0 - gamma[0] - gamma[1]) as f32, gamma[1] as f32));
            solves.push(Solve { est, gamma, fell_back, clamped, direction });
        }
        Ok(solves)
    }

    /// Records the solves; from here on the step cannot fail.
    fn commit(&mut self, ctx: &Context, solves: Vec<Solve>) {
        for (group, solve) in solves.into_iter().enumerate() {
            let gamma = if solve.direction.is_none() { self.gamma(ctx, group) } else { solve.gamma };
            let gs = &mut self.groups[group];
            gs.steps += 1;
            gs.gamma = gamma;
            gs.fallbacks += u64::from(solve.fell_back);
            gs.clamps += u64::from(solve.clamped);
            gs.skips += u64::from(solve.direction.is_none());
            gs.last = solve.est;
            gs.direction = solve.direction;
        }
    }

    /// Pass 2: absorbs g into the base state, and where the group was not skipped sets
    /// `d ← ĝ = coef_g g + coef_d d` (eq. 14) and either moves `θ ← θ − D ĝ` (eq. 9) or only
    /// sums `g·D ĝ` (GI's proposal). Returns that sum (0 when moving).
    fn pass2(&mut self, ctx: &Context, grads: &[&[f32]], mut mode: Pass2) -> f64 {
        let mut g_dot_s = 0.0;
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let gs = &self.groups[group];
            let precond = P::new(ctx.options, group, gs.steps);
            let Some((coef_g, coef_d)) = gs.direction else {
                for &t in members {
                    self.states[t].iter_mut().zip(grads[t]).for_each(|(st, &g)| {
                        precond.absorb(st, g);
                    });
                }
                continue;
            };
            let displacement = |g: f32, _: f32, st: &mut P::State| {
                let diag = precond.absorb(st, g);
                let direction = coef_g * g + coef_d * st.direction();
                st.set_direction(direction);
                diag * direction
            };
            for &t in members {
                match &mut mode {
                    Pass2::Move(params) => cpu::update_in_parts(params[t], grads[t], &mut self.states[t], displacement),
                    Pass2::Propose(params) => g_dot_s += cpu::advance_dot(params[t], grads[t], &mut self.states[t], displacement),
                }
            }
        }
        g_dot_s
    }
}

/// What pass 2 does with the displacement.
enum Pass2<'a, 'b> {
    Move(&'a mut [&'b mut [f32]]),
    Propose(&'a [&'b mut [f32]]),
}

/// Which input made pass 1's sums non-finite or negative (called only then): the same checks
/// and messages as the optimizer's own validation, which AutoOpt skips (`checks_own_inputs`).
fn bad_inputs(inputs: &StepInputs, samples: &Samples, members: &[usize]) -> Error {
    for &t in members {
        let (what, data) = match &samples.data {
            SampleData::SumSq(s) => ("sum_sq", s[t]),
            SampleData::PerSample(rows) => ("per_sample", rows[t]),
        };
        for (what, data) in [("grad", inputs.grads[t]), (what, data)] {
            if let Some(i) = cpu::first_non_finite(data) {
                return Error::non_finite(format!("tensor {t}: {what}[{i}] is {}", data[i]));
            }
        }
        if let (SampleData::SumSq(_), Some(i)) = (&samples.data, cpu::first_negative(data)) {
            return Error::invalid(format!("tensor {t}: sum_sq[{i}] = {} is negative; it must be ≥ 0", data[i]));
        }
    }
    Error::non_finite("the per-sample variance overflowed: per-sample gradients are too large for float32 products")
}

/// Every tensor's element states (checkpoints), each checked to be one AutoOpt can produce.
pub(crate) fn read_states<P: Precond>(ctx: &Context, r: &mut Reader) -> Result<Vec<Vec<P::State>>> {
    crate::checkpoint::read_elem_states(r, &ctx.layout.lens, P::NAME, P::possible, "the direction d must be finite, v or s ≥ 0")
}

/// One group's outcome of pass 1.
struct Solve {
    est: Estimates,
    gamma: [f64; 2],
    fell_back: bool,
    clamped: bool,
    direction: Option<(f32, f32)>,
}

impl<P: Precond> Algorithm for AutoOpt<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts { per_sample: true, checks_own_inputs: true, ..Accepts::default() }
    }

    fn check(&self, _ctx: &Context, inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        check_samples(P::NAME, inputs.samples.as_ref().map(|s| s.batch_size))
    }

    fn propose(&mut self, ctx: &Context, params: &[&mut [f32]], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        let solves = self.estimate(ctx, inputs)?;
        self.commit(ctx, solves);
        Ok(self.pass2(ctx, &inputs.grads, Pass2::Propose(params)))
    }

    fn apply(&self, ctx: &Context, params: &mut [&mut [f32]], inputs: &StepInputs, scale: f32) {
        for (group, members) in ctx.layout.members.iter().enumerate() {
            if self.groups[group].direction.is_none() {
                continue;
            }
            let precond = P::new(ctx.options, group, self.groups[group].steps);
            for &t in members {
                cpu::apply_scaled(params[t], inputs.grads[t], &self.states[t], scale, |_, _, st| precond.diag(st) * st.direction());
            }
        }
    }

    fn step(&mut self, ctx: &Context, params: &mut [&mut [f32]], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        let solves = self.estimate(ctx, inputs)?;
        self.commit(ctx, solves);
        self.pass2(ctx, &inputs.grads, Pass2::Move(params));
        Ok(())
    }

    fn lr(&self, ctx: &Context, group: usize) -> f64 {
        self.groups[group].lr(ctx.options.get(group, "gamma_max"))
    }

    fn momentum(&self, ctx: &Context, group: usize) -> f64 {
        self.groups[group].momentum(ctx.options.get(group, "gamma_max"))
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Vec<(&'static str, f64)> {
        self.groups[group].telemetry(ctx.options.get(group, "gamma_max"))
    }

    fn started(&self) -> bool {
        self.groups.iter().any(|g| g.steps > 0)
    }

    fn save(&self, w: &mut Writer) {
        self.groups.iter().for_each(|gs| gs.write(w));
        for s in &self.states {
            w.f32s(&cpu::states_to_floats(s));
        }
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let groups = (0..self.groups.len()).map(|g| GroupState::read(r, g)).collect::<Result<Vec<_>>>()?;
        let states = read_states::<P>(ctx, r)?;
        (self.groups, self.states) = (groups, states);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(noise: f64, a: f64, c: f64, e: f64) -> Estimates {
        Estimates { noise, a, c, e, det: a * e - c * c, gamma_oracle: [0.0; 2] }
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

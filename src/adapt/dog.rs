//! DoG, distance over gradients (Ivgi, Hinder & Carmon 2023), as dog-optimizer 1.0.3's `DoG`
//! implements it (docs/algorithms.md §6: the reference *is* the specification). Per group
//! (the reference treats a group's tensors as one vector), with `g ← g + λθ` first:
//!
//! ```text
//! first step:  x0 ← θ;  r̄ = reps_rel · (1 + ‖θ‖);  G = ‖g‖² + ε
//! later:       r̄ ← max(r̄, ‖θ − x0‖);  G ← G + ‖g‖²
//! η = lr · r̄ / √G   (first step with init_eta set: η = init_eta, and reps_rel counts as 0)
//! θ ← θ − η g
//! ```
//!
//! Pass 1 (a dot pass) reduces `[‖θ − x0‖², ‖g‖²]` per tensor (storing x0 at the first step),
//! the solve updates each group's `#[repr(C)]` record, pass 2 reads η from it: two passes, since
//! η needs this step's ‖g‖² over the whole group before any element moves.
//!
//! `ldog` is the same package's `LDoG` (layer-wise DoG): the same formula, options and rules with
//! a record per tensor instead of per group ("the DoG formula … for each layer separately"):
//! r̄, G and η of tensor t from ‖θ_t‖, ‖θ_t − x0_t‖ and ‖g_t‖ alone (`Blocks::Tensor`).

use crate::adapt::prodigy::{displacement, fma32};
use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{abstain, chosen, reduced_pass, refuse_own_bad_inputs, Device, DotRule, ElementRule, KernelRule, Memory, Record, SolveRule, TensorMut};
use crate::base::WEIGHT_DECAY;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::{OptionSpec, Options};

pub fn specs() -> Vec<OptionSpec> {
    vec![
        OptionSpec::positive("lr", 1.0),
        OptionSpec::positive("reps_rel", 1e-6),
        WEIGHT_DECAY,
        // The reference accepts ε = 0 and then asserts G > 0 at run time; here ε > 0.
        OptionSpec::positive("eps", 1e-8),
        // Unset (NaN): None.
        OptionSpec::positive("init_eta", f64::NAN).unset_by_default(),
    ]
}

/// One group's scalars (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupRecord {
    /// r̄, the largest distance from x0 seen (its floor reps_rel · (1 + ‖x0‖) at the start).
    pub rbar: f64,
    /// G = ε + Σ_t ‖g_t‖².
    pub g_sum: f64,
    /// η of the last step.
    pub eta: f64,
    pub steps: u64,
}

impl Record for GroupRecord {}

/// One group's options as the solve reads them (`#[repr(C)]`, kept beside the records).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupOptions {
    pub lr: f64,
    pub reps_rel: f64,
    pub eps: f64,
    /// NaN: unset.
    pub init_eta: f64,
}

impl Record for GroupOptions {}

impl GroupOptions {
    fn of(o: &Options, group: usize) -> Self {
        GroupOptions { lr: o.get(group, "lr"), reps_rel: o.get(group, "reps_rel"), eps: o.get(group, "eps"), init_eta: o.get(group, "init_eta") }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DistancePrepared {
    lambda: f32,
    first: bool,
}

/// Pass 1: `[‖θ − x0‖², ‖g + λθ‖²]` (at the first step `x0 ← θ` and `[‖θ‖², …]`).
pub struct Distance;

impl KernelRule for Distance {
    type State = f32;
    /// λ
    type Coeffs = f32;
    type Record = GroupRecord;
    type Prepared = DistancePrepared;
    const KERNEL: &'static str = "alr_dog_distance";
    fn prepare(lambda: &f32, r: &GroupRecord) -> DistancePrepared {
        DistancePrepared { lambda: *lambda, first: r.steps == 0 }
    }
}

impl DotRule for Distance {
    #[inline(always)]
    fn dot(p: &DistancePrepared, g: f32, theta: f32, x0: &mut f32) -> [f64; 2] {
        // `p.grad.add_(p, alpha=weight_decay)`: fused, as torch forms it (see prodigy::fma32).
        let g = f64::from(if p.lambda != 0.0 { fma32(theta, p.lambda, g) } else { g });
        let r = f64::from(if p.first { theta } else { theta - *x0 });
        *x0 = chosen(p.first, theta, *x0);
        [r * r, g * g]
    }
    /// x0 is set at the first step only.
    #[inline(always)]
    fn changes_state(p: &DistancePrepared) -> bool {
        p.first
    }
}

pub struct Solve;

impl SolveRule for Solve {
    type Record = GroupRecord;
    type Coeffs = GroupOptions;
    type Params = ();
    const KERNEL: &'static str = "alr_dog_solve";
    // Non-finite sums (overflow) propagate as in the reference.
    const REQUIRE_FINITE: bool = false;
    fn solve(_: &(), o: &GroupOptions, sums: &[f64; 4], r: &mut GroupRecord) {
        let init_eta = !o.init_eta.is_nan();
        if r.steps == 0 {
            // The reference's constructor sets reps_rel = 0 when init_eta is given.
            let reps_rel = if init_eta { 0.0 } else { o.reps_rel };
            r.rbar = reps_rel * (1.0 + sums[0].sqrt());
            r.g_sum = sums[1] + o.eps;
        } else {
            let d = sums[0].sqrt();
            // torch.maximum: NaN wins.
            r.rbar = if d.is_nan() || d > r.rbar { d } else { r.rbar };
            r.g_sum += sums[1];
        }
        r.eta = if init_eta && r.steps == 0 { o.init_eta } else { o.lr * r.rbar / r.g_sum.sqrt() };
        r.steps += 1;
    }
}

/// Pass 2: `θ ← θ − η (g + λθ)`.
pub struct Step;

impl KernelRule for Step {
    type State = f32;
    type Coeffs = f32;
    type Record = GroupRecord;
    /// `(η, λ)`
    type Prepared = (f32, f32);
    const KERNEL: &'static str = "alr_dog_step";
    fn prepare(lambda: &f32, r: &GroupRecord) -> (f32, f32) {
        (r.eta as f32, *lambda)
    }
}

impl ElementRule for Step {
    /// The reference's new θ, as the displacement that lands on it.
    #[inline(always)]
    fn advance(&(eta, lambda): &(f32, f32), g: f32, theta: f32, _x0: &mut f32) -> f32 {
        let g = if lambda != 0.0 { fma32(theta, lambda, g) } else { g };
        // `p.add_(grad, alpha=-η)`: one rounding.
        displacement(theta, fma32(g, -eta, theta))
    }
    /// The step itself, `η (g + λθ)` (see prodigy's `Step::delta`).
    #[inline(always)]
    fn delta(&(eta, lambda): &(f32, f32), g: f32, theta: f32, _x0: &f32) -> f32 {
        let g = if lambda != 0.0 { fma32(theta, lambda, g) } else { g };
        eta * g
    }
}

/// What one record's step size covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// `DoG`: a group's tensors as one vector.
    Group,
    /// `LDoG`: each tensor alone.
    Tensor,
}

impl Blocks {
    /// How many records (step sizes) there are.
    fn records(self, ctx: &Context) -> usize {
        match self {
            Blocks::Group => ctx.layout.n_groups(),
            Blocks::Tensor => ctx.layout.lens.len(),
        }
    }

    /// The record tensor `t` reads.
    fn record_of(self, ctx: &Context, t: usize) -> usize {
        match self {
            Blocks::Group => ctx.layout.groups[t],
            Blocks::Tensor => t,
        }
    }

    /// The group whose options record `r` reads.
    fn group_of(self, ctx: &Context, r: usize) -> usize {
        match self {
            Blocks::Group => r,
            Blocks::Tensor => ctx.layout.groups[r],
        }
    }
}

pub struct Dog<D: Device> {
    device: D,
    blocks: Blocks,
    /// x0 per tensor and element.
    x0: Vec<D::State<f32>>,
    /// One per block (`blocks`); the solve reads `options` at the same index.
    groups: D::Records<GroupRecord>,
    options: D::Records<GroupOptions>,
    sums: D::Sums,
    /// Sharded: the communicator that adds the distance and gradient sums over the processes.
    shards: Shards,
    /// x0 holds the first step's θ: from then on pass 1 only reads.
    begun: bool,
}

impl<D: Device> Dog<D> {
    pub fn new(device: &D, layout: &crate::optimizer::Layout, shards: Shards) -> Result<Self> {
        Self::with_blocks(device, layout, shards, Blocks::Group)
    }

    /// `ldog`: a record per tensor.
    pub fn layer_wise(device: &D, layout: &crate::optimizer::Layout, shards: Shards) -> Result<Self> {
        Self::with_blocks(device, layout, shards, Blocks::Tensor)
    }

    fn with_blocks(device: &D, layout: &crate::optimizer::Layout, shards: Shards, blocks: Blocks) -> Result<Self> {
        device.require(&[Distance::KERNEL, Step::KERNEL, Solve::KERNEL])?;
        let owners = match blocks {
            Blocks::Group => layout.members.clone(),
            Blocks::Tensor => (0..layout.lens.len()).map(|t| vec![t]).collect(),
        };
        let n = owners.len();
        Ok(Dog {
            x0: device.alloc_per_tensor(&layout.lens)?,
            groups: device.records(&crate::backend::filled(n, GroupRecord::default())?)?,
            options: device.records(&crate::backend::filled(n, GroupOptions::default())?)?,
            sums: device.sums(&layout.lens, &owners)?,
            device: device.clone(),
            blocks,
            shards,
            begun: false,
        })
    }

    /// Whether this step's pass 1 checks the gradients itself: once it only reads (x0 is set),
    /// and on the CPU, which can name the bad element at once. Σ (g + λθ)² in f64 is finite
    /// exactly when every g is (a float32 square cannot overflow f64), unless g + λθ overflows
    /// float32 — then each g is read again, as the optimizer would have, and a finite one lets
    /// the step go on as the reference does.
    fn checks_own_gradients(&self) -> bool {
        self.begun && self.device.memory() == Memory::Host
    }

    fn record(&self, group: usize) -> Result<GroupRecord> {
        Ok(self.device.read_records(&self.groups)?[group])
    }

    /// The records of `group`'s tensors (LDoG), in the group's order.
    fn tensor_records(&self, ctx: &Context, group: usize) -> Result<Vec<GroupRecord>> {
        let records = self.device.read_records(&self.groups)?;
        Ok(ctx.layout.members[group].iter().map(|&t| records[t]).collect())
    }

    fn lambda(ctx: &Context, group: usize) -> f32 {
        ctx.options.get(group, "weight_decay") as f32
    }

    fn distances(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs) -> Result<()> {
        let checks = self.checks_own_gradients() && ctx.options.flag(0, "check_finite");
        let (device, x0s, groups, blocks, comm) = (&self.device, &mut self.x0, &self.groups, self.blocks, self.shards.as_deref());
        // Only the first step's pass 1 writes (x0).
        reduced_pass::<Solve, D>(device, &mut self.sums, comm, !self.begun, |sums, commit| {
            for (t, x0) in x0s.iter_mut().enumerate() {
                let lambda = Self::lambda(ctx, ctx.layout.groups[t]);
                device.dots::<Distance>(&lambda, groups, blocks.record_of(ctx, t), &params[t].view(), &inputs.grads[t], x0, sums, t, commit)?;
            }
            if !checks {
                return Ok(());
            }
            // Slot 1, Σ (g + λθ)²: the first non-finite gradient of the record's tensors.
            refuse_own_bad_inputs::<Solve, D>(device, sums, comm, 1..2, |record| {
                (0..ctx.layout.lens.len()).filter(|&t| blocks.record_of(ctx, t) == record).find_map(|t| device.check("grad", t, &inputs.grads[t], false).err())
            })
        })?;
        self.device.solve::<Solve>(&(), &self.options, &mut self.groups, &mut self.sums)?;
        self.begun = true;
        Ok(())
    }

    /// Pass 1 and the solve, then pass 2 (scaled by a wrapper's `scale` when given).
    fn take_step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: Option<f32>) -> Result<()> {
        self.distances(ctx, params, inputs)?;
        for (t, x0) in self.x0.iter_mut().enumerate() {
            let group = ctx.layout.groups[t];
            self.device.update_by::<Step>(
                &Self::lambda(ctx, group),
                &self.groups,
                self.blocks.record_of(ctx, t),
                &mut params[t],
                &inputs.grads[t],
                x0,
                scale,
            )?;
        }
        Ok(())
    }
}

impl<D: Device> Algorithm for Dog<D> {
    fn name(&self) -> &'static str {
        match self.blocks {
            Blocks::Group => "dog",
            Blocks::Tensor => "ldog",
        }
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts { checks_own_inputs: self.checks_own_gradients(), ..Accepts::default() }
    }

    fn check(&self, _ctx: &Context, _inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        crate::algorithm::refuse_capture(&self.device, self.name(), "its weight decay as a launch argument")
    }

    /// The distance and gradient sums are reduced once a step.
    fn abstain(&mut self, _ctx: &Context) -> bool {
        abstain::<Solve, D>(&self.device, &self.sums, self.shards.as_deref())
    }

    fn options_changed(&mut self, ctx: &Context) -> Result<()> {
        let options: Vec<GroupOptions> = (0..self.blocks.records(ctx)).map(|r| GroupOptions::of(ctx.options, self.blocks.group_of(ctx, r))).collect();
        self.device.write_records(&mut self.options, &options)
    }

    fn propose(&mut self, ctx: &Context, params: &[TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        self.distances(ctx, params, inputs)?;
        let mut g_dot_s = 0.0;
        for (t, x0) in self.x0.iter_mut().enumerate() {
            let group = ctx.layout.groups[t];
            g_dot_s +=
                self.device.advance_dot::<Step>(&Self::lambda(ctx, group), &self.groups, self.blocks.record_of(ctx, t), &params[t], &inputs.grads[t], x0)?;
        }
        Ok(g_dot_s)
    }

    fn apply(&self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, scale: f32) -> Result<()> {
        for (t, x0) in self.x0.iter().enumerate() {
            let group = ctx.layout.groups[t];
            self.device.apply_scaled::<Step>(
                &Self::lambda(ctx, group),
                &self.groups,
                self.blocks.record_of(ctx, t),
                &mut params[t],
                &inputs.grads[t],
                x0,
                scale,
            )?;
        }
        Ok(())
    }

    fn step(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        self.take_step(ctx, params, inputs, None)
    }

    fn step_scaled(&mut self, ctx: &Context, params: &mut [TensorMut], inputs: &StepInputs, _cb: &mut Callbacks, scale: f32) -> Result<()> {
        self.take_step(ctx, params, inputs, Some(scale))
    }

    /// η of the group's last step (0 before the first); LDoG: the median of its tensors' η.
    fn lr(&self, ctx: &Context, group: usize) -> Result<f64> {
        match self.blocks {
            Blocks::Group => Ok(self.record(group)?.eta),
            Blocks::Tensor => Ok(crate::adapt::vsgd::min_median_max(self.tensor_records(ctx, group)?.iter().map(|r| r.eta).collect())[1]),
        }
    }

    /// LDoG: `eta`, `rbar` and `G` once per tensor of the group (in its order), then `steps`.
    fn telemetry(&self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        let records = match self.blocks {
            Blocks::Group => vec![self.record(group)?],
            Blocks::Tensor => self.tensor_records(ctx, group)?,
        };
        let mut entries: Vec<(&'static str, f64)> = Vec::with_capacity(3 * records.len() + 1);
        entries.extend(records.iter().map(|r| ("eta", r.eta)));
        entries.extend(records.iter().map(|r| ("rbar", r.rbar)));
        entries.extend(records.iter().map(|r| ("G", r.g_sum)));
        entries.push(("steps", records[0].steps as f64));
        Ok(entries)
    }

    fn started(&self) -> Result<bool> {
        Ok(self.device.read_records(&self.groups)?.iter().any(|r| r.steps > 0))
    }

    fn save(&self, w: &mut Writer) -> Result<()> {
        let records = self.device.read_records(&self.groups)?;
        w.counts(&records.iter().map(|r| r.steps).collect::<Vec<_>>());
        w.f64s(&records.iter().map(|r| r.rbar).collect::<Vec<_>>());
        w.f64s(&records.iter().map(|r| r.g_sum).collect::<Vec<_>>());
        w.f64s(&records.iter().map(|r| r.eta).collect::<Vec<_>>());
        for b in &self.x0 {
            self.device.with_state(b, |b| w.elem_states(b))?;
        }
        Ok(())
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let n = self.blocks.records(ctx);
        let steps = r.counts_exact(n, "DoG step counts")?;
        let rbar = r.f64s_exact(n, "DoG r̄")?;
        let g_sum = r.f64s_exact(n, "DoG G")?;
        let eta = r.f64s_exact(n, "DoG η")?;
        let block = if self.blocks == Blocks::Group { "group" } else { "tensor" };
        let mut records = Vec::with_capacity(n);
        for g in 0..n {
            let non_finite = [rbar[g], g_sum[g], eta[g]].iter().any(|v| !v.is_finite());
            let bad = |why: &str| Err(Error::checkpoint(format!("checkpoint DoG {block} {g}: {why} {}", crate::checkpoint::doubt(non_finite))));
            // Every step steps every record.
            if steps[g] != steps[0] {
                return bad(&format!("{} steps where {block} 0 took {}", steps[g], steps[0]));
            }
            let record = GroupRecord { rbar: rbar[g], g_sum: g_sum[g], eta: eta[g], steps: steps[g] };
            if steps[g] == 0 {
                if record != GroupRecord::default() {
                    return bad("a group that has not stepped holds r̄, G or η");
                }
            } else if !(record.rbar.is_finite()
                && record.rbar >= 0.0
                && record.g_sum.is_finite()
                && record.g_sum > 0.0
                && record.eta.is_finite()
                && record.eta >= 0.0)
            {
                return bad(&format!("r̄ = {}, G = {}, η = {} break r̄ ≥ 0, G > 0, η ≥ 0 (all finite)", record.rbar, record.g_sum, record.eta));
            }
            records.push(record);
        }
        let mut x0 = Vec::with_capacity(self.x0.len());
        for (t, &len) in ctx.layout.lens.iter().enumerate() {
            let what = format!("DoG x0 of tensor {t}");
            let v = r.f32s_exact(len, &what)?;
            crate::checkpoint::check_values(&v, &what, f32::is_finite, "it is finite")?;
            x0.push(v);
        }
        for (b, v) in self.x0.iter_mut().zip(&x0) {
            self.device.write_state(b, v)?;
        }
        self.device.write_records(&mut self.groups, &records)?;
        self.begun = records.first().is_some_and(|r| r.steps > 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_solve_is_the_references_eta() {
        let o = GroupOptions { lr: 0.5, reps_rel: 1e-6, eps: 1e-8, init_eta: f64::NAN };
        let mut r = GroupRecord::default();
        Solve::solve(&(), &o, &[4.0, 9.0, 0.0, 0.0], &mut r);
        let (rbar, g): (f64, f64) = (1e-6 * (1.0 + 2.0), 9.0 + 1e-8);
        assert_eq!((r.rbar, r.g_sum, r.eta, r.steps), (rbar, g, 0.5 * rbar / g.sqrt(), 1));
        // Later: r̄ only grows, G accumulates.
        Solve::solve(&(), &o, &[1e-14, 7.0, 0.0, 0.0], &mut r);
        assert_eq!((r.rbar, r.g_sum), (rbar, g + 7.0));
        Solve::solve(&(), &o, &[0.25, 1.0, 0.0, 0.0], &mut r);
        assert_eq!((r.rbar, r.g_sum, r.steps), (0.5, g + 8.0, 3));
    }

    #[test]
    fn init_eta_sets_the_first_step_and_drops_reps_rel() {
        let o = GroupOptions { lr: 1.0, reps_rel: 1e-6, eps: 1e-8, init_eta: 1e-3 };
        let mut r = GroupRecord::default();
        Solve::solve(&(), &o, &[4.0, 9.0, 0.0, 0.0], &mut r);
        assert_eq!((r.rbar, r.eta), (0.0, 1e-3));
        Solve::solve(&(), &o, &[0.01, 0.0, 0.0, 0.0], &mut r);
        assert_eq!(r.eta, 0.1 / (9.0f64 + 1e-8).sqrt());
    }

    /// Each group's telemetry entries.
    type Telemetry = Vec<Vec<(&'static str, f64)>>;

    /// `steps` steps of `name` from `starts` in `groups`, with weight decay `decays[g]` in group
    /// g: the parameters and the telemetry of every group.
    fn run(name: &str, starts: &[Vec<f32>], groups: &[usize], decays: &[f64], steps: usize) -> (Vec<Vec<f32>>, Telemetry) {
        use crate::{Callbacks, Optimizer};
        let lens: Vec<usize> = starts.iter().map(Vec::len).collect();
        let mut opt = Optimizer::new(name, &lens, Some(groups)).unwrap();
        for (g, &decay) in decays.iter().enumerate() {
            opt.set_option("weight_decay", Some(g), decay).unwrap();
        }
        let mut params = starts.to_vec();
        for k in 0..steps {
            let grads: Vec<Vec<f32>> = params.iter().map(|p| p.iter().enumerate().map(|(i, &v)| v - 0.3 * ((i + k) % 5) as f32).collect()).collect();
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
            opt.step(&mut views, &StepInputs::new(grads.iter().map(|g| &g[..]).collect()), &mut Callbacks::default()).unwrap();
        }
        (params, (0..decays.len()).map(|g| opt.telemetry(g).unwrap()).collect())
    }

    /// LDoG steps each tensor as DoG steps it alone: the group only shares options.
    #[test]
    fn ldog_is_dog_per_tensor() {
        let starts = vec![vec![0.5f32, -1.0, 2.0], vec![1.5f32; 4], vec![-0.25f32, 0.75]];
        let (groups, decays) = ([0, 1, 0], [0.0, 0.1]);
        let (layer_wise, telemetry) = run("ldog", &starts, &groups, &decays, 20);
        for (t, start) in starts.iter().enumerate() {
            let group = groups[t];
            let (alone, alone_telemetry) = run("dog", std::slice::from_ref(start), &[0], &decays[group..=group], 20);
            assert_eq!(layer_wise[t], alone[0], "tensor {t}");
            // Group 0's entries: η of tensors 0 and 2, then r̄ of both, G of both, steps.
            let (entries, at) = (&telemetry[group], if t == 2 { 1 } else { 0 });
            let per = if group == 0 { 2 } else { 1 };
            for (k, name) in ["eta", "rbar", "G"].iter().enumerate() {
                assert_eq!(entries[k * per + at], alone_telemetry[0][k], "tensor {t} {name}");
            }
            assert_eq!(entries.last(), Some(&("steps", 20.0)));
        }
        // Not DoG over the group: tensors 0 and 2 as one vector step otherwise.
        let (grouped, _) = run("dog", &starts, &groups, &decays, 20);
        assert_ne!(grouped[0], layer_wise[0]);
        assert_eq!(grouped[1], layer_wise[1]);
    }

    /// The same layout and sections, another meaning: neither loads the other's checkpoint.
    #[test]
    fn dog_and_ldog_refuse_each_others_checkpoints() {
        use crate::{Callbacks, Optimizer};
        let (lens, groups) = ([3, 2], [0, 0]);
        let mut opts: Vec<Optimizer> = ["dog", "ldog"].iter().map(|n| Optimizer::new(n, &lens, Some(&groups)).unwrap()).collect();
        for opt in &mut opts {
            let (mut a, mut b) = (vec![1.0f32; 3], vec![-1.0f32; 2]);
            let grads = [vec![0.5f32; 3], vec![0.25f32; 2]];
            opt.step(&mut [&mut a[..], &mut b[..]], &StepInputs::new(grads.iter().map(|g| &g[..]).collect()), &mut Callbacks::default()).unwrap();
        }
        let (dog, ldog) = (opts[0].save().unwrap(), opts[1].save().unwrap());
        assert!(opts[1].load(&dog).unwrap_err().to_string().contains("'dog'"));
        assert!(opts[0].load(&ldog).unwrap_err().to_string().contains("'ldog'"));
    }
}

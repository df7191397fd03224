//! The optimizer: tensors and groups, options, the step protocol (validate everything, then
//! change anything), read-back of rates and telemetry, and checkpoints.

use crate::algorithm::{Accepts, Algorithm, Context, Shards};
use crate::backend::{AnyDevice, DeviceSpec, Memory, Tensor, TensorMut};
use crate::checkpoint::{self, Reader, Writer};
use crate::error::{Error, Result};
use crate::options::{Options, Structure};
use crate::registry;

/// Which tensors exist and how they are grouped.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Elements per tensor.
    pub lens: Vec<usize>,
    /// Group of each tensor.
    pub groups: Vec<usize>,
    /// Tensors of each group, in registration order.
    pub members: Vec<Vec<usize>>,
}

impl Layout {
    /// `groups[i]` is tensor i's group id; ids must be 0..G−1 with every group used. `None`:
    /// every tensor is its own group.
    pub fn new(lens: &[usize], groups: Option<&[usize]>) -> Result<Self> {
        if lens.is_empty() {
            return Err(Error::invalid("an optimizer needs at least one tensor"));
        }
        if let Some(t) = lens.iter().position(|&n| n == 0) {
            return Err(Error::invalid(format!("tensor {t} has 0 elements; register only non-empty tensors")));
        }
        // A buffer of more than isize::MAX bytes cannot exist; such a length is a caller's bug.
        if let Some(t) = lens.iter().position(|&n| n > crate::limits::MAX_FLOATS) {
            return Err(Error::invalid(format!("tensor {t} has {} elements, more than any float32 buffer can hold", lens[t])));
        }
        // Nor can all tensors together (their state is one allocation per tensor, but their sum
        // sizes vSGD's d and every total): refused before any of it is summed or allocated.
        if lens.iter().try_fold(0usize, |sum, &n| crate::limits::floats(1, sum.checked_add(n)?)).is_none() {
            return Err(Error::invalid(format!(
                "the {} tensors hold more elements together than any float32 buffer can ({} at most)",
                lens.len(),
                crate::limits::MAX_FLOATS
            )));
        }
        // Every vector below is sized by the caller's tensor count: allocated fallibly, so that
        // millions of tensors the memory cannot hold give an error, not a process abort.
        fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| Error::invalid(format!("cannot allocate {what} of {n} entries: too many tensors for this memory")))?;
            Ok(v)
        }
        let n = lens.len();
        let mut ids: Vec<usize> = with_capacity(n, "the group list")?;
        match groups {
            None => ids.extend(0..n),
            Some(g) if g.len() != n => return Err(Error::shape(format!("{} group ids given for {n} tensors", g.len()))),
            Some(g) => {
                // Checked before anything is sized by the ids: a wild id must not allocate.
                if let Some(t) = g.iter().position(|&id| id >= n) {
                    return Err(Error::invalid(format!("tensor {t} has group id {}, but ids must be 0..G−1 with G ≤ {n} tensors", g[t])));
                }
                ids.extend_from_slice(g);
            }
        }
        let n_groups = ids.iter().max().map_or(0, |m| m + 1);
        let mut sizes: Vec<usize> = with_capacity(n_groups, "the group sizes")?;
        sizes.resize(n_groups, 0);
        ids.iter().for_each(|&g| sizes[g] += 1);
        if let Some(empty) = sizes.iter().position(|&k| k == 0) {
            return Err(Error::invalid(format!("group ids must be 0..{} with every id used, but group {empty} has no tensor", n_groups - 1)));
        }
        let mut members: Vec<Vec<usize>> = with_capacity(n_groups, "the group table")?;
        for &k in &sizes {
            members.push(with_capacity(k, "a group's tensor list")?);
        }
        ids.iter().enumerate().for_each(|(t, &g)| members[g].push(t));
        let mut own_lens = with_capacity(n, "the tensor list")?;
        own_lens.extend_from_slice(lens);
        Ok(Layout { lens: own_lens, groups: ids, members })
    }

    pub fn n_tensors(&self) -> usize {
        self.lens.len()
    }

    pub fn n_groups(&self) -> usize {
        self.members.len()
    }
}

/// How per-sample data is scaled (docs/algorithms.md, "Scale convention").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleScale {
    /// Entries describe `g_i`, the gradient of sample i's own loss.
    Sample,
    /// Entries describe `g_i / N` (BackPACK's BatchGrad / SumGradSquared under a mean loss).
    Mean,
}

/// Per-sample information, in one of two forms, one buffer `B` per tensor.
pub enum SampleData<B> {
    /// Per tensor, `S = Σ_i g_i ⊙ g_i` (len elements).
    SumSq(Vec<B>),
    /// Per tensor, the row-major `N × len` matrix of per-sample gradients.
    PerSample(Vec<B>),
}

pub struct Samples<B> {
    pub data: SampleData<B>,
    pub scale: SampleScale,
    pub batch_size: usize,
}

impl<B> Samples<B> {
    /// Factor turning the given squares into squares of `g_i` (N² under the mean convention).
    pub fn square_scale(&self) -> f64 {
        match self.scale {
            SampleScale::Sample => 1.0,
            SampleScale::Mean => (self.batch_size as f64).powi(2),
        }
    }

    /// The buffers, whichever form.
    pub fn buffers(&self) -> &[B] {
        match &self.data {
            SampleData::SumSq(b) | SampleData::PerSample(b) => b,
        }
    }
}

/// Everything one step reads. Buffers are borrowed for the call only, in the memory of the
/// optimizer's device.
pub struct StepInputs<'a> {
    /// Mean minibatch gradient per tensor.
    pub grads: Vec<Tensor<'a>>,
    pub samples: Option<Samples<Tensor<'a>>>,
    /// A non-negative diagonal curvature estimate per tensor (vSGD).
    pub curvature: Option<Vec<Tensor<'a>>>,
    /// Loss on this batch at the current parameters (GI).
    pub loss: Option<f64>,
}

impl<'a> StepInputs<'a> {
    pub fn new<T: Into<Tensor<'a>>>(grads: Vec<T>) -> Self {
        StepInputs { grads: grads.into_iter().map(Into::into).collect(), samples: None, curvature: None, loss: None }
    }
}

/// Evaluates the loss on the same batch at the given parameters.
pub type LossFn<'a> = Box<dyn FnMut(&[&[f32]]) -> std::result::Result<f64, String> + 'a>;
/// Writes the gradient on the same batch at the given parameters into the output buffers.
pub type GradFn<'a> = Box<dyn FnMut(&[&[f32]], &mut [&mut [f32]]) -> std::result::Result<(), String> + 'a>;

#[derive(Default)]
pub struct Callbacks<'a> {
    pub loss_fn: Option<LossFn<'a>>,
    pub grad_fn: Option<GradFn<'a>>,
}

/// An optimizer over a fixed set of tensors, on one device.
pub struct Optimizer {
    name: String,
    /// The wrapped algorithm for `gi` and `schedule-free` (their string option `base`); empty
    /// otherwise.
    base: String,
    /// GI's base for schedule-free over gi (the string option `base_base`, docs/algorithms.md
    /// §3.3); empty otherwise.
    base_base: String,
    layout: Layout,
    options: Options,
    device: AnyDevice,
    algorithm: Box<dyn Algorithm>,
    /// Set once a step has begun: structural options and the state shape are then fixed.
    started: bool,
    /// Sharded tensors: the caller's communicator (docs/algorithms.md §7).
    shards: Shards,
}

impl Optimizer {
    /// Creates `algorithm` (see `registry::ALGORITHMS`, or an alias of `registry::ALIASES`, which
    /// is created as what it stands for) for tensors of `lens` elements in
    /// `groups`, in host memory.
    pub fn new(algorithm: &str, lens: &[usize], groups: Option<&[usize]>) -> Result<Self> {
        Self::on(DeviceSpec::cpu(), algorithm, lens, groups)
    }

    /// Creates `algorithm` on `device`: its state lives in the device's memory and its steps
    /// take buffers there. ALR_UNSUPPORTED for an algorithm the device cannot run — said before
    /// the device is opened, so the answer does not depend on the machine.
    pub fn on(device: DeviceSpec, algorithm: &str, lens: &[usize], groups: Option<&[usize]>) -> Result<Self> {
        Self::on_shards(device, algorithm, lens, groups, None)
    }

    /// Creates `algorithm` on `device` over tensors that are, with a communicator, this
    /// process's shards of tensors split over processes: every reduction of a step is then
    /// summed over them through `comm` (docs/algorithms.md §7).
    pub fn on_shards(device: DeviceSpec, algorithm: &str, lens: &[usize], groups: Option<&[usize]>, shards: Shards) -> Result<Self> {
        let layout = Layout::new(lens, groups)?;
        let (algorithm, alias_base, alias_options) = registry::resolve(algorithm);
        let base = alias_base.unwrap_or_else(|| registry::default_base(algorithm)).to_string();
        let base_base = base_base_for(algorithm, &base).to_string();
        let mut options = Options::new(registry::specs(algorithm, &base, &base_base)?, layout.n_groups())?;
        for &(name, value) in alias_options {
            options.set(algorithm, name, None, value)?;
        }
        registry::check_runs_on(device.kind(), algorithm)?;
        let device = device.open()?;
        let mut built = registry::build(algorithm, &base, &base_base, &layout, &device, false, &shards)?;
        built.options_changed(&Context { layout: &layout, options: &options })?;
        Ok(Optimizer { name: algorithm.to_string(), base, base_base, layout, options, device, algorithm: built, started: false, shards })
    }

    /// Where this optimizer's state and buffers live.
    pub fn memory(&self) -> Memory {
        self.device.memory()
    }

    pub fn algorithm(&self) -> &str {
        &self.name
    }

    /// The wrapped algorithm of GI and schedule-free ("" for every other algorithm).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GI's base under schedule-free over gi ("" otherwise).
    pub fn base_base(&self) -> &str {
        &self.base_base
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn ctx(&self) -> Context<'_> {
        Context { layout: &self.layout, options: &self.options }
    }

    /// A fresh algorithm of this configuration (over `base` and `base_base`) with `options`
    /// told to it.
    fn build(&self, base: &str, base_base: &str, options: &Options) -> Result<Box<dyn Algorithm>> {
        let mut algorithm = registry::build(&self.name, base, base_base, &self.layout, &self.device, false, &self.shards)?;
        algorithm.options_changed(&Context { layout: &self.layout, options })?;
        Ok(algorithm)
    }

    /// Sets an option for every group (`group = None`) or one group.
    pub fn set_option(&mut self, name: &str, group: Option<usize>, value: f64) -> Result<()> {
        let structure = self.options.spec(name, &self.name)?.structure;
        let mut options = self.options.clone();
        options.set(&self.name, name, group, value)?;
        // The group is valid now; a structural option is global, so group 0 holds it.
        let reshapes = structure.reshapes(self.options.get(group.unwrap_or(0), name), value);
        if reshapes && self.started {
            let which = if structure == Structure::ZeroOrNot { "whether it is 0 " } else { "" };
            return Err(Error::wrong_state(format!("option '{name}': {which}shapes the optimizer's state: set it before the first step")));
        }
        if reshapes {
            // Rebuild so the state matches the new shape; nothing has been learned yet.
            self.algorithm = self.build(&self.base, &self.base_base, &options)?;
        } else {
            self.algorithm.options_changed(&Context { layout: &self.layout, options: &options })?;
        }
        self.options = options;
        Ok(())
    }

    pub fn get_option(&self, name: &str, group: usize) -> Result<f64> {
        self.options.spec(name, &self.name)?;
        self.check_group(group)?;
        Ok(self.options.get(group, name))
    }

    /// Sets a string option (the `base` of GI and schedule-free; `base_base`, GI's base, of
    /// schedule-free over gi); must come before the first step and before the wrapped
    /// algorithms' own options, which it resets to their defaults. Setting `base` resets
    /// `base_base` to GI's default base.
    pub fn set_option_str(&mut self, name: &str, value: &str) -> Result<()> {
        let (base, base_base) = match name {
            "base" if registry::takes_base(&self.name) => (value, base_base_for(&self.name, value)),
            "base_base" if registry::takes_base_base(&self.name, &self.base) => (self.base.as_str(), value),
            "base_base" if self.name == "schedule-free" => {
                return Err(Error::invalid(format!(
                    "'base_base' is GI's base under schedule-free over gi, but this optimizer's base is '{}': set base = 'gi' first",
                    self.base
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "algorithm '{}' has no string option '{name}' (only 'gi' and 'schedule-free' take one: 'base'; schedule-free over gi also 'base_base')",
                    self.name
                )))
            }
        };
        if self.started {
            return Err(Error::wrong_state(format!("option '{name}' shapes the optimizer: set it before the first step")));
        }
        let options = Options::new(registry::specs(&self.name, base, base_base)?, self.layout.n_groups())?;
        let algorithm = self.build(base, base_base, &options)?;
        (self.base, self.base_base) = (base.to_string(), base_base.to_string());
        self.algorithm = algorithm;
        self.options = options;
        Ok(())
    }

    fn check_group(&self, group: usize) -> Result<()> {
        if group >= self.layout.n_groups() {
            return Err(Error::invalid(format!("group {group} does not exist (this optimizer has {} groups)", self.layout.n_groups())));
        }
        Ok(())
    }

    /// Validates everything a step reads; nothing is changed before this passes.
    fn validate(&self, params: &[TensorMut], inputs: &StepInputs, callbacks: &Callbacks) -> Result<()> {
        let algorithm = &self.algorithm;
        if algorithm.awaiting_report() {
            return Err(Error::wrong_state("the last step is waiting for its loss: call alr_report_loss (Python: report_loss) before the next step"));
        }
        let lens = &self.layout.lens;
        let n = lens.len();
        if params.len() != n || inputs.grads.len() != n {
            return Err(Error::shape(format!(
                "step got {} parameter and {} gradient tensors, the optimizer has {n} tensors",
                params.len(),
                inputs.grads.len()
            )));
        }
        let memory = self.device.memory();
        let check_finite = self.options.flag(0, "check_finite");
        let check = |what: &str, bufs: &[Tensor], per_elem: usize, finite: bool, non_negative: bool| -> Result<()> {
            if bufs.len() != n {
                return Err(Error::shape(format!("{} {what} tensors given, the optimizer has {n} tensors", bufs.len())));
            }
            for (t, (buf, &len)) in bufs.iter().zip(lens).enumerate() {
                if buf.memory() != memory {
                    return Err(Error::invalid(format!("tensor {t}: {what} is in {}, this optimizer works in {memory}", buf.memory())));
                }
                let want = crate::limits::floats(per_elem, len)
                    .ok_or_else(|| Error::invalid(format!("tensor {t}: {what} of {per_elem} × {len} floats is larger than any buffer can be")))?;
                if buf.len() != want {
                    let registered = if per_elem == 1 { format!("registered {len}") } else { format!("expected {per_elem} × {len}") };
                    return Err(Error::shape(format!("tensor {t}: {what} has {} elements, {registered}", buf.len())));
                }
                if finite {
                    self.device.check(what, t, buf, false)?;
                }
                if non_negative {
                    self.device.check(what, t, buf, true)?;
                }
            }
            Ok(())
        };
        // Parameters are checked for shape only: a non-finite parameter is the caller's state, not an input.
        for (t, (p, &len)) in params.iter().zip(lens).enumerate() {
            if p.memory() != memory {
                return Err(Error::invalid(format!("tensor {t}: param is in {}, this optimizer works in {memory}", p.memory())));
            }
            if p.len() != len {
                return Err(Error::shape(format!("tensor {t}: param has {} elements, registered {len}", p.len())));
            }
        }
        let accepts: Accepts = algorithm.accepts(&self.ctx());
        // An algorithm that checks its own inputs still gets the shapes checked here.
        let own = accepts.checks_own_inputs;
        check("grad", &inputs.grads, 1, check_finite && !own, false)?;
        let refuse = |what: &str| Err(Error::unsupported(format!("algorithm '{}' does not use {what}; pass none", self.name)));
        if let Some(samples) = &inputs.samples {
            if !accepts.per_sample {
                return refuse("per-sample data");
            }
            if samples.batch_size == 0 {
                return Err(Error::invalid("batch_size is 0; give the number of samples N in the minibatch"));
            }
            match &samples.data {
                SampleData::SumSq(s) => check("sum_sq", s, 1, check_finite && !own, !own)?,
                SampleData::PerSample(m) => check("per_sample", m, samples.batch_size, check_finite && !own, false)?,
            }
        }
        if let Some(h) = &inputs.curvature {
            if !accepts.curvature {
                return refuse("curvature");
            }
            check("curvature", h, 1, check_finite, true)?;
        }
        if let Some(loss) = inputs.loss {
            if !accepts.loss {
                return refuse("a loss");
            }
            if !loss.is_finite() {
                return Err(Error::non_finite(format!("loss is {loss}; give the finite loss on this batch")));
            }
        }
        if callbacks.loss_fn.is_some() && !accepts.loss_fn {
            return refuse("a loss callback");
        }
        if callbacks.grad_fn.is_some() && !accepts.grad_fn {
            return refuse("a gradient callback");
        }
        algorithm.check(&self.ctx(), inputs, callbacks)
    }

    /// One training step on host buffers: updates `params` in place (see `step_tensors`).
    pub fn step(&mut self, params: &mut [&mut [f32]], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        let mut views: Vec<TensorMut> = params.iter_mut().map(|p| TensorMut::host(p)).collect();
        self.step_tensors(&mut views, inputs, callbacks)
    }

    /// One training step: updates `params` in place. On error nothing has changed, except
    /// where the error says otherwise (a failing GI loss callback: the move was made, η kept).
    /// On a device that does not synchronise (CUDA), bad input found there is reported by the
    /// next read of a rate, telemetry or checkpoint instead, and that step changes nothing.
    pub fn step_tensors(&mut self, params: &mut [TensorMut], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        if let Err(refused) = self.validate(params, inputs, callbacks) {
            // Over shards, the other processes wait in this step's reductions: take part, so
            // that they refuse the step too instead of waiting for this one.
            if self.shards.is_some() {
                let ctx = Context { layout: &self.layout, options: &self.options };
                self.algorithm.abstain(&ctx);
            }
            return Err(refused);
        }
        self.device.begin_step();
        let ctx = Context { layout: &self.layout, options: &self.options };
        let result = self.algorithm.step(&ctx, params, inputs, callbacks);
        if result.as_ref().map_or_else(|e| e.after_change, |_| true) {
            self.started = true;
        }
        result
    }

    /// Switches the caller's parameters between the training view (`train`: schedule-free's y)
    /// and the evaluation view (x); a no-op for every other algorithm. ALR_WRONG_STATE for the
    /// mode it is already in (except train before the first step), nothing changed then.
    pub fn set_mode(&mut self, params: &mut [TensorMut], train: bool) -> Result<()> {
        let lens = &self.layout.lens;
        if params.len() != lens.len() {
            return Err(Error::shape(format!("got {} parameter tensors, the optimizer has {} tensors", params.len(), lens.len())));
        }
        let memory = self.device.memory();
        for (t, (p, &len)) in params.iter().zip(lens).enumerate() {
            if p.memory() != memory {
                return Err(Error::invalid(format!("tensor {t}: param is in {}, this optimizer works in {memory}", p.memory())));
            }
            if p.len() != len {
                return Err(Error::shape(format!("tensor {t}: param has {} elements, registered {len}", p.len())));
            }
        }
        // A GPU step that found bad input changed nothing, but the host counted it: forget it
        // before the swap reads the step count (else a first step that never ran would swap
        // with a z never set). The error is returned, and the caller's next call swaps.
        self.settle()?;
        let ctx = Context { layout: &self.layout, options: &self.options };
        self.algorithm.set_mode(&ctx, params, train)
    }

    /// GI's second phase: the loss on the same batch after the last step's move.
    pub fn report_loss(&mut self, loss_after: f64) -> Result<()> {
        let ctx = Context { layout: &self.layout, options: &self.options };
        self.algorithm.report_loss(&ctx, loss_after)
    }

    /// Reads the device's status word: an error a step found there since the last read, once
    /// (those steps changed nothing, and are forgotten by the algorithm's counts).
    pub fn settle(&mut self) -> Result<()> {
        self.device.settle().map_err(|deferred| {
            self.algorithm.discard_steps(deferred.discarded_steps);
            deferred.error
        })
    }

    pub fn n_groups(&self) -> usize {
        self.layout.n_groups()
    }

    /// Reading anything learned first settles the device (see `settle`), hence `&mut`.
    pub fn lr(&mut self, group: usize) -> Result<f64> {
        self.check_group(group)?;
        self.settle()?;
        self.algorithm.lr(&self.ctx(), group)
    }

    pub fn momentum(&mut self, group: usize) -> Result<f64> {
        self.check_group(group)?;
        self.settle()?;
        self.algorithm.momentum(&self.ctx(), group)
    }

    pub fn telemetry(&mut self, group: usize) -> Result<Vec<(&'static str, f64)>> {
        self.check_group(group)?;
        self.settle()?;
        self.algorithm.telemetry(&self.ctx(), group)
    }

    /// The whole state (configuration, options, algorithm state) as a checksummed buffer.
    pub fn save(&mut self) -> Result<Vec<u8>> {
        let mut w = Writer::to_vec();
        self.write(&mut w)?;
        Ok(w.finish()?.0)
    }

    /// The length of what `save` returns, counted without storing it.
    pub fn save_size(&mut self) -> Result<usize> {
        let mut w = Writer::counting();
        self.write(&mut w)?;
        Ok(w.finish()?.1)
    }

    /// `save` written straight into `buf`; returns its length, or an error when it does not fit
    /// (ask `save_size` first: then nothing is written).
    pub fn save_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        let needed = self.save_size()?;
        let capacity = buf.len();
        let buf =
            buf.get_mut(..needed).ok_or_else(|| Error::invalid(format!("buffer holds {capacity} bytes, the state needs {needed}: ask alr_save_size first")))?;
        let mut w = Writer::into_slice(buf);
        self.write(&mut w)?;
        Ok(w.finish()?.1)
    }

    /// Every field of the checkpoint but its checksum.
    fn write(&mut self, w: &mut Writer) -> Result<()> {
        if self.algorithm.awaiting_report() {
            return Err(Error::wrong_state("the last step is waiting for its loss: call alr_report_loss before saving"));
        }
        self.settle()?;
        w.extend_from_slice(checkpoint::MAGIC);
        w.u32(checkpoint::FORMAT_VERSION);
        w.str(&self.name);
        w.str(&self.base);
        w.f64s(&self.layout.lens.iter().map(|&n| n as f64).collect::<Vec<_>>());
        w.f64s(&self.layout.groups.iter().map(|&g| g as f64).collect::<Vec<_>>());
        let specs = self.options.specs();
        w.u64(specs.len() as u64);
        for spec in specs {
            w.str(spec.name);
        }
        for row in self.options.rows() {
            w.f64s(row);
        }
        w.u32(u32::from(self.started));
        w.str(&self.name);
        self.algorithm.save(w)
    }

    /// Restores a state saved by `save` from an optimizer of the same algorithm and tensors
    /// (on any device). On any error the optimizer is unchanged.
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        // A bad-input error pending on the device is dropped: the loaded state replaces what it
        // protected. A device failure is not.
        if let Err(e) = self.settle() {
            if e.status == crate::error::AlrStatus::AlrCudaError {
                return Err(e);
            }
        }
        let mut r = Reader::open(bytes)?;
        let name = r.str()?;
        if name != self.name {
            return Err(Error::checkpoint(format!("checkpoint is of algorithm '{name}', this optimizer is '{}'", self.name)));
        }
        let base = r.str()?;
        if base != self.base {
            return Err(Error::checkpoint(format!("checkpoint wraps base '{base}', this optimizer wraps '{}'; set the same base before loading", self.base)));
        }
        let n = self.layout.n_tensors();
        let lens = r.f64s_exact(n, "tensor list")?;
        let groups = r.f64s_exact(n, "group list")?;
        for t in 0..n {
            if lens[t] != self.layout.lens[t] as f64 || groups[t] != self.layout.groups[t] as f64 {
                return Err(Error::checkpoint(format!(
                    "checkpoint tensor {t} has {} elements in group {}, this optimizer's has {} in group {}",
                    lens[t], groups[t], self.layout.lens[t], self.layout.groups[t]
                )));
            }
        }
        let n_specs = r.u64()? as usize;
        let specs = self.options.specs();
        if n_specs != specs.len() {
            // Schedule-free over gi's GI base (`base_base`) shapes the options, and the checkpoint
            // names it only in GI's part, after them.
            let why = if self.base_base.is_empty() {
                "other library version?".to_string()
            } else {
                format!("another base_base than this optimizer's '{}', or another library version?", self.base_base)
            };
            return Err(Error::checkpoint(format!("checkpoint options differ from this optimizer's ({why})")));
        }
        for spec in specs {
            let stored = r.str()?;
            if stored != spec.name {
                return Err(Error::checkpoint(format!("checkpoint has option '{stored}' where this optimizer has '{}'", spec.name)));
            }
        }
        let rows = (0..self.layout.n_groups()).map(|_| r.f64s_exact(specs.len(), "option row")).collect::<Result<Vec<_>>>()?;
        let mut options = self.options.clone();
        options.replace_rows(rows)?;
        let started = match r.u32()? {
            0 => false,
            1 => true,
            other => return Err(Error::checkpoint(format!("checkpoint 'started' flag is {other}; it is 0 or 1 (corrupted?)"))),
        };
        r.expect_name(&self.name)?;
        // The checksum was verified when the reader opened, so a state that parses is whole;
        // it goes into a fresh algorithm, which replaces this one only once all of it is read.
        let mut algorithm = self.build(&self.base, &self.base_base, &options)?;
        algorithm.load(&Context { layout: &self.layout, options: &options }, &mut r)?;
        r.finish()?;
        checkpoint::check_started(started, algorithm.started()?)?;
        self.algorithm = algorithm;
        self.options = options;
        self.started = started;
        Ok(())
    }
}

/// GI's base when `name` over `base` takes one (`base_base`): GI's default; "" otherwise.
fn base_base_for(name: &str, base: &str) -> &'static str {
    if registry::takes_base_base(name, base) {
        registry::default_base("gi")
    } else {
        ""
    }
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Optimizer({}, {} tensors, {} groups, {})", self.name, self.layout.n_tensors(), self.layout.n_groups(), self.memory())
    }
}

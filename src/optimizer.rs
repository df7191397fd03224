//! The optimizer: tensors and groups, options, the step protocol (validate everything, then
//! change anything), read-back of rates and telemetry, and checkpoints.

use crate::algorithm::{Accepts, Algorithm, Context};
use crate::backend::cpu;
use crate::checkpoint::{self, Reader, Writer};
use crate::error::{Error, Result};
use crate::options::Options;
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

/// How per-sample data is scaled (ALGORITHMS.md, "Scale convention").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleScale {
    /// Entries describe `g_i`, the gradient of sample i's own loss.
    Sample,
    /// Entries describe `g_i / N` (BackPACK's BatchGrad / SumGradSquared under a mean loss).
    Mean,
}

/// Per-sample information, in one of two forms.
pub enum SampleData<'a> {
    /// Per tensor, `S = Σ_i g_i ⊙ g_i` (len elements).
    SumSq(Vec<&'a [f32]>),
    /// Per tensor, the row-major `N × len` matrix of per-sample gradients.
    PerSample(Vec<&'a [f32]>),
}

pub struct Samples<'a> {
    pub data: SampleData<'a>,
    pub scale: SampleScale,
    pub batch_size: usize,
}

impl Samples<'_> {
    /// Factor turning the given squares into squares of `g_i` (N² under the mean convention).
    pub fn square_scale(&self) -> f64 {
        match self.scale {
            SampleScale::Sample => 1.0,
            SampleScale::Mean => (self.batch_size as f64).powi(2),
        }
    }
}

/// Everything one step reads. Slices are borrowed for the call only.
pub struct StepInputs<'a> {
    /// Mean minibatch gradient per tensor.
    pub grads: Vec<&'a [f32]>,
    pub samples: Option<Samples<'a>>,
    /// A non-negative diagonal curvature estimate per tensor (vSGD).
    pub curvature: Option<Vec<&'a [f32]>>,
    /// Loss on this batch at the current parameters (GI).
    pub loss: Option<f64>,
}

impl<'a> StepInputs<'a> {
    pub fn new(grads: Vec<&'a [f32]>) -> Self {
        StepInputs { grads, samples: None, curvature: None, loss: None }
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

/// Where an optimizer's state lives and its steps run.
enum Engine {
    /// Host memory: the algorithm of `registry::build`.
    Host(Box<dyn Algorithm>),
    /// A CUDA device (feature `cuda`). Behind a mutex because reading a rate back also settles
    /// the device's status word (backend/cuda.rs), which `&self` readers must be able to do.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Mutex<crate::backend::cuda::Engine>),
}

/// An optimizer over a fixed set of tensors.
pub struct Optimizer {
    name: String,
    /// The wrapped algorithm for `gi` (its string option `base`); empty otherwise.
    base: String,
    layout: Layout,
    options: Options,
    engine: Engine,
    /// Set once a step has begun: structural options and the state shape are then fixed.
    started: bool,
}

impl Optimizer {
    /// Creates `algorithm` (see `registry::ALGORITHMS`) for tensors of `lens` elements in `groups`.
    pub fn new(algorithm: &str, lens: &[usize], groups: Option<&[usize]>) -> Result<Self> {
        let layout = Layout::new(lens, groups)?;
        let base = registry::default_base(algorithm).to_string();
        let options = Options::new(registry::specs(algorithm, &base)?, layout.n_groups());
        let built = registry::build(algorithm, &base, &layout, false)?;
        Ok(Optimizer { name: algorithm.to_string(), base, layout, options, engine: Engine::Host(built), started: false })
    }

    /// Creates `algorithm` on CUDA device `ordinal`, stepping on `stream`: its state lives in
    /// device memory and `step_device` takes device pointers. ALR_UNSUPPORTED for an algorithm
    /// without CUDA kernels, ALR_CUDA_ERROR without a driver or such a device.
    #[cfg(feature = "cuda")]
    pub fn new_on_cuda(algorithm: &str, lens: &[usize], groups: Option<&[usize]>, ordinal: i32, stream: crate::backend::cuda::Stream) -> Result<Self> {
        let layout = Layout::new(lens, groups)?;
        let options = Options::new(registry::specs(algorithm, registry::default_base(algorithm))?, layout.n_groups());
        let engine = crate::backend::cuda::Engine::new(ordinal, stream, algorithm, &Context { layout: &layout, options: &options })?;
        Ok(Optimizer {
            name: algorithm.to_string(),
            base: String::new(),
            layout,
            options,
            engine: Engine::Cuda(std::sync::Mutex::new(engine)),
            started: false,
        })
    }

    /// The CUDA device this optimizer lives on (None: host memory).
    pub fn cuda_ordinal(&self) -> Option<usize> {
        match &self.engine {
            Engine::Host(_) => None,
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => Some(lock(engine).ordinal()),
        }
    }

    /// The host algorithm, or why a host call cannot run on this optimizer.
    fn host(&self) -> Result<&dyn Algorithm> {
        match &self.engine {
            Engine::Host(algorithm) => Ok(algorithm.as_ref()),
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => Err(on_cuda(lock(engine).ordinal())),
        }
    }

    pub fn algorithm(&self) -> &str {
        &self.name
    }

    /// GI's wrapped algorithm ("" for every other algorithm).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn ctx(&self) -> Context<'_> {
        Context { layout: &self.layout, options: &self.options }
    }

    /// Sets an option for every group (`group = None`) or one group.
    pub fn set_option(&mut self, name: &str, group: Option<usize>, value: f64) -> Result<()> {
        let structural = self.options.spec(name, &self.name)?.structural;
        if structural && self.started {
            return Err(Error::wrong_state(format!("option '{name}' shapes the optimizer's state: set it before the first step")));
        }
        let mut options = self.options.clone();
        options.set(&self.name, name, group, value)?;
        match &mut self.engine {
            // Rebuild so the state matches the new shape; nothing has been learned yet.
            Engine::Host(algorithm) if structural => *algorithm = registry::build(&self.name, &self.base, &self.layout, false)?,
            Engine::Host(_) => {}
            // The device keeps a copy of the options its kernels read.
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => lock(engine).options_changed(&Context { layout: &self.layout, options: &options })?,
        }
        self.options = options;
        Ok(())
    }

    pub fn get_option(&self, name: &str, group: usize) -> Result<f64> {
        self.options.spec(name, &self.name)?;
        self.check_group(group)?;
        Ok(self.options.get(group, name))
    }

    /// Sets a string option (GI's `base`); must come before the first step and before the
    /// wrapped algorithm's own options, which it resets to their defaults.
    pub fn set_option_str(&mut self, name: &str, value: &str) -> Result<()> {
        if name != "base" || self.name != "gi" || self.cuda_ordinal().is_some() {
            return Err(Error::invalid(format!(
                "algorithm '{}' has no string option '{name}' (only 'gi' takes one: 'base')",
                self.name
            )));
        }
        if self.started {
            return Err(Error::wrong_state(format!("option '{name}' shapes the optimizer: set it before the first step")));
        }
        let options = Options::new(registry::specs(&self.name, value)?, self.layout.n_groups());
        *self.engine.host_mut()? = registry::build(&self.name, value, &self.layout, false)?;
        self.options = options;
        self.base = value.to_string();
        Ok(())
    }

    fn check_group(&self, group: usize) -> Result<()> {
        if group >= self.layout.n_groups() {
            return Err(Error::invalid(format!("group {group} does not exist (this optimizer has {} groups)", self.layout.n_groups())));
        }
        Ok(())
    }

    /// Validates everything a step reads; nothing is changed before this passes.
    fn validate(&self, params: &[&mut [f32]], inputs: &StepInputs, callbacks: &Callbacks) -> Result<()> {
        let algorithm = self.host()?;
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
        let check_finite = self.options.flag(0, "check_finite");
        let check = |what: &str, bufs: &[&[f32]], per_elem: usize, finite: bool, non_negative: bool| -> Result<()> {
            if bufs.len() != n {
                return Err(Error::shape(format!("{} {what} tensors given, the optimizer has {n} tensors", bufs.len())));
            }
            for (t, (buf, &len)) in bufs.iter().zip(lens).enumerate() {
                let want = crate::limits::floats(per_elem, len).ok_or_else(|| {
                    Error::invalid(format!("tensor {t}: {what} of {per_elem} × {len} floats is larger than any buffer can be"))
                })?;
                if buf.len() != want {
                    let registered = if per_elem == 1 { format!("registered {len}") } else { format!("expected {per_elem} × {len}") };
                    return Err(Error::shape(format!("tensor {t}: {what} has {} elements, {registered}", buf.len())));
                }
                if finite && !cpu::all_finite(buf) {
                    let i = cpu::first_non_finite(buf).unwrap_or(0);
                    return Err(Error::non_finite(format!("tensor {t}: {what}[{i}] is {}", buf[i])));
                }
                if non_negative && !cpu::all_non_negative(buf) {
                    if let Some(i) = cpu::first_negative(buf) {
                        return Err(Error::invalid(format!("tensor {t}: {what}[{i}] = {} is negative; it must be ≥ 0", buf[i])));
                    }
                }
            }
            Ok(())
        };
        let param_views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
        // Parameters are checked for shape only: a non-finite parameter is the caller's state, not an input.
        for (t, (p, &len)) in param_views.iter().zip(lens).enumerate() {
            if p.len() != len {
                return Err(Error::shape(format!("tensor {t}: param has {} elements, registered {len}", p.len())));
            }
        }
        let accepts: Accepts = algorithm.accepts(&self.ctx());
        // An algorithm that checks its own inputs still gets the shapes checked here.
        let own = accepts.checks_own_inputs;
        check("grad", &inputs.grads, 1, check_finite && !own, false)?;
        let refuse = |what: &str| {
            Err(Error::unsupported(format!("algorithm '{}' does not use {what}; pass none", self.name)))
        };
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

    /// One training step: updates `params` in place. On error nothing has changed, except
    /// where the error says otherwise (a failing GI loss callback: the move was made, η kept).
    pub fn step(&mut self, params: &mut [&mut [f32]], inputs: &StepInputs, callbacks: &mut Callbacks) -> Result<()> {
        self.validate(params, inputs, callbacks)?;
        let algorithm = self.engine.host_mut()?;
        let ctx = Context { layout: &self.layout, options: &self.options };
        let result = algorithm.step(&ctx, params, inputs, callbacks);
        if result.as_ref().map_or_else(|e| e.after_change, |_| true) {
            self.started = true;
        }
        result
    }

    /// One step of an optimizer on a CUDA device: enqueues it on the optimizer's stream and
    /// returns without waiting. Pointers are device pointers of the registered sizes. Bad values
    /// found on the device are reported by the next read of a rate, telemetry or checkpoint.
    #[cfg(feature = "cuda")]
    pub fn step_device(&mut self, inputs: &crate::backend::cuda::DeviceStep) -> Result<()> {
        let n = self.layout.n_tensors();
        if inputs.params.len() != n || inputs.grads.len() != n {
            return Err(Error::shape(format!(
                "step got {} parameter and {} gradient tensors, the optimizer has {n} tensors",
                inputs.params.len(),
                inputs.grads.len()
            )));
        }
        let Engine::Cuda(engine) = &mut self.engine else {
            return Err(Error::wrong_state("this optimizer lives in host memory: pass host pointers"));
        };
        let engine = engine.get_mut().unwrap_or_else(|p| p.into_inner());
        engine.step(&Context { layout: &self.layout, options: &self.options }, inputs)?;
        self.started = true;
        Ok(())
    }

    /// GI's second phase: the loss on the same batch after the last step's move.
    pub fn report_loss(&mut self, loss_after: f64) -> Result<()> {
        let ctx = Context { layout: &self.layout, options: &self.options };
        self.engine.host_mut()?.report_loss(&ctx, loss_after)
    }

    pub fn n_groups(&self) -> usize {
        self.layout.n_groups()
    }

    pub fn lr(&self, group: usize) -> Result<f64> {
        self.check_group(group)?;
        match &self.engine {
            Engine::Host(algorithm) => Ok(algorithm.lr(&self.ctx(), group)),
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => lock(engine).lr(&self.ctx(), group),
        }
    }

    pub fn momentum(&self, group: usize) -> Result<f64> {
        self.check_group(group)?;
        match &self.engine {
            Engine::Host(algorithm) => Ok(algorithm.momentum(&self.ctx(), group)),
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => lock(engine).momentum(&self.ctx(), group),
        }
    }

    pub fn telemetry(&self, group: usize) -> Result<Vec<(&'static str, f64)>> {
        self.check_group(group)?;
        match &self.engine {
            Engine::Host(algorithm) => Ok(algorithm.telemetry(&self.ctx(), group)),
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => lock(engine).telemetry(&self.ctx(), group),
        }
    }

    /// The whole state (configuration, options, algorithm state) as a checksummed buffer.
    pub fn save(&self) -> Result<Vec<u8>> {
        if matches!(&self.engine, Engine::Host(algorithm) if algorithm.awaiting_report()) {
            return Err(Error::wrong_state("the last step is waiting for its loss: call alr_report_loss before saving"));
        }
        let mut w = Writer::default();
        w.bytes.extend_from_slice(checkpoint::MAGIC);
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
        match &self.engine {
            Engine::Host(algorithm) => algorithm.save(&mut w),
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => lock(engine).save(&self.ctx(), &mut w)?,
        }
        Ok(w.finish())
    }

    /// Restores a state saved by `save` from an optimizer of the same algorithm and tensors.
    /// On any error the optimizer is unchanged.
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = Reader::open(bytes)?;
        let name = r.str()?;
        if name != self.name {
            return Err(Error::checkpoint(format!("checkpoint is of algorithm '{name}', this optimizer is '{}'", self.name)));
        }
        let base = r.str()?;
        if base != self.base {
            return Err(Error::checkpoint(format!(
                "checkpoint wraps base '{base}', this optimizer wraps '{}'; set the same base before loading",
                self.base
            )));
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
            return Err(Error::checkpoint("checkpoint options differ from this optimizer's (other library version?)"));
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
        let started = r.u32()? != 0;
        // The checksum was verified when the reader opened, so a state that parses is whole.
        let ctx = Context { layout: &self.layout, options: &options };
        match &mut self.engine {
            Engine::Host(current) => {
                let mut algorithm = registry::build(&self.name, &self.base, &self.layout, false)?;
                algorithm.load(&ctx, &mut r)?;
                r.finish()?;
                *current = algorithm;
            }
            // The checkpoint is read to its end before any of it is uploaded (backend/cuda.rs).
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => {
                engine.get_mut().unwrap_or_else(|p| p.into_inner()).load(&ctx, r)?;
            }
        }
        self.options = options;
        self.started = started;
        Ok(())
    }
}

/// The device engine, also after a panic in another call (which poisons the handle anyway).
#[cfg(feature = "cuda")]
fn lock(engine: &std::sync::Mutex<crate::backend::cuda::Engine>) -> std::sync::MutexGuard<'_, crate::backend::cuda::Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    fn host_mut(&mut self) -> Result<&mut Box<dyn Algorithm>> {
        match self {
            Engine::Host(algorithm) => Ok(algorithm),
            #[cfg(feature = "cuda")]
            Engine::Cuda(engine) => Err(on_cuda(lock(engine).ordinal())),
        }
    }
}

/// Why a host-pointer call cannot run on an optimizer on CUDA device `ordinal`.
#[cfg(feature = "cuda")]
fn on_cuda(ordinal: usize) -> Error {
    Error::wrong_state(format!(
        "this optimizer lives on CUDA device {ordinal}: its steps take device pointers, and it has no host-only calls (GI's loss report)"
    ))
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Optimizer({}, {} tensors, {} groups)", self.name, self.layout.n_tensors(), self.layout.n_groups())
    }
}

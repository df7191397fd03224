//! Devices: where state lives and arithmetic runs (candle's `BackendStorage`, seen from an
//! optimizer). A device offers primitives, never papers: per-tensor state buffers, per-group
//! records, a fused elementwise update, weighted dots, the per-sample spread moments, a
//! per-record scalar solve, input checks and a status word. Every algorithm in `base/` and
//! `adapt/` is written once over [`Device`]; a rule type carries both its Rust function (which
//! the CPU runs) and the name of its kernel (which a GPU launches), as candle's `UnaryOpT`
//! carries its `KERNEL`.
//!
//! `cpu` runs every algorithm; `cuda` (feature `cuda`) runs those whose rules have kernels in
//! cuda/ (never yet run on a GPU: see the README's GPU status).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use std::marker::PhantomData;

use crate::error::{Error, Result};

/// Element-wise state of an algorithm: how many f32 values each parameter element carries, laid
/// out interleaved (Adam: `[m, v]` per element) in memory and in checkpoints, on every device.
pub trait ElemState: Copy + Default + Send + Sync + 'static {
    const FLOATS: usize;
    fn write(&self, out: &mut Vec<f32>);
    fn read(values: &[f32]) -> Self;
}

impl ElemState for () {
    const FLOATS: usize = 0;
    fn write(&self, _: &mut Vec<f32>) {}
    fn read(_: &[f32]) -> Self {}
}

impl ElemState for f32 {
    const FLOATS: usize = 1;
    fn write(&self, out: &mut Vec<f32>) {
        out.push(*self);
    }
    fn read(values: &[f32]) -> Self {
        values[0]
    }
}

impl ElemState for [f32; 2] {
    const FLOATS: usize = 2;
    fn write(&self, out: &mut Vec<f32>) {
        out.extend_from_slice(self);
    }
    fn read(values: &[f32]) -> Self {
        [values[0], values[1]]
    }
}

/// `n` copies of `value`, or an error — not a process abort — when the memory cannot be had
/// (every buffer sized by the caller's input is allocated through this or `try_reserve`).
pub fn filled<T: Clone>(n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::invalid(format!("cannot allocate {n} values of {} bytes: the tensors or groups are too many for this memory", std::mem::size_of::<T>()))
    })?;
    v.resize(n, value);
    Ok(v)
}

/// A record of scalars (one per group, or per unit of an algorithm), `#[repr(C)]`: the same
/// struct, field for field, is what its kernels read and write on a GPU.
pub trait Record: Copy + Default + Send + Sync + 'static {}

/// The record of a rule that reads none.
impl Record for () {}

/// What every per-element rule has: its types, its kernel's name, and the scalars it forms once
/// per launch.
pub trait KernelRule: 'static {
    type State: ElemState;
    /// Scalars passed by value to every launch (`#[repr(C)]`: the kernel's argument).
    type Coeffs: Copy + Send + Sync + 'static;
    /// The per-group record the rule reads at run time (`()`: none). On a GPU it lives in
    /// device memory, written by a solve kernel, so no step has to read it back to the host.
    type Record: Record;
    /// What the per-element function needs, formed once per launch from both.
    type Prepared: Copy + Send + Sync;
    /// The kernel (cuda/*.cu) that runs `prepare`, then the rule's per-element function.
    const KERNEL: &'static str;
    fn prepare(c: &Self::Coeffs, r: &Self::Record) -> Self::Prepared;
}

/// What a fused pass does to one element.
pub trait ElementRule: KernelRule {
    /// The pass follows a reduction of the same step that ran on the CPU's worker threads over
    /// data too large for the caches (AutoOpt's pass 2): one core does not reach the memory
    /// bandwidth there that several do, so the CPU may split the pass over its workers too.
    const AFTER_THREADED_REDUCTION: bool = false;
    /// The rule sets θ to `next` (which then forms the new value itself) instead of
    /// subtracting a displacement: for a rule whose new θ is not a small step from the old one
    /// (schedule-free's interpolations), where `θ − (θ − new)` would not give `new` back.
    /// `advance_dot` and `apply_scaled` (GI's passes) take no such rule.
    const ASSIGNS: bool = false;
    /// Advances one element's state and returns its displacement (`θ ← θ − displacement`).
    fn advance(p: &Self::Prepared, g: f32, theta: f32, state: &mut Self::State) -> f32;
    /// The new θ: `θ − advance(…)` unless the rule `ASSIGNS`.
    #[inline(always)]
    fn next(p: &Self::Prepared, g: f32, theta: f32, state: &mut Self::State) -> f32 {
        theta - Self::advance(p, g, theta, state)
    }
    /// The displacement of the step just taken, from the advanced state: what a wrapper scales
    /// (GI's φ and second pass, schedule-free's base). `advance`'s value for most rules; a rule
    /// that forms its new θ as the reference does (the peers) returns the step itself here,
    /// not the float32 move `θ − fl(θ − step)` next to θ.
    fn delta(p: &Self::Prepared, g: f32, theta: f32, state: &Self::State) -> f32;
}

/// A rule that sets θ through a variable of its own, one float per element (`z`), which an
/// inner rule steps as it would step a parameter, all in one pass: schedule-free's y, its z and
/// a fixed-rate base, which would otherwise take a pass each and a copy of z.
pub trait NestedRule: KernelRule<State = f32> {
    /// The rule that steps z; all its scalars come by value.
    type Inner: ElementRule<Record = ()>;
    /// The new θ, advancing `z` and the inner rule's state.
    fn next(
        p: &Self::Prepared,
        inner: &<Self::Inner as KernelRule>::Prepared,
        g: f32,
        theta: f32,
        z: &mut f32,
        state: &mut <Self::Inner as KernelRule>::State,
    ) -> f32;
}

/// `new` where `take` holds, else `old`, chosen with bit operations: a rule that stores `new`
/// only under a flag the same for every element (Prodigy's `p0 ← θ` and DoG's `x0 ← θ` at the
/// first step) and writes it as a branch or a select is compiled into a masked store, which
/// AVX-512 makes a scatter on every element and every step; a store of this value is a plain
/// one.
#[inline(always)]
pub fn chosen(take: bool, new: f32, old: f32) -> f32 {
    let mask = u32::from(take).wrapping_neg();
    f32::from_bits((new.to_bits() & mask) | (old.to_bits() & !mask))
}

/// Two products per element summed over a tensor (in f64 lanes), advancing the element's
/// state on the way: `Σ_i dot(g_i, θ_i, state_i)`.
pub trait DotRule: KernelRule {
    fn dot(p: &Self::Prepared, g: f32, theta: f32, state: &mut Self::State) -> [f64; 2];
    /// Whether `dot` may change the state in this launch: one that cannot (DoG after its first
    /// step, which only reads x0) writes no state back on the CPU.
    #[inline(always)]
    fn changes_state(_p: &Self::Prepared) -> bool {
        true
    }
}

/// The weights of the spread moments: per element `(w, y) = weights(state, g)` for the sums
/// `[Σ w·spread, Σ w g g, Σ w g y, Σ w y y]`, `spread_j = Σ_i (k x_ij)² − N g_j²` the per-sample
/// spread of column j (from Σg², or from the N × len rows). The state is only read.
pub trait MomentRule: KernelRule {
    fn weights(p: &Self::Prepared, state: &Self::State, g: f32) -> (f32, f32);
}

/// What a sampled pass makes of one element: its displacement (`θ ← θ − displacement` when the
/// pass moves θ), three terms for the tensor's sums and one for its maximum.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampled {
    pub displacement: f32,
    pub sums: [f64; 3],
    pub max: f32,
}

/// A per-element rule that reads, besides g, a second caller tensor `h` (vSGD's curvature) and
/// `x_j`, the column's per-sample second moment about 0 in f64: `Σ_i (k x_ij)² / N` from Σg² or
/// from the N × len rows, or `g_j²` without per-sample data. It advances the state; the pass
/// adds the terms' three sums and takes the maximum (from 0) into the tensor's four slots.
pub trait SampledRule: KernelRule {
    fn advance(p: &Self::Prepared, g: f32, x: f64, h: f32, state: &mut Self::State) -> Sampled;
}

/// A per-record scalar solve from the record's sums (its tensors' sums added in tensor order;
/// with `LAST_IS_MAX` the fourth slot is their maximum): a host loop on the CPU, one kernel
/// launch on a GPU.
pub trait SolveRule: 'static {
    type Record: Record;
    /// Per-record coefficients (options), kept in device memory beside the records.
    type Coeffs: Record;
    /// By-value scalars of one solve (the batch size, …).
    type Params: Copy + Send + Sync + 'static;
    const KERNEL: &'static str;
    /// When any record's sums are not finite, refuse the step and change no record.
    const REQUIRE_FINITE: bool;
    /// The fourth slot is a maximum over the record's tensors (a sampled pass's), not a sum.
    const LAST_IS_MAX: bool = false;
    fn solve(p: &Self::Params, c: &Self::Coeffs, sums: &[f64; 4], record: &mut Self::Record);
}

/// Whether a pass writes the state it advances (`Write`), or only reads it (`Measure`: the
/// sums of a sharded step before its reduction, which must change nothing if it fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Write,
    Measure,
}

/// How a reduction combines the processes' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// The values a reduction combines in place: host memory, or device memory ordered on the
/// optimizer's stream.
pub enum ReduceValues<'a> {
    Host(&'a mut [f64]),
    Device { address: u64, len: usize, stream: *mut std::ffi::c_void },
}

/// The caller's communicator over the processes that hold shards of the same tensors
/// (`MPI_Allreduce`, `torch.distributed.all_reduce`, NCCL): combines the values in place.
pub trait Communicator: Send + Sync {
    fn all_reduce(&self, values: ReduceValues, op: ReduceOp) -> std::result::Result<(), String>;
}

/// A reduction pass over a sharded step's tensors, whose sums solve `S` reads: without a
/// communicator, `pass(Write)`; with one, `pass(Measure)` (the state only read, when `mutates`),
/// the reduction — where a failure leaves everything as it was —, then `pass(Write)` from the
/// same state and records.
pub fn reduced_pass<S: SolveRule, D: Device>(
    device: &D,
    sums: &mut D::Sums,
    comm: Option<&dyn Communicator>,
    mutates: bool,
    mut pass: impl FnMut(&mut D::Sums, Commit) -> Result<()>,
) -> Result<()> {
    let Some(comm) = comm else {
        return pass(sums, Commit::Write);
    };
    if !mutates {
        pass(sums, Commit::Write)?;
        return device.reduce_sums(sums, S::LAST_IS_MAX, comm);
    }
    pass(sums, Commit::Measure)?;
    device.reduce_sums(sums, S::LAST_IS_MAX, comm)?;
    pass(sums, Commit::Write)
}

/// `Algorithm::abstain` for an algorithm whose first reduction of a step is that of `reduced_pass`
/// before solve `S`: the same calls with NaN, when sharded. Returns whether it made them (their
/// outcome is the refusal the process already has).
pub fn abstain<S: SolveRule, D: Device>(device: &D, sums: &D::Sums, comm: Option<&dyn Communicator>) -> bool {
    let Some(comm) = comm else { return false };
    let _ = device.abstain(sums, S::LAST_IS_MAX, comm);
    true
}

/// Inside a reduction pass, before its reduction: when this process's own sums of a record are
/// not finite in `slots` (read at once: call it on the CPU only), `culprit(record)` names the
/// input that made them so; then the process abstains from the reduction (sharded: the others
/// refuse the step too, §7) and returns that error. A record without a culprit (an overflow)
/// is left to the step.
pub fn refuse_own_bad_inputs<S: SolveRule, D: Device>(
    device: &D,
    sums: &D::Sums,
    comm: Option<&dyn Communicator>,
    slots: std::ops::Range<usize>,
    culprit: impl Fn(usize) -> Option<Error>,
) -> Result<()> {
    for (record, totals) in device.totals(sums)?.iter().enumerate() {
        if totals[slots.clone()].iter().all(|v| v.is_finite()) {
            continue;
        }
        if let Some(refused) = culprit(record) {
            abstain::<S, D>(device, sums, comm);
            return Err(refused);
        }
    }
    Ok(())
}

/// The error of a reduce callback that failed.
pub fn reduce_failed(why: String) -> Error {
    Error::callback(format!("the reduce callback failed ({why}); nothing changed on this process"))
}

/// Where a caller's buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    Host,
    Cuda { ordinal: usize },
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Memory::Host => write!(f, "host memory"),
            Memory::Cuda { ordinal } => write!(f, "the memory of CUDA device {ordinal}"),
        }
    }
}

/// A caller's read-only float32 buffer, borrowed for one call: a host slice (safe to make) or
/// device memory (made only through the `unsafe` constructor, by the C boundary).
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    ptr: *const f32,
    len: usize,
    memory: Memory,
    _borrow: PhantomData<&'a [f32]>,
}

// SAFETY: a Tensor is a shared borrow of floats (host or device); sharing one across threads is
// what sharing a `&[f32]` is.
unsafe impl Send for Tensor<'_> {}
unsafe impl Sync for Tensor<'_> {}

impl<'a> Tensor<'a> {
    pub fn host(slice: &'a [f32]) -> Self {
        Tensor { ptr: slice.as_ptr(), len: slice.len(), memory: Memory::Host, _borrow: PhantomData }
    }

    /// # Safety
    /// `ptr` addresses `len` floats in the memory of CUDA device `ordinal`, valid and not
    /// written by anything else for `'a`.
    pub unsafe fn cuda(ptr: *const f32, len: usize, ordinal: usize) -> Self {
        Tensor { ptr, len, memory: Memory::Cuda { ordinal }, _borrow: PhantomData }
    }

    /// A caller's raw pointer in `memory` (the C boundary's one conversion).
    ///
    /// # Safety
    /// `ptr` is non-null, aligned, and addresses `len` floats in `memory`, valid and not
    /// written by anything else for `'a`.
    pub unsafe fn from_raw(ptr: *const f32, len: usize, memory: Memory) -> Result<Self> {
        check_buffer_len(len)?;
        Ok(match memory {
            // SAFETY: the caller's contract; the length fits a slice (checked).
            Memory::Host => Tensor::host(unsafe { std::slice::from_raw_parts(ptr, len) }),
            // SAFETY: the caller's contract.
            Memory::Cuda { ordinal } => unsafe { Tensor::cuda(ptr, len, ordinal) },
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// The floats, when they are in host memory.
    pub fn as_host(&self) -> Option<&'a [f32]> {
        // SAFETY: a host Tensor was made from a slice of this length living for 'a.
        (self.memory == Memory::Host).then(|| unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }

    /// The device address (for a backend's launches).
    #[cfg(feature = "cuda")]
    pub(crate) fn address(&self) -> *const f32 {
        self.ptr
    }
}

impl<'a> From<&'a [f32]> for Tensor<'a> {
    fn from(slice: &'a [f32]) -> Self {
        Tensor::host(slice)
    }
}

impl<'a> From<&'a Vec<f32>> for Tensor<'a> {
    fn from(v: &'a Vec<f32>) -> Self {
        Tensor::host(v)
    }
}

/// A caller's float32 buffer updated in place, borrowed for one call (see [`Tensor`]).
pub struct TensorMut<'a> {
    ptr: *mut f32,
    len: usize,
    memory: Memory,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a TensorMut is an exclusive borrow, as `&mut [f32]` is.
unsafe impl Send for TensorMut<'_> {}
unsafe impl Sync for TensorMut<'_> {}

impl<'a> TensorMut<'a> {
    pub fn host(slice: &'a mut [f32]) -> Self {
        TensorMut { ptr: slice.as_mut_ptr(), len: slice.len(), memory: Memory::Host, _borrow: PhantomData }
    }

    /// # Safety
    /// `ptr` addresses `len` floats in the memory of CUDA device `ordinal`, valid and used by
    /// nothing else for `'a`.
    pub unsafe fn cuda(ptr: *mut f32, len: usize, ordinal: usize) -> Self {
        TensorMut { ptr, len, memory: Memory::Cuda { ordinal }, _borrow: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// A caller's raw pointer in `memory` (the C boundary's one conversion).
    ///
    /// # Safety
    /// `ptr` is non-null, aligned, and addresses `len` floats in `memory`, valid and used by
    /// nothing else for `'a`.
    pub unsafe fn from_raw(ptr: *mut f32, len: usize, memory: Memory) -> Result<Self> {
        check_buffer_len(len)?;
        Ok(match memory {
            // SAFETY: the caller's contract; the length fits a slice (checked).
            Memory::Host => TensorMut::host(unsafe { std::slice::from_raw_parts_mut(ptr, len) }),
            // SAFETY: the caller's contract.
            Memory::Cuda { ordinal } => unsafe { TensorMut::cuda(ptr, len, ordinal) },
        })
    }

    /// A read-only view for this borrow.
    pub fn view(&self) -> Tensor<'_> {
        Tensor { ptr: self.ptr, len: self.len, memory: self.memory, _borrow: PhantomData }
    }

    pub fn as_host(&self) -> Option<&[f32]> {
        // SAFETY: a host TensorMut was made from a slice of this length living for 'a.
        (self.memory == Memory::Host).then(|| unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }

    pub fn as_host_mut(&mut self) -> Option<&mut [f32]> {
        // SAFETY: as in as_host; `&mut self` makes this the only borrow.
        (self.memory == Memory::Host).then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) })
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn address(&self) -> *mut f32 {
        self.ptr
    }
}

impl<'a> From<&'a mut [f32]> for TensorMut<'a> {
    fn from(slice: &'a mut [f32]) -> Self {
        TensorMut::host(slice)
    }
}

/// A scaled step has no meaning for a rule that sets θ itself (schedule-free's own rules).
pub(crate) fn refuse_assigning<R: ElementRule>() -> Result<()> {
    if R::ASSIGNS {
        return Err(Error::invalid(format!("kernel {} sets θ: it cannot be scaled", R::KERNEL)));
    }
    Ok(())
}

/// No buffer can hold more than `isize::MAX` bytes: a longer length is a caller's bug (a wrong
/// batch size, say), refused before any slice is formed from it.
fn check_buffer_len(len: usize) -> Result<()> {
    if crate::limits::floats(1, len).is_none() {
        return Err(Error::invalid(format!("a buffer of {len} floats is larger than any memory can hold; check the sizes (batch_size?)")));
    }
    Ok(())
}

/// Per-sample data of one tensor as a moments pass reads it.
#[derive(Clone, Copy)]
pub enum SampleTensor<'a> {
    /// `Σ_i (k g_i)²`, len floats.
    SumSq(Tensor<'a>),
    /// The row-major `N × len` matrix of `k g_i`.
    Rows(Tensor<'a>),
}

/// One tensor's per-sample data with its batch size `n` and scale `k` (each entry is `k·g_i`).
#[derive(Clone, Copy)]
pub struct SampleView<'a> {
    pub data: SampleTensor<'a>,
    pub n: usize,
    pub k: f64,
}

/// An error a device found after the step that caused it had returned (GPU steps never
/// synchronise): that step and every later one up to the read changed nothing.
#[derive(Debug)]
pub struct Deferred {
    pub error: Error,
    /// Steps enqueued since (and including) the one that found it, none of which ran.
    pub discarded_steps: u64,
}

/// The primitives every algorithm is written over.
pub trait Device: Clone + Send + Sync + 'static {
    /// A tensor's per-element state.
    type State<S: ElemState>: Send + Sync;
    /// Records of scalars (per group or per unit).
    type Records<R: Record>: Send + Sync;
    /// Per-tensor sums of a reduction pass, read by a solve.
    type Sums: Send + Sync;

    fn memory(&self) -> Memory;

    /// Checks that the device has the named kernels (at creation, so a missing one is an error
    /// then, not at the first step).
    fn require(&self, kernels: &[&'static str]) -> Result<()>;

    /// A zeroed state of `len` elements.
    fn alloc<S: ElemState>(&self, len: usize) -> Result<Self::State<S>>;
    /// One zeroed state per tensor of `lens`; the list itself is allocated fallibly too (its
    /// length is the caller's tensor count).
    fn alloc_per_tensor<S: ElemState>(&self, lens: &[usize]) -> Result<Vec<Self::State<S>>> {
        let mut states = Vec::new();
        states.try_reserve_exact(lens.len()).map_err(|_| Error::invalid(format!("cannot allocate the state list of {} tensors", lens.len())))?;
        for &len in lens {
            states.push(self.alloc(len)?);
        }
        Ok(states)
    }
    /// `f` of the state's values in host memory (a checkpoint): the CPU lends its own, a GPU
    /// downloads them first.
    fn with_state<S: ElemState, T>(&self, state: &Self::State<S>, f: impl FnOnce(&[S]) -> T) -> Result<T>;
    fn write_state<S: ElemState>(&self, state: &mut Self::State<S>, values: &[S]) -> Result<()>;

    /// `dst ← src` (states of one length), after the work enqueued so far: a GPU copies on its
    /// stream without waiting for it.
    fn copy_state<S: ElemState>(&self, dst: &mut Self::State<S>, src: &Self::State<S>) -> Result<()>;

    fn records<R: Record>(&self, values: &[R]) -> Result<Self::Records<R>>;
    fn read_records<R: Record>(&self, records: &Self::Records<R>) -> Result<Vec<R>>;
    fn write_records<R: Record>(&self, records: &mut Self::Records<R>, values: &[R]) -> Result<()>;
    /// `dst ← src` (as many records), as `copy_state`: no host synchronisation.
    fn copy_records<R: Record>(&self, dst: &mut Self::Records<R>, src: &Self::Records<R>) -> Result<()>;

    /// Sums for tensors of `lens`, where record `r` adds the tensors `owners[r]` in that order.
    fn sums(&self, lens: &[usize], owners: &[Vec<usize>]) -> Result<Self::Sums>;

    /// A state buffer of one float per element seen as a tensor (schedule-free steps its base
    /// on its `z` buffer, as it would step the caller's parameters).
    fn state_view<'s>(&self, state: &'s mut Self::State<f32>) -> TensorMut<'s>;

    /// `θ ← θ − advance(…)` (`θ ← next(…)` for a rule that `ASSIGNS`) over one tensor,
    /// advancing its state (record `at` of `records`).
    fn update<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Self::State<R::State>,
    ) -> Result<()>;

    /// `θ ← θ − scale·displacement` over one tensor, advancing its state: the arithmetic of
    /// `advance_dot` then `apply_scaled` in one pass, without the sum (schedule-free steps an
    /// automatic base this way, on any device). Not for a rule that `ASSIGNS`.
    #[allow(clippy::too_many_arguments)] // one tensor's buffers and the rule's scalars, as `update`
    fn update_scaled<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Self::State<R::State>,
        scale: f32,
    ) -> Result<()>;

    /// `update`, or `update_scaled` by a wrapper's `scale` when one is given.
    #[allow(clippy::too_many_arguments)] // as `update_scaled`
    fn update_by<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Self::State<R::State>,
        scale: Option<f32>,
    ) -> Result<()> {
        match scale {
            None => self.update::<R>(c, records, at, param, grad, state),
            Some(scale) => self.update_scaled::<R>(c, records, at, param, grad, state, scale),
        }
    }

    /// `θ ← next(…)` over one tensor (`R`'s record `at` of `records`), advancing the rule's
    /// variable `z` and the inner rule's state (its scalars `inner`) in the same pass.
    #[allow(clippy::too_many_arguments)] // one tensor's buffers and both rules' scalars
    fn update_nested<R: NestedRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        inner: &<R::Inner as KernelRule>::Coeffs,
        param: &mut TensorMut,
        grad: &Tensor,
        z: &mut Self::State<f32>,
        state: &mut Self::State<<R::Inner as KernelRule>::State>,
    ) -> Result<()>;

    /// Advances the state as `update` would, leaves θ alone, and returns `Σ g·delta` (GI's
    /// proposal: it needs the sum on the host).
    fn advance_dot<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &TensorMut,
        grad: &Tensor,
        state: &mut Self::State<R::State>,
    ) -> Result<f64>;

    /// `θ ← next(…)` over one tensor for a rule that `ASSIGNS`, advancing its state (the bits
    /// `update` gives), and the sum `Σ w·(θ − θ')` of the move it made, weighted by `w`, in f64
    /// lanes on the host: schedule-free over GI's φ_y, the first-order decrease of y's move
    /// with `w` the caller's gradient (docs/algorithms.md §3.3), formed in the pass that
    /// writes y'. The CPU's only, as GI is.
    #[allow(clippy::too_many_arguments)] // one tensor's buffers, the rule's scalars and the weight
    fn assign_dot<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        weight: &Tensor,
        state: &mut Self::State<R::State>,
    ) -> Result<f64>;

    /// `θ ← θ − scale·delta(…)` from the already advanced state (GI's second pass).
    #[allow(clippy::too_many_arguments)] // one tensor's buffers and the rule's scalars, as `update`
    fn apply_scaled<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &Self::State<R::State>,
        scale: f32,
    ) -> Result<()>;

    /// The two dots of `R` over one tensor into `sums` (slots 0 and 1 of tensor `tensor`).
    #[allow(clippy::too_many_arguments)] // one tensor's buffers, the rule's scalars, the output
    fn dots<R: DotRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: &Tensor,
        grad: &Tensor,
        state: &mut Self::State<R::State>,
        sums: &mut Self::Sums,
        tensor: usize,
        commit: Commit,
    ) -> Result<()>;

    /// The spread moments of `M` over one tensor into `sums` (all four slots of `tensor`). A
    /// negative Σg² entry makes the first sum NaN.
    #[allow(clippy::too_many_arguments)] // one tensor's buffers, the rule's scalars, the output
    fn moments<M: MomentRule>(
        &self,
        c: &M::Coeffs,
        records: &Self::Records<M::Record>,
        at: usize,
        grad: &Tensor,
        state: &Self::State<M::State>,
        samples: &SampleView,
        sums: &mut Self::Sums,
        tensor: usize,
    ) -> Result<()>;

    /// `R::advance` over one tensor with its curvature `h` and per-sample data (`None`: x = g²),
    /// into `sums` (`[Σ sums₀, Σ sums₁, Σ sums₂, max(0, max)]` of tensor `tensor`); with `param`
    /// the pass also moves θ by the displacement, and leaves the sums alone.
    #[allow(clippy::too_many_arguments)] // one tensor's buffers, the rule's scalars, the output
    fn sampled<R: SampledRule>(
        &self,
        c: &R::Coeffs,
        records: &Self::Records<R::Record>,
        at: usize,
        param: Option<&mut TensorMut>,
        grad: &Tensor,
        h: &Tensor,
        samples: Option<&SampleView>,
        state: &mut Self::State<R::State>,
        sums: &mut Self::Sums,
        tensor: usize,
        commit: Commit,
    ) -> Result<()>;

    /// Every record's sums (its tensors' sums added in tensor order) on the host, for what a
    /// step must hand to the host (GI's φ from a proposal). A GPU waits for the passes here.
    fn totals(&self, sums: &Self::Sums) -> Result<Vec<[f64; 4]>>;

    /// `S::solve` for every record from its sums. With `S::REQUIRE_FINITE`, a record whose
    /// sums are not finite stops the step before any record changes: `Ok(Some(r))` names it
    /// where the device can tell at once (CPU); a GPU sets its status word instead.
    fn solve<S: SolveRule>(
        &self,
        p: &S::Params,
        coeffs: &Self::Records<S::Coeffs>,
        records: &mut Self::Records<S::Record>,
        sums: &mut Self::Sums,
    ) -> Result<Option<usize>>;

    /// Sharded training (docs/algorithms.md §7): every record's sums added over this process's
    /// tensors, then over every process through `comm` (one call; two with `last_is_max`, whose
    /// fourth slots are combined by a maximum). The next `solve` reads these instead of its own
    /// sums. Reduced sums that are not finite (bad input on some process, or an overflow) are an
    /// error on every process alike, before anything changes.
    fn reduce_sums(&self, sums: &mut Self::Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()>;

    /// The calls `reduce_sums` makes, with NaN for every value: a process whose own inputs were
    /// refused still takes part in the step's collectives (one that skipped them would hang the
    /// others), and the NaN makes every process refuse the step.
    fn abstain(&self, sums: &Self::Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()>;

    /// Checks an input: every value finite, or (with `non_negative`) none negative. The CPU
    /// answers at once, naming the element; a GPU enqueues the check and reports through its
    /// status word.
    fn check(&self, what: &str, tensor: usize, x: &Tensor, non_negative: bool) -> Result<()>;

    /// Marks the start of a step (the status word records which step found bad input).
    fn begin_step(&self);

    /// Whether the work enqueued now is being captured into a graph (CUDA graphs), where by-value
    /// scalars would be replayed as captured.
    fn capturing(&self) -> Result<bool>;

    /// Reads the status word: an error found since the last read, once.
    fn settle(&self) -> std::result::Result<(), Deferred>;
}

/// The device an optimizer was created on.
#[derive(Clone)]
pub enum AnyDevice {
    Cpu(cpu::Cpu),
    #[cfg(feature = "cuda")]
    Cuda(cuda::Cuda),
}

/// The kinds of device an algorithm may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// A device to open for an optimizer: the CPU, or a CUDA device with the caller's stream.
pub struct DeviceSpec(Spec);

enum Spec {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda {
        ordinal: i32,
        stream: *mut std::ffi::c_void,
    },
}

impl DeviceSpec {
    pub fn cpu() -> Self {
        DeviceSpec(Spec::Cpu)
    }

    /// CUDA device `ordinal`, stepping on the caller's `stream` (a `CUstream`; null: the
    /// legacy default stream). ALR_UNSUPPORTED on a build without the `cuda` feature.
    ///
    /// # Safety
    /// `stream` is null or a stream of that device's primary context, alive while the
    /// optimizer opened from this is.
    #[allow(unused_variables)] // without the `cuda` feature nothing reads them
    pub unsafe fn cuda(ordinal: i32, stream: *mut std::ffi::c_void) -> Result<Self> {
        #[cfg(feature = "cuda")]
        return Ok(DeviceSpec(Spec::Cuda { ordinal, stream }));
        #[cfg(not(feature = "cuda"))]
        Err(Error::unsupported("this build of autolr has no CUDA backend (built without the `cuda` feature): create the optimizer on ALR_DEVICE_CPU"))
    }

    pub fn kind(&self) -> DeviceKind {
        match self.0 {
            Spec::Cpu => DeviceKind::Cpu,
            #[cfg(feature = "cuda")]
            Spec::Cuda { .. } => DeviceKind::Cuda,
        }
    }

    /// Opens the device: ALR_CUDA_ERROR without a driver or such a device.
    pub fn open(self) -> Result<AnyDevice> {
        match self.0 {
            Spec::Cpu => Ok(AnyDevice::Cpu(cpu::Cpu)),
            // SAFETY: the contract of `DeviceSpec::cuda`.
            #[cfg(feature = "cuda")]
            Spec::Cuda { ordinal, stream } => Ok(AnyDevice::Cuda(unsafe { cuda::Cuda::open(ordinal, stream)? })),
        }
    }
}

impl AnyDevice {
    pub fn kind(&self) -> DeviceKind {
        match self {
            AnyDevice::Cpu(_) => DeviceKind::Cpu,
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(_) => DeviceKind::Cuda,
        }
    }

    pub fn memory(&self) -> Memory {
        match self {
            AnyDevice::Cpu(d) => d.memory(),
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => d.memory(),
        }
    }

    pub fn check(&self, what: &str, tensor: usize, x: &Tensor, non_negative: bool) -> Result<()> {
        match self {
            AnyDevice::Cpu(d) => d.check(what, tensor, x, non_negative),
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => d.check(what, tensor, x, non_negative),
        }
    }

    pub fn begin_step(&self) {
        match self {
            AnyDevice::Cpu(d) => d.begin_step(),
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => d.begin_step(),
        }
    }

    pub fn settle(&self) -> std::result::Result<(), Deferred> {
        match self {
            AnyDevice::Cpu(d) => d.settle(),
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => d.settle(),
        }
    }
}

/// The parameters as host slices, for what runs on the CPU only (a callback that reads host
/// memory: vSGD's finite differences).
pub fn host_params<'t>(params: &'t [TensorMut]) -> Result<Vec<&'t [f32]>> {
    params.iter().map(|p| p.as_host().ok_or_else(|| not_host(p.memory()))).collect()
}

/// The same for inputs.
pub fn host_tensors<'t>(tensors: &[Tensor<'t>]) -> Result<Vec<&'t [f32]>> {
    tensors.iter().map(|t| t.as_host().ok_or_else(|| not_host(t.memory()))).collect()
}

fn not_host(memory: Memory) -> Error {
    Error::unsupported(format!("this algorithm runs on the CPU only: its buffers must be in host memory, not in {memory}"))
}

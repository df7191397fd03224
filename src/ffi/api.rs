//! Every `alr_*` entry point. Each converts C arguments to Rust (checking nulls and lengths),
//! calls the Rust API, and reports failure through its status and `alr_last_error()`.
//!
//! Thread-safety (all functions): different optimizers may be used from different threads at
//! once; one optimizer must not be used from two threads at the same time. The last-error text
//! is per thread.

use super::handle::{self, AlrOptimizer};
use super::{c_str, guard, non_null};
use crate::algorithm::Shards;
use crate::backend::{Communicator, DeviceKind, DeviceSpec, ReduceOp, ReduceValues, Tensor, TensorMut};
use crate::error::{AlrStatus, Error};
use crate::optimizer::{Callbacks, GradFn, LossFn, Optimizer, SampleData, SampleScale, Samples, StepInputs};
use crate::registry;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::os::raw::c_char;
use std::sync::{Mutex, OnceLock};

/// Where an optimizer's buffers live.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlrDevice {
    /// Host memory; pointers passed to `alr_step` are host pointers.
    AlrDeviceCpu = 0,
    /// CUDA device memory; pointers are device pointers, work runs on `stream`.
    AlrDeviceCuda = 1,
}

/// How per-sample data passed to `alr_step` is scaled.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlrSampleScale {
    /// Entries describe g_i, the gradient of sample i's own loss.
    AlrScaleSample = 0,
    /// Entries describe g_i / N: BackPACK's BatchGrad / SumGradSquared under a mean-reduced loss.
    AlrScaleMean = 1,
}

/// The view of the parameters `alr_set_mode` switches to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlrMode {
    /// Training: the point where gradients are taken (schedule-free's y). Every optimizer
    /// starts in this mode.
    AlrModeTrain = 0,
    /// Evaluation: the point to evaluate and ship (schedule-free's average x).
    AlrModeEval = 1,
}

/// Arguments of `alr_set_mode`. Set `struct_size = sizeof(AlrModeArgs)`.
#[repr(C)]
pub struct AlrModeArgs {
    pub struct_size: usize,
    /// An `AlrMode` value.
    pub mode: i32,
    pub n_tensors: usize,
    /// The parameters (the same buffers `alr_step` updates), rewritten in place to the new view.
    pub params: *const *mut f32,
}

/// Arguments of `alr_create`. Set `struct_size = sizeof(AlrCreateArgs)`: fields may be
/// appended in later versions, and the library reads only the fields it knows, no more than
/// `struct_size` bytes (a larger size, a newer header's, is read up to this version's fields).
#[repr(C)]
pub struct AlrCreateArgs {
    pub struct_size: usize,
    /// Algorithm name, e.g. "adam", "auto-sgd", "gi" (NUL-terminated; borrowed for the call).
    pub algorithm: *const c_char,
    /// Number of tensors (>= 1).
    pub n_tensors: usize,
    /// `n_tensors` element counts (each >= 1).
    pub lens: *const usize,
    /// `n_tensors` group ids in 0..G-1, every id used; NULL: each tensor is its own group.
    pub groups: *const u32,
    /// An `AlrDevice` value.
    pub device: i32,
    /// CUDA device ordinal (ignored on CPU).
    pub device_ordinal: i32,
    /// CUDA stream (`CUstream` / `cudaStream_t`; NULL = default stream; ignored on CPU).
    pub stream: *mut c_void,
    /// 1: the tensors are this process's shards of tensors split over processes (ZeRO, FSDP);
    /// every reduction of a step is then summed over the processes through `reduce`
    /// (docs/algorithms.md §7). 0: whole tensors (also under DDP, whose replicas need none).
    pub sharded: i32,
    /// Required when `sharded`, NULL otherwise: see `AlrReduceFn`.
    pub reduce: AlrReduceFn,
    pub reduce_user_data: *mut c_void,
}

/// `AlrCreateArgs` up to `stream`: what a caller built against the first header passes.
const CREATE_ARGS_FIRST: usize = std::mem::offset_of!(AlrCreateArgs, sharded);

/// How `AlrReduceFn` combines the processes' values.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlrReduceOp {
    AlrReduceSum = 0,
    AlrReduceMax = 1,
}

/// The caller's communicator: combines `n` doubles at `values` in place over every process of
/// the sharded optimizer (`op`: an `AlrReduceOp`; `MPI_Allreduce`, `torch.distributed.all_reduce`,
/// `ncclAllReduce`), returning 0 on success. On a CUDA optimizer `values` is device memory and
/// the call must be ordered on `stream` (the optimizer's); on the CPU `stream` is NULL. Every
/// process makes the same calls in the same order in every step (one or two per step, listed in
/// the README's "More than one process"), including a process whose own inputs were refused
/// (it passes NaN, so that every process refuses the step); the values are per-step sums only.
/// A failure is returned from the step as ALR_CALLBACK_FAILED with nothing changed on that
/// process. It must not call the optimizer.
pub type AlrReduceFn = Option<unsafe extern "C" fn(user_data: *mut c_void, values: *mut f64, n: usize, op: i32, stream: *mut c_void) -> i32>;

/// A C reduce callback as the optimizer's communicator.
struct CReduce {
    reduce: unsafe extern "C" fn(*mut c_void, *mut f64, usize, i32, *mut c_void) -> i32,
    user_data: *mut c_void,
}

// SAFETY: the header's contract: the callback and its user data serve the thread that steps the
// optimizer, which holds the handle exclusively for the call (`handle::get`).
unsafe impl Send for CReduce {}
unsafe impl Sync for CReduce {}

impl Communicator for CReduce {
    fn all_reduce(&self, values: ReduceValues, op: ReduceOp) -> std::result::Result<(), String> {
        let (ptr, n, stream) = match values {
            ReduceValues::Host(v) => (v.as_mut_ptr(), v.len(), std::ptr::null_mut()),
            ReduceValues::Device { address, len, stream } => (address as *mut f64, len, stream),
        };
        let op = match op {
            ReduceOp::Sum => AlrReduceOp::AlrReduceSum,
            ReduceOp::Max => AlrReduceOp::AlrReduceMax,
        } as i32;
        // SAFETY: the caller's contract; `ptr` addresses `n` doubles for the call.
        match unsafe { (self.reduce)(self.user_data, ptr, n, op, stream) } {
            0 => Ok(()),
            rc => Err(format!("it returned {rc}")),
        }
    }
}

/// The caller's `AlrCreateArgs` of either version, the fields it did not pass zeroed.
///
/// # Safety
/// `args` addresses at least `size` readable bytes, `size` being one of the two versions' sizes
/// or larger.
unsafe fn create_args(args: *const AlrCreateArgs, size: usize) -> AlrCreateArgs {
    let mut out = std::mem::MaybeUninit::<AlrCreateArgs>::zeroed();
    // SAFETY: the caller's contract; every field of AlrCreateArgs is valid when zeroed (null
    // pointers, no callback, 0).
    unsafe {
        std::ptr::copy_nonoverlapping(args.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), size.min(std::mem::size_of::<AlrCreateArgs>()));
        out.assume_init()
    }
}

/// Evaluates the loss on the current batch at `params` (`n_tensors` pointers in registration
/// order) into `*loss_out`; returns 0 on success, anything else on failure. It must not call
/// the optimizer that invoked it (refused with ALR_WRONG_STATE), and may change the parameter
/// buffers only if it restores them bit-exactly before returning.
pub type AlrLossFn = Option<unsafe extern "C" fn(user_data: *mut c_void, params: *const *const f32, n_tensors: usize, loss_out: *mut f64) -> i32>;

/// Writes the gradient of the loss on the current batch at `params` (library-owned shifted
/// copies of the parameters) into `grads_out` (`n_tensors` buffers of the registered sizes,
/// provided by the library); returns 0 on success. The same rules as for `AlrLossFn` apply.
pub type AlrGradFn = Option<unsafe extern "C" fn(user_data: *mut c_void, params: *const *const f32, grads_out: *const *mut f32, n_tensors: usize) -> i32>;

/// Arguments of `alr_step`. Set `struct_size = sizeof(AlrStepArgs)`; zero-initialise the
/// struct and fill what the algorithm uses. Every array holds `n_tensors` pointers in
/// registration order; every buffer is borrowed for the call only and owned by the caller.
#[repr(C)]
pub struct AlrStepArgs {
    pub struct_size: usize,
    pub n_tensors: usize,
    /// Parameters, updated in place (lens[i] floats each).
    pub params: *const *mut f32,
    /// Mean minibatch gradients (lens[i] floats each).
    pub grads: *const *const f32,
    /// Optional: S = sum_i g_i*g_i per tensor (lens[i] floats, >= 0). Give this or `per_sample`.
    pub sum_sq: *const *const f32,
    /// Optional: row-major N x lens[i] per-sample gradients per tensor.
    pub per_sample: *const *const f32,
    /// Scale of `sum_sq` / `per_sample` entries: an `AlrSampleScale` value.
    pub per_sample_scale: i32,
    /// N, the minibatch size; required with per-sample data, else ignored.
    pub batch_size: usize,
    /// Optional: non-negative diagonal curvature per tensor (vSGD).
    pub curvature: *const *const f32,
    /// Non-zero when `loss` holds the loss on this batch at the current parameters (GI).
    pub has_loss: i32,
    pub loss: f64,
    /// Optional: loss re-evaluation on the same batch (GI; schedule-free over gi, at y'). Without
    /// it, GI expects `alr_report_loss`.
    pub loss_fn: AlrLossFn,
    /// Optional: gradient re-evaluation on the same batch (vSGD finite-difference curvature).
    pub grad_fn: AlrGradFn,
    /// Passed unchanged to the callbacks.
    pub user_data: *mut c_void,
}

pub(crate) fn check_struct_size(given: usize, needed: usize, what: &str) -> Result<(), Error> {
    if given < needed {
        return Err(Error::invalid(format!("{what}.struct_size is {given}, this library needs at least {needed}: set it to sizeof({what})")));
    }
    Ok(())
}

/// `n` pointers from a C array, each non-null.
///
/// # Safety
/// `ptrs` must point to `n` readable pointers.
pub(crate) unsafe fn pointers<T>(ptrs: *const *const T, n: usize, what: &str) -> Result<Vec<*const T>, Error> {
    non_null!(ptrs, what);
    let list = std::slice::from_raw_parts(ptrs, n).to_vec();
    if let Some(t) = list.iter().position(|p| p.is_null()) {
        return Err(Error::new(AlrStatus::AlrNullPointer, format!("{what}[{t}] is null")));
    }
    Ok(list)
}

/// Every status with its C name (status codes arrive from C as plain integers).
const STATUS_NAMES: [(AlrStatus, &str); 11] = [
    (AlrStatus::AlrOk, "ALR_OK"),
    (AlrStatus::AlrNullPointer, "ALR_NULL_POINTER"),
    (AlrStatus::AlrInvalidArgument, "ALR_INVALID_ARGUMENT"),
    (AlrStatus::AlrShapeMismatch, "ALR_SHAPE_MISMATCH"),
    (AlrStatus::AlrNonFinite, "ALR_NON_FINITE"),
    (AlrStatus::AlrWrongState, "ALR_WRONG_STATE"),
    (AlrStatus::AlrUnsupported, "ALR_UNSUPPORTED"),
    (AlrStatus::AlrCudaError, "ALR_CUDA_ERROR"),
    (AlrStatus::AlrCallbackFailed, "ALR_CALLBACK_FAILED"),
    (AlrStatus::AlrBadCheckpoint, "ALR_BAD_CHECKPOINT"),
    (AlrStatus::AlrPanic, "ALR_PANIC"),
];

/// A C enum field read as its integer (any value can arrive from C; an out-of-range value in a
/// Rust enum would be undefined behaviour).
pub(crate) fn sample_scale(value: i32) -> Result<SampleScale, Error> {
    match value {
        v if v == AlrSampleScale::AlrScaleSample as i32 => Ok(SampleScale::Sample),
        v if v == AlrSampleScale::AlrScaleMean as i32 => Ok(SampleScale::Mean),
        v => {
            Err(Error::invalid(format!("per_sample_scale is {v}; accepted: ALR_SCALE_SAMPLE (0, g_i of each sample's own loss) or ALR_SCALE_MEAN (1, g_i/N)")))
        }
    }
}

/// A NUL-terminated copy of a static name that lives for the whole process.
fn interned(name: &'static str) -> *const c_char {
    static NAMES: OnceLock<Mutex<HashMap<&'static str, CString>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    names.entry(name).or_insert_with(|| CString::new(name).unwrap_or_default()).as_ptr()
}

/// The library version ("MAJOR.MINOR.PATCH", equal to `ALR_VERSION`). Static storage; never fails.
#[no_mangle]
pub extern "C" fn alr_version() -> *const c_char {
    static VERSION: OnceLock<CString> = OnceLock::new();
    VERSION.get_or_init(|| CString::new(crate::ALR_VERSION).unwrap_or_default()).as_ptr()
}

/// The C ABI version (equal to `ALR_ABI_VERSION` of the header the caller compiled against
/// when they are compatible). Never fails.
#[no_mangle]
pub extern "C" fn alr_abi_version() -> u32 {
    crate::ALR_ABI_VERSION
}

/// Text explaining the most recent failure on this thread ("" after a success). The pointer is
/// owned by the library and valid until the next `alr_*` call on this thread. Never fails.
#[no_mangle]
pub extern "C" fn alr_last_error() -> *const c_char {
    super::last_error_ptr()
}

/// The name of a status code ("ALR_OK", "ALR_NULL_POINTER", …; "ALR_UNKNOWN_STATUS" for a
/// value that is no AlrStatus); static storage. Takes an int so that any value is safe.
#[no_mangle]
pub extern "C" fn alr_status_name(status: i32) -> *const c_char {
    interned(STATUS_NAMES.iter().find(|(s, _)| *s as i32 == status).map_or("ALR_UNKNOWN_STATUS", |(_, name)| name))
}

/// The algorithms `alr_create` accepts on `device`, comma-separated ("sgd,momentum,…", then the
/// aliases such as "auto" whose algorithm runs there): every one for ALR_DEVICE_CPU; for ALR_DEVICE_CUDA those with CUDA kernels (creating one still needs
/// a build with the `cuda` feature and a GPU). Static storage; NULL for a value that is no
/// AlrDevice. Takes an int so that any value is safe.
#[no_mangle]
pub extern "C" fn alr_algorithms(device: i32) -> *const c_char {
    static LISTS: OnceLock<[CString; 2]> = OnceLock::new();
    let lists = LISTS.get_or_init(|| [DeviceKind::Cpu, DeviceKind::Cuda].map(|kind| CString::new(registry::names_on(kind).join(",")).unwrap_or_default()));
    match device {
        d if d == AlrDevice::AlrDeviceCpu as i32 => lists[0].as_ptr(),
        d if d == AlrDevice::AlrDeviceCuda as i32 => lists[1].as_ptr(),
        _ => std::ptr::null(),
    }
}

/// Creates an optimizer and writes its handle to `*out` (set to NULL on failure).
/// Free it with `alr_destroy`. Options start at their defaults (docs/algorithms.md).
/// Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT (unknown algorithm — the message
/// lists the accepted names —, bad group ids, zero-length tensor, struct_size too small),
/// ALR_UNSUPPORTED (a CUDA device on a build without the `cuda` feature, or an algorithm
/// without CUDA kernels: `alr_algorithms(ALR_DEVICE_CUDA)` lists those with them; `sharded` for
/// an algorithm that does not reduce over shards yet), ALR_CUDA_ERROR (no CUDA driver, no such
/// device, or a CUDA call failed). ALR_INVALID_ARGUMENT also for `sharded` not 0 or 1, or set
/// without `reduce` (or `reduce` without it), and for a struct_size below `sizeof(AlrCreateArgs)`
/// other than `offsetof(AlrCreateArgs, sharded)` (the version before sharding).
#[no_mangle]
pub extern "C" fn alr_create(args: *const AlrCreateArgs, out: *mut *mut AlrOptimizer) -> AlrStatus {
    guard("alr_create", || {
        non_null!(out, "out");
        // SAFETY: out is non-null and points to writable storage for one pointer.
        unsafe { *out = std::ptr::null_mut() };
        non_null!(args, "args");
        // SAFETY: args is non-null; struct_size is the first field of every version.
        let size = unsafe { (*args).struct_size };
        check_struct_size(size, CREATE_ARGS_FIRST, "AlrCreateArgs")?;
        if size != CREATE_ARGS_FIRST {
            check_struct_size(size, std::mem::size_of::<AlrCreateArgs>(), "AlrCreateArgs")?;
        }
        // SAFETY: struct_size says the caller's struct is at least that version's size.
        let args = &unsafe { create_args(args, size) };
        let name = c_str(args.algorithm, "algorithm")?;
        if args.n_tensors == 0 {
            return Err(Error::invalid("n_tensors is 0: an optimizer needs at least one tensor"));
        }
        // No array of more than isize::MAX bytes exists: such a count is refused before a slice of it is made.
        if args.n_tensors > isize::MAX as usize / std::mem::size_of::<usize>() {
            return Err(Error::invalid(format!("n_tensors is {}: no array of that many sizes can exist", args.n_tensors)));
        }
        non_null!(args.lens, "lens");
        // SAFETY: lens addresses n_tensors sizes (documented).
        let lens = unsafe { std::slice::from_raw_parts(args.lens, args.n_tensors) };
        let groups: Option<Vec<usize>> = if args.groups.is_null() {
            None
        } else {
            // SAFETY: groups addresses n_tensors ids (documented).
            let ids = unsafe { std::slice::from_raw_parts(args.groups, args.n_tensors) };
            // Sized by the caller's count: allocated fallibly (an error, not an abort).
            let mut wide = Vec::new();
            wide.try_reserve_exact(ids.len())
                .map_err(|_| Error::invalid(format!("cannot allocate the group list of {} tensors: too many tensors for this memory", ids.len())))?;
            wide.extend(ids.iter().map(|&g| g as usize));
            Some(wide)
        };
        let shards: Shards = match (args.sharded, args.reduce) {
            (0, None) => None,
            (1, Some(reduce)) => Some(std::sync::Arc::new(CReduce { reduce, user_data: args.reduce_user_data })),
            (1, None) => return Err(Error::invalid("sharded is 1 but reduce is NULL: sharded tensors need the callback that sums over the processes")),
            (0, Some(_)) => return Err(Error::invalid(
                "reduce is set but sharded is 0: the callback serves sharded tensors only (replicated DDP parameters need no reduction inside the optimizer)",
            )),
            (flag, _) => return Err(Error::invalid(format!("sharded is {flag}; accepted: 0 or 1"))),
        };
        let device = match args.device {
            d if d == AlrDevice::AlrDeviceCpu as i32 => DeviceSpec::cpu(),
            // SAFETY: the header documents that `stream` is NULL or a stream of that device,
            // alive while the optimizer is.
            d if d == AlrDevice::AlrDeviceCuda as i32 => unsafe { DeviceSpec::cuda(args.device_ordinal, args.stream) }?,
            d => return Err(Error::invalid(format!("device is {d}; accepted: ALR_DEVICE_CPU (0), ALR_DEVICE_CUDA (1)"))),
        };
        let opt = Optimizer::on_shards(device, name, lens, groups.as_deref(), shards)?;
        // SAFETY: checked non-null above.
        unsafe { *out = handle::register(opt) };
        Ok(())
    })
}

/// Frees an optimizer. NULL is a no-op. Returns ALR_OK, or ALR_INVALID_ARGUMENT for a handle
/// that is not live (already destroyed or never created) — nothing is freed then.
#[no_mangle]
pub extern "C" fn alr_destroy(opt: *mut AlrOptimizer) -> AlrStatus {
    guard("alr_destroy", || handle::destroy(opt))
}

/// Sets option `name` to `value` for every group. Flags take 0 or 1. Returns ALR_OK,
/// ALR_NULL_POINTER, ALR_INVALID_ARGUMENT (unknown name — the message lists the accepted
/// ones — or value out of range — the message gives the range), ALR_WRONG_STATE (an option
/// that shapes the state, set after the first step).
#[no_mangle]
pub extern "C" fn alr_set_option(opt: *mut AlrOptimizer, name: *const c_char, value: f64) -> AlrStatus {
    guard("alr_set_option", || {
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        opt.set_option(c_str(name, "name")?, None, value)
    })
}

/// Sets option `name` for one group only (like a torch param_group), e.g. "lr" or
/// "weight_decay". Returns as `alr_set_option`, and ALR_INVALID_ARGUMENT for a group that
/// does not exist or an option that is one value for the whole optimizer.
#[no_mangle]
pub extern "C" fn alr_set_group_option(opt: *mut AlrOptimizer, group: usize, name: *const c_char, value: f64) -> AlrStatus {
    guard("alr_set_group_option", || {
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        opt.set_option(c_str(name, "name")?, Some(group), value)
    })
}

/// Sets a string option: the "base" of gi and schedule-free (the wrapped algorithm's name), and
/// for schedule-free over gi "base_base" (GI's base, docs/algorithms.md §3.3; setting "base"
/// resets it to GI's default, sgd). Set them before the first step and before the wrapped
/// algorithms' options (each resets them to defaults). Returns ALR_OK, ALR_NULL_POINTER,
/// ALR_INVALID_ARGUMENT, ALR_WRONG_STATE, ALR_UNSUPPORTED (on a CUDA device, a base without CUDA
/// kernels, or gi under schedule-free: CPU only).
#[no_mangle]
pub extern "C" fn alr_set_option_str(opt: *mut AlrOptimizer, name: *const c_char, value: *const c_char) -> AlrStatus {
    guard("alr_set_option_str", || {
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        opt.set_option_str(c_str(name, "name")?, c_str(value, "value")?)
    })
}

/// Reads option `name` of `group` into `*value` (NaN for an unset optional value).
/// Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn alr_get_option(opt: *mut AlrOptimizer, group: usize, name: *const c_char, value: *mut f64) -> AlrStatus {
    guard("alr_get_option", || {
        non_null!(value, "value");
        // The handle is checked against the live set and held busy for the call.
        let opt = handle::get(opt)?;
        let v = opt.get_option(c_str(name, "name")?, group)?;
        // SAFETY: checked non-null.
        unsafe { *value = v };
        Ok(())
    })
}

/// One training step over every tensor: updates `args->params` in place. All inputs are
/// validated first; on failure the parameters and the optimizer's state are unchanged
/// (exceptions: ALR_CALLBACK_FAILED from GI's loss callback, which runs after the move —
/// the move stands, η is not adapted). Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT
/// (e.g. N < 2 where a variance is needed, negative sum_sq or curvature, struct_size too
/// small), ALR_SHAPE_MISMATCH (tensor count or a buffer length differs from the
/// registration), ALR_NON_FINITE (NaN/Inf in an input), ALR_WRONG_STATE (GI waits for
/// `alr_report_loss`; schedule-free is in eval mode: `alr_set_mode` ALR_MODE_TRAIN first),
/// ALR_UNSUPPORTED (an input this algorithm does not use, or a required one missing),
/// ALR_CALLBACK_FAILED.
///
/// On a CUDA optimizer every buffer is a device pointer; the step is enqueued on the
/// optimizer's stream and returns without waiting (no device-to-host copy: an auto-* step can
/// be captured in a CUDA graph; a fixed-rate one, whose coefficients are formed on the host,
/// refuses capture with ALR_UNSUPPORTED). What only the device can see — a NaN or Inf in the inputs, a
/// negative sum_sq — is reported by the next alr_get_lr, alr_get_momentum, telemetry, save or
/// load call (ALR_NON_FINITE / ALR_INVALID_ARGUMENT); the step that found it and every step
/// after it until then changed nothing.
#[no_mangle]
pub extern "C" fn alr_step(opt: *mut AlrOptimizer, args: *const AlrStepArgs) -> AlrStatus {
    guard("alr_step", || {
        non_null!(args, "args");
        // SAFETY: args is non-null; struct_size is its first field.
        let size = unsafe { (*args).struct_size };
        check_struct_size(size, std::mem::size_of::<AlrStepArgs>(), "AlrStepArgs")?;
        // SAFETY: the caller's struct is at least this version's size.
        let args = unsafe { &*args };
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        let n = opt.layout().n_tensors();
        if args.n_tensors != n {
            return Err(Error::shape(format!("args.n_tensors is {}, the optimizer has {n} tensors", args.n_tensors)));
        }
        let optional = |ptrs: *const *const f32, what: &str| -> Result<Option<Vec<*const f32>>, Error> {
            // SAFETY: a non-null array holds n pointers (documented).
            (!ptrs.is_null()).then(|| unsafe { pointers(ptrs, n, what) }).transpose()
        };
        let raw = RawStep {
            // SAFETY: params and grads hold n pointers (documented).
            params: unsafe { pointers(args.params as *const *const f32, n, "params") }?.into_iter().map(|p| p as *mut f32).collect(),
            grads: unsafe { pointers(args.grads, n, "grads") }?,
            sum_sq: optional(args.sum_sq, "sum_sq")?,
            per_sample: optional(args.per_sample, "per_sample")?,
            per_sample_scale: args.per_sample_scale,
            batch_size: args.batch_size,
            curvature: optional(args.curvature, "curvature")?,
            loss: (args.has_loss != 0).then_some(args.loss),
            loss_fn: args.loss_fn,
            grad_fn: args.grad_fn,
            user_data: args.user_data,
        };
        // SAFETY: the header documents that each pointer addresses lens[t] (or N * lens[t])
        // floats, valid for the call.
        unsafe { run_step(&mut opt, raw) }
    })
}

/// A step's inputs as raw pointers, one per tensor, whichever entry point they came through.
pub(crate) struct RawStep {
    pub params: Vec<*mut f32>,
    pub grads: Vec<*const f32>,
    pub sum_sq: Option<Vec<*const f32>>,
    pub per_sample: Option<Vec<*const f32>>,
    pub per_sample_scale: i32,
    pub batch_size: usize,
    pub curvature: Option<Vec<*const f32>>,
    pub loss: Option<f64>,
    pub loss_fn: AlrLossFn,
    pub grad_fn: AlrGradFn,
    pub user_data: *mut c_void,
}

/// Borrows the buffers (lens[t] floats, N·lens[t] for per-sample matrices) and runs the step.
///
/// # Safety
/// Every pointer must address that many floats, valid for the call (device floats on a CUDA
/// optimizer).
pub(crate) unsafe fn run_step(opt: &mut Optimizer, raw: RawStep) -> Result<(), Error> {
    let lens = opt.layout().lens.clone();
    let memory = opt.memory();
    // Every length is bounded (crate::limits) before a tensor of it is formed: a slice of more
    // than isize::MAX bytes is undefined behaviour even if it is never read.
    let borrow = |ptrs: &[*const f32], per_elem: usize, what: &str| -> Result<Vec<Tensor>, Error> {
        ptrs.iter()
            .zip(&lens)
            .enumerate()
            .map(|(t, (&p, &n))| {
                let len = crate::limits::floats(per_elem, n).ok_or_else(|| {
                    Error::invalid(format!(
                        "tensor {t}: {what} of batch_size {per_elem} × {n} floats is larger than any buffer can be (at most {} floats): give the real N",
                        crate::limits::MAX_FLOATS
                    ))
                })?;
                // SAFETY: the caller's contract (above).
                unsafe { Tensor::from_raw(p, len, memory) }
            })
            .collect()
    };
    let mut params = raw
        .params
        .iter()
        .zip(&lens)
        // SAFETY: the caller's contract (above).
        .map(|(&p, &len)| unsafe { TensorMut::from_raw(p, len, memory) })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut inputs = StepInputs::new(borrow(&raw.grads, 1, "grad")?);
    let scale = sample_scale(raw.per_sample_scale)?;
    inputs.samples = match (&raw.sum_sq, &raw.per_sample) {
        (None, None) => None,
        (Some(_), Some(_)) => return Err(Error::invalid("give either sum_sq or per_sample, not both")),
        (Some(s), None) => Some(Samples { data: SampleData::SumSq(borrow(s, 1, "sum_sq")?), scale, batch_size: raw.batch_size }),
        // The optimizer refuses N = 0 (with the message either form gets).
        (None, Some(m)) => Some(Samples { data: SampleData::PerSample(borrow(m, raw.batch_size, "per_sample")?), scale, batch_size: raw.batch_size }),
    };
    inputs.curvature = raw.curvature.as_deref().map(|h| borrow(h, 1, "curvature")).transpose()?;
    inputs.loss = raw.loss;
    let user_data = raw.user_data;
    let mut callbacks = Callbacks::default();
    if let Some(loss_fn) = raw.loss_fn {
        let f: LossFn = Box::new(move |params: &[&[f32]]| {
            let ptrs: Vec<*const f32> = params.iter().map(|p| p.as_ptr()).collect();
            let mut loss = f64::NAN;
            // SAFETY: calling the caller's function with pointers valid for the call.
            let rc = unsafe { loss_fn(user_data, ptrs.as_ptr(), ptrs.len(), &mut loss) };
            if rc != 0 {
                return Err(format!("loss callback returned {rc}"));
            }
            Ok(loss)
        });
        callbacks.loss_fn = Some(f);
    }
    if let Some(grad_fn) = raw.grad_fn {
        let f: GradFn = Box::new(move |params: &[&[f32]], grads: &mut [&mut [f32]]| {
            let ptrs: Vec<*const f32> = params.iter().map(|p| p.as_ptr()).collect();
            let outs: Vec<*mut f32> = grads.iter_mut().map(|g| g.as_mut_ptr()).collect();
            // SAFETY: calling the caller's function with buffers valid for the call.
            let rc = unsafe { grad_fn(user_data, ptrs.as_ptr(), outs.as_ptr(), ptrs.len()) };
            if rc != 0 {
                return Err(format!("gradient callback returned {rc}"));
            }
            Ok(())
        });
        callbacks.grad_fn = Some(f);
    }
    opt.step_tensors(&mut params, &inputs, &mut callbacks)
}

/// Switches the caller's parameters between the training and the evaluation view, in place:
/// schedule-free (`schedule-free`, `sf-adamw`, `sf-sgd`) rewrites them from y (where gradients
/// are taken) to x (the average to evaluate) for ALR_MODE_EVAL and back for ALR_MODE_TRAIN, as
/// the reference's `optimizer.eval()` / `optimizer.train()`; for every other algorithm it is a
/// no-op. A step in eval mode is refused (ALR_WRONG_STATE). Returns ALR_OK, ALR_NULL_POINTER,
/// ALR_INVALID_ARGUMENT (a mode that is no AlrMode, struct_size too small), ALR_SHAPE_MISMATCH,
/// ALR_WRONG_STATE (schedule-free: already in that mode, except ALR_MODE_TRAIN before the first
/// step; a step waits for `alr_report_loss` — schedule-free over gi — whose loss is at y, so the
/// parameters stay y until it comes), and on a CUDA device the error an earlier step found there (ALR_NON_FINITE,
/// ALR_INVALID_ARGUMENT: read first, as `alr_get_lr` reads it); on failure the parameters are
/// unchanged.
#[no_mangle]
pub extern "C" fn alr_set_mode(opt: *mut AlrOptimizer, args: *const AlrModeArgs) -> AlrStatus {
    guard("alr_set_mode", || {
        non_null!(args, "args");
        // SAFETY: args is non-null; struct_size is its first field.
        let size = unsafe { (*args).struct_size };
        check_struct_size(size, std::mem::size_of::<AlrModeArgs>(), "AlrModeArgs")?;
        // SAFETY: the caller's struct is at least this version's size.
        let args = unsafe { &*args };
        let train = match args.mode {
            m if m == AlrMode::AlrModeTrain as i32 => true,
            m if m == AlrMode::AlrModeEval as i32 => false,
            m => return Err(Error::invalid(format!("mode is {m}; accepted: ALR_MODE_TRAIN (0), ALR_MODE_EVAL (1)"))),
        };
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        let n = opt.layout().n_tensors();
        if args.n_tensors != n {
            return Err(Error::shape(format!("args.n_tensors is {}, the optimizer has {n} tensors", args.n_tensors)));
        }
        // SAFETY: params holds n pointers (documented).
        let ptrs = unsafe { pointers(args.params as *const *const f32, n, "params") }?;
        let memory = opt.memory();
        let lens = opt.layout().lens.clone();
        let mut params = ptrs
            .iter()
            .zip(&lens)
            // SAFETY: each pointer addresses lens[t] floats of the optimizer's memory, valid for the call (documented).
            .map(|(&p, &len)| unsafe { TensorMut::from_raw(p as *mut f32, len, memory) })
            .collect::<Result<Vec<_>, Error>>()?;
        opt.set_mode(&mut params, train)
    })
}

/// GI's second phase: `loss_after` is the loss on the same batch at the parameters the last
/// `alr_step` produced (when that step had no `loss_fn`; under schedule-free over gi, at y').
/// Returns ALR_OK, ALR_WRONG_STATE (no step is waiting for a loss, or the algorithm is neither
/// GI nor schedule-free over gi), ALR_NULL_POINTER,
/// ALR_INVALID_ARGUMENT. A non-finite `loss_after` is accepted and halves η (docs/algorithms.md §3).
#[no_mangle]
pub extern "C" fn alr_report_loss(opt: *mut AlrOptimizer, loss_after: f64) -> AlrStatus {
    guard("alr_report_loss", || {
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        opt.report_loss(loss_after)
    })
}

/// Writes the number of groups to `*out`. Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn alr_n_groups(opt: *mut AlrOptimizer, out: *mut usize) -> AlrStatus {
    guard("alr_n_groups", || {
        non_null!(out, "out");
        // The handle is checked against the live set and held busy for the call; out is non-null.
        let opt = handle::get(opt)?;
        unsafe { *out = opt.n_groups() };
        Ok(())
    })
}

/// Writes the effective learning rate of `group` after the last step to `*out`.
/// Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT (no such group).
#[no_mangle]
pub extern "C" fn alr_get_lr(opt: *mut AlrOptimizer, group: usize, out: *mut f64) -> AlrStatus {
    guard("alr_get_lr", || {
        non_null!(out, "out");
        // The handle is checked against the live set and held busy for the call; out is non-null.
        let mut opt = handle::get(opt)?;
        let v = opt.lr(group)?;
        unsafe { *out = v };
        Ok(())
    })
}

/// Writes the momentum of `group` to `*out` (AutoOpt's adapted β; the fixed value for
/// momentum bases; 0 where there is none). Returns as `alr_get_lr`.
#[no_mangle]
pub extern "C" fn alr_get_momentum(opt: *mut AlrOptimizer, group: usize, out: *mut f64) -> AlrStatus {
    guard("alr_get_momentum", || {
        non_null!(out, "out");
        // The handle is checked against the live set and held busy for the call; out is non-null.
        let mut opt = handle::get(opt)?;
        let v = opt.momentum(group)?;
        unsafe { *out = v };
        Ok(())
    })
}

/// Writes the number of telemetry entries of `group` to `*count` (docs/algorithms.md §5).
/// Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn alr_telemetry_count(opt: *mut AlrOptimizer, group: usize, count: *mut usize) -> AlrStatus {
    guard("alr_telemetry_count", || {
        non_null!(count, "count");
        // The handle is checked against the live set and held busy for the call; count is non-null.
        let mut opt = handle::get(opt)?;
        let n = opt.telemetry(group)?.len();
        unsafe { *count = n };
        Ok(())
    })
}

/// Writes telemetry entry `index` of `group`: its name (static storage, never freed) and
/// value. Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT (no such group or index).
#[no_mangle]
pub extern "C" fn alr_telemetry_entry(opt: *mut AlrOptimizer, group: usize, index: usize, name: *mut *const c_char, value: *mut f64) -> AlrStatus {
    guard("alr_telemetry_entry", || {
        non_null!(name, "name");
        non_null!(value, "value");
        // The handle is checked against the live set and held busy for the call; outputs are non-null.
        let mut opt = handle::get(opt)?;
        let entries = opt.telemetry(group)?;
        let (n, v) =
            *entries.get(index).ok_or_else(|| Error::invalid(format!("telemetry index {index} out of range: group {group} has {} entries", entries.len())))?;
        unsafe {
            *name = interned(n);
            *value = v;
        }
        Ok(())
    })
}

/// Writes the size in bytes of the current saved state to `*size` (call before `alr_save`).
/// The size is counted, not serialised: no memory is allocated in proportion to the state.
/// Returns ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT (opt is not a live optimizer),
/// ALR_WRONG_STATE (GI waits for its loss report; opt in use or poisoned).
#[no_mangle]
pub extern "C" fn alr_save_size(opt: *mut AlrOptimizer, size: *mut usize) -> AlrStatus {
    guard("alr_save_size", || {
        non_null!(size, "size");
        // The handle is checked against the live set and held busy for the call; size is non-null.
        let mut opt = handle::get(opt)?;
        // Counted, not serialised: no memory is sized by the state.
        let n = opt.save_size()?;
        unsafe { *size = n };
        Ok(())
    })
}

/// Saves the whole state (options, per-tensor buffers, counters) into the caller's buffer
/// `buf` of `capacity` bytes; writes the bytes used to `*written`. The format is versioned
/// and checksummed. The state is written straight into `buf`: no copy of it is made. Returns
/// ALR_OK, ALR_NULL_POINTER, ALR_INVALID_ARGUMENT (buffer too small — nothing written —, or
/// opt is not a live optimizer), ALR_WRONG_STATE (as alr_save_size).
#[no_mangle]
pub extern "C" fn alr_save(opt: *mut AlrOptimizer, buf: *mut u8, capacity: usize, written: *mut usize) -> AlrStatus {
    guard("alr_save", || {
        non_null!(buf, "buf");
        non_null!(written, "written");
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        // Measured first, so that a buffer too small gets nothing written; then serialised
        // straight into the caller's buffer: no copy of the state is made.
        let needed = opt.save_size()?;
        if needed > capacity {
            return Err(Error::invalid(format!("buffer holds {capacity} bytes, the state needs {needed}: ask alr_save_size first")));
        }
        // SAFETY: buf addresses `capacity` ≥ `needed` writable bytes (documented), and `needed`
        // is the length of a vector the library could build, so a slice of it is sound.
        let out = unsafe { std::slice::from_raw_parts_mut(buf, needed) };
        let n = opt.save_into(out)?;
        // SAFETY: written is non-null (checked above).
        unsafe { *written = n };
        Ok(())
    })
}

/// Restores a state saved by `alr_save` into an optimizer of the same algorithm (and base, for
/// gi and schedule-free) over the same tensors and groups. Validated before anything changes:
/// magic, format version, checksum, algorithm, base, tensor sizes and groups, option names,
/// every option value against its range, every field's length, no trailing bytes. Returns ALR_OK,
/// ALR_NULL_POINTER (opt or buf is null), ALR_INVALID_ARGUMENT (opt is not a live optimizer:
/// destroyed, or never from alr_create; or the memory for the restored state cannot be
/// allocated), ALR_WRONG_STATE (opt is in use by another call, e.g. from inside its own
/// callback, or an earlier call on it panicked), ALR_BAD_CHECKPOINT (truncated, corrupted,
/// other format version, other algorithm or tensors, an option out of range), ALR_CUDA_ERROR
/// (CUDA optimizers: the upload failed), ALR_PANIC; on failure the optimizer is unchanged.
#[no_mangle]
pub extern "C" fn alr_load(opt: *mut AlrOptimizer, buf: *const u8, len: usize) -> AlrStatus {
    guard("alr_load", || {
        non_null!(buf, "buf");
        // The handle is checked against the live set and held busy; buf addresses len bytes.
        let mut opt = handle::get(opt)?;
        // No buffer spans more than isize::MAX bytes: such a length is not a checkpoint.
        if len > isize::MAX as usize {
            return Err(Error::checkpoint(format!("checkpoint length {len} is larger than any buffer can be")));
        }
        // SAFETY: buf addresses len readable bytes (documented), len bounded above.
        let bytes = unsafe { std::slice::from_raw_parts(buf, len) };
        opt.load(bytes)
    })
}

/// Panics inside the library on purpose and returns ALR_PANIC: lets a binding test that a
/// library bug surfaces as an error, not a crash. Changes nothing.
#[no_mangle]
pub extern "C" fn alr_selftest_panic() -> AlrStatus {
    guard("alr_selftest_panic", || panic!("alr_selftest_panic was called"))
}

//! The GPU (feature `cuda`): the primitives of [`Device`] on a CUDA device. cudarc (driver API,
//! loaded at run time) holds the context and memory; the kernels are cuda/*.cu, compiled by
//! build.rs into one cubin per architecture (sm_80, sm_90) embedded here and loaded at open.
//! Each rule names its kernel; this file launches a kernel by that name with the rule's
//! by-value scalars and buffers, and knows nothing of any algorithm.
//!
//! A step enqueues its kernels on the caller's stream and returns: no device-to-host copy and no
//! synchronisation. Bad input found on the device sets a sticky status word instead
//! (cuda/device.cuh): that step and later ones change nothing until the host reads the status
//! (`settle`, whenever the caller reads rates, telemetry or a checkpoint), and the error is
//! reported then.
//!
//! None of this has run on a GPU yet (no GPU has been lent to this project): it is compiled by
//! the test command, and tests/gpu/ holds the harnesses that will check it against the CPU.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext};

use super::{
    Commit, Communicator, Deferred, Device, DotRule, ElemState, ElementRule, KernelRule, Memory, MomentRule, NestedRule, Record, ReduceOp, ReduceValues,
    SampleTensor, SampleView, SampledRule, SolveRule, Tensor, TensorMut,
};
use crate::error::{AlrStatus, Error, Result};

/// The kernels for Ampere (8.x) and Hopper (9.x): a 13.0 driver cannot JIT PTX from a newer
/// toolkit, so each architecture gets its own SASS.
static CUBIN_SM80: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/autolr_sm80.cubin"));
static CUBIN_SM90: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/autolr_sm90.cubin"));
/// Both images (tests look kernels up in them).
#[cfg(test)]
pub(crate) static CUBINS: [&[u8]; 2] = [CUBIN_SM80, CUBIN_SM90];
/// The device's own kernels (cuda/device.cu).
pub(crate) const DEVICE_KERNELS: &[&str] = &["alr_check_values", "alr_group_sums", "alr_check_sums", "alr_move_maxima"];

/// Threads per block (cuda/device.cuh's ALR_THREADS).
const THREADS: u32 = 256;
/// Blocks of an elementwise launch at most: a grid-stride loop covers any length.
const MAX_BLOCKS: usize = 8192;
/// Partial sums per tensor at most: enough blocks to fill an H100 several times over.
const MAX_PARTIALS: usize = 1024;
/// Bytes of a by-value argument block: every rule's coefficients and parameters fit (the
/// largest, Prodigy's pass-1 coefficients, are 80).
const ARGUMENT_BYTES: usize = 128;

/// cuda/device.cuh's DeviceStatus.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DeviceStatus {
    pub code: i32,
    pub negative_sum_sq: i32,
    pub step: u64,
}

/// cuda/device.cu's PartialRange.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PartialRange {
    pub start: u64,
    pub count: u64,
}

fn cuda_error(message: impl Into<String>) -> Error {
    Error::new(AlrStatus::AlrCudaError, message)
}

fn driver<T>(r: std::result::Result<T, result::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| cuda_error(format!("{what}: {e}")))
}

fn elementwise_blocks(len: usize) -> u32 {
    len.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32
}

/// Blocks of a reduction over `len` elements: one partial each.
fn partials_for(len: usize) -> usize {
    len.div_ceil(THREADS as usize).clamp(1, MAX_PARTIALS)
}

/// Device memory owned by an optimizer, freed with it.
struct Buffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    context: Arc<CudaContext>,
}

impl Buffer {
    /// `bytes` (at least 1: every pointer stays valid) of zeroed device memory.
    fn zeroed(context: &Arc<CudaContext>, bytes: usize) -> Result<Buffer> {
        driver(context.bind_to_thread(), "binding the CUDA context to this thread")?;
        let bytes = bytes.max(1);
        // SAFETY: a plain allocation in the current context; zeroed before anything reads it.
        let ptr = driver(unsafe { result::malloc_sync(bytes) }, &format!("allocating {bytes} bytes of device memory"))?;
        let buffer = Buffer { ptr, bytes, context: context.clone() };
        // SAFETY: ptr addresses `bytes` bytes just allocated.
        driver(unsafe { result::memset_d8_sync(ptr, 0, bytes) }, "zeroing device memory")?;
        Ok(buffer)
    }

    /// Writes `data` at the start of the buffer, ordered on `stream`, and waits for it.
    fn upload<T: Copy>(&self, stream: sys::CUstream, data: &[T]) -> Result<()> {
        if std::mem::size_of_val(data) > self.bytes {
            return Err(Error::invalid("an upload larger than its device buffer"));
        }
        // SAFETY: the buffer holds at least that many bytes; the host data outlives the wait.
        unsafe {
            driver(result::memcpy_htod_async(self.ptr, data, stream), "copying to the device")?;
            driver(result::stream::synchronize(stream), "waiting for the stream")
        }
    }

    /// The first `count` values of the buffer, after everything enqueued on `stream` so far.
    fn download<T: Copy + Default>(&self, stream: sys::CUstream, count: usize) -> Result<Vec<T>> {
        let mut host = crate::backend::cpu::filled(count, T::default())?;
        if std::mem::size_of_val(&host[..]) > self.bytes {
            return Err(Error::invalid("a download larger than its device buffer"));
        }
        // SAFETY: as in upload; `host` is written only by the copy, which the wait completes.
        unsafe {
            driver(result::memcpy_dtoh_async(&mut host[..], self.ptr, stream), "copying from the device")?;
            driver(result::stream::synchronize(stream), "waiting for the stream")?;
        }
        Ok(host)
    }

    /// The address `offset` bytes in, as a kernel argument.
    fn at(&self, offset: usize) -> u64 {
        self.ptr + offset as u64
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // Nothing can be reported from a destructor: a failure here leaks the buffer.
        if self.context.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_sync in this context and freed once, here.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// `len` values of `T` in device memory.
pub struct Typed<T> {
    buffer: Buffer,
    len: usize,
    _values: PhantomData<T>,
}

impl<T> Typed<T> {
    /// `self ← src` (as many values), enqueued on `stream`: no wait.
    fn copy_from(&mut self, src: &Typed<T>, stream: sys::CUstream) -> Result<()> {
        if src.len != self.len {
            return Err(Error::shape(format!("a device copy of {} values into {}", src.len, self.len)));
        }
        let bytes = self.len * std::mem::size_of::<T>();
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both buffers hold `len` values of T (at least `bytes` bytes) in this context,
        // and stay allocated while the stream runs: they are freed only with their optimizer,
        // after its work.
        driver(unsafe { result::memcpy_dtod_async(self.buffer.ptr, src.buffer.ptr, bytes, stream) }, "copying on the device")
    }
}

/// The partial sums of a reduction pass: per tensor a contiguous run of blocks' partials (4 f64
/// each), the runs of a record's tensors adjacent, and per record its four sums.
pub struct Sums {
    partials: Buffer,
    /// Per tensor, its first partial.
    offsets: Vec<usize>,
    ranges: Buffer,
    group_sums: Buffer,
    /// The records' maxima while the communicator combines them (sharded, `LAST_IS_MAX`).
    maxima: Buffer,
    n_records: usize,
    /// How the record sums are formed (`alr_group_sums`): N and k² for Σg² moments, else 0.
    n: f64,
    square_scale: f64,
    /// `group_sums` holds the sums over every process (`reduce_sums`): the next solve reads them.
    reduced: bool,
}

impl Sums {
    /// The address of tensor `tensor`'s first partial (four f64 sums each).
    fn partials_of(&self, tensor: usize) -> u64 {
        self.partials.at(self.offsets[tensor] * 4 * std::mem::size_of::<f64>())
    }
}

/// A CUDA device's primary context and the caller's stream, with the kernels loaded.
struct Inner {
    context: Arc<CudaContext>,
    /// The caller's `CUstream` (0: the legacy default stream).
    stream: usize,
    module: usize,
    functions: Mutex<HashMap<&'static str, usize>>,
    status: Buffer,
    /// Steps begun (the status word records which one found bad input).
    steps: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.context.bind_to_thread().is_ok() {
            // SAFETY: loaded by load_data in this context and unloaded once, here.
            let _ = unsafe { result::module::unload(self.module as sys::CUmodule) };
        }
    }
}

/// One CUDA device, stepping on the caller's stream.
#[derive(Clone)]
pub struct Cuda(Arc<Inner>);

impl Cuda {
    /// Opens device `ordinal` and loads the kernels. Without a driver (no libcuda) this is
    /// ALR_CUDA_ERROR saying so, as is an ordinal the machine does not have or a GPU this build
    /// has no kernels for.
    ///
    /// # Safety
    /// `stream` is null or a stream of that device's primary context, alive while this is.
    pub unsafe fn open(ordinal: i32, stream: *mut c_void) -> Result<Cuda> {
        // SAFETY: only probes whether the driver library can be loaded; cudarc panics on any
        // driver call without it, so nothing else is called first.
        if !unsafe { sys::is_culib_present() } {
            return Err(cuda_error(
                "no CUDA driver on this machine (libcuda.so could not be loaded): install the NVIDIA driver, or create the optimizer on ALR_DEVICE_CPU",
            ));
        }
        let ordinal = usize::try_from(ordinal).map_err(|_| Error::invalid(format!("device_ordinal is {ordinal}; it must be ≥ 0")))?;
        let context = CudaContext::new(ordinal).map_err(|e| cuda_error(format!("cannot open CUDA device {ordinal}: {e}")))?;
        let major = driver(context.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR), "reading the compute capability")?;
        let image = match major {
            8 => CUBIN_SM80,
            9 => CUBIN_SM90,
            _ => {
                return Err(Error::unsupported(format!(
                    "CUDA device {ordinal} has compute capability {major}.x; this build has kernels for 8.x (Ampere) and 9.x (Hopper)"
                )))
            }
        };
        // The image is read as an ELF file: give it 8-byte alignment.
        let mut aligned = vec![0u64; image.len().div_ceil(8)];
        // SAFETY: `aligned` holds at least image.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), image.len()) };
        driver(context.bind_to_thread(), "binding the CUDA context to this thread")?;
        // SAFETY: a complete cubin for this device's architecture, alive for the call.
        let module = driver(unsafe { result::module::load_data(aligned.as_ptr().cast()) }, "loading autolr's kernels")?;
        let status = Buffer::zeroed(&context, std::mem::size_of::<DeviceStatus>())?;
        let device = Cuda(Arc::new(Inner {
            context,
            stream: stream as usize,
            module: module as usize,
            functions: Mutex::new(HashMap::new()),
            status,
            steps: AtomicU64::new(0),
        }));
        device.require(DEVICE_KERNELS)?;
        Ok(device)
    }

    pub fn ordinal(&self) -> usize {
        self.0.context.ordinal()
    }

    fn stream(&self) -> sys::CUstream {
        self.0.stream as sys::CUstream
    }

    fn bind(&self) -> Result<()> {
        driver(self.0.context.bind_to_thread(), "binding the CUDA context to this thread")
    }

    /// The kernel named `name` in the loaded module.
    fn function(&self, name: &'static str) -> Result<sys::CUfunction> {
        let mut functions = self.0.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&f) = functions.get(name) {
            return Ok(f as sys::CUfunction);
        }
        let c_name = CString::new(name).map_err(|_| Error::invalid(format!("kernel name {name:?} holds a NUL")))?;
        // SAFETY: the module is loaded in this context (bound by the caller).
        let f = unsafe { result::module::get_function(self.0.module as sys::CUmodule, c_name) }
            .map_err(|e| cuda_error(format!("kernel '{name}' is not in this build's CUDA module ({e}): rebuild autolr with the `cuda` feature")))?;
        functions.insert(name, f as usize);
        Ok(f)
    }

    /// Enqueues kernel `name` on `grid` blocks with `args` (each the address of one argument's
    /// value, in the kernel's order).
    fn launch(&self, name: &'static str, grid: u32, args: &mut [*mut c_void]) -> Result<()> {
        self.bind()?;
        let f = self.function(name)?;
        // SAFETY: `args` matches the kernel's parameter list (the kernel templates of
        // cuda/device.cuh fix it per rule kind), every pointer argument addresses a buffer of
        // the sizes the kernel reads (sized here or checked by the optimizer).
        driver(unsafe { result::launch_kernel(f, (grid, 1, 1), (THREADS, 1, 1), 0, self.stream(), args) }, name)
    }

    /// The caller's reduction of the records' sums, in device memory on this optimizer's stream:
    /// one sum over every slot, and with `last_is_max` the fourth slots moved aside first and
    /// combined by one maximum (both calls made before either's outcome is judged, as on the CPU).
    fn all_reduce_group_sums(&self, sums: &Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()> {
        let stream = self.0.stream as *mut c_void;
        if last_is_max {
            self.move_maxima(sums, true)?;
        }
        let summed = comm.all_reduce(ReduceValues::Device { address: sums.group_sums.at(0), len: 4 * sums.n_records, stream }, ReduceOp::Sum);
        let maxed = match last_is_max {
            true => comm.all_reduce(ReduceValues::Device { address: sums.maxima.at(0), len: sums.n_records, stream }, ReduceOp::Max),
            false => Ok(()),
        };
        summed.and(maxed).map_err(super::reduce_failed)?;
        if last_is_max {
            self.move_maxima(sums, false)?;
        }
        Ok(())
    }

    /// The records' fourth slots into `maxima` (`aside`), or back.
    fn move_maxima(&self, sums: &Sums, aside: bool) -> Result<()> {
        let (mut group_sums, mut maxima, mut n, mut aside) = (sums.group_sums.at(0), sums.maxima.at(0), sums.n_records as u64, i32::from(aside));
        self.launch("alr_move_maxima", 1, &mut [arg(&mut group_sums), arg(&mut maxima), arg(&mut n), arg(&mut aside)])
    }

    /// Enqueues the per-record sums of `sums`' partials (cuda/device.cu's alr_group_sums).
    fn group_sums(&self, sums: &Sums, last_is_max: bool) -> Result<()> {
        let (mut partials, mut ranges, mut group_sums) = (sums.partials.at(0), sums.ranges.at(0), sums.group_sums.at(0));
        let (mut n, mut square_scale, mut last_is_max, mut status) = (sums.n, sums.square_scale, i32::from(last_is_max), self.status_ptr());
        let args =
            &mut [arg(&mut partials), arg(&mut ranges), arg(&mut group_sums), arg(&mut n), arg(&mut square_scale), arg(&mut last_is_max), arg(&mut status)];
        self.launch("alr_group_sums", (sums.n_records as u32).max(1), args)
    }

    fn status_ptr(&self) -> u64 {
        self.0.status.at(0)
    }

    fn step_tag(&self) -> u64 {
        self.0.steps.load(Ordering::Relaxed)
    }
}

/// A by-value kernel argument in a zeroed block of `ARGUMENT_BYTES` (a zero-sized Rust value
/// becomes the kernel's one-byte empty struct).
fn by_value<T: Copy>(value: &T) -> Result<[u64; ARGUMENT_BYTES / 8]> {
    let size = std::mem::size_of::<T>();
    if size > ARGUMENT_BYTES {
        return Err(Error::invalid(format!("a kernel argument of {size} bytes is larger than {ARGUMENT_BYTES}")));
    }
    let mut block = [0u64; ARGUMENT_BYTES / 8];
    // SAFETY: `value` is `size` readable bytes and the block holds at least that many.
    unsafe { std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), block.as_mut_ptr().cast::<u8>(), size) };
    Ok(block)
}

fn arg<T>(value: &mut T) -> *mut c_void {
    (value as *mut T).cast()
}

fn device_ptr(t: &Tensor) -> u64 {
    t.address() as u64
}

impl<R: Record> Typed<R> {
    /// The address of value `at`.
    fn at(&self, at: usize) -> u64 {
        self.buffer.at(at * std::mem::size_of::<R>())
    }
}

impl Device for Cuda {
    type State<S: ElemState> = Typed<S>;
    type Records<R: Record> = Typed<R>;
    type Sums = Sums;

    fn memory(&self) -> Memory {
        Memory::Cuda { ordinal: self.ordinal() }
    }

    fn require(&self, kernels: &[&'static str]) -> Result<()> {
        self.bind()?;
        kernels.iter().try_for_each(|&k| self.function(k).map(|_| ()))
    }

    fn alloc<S: ElemState>(&self, len: usize) -> Result<Typed<S>> {
        let bytes = len.checked_mul(std::mem::size_of::<S>()).ok_or_else(|| Error::invalid(format!("a state of {len} elements overflows")))?;
        Ok(Typed { buffer: Buffer::zeroed(&self.0.context, bytes)?, len, _values: PhantomData })
    }

    fn with_state<S: ElemState, T>(&self, state: &Typed<S>, f: impl FnOnce(&[S]) -> T) -> Result<T> {
        self.bind()?;
        Ok(f(&state.buffer.download::<S>(self.stream(), state.len)?))
    }

    fn write_state<S: ElemState>(&self, state: &mut Typed<S>, values: &[S]) -> Result<()> {
        if values.len() != state.len {
            return Err(Error::shape(format!("state: {} values for {} elements", values.len(), state.len)));
        }
        self.bind()?;
        state.buffer.upload(self.stream(), values)
    }

    fn copy_state<S: ElemState>(&self, dst: &mut Typed<S>, src: &Typed<S>) -> Result<()> {
        self.bind()?;
        dst.copy_from(src, self.stream())
    }

    fn records<R: Record>(&self, values: &[R]) -> Result<Typed<R>> {
        let mut records = self.alloc_records::<R>(values.len())?;
        self.write_records(&mut records, values)?;
        Ok(records)
    }

    fn read_records<R: Record>(&self, records: &Typed<R>) -> Result<Vec<R>> {
        self.bind()?;
        records.buffer.download(self.stream(), records.len)
    }

    fn write_records<R: Record>(&self, records: &mut Typed<R>, values: &[R]) -> Result<()> {
        if values.len() != records.len {
            return Err(Error::shape(format!("records: {} values for {}", values.len(), records.len)));
        }
        self.bind()?;
        records.buffer.upload(self.stream(), values)
    }

    fn copy_records<R: Record>(&self, dst: &mut Typed<R>, src: &Typed<R>) -> Result<()> {
        self.bind()?;
        dst.copy_from(src, self.stream())
    }

    fn state_view<'s>(&self, state: &'s mut Typed<f32>) -> TensorMut<'s> {
        // SAFETY: the buffer holds `len` floats of this device, borrowed mutably for 's.
        unsafe { TensorMut::cuda(state.buffer.ptr as *mut f32, state.len, self.ordinal()) }
    }

    fn sums(&self, lens: &[usize], owners: &[Vec<usize>]) -> Result<Sums> {
        // A record's tensors' partials are contiguous: lay them out record by record.
        let mut offsets = vec![usize::MAX; lens.len()];
        let mut ranges = Vec::with_capacity(owners.len());
        let mut at = 0;
        for tensors in owners {
            let start = at;
            for &t in tensors {
                offsets[t] = at;
                at += partials_for(lens[t]);
            }
            ranges.push(PartialRange { start: start as u64, count: (at - start) as u64 });
        }
        // A tensor no record adds still gets room for its partials.
        for (t, offset) in offsets.iter_mut().enumerate().filter(|(_, o)| **o == usize::MAX) {
            *offset = at;
            at += partials_for(lens[t]);
        }
        let sums_bytes = 4 * std::mem::size_of::<f64>();
        let sums = Sums {
            partials: Buffer::zeroed(&self.0.context, at * sums_bytes)?,
            offsets,
            ranges: Buffer::zeroed(&self.0.context, ranges.len() * std::mem::size_of::<PartialRange>())?,
            group_sums: Buffer::zeroed(&self.0.context, owners.len() * sums_bytes)?,
            maxima: Buffer::zeroed(&self.0.context, owners.len() * std::mem::size_of::<f64>())?,
            n_records: owners.len(),
            n: 0.0,
            square_scale: 0.0,
            reduced: false,
        };
        self.bind()?;
        sums.ranges.upload(self.stream(), &ranges)?;
        Ok(sums)
    }

    fn update<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Typed<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Typed<R::State>,
    ) -> Result<()> {
        // A rule that `ASSIGNS` declares it in its kernel too (cuda/device.cuh's `assigns`).
        self.launch_element::<R>(c, records, at, param, grad, state, None)
    }

    fn update_scaled<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Typed<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Typed<R::State>,
        scale: f32,
    ) -> Result<()> {
        super::refuse_assigning::<R>()?;
        self.launch_element::<R>(c, records, at, param, grad, state, Some(scale))
    }

    fn update_nested<R: NestedRule>(
        &self,
        c: &R::Coeffs,
        records: &Typed<R::Record>,
        at: usize,
        inner: &<R::Inner as KernelRule>::Coeffs,
        param: &mut TensorMut,
        grad: &Tensor,
        z: &mut Typed<f32>,
        state: &mut Typed<<R::Inner as KernelRule>::State>,
    ) -> Result<()> {
        let (mut p, mut g, mut zs, mut s) = (param.address() as u64, device_ptr(grad), z.buffer.at(0), state.buffer.at(0));
        let (mut len, mut c, mut ic, mut r, mut st) = (param.len() as u64, by_value(c)?, by_value(inner)?, records.at(at), self.status_ptr());
        let args = &mut [arg(&mut p), arg(&mut g), arg(&mut zs), arg(&mut s), arg(&mut len), arg(&mut c), arg(&mut ic), arg(&mut r), arg(&mut st)];
        self.launch(R::KERNEL, elementwise_blocks(param.len()), args)
    }

    fn advance_dot<R: ElementRule>(
        &self,
        _c: &R::Coeffs,
        _r: &Typed<R::Record>,
        _at: usize,
        _param: &TensorMut,
        _grad: &Tensor,
        _state: &mut Typed<R::State>,
    ) -> Result<f64> {
        Err(no_host_sums())
    }

    fn assign_dot<R: ElementRule>(
        &self,
        _c: &R::Coeffs,
        _r: &Typed<R::Record>,
        _at: usize,
        _param: &mut TensorMut,
        _grad: &Tensor,
        _weight: &Tensor,
        _state: &mut Typed<R::State>,
    ) -> Result<f64> {
        Err(no_host_sums())
    }

    fn apply_scaled<R: ElementRule>(
        &self,
        _c: &R::Coeffs,
        _r: &Typed<R::Record>,
        _at: usize,
        _param: &mut TensorMut,
        _grad: &Tensor,
        _state: &Typed<R::State>,
        _scale: f32,
    ) -> Result<()> {
        Err(no_host_sums())
    }

    fn dots<R: DotRule>(
        &self,
        c: &R::Coeffs,
        records: &Typed<R::Record>,
        at: usize,
        param: &Tensor,
        grad: &Tensor,
        state: &mut Typed<R::State>,
        sums: &mut Sums,
        tensor: usize,
        commit: Commit,
    ) -> Result<()> {
        sums.n = 0.0;
        sums.square_scale = 0.0;
        let partials = sums.partials_of(tensor);
        let (mut p, mut g, mut s, mut len) = (device_ptr(param), device_ptr(grad), state.buffer.at(0), param.len() as u64);
        let (mut c, mut r, mut st, mut out, mut write) = (by_value(c)?, records.at(at), self.status_ptr(), partials, i32::from(commit == Commit::Write));
        let args = &mut [arg(&mut p), arg(&mut g), arg(&mut s), arg(&mut len), arg(&mut c), arg(&mut r), arg(&mut st), arg(&mut out), arg(&mut write)];
        self.launch(R::KERNEL, partials_for(param.len()) as u32, args)
    }

    fn moments<M: MomentRule>(
        &self,
        c: &M::Coeffs,
        records: &Typed<M::Record>,
        at: usize,
        grad: &Tensor,
        state: &Typed<M::State>,
        samples: &SampleView,
        sums: &mut Sums,
        tensor: usize,
    ) -> Result<()> {
        let (mut sum_sq, mut rows) = match samples.data {
            SampleTensor::SumSq(s) => (device_ptr(&s), 0u64),
            SampleTensor::Rows(m) => (0u64, device_ptr(&m)),
        };
        sums.n = samples.n as f64;
        sums.square_scale = if matches!(samples.data, SampleTensor::SumSq(_)) { samples.k * samples.k } else { 0.0 };
        let partials = sums.partials_of(tensor);
        let (mut g, mut s, mut n_rows, mut k) = (device_ptr(grad), state.buffer.at(0), samples.n as u64, samples.k as f32);
        let (mut len, mut c, mut r, mut st, mut out) = (grad.len() as u64, by_value(c)?, records.at(at), self.status_ptr(), partials);
        let args = &mut [
            arg(&mut g),
            arg(&mut s),
            arg(&mut sum_sq),
            arg(&mut rows),
            arg(&mut n_rows),
            arg(&mut k),
            arg(&mut len),
            arg(&mut c),
            arg(&mut r),
            arg(&mut st),
            arg(&mut out),
        ];
        self.launch(M::KERNEL, partials_for(grad.len()) as u32, args)
    }

    fn sampled<R: SampledRule>(
        &self,
        c: &R::Coeffs,
        records: &Typed<R::Record>,
        at: usize,
        param: Option<&mut TensorMut>,
        grad: &Tensor,
        h: &Tensor,
        samples: Option<&SampleView>,
        state: &mut Typed<R::State>,
        sums: &mut Sums,
        tensor: usize,
        commit: Commit,
    ) -> Result<()> {
        // x is formed in the kernel: the sums need no conversion in the solve.
        sums.n = 0.0;
        sums.square_scale = 0.0;
        let (mut sum_sq, mut rows, mut n_rows, mut k) = match samples {
            Some(SampleView { data: SampleTensor::SumSq(s), n, k }) => (device_ptr(s), 0u64, *n as u64, *k),
            Some(SampleView { data: SampleTensor::Rows(m), n, k }) => (0u64, device_ptr(m), *n as u64, *k),
            None => (0u64, 0u64, 0u64, 0.0),
        };
        // A measuring pass moves nothing either.
        let mut theta = param.filter(|_| commit == Commit::Write).map_or(0u64, |p| p.address() as u64);
        let mut write = i32::from(commit == Commit::Write);
        let partials = sums.partials_of(tensor);
        let (mut g, mut curvature, mut s, mut len) = (device_ptr(grad), device_ptr(h), state.buffer.at(0), grad.len() as u64);
        let (mut c, mut r, mut st, mut out) = (by_value(c)?, records.at(at), self.status_ptr(), partials);
        let args = &mut [
            arg(&mut theta),
            arg(&mut g),
            arg(&mut curvature),
            arg(&mut s),
            arg(&mut sum_sq),
            arg(&mut rows),
            arg(&mut n_rows),
            arg(&mut k),
            arg(&mut len),
            arg(&mut c),
            arg(&mut r),
            arg(&mut st),
            arg(&mut out),
            arg(&mut write),
        ];
        self.launch(R::KERNEL, partials_for(grad.len()) as u32, args)
    }

    fn totals(&self, sums: &Sums) -> Result<Vec<[f64; 4]>> {
        self.group_sums(sums, false)?;
        let flat = sums.group_sums.download::<f64>(self.stream(), 4 * sums.n_records)?;
        Ok(flat.chunks_exact(4).map(|s| [s[0], s[1], s[2], s[3]]).collect())
    }

    fn solve<S: SolveRule>(&self, p: &S::Params, coeffs: &Typed<S::Coeffs>, records: &mut Typed<S::Record>, sums: &mut Sums) -> Result<Option<usize>> {
        if !std::mem::take(&mut sums.reduced) {
            self.group_sums(sums, S::LAST_IS_MAX)?;
        }
        let (mut group_sums, mut status) = (sums.group_sums.at(0), self.status_ptr());
        let (mut n_records, mut step) = (sums.n_records as u64, self.step_tag());
        if S::REQUIRE_FINITE {
            self.launch("alr_check_sums", 1, &mut [arg(&mut group_sums), arg(&mut n_records), arg(&mut step), arg(&mut status)])?;
        }
        let (mut records_ptr, mut coeffs_ptr, mut params) = (records.at(0), coeffs.at(0), by_value(p)?);
        let args = &mut [arg(&mut group_sums), arg(&mut records_ptr), arg(&mut coeffs_ptr), arg(&mut n_records), arg(&mut params), arg(&mut status)];
        self.launch(S::KERNEL, 1, args)?;
        // A rejected record shows in the status word, read by `settle`.
        Ok(None)
    }

    fn reduce_sums(&self, sums: &mut Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()> {
        self.group_sums(sums, last_is_max)?;
        self.all_reduce_group_sums(sums, last_is_max, comm)?;
        // Non-finite sums over all processes stop the step on every process (the status word).
        let (mut group_sums, mut n_records, mut step, mut status) = (sums.group_sums.at(0), sums.n_records as u64, self.step_tag(), self.status_ptr());
        self.launch("alr_check_sums", 1, &mut [arg(&mut group_sums), arg(&mut n_records), arg(&mut step), arg(&mut status)])?;
        sums.reduced = true;
        Ok(())
    }

    fn abstain(&self, sums: &Sums, last_is_max: bool, comm: &dyn Communicator) -> Result<()> {
        self.bind()?;
        sums.group_sums.upload(self.stream(), &vec![f64::NAN; 4 * sums.n_records])?;
        self.all_reduce_group_sums(sums, last_is_max, comm)
    }

    fn check(&self, _what: &str, _tensor: usize, x: &Tensor, non_negative: bool) -> Result<()> {
        let (mut ptr, mut len, mut step, mut flag, mut status) = (device_ptr(x), x.len() as u64, self.step_tag(), i32::from(non_negative), self.status_ptr());
        self.launch("alr_check_values", elementwise_blocks(x.len()), &mut [arg(&mut ptr), arg(&mut len), arg(&mut step), arg(&mut flag), arg(&mut status)])
    }

    fn begin_step(&self) {
        self.0.steps.fetch_add(1, Ordering::Relaxed);
    }

    fn capturing(&self) -> Result<bool> {
        self.bind()?;
        // SAFETY: a query of the caller's stream.
        let capture = driver(unsafe { result::stream::is_capturing(self.stream()) }, "querying the stream's capture status")?;
        Ok(capture != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    fn settle(&self) -> std::result::Result<(), Deferred> {
        let deferred = |error: Error| Deferred { error, discarded_steps: 0 };
        self.bind().map_err(deferred)?;
        let status = self.0.status.download::<DeviceStatus>(self.stream(), 1).map_err(deferred)?[0];
        if status.code == 0 {
            return Ok(());
        }
        self.0.status.upload(self.stream(), &[DeviceStatus::default()]).map_err(deferred)?;
        let steps = self.step_tag();
        let discarded_steps = if status.step == 0 { 0 } else { steps.saturating_sub(status.step) + 1 };
        let what = match status.code {
            2 => "a negative entry in sum_sq or curvature (it must be ≥ 0)",
            _ => "a NaN or Inf in the gradients or per-sample data",
        };
        let code = if status.code == 2 { AlrStatus::AlrInvalidArgument } else { AlrStatus::AlrNonFinite };
        Err(Deferred {
            error: Error::new(
                code,
                format!(
                    "a step on the CUDA device found {what}; that step and every later one up to now changed nothing (parameters and state are as before it). Steps run again from the next call"
                ),
            ),
            discarded_steps,
        })
    }
}

impl Cuda {
    /// The element kernel of `R` over one tensor: `θ ← θ − advance(…)`, with a scale
    /// `θ ← θ − scale·delta(…)` from the advanced state (or `next` for a rule that assigns).
    #[allow(clippy::too_many_arguments)] // one tensor's buffers, the rule's scalars, the scale
    fn launch_element<R: ElementRule>(
        &self,
        c: &R::Coeffs,
        records: &Typed<R::Record>,
        at: usize,
        param: &mut TensorMut,
        grad: &Tensor,
        state: &mut Typed<R::State>,
        scale: Option<f32>,
    ) -> Result<()> {
        let (mut p, mut g, mut s) = (param.address() as u64, device_ptr(grad), state.buffer.at(0));
        let (mut len, mut c, mut r, mut st) = (param.len() as u64, by_value(c)?, records.at(at), self.status_ptr());
        // Scaled (update_scaled): θ − scale·delta from the advanced state; else θ − advance.
        let (mut scale, mut scaled) = (scale.unwrap_or(1.0), i32::from(scale.is_some()));
        let args = &mut [arg(&mut p), arg(&mut g), arg(&mut s), arg(&mut len), arg(&mut c), arg(&mut r), arg(&mut st), arg(&mut scale), arg(&mut scaled)];
        self.launch(R::KERNEL, elementwise_blocks(param.len()), args)
    }

    fn alloc_records<R: Record>(&self, len: usize) -> Result<Typed<R>> {
        let bytes = len.checked_mul(std::mem::size_of::<R>()).ok_or_else(|| Error::invalid(format!("{len} records overflow")))?;
        Ok(Typed { buffer: Buffer::zeroed(&self.0.context, bytes)?, len, _values: PhantomData })
    }
}

/// GI's proposal needs `Σ g·s` on the host each step, which a GPU step never reads back.
fn no_host_sums() -> Error {
    Error::unsupported("wrapping an algorithm (gi) needs its step's sums on the host; on a CUDA device, step it on its own")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structs this file shares with cuda/device.cu, against the layout lines there.
    #[test]
    fn shared_structs_match_the_kernels() {
        let source = include_str!("../../cuda/device.cu");
        let rust = [
            ("DeviceStatus", None, std::mem::size_of::<DeviceStatus>()),
            ("DeviceStatus", Some("negative_sum_sq"), std::mem::offset_of!(DeviceStatus, negative_sum_sq)),
            ("DeviceStatus", Some("step"), std::mem::offset_of!(DeviceStatus, step)),
            ("PartialRange", None, std::mem::size_of::<PartialRange>()),
        ];
        for (ty, field, value) in rust {
            let line = match field {
                None => format!("ALR_SIZE({ty}, {value});"),
                Some(f) => format!("ALR_FIELD({ty}, {f}, {value});"),
            };
            assert!(source.contains(&line), "cuda/device.cu lacks `{line}`");
        }
        assert!(include_str!("../../cuda/device.cuh").contains(&format!("#define ALR_THREADS {THREADS}")));
    }
}

//! The GPU backend (feature `cuda`): the device, its memory, the caller's stream, and the host
//! side of the kernels in cuda/*.cu (candle-style: the arithmetic is in the `.cu` files, these
//! wrappers only size buffers and enqueue launches).
//!
//! A step enqueues its kernels on the caller's stream and returns: no device-to-host copy and no
//! synchronisation, so an AutoOpt step can be captured in a CUDA graph (a fixed-rate step forms
//! its coefficients on the host, so it refuses capture). Bad input found on the device
//! sets a sticky status word instead (cuda/status.cuh): that step and later ones change nothing
//! until the host reads the status — which happens whenever the caller reads a rate, telemetry
//! or a checkpoint — and the error is reported then.
//!
//! Kernels exist for the fixed-rate rules (cuda/fixed_rate.cu) and AutoOpt (cuda/autoopt.cu);
//! vSGD, TLR and GI have none yet, and creating them on a CUDA device is ALR_UNSUPPORTED.

use std::ffi::{c_int, c_long, c_void};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use crate::adapt::autoopt::{self, GroupState};
use crate::algorithm::Context;
use crate::base::{adagrad::Adagrad, adam::Adam, momentum::Momentum, rmsprop::RmsProp, sgd::Sgd, Rule};
use crate::checkpoint::{Reader, Writer};
use crate::error::{AlrStatus, Error, Result};
use crate::optimizer::{Layout, SampleScale};

/// `alr_cuda_<rule>_step` (cuda/fixed_rate.cu).
type FixedRateKernel = unsafe extern "C" fn(
    param: *mut f32,
    grad: *const f32,
    state: *mut c_void,
    len: usize,
    coeffs: *const c_void,
    status: *const c_void,
    stream: *mut c_void,
) -> c_int;

extern "C" {
    /// `sizeof` of the kernels' coefficient struct of rule 0..4, of DeviceStatus for 5; −1 past.
    fn alr_cuda_coeffs_size(which: c_int) -> c_long;
    fn alr_cuda_sgd_step(p: *mut f32, g: *const f32, s: *mut c_void, len: usize, c: *const c_void, st: *const c_void, stream: *mut c_void) -> c_int;
    fn alr_cuda_momentum_step(p: *mut f32, g: *const f32, s: *mut c_void, len: usize, c: *const c_void, st: *const c_void, stream: *mut c_void) -> c_int;
    fn alr_cuda_adagrad_step(p: *mut f32, g: *const f32, s: *mut c_void, len: usize, c: *const c_void, st: *const c_void, stream: *mut c_void) -> c_int;
    fn alr_cuda_rmsprop_step(p: *mut f32, g: *const f32, s: *mut c_void, len: usize, c: *const c_void, st: *const c_void, stream: *mut c_void) -> c_int;
    fn alr_cuda_adam_step(p: *mut f32, g: *const f32, s: *mut c_void, len: usize, c: *const c_void, st: *const c_void, stream: *mut c_void) -> c_int;
    fn alr_cuda_check_finite(x: *const f32, len: usize, step: u64, status: *mut c_void, stream: *mut c_void) -> c_int;
    fn alr_cuda_autoopt_partials(len: usize) -> usize;
    fn alr_cuda_autoopt_moments(
        precond: c_int,
        grad: *const f32,
        state: *const c_void,
        sum_sq: *const f32,
        rows: *const f32,
        n_rows: usize,
        k: f32,
        len: usize,
        group: *const c_void,
        options: *const c_void,
        status: *mut c_void,
        partials: *mut c_void,
        stream: *mut c_void,
    ) -> c_int;
    fn alr_cuda_autoopt_solve(
        partials: *const c_void,
        ranges: *const c_void,
        group_sums: *mut c_void,
        groups: *mut c_void,
        options: *const c_void,
        n_groups: usize,
        n: f64,
        square_scale: f64,
        status: *mut c_void,
        stream: *mut c_void,
    ) -> c_int;
    fn alr_cuda_autoopt_update(
        precond: c_int,
        param: *mut f32,
        grad: *const f32,
        state: *mut c_void,
        len: usize,
        group: *const c_void,
        options: *const c_void,
        status: *const c_void,
        stream: *mut c_void,
    ) -> c_int;
    /// `sizeof` of AutoOptGroup (0), AutoOptOptions (1), PartialRange (2); −1 past.
    fn alr_cuda_autoopt_struct_size(which: c_int) -> c_long;
}

/// The fixed-rate rules' coefficient structs and DeviceStatus, in the order of `alr_cuda_coeffs_size`.
fn rust_coeffs_sizes() -> [usize; 6] {
    use crate::base::{adagrad, adam, momentum, rmsprop, sgd};
    [
        std::mem::size_of::<sgd::SgdCoeffs>(),
        std::mem::size_of::<momentum::MomentumCoeffs>(),
        std::mem::size_of::<adagrad::AdagradCoeffs>(),
        std::mem::size_of::<rmsprop::RmsPropCoeffs>(),
        std::mem::size_of::<adam::AdamCoeffs>(),
        std::mem::size_of::<DeviceStatus>(),
    ]
}

/// cuda/status.cuh's DeviceStatus.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DeviceStatus {
    code: i32,
    pad: i32,
    step: u64,
}

/// cuda/autoopt.cu's AutoOptOptions (per group; uploaded when an option changes, never in a step).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AutoOptOptions {
    nu: f64,
    gamma_max: f64,
    eps: f64,
    beta2: f64,
}

/// cuda/autoopt.cu's AutoOptGroup: one group's scalars, living on the device.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AutoOptGroup {
    gamma: [f64; 2],
    noise: f64,
    a: f64,
    c: f64,
    e: f64,
    det: f64,
    gamma_oracle: [f64; 2],
    coef_g: f32,
    coef_d: f32,
    moved: i32,
    pad: i32,
    steps: u64,
    fallbacks: u64,
    clamps: u64,
    skips: u64,
}

/// cuda/autoopt.cu's PartialRange.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PartialRange {
    start: u64,
    count: u64,
}

fn rust_autoopt_sizes() -> [usize; 3] {
    [std::mem::size_of::<AutoOptGroup>(), std::mem::size_of::<AutoOptOptions>(), std::mem::size_of::<PartialRange>()]
}

fn cuda_error(message: impl Into<String>) -> Error {
    Error::new(AlrStatus::AlrCudaError, message)
}

/// A launch's or a driver call's failure as ALR_CUDA_ERROR naming what failed.
fn launched(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(cuda_error(format!("{what}: CUDA error {rc} (cudaError_t)")))
    }
}

fn driver<T>(r: std::result::Result<T, result::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| cuda_error(format!("{what}: {e}")))
}

/// A CUDA device's primary context, retained while the optimizer lives.
pub struct Device {
    context: Arc<CudaContext>,
}

impl Device {
    /// Opens device `ordinal`. Without a driver (no libcuda) this is ALR_CUDA_ERROR saying so,
    /// as is an ordinal the machine does not have, or kernels built with other struct layouts.
    pub fn open(ordinal: i32) -> Result<Device> {
        // SAFETY: only probes whether the driver library can be loaded; cudarc panics on any
        // driver call without it, so nothing else is called first.
        if !unsafe { sys::is_culib_present() } {
            return Err(cuda_error(
                "no CUDA driver on this machine (libcuda.so could not be loaded): install the NVIDIA driver, or create the optimizer on ALR_DEVICE_CPU",
            ));
        }
        let ordinal = usize::try_from(ordinal).map_err(|_| Error::invalid(format!("device_ordinal is {ordinal}; it must be ≥ 0")))?;
        let context = CudaContext::new(ordinal).map_err(|e| cuda_error(format!("cannot open CUDA device {ordinal}: {e}")))?;
        let layouts = [("cuda/fixed_rate.cu", &rust_coeffs_sizes()[..], alr_cuda_coeffs_size as unsafe extern "C" fn(c_int) -> c_long)];
        let autoopt = [("cuda/autoopt.cu", &rust_autoopt_sizes()[..], alr_cuda_autoopt_struct_size as unsafe extern "C" fn(c_int) -> c_long)];
        for (file, sizes, kernel_size) in layouts.into_iter().chain(autoopt) {
            for (which, &rust) in sizes.iter().enumerate() {
                // SAFETY: a pure function of its argument in the linked kernel library.
                let kernel = unsafe { kernel_size(which as c_int) };
                if kernel != rust as c_long {
                    return Err(cuda_error(format!(
                        "build mismatch: shared struct {which} of {file} is {rust} bytes in Rust and {kernel} in the kernels; rebuild autolr"
                    )));
                }
            }
        }
        Ok(Device { context })
    }

    pub fn ordinal(&self) -> usize {
        self.context.ordinal()
    }

    /// Makes the context current on this thread (the kernels launch through the CUDA runtime,
    /// which uses the thread's current context).
    fn bind(&self) -> Result<()> {
        driver(self.context.bind_to_thread(), "binding the CUDA context to this thread")
    }
}

/// The caller's stream (`CUstream` / `cudaStream_t`; null = the legacy default stream).
#[derive(Clone, Copy)]
pub struct Stream(usize);

impl Stream {
    pub fn new(raw: *mut c_void) -> Stream {
        Stream(raw as usize)
    }

    fn raw(self) -> *mut c_void {
        self.0 as *mut c_void
    }

    fn cu(self) -> sys::CUstream {
        self.0 as sys::CUstream
    }
}

/// Device memory owned by an optimizer, zeroed when made and freed with it.
struct Buffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    context: Arc<CudaContext>,
}

impl Buffer {
    fn zeroed(device: &Device, bytes: usize) -> Result<Buffer> {
        device.bind()?;
        // cuMemAlloc refuses 0 bytes; a 1-byte buffer keeps every pointer valid.
        let bytes = bytes.max(1);
        // SAFETY: a plain allocation in the current context; zeroed before anything reads it.
        let ptr = driver(unsafe { result::malloc_sync(bytes) }, &format!("allocating {bytes} bytes of device memory"))?;
        let buffer = Buffer { ptr, bytes, context: device.context.clone() };
        // SAFETY: ptr addresses `bytes` bytes just allocated.
        driver(unsafe { result::memset_d8_sync(ptr, 0, bytes) }, "zeroing device memory")?;
        Ok(buffer)
    }

    fn ptr(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }

    /// Writes `data` at the start of the buffer, ordered on `stream`, and waits for it.
    fn upload<T: Copy>(&self, stream: Stream, data: &[T]) -> Result<()> {
        assert!(std::mem::size_of_val(data) <= self.bytes, "upload larger than its buffer");
        // SAFETY: the buffer holds at least that many bytes; the host data outlives the wait.
        unsafe {
            driver(result::memcpy_htod_async(self.ptr, data, stream.cu()), "copying to the device")?;
            driver(result::stream::synchronize(stream.cu()), "waiting for the stream")
        }
    }

    /// The first `count` values of the buffer, after everything enqueued on `stream` so far.
    fn download<T: Copy + Default>(&self, stream: Stream, count: usize) -> Result<Vec<T>> {
        let mut host = vec![T::default(); count];
        assert!(std::mem::size_of_val(&host[..]) <= self.bytes, "download larger than its buffer");
        // SAFETY: as in upload; `host` is written only by the copy, which the wait completes.
        unsafe {
            driver(result::memcpy_dtoh_async(&mut host[..], self.ptr, stream.cu()), "copying from the device")?;
            driver(result::stream::synchronize(stream.cu()), "waiting for the stream")?;
        }
        Ok(host)
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

/// One zeroed buffer per tensor of `floats_per_element` floats per element.
fn per_tensor(device: &Device, lens: &[usize], floats_per_element: usize) -> Result<Vec<Buffer>> {
    lens.iter().map(|&len| Buffer::zeroed(device, len * floats_per_element * 4)).collect()
}

/// Per-sample data as device pointers.
pub enum DeviceSamples {
    SumSq(Vec<*const f32>),
    PerSample(Vec<*const f32>),
}

/// A step's inputs on the device: one device pointer per tensor, owned by the caller.
pub struct DeviceStep {
    pub params: Vec<*mut f32>,
    pub grads: Vec<*const f32>,
    pub samples: Option<(DeviceSamples, SampleScale, usize)>,
}

/// The host side of one algorithm's kernels.
trait Kernels: Send {
    /// Enqueues one step. `step` counts host steps from 1 (for the status word).
    fn step(&mut self, ctx: &Context, stream: Stream, status: &Buffer, inputs: &DeviceStep, step: u64) -> Result<()>;
    /// Per-group options changed (or were loaded): copy what the kernels read.
    fn options_changed(&mut self, _ctx: &Context, _stream: Stream) -> Result<()> {
        Ok(())
    }
    /// A step that set the status changed nothing, nor did the `skipped` steps after it.
    fn roll_back(&mut self, _skipped: u64) {}
    fn lr(&self, ctx: &Context, stream: Stream, group: usize) -> Result<f64>;
    fn momentum(&self, ctx: &Context, stream: Stream, group: usize) -> Result<f64>;
    fn telemetry(&self, ctx: &Context, stream: Stream, group: usize) -> Result<Vec<(&'static str, f64)>>;
    /// The algorithm's state in the CPU algorithm's checkpoint layout, so a checkpoint moves
    /// between devices.
    fn save(&self, ctx: &Context, stream: Stream, w: &mut Writer) -> Result<()>;
    /// Reads the rest of the checkpoint (through `r.finish()`), checks it against the
    /// checkpoint's `started` flag, then uploads it.
    fn load(&mut self, ctx: &Context, stream: Stream, r: Reader, started: bool) -> Result<()>;
}

/// Every tensor's state, downloaded in the CPU layout (`floats` per element, interleaved).
fn save_states(states: &[Buffer], lens: &[usize], floats: usize, stream: Stream, w: &mut Writer) -> Result<()> {
    for (buffer, &len) in states.iter().zip(lens) {
        w.f32s(&buffer.download::<f32>(stream, len * floats)?);
    }
    Ok(())
}

/// AutoOpt's element states read from a checkpoint and checked (`autoopt::read_states`), in
/// the interleaved float layout the device holds.
fn autoopt_floats<P: autoopt::Precond>(ctx: &Context, r: &mut Reader) -> Result<Vec<Vec<f32>>> {
    Ok(autoopt::read_states::<P>(ctx, r)?.iter().map(|s| crate::backend::cpu::states_to_floats(s)).collect())
}

fn upload_states(states: &[Buffer], host: &[Vec<f32>], stream: Stream) -> Result<()> {
    states.iter().zip(host).try_for_each(|(buffer, floats)| buffer.upload(stream, floats))
}

/// A fixed-rate rule: coefficients formed on the host per group and step (`R::coeffs`, as on
/// the CPU), one fused launch per tensor.
struct FixedRateKernels<R: Rule> {
    kernel: FixedRateKernel,
    states: Vec<Buffer>,
    /// Per group: steps taken (as the CPU's FixedRate).
    steps: Vec<u64>,
    _rule: std::marker::PhantomData<R>,
}

impl<R: Rule> FixedRateKernels<R> {
    fn new(device: &Device, layout: &Layout, kernel: FixedRateKernel) -> Result<Self> {
        Ok(FixedRateKernels {
            kernel,
            states: per_tensor(device, &layout.lens, <R::State as crate::backend::cpu::ElemState>::FLOATS)?,
            steps: vec![0; layout.n_groups()],
            _rule: std::marker::PhantomData,
        })
    }
}

impl<R: Rule> Kernels for FixedRateKernels<R> {
    fn step(&mut self, ctx: &Context, stream: Stream, status: &Buffer, inputs: &DeviceStep, step: u64) -> Result<()> {
        if inputs.samples.is_some() {
            return Err(Error::unsupported(format!("algorithm '{}' does not use per-sample data; pass none", R::NAME)));
        }
        (0..ctx.layout.n_groups()).try_for_each(|group| R::check_options(ctx.options, group))?;
        // SAFETY: a query of the caller's stream.
        let capture = driver(unsafe { result::stream::is_capturing(stream.cu()) }, "querying the stream's capture status")?;
        if capture != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            // A graph would replay the coefficients (learning rate, bias correction, step
            // number) of the step it captured; AutoOpt's live on the device and replay correctly.
            return Err(Error::unsupported(format!(
                "'{}' forms its coefficients on the host each step, so its CUDA steps cannot be captured in a graph yet (auto-* steps can)",
                R::NAME
            )));
        }
        if ctx.options.flag(0, "check_finite") {
            // Every gradient is checked before any tensor moves (status.cuh).
            for (t, &len) in ctx.layout.lens.iter().enumerate() {
                // SAFETY: grads[t] addresses len device floats (the caller's contract).
                launched(unsafe { alr_cuda_check_finite(inputs.grads[t], len, step, status.ptr(), stream.raw()) }, "check_finite")?;
            }
        }
        // Every launch reads the status, so an error pending from an earlier step stops this one
        // too (also when this step checks nothing).
        for (group, members) in ctx.layout.members.iter().enumerate() {
            let coeffs = R::coeffs(ctx.options, group, self.steps[group] + 1, ctx.options.get(group, "lr"));
            for &t in members {
                // SAFETY: params/grads address len device floats; the state buffer was sized
                // for the rule; the coefficients are the kernel's struct (checked at open).
                let rc = unsafe {
                    (self.kernel)(
                        inputs.params[t],
                        inputs.grads[t],
                        self.states[t].ptr(),
                        ctx.layout.lens[t],
                        (&coeffs as *const R::Coeffs).cast(),
                        status.ptr(),
                        stream.raw(),
                    )
                };
                launched(rc, R::NAME)?;
            }
        }
        // Counted once every launch is enqueued: a failed launch (a CUDA error) counts no step.
        self.steps.iter_mut().for_each(|s| *s += 1);
        Ok(())
    }

    fn roll_back(&mut self, skipped: u64) {
        self.steps.iter_mut().for_each(|s| *s = s.saturating_sub(skipped));
    }

    fn lr(&self, ctx: &Context, _stream: Stream, group: usize) -> Result<f64> {
        Ok(ctx.options.get(group, "lr"))
    }

    fn momentum(&self, ctx: &Context, _stream: Stream, group: usize) -> Result<f64> {
        Ok(R::momentum(ctx.options, group))
    }

    fn telemetry(&self, _ctx: &Context, _stream: Stream, group: usize) -> Result<Vec<(&'static str, f64)>> {
        Ok(vec![("steps", self.steps[group] as f64)])
    }

    fn save(&self, ctx: &Context, stream: Stream, w: &mut Writer) -> Result<()> {
        w.counts(&self.steps);
        save_states(&self.states, &ctx.layout.lens, <R::State as crate::backend::cpu::ElemState>::FLOATS, stream, w)
    }

    fn load(&mut self, ctx: &Context, stream: Stream, mut r: Reader, started: bool) -> Result<()> {
        let (steps, states) = crate::base::read_fixed_rate::<R>(ctx, &mut r)?;
        r.finish()?;
        crate::checkpoint::check_started(started, steps.iter().any(|&s| s > 0))?;
        upload_states(&self.states, &states.iter().map(|s| crate::backend::cpu::states_to_floats(s)).collect::<Vec<_>>(), stream)?;
        self.steps = steps;
        Ok(())
    }

}

/// AutoOpt (cuda/autoopt.cu): per step a moments launch per tensor, one solve for every group,
/// an update launch per tensor; the group scalars never leave the device during a step.
struct AutoOptKernels {
    name: &'static str,
    /// 0 auto-sgd, 1 auto-adam, 2 auto-adagrad (the kernels' `precond`).
    precond: c_int,
    floats: usize,
    states: Vec<Buffer>,
    groups: Buffer,
    options: Buffer,
    /// Per tensor, where its partial sums start (in MomentSums, 4 f64 each).
    offsets: Vec<usize>,
    partials: Buffer,
    ranges: Buffer,
    group_sums: Buffer,
    /// Reads and checks the element states of a checkpoint (the precondition's own rule).
    read_states: fn(&Context, &mut Reader) -> Result<Vec<Vec<f32>>>,
}

impl AutoOptKernels {
    fn new<P: autoopt::Precond>(device: &Device, stream: Stream, layout: &Layout, precond: c_int) -> Result<Self> {
        let (name, floats) = (P::NAME, <P::State as crate::backend::cpu::ElemState>::FLOATS);
        // SAFETY: a pure function of the length.
        let counts: Vec<usize> = layout.lens.iter().map(|&len| unsafe { alr_cuda_autoopt_partials(len) }).collect();
        // A group's tensors' partials are contiguous: lay them out group by group.
        let mut offsets = vec![0; layout.n_tensors()];
        let mut ranges = Vec::with_capacity(layout.n_groups());
        let mut at = 0;
        for members in &layout.members {
            let start = at;
            for &t in members {
                offsets[t] = at;
                at += counts[t];
            }
            ranges.push(PartialRange { start: start as u64, count: (at - start) as u64 });
        }
        let sums_bytes = 4 * std::mem::size_of::<f64>();
        let kernels = AutoOptKernels {
            name,
            precond,
            floats,
            states: per_tensor(device, &layout.lens, floats)?,
            groups: Buffer::zeroed(device, layout.n_groups() * std::mem::size_of::<AutoOptGroup>())?,
            options: Buffer::zeroed(device, layout.n_groups() * std::mem::size_of::<AutoOptOptions>())?,
            offsets,
            partials: Buffer::zeroed(device, at * sums_bytes)?,
            ranges: Buffer::zeroed(device, ranges.len() * std::mem::size_of::<PartialRange>())?,
            group_sums: Buffer::zeroed(device, layout.n_groups() * sums_bytes)?,
            read_states: autoopt_floats::<P>,
        };
        kernels.ranges.upload(stream, &ranges)?;
        Ok(kernels)
    }

    /// Every group's scalars as the CPU algorithm keeps them.
    fn groups(&self, ctx: &Context, stream: Stream) -> Result<Vec<GroupState>> {
        let device: Vec<AutoOptGroup> = self.groups.download(stream, ctx.layout.n_groups())?;
        Ok(device
            .iter()
            .map(|g| {
                // Before the first step the CPU keeps γ1 unset (NaN); the device keeps 0.
                let gamma1 = if g.steps == 0 { f64::NAN } else { g.gamma[0] };
                let (coef_g, coef_d) = if g.moved != 0 { (f64::from(g.coef_g), f64::from(g.coef_d)) } else { (f64::NAN, f64::NAN) };
                GroupState::from_record(&[
                    gamma1,
                    g.gamma[1],
                    g.steps as f64,
                    g.fallbacks as f64,
                    g.clamps as f64,
                    g.skips as f64,
                    g.noise,
                    g.a,
                    g.c,
                    g.e,
                    g.det,
                    g.gamma_oracle[0],
                    g.gamma_oracle[1],
                    coef_g,
                    coef_d,
                ])
            })
            .collect())
    }

    fn group(&self, ctx: &Context, stream: Stream, group: usize) -> Result<GroupState> {
        Ok(self.groups(ctx, stream)?[group])
    }
}

impl Kernels for AutoOptKernels {
    fn step(&mut self, ctx: &Context, stream: Stream, status: &Buffer, inputs: &DeviceStep, _step: u64) -> Result<()> {
        autoopt::check_samples(self.name, inputs.samples.as_ref().map(|s| s.2))?;
        let (data, scale, n) = inputs.samples.as_ref().expect("checked above");
        // Each entry of the caller's data is k·g_i: k = 1 ("sample") or N ("mean", g_i/N given).
        let k = if *scale == SampleScale::Mean { *n as f64 } else { 1.0 };
        let sums_bytes = 4 * std::mem::size_of::<f64>();
        for (t, &len) in ctx.layout.lens.iter().enumerate() {
            let (sum_sq, rows) = match data {
                DeviceSamples::SumSq(s) => (s[t], std::ptr::null()),
                DeviceSamples::PerSample(m) => (std::ptr::null(), m[t]),
            };
            let group = ctx.layout.groups[t];
            // SAFETY: the caller's buffers hold len (N·len for rows) device floats; every
            // library buffer was sized for this layout in `new`.
            let rc = unsafe {
                alr_cuda_autoopt_moments(
                    self.precond,
                    inputs.grads[t],
                    self.states[t].ptr(),
                    sum_sq,
                    rows,
                    *n,
                    k as f32,
                    len,
                    self.groups.ptr().byte_add(group * std::mem::size_of::<AutoOptGroup>()),
                    self.options.ptr().byte_add(group * std::mem::size_of::<AutoOptOptions>()),
                    status.ptr(),
                    self.partials.ptr().byte_add(self.offsets[t] * sums_bytes),
                    stream.raw(),
                )
            };
            launched(rc, "AutoOpt moments")?;
        }
        let square_scale = if matches!(data, DeviceSamples::SumSq(_)) { k * k } else { 0.0 };
        // SAFETY: as above.
        let rc = unsafe {
            alr_cuda_autoopt_solve(
                self.partials.ptr(),
                self.ranges.ptr(),
                self.group_sums.ptr(),
                self.groups.ptr(),
                self.options.ptr(),
                ctx.layout.n_groups(),
                *n as f64,
                square_scale,
                status.ptr(),
                stream.raw(),
            )
        };
        launched(rc, "AutoOpt solve")?;
        for (t, &len) in ctx.layout.lens.iter().enumerate() {
            let group = ctx.layout.groups[t];
            // SAFETY: as above.
            let rc = unsafe {
                alr_cuda_autoopt_update(
                    self.precond,
                    inputs.params[t],
                    inputs.grads[t],
                    self.states[t].ptr(),
                    len,
                    self.groups.ptr().byte_add(group * std::mem::size_of::<AutoOptGroup>()),
                    self.options.ptr().byte_add(group * std::mem::size_of::<AutoOptOptions>()),
                    status.ptr(),
                    stream.raw(),
                )
            };
            launched(rc, "AutoOpt update")?;
        }
        Ok(())
    }

    fn options_changed(&mut self, ctx: &Context, stream: Stream) -> Result<()> {
        let has = |name: &str| ctx.options.specs().iter().any(|s| s.name == name);
        let per_group: Vec<AutoOptOptions> = (0..ctx.layout.n_groups())
            .map(|g| AutoOptOptions {
                nu: ctx.options.get(g, "nu"),
                gamma_max: ctx.options.get(g, "gamma_max"),
                eps: if has("eps") { ctx.options.get(g, "eps") } else { 0.0 },
                beta2: if has("beta2") { ctx.options.get(g, "beta2") } else { 0.0 },
            })
            .collect();
        self.options.upload(stream, &per_group)
    }

    fn lr(&self, ctx: &Context, stream: Stream, group: usize) -> Result<f64> {
        Ok(self.group(ctx, stream, group)?.lr(ctx.options.get(group, "gamma_max")))
    }

    fn momentum(&self, ctx: &Context, stream: Stream, group: usize) -> Result<f64> {
        Ok(self.group(ctx, stream, group)?.momentum(ctx.options.get(group, "gamma_max")))
    }

    fn telemetry(&self, ctx: &Context, stream: Stream, group: usize) -> Result<Vec<(&'static str, f64)>> {
        Ok(self.group(ctx, stream, group)?.telemetry(ctx.options.get(group, "gamma_max")))
    }

    fn save(&self, ctx: &Context, stream: Stream, w: &mut Writer) -> Result<()> {
        self.groups(ctx, stream)?.iter().for_each(|gs| gs.write(w));
        save_states(&self.states, &ctx.layout.lens, self.floats, stream, w)
    }

    fn load(&mut self, ctx: &Context, stream: Stream, mut r: Reader, started: bool) -> Result<()> {
        let groups = (0..ctx.layout.n_groups()).map(|g| GroupState::read(&mut r, g)).collect::<Result<Vec<_>>>()?;
        let device: Vec<AutoOptGroup> = groups
            .iter()
            .map(|gs| {
                let v = gs.record();
                AutoOptGroup {
                    gamma: [if v[0].is_nan() { 0.0 } else { v[0] }, v[1]],
                    steps: v[2] as u64,
                    fallbacks: v[3] as u64,
                    clamps: v[4] as u64,
                    skips: v[5] as u64,
                    noise: v[6],
                    a: v[7],
                    c: v[8],
                    e: v[9],
                    det: v[10],
                    gamma_oracle: [v[11], v[12]],
                    moved: i32::from(!v[13].is_nan()),
                    coef_g: if v[13].is_nan() { 0.0 } else { v[13] as f32 },
                    coef_d: if v[14].is_nan() { 0.0 } else { v[14] as f32 },
                    pad: 0,
                }
            })
            .collect();
        let states = (self.read_states)(ctx, &mut r)?;
        r.finish()?;
        crate::checkpoint::check_started(started, groups.iter().any(|g| g.record()[2] > 0.0))?;
        self.groups.upload(stream, &device)?;
        upload_states(&self.states, &states, stream)
    }
}

/// The kernels of algorithm `name`, or ALR_UNSUPPORTED for one that has none yet.
fn kernels_for(device: &Device, stream: Stream, name: &str, layout: &Layout) -> Result<Box<dyn Kernels>> {
    Ok(match name {
        "sgd" => Box::new(FixedRateKernels::<Sgd>::new(device, layout, alr_cuda_sgd_step)?),
        "momentum" => Box::new(FixedRateKernels::<Momentum>::new(device, layout, alr_cuda_momentum_step)?),
        "adagrad" => Box::new(FixedRateKernels::<Adagrad>::new(device, layout, alr_cuda_adagrad_step)?),
        "rmsprop" => Box::new(FixedRateKernels::<RmsProp>::new(device, layout, alr_cuda_rmsprop_step)?),
        // AdamW is Adam's kernel with the decoupled decay in its coefficients.
        "adam" => Box::new(FixedRateKernels::<Adam<false>>::new(device, layout, alr_cuda_adam_step)?),
        "adamw" => Box::new(FixedRateKernels::<Adam<true>>::new(device, layout, alr_cuda_adam_step)?),
        "auto-sgd" => Box::new(AutoOptKernels::new::<autoopt::Identity>(device, stream, layout, 0)?),
        "auto-adam" => Box::new(AutoOptKernels::new::<autoopt::AdamDiag>(device, stream, layout, 1)?),
        "auto-adagrad" => Box::new(AutoOptKernels::new::<autoopt::AdagradDiag>(device, stream, layout, 2)?),
        _ => return Err(no_kernels(name)),
    })
}

/// The algorithms with CUDA kernels in this version.
const ON_CUDA: [&str; 9] = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "auto-sgd", "auto-adam", "auto-adagrad"];

fn no_kernels(name: &str) -> Error {
    Error::unsupported(format!(
        "algorithm '{name}' has no CUDA kernels yet (on CUDA: {}): create it on ALR_DEVICE_CPU",
        ON_CUDA.join(", ")
    ))
}

/// An algorithm's state and kernels on one CUDA device, stepping on the caller's stream.
pub struct Engine {
    kernels: Box<dyn Kernels>,
    status: Buffer,
    /// Host steps enqueued so far (the status word records which one found bad input).
    steps: u64,
    stream: Stream,
    device: Device,
}

impl Engine {
    pub fn new(ordinal: i32, stream: Stream, name: &str, ctx: &Context) -> Result<Engine> {
        if !ON_CUDA.contains(&name) {
            // Said before the device is opened, so the answer does not depend on the machine.
            return Err(no_kernels(name));
        }
        let device = Device::open(ordinal)?;
        let mut kernels = kernels_for(&device, stream, name, ctx.layout)?;
        kernels.options_changed(ctx, stream)?;
        let status = Buffer::zeroed(&device, std::mem::size_of::<DeviceStatus>())?;
        Ok(Engine { kernels, status, steps: 0, stream, device })
    }

    pub fn ordinal(&self) -> usize {
        self.device.ordinal()
    }

    /// Enqueues one step; returns without waiting for it.
    pub fn step(&mut self, ctx: &Context, inputs: &DeviceStep) -> Result<()> {
        self.device.bind()?;
        self.kernels.step(ctx, self.stream, &self.status, inputs, self.steps + 1)?;
        self.steps += 1;
        Ok(())
    }

    pub fn options_changed(&mut self, ctx: &Context) -> Result<()> {
        self.device.bind()?;
        self.kernels.options_changed(ctx, self.stream)
    }

    /// Waits for the stream, reads the status word, and if a step found bad input reports it
    /// (once: the word is cleared, and steps run again from the next one).
    fn settle(&mut self) -> Result<()> {
        self.device.bind()?;
        let status = self.status.download::<DeviceStatus>(self.stream, 1)?[0];
        if status.code == 0 {
            return Ok(());
        }
        self.status.upload(self.stream, &[DeviceStatus::default()])?;
        // Steps from the one that found the bad input on changed nothing.
        let skipped = if status.step == 0 { 0 } else { self.steps + 1 - status.step };
        self.kernels.roll_back(skipped);
        let what = match status.code {
            2 => "a negative entry in sum_sq (it must be ≥ 0)",
            _ => "a NaN or Inf in the gradients or per-sample data",
        };
        let error = Error::new(
            if status.code == 2 { AlrStatus::AlrInvalidArgument } else { AlrStatus::AlrNonFinite },
            format!(
                "a step on the CUDA device found {what}; that step and every later one up to now changed nothing (parameters and state are as before it). Steps run again from the next call"
            ),
        );
        Err(error)
    }

    pub fn lr(&mut self, ctx: &Context, group: usize) -> Result<f64> {
        self.settle()?;
        self.kernels.lr(ctx, self.stream, group)
    }

    pub fn momentum(&mut self, ctx: &Context, group: usize) -> Result<f64> {
        self.settle()?;
        self.kernels.momentum(ctx, self.stream, group)
    }

    pub fn telemetry(&mut self, ctx: &Context, group: usize) -> Result<Vec<(&'static str, f64)>> {
        self.settle()?;
        self.kernels.telemetry(ctx, self.stream, group)
    }

    pub fn save(&mut self, ctx: &Context, w: &mut Writer) -> Result<()> {
        self.settle()?;
        self.kernels.save(ctx, self.stream, w)
    }

    /// Replaces the state with a checkpoint's (the reader is finished here). A bad-input error
    /// pending on the device is dropped: the loaded state replaces what it protected.
    pub fn load(&mut self, ctx: &Context, r: Reader, started: bool) -> Result<()> {
        if let Err(e) = self.settle() {
            if e.status == AlrStatus::AlrCudaError {
                return Err(e);
            }
        }
        self.kernels.load(ctx, self.stream, r, started)?;
        self.kernels.options_changed(ctx, self.stream)
    }
}

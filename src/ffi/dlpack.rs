//! The DLPack entry point: the same step as `alr_step`, with every tensor given as a borrowed
//! DLPack `DLTensor` (what `torch.utils.dlpack`, JAX, CuPy and NumPy exchange). The structs
//! below are layout-compatible with DLPack's `DLTensor`, `DLDevice` and `DLDataType`
//! (dlpack.h v0.6 and later); they carry autolr names so that both headers can be included.

use super::api::{check_struct_size, pointers, run_step, AlrGradFn, AlrLossFn, RawStep};
use super::handle::{self, AlrOptimizer};
use super::{guard, non_null};
use crate::backend::Memory;
use crate::error::{AlrStatus, Error};
use std::ffi::c_void;

/// DLPack's `DLDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlrDLDevice {
    /// kDLCPU = 1, kDLCUDA = 2, …
    pub device_type: i32,
    pub device_id: i32,
}

/// DLPack's `DLDataType`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AlrDLDataType {
    /// kDLFloat = 2.
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// DLPack's `DLTensor` (borrowed: the library never frees or keeps it).
#[repr(C)]
pub struct AlrDLTensor {
    pub data: *mut c_void,
    pub device: AlrDLDevice,
    pub ndim: i32,
    pub dtype: AlrDLDataType,
    pub shape: *const i64,
    /// NULL for compact row-major.
    pub strides: *const i64,
    pub byte_offset: u64,
}

/// Arguments of `alr_step_dlpack`; as `AlrStepArgs`, with each array holding `n_tensors`
/// pointers to `AlrDLTensor`. `per_sample` tensors have shape (N, *param shape); `batch_size`
/// is then taken from them (it is still needed with `sum_sq`).
#[repr(C)]
pub struct AlrDLStepArgs {
    pub struct_size: usize,
    pub n_tensors: usize,
    pub params: *const *const AlrDLTensor,
    pub grads: *const *const AlrDLTensor,
    pub sum_sq: *const *const AlrDLTensor,
    pub per_sample: *const *const AlrDLTensor,
    /// An `AlrSampleScale` value.
    pub per_sample_scale: i32,
    pub batch_size: usize,
    pub curvature: *const *const AlrDLTensor,
    pub has_loss: i32,
    pub loss: f64,
    pub loss_fn: AlrLossFn,
    pub grad_fn: AlrGradFn,
    pub user_data: *mut c_void,
}

const KDL_CPU: i32 = 1;
const KDL_CUDA: i32 = 2;
const KDL_FLOAT: u8 = 2;

/// The DLPack device of an optimizer's memory.
fn optimizer_device(memory: Memory) -> AlrDLDevice {
    match memory {
        Memory::Host => AlrDLDevice { device_type: KDL_CPU, device_id: 0 },
        Memory::Cuda { ordinal } => AlrDLDevice { device_type: KDL_CUDA, device_id: ordinal as i32 },
    }
}

/// The float32 buffer behind a tensor, after checking dtype, device, contiguity and element
/// count; returns the pointer and the tensor's leading dimension.
///
/// # Safety
/// `tensor` must point to a valid DLTensor whose shape/strides arrays hold `ndim` entries.
unsafe fn buffer(tensor: *const AlrDLTensor, device: AlrDLDevice, want: usize, leading: bool, what: &str) -> Result<(*mut f32, usize), Error> {
    let t = &*tensor;
    if t.dtype.code != KDL_FLOAT || t.dtype.bits != 32 || t.dtype.lanes != 1 {
        return Err(Error::invalid(format!(
            "{what}: dtype (code {}, bits {}, lanes {}) is not float32; convert it (e.g. tensor.float())",
            t.dtype.code, t.dtype.bits, t.dtype.lanes
        )));
    }
    // A CPU tensor's device_id is not meaningful (DLPack), a CUDA tensor's is the ordinal.
    if t.device.device_type != device.device_type || (device.device_type == KDL_CUDA && t.device.device_id != device.device_id) {
        let runs_on =
            if device.device_type == KDL_CPU { "the CPU (kDLCPU = 1)".to_string() } else { format!("CUDA device {} (kDLCUDA = 2)", device.device_id) };
        return Err(Error::unsupported(format!(
            "{what}: device type {} id {} is not the device this optimizer runs on: {runs_on}",
            t.device.device_type, t.device.device_id
        )));
    }
    if t.ndim < 0 || (t.ndim > 0 && t.shape.is_null()) {
        return Err(Error::invalid(format!("{what}: ndim {} with no shape", t.ndim)));
    }
    let shape: &[i64] = if t.ndim == 0 { &[] } else { std::slice::from_raw_parts(t.shape, t.ndim as usize) };
    if shape.iter().any(|&d| d < 0) {
        return Err(Error::invalid(format!("{what}: negative dimension in shape {shape:?}")));
    }
    // The element count, bounded where it is formed (crate::limits): a product that overflows or
    // wraps around 2^64 is refused, never taken for a small tensor.
    let numel = crate::limits::shape_floats(shape)
        .ok_or_else(|| Error::invalid(format!("{what}: shape {shape:?} has more elements than any float32 buffer can hold")))?;
    if !t.strides.is_null() {
        let strides = std::slice::from_raw_parts(t.strides, t.ndim as usize);
        // Every partial product is at most numel, which fits: no overflow below.
        let mut expected = 1i64;
        for (d, (&size, &stride)) in shape.iter().zip(strides).enumerate().rev() {
            if size > 1 && stride != expected {
                return Err(Error::invalid(format!("{what}: not contiguous (stride {stride} in dimension {d}, expected {expected}); pass a contiguous copy")));
            }
            expected = expected.saturating_mul(size);
        }
    }
    if leading && t.ndim == 0 {
        return Err(Error::shape(format!("{what}: a per-sample tensor needs a leading dimension N, the shape is []")));
    }
    let rows = if leading { shape[0] as usize } else { 1 };
    if crate::limits::floats(rows, want) != Some(numel) {
        return Err(Error::shape(format!("{what}: shape {shape:?} has {numel} elements, registered {want}{}", if leading { " per sample" } else { "" })));
    }
    non_null!(t.data, format!("{what}.data"));
    // wrapping_add: an offset past the allocation is the caller's error, not undefined behaviour here.
    let data = (t.data as *mut u8).wrapping_add(usize::try_from(t.byte_offset).unwrap_or(usize::MAX));
    if data as usize % std::mem::align_of::<f32>() != 0 {
        return Err(Error::invalid(format!("{what}: data + byte_offset is not 4-byte aligned")));
    }
    Ok((data as *mut f32, rows))
}

/// As `alr_step`, with tensors given as borrowed DLPack tensors: float32, compact row-major,
/// on the optimizer's device, with the registered element counts (any shape). Returns the
/// codes of `alr_step`, plus ALR_INVALID_ARGUMENT for a wrong dtype, strides or alignment,
/// ALR_SHAPE_MISMATCH for a wrong element count, ALR_UNSUPPORTED for another device.
#[no_mangle]
pub extern "C" fn alr_step_dlpack(opt: *mut AlrOptimizer, args: *const AlrDLStepArgs) -> AlrStatus {
    guard("alr_step_dlpack", || {
        non_null!(args, "args");
        // SAFETY: args is non-null; struct_size is its first field.
        let size = unsafe { (*args).struct_size };
        check_struct_size(size, std::mem::size_of::<AlrDLStepArgs>(), "AlrDLStepArgs")?;
        // SAFETY: the caller's struct is at least this version's size.
        let args = unsafe { &*args };
        // The handle is checked against the live set and held busy for the call.
        let mut opt = handle::get(opt)?;
        let lens = opt.layout().lens.clone();
        let device = optimizer_device(opt.memory());
        let n = lens.len();
        if args.n_tensors != n {
            return Err(Error::shape(format!("args.n_tensors is {}, the optimizer has {n} tensors", args.n_tensors)));
        }
        let mut batch_size = args.batch_size;
        let mut resolve = |list: *const *const AlrDLTensor, what: &str, leading: bool| -> Result<Option<Vec<*mut f32>>, Error> {
            if list.is_null() {
                return Ok(None);
            }
            // SAFETY: a non-null array holds n tensor pointers, each checked non-null (documented).
            let tensors = unsafe { pointers(list, n, what) }?;
            let mut out = Vec::with_capacity(n);
            for (t, (&tensor, &len)) in tensors.iter().zip(&lens).enumerate() {
                // SAFETY: the tensor is non-null and valid for the call (documented).
                let (data, rows) = unsafe { buffer(tensor, device, len, leading, &format!("{what}[{t}]")) }?;
                if leading {
                    if t > 0 && rows != batch_size {
                        return Err(Error::shape(format!("{what}[{t}] has {rows} samples, {what}[0] has {batch_size}")));
                    }
                    batch_size = rows;
                }
                out.push(data);
            }
            Ok(Some(out))
        };
        let params = resolve(args.params, "params", false)?.ok_or_else(|| Error::new(AlrStatus::AlrNullPointer, "argument 'params' is null"))?;
        let grads = resolve(args.grads, "grads", false)?.ok_or_else(|| Error::new(AlrStatus::AlrNullPointer, "argument 'grads' is null"))?;
        let constant = |v: Option<Vec<*mut f32>>| v.map(|v| v.into_iter().map(|p| p as *const f32).collect::<Vec<_>>());
        let sum_sq = constant(resolve(args.sum_sq, "sum_sq", false)?);
        let per_sample = constant(resolve(args.per_sample, "per_sample", true)?);
        let curvature = constant(resolve(args.curvature, "curvature", false)?);
        let raw = RawStep {
            params,
            grads: grads.into_iter().map(|p| p as *const f32).collect(),
            sum_sq,
            per_sample,
            per_sample_scale: args.per_sample_scale,
            batch_size,
            curvature,
            loss: (args.has_loss != 0).then_some(args.loss),
            loss_fn: args.loss_fn,
            grad_fn: args.grad_fn,
            user_data: args.user_data,
        };
        // SAFETY: each pointer was checked to address its registered number of floats.
        unsafe { run_step(&mut opt, raw) }
    })
}

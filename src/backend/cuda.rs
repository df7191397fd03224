//! The GPU backend (feature `cuda`), first part: opening a CUDA device through cudarc (driver
//! API, loaded at run time), with a clear error — never a crash — where no driver or no such
//! device exists, and the layout check between the Rust coefficient structs and the kernels'.
//! The kernels live in cuda/*.cu (fixed-rate rules and AutoOpt so far); steps on the device are not wired
//! to the optimizer yet (issue 6).

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use crate::error::{AlrStatus, Error, Result};

extern "C" {
    /// `sizeof` of the kernels' coefficient struct of rule `rule` (cuda/fixed_rate.cu), −1 past the last.
    fn alr_cuda_coeffs_size(rule: std::ffi::c_int) -> std::ffi::c_long;
}

/// The fixed-rate rules' coefficient structs, in the order of `alr_cuda_coeffs_size`.
fn rust_coeffs_sizes() -> [usize; 5] {
    use crate::base::{adagrad, adam, momentum, rmsprop, sgd};
    [
        std::mem::size_of::<sgd::SgdCoeffs>(),
        std::mem::size_of::<momentum::MomentumCoeffs>(),
        std::mem::size_of::<adagrad::AdagradCoeffs>(),
        std::mem::size_of::<rmsprop::RmsPropCoeffs>(),
        std::mem::size_of::<adam::AdamCoeffs>(),
    ]
}

fn cuda_error(message: impl Into<String>) -> Error {
    Error::new(AlrStatus::AlrCudaError, message)
}

/// A CUDA device's primary context, retained while the optimizer lives.
pub struct Device {
    context: Arc<CudaContext>,
}

impl Device {
    /// Opens device `ordinal`. Without a driver (no libcuda) this is ALR_CUDA_ERROR saying so,
    /// as is an ordinal the machine does not have.
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
        for (rule, rust) in rust_coeffs_sizes().into_iter().enumerate() {
            // SAFETY: a pure function of its argument in the linked kernel library.
            let kernel = unsafe { alr_cuda_coeffs_size(rule as std::ffi::c_int) };
            if kernel != rust as std::ffi::c_long {
                return Err(cuda_error(format!(
                    "build mismatch: fixed-rate rule {rule}'s coefficients are {rust} bytes in Rust and {kernel} in cuda/fixed_rate.cu"
                )));
            }
        }
        Ok(Device { context })
    }

    pub fn ordinal(&self) -> usize {
        self.context.ordinal()
    }
}

//! Creating an optimizer on a CUDA device through the C ABI, on a build with the `cuda` feature:
//! a clear ALR_CUDA_ERROR — never a crash — without a driver or for a device the machine does
//! not have, and ALR_UNSUPPORTED for an algorithm without CUDA kernels. (Steps on a device are
//! tested by tests/gpu/, which needs a GPU.) Run by the test command whenever nvcc is available:
//! `cargo test --features cuda --test cuda_device`.
#![cfg(feature = "cuda")]

use autolr::ffi::{alr_algorithms, alr_create, alr_destroy, alr_last_error, alr_set_option_str, AlrCreateArgs, AlrDevice, AlrOptimizer};
use autolr::AlrStatus;
use std::ffi::{CStr, CString};

fn create_on_cuda(ordinal: i32) -> (AlrStatus, String, *mut AlrOptimizer) {
    create_algorithm_on_cuda(c"adam", ordinal)
}

fn create_algorithm_on_cuda(algorithm: &CStr, ordinal: i32) -> (AlrStatus, String, *mut AlrOptimizer) {
    let lens = [10usize, 3];
    let args = AlrCreateArgs {
        struct_size: std::mem::size_of::<AlrCreateArgs>(),
        algorithm: algorithm.as_ptr(),
        n_tensors: lens.len(),
        lens: lens.as_ptr(),
        groups: std::ptr::null(),
        device: AlrDevice::AlrDeviceCuda as i32,
        device_ordinal: ordinal,
        stream: std::ptr::null_mut(),
        sharded: 0,
        reduce: None,
        reduce_user_data: std::ptr::null_mut(),
    };
    let mut out: *mut AlrOptimizer = std::ptr::NonNull::dangling().as_ptr();
    let status = alr_create(&args, &mut out);
    // SAFETY: alr_last_error returns a NUL-terminated thread-local string (never NULL).
    let message = unsafe { CStr::from_ptr(alr_last_error()) }.to_string_lossy().into_owned();
    (status, message, out)
}

fn driver_present() -> bool {
    // SAFETY: only probes whether libcuda can be loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn no_driver_or_no_device_is_a_clear_cuda_error() {
    let (status, message, out) = create_on_cuda(if driver_present() { 4096 } else { 0 });
    assert_eq!(status, AlrStatus::AlrCudaError, "{message}");
    assert!(out.is_null(), "alr_create must set *out = NULL on failure");
    let expected = if driver_present() { "cannot open CUDA device 4096" } else { "no CUDA driver" };
    assert!(message.contains(expected), "message {message:?} lacks {expected:?}");
}

#[test]
fn the_peers_and_schedule_free_have_kernels_so_only_the_device_is_missing() {
    // Past the kernel check (ALR_UNSUPPORTED before any device is opened), the answer is the
    // device's: no driver, or no device 4096.
    for algorithm in [c"prodigy", c"dadapt-adam", c"dog", c"ldog", c"schedule-free", c"sf-adamw", c"sf-sgd"] {
        let (status, message, out) = create_algorithm_on_cuda(algorithm, if driver_present() { 4096 } else { 0 });
        assert_eq!(status, AlrStatus::AlrCudaError, "{algorithm:?}: {message}");
        assert!(out.is_null());
    }
}

#[test]
fn a_negative_ordinal_is_an_invalid_argument_where_a_driver_exists() {
    let (status, message, out) = create_on_cuda(-1);
    let expected = if driver_present() { AlrStatus::AlrInvalidArgument } else { AlrStatus::AlrCudaError };
    assert_eq!(status, expected, "{message}");
    assert!(out.is_null());
}

/// A list of `alr_algorithms`.
fn algorithms_on(device: AlrDevice) -> Vec<String> {
    // SAFETY: alr_algorithms returns a static NUL-terminated list for a valid device.
    let list = unsafe { CStr::from_ptr(alr_algorithms(device as i32)) }.to_string_lossy().into_owned();
    list.split(',').map(str::to_owned).collect()
}

#[test]
fn algorithms_without_kernels_are_unsupported_on_cuda_on_every_machine() {
    let on_cuda = algorithms_on(AlrDevice::AlrDeviceCuda);
    let without: Vec<CString> = algorithms_on(AlrDevice::AlrDeviceCpu).into_iter().filter(|a| !on_cuda.contains(a)).map(|a| CString::new(a).unwrap()).collect();
    // GI's loss callback evaluates host parameters: it stays on the CPU.
    assert!(without.iter().any(|a| a.as_c_str() == c"gi"), "{without:?}");
    for algorithm in &without {
        let (status, message, out) = create_algorithm_on_cuda(algorithm, 0);
        assert_eq!(status, AlrStatus::AlrUnsupported, "{algorithm:?}: {message}");
        assert!(out.is_null());
        let name = algorithm.to_str().unwrap();
        assert!(message.contains(&format!("'{name}' has no CUDA kernels")) && message.contains("auto-adam"), "{message}");
    }
}

/// Schedule-free runs on CUDA, gi does not: over gi it is ALR_UNSUPPORTED (docs/algorithms.md
/// §3.3), decided when the base is set, which needs a created optimizer, hence a device. On every
/// machine the rule that decides it; where device 0 exists, through the C ABI.
#[test]
fn schedule_free_over_gi_is_unsupported_on_cuda() {
    let e = autolr::registry::check_composition_runs_on(autolr::backend::DeviceKind::Cuda, "schedule-free", "gi").unwrap_err();
    assert_eq!(e.status, AlrStatus::AlrUnsupported);
    assert!(e.message.contains("CPU only") && e.message.contains("ALR_DEVICE_CPU"), "{}", e.message);
    if !driver_present() {
        return;
    }
    let (status, message, out) = create_algorithm_on_cuda(c"schedule-free", 0);
    if status == AlrStatus::AlrCudaError {
        return; // no device 0 on this machine: the rule above is what is tested
    }
    assert_eq!(status, AlrStatus::AlrOk, "{message}");
    assert_eq!(alr_set_option_str(out, c"base".as_ptr(), c"gi".as_ptr()), AlrStatus::AlrUnsupported);
    // SAFETY: alr_last_error returns a NUL-terminated thread-local string (never NULL).
    let message = unsafe { CStr::from_ptr(alr_last_error()) }.to_string_lossy().into_owned();
    assert!(message.contains("CPU only"), "{message}");
    assert_eq!(alr_destroy(out), AlrStatus::AlrOk);
}

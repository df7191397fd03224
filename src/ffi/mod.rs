//! The C boundary, and nothing else: handles, status codes, the thread-local last-error text,
//! null/length checks, and `catch_unwind` on every entry point (`guard`, which every entry point's body runs in), so that no
//! panic crosses into the caller and no bad input aborts the host process.

// The entry points take the C caller's raw pointers: their safety contract is the header's
// (checked for null first, lengths as documented), as for every C API; marking them `unsafe fn`
// would change nothing for a C caller.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
mod api;
#[allow(clippy::not_unsafe_ptr_arg_deref)]
mod dlpack;
mod handle;

pub use api::*;
pub use dlpack::*;
pub use handle::AlrOptimizer;

use crate::error::{AlrStatus, Error};
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Records the error's text and returns its status.
pub(crate) fn fail(err: Error) -> AlrStatus {
    set_last_error(&err.message);
    err.status
}

/// Runs an entry point's body: an `Err` becomes its status plus last-error text, a panic becomes
/// `ALR_PANIC` with the panic's message (and where it happened) as last-error text — nothing is
/// printed to stderr (see `error::quiet_panics`). Success clears the last error.
pub(crate) fn guard<F: FnOnce() -> Result<(), Error>>(entry: &str, body: F) -> AlrStatus {
    let result = crate::error::quiet_panics(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
    match result {
        Ok(Ok(())) => {
            set_last_error("");
            AlrStatus::AlrOk
        }
        Ok(Err(err)) => fail(Error::new(err.status, format!("{entry}: {}", err.message))),
        Err(payload) => {
            // The hook's text has the location; a payload re-raised with resume_unwind (a
            // worker thread's panic) reaches here without passing the hook on this thread.
            let what = crate::error::take_panic_text().unwrap_or_else(|| crate::error::payload_text(&*payload));
            // Dropping the payload could itself panic (a payload with a panicking Drop): that
            // panic is caught too, so it never crosses into the caller.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
            fail(Error::new(AlrStatus::AlrPanic, format!("{entry}: internal error (a bug in autolr, please report it): {what}")))
        }
    }
}

/// Fails with `ALR_NULL_POINTER` naming the argument when it is null.
macro_rules! non_null {
    ($ptr:expr, $what:expr) => {
        if $ptr.is_null() {
            return Err(crate::error::Error::new(crate::error::AlrStatus::AlrNullPointer, format!("argument '{}' is null", $what)));
        }
    };
}
pub(crate) use non_null;

/// A borrowed C string as UTF-8.
pub(crate) fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Error> {
    non_null!(ptr, what);
    // SAFETY: the caller passes a NUL-terminated string valid for the duration of the call.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| Error::invalid(format!("argument '{what}' is not valid UTF-8")))
}

/// The C boundary's unsafe code exercised from Rust: small enough to run under Miri
/// (`cargo +nightly miri test --lib ffi::`), which checks every raw-pointer read, slice and
/// handle dereference here for undefined behaviour.
#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::{null, null_mut};

    fn last() -> String {
        // SAFETY: the library's own NUL-terminated text.
        unsafe { CStr::from_ptr(alr_last_error()) }.to_string_lossy().into_owned()
    }

    fn create(algorithm: &CStr, lens: &[usize]) -> *mut AlrOptimizer {
        let args = AlrCreateArgs {
            struct_size: std::mem::size_of::<AlrCreateArgs>(),
            algorithm: algorithm.as_ptr(),
            n_tensors: lens.len(),
            lens: lens.as_ptr(),
            groups: null(),
            device: 0,
            device_ordinal: 0,
            stream: null_mut(),
            sharded: 0,
            reduce: None,
            reduce_user_data: std::ptr::null_mut(),
        };
        let mut opt = null_mut();
        assert_eq!(alr_create(&args, &mut opt), AlrStatus::AlrOk, "{}", last());
        opt
    }

    fn step_args(params: &[*mut f32], grads: &[*const f32]) -> AlrStepArgs {
        AlrStepArgs {
            struct_size: std::mem::size_of::<AlrStepArgs>(),
            n_tensors: params.len(),
            params: params.as_ptr(),
            grads: grads.as_ptr(),
            sum_sq: null(),
            per_sample: null(),
            per_sample_scale: 0,
            batch_size: 0,
            curvature: null(),
            has_loss: 0,
            loss: 0.0,
            loss_fn: None,
            grad_fn: None,
            user_data: null_mut(),
        }
    }

    fn save(opt: *mut AlrOptimizer) -> Vec<u8> {
        let mut size = 0;
        assert_eq!(alr_save_size(opt, &mut size), AlrStatus::AlrOk, "{}", last());
        let mut buf = vec![0u8; size];
        let mut written = 0;
        assert_eq!(alr_save(opt, buf.as_mut_ptr(), size, &mut written), AlrStatus::AlrOk, "{}", last());
        assert_eq!(written, size);
        buf
    }

    #[test]
    fn handles_steps_and_checkpoints() {
        let opt = create(c"sgd", &[3, 2]);
        let (mut a, mut b) = ([1.0f32, 2.0, 3.0], [4.0f32, 5.0]);
        let (ga, gb) = ([1.0f32; 3], [0.5f32; 2]);
        let params = [a.as_mut_ptr(), b.as_mut_ptr()];
        let grads = [ga.as_ptr(), gb.as_ptr()];
        assert_eq!(alr_set_option(opt, c"lr".as_ptr(), 0.5), AlrStatus::AlrOk);
        let state = save(opt);
        assert_eq!(alr_step(opt, &step_args(&params, &grads)), AlrStatus::AlrOk, "{}", last());
        assert_eq!((a, b), ([0.5, 1.5, 2.5], [3.75, 4.75]));
        // A buffer one byte short gets nothing written.
        let mut small = vec![0xABu8; state.len() - 1];
        let mut written = 7;
        assert_eq!(alr_save(opt, small.as_mut_ptr(), small.len(), &mut written), AlrStatus::AlrInvalidArgument);
        assert!(small.iter().all(|&x| x == 0xAB) && written == 7);
        assert_eq!(alr_load(opt, state.as_ptr(), state.len()), AlrStatus::AlrOk, "{}", last());
        assert_eq!(save(opt), state);
        assert_eq!(alr_load(opt, state.as_ptr(), state.len() - 1), AlrStatus::AlrBadCheckpoint);
        // A length no buffer can have: refused before a slice of it is formed (Miri would report that).
        assert_eq!(alr_load(opt, state.as_ptr(), usize::MAX), AlrStatus::AlrBadCheckpoint);
        assert_eq!(alr_destroy(opt), AlrStatus::AlrOk);
        // Stale, foreign and null handles are errors, never dereferenced.
        assert_eq!(alr_step(opt, &step_args(&params, &grads)), AlrStatus::AlrInvalidArgument);
        assert_eq!(alr_load(opt, state.as_ptr(), state.len()), AlrStatus::AlrInvalidArgument);
        assert_eq!(alr_destroy(opt), AlrStatus::AlrInvalidArgument);
        let mut local = 0u64;
        assert_eq!(alr_destroy(&mut local as *mut u64 as *mut AlrOptimizer), AlrStatus::AlrInvalidArgument);
        assert_eq!(alr_save_size(null_mut(), &mut 0), AlrStatus::AlrNullPointer);
        assert_eq!(alr_destroy(null_mut()), AlrStatus::AlrOk);
    }

    #[test]
    fn sizes_no_buffer_can_have_are_refused_before_a_slice_is_formed() {
        // Under Miri, forming the slice of N·len floats would itself be reported as undefined behaviour.
        let opt = create(c"auto-sgd", &[5]);
        let mut p = [0.5f32; 5];
        let g = [0.25f32; 5];
        let rows = [1.0f32; 8];
        let params = [p.as_mut_ptr()];
        let grads = [g.as_ptr()];
        let per = [rows.as_ptr()];
        let mut args = step_args(&params, &grads);
        args.per_sample = per.as_ptr();
        args.batch_size = 1 << 61;
        assert_eq!(alr_step(opt, &args), AlrStatus::AlrInvalidArgument);
        assert!(last().contains("larger than any buffer"), "{}", last());
        // DLPack: 3 × 6148914691236517207 = 2^64 + 5 is not a tensor of 5 elements.
        let shape_ok = [5i64];
        let shape_wraps = [3i64, 6_148_914_691_236_517_207];
        let tensor = |data: *const f32, shape: &[i64]| AlrDLTensor {
            data: data as *mut std::ffi::c_void,
            device: AlrDLDevice { device_type: 1, device_id: 0 },
            ndim: shape.len() as i32,
            dtype: AlrDLDataType { code: 2, bits: 32, lanes: 1 },
            shape: shape.as_ptr(),
            strides: null(),
            byte_offset: 0,
        };
        let (tp, tg) = (tensor(p.as_ptr(), &shape_wraps), tensor(g.as_ptr(), &shape_ok));
        let (lp, lg) = ([&tp as *const AlrDLTensor], [&tg as *const AlrDLTensor]);
        let dl = AlrDLStepArgs {
            struct_size: std::mem::size_of::<AlrDLStepArgs>(),
            n_tensors: 1,
            params: lp.as_ptr(),
            grads: lg.as_ptr(),
            sum_sq: lg.as_ptr(),
            per_sample: null(),
            per_sample_scale: 0,
            batch_size: 4,
            curvature: null(),
            has_loss: 0,
            loss: 0.0,
            loss_fn: None,
            grad_fn: None,
            user_data: null_mut(),
        };
        assert_eq!(alr_step_dlpack(opt, &dl), AlrStatus::AlrInvalidArgument);
        assert!(last().contains("more elements than any float32 buffer"), "{}", last());
        assert_eq!(p, [0.5; 5]);
        assert_eq!(alr_destroy(opt), AlrStatus::AlrOk);
    }

    #[test]
    fn a_panic_becomes_alr_panic_with_its_message() {
        assert_eq!(alr_selftest_panic(), AlrStatus::AlrPanic);
        let msg = last();
        assert!(msg.contains("alr_selftest_panic was called") && msg.contains("api.rs"), "{msg}");
        // SAFETY: static storage.
        assert_eq!(unsafe { CStr::from_ptr(alr_status_name(AlrStatus::AlrPanic as i32)) }.to_str().unwrap(), "ALR_PANIC");
    }
}

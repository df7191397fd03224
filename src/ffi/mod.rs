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
/// `ALR_PANIC`. Success clears the last error.
pub(crate) fn guard<F: FnOnce() -> Result<(), Error>>(entry: &str, body: F) -> AlrStatus {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            AlrStatus::AlrOk
        }
        Ok(Err(err)) => fail(Error::new(err.status, format!("{entry}: {}", err.message))),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
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

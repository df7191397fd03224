//! The C boundary, and nothing else: handles, status codes, the thread-local last-error text,
//! null/length checks, and `catch_unwind` on every entry point (`guard`, which every entry point's body runs in), so that no
//! panic crosses into the caller and no bad input aborts the host process.

mod api;
mod dlpack;
mod handle;

pub use api::*;
pub use dlpack::*;
pub use handle::AlrOptimizer;

use crate::error::{AlrStatus, Error};
use std::cell::{Cell, RefCell};
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

thread_local! {
    /// How many entry points this thread is inside (a callback may call another optimizer).
    static ENTRY_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// What the panic hook captured for the entry point that is unwinding.
    static PANIC_TEXT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Installs, once per process, a panic hook that keeps the library silent: a panic on a thread
/// that is inside an `alr_*` entry point is recorded for that entry point's last-error text and
/// printed nowhere; every other panic goes to the hook that was installed before (the host's,
/// or Rust's default), unchanged. A host that installs its own hook later replaces this one.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ENTRY_DEPTH.try_with(|d| d.get() > 0).unwrap_or(false) {
                let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
                let text = format!("{}{at}", payload_text(info.payload()));
                let _ = PANIC_TEXT.try_with(|t| t.try_borrow_mut().map(|mut t| *t = Some(text)));
            } else {
                previous(info);
            }
        }));
    });
}

/// Marks this thread as inside an entry point while alive (also when the body unwinds).
struct InEntry;

impl InEntry {
    fn enter() -> Self {
        ENTRY_DEPTH.with(|d| d.set(d.get() + 1));
        InEntry
    }
}

impl Drop for InEntry {
    fn drop(&mut self) {
        ENTRY_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs an entry point's body: an `Err` becomes its status plus last-error text, a panic becomes
/// `ALR_PANIC` with the panic's message (and where it happened) as last-error text — nothing is
/// printed to stderr (see `install_panic_hook`). Success clears the last error.
pub(crate) fn guard<F: FnOnce() -> Result<(), Error>>(entry: &str, body: F) -> AlrStatus {
    install_panic_hook();
    PANIC_TEXT.with(|t| t.borrow_mut().take());
    let result = {
        let _inside = InEntry::enter();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
    };
    match result {
        Ok(Ok(())) => {
            set_last_error("");
            AlrStatus::AlrOk
        }
        Ok(Err(err)) => fail(Error::new(err.status, format!("{entry}: {}", err.message))),
        Err(payload) => {
            // The hook's text has the location; a payload re-raised with resume_unwind (a
            // worker thread's panic) reaches here without passing the hook on this thread.
            let what = PANIC_TEXT.with(|t| t.borrow_mut().take()).unwrap_or_else(|| payload_text(&*payload));
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

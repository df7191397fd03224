//! Errors: one status code (what kind of failure) plus a message (what to fix).

use std::cell::{Cell, RefCell};
use std::fmt;

/// Outcome of every C entry point. `Ok` is zero; every failure has its own code so a caller can
/// branch on the kind of failure and show `alr_last_error()` to a person. Besides the codes its
/// comment lists, any function that takes an optimizer returns ALR_NULL_POINTER for a null
/// handle, ALR_INVALID_ARGUMENT for one that is not live (destroyed, or never created),
/// ALR_WRONG_STATE while it is in use by another call or after a call on it panicked, and any
/// function may return ALR_PANIC (a library bug, caught: nothing is printed).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlrStatus {
    /// Success.
    AlrOk = 0,
    /// A required pointer argument was null.
    AlrNullPointer = 1,
    /// An argument or option value is not acceptable (the message lists what is).
    AlrInvalidArgument = 2,
    /// A buffer's length does not match what was registered or what the call needs.
    AlrShapeMismatch = 3,
    /// An input (gradient, per-sample data, curvature, loss) contains NaN or Inf.
    AlrNonFinite = 4,
    /// The call is not valid in the optimizer's current state (order of calls, option locked after the first step).
    AlrWrongState = 5,
    /// The operation or input is not supported by this algorithm, build or device.
    AlrUnsupported = 6,
    /// The CUDA driver or a kernel reported an error.
    AlrCudaError = 7,
    /// A caller-supplied callback reported failure.
    AlrCallbackFailed = 8,
    /// A checkpoint buffer is truncated, corrupted, or belongs to another optimizer configuration.
    AlrBadCheckpoint = 9,
    /// A bug inside the library was caught at the C boundary. The optimizer the call used may be
    /// mid-step, so it is poisoned: every later call on it fails; destroy it.
    AlrPanic = 10,
}

/// A failure with its status and a message a user can act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub status: AlrStatus,
    pub message: String,
    /// The call had already changed the optimizer when it failed (only GI's loss callback,
    /// which runs after the move: the move stands; and a sharded GI's reduction of φ, which runs
    /// after its base's state took the step). Every other error leaves everything as it was.
    pub after_change: bool,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(status: AlrStatus, message: impl Into<String>) -> Self {
        Error { status, message: message.into(), after_change: false }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrInvalidArgument, message)
    }
    pub fn shape(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrShapeMismatch, message)
    }
    pub fn non_finite(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrNonFinite, message)
    }
    pub fn wrong_state(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrWrongState, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrUnsupported, message)
    }
    pub fn checkpoint(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrBadCheckpoint, message)
    }
    pub fn callback(message: impl Into<String>) -> Self {
        Self::new(AlrStatus::AlrCallbackFailed, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

// --- panics: kept off the host's stderr ------------------------------------------------------

thread_local! {
    /// How many entry points this thread is inside (a callback may call another optimizer).
    static ENTRY_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// What the panic hook captured for the entry point that is unwinding.
    static PANIC_TEXT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".to_string())
}

/// Installs, once per process, a panic hook that keeps the library silent: a panic on a thread
/// that is inside `quiet_panics` (every `alr_*` entry point's body) is recorded for the last-error
/// text and printed nowhere; every other panic goes to the hook that was installed before (the host's,
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

/// Marks this thread as inside the library while alive (also when the body unwinds).
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

/// Runs `f` with panics on this thread kept silent (recorded for `take_panic_text`, printed
/// nowhere); the panic still unwinds out of `f`. Every C entry point runs inside it; a worker
/// thread the library spawns during a call should too (its panic is re-raised on the caller's
/// thread with `resume_unwind`, which the hook does not see, so only the worker's own panic would
/// otherwise reach the host's hook and be printed).
pub fn quiet_panics<T>(f: impl FnOnce() -> T) -> T {
    install_panic_hook();
    let _inside = InEntry::enter();
    if ENTRY_DEPTH.with(|d| d.get()) == 1 {
        PANIC_TEXT.with(|t| t.borrow_mut().take());
    }
    f()
}

/// The message and location of the last panic `quiet_panics` kept silent on this thread.
pub(crate) fn take_panic_text() -> Option<String> {
    PANIC_TEXT.with(|t| t.borrow_mut().take())
}

//! Errors: one status code (what kind of failure) plus a message (what to fix).

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
    /// which runs after the move: the move stands). Every other error leaves everything as it was.
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

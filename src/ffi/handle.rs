//! The opaque optimizer handle. Live handles are kept in a registry so that a null, stale
//! (destroyed) or foreign pointer is reported as an error instead of being dereferenced.

use crate::error::{AlrStatus, Error};
use crate::optimizer::Optimizer;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// An optimizer created by `alr_create` and freed by `alr_destroy`. Opaque to C.
pub struct AlrOptimizer {
    pub(crate) inner: Optimizer,
}

fn live() -> &'static Mutex<HashSet<usize>> {
    static LIVE: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

fn registry_lock() -> std::sync::MutexGuard<'static, HashSet<usize>> {
    // A panic while holding the lock cannot leave the set inconsistent (insert/remove only).
    live().lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn register(opt: Optimizer) -> *mut AlrOptimizer {
    let ptr = Box::into_raw(Box::new(AlrOptimizer { inner: opt }));
    registry_lock().insert(ptr as usize);
    ptr
}

fn unknown(ptr: *const AlrOptimizer) -> Error {
    if ptr.is_null() {
        Error::new(AlrStatus::AlrNullPointer, "argument 'opt' is null")
    } else {
        Error::invalid(format!("argument 'opt' ({ptr:p}) is not a live optimizer: it was destroyed, or never came from alr_create"))
    }
}

/// The optimizer behind a handle, if the handle is live.
///
/// # Safety
/// The caller must not use the same handle from two threads at once (documented in the header).
pub(crate) unsafe fn get<'a>(ptr: *mut AlrOptimizer) -> Result<&'a mut Optimizer, Error> {
    if ptr.is_null() || !registry_lock().contains(&(ptr as usize)) {
        return Err(unknown(ptr));
    }
    // SAFETY: the pointer is in the live set, so it came from Box::into_raw and is not freed.
    Ok(&mut (*ptr).inner)
}

/// Removes a handle from the live set and frees it; null is a no-op.
pub(crate) fn destroy(ptr: *mut AlrOptimizer) -> Result<(), Error> {
    if ptr.is_null() {
        return Ok(());
    }
    if !registry_lock().remove(&(ptr as usize)) {
        return Err(unknown(ptr));
    }
    // SAFETY: it was live, so it came from Box::into_raw and nobody else frees it.
    drop(unsafe { Box::from_raw(ptr) });
    Ok(())
}

//! The opaque optimizer handle. A handle is an id, never an address: ids come from a counter and
//! are never reused, so a null, stale (destroyed) or foreign handle is reported as an error —
//! also after a new optimizer happens to get the freed memory.

use crate::error::{AlrStatus, Error};
use crate::optimizer::Optimizer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// An optimizer created by `alr_create` and freed by `alr_destroy`. Opaque to C.
pub struct AlrOptimizer {
    pub(crate) inner: Optimizer,
}

/// Live handles: id → the boxed optimizer's address.
fn live() -> std::sync::MutexGuard<'static, HashMap<usize, usize>> {
    static LIVE: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    // A panic while holding the lock cannot leave the map inconsistent (insert/remove only).
    LIVE.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ids look like aligned pointers (multiples of 16) and start far from 0.
fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) << 4
}

pub(crate) fn register(opt: Optimizer) -> *mut AlrOptimizer {
    let id = next_id();
    live().insert(id, Box::into_raw(Box::new(AlrOptimizer { inner: opt })) as usize);
    id as *mut AlrOptimizer
}

fn unknown(handle: *const AlrOptimizer) -> Error {
    if handle.is_null() {
        Error::new(AlrStatus::AlrNullPointer, "argument 'opt' is null")
    } else {
        Error::invalid(format!("argument 'opt' ({handle:p}) is not a live optimizer: it was destroyed, or never came from alr_create"))
    }
}

/// The optimizer behind a handle, if the handle is live.
///
/// # Safety
/// The caller must not use the same handle from two threads at once (documented in the header).
pub(crate) unsafe fn get<'a>(handle: *mut AlrOptimizer) -> Result<&'a mut Optimizer, Error> {
    let address = live().get(&(handle as usize)).copied().ok_or_else(|| unknown(handle))?;
    // SAFETY: the address is in the live map, so it came from Box::into_raw and is not freed.
    Ok(&mut (*(address as *mut AlrOptimizer)).inner)
}

/// Removes a handle from the live map and frees its optimizer; null is a no-op.
pub(crate) fn destroy(handle: *mut AlrOptimizer) -> Result<(), Error> {
    if handle.is_null() {
        return Ok(());
    }
    let address = live().remove(&(handle as usize)).ok_or_else(|| unknown(handle))?;
    // SAFETY: it was live, so it came from Box::into_raw and nobody else frees it.
    drop(unsafe { Box::from_raw(address as *mut AlrOptimizer) });
    Ok(())
}

//! The opaque optimizer handle. A handle is an id, never an address: ids come from a counter and
//! are never reused, so a null, stale (destroyed) or foreign handle is reported as an error —
//! also after a new optimizer happens to get the freed memory. While a call uses an optimizer
//! it is marked busy: a call on it from inside one of its own callbacks (or, against the
//! documented rule, from another thread at the same time) is refused instead of aliasing it.
//! A call that panicked may have left it half-way through a step, so it is then poisoned.

use crate::error::{AlrStatus, Error};
use crate::optimizer::Optimizer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// An optimizer created by `alr_create` and freed by `alr_destroy`. Opaque to C.
pub struct AlrOptimizer {
    pub(crate) inner: Optimizer,
}

#[derive(Clone, Copy)]
struct Entry {
    address: usize,
    busy: bool,
    poisoned: bool,
}

/// Live handles: id → the boxed optimizer and its flags.
fn live() -> std::sync::MutexGuard<'static, HashMap<usize, Entry>> {
    static LIVE: OnceLock<Mutex<HashMap<usize, Entry>>> = OnceLock::new();
    // A panic while holding the lock cannot leave the map inconsistent (single inserts/updates).
    LIVE.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ids look like aligned pointers (multiples of 16) and start far from 0.
fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) << 4
}

pub(crate) fn register(opt: Optimizer) -> *mut AlrOptimizer {
    let id = next_id();
    let address = Box::into_raw(Box::new(AlrOptimizer { inner: opt })) as usize;
    live().insert(id, Entry { address, busy: false, poisoned: false });
    id as *mut AlrOptimizer
}

fn unusable(handle: *const AlrOptimizer, entry: Option<Entry>) -> Option<Error> {
    match entry {
        None if handle.is_null() => Some(Error::new(AlrStatus::AlrNullPointer, "argument 'opt' is null")),
        None => Some(Error::invalid(format!("argument 'opt' ({handle:p}) is not a live optimizer: it was destroyed, or never came from alr_create"))),
        Some(e) if e.busy => {
            Some(Error::wrong_state("the optimizer is in use by another call: do not call it from inside its own callbacks, nor from two threads at once"))
        }
        Some(e) if e.poisoned => Some(Error::wrong_state("an earlier call on this optimizer panicked and may have left it mid-step: destroy it")),
        Some(_) => None,
    }
}

/// Exclusive use of a live optimizer for the duration of one call.
pub(crate) struct InUse {
    id: usize,
    address: usize,
}

impl std::ops::Deref for InUse {
    type Target = Optimizer;
    fn deref(&self) -> &Optimizer {
        // SAFETY: the entry is live and marked busy by this guard, so nothing else frees or
        // borrows it until the guard is dropped.
        unsafe { &(*(self.address as *const AlrOptimizer)).inner }
    }
}

impl std::ops::DerefMut for InUse {
    fn deref_mut(&mut self) -> &mut Optimizer {
        // SAFETY: as in deref; the busy flag makes this the only borrow.
        unsafe { &mut (*(self.address as *mut AlrOptimizer)).inner }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(entry) = live().get_mut(&self.id) {
            entry.busy = false;
            // Dropped while unwinding from a panic inside the call: the step may be half done.
            entry.poisoned |= std::thread::panicking();
        }
    }
}

/// The optimizer behind a handle, marked busy until the returned guard is dropped.
pub(crate) fn get(handle: *mut AlrOptimizer) -> Result<InUse, Error> {
    let mut map = live();
    let entry = map.get(&(handle as usize)).copied();
    if let Some(err) = unusable(handle, entry) {
        return Err(err);
    }
    let entry = map.get_mut(&(handle as usize)).expect("checked above");
    entry.busy = true;
    Ok(InUse { id: handle as usize, address: entry.address })
}

/// Removes a handle from the live map and frees its optimizer; null is a no-op. A poisoned
/// optimizer can be destroyed; a busy one (destroy from inside its own callback) cannot.
pub(crate) fn destroy(handle: *mut AlrOptimizer) -> Result<(), Error> {
    if handle.is_null() {
        return Ok(());
    }
    let mut map = live();
    match map.get(&(handle as usize)).copied() {
        Some(e) if !e.busy => {
            map.remove(&(handle as usize));
            drop(map);
            // SAFETY: it was live and not in use, so it came from Box::into_raw and nobody else
            // frees or borrows it.
            drop(unsafe { Box::from_raw(e.address as *mut AlrOptimizer) });
            Ok(())
        }
        entry => Err(unusable(handle, entry).expect("missing or busy")),
    }
}

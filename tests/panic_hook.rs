//! The library's panic hook (src/ffi/mod.rs): a panic inside an `alr_*` entry point is captured
//! for the last-error text and printed nowhere; a panic anywhere else still reaches the hook the
//! host installed before. Its own test binary: panic hooks are per process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn entry_point_panics_are_captured_and_other_panics_reach_the_previous_hook() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    std::panic::set_hook(Box::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    }));

    // The first entry point installs the library's hook over ours, chaining to it.
    let rc = autolr::ffi::alr_selftest_panic();
    assert_eq!(rc, autolr::AlrStatus::AlrPanic);
    let msg = unsafe { std::ffi::CStr::from_ptr(autolr::ffi::alr_last_error()) }.to_str().unwrap().to_string();
    assert!(msg.contains("alr_selftest_panic was called") && msg.contains("src/ffi/api.rs"), "{msg}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the host's hook saw a panic the library caught");

    // A panic outside the library, on this thread and on another: the host's hook sees both.
    let _ = std::panic::catch_unwind(|| panic!("the host's own panic"));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let _ = std::thread::spawn(|| panic!("a host thread's panic")).join();
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    // And the library still captures the next one, with an empty last error after a success.
    assert_eq!(autolr::ffi::alr_selftest_panic(), autolr::AlrStatus::AlrPanic);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(autolr::ffi::alr_abi_version(), autolr::ALR_ABI_VERSION);
}

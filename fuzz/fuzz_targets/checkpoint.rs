//! alr_load on mutated checkpoints. Input: one configuration byte (algorithm, tensor layout,
//! GI base), then the checkpoint. The mutator re-seals the FNV-1a checksum after libFuzzer's
//! mutation (7 times in 8), so mutations get past the checksum to the parser's own checks:
//! field lengths, names, tensor sizes, option rows and ranges, algorithm state.
//!
//! Checked: no call returns ALR_PANIC or crashes; a refused load leaves the state bit-identical;
//! a state that loads saves again and loads again to the same bytes; a step after it returns a
//! status (no panic, no crash). With AUTOLR_FUZZ_STRICT=1 it also requires the parameters to stay
//! finite after a successful step: a stricter property than the loader promises (a state of
//! extreme but finite values is one training could produce, and its step may overflow), so it
//! is off by default and a finding there is a question, not necessarily a bug.
#![no_main]

use autolr::ffi::*;
use autolr::AlrStatus;
use autolr_fuzz::*;
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use std::ffi::CString;

pub const LAYOUTS: [(&[usize], Option<&[u32]>); 2] = [(&[3, 5], None), (&[4, 2, 3], Some(&[0, 0, 1]))];
pub const GI_BASES: [&str; 4] = ["sgd", "adam", "auto-sgd", "vsgd-l"];

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if seed % 8 != 0 && size > 1 {
        reseal(&mut data[1..size]);
    }
    size
});

fuzz_target!(|data: &[u8]| {
    let Some((&config, checkpoint)) = data.split_first() else { return };
    let algorithm = ALGORITHMS[config as usize % ALGORITHMS.len()];
    let (lens, groups) = LAYOUTS[(config as usize / ALGORITHMS.len()) % LAYOUTS.len()];
    let Some(opt) = create(algorithm, lens, groups) else { panic!("alr_create {algorithm} failed: {}", last_error()) };
    if algorithm == "gi" {
        let base = CString::new(GI_BASES[(config as usize / (2 * ALGORITHMS.len())) % GI_BASES.len()]).unwrap();
        let rc = no_panic(alr_set_option_str(opt, c"base".as_ptr(), base.as_ptr()), "alr_set_option_str");
        assert_eq!(rc, AlrStatus::AlrOk, "{}", last_error());
    }
    let before = save(opt).expect("a fresh optimizer saves");
    let rc = no_panic(alr_load(opt, checkpoint.as_ptr(), checkpoint.len()), "alr_load");
    if rc != AlrStatus::AlrOk {
        assert!(save(opt).as_ref() == Some(&before), "a refused alr_load ({rc:?}: {}) changed the state", last_error());
        destroy(opt);
        return;
    }
    // Loaded: it must save, and what it saves must load again to the same state.
    let saved = save(opt).expect("a loaded state saves");
    let rc = no_panic(alr_load(opt, saved.as_ptr(), saved.len()), "alr_load (its own save)");
    assert_eq!(rc, AlrStatus::AlrOk, "a state that loaded does not load again after a save: {}", last_error());
    assert!(save(opt).as_ref() == Some(&saved), "save → load → save is not the identity");
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| (0..n).map(|i| 0.25 * i as f32 - 0.5).collect()).collect();
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| (0..n).map(|i| 0.1 * i as f32 + 0.05).collect()).collect();
    let strict = std::env::var_os("AUTOLR_FUZZ_STRICT").is_some();
    let rc = plain_step(opt, algorithm, &mut params, &grads);
    if rc == AlrStatus::AlrOk && strict {
        assert!(params.iter().flatten().all(|x| x.is_finite()), "{algorithm}: a step after a successful load made a parameter non-finite");
    }
    destroy(opt);
});

//! Option parsing: sequences of alr_set_option / alr_set_group_option / alr_set_option_str /
//! alr_get_option with names from the spec's list, arbitrary byte strings (not UTF-8, empty,
//! long) and any f64 (NaN, ±Inf, subnormals, out of range), interleaved with steps, on every
//! algorithm. Checked: no ALR_PANIC, no crash; a refused set changes nothing (saved state
//! bit-identical); a set that succeeded reads back the value it set.
#![no_main]

use autolr::ffi::*;
use autolr::AlrStatus;
use autolr_fuzz::*;
use libfuzzer_sys::fuzz_target;
use std::ffi::CString;

const NAMES: &[&str] = &[
    "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "weight_decay", "alpha", "nu", "gamma_max", "slow_start_c", "n0", "f_star", "R",
    "up", "down", "hi", "lo", "adapt_every", "window", "c", "alpha_min", "per_group", "check_finite", "base", "", "LR", "lr ",
];

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let algorithm = ALGORITHMS[b.u8() as usize % ALGORITHMS.len()];
    let lens = [3usize, 2];
    let Some(opt) = create(algorithm, &lens, None) else { panic!("alr_create {algorithm}: {}", last_error()) };
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.5; n]).collect();
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.25; n]).collect();
    for _ in 0..32 {
        if b.is_empty() {
            break;
        }
        let op = b.u8();
        let name = if b.u8() < 224 {
            CString::new(NAMES[b.u8() as usize % NAMES.len()]).unwrap()
        } else {
            let n = b.u8() as usize % 40;
            CString::new(b.take(n).iter().map(|&c| if c == 0 { b'x' } else { c }).collect::<Vec<u8>>()).unwrap()
        };
        let group = match b.u8() {
            0..=199 => 0,
            200..=249 => 1,
            _ => b.u64() as usize,
        };
        let value = b.f64();
        let before = snapshot(opt, &params);
        match op % 6 {
            0 | 1 => {
                let rc = if op % 6 == 0 {
                    no_panic(alr_set_option(opt, name.as_ptr(), value), "alr_set_option")
                } else {
                    no_panic(alr_set_group_option(opt, group, name.as_ptr(), value), "alr_set_group_option")
                };
                if rc == AlrStatus::AlrOk {
                    let mut back = f64::NAN;
                    let g = if op % 6 == 0 { 0 } else { group };
                    let rc = no_panic(alr_get_option(opt, g, name.as_ptr(), &mut back), "alr_get_option");
                    assert_eq!(rc, AlrStatus::AlrOk, "an option that was set cannot be read: {}", last_error());
                    // Flags may normalise (any non-zero → 1); numbers must read back as set.
                    assert!(back.to_bits() == value.to_bits() || back == value || (value != 0.0 && back == 1.0), "{name:?} set to {value}, reads {back}");
                } else {
                    assert_unchanged(opt, &params, &before, "a refused alr_set_option");
                }
            }
            2 => {
                let v = if b.u8() < 200 {
                    CString::new(ALGORITHMS[b.u8() as usize % ALGORITHMS.len()]).unwrap()
                } else {
                    let n = b.u8() as usize % 16;
                    CString::new(b.take(n).iter().map(|&c| if c == 0 { b'y' } else { c }).collect::<Vec<u8>>()).unwrap()
                };
                let rc = no_panic(alr_set_option_str(opt, name.as_ptr(), v.as_ptr()), "alr_set_option_str");
                if rc != AlrStatus::AlrOk {
                    assert_unchanged(opt, &params, &before, "a refused alr_set_option_str");
                }
            }
            3 => {
                let mut out = 0.0;
                no_panic(alr_get_option(opt, group, name.as_ptr(), &mut out), "alr_get_option");
                assert_unchanged(opt, &params, &before, "alr_get_option");
            }
            4 => {
                let mut out = 0.0;
                no_panic(alr_get_lr(opt, group, &mut out), "alr_get_lr");
                no_panic(alr_get_momentum(opt, group, &mut out), "alr_get_momentum");
                let mut count = 0usize;
                if no_panic(alr_telemetry_count(opt, group, &mut count), "alr_telemetry_count") == AlrStatus::AlrOk {
                    for i in 0..count + 1 {
                        let mut name = std::ptr::null();
                        no_panic(alr_telemetry_entry(opt, group, i, &mut name, &mut out), "alr_telemetry_entry");
                    }
                }
            }
            _ => {
                let rc = plain_step(opt, algorithm, &mut params, &grads);
                if rc != AlrStatus::AlrOk && rc != AlrStatus::AlrCallbackFailed {
                    assert_unchanged(opt, &params, &before, "a refused alr_step");
                }
                if rc == AlrStatus::AlrWrongState && algorithm == "gi" {
                    no_panic(alr_report_loss(opt, value), "alr_report_loss");
                }
            }
        }
    }
    destroy(opt);
});

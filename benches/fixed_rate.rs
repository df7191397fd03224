//! Fixed-rate optimizers against the memory-bandwidth floor (docs/algorithms.md §0).
//!
//! For p = 1e6 and 1e7 float32 parameters, in 1 and in 100 tensors, this measures the step time
//! (median of several repetitions after warm-up) of every fixed-rate optimizer through the Rust
//! API, with the NaN check (`check_finite`) on (the default) and off, and reports
//!
//! - floor bytes: what §0 forces a step to move: read g and θ, write θ (sgd: 12 B/element);
//!   momentum, adagrad and rmsprop add one state vector read and written (20 B); adam and adamw
//!   two (28 B). The NaN check reads g once more, which the floor deliberately does not count:
//!   it is the price of the check, visible as the difference between the two columns;
//! - bandwidth = floor bytes / median step time;
//! - memcpy bandwidth, measured in the same run on the same byte count: `copy_from_slice` of a
//!   buffer of B/2 bytes reads B/2 and writes B/2, so it moves B = floor bytes; its bandwidth is
//!   B / median copy time;
//! - ratio = bandwidth / memcpy bandwidth (1.0 = as fast as copying the bytes the step must move).
//!   It can exceed 100%: memcpy writes to lines it has not read, and the CPU reads each such line
//!   before writing it (write-allocate), so a copy really moves 1.5 × B; the optimizers write only
//!   lines they have just read. The in-place column (`a ← a − s·b` over the same bytes) has the
//!   optimizers' access pattern and is the tighter reference.
//!
//! The library is single-threaded, so every number is one core. Run: `cargo bench --bench fixed_rate`
//! (about a minute). `AUTOLR_BENCH_QUICK=1` runs a smaller, faster set (for smoke tests).
//! `AUTOLR_BENCH_CLOCK=thread` (Linux) times the calling thread's CPU time instead of the wall
//! clock: on cores shared with other work the wall clock also counts the time the thread waited
//! for a core; the thread's CPU time is the step's own (the memory contention remains in it).

use autolr::{Callbacks, Optimizer, StepInputs};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// (name, floor bytes per element)
const ALGORITHMS: &[(&str, usize)] = &[("sgd", 12), ("momentum", 20), ("adam", 28), ("adamw", 28), ("adagrad", 20), ("rmsprop", 20)];

/// A point in time on the clock `AUTOLR_BENCH_CLOCK` names: the wall clock, or (`thread`, Linux)
/// this thread's CPU time.
enum Stamp {
    Wall(Instant),
    #[cfg(target_os = "linux")]
    Thread(Duration),
}

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, out: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write to; this clock exists on every Linux.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Stamp {
    fn now() -> Stamp {
        #[cfg(target_os = "linux")]
        if thread_clock() {
            return Stamp::Thread(thread_cpu_time());
        }
        Stamp::Wall(Instant::now())
    }

    fn elapsed(&self) -> Duration {
        match self {
            Stamp::Wall(t) => t.elapsed(),
            #[cfg(target_os = "linux")]
            Stamp::Thread(t) => thread_cpu_time() - *t,
        }
    }
}

fn thread_clock() -> bool {
    std::env::var("AUTOLR_BENCH_CLOCK").is_ok_and(|v| v == "thread")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Deterministic values in [-1, 1) (no NaN, no denormals).
fn fill(buf: &mut [f32], seed: u64) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for x in buf {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *x = ((s >> 40) as f32) / ((1u64 << 23) as f32) - 1.0;
    }
}

/// Splits `p` elements into `n` tensors of (almost) equal size.
fn lens(p: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| p / n + usize::from(i < p % n)).collect()
}

fn split<'a>(mut buf: &'a mut [f32], lens: &[usize]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(lens.len());
    for &n in lens {
        let (head, tail) = buf.split_at_mut(n);
        out.push(head);
        buf = tail;
    }
    out
}

/// Median time of one step (after `warm` untimed steps).
fn time_steps(opt: &mut Optimizer, params: &mut [&mut [f32]], grads: &[&[f32]], warm: usize, reps: usize) -> Duration {
    let inputs = StepInputs::new(grads.to_vec());
    let mut callbacks = Callbacks::default();
    for _ in 0..warm {
        opt.step(params, &inputs, &mut callbacks).expect("step");
    }
    let times = (0..reps)
        .map(|_| {
            let t = Stamp::now();
            opt.step(params, &inputs, &mut callbacks).expect("step");
            black_box(&params[0][0]);
            t.elapsed()
        })
        .collect();
    median(times)
}

/// Median time of copying `bytes / 2` bytes (moves `bytes` bytes: half read, half written).
fn time_memcpy(bytes: usize, warm: usize, reps: usize) -> Duration {
    let n = bytes / 2 / std::mem::size_of::<f32>();
    let mut src = vec![0f32; n];
    fill(&mut src, 7);
    let mut dst = vec![1f32; n];
    for _ in 0..warm {
        dst.copy_from_slice(black_box(&src));
    }
    let times = (0..reps)
        .map(|_| {
            let t = Stamp::now();
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
            t.elapsed()
        })
        .collect();
    median(times)
}

/// Median time of `a ← a − s·b` over `bytes / 12` elements: reads a and b, writes a, so it moves
/// `bytes` bytes with every write landing on a line just read (no write-allocate traffic), the
/// same access pattern as the in-place optimizer updates. A second, tighter reference.
fn time_inplace(bytes: usize, warm: usize, reps: usize) -> Duration {
    let n = bytes / 12;
    let mut a = vec![0f32; n];
    let mut b = vec![0f32; n];
    fill(&mut a, 3);
    fill(&mut b, 4);
    let s = black_box(1e-6f32);
    let mut run = || {
        for (x, y) in a.iter_mut().zip(&b) {
            *x -= s * y;
        }
        black_box(&mut a);
    };
    for _ in 0..warm {
        run();
    }
    let times = (0..reps)
        .map(|_| {
            let t = Stamp::now();
            run();
            t.elapsed()
        })
        .collect();
    median(times)
}

struct Row {
    name: &'static str,
    p: usize,
    tensors: usize,
    floor: usize,
    on: Duration,
    off: Duration,
    memcpy: Duration,
    inplace: Duration,
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    let quick = std::env::var_os("AUTOLR_BENCH_QUICK").is_some();
    let sizes: &[usize] = if quick { &[100_000, 1_000_000] } else { &[1_000_000, 10_000_000] };
    let started = Instant::now();
    let mut rows = Vec::new();
    for &p in sizes {
        let (warm, reps) = if p >= 10_000_000 { (3, 11) } else { (5, 31) };
        let mut grad_buf = vec![0f32; p];
        fill(&mut grad_buf, 1);
        // memcpy baselines for each floor size, measured now (same run, same machine state)
        let mut memcpy = std::collections::HashMap::new();
        let mut inplace = std::collections::HashMap::new();
        for &(_, floor) in ALGORITHMS {
            memcpy.entry(floor).or_insert_with(|| time_memcpy(floor * p, warm, reps));
            inplace.entry(floor).or_insert_with(|| time_inplace(floor * p, warm, reps));
        }
        for &tensors in &[1usize, 100] {
            let lens = lens(p, tensors);
            for &(name, floor) in ALGORITHMS {
                let mut param_buf = vec![0f32; p];
                fill(&mut param_buf, 2);
                let grads: Vec<&[f32]> = {
                    let mut out = Vec::with_capacity(tensors);
                    let mut rest = &grad_buf[..];
                    for &n in &lens {
                        let (head, tail) = rest.split_at(n);
                        out.push(head);
                        rest = tail;
                    }
                    out
                };
                let mut params = split(&mut param_buf, &lens);
                let mut opt = Optimizer::new(name, &lens, None).expect("create");
                let on = time_steps(&mut opt, &mut params, &grads, warm, reps);
                opt.set_option("check_finite", None, 0.0).expect("check_finite off");
                let off = time_steps(&mut opt, &mut params, &grads, warm, reps);
                // re-measure the copy next to the step, and keep the faster (less disturbed) copy
                let copy = time_memcpy(floor * p, 1, reps.min(11)).min(memcpy[&floor]);
                eprintln!(
                    "{name:>8} p={p:>9} tensors={tensors:>3}: {:>8.3} ms (check on) {:>8.3} ms (off), memcpy {:>8.3} ms",
                    on.as_secs_f64() * 1e3,
                    off.as_secs_f64() * 1e3,
                    copy.as_secs_f64() * 1e3
                );
                rows.push(Row { name, p, tensors, floor, on, off, memcpy: copy, inplace: inplace[&floor] });
            }
        }
    }

    println!();
    let clock = if thread_clock() { "thread CPU time" } else { "wall clock" };
    println!("Fixed-rate step vs memcpy of the floor bytes (one core; median of repetitions after warm-up; {clock}).");
    println!("GB/s = floor bytes / step time; ratio = GB/s / memcpy GB/s. in-place GB/s: a ← a − s·b moving the");
    println!("same bytes (no write-allocate traffic, the optimizers' access pattern); last column = (check off) / in-place.");
    println!();
    println!("| algorithm | p | tensors | floor B/elem | check on: ms | GB/s | ratio | check off: ms | GB/s | ratio | memcpy GB/s | in-place GB/s | off / in-place |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let bytes = r.floor * r.p;
        let copy = gbps(bytes, r.memcpy);
        let rmw = gbps(bytes, r.inplace);
        let (on, off) = (gbps(bytes, r.on), gbps(bytes, r.off));
        println!(
            "| {} | {:.0e} | {} | {} | {:.3} | {:.1} | {:.0}% | {:.3} | {:.1} | {:.0}% | {:.1} | {:.1} | {:.0}% |",
            r.name,
            r.p as f64,
            r.tensors,
            r.floor,
            r.on.as_secs_f64() * 1e3,
            on,
            100.0 * on / copy,
            r.off.as_secs_f64() * 1e3,
            off,
            100.0 * off / copy,
            copy,
            rmw,
            100.0 * off / rmw
        );
    }
    println!();
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}

//! Step time of the automatic algorithms against the fixed-rate Adam step and against a memcpy
//! of the same bytes, all measured in the same run (ratios, never absolute targets):
//! - AutoOpt with Σg² input at p = 1e7: time / adam time (target ≤ 2.0);
//! - AutoOpt with the N × len per-sample matrix (N = 32): effective bandwidth / memcpy (target ≥ 0.8);
//! - GI's own overhead over its base (its loss callback returns a constant, so the caller's
//!   extra forward pass is excluded; that pass is the model's cost, measured by the main job),
//!   at p = 1e7 and in cache (the Fashion-MNIST MLP's parameter count).
//!
//! The per-sample reduction, and AutoOpt's update pass on tensors of over 2^20 floats per worker,
//! run on `autolr::backend::cpu::threads()` workers (every core, or `AUTOLR_NUM_THREADS`); the
//! fixed-rate steps and GI's proposal pass run on one. The memcpy floor uses the same number of
//! threads as the reduction.
//!
//! Run: `cargo bench --bench adaptive` (~1 minute); `AUTOLR_NUM_THREADS=1` for one core.

use autolr::{Callbacks, Optimizer, SampleData, SampleScale, Samples, StepInputs};
use std::time::Instant;

fn median_seconds(mut run: impl FnMut(), reps: usize) -> f64 {
    run(); // warm-up: page faults, first-touch of state
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[reps / 2]
}

/// A memcpy of `bytes` bytes (bytes/2 read, bytes/2 written), split into `workers` contiguous
/// parts copied on as many threads (the library's own thread count, so the floor uses the same
/// cores as the step it is compared with).
struct Memcpy {
    src: Vec<f32>,
    dst: Vec<f32>,
    workers: usize,
}

impl Memcpy {
    fn new(bytes: usize, workers: usize) -> Self {
        let n = bytes / 8; // f32 elements in each of source and destination
        Memcpy { src: vec![1.0f32; n], dst: vec![0.0f32; n], workers }
    }

    fn run(&mut self) {
        let part = self.src.len().div_ceil(self.workers);
        std::thread::scope(|scope| {
            for (d, s) in self.dst.chunks_mut(part).zip(self.src.chunks(part)) {
                scope.spawn(move || d.copy_from_slice(std::hint::black_box(s)));
            }
        })
    }
}

/// Median over `reps` of (memcpy time / step time), each pair timed back to back: a shared
/// machine's bandwidth drifts by tens of percent within a minute, and pairing cancels that
/// drift where separate medians would compare different moments. Also returns the median
/// times of each.
fn paired_ratio(copy: &mut Memcpy, mut step: impl FnMut(), reps: usize) -> (f64, f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    copy.run();
    step(); // warm-up: page faults, first-touch of state
    let pairs: Vec<(f64, f64)> = (0..reps).map(|_| (time(&mut || copy.run()), time(&mut step))).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    (median(pairs.iter().map(|(c, s)| c / s).collect()), median(pairs.iter().map(|p| p.0).collect()), median(pairs.iter().map(|p| p.1).collect()))
}

fn filled(p: usize, seed: u32) -> Vec<f32> {
    (0..p).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0) - 0.5).collect()
}

struct Setup {
    params: Vec<f32>,
    grad: Vec<f32>,
    sum_sq: Vec<f32>,
}

impl Setup {
    /// One tensor of `p` parameters with its gradient and a Σg² consistent with N = 32 samples.
    fn new(p: usize) -> Self {
        Setup { params: filled(p, 1), grad: filled(p, 2), sum_sq: filled(p, 3).iter().map(|x| x * x * 40.0).collect() }
    }
}

/// One step of `opt` on `setup`'s tensors.
fn step_once(opt: &mut Optimizer, setup: &mut Setup, per_sample: Option<&[f32]>, n: usize, gi: bool) {
    let Setup { params, grad, sum_sq } = setup;
    let mut inputs = StepInputs::new(vec![&grad[..]]);
    let wants_samples = opt.algorithm().starts_with("auto") || opt.base().starts_with("auto");
    if wants_samples {
        let data = match per_sample {
            Some(rows) => SampleData::PerSample(vec![rows.into()]),
            None => SampleData::SumSq(vec![(&sum_sq[..]).into()]),
        };
        inputs.samples = Some(Samples { data, scale: SampleScale::Sample, batch_size: n });
    }
    let mut callbacks = Callbacks::default();
    if gi {
        inputs.loss = Some(1.0);
        callbacks.loss_fn = Some(Box::new(|_: &[&[f32]]| Ok(0.999)));
    }
    opt.step(&mut [&mut params[..]], &inputs, &mut callbacks).expect("step");
}

/// Median step time of a fresh `name` optimizer (over `base`, for a wrapper) on `setup`.
fn median_step(setup: &mut Setup, name: &str, base: Option<&str>, n: usize, gi: bool, reps: usize) -> f64 {
    let mut opt = Optimizer::new(name, &[setup.params.len()], None).expect("create");
    if let Some(base) = base {
        opt.set_option_str("base", base).expect("base");
    }
    median_seconds(|| step_once(&mut opt, setup, None, n, gi), reps)
}

/// Prints GI's step time over each base beside the base's own step, on `setup`'s one tensor
/// (ms at 10^7 floats and more, else µs).
fn gi_overhead(setup: &mut Setup, bases: &[&str], reps: usize) {
    let (unit, scale) = if setup.params.len() >= 10_000_000 { ("ms", 1e3) } else { ("µs", 1e6) };
    println!("| base | base step ({unit}) | gi step ({unit}) | gi / base |\n|---|---|---|---|");
    for &base in bases {
        let n = if base.starts_with("auto") { 32 } else { 0 };
        let alone = median_step(setup, base, None, n, false, reps);
        let wrapped = median_step(setup, "gi", Some(base), n, true, reps);
        println!("| {base} | {:.2} | {:.2} | {:.2} |", alone * scale, wrapped * scale, wrapped / alone);
    }
}

fn main() {
    let p: usize = 10_000_000;
    let reps = 15;
    let n_matrix = 32;
    let mut setup = Setup::new(p);

    let workers = autolr::backend::cpu::threads();
    println!("p = {p} float32 parameters in one tensor, median of {reps} steps; reductions on {workers} thread(s)\n");
    // The first optimizer of the process pays for cold caches and frequency ramp-up: discard it.
    median_step(&mut setup, "adam", None, 0, false, reps);
    let adam = median_step(&mut setup, "adam", None, 0, false, reps);
    println!("| step | time (ms) | ratio to adam |\n|---|---|---|");
    println!("| adam | {:.2} | 1.00 |", adam * 1e3);
    for name in ["auto-sgd", "auto-adam", "auto-adagrad"] {
        let t = median_step(&mut setup, name, None, 32, false, reps);
        println!("| {name} (Σg² input, N = 32) | {:.2} | {:.2} |", t * 1e3, t / adam);
    }

    println!("\nGI overhead over its base (loss callback excluded):\n");
    gi_overhead(&mut setup, &["sgd", "adam", "auto-sgd", "auto-adam"], reps);
    // In cache: the Fashion-MNIST MLP's (784-120-10) parameter count, where the passes'
    // arithmetic rather than memory sets the time.
    let p_cached = 784 * 120 + 120 + 120 * 10 + 10;
    let mut cached = Setup::new(p_cached);
    println!("\nThe same in cache (p = {p_cached}, median of 301 steps, µs):\n");
    gi_overhead(&mut cached, &["sgd", "momentum", "adam", "adagrad", "rmsprop", "auto-sgd", "auto-adam", "prodigy", "dog", "tlr"], 301);

    // The per-sample matrix: read once (N·4 bytes per element) plus g, θ, d (and v) read and θ, d (v) written.
    let p_matrix = 2_000_000;
    let rows = filled(p_matrix * n_matrix, 4);
    let mut setup_m = Setup { params: filled(p_matrix, 1), grad: filled(p_matrix, 2), sum_sq: Vec::new() };
    println!("\nAutoOpt with the N × len per-sample matrix (N = {n_matrix}, p = {p_matrix}):\n");
    println!("| step | floor bytes/elem | time (ms) | GB/s | memcpy GB/s | ratio (median of paired runs) |\n|---|---|---|---|---|---|");
    // read: matrix, g, θ, state; write: θ, state
    let bytes_of = |state_floats: usize| (4 * n_matrix + 4 * (2 + state_floats) + 4 * (1 + state_floats)) * p_matrix;
    for (name, state_floats) in [("auto-sgd", 1usize), ("auto-adam", 2), ("auto-adagrad", 2)] {
        let mut opt = Optimizer::new(name, &[p_matrix], None).expect("create");
        let bytes = bytes_of(state_floats);
        let mut copy = Memcpy::new(bytes, workers);
        let (ratio, copy_s, step_s) = paired_ratio(&mut copy, || step_once(&mut opt, &mut setup_m, Some(&rows), n_matrix, false), reps);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {ratio:.2} |",
            bytes / p_matrix,
            step_s * 1e3,
            bytes as f64 / step_s / 1e9,
            bytes as f64 / copy_s / 1e9,
        );
    }
}

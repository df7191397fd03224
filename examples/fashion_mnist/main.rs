//! The main job: does an automatic optimizer beat a tuned baseline on real data?
//!
//! Trains logistic regression (784→10) and an MLP (784-120-10, tanh) on Fashion-MNIST with
//! every automatic algorithm of the library at its documented defaults (docs/algorithms.md; nothing
//! tuned per method), and with SGD and Adam over a learning-rate grid 1e-4 … 1 in half decades,
//! "tuned" meaning the grid point with the lowest final training loss, per seed. Writes
//! results/<model>.md (the table), results/<model>_loss.csv (per-epoch curves),
//! results/<model>_schedule.csv (the learning rate and momentum each method chose) and, with
//! the sensitivity study, results/sensitivity.md. scripts/plot_results.py draws the CSVs.
//!
//! Sizes: by default a short version (1 seed, 2 epochs); `--full` runs the full protocol
//! (3 seeds, 8 epochs) plus the sensitivity study; `--sweep` runs the sensitivity study alone
//! (at the short size unless `--full` is given too). `--help` lists the overrides.

// Shared with the tests and other drivers: not every item is used by this one.
#[allow(dead_code)]
mod data;
#[allow(dead_code)]
mod model;
mod report;
mod runner;

use std::path::{Path, PathBuf};
use std::time::Instant;

use autolr::Optimizer;
use ndarray::s;

use report::{Index, ModelReport, SweepEntry};
use runner::{format_lr, Job, MethodSpec, ModelKind, Protocol};

const USAGE: &str = "\
usage: fashion_mnist [--full] [--sweep] [--seeds N] [--epochs N] [--subset N] [--threads N]
                     [--batch N] [--out DIR] [--data DIR]
  (default)   short version: 1 seed, 2 epochs, both models, whole training set; main tables
  --full      full protocol: 3 seeds, 8 epochs, both models; main tables + sensitivity study
  --sweep     the sensitivity study only (short size unless --full is also given)
  --seeds N   number of seeds (0..N)          --epochs N   epochs per run
  --subset N  train on the first N training images only
  --threads N runs in parallel (default: available cores)
  --batch N   minibatch size (default 128)
  --out DIR   where results go (default results)
  --data DIR  Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)";

/// Families of the tuned baselines.
const FAMILIES: [&str; 2] = ["sgd", "adam"];

#[derive(Debug)]
struct Args {
    full: bool,
    sweep_only: bool,
    seeds: usize,
    epochs: usize,
    subset: Option<usize>,
    threads: usize,
    batch: usize,
    out: PathBuf,
    data: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let full = raw.iter().any(|a| a == "--full");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = Args {
        full,
        sweep_only: false,
        seeds: if full { 3 } else { 1 },
        epochs: if full { 8 } else { 2 },
        subset: None,
        threads,
        batch: 128,
        out: PathBuf::from("results"),
        data: PathBuf::from(data::DEBIAN_DIR),
    };
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}")).cloned();
        let number = |name: &str, v: String| v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| format!("{name}: '{v}' is not a positive integer"));
        match arg.as_str() {
            "--full" => {}
            "--sweep" => args.sweep_only = true,
            "--seeds" => args.seeds = number(arg, value(arg)?)?,
            "--epochs" => args.epochs = number(arg, value(arg)?)?,
            "--subset" => args.subset = Some(number(arg, value(arg)?)?),
            "--threads" => args.threads = number(arg, value(arg)?)?,
            "--batch" => args.batch = number(arg, value(arg)?)?.max(2),
            "--out" => args.out = PathBuf::from(value(arg)?),
            "--data" => args.data = PathBuf::from(value(arg)?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(args)
}

/// The automatic methods of the main table, at their defaults; only the structural options the
/// benchmark's definition names are set (TLR's per_group and window, GI's base).
fn automatic_methods(window: usize) -> Vec<MethodSpec> {
    // The recommended default first (README "The default"), under the name users write.
    let mut methods = vec![MethodSpec::new("auto").labelled(format!("auto = {}", autolr::registry::AUTO.label()))];
    methods.extend(["auto-sgd", "auto-adam", "auto-adagrad", "vsgd-l", "vsgd-g", "vsgd-b"].iter().map(|a| MethodSpec::new(a)));
    for base in ["sgd", "adam", "auto-sgd", "auto-adam", "auto-adagrad", "vsgd-l", "vsgd-g", "vsgd-b", "tlr"] {
        methods.push(MethodSpec::gi(base));
    }
    for (per_group, scope) in [(false, "global"), (true, "per-group")] {
        for w in [1, window] {
            let mut spec = MethodSpec::new("tlr");
            if per_group {
                spec = spec.with_option("per_group", 1.0);
            }
            methods.push(spec.with_option("window", w as f64).labelled(format!("tlr {scope} w={w}")));
        }
    }
    methods
}

/// SGD and Adam at 1e-4, 10^-3.5, …, 1 (nine points).
fn baseline_grid() -> Vec<MethodSpec> {
    FAMILIES.iter().flat_map(|f| (0..9).map(move |k| MethodSpec::grid_point(f, 10f64.powf(-4.0 + 0.5 * k as f64)))).collect()
}

/// The sensitivity study (issue 9 item 6). A setting equal to the library's current default is
/// the plain method (so its runs are shared with the main table).
fn sweep_entries(available: &[&str], skipped: &mut Vec<String>) -> Vec<SweepEntry> {
    let mut entries = Vec::new();
    let mut add = |method: &str, option: &str, setting: String, value_for: &dyn Fn(ModelKind) -> f64| {
        if !available.contains(&method) {
            skipped.push(format!("{method} ({setting}): not in autolr::registry::ALGORITHMS"));
            return;
        }
        let default = Optimizer::new(method, &[2, 2], None).and_then(|o| o.get_option(option, 0)).ok();
        let mut is_default = true;
        let specs = ModelKind::ALL
            .iter()
            .map(|&m| {
                let value = value_for(m);
                // Bitwise, so an unset default (NaN, e.g. vSGD's C = d/10) matches an unset value.
                let spec = if default.map(f64::to_bits) == Some(value.to_bits()) {
                    MethodSpec::new(method)
                } else {
                    is_default = false;
                    MethodSpec::new(method).with_option(option, value).labelled(format!("{method} {option}={value}"))
                };
                (m, spec)
            })
            .collect();
        entries.push(SweepEntry { method: method.to_string(), setting, is_default, specs });
    };
    for method in ["auto-sgd", "auto-adam", "auto-adagrad"] {
        for nu in [0.9, 0.99, 0.99999] {
            add(method, "nu", format!("ν = {nu}"), &|_| nu);
        }
    }
    for eps in [1e-8, 1e-3] {
        add("auto-adam", "eps", format!("ε = {}", format_lr(eps)), &|_| eps);
    }
    for method in ["vsgd-l", "vsgd-g", "vsgd-b"] {
        add(method, "slow_start_c", "C = 2".to_string(), &|_| 2.0);
        let d: Vec<String> = ModelKind::ALL.iter().map(|m| format!("{}: {}", m.slug(), m.num_params() as f64 / 10.0)).collect();
        // NaN is the library's "unset": C = d/10 with d the optimizer's parameter count.
        add(method, "slow_start_c", format!("C = d/10 ({})", d.join(", ")), &|_| f64::NAN);
    }
    entries
}

fn load_data(dir: &Path) -> (data::Dataset, String) {
    match data::load(dir) {
        Ok(d) => {
            let line = format!("Data: Fashion-MNIST from {} ({}).", dir.display(), d.summary());
            (d, line)
        }
        Err(why) => {
            let d = data::fallback(0);
            let line = format!(
                "Data: FALLBACK — Fashion-MNIST not found ({why}); running on the built-in synthetic stand-in data::fallback \
                 ({} train / {} test), NOT real data. Install Debian's dataset-fashion-mnist for real results.",
                d.train_y.len(),
                d.test_y.len()
            );
            (d, line)
        }
    }
}

fn write(path: &Path, text: &str) {
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(if message == USAGE { 0 } else { 2 });
        }
    };
    let started = Instant::now();
    println!(
        "Default: algorithm \"auto\" = {} (torch: autolr.torch.Auto(model.parameters())), the benchmark suite's pick \
         (bash scripts/suite.sh, docs/results/suite.md); its row is the first of each table below.",
        autolr::registry::AUTO.label()
    );
    let (mut dataset, data_line) = load_data(&args.data);
    println!("{data_line}");
    let full_train = dataset.train_y.len();
    if let Some(n) = args.subset.filter(|&n| n < full_train) {
        dataset.train_x = dataset.train_x.slice(s![..n, ..]).to_owned();
        dataset.train_y.truncate(n);
    }
    let n_train = dataset.train_y.len();
    let protocol = Protocol { epochs: args.epochs, batch_size: args.batch, log_every: 20 };
    let steps_per_epoch = protocol.steps_per_epoch(n_train);
    let window = ((steps_per_epoch as f64) / 3.0).round().max(1.0) as usize;
    let seeds: Vec<u64> = (0..args.seeds as u64).collect();
    let size = if args.full { "full" } else { "short (run with --full for the full protocol)" };
    let train_set = if n_train < full_train {
        format!("SUBSET: first {n_train} of {full_train} training images")
    } else {
        format!("the whole training set ({n_train} images)")
    };
    let protocol_line = format!(
        "Protocol: {size}: {} seed(s), {} epoch(s), batch {}, {train_set}, {steps_per_epoch} steps/epoch; \
         one group per tensor; docs/algorithms.md defaults, nothing tuned per method; TLR window w={window} = 1/3 epoch.",
        seeds.len(),
        protocol.epochs,
        protocol.batch_size
    );
    println!("{protocol_line}");

    let names = autolr::registry::names_on(autolr::backend::DeviceKind::Cpu);
    let available: &[&str] = &names;
    let run_main = !args.sweep_only;
    let run_sweep = args.sweep_only || args.full;
    let mut skipped = Vec::new();
    let mut methods = Vec::new();
    if run_main {
        for spec in automatic_methods(window) {
            let missing = spec.missing(available);
            if missing.is_empty() {
                methods.push(spec);
            } else {
                skipped.push(format!("{} ({} not in the library's names)", spec.label, missing.join(", ")));
            }
        }
    }
    let grid = if run_main { baseline_grid() } else { Vec::new() };
    let mut sweep_skipped = Vec::new();
    let sweep = if run_sweep { sweep_entries(available, &mut sweep_skipped) } else { Vec::new() };
    for note in skipped.iter().chain(&sweep_skipped) {
        println!("Skipped: {note}");
    }

    // Every distinct configuration once per (model, seed); the MLP first (its runs are longer).
    let mut jobs: Vec<Job> = Vec::new();
    for &model in ModelKind::ALL.iter().rev() {
        for &seed in &seeds {
            let sweep_specs = sweep.iter().flat_map(|e| e.specs.iter().filter(|(m, _)| *m == model).map(|(_, s)| s));
            for spec in methods.iter().chain(&grid).chain(sweep_specs) {
                if !jobs.iter().any(|j| j.model == model && j.seed == seed && j.spec.key() == spec.key()) {
                    jobs.push(Job { model, seed, spec: spec.clone() });
                }
            }
        }
    }
    println!("{} runs on {} thread(s); available algorithms: {}", jobs.len(), args.threads, available.join(", "));

    let results = runner::run_all(&dataset, &jobs, &protocol, args.threads);
    let mut index = Index::default();
    let mut trouble = Vec::new();
    for r in results {
        match &r.outcome {
            runner::Outcome::Completed => {}
            runner::Outcome::Diverged { epoch, step } => {
                trouble.push(format!("{} seed {} {}: diverged in epoch {epoch} (step {step})", r.model.slug(), r.seed, r.spec.label))
            }
            runner::Outcome::Failed(why) => trouble.push(format!("{} seed {} {}: FAILED: {why}", r.model.slug(), r.seed, r.spec.label)),
        }
        index.insert(r);
    }

    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("cannot create {}: {e}", args.out.display());
    }
    let threads_line = format!("Runs: {} in parallel on this machine ({} thread(s)); wall times are per run.", args.threads.min(jobs.len()), args.threads);
    let mut preamble = vec![data_line.clone(), protocol_line.clone(), threads_line];
    if !skipped.is_empty() {
        preamble.push(format!("Missing algorithms (skipped): {}", skipped.join("; ")));
    }
    if run_main {
        for model in ModelKind::ALL {
            let md = report::model_markdown(
                &index,
                &ModelReport { model, seeds: &seeds, methods: &methods, grid: &grid, families: &FAMILIES, preamble: &preamble, skipped: &skipped },
            );
            let stem = model.slug();
            write(&args.out.join(format!("{stem}.md")), &md);
            write(&args.out.join(format!("{stem}_loss.csv")), &report::loss_csv(&index, model, &seeds, &methods, &grid, &FAMILIES));
            write(&args.out.join(format!("{stem}_schedule.csv")), &report::schedule_csv(&index, model, &seeds, &methods));
            println!("\n{md}");
        }
    }
    if run_sweep {
        let mut lines = vec![data_line, protocol_line];
        if !sweep_skipped.is_empty() {
            lines.push(format!("Not run: {}", sweep_skipped.join("; ")));
        }
        let md = report::sensitivity_markdown(&index, &sweep, &ModelKind::ALL, &seeds, &lines);
        write(&args.out.join("sensitivity.md"), &md);
        println!("\n{md}");
    }
    if trouble.is_empty() {
        println!("No run diverged or failed.");
    } else {
        println!("Diverged or failed runs ({}):", trouble.len());
        for t in &trouble {
            println!("  {t}");
        }
    }
    println!("Results in {}/ — total wall time {:.1}s.", args.out.display(), started.elapsed().as_secs_f64());
}

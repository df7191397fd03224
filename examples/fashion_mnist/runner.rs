//! One training run per (model, seed, method), exactly as a user of the library would write
//! it: build an `autolr::Optimizer` by name, set only the options the method's definition
//! names, and hand every step the inputs its algorithm uses (per-sample Σg², the GGN
//! diagonal, the loss and a loss callback on the same minibatch). Runs are independent and
//! deterministic, so a pool of threads runs them in any order with the same results.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use autolr::{AlrStatus, Callbacks, Optimizer, SampleData, SampleScale, Samples, StepInputs, Tensor};

use crate::data::Dataset;
use crate::model::{Model, Want};

/// The two benchmark models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelKind {
    LogReg,
    Mlp,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::LogReg, ModelKind::Mlp];

    /// File-name stem: results/<slug>.md, results/<slug>_loss.csv, ...
    pub fn slug(self) -> &'static str {
        match self {
            ModelKind::LogReg => "logreg",
            ModelKind::Mlp => "mlp",
        }
    }

    /// Same seed, same initial parameters, for every method.
    pub fn build(self, seed: u64) -> Model {
        match self {
            ModelKind::LogReg => Model::logistic_regression(seed),
            ModelKind::Mlp => Model::mlp(seed),
        }
    }

    pub fn title(self) -> String {
        self.build(0).name()
    }

    pub fn num_params(self) -> usize {
        self.build(0).num_params()
    }
}

/// What the innermost algorithm of a method reads besides the mean gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Per-sample Σ_i g_i² with the batch size (AutoOpt, vSGD).
    pub sum_sq: bool,
    /// Diagonal curvature: the GGN diagonal (vSGD).
    pub curvature: bool,
    /// The minibatch loss and a callback for the loss at other parameters (GI).
    pub loss: bool,
}

fn own_needs(algorithm: &str) -> Needs {
    // An alias ("auto") needs what it stands for.
    let (algorithm, base, _) = autolr::registry::resolve(algorithm);
    if let Some(base) = base.filter(|_| algorithm == "gi") {
        return Needs { loss: true, ..own_needs(base) };
    }
    if algorithm.starts_with("auto-") {
        Needs { sum_sq: true, ..Needs::default() }
    } else if algorithm.starts_with("vsgd-") {
        Needs { sum_sq: true, curvature: true, ..Needs::default() }
    } else {
        Needs::default()
    }
}

/// One optimizer configuration: an algorithm name, GI's base, and the options set on it.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSpec {
    /// Shown in tables, plots and progress lines; unique within a model's method list.
    pub label: String,
    pub algorithm: String,
    pub base: Option<String>,
    /// Options set for every group, in order, before the first step.
    pub options: Vec<(String, f64)>,
    /// For baseline grid points: the family ("sgd" / "adam") and the learning rate.
    pub grid: Option<(String, f64)>,
}

impl MethodSpec {
    pub fn new(algorithm: &str) -> Self {
        MethodSpec { label: algorithm.to_string(), algorithm: algorithm.to_string(), base: None, options: Vec::new(), grid: None }
    }

    /// GI over `base`.
    pub fn gi(base: &str) -> Self {
        MethodSpec { label: format!("gi({base})"), base: Some(base.to_string()), ..Self::new("gi") }
    }

    /// A fixed-rate baseline at one learning rate of the grid.
    pub fn grid_point(family: &str, lr: f64) -> Self {
        MethodSpec {
            label: format!("{family} lr={}", format_lr(lr)),
            options: vec![("lr".to_string(), lr)],
            grid: Some((family.to_string(), lr)),
            ..Self::new(family)
        }
    }

    pub fn with_option(mut self, name: &str, value: f64) -> Self {
        self.options.push((name.to_string(), value));
        self
    }

    pub fn labelled(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Identity of the configuration (the label does not enter): equal keys train identically.
    pub fn key(&self) -> String {
        let options: Vec<String> = self.options.iter().map(|(n, v)| format!("{n}={v:e}")).collect();
        format!("{}[{}]{{{}}}", self.algorithm, self.base.as_deref().unwrap_or(""), options.join(","))
    }

    pub fn is_baseline(&self) -> bool {
        self.grid.is_some()
    }

    pub fn needs(&self) -> Needs {
        match &self.base {
            Some(base) if self.algorithm == "gi" => Needs { loss: true, ..own_needs(base) },
            _ => own_needs(&self.algorithm),
        }
    }

    /// The algorithm names this method uses that `available` lacks (e.g. ones still being
    /// written); such a method is skipped with a note.
    pub fn missing(&self, available: &[&str]) -> Vec<String> {
        std::iter::once(&self.algorithm).chain(self.base.as_ref()).filter(|name| !available.contains(&name.as_str())).cloned().collect()
    }

    /// Builds the optimizer through the public API, one tensor per group (the default).
    pub fn build(&self, lens: &[usize]) -> Result<Optimizer, String> {
        let mut opt = Optimizer::new(&self.algorithm, lens, None).map_err(|e| format!("create '{}': {e}", self.algorithm))?;
        if let Some(base) = &self.base {
            opt.set_option_str("base", base).map_err(|e| format!("set base '{base}': {e}"))?;
        }
        for (name, value) in &self.options {
            opt.set_option(name, None, *value).map_err(|e| format!("set {name} = {value}: {e}"))?;
        }
        Ok(opt)
    }
}

/// 1e-4, 3.16e-4, …, 1: the grid's values as a person reads them.
pub fn format_lr(lr: f64) -> String {
    let s = format!("{lr:.2e}").replace(".00e", "e");
    s.strip_suffix("e0").map(str::to_string).unwrap_or(s)
}

/// Sizes shared by every run of one invocation.
#[derive(Clone, Debug)]
pub struct Protocol {
    pub epochs: usize,
    pub batch_size: usize,
    /// Log opt.lr / opt.momentum every this many steps (and after step 1).
    pub log_every: usize,
}

impl Protocol {
    /// Optimizer steps per epoch over `n` training samples: a final batch of a single sample is
    /// skipped (AutoOpt's variance estimate needs N ≥ 2), so the count is what runs really take.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        let full = n / self.batch_size;
        full + usize::from(n % self.batch_size >= 2)
    }
}

/// Train loss and test accuracy after an epoch (epoch 0: at initialisation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
    /// Seconds since the run started.
    pub elapsed: f64,
}

/// What the optimizer chose, read back through the public API after a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulePoint {
    pub step: usize,
    /// Fractional epochs done.
    pub epoch: f64,
    pub lr_mean: f64,
    pub momentum_mean: f64,
    /// Per group for the first two groups.
    pub lr: [f64; 2],
    pub momentum: [f64; 2],
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed,
    /// A non-finite loss (or an optimizer refusing a non-finite input): the run was stopped.
    Diverged {
        epoch: usize,
        step: usize,
    },
    /// The optimizer (or the run) failed for another reason; the message says why.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct RunResult {
    pub model: ModelKind,
    pub seed: u64,
    pub spec: MethodSpec,
    pub curve: Vec<EpochPoint>,
    pub schedule: Vec<SchedulePoint>,
    pub outcome: Outcome,
    /// Whole run: training plus the per-epoch evaluations on the train and test sets.
    pub wall_s: f64,
    pub steps: usize,
}

impl RunResult {
    pub fn completed(&self) -> bool {
        self.outcome == Outcome::Completed
    }

    /// Training loss after the last epoch; NaN unless completed.
    pub fn final_train_loss(&self) -> f64 {
        match (&self.outcome, self.curve.last()) {
            (Outcome::Completed, Some(p)) => p.train_loss,
            _ => f64::NAN,
        }
    }

    pub fn final_test_accuracy(&self) -> f64 {
        match (&self.outcome, self.curve.last()) {
            (Outcome::Completed, Some(p)) => p.test_accuracy,
            _ => f64::NAN,
        }
    }
}

/// One unit of work.
fn views(tensors: &Option<Vec<Vec<f32>>>) -> Vec<Tensor<'_>> {
    tensors.as_ref().expect("asked for in Want").iter().map(Tensor::from).collect()
}

#[derive(Clone, Debug)]
pub struct Job {
    pub model: ModelKind,
    pub seed: u64,
    pub spec: MethodSpec,
}

fn evaluate(net: &Model, data: &Dataset, epoch: usize, started: &Instant) -> EpochPoint {
    let train = net.evaluate(data.train_x.view(), &data.train_y);
    let test = net.evaluate(data.test_x.view(), &data.test_y);
    EpochPoint { epoch, train_loss: train.loss, test_accuracy: test.accuracy, elapsed: started.elapsed().as_secs_f64() }
}

fn schedule_point(opt: &mut Optimizer, step: usize, epoch: f64) -> SchedulePoint {
    let groups = opt.n_groups();
    let lr: Vec<f64> = (0..groups).map(|g| opt.lr(g).unwrap_or(f64::NAN)).collect();
    let momentum: Vec<f64> = (0..groups).map(|g| opt.momentum(g).unwrap_or(f64::NAN)).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let first_two = |v: &[f64]| [v.first().copied().unwrap_or(f64::NAN), v.get(1).copied().unwrap_or(f64::NAN)];
    SchedulePoint { step, epoch, lr_mean: mean(&lr), momentum_mean: mean(&momentum), lr: first_two(&lr), momentum: first_two(&momentum) }
}

/// Trains `job` for `protocol.epochs` epochs. Never panics on the optimizer's account: errors,
/// divergence and even panics inside the library end the run and are recorded in `outcome`.
/// `progress` receives one line per epoch.
pub fn run(data: &Dataset, job: &Job, protocol: &Protocol, progress: &(dyn Fn(&str) + Sync)) -> RunResult {
    let started = Instant::now();
    let mut result = RunResult {
        model: job.model,
        seed: job.seed,
        spec: job.spec.clone(),
        curve: Vec::new(),
        schedule: Vec::new(),
        outcome: Outcome::Completed,
        wall_s: 0.0,
        steps: 0,
    };
    let caught = panic::catch_unwind(AssertUnwindSafe(|| train(data, job, protocol, progress, &started, &mut result)));
    if let Err(payload) = caught {
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".to_string());
        result.outcome = Outcome::Failed(format!("panic: {what}"));
    }
    result.wall_s = started.elapsed().as_secs_f64();
    if let Outcome::Diverged { epoch, step } = result.outcome {
        progress(&format!("{} DIVERGED (non-finite loss) in epoch {epoch} at step {step}; run stopped", prefix(job)));
    } else if let Outcome::Failed(why) = &result.outcome {
        progress(&format!("{} FAILED: {why}", prefix(job)));
    }
    result
}

fn prefix(job: &Job) -> String {
    format!("[{} seed {}] {:<24}", job.model.slug(), job.seed, job.spec.label)
}

fn train(data: &Dataset, job: &Job, protocol: &Protocol, progress: &(dyn Fn(&str) + Sync), started: &Instant, result: &mut RunResult) {
    let mut net = job.model.build(job.seed);
    let lens: Vec<usize> = net.params().iter().map(|p| p.len()).collect();
    let mut opt = match job.spec.build(&lens) {
        Ok(opt) => opt,
        Err(why) => {
            result.outcome = Outcome::Failed(why);
            return;
        }
    };
    let needs = job.spec.needs();
    let want = Want { sum_sq_grads: needs.sum_sq, ggn_diag: needs.curvature };
    let log_schedule = !job.spec.is_baseline();
    let steps_per_epoch = protocol.steps_per_epoch(data.train_y.len()).max(1) as f64;
    result.curve.push(evaluate(&net, data, 0, started));
    let mut step = 0;
    for epoch in 1..=protocol.epochs {
        for batch in data.train_batches(protocol.batch_size, job.seed, epoch as u64 - 1) {
            if batch.y.len() < 2 {
                continue;
            }
            let computed = net.backward(batch.x.view(), &batch.y, want);
            if !computed.loss.is_finite() {
                result.outcome = Outcome::Diverged { epoch, step: step + 1 };
                result.steps = step;
                return;
            }
            let mut inputs = StepInputs::new(computed.grads.iter().map(Vec::as_slice).collect());
            if needs.sum_sq {
                inputs.samples =
                    Some(Samples { data: SampleData::SumSq(views(&computed.sum_sq_grads)), scale: SampleScale::Sample, batch_size: computed.batch_size });
            }
            if needs.curvature {
                inputs.curvature = Some(views(&computed.ggn_diag));
            }
            let mut callbacks = Callbacks::default();
            if needs.loss {
                inputs.loss = Some(computed.loss);
                let (x, y) = (batch.x.view(), batch.y.as_slice());
                callbacks.loss_fn = Some(Box::new(move |params: &[&[f32]]| Model::loss_at(params, x, y)));
            }
            let stepped = opt.step(&mut net.params_mut(), &inputs, &mut callbacks);
            step += 1;
            result.steps = step;
            match stepped {
                Ok(()) => {}
                Err(e) if e.status == AlrStatus::AlrNonFinite => {
                    result.outcome = Outcome::Diverged { epoch, step };
                    return;
                }
                Err(e) => {
                    result.outcome = Outcome::Failed(format!("step {step}: {:?}: {e}", e.status));
                    return;
                }
            }
            if log_schedule && (step == 1 || step % protocol.log_every == 0) {
                result.schedule.push(schedule_point(&mut opt, step, step as f64 / steps_per_epoch));
            }
        }
        let point = evaluate(&net, data, epoch, started);
        result.curve.push(point);
        progress(&format!(
            "{} epoch {epoch}/{}  train loss {:.4}  test acc {:.2}%  {:.1}s",
            prefix(job),
            protocol.epochs,
            point.train_loss,
            100.0 * point.test_accuracy,
            point.elapsed
        ));
        if !point.train_loss.is_finite() {
            result.outcome = Outcome::Diverged { epoch, step };
            return;
        }
    }
    if log_schedule && result.schedule.last().map(|p| p.step) != Some(step) {
        result.schedule.push(schedule_point(&mut opt, step, step as f64 / steps_per_epoch));
    }
}

/// Runs every job on `threads` worker threads; results come back in job order.
pub fn run_all(data: &Dataset, jobs: &[Job], protocol: &Protocol, threads: usize) -> Vec<RunResult> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; jobs.len()]);
    let print = |line: &str| println!("{line}");
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let result = run(data, job, protocol, &print);
                slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
            });
        }
    });
    slots.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().map(|r| r.expect("every job ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fallback;
    use ndarray::s;

    fn tiny_data(train: usize) -> Dataset {
        let full = fallback(1);
        Dataset {
            train_x: full.train_x.slice(s![..train, ..]).to_owned(),
            train_y: full.train_y[..train].to_vec(),
            test_x: full.test_x.slice(s![..200, ..]).to_owned(),
            test_y: full.test_y[..200].to_vec(),
        }
    }

    #[test]
    fn grid_labels_read_like_numbers() {
        assert_eq!(format_lr(1e-4), "1e-4");
        assert_eq!(format_lr(10f64.powf(-3.5)), "3.16e-4");
        assert_eq!(format_lr(1.0), "1");
        assert_eq!(format_lr(10f64.powf(-0.5)), "3.16e-1");
    }

    #[test]
    fn needs_follow_the_innermost_algorithm() {
        assert_eq!(MethodSpec::new("sgd").needs(), Needs::default());
        assert_eq!(MethodSpec::new("auto-adam").needs(), Needs { sum_sq: true, ..Needs::default() });
        assert_eq!(MethodSpec::new("vsgd-b").needs(), Needs { sum_sq: true, curvature: true, loss: false });
        assert_eq!(MethodSpec::gi("vsgd-l").needs(), Needs { sum_sq: true, curvature: true, loss: true });
        assert_eq!(MethodSpec::gi("adam").needs(), Needs { loss: true, ..Needs::default() });
        assert_eq!(MethodSpec::gi("tlr").missing(&["gi", "sgd"]), vec!["tlr".to_string()]);
        assert!(MethodSpec::gi("sgd").missing(&["gi", "sgd"]).is_empty());
        assert_ne!(MethodSpec::new("tlr").key(), MethodSpec::new("tlr").with_option("window", 3.0).key());
        assert_eq!(MethodSpec::new("tlr").key(), MethodSpec::new("tlr").labelled("x").key());
    }

    #[test]
    fn steps_per_epoch_skips_a_single_sample_batch() {
        let p = Protocol { epochs: 1, batch_size: 128, log_every: 20 };
        assert_eq!(p.steps_per_epoch(60000), 469);
        assert_eq!(p.steps_per_epoch(256), 2);
        assert_eq!(p.steps_per_epoch(257), 2);
        assert_eq!(p.steps_per_epoch(258), 3);
    }

    /// Every algorithm the library has right now accepts exactly the inputs the driver gives it
    /// (an algorithm refuses inputs it does not use) and trains without failing; 257 samples
    /// leave a final batch of one, which is skipped.
    #[test]
    fn every_available_algorithm_runs_with_the_inputs_the_driver_gives() {
        let data = tiny_data(257);
        let protocol = Protocol { epochs: 1, batch_size: 32, log_every: 2 };
        let available = autolr::registry::ALGORITHMS;
        let mut specs: Vec<MethodSpec> = available.iter().filter(|&&a| a != "gi").map(|a| MethodSpec::new(a)).collect();
        // GI wraps neither itself nor schedule-free (whose step is no one displacement to scale).
        let wrappable = |a: &&&str| **a != "gi" && !autolr::adapt::schedule_free::is_schedule_free(a);
        specs.extend(available.iter().filter(wrappable).map(|a| MethodSpec::gi(a)));
        specs.push(MethodSpec::new("tlr").with_option("per_group", 1.0).with_option("window", 3.0));
        specs.retain(|s| s.missing(available).is_empty());
        for model in ModelKind::ALL {
            for spec in &specs {
                let job = Job { model, seed: 0, spec: spec.clone() };
                let result = run(&data, &job, &protocol, &|_| {});
                assert!(matches!(result.outcome, Outcome::Completed | Outcome::Diverged { .. }), "{model:?} {}: {:?}", spec.label, result.outcome);
                assert_eq!(result.steps, 8, "{}", spec.label);
                assert_eq!(result.curve.len(), 2);
                if !spec.is_baseline() && result.completed() {
                    assert_eq!(result.schedule.first().map(|p| p.step), Some(1));
                    assert_eq!(result.schedule.last().map(|p| p.step), Some(8));
                }
            }
        }
    }

    #[test]
    fn a_diverging_run_is_recorded_not_a_crash() {
        let data = tiny_data(256);
        let protocol = Protocol { epochs: 3, batch_size: 32, log_every: 20 };
        // Logits overflow to ±∞ after a step this large; their difference is NaN.
        let job = Job { model: ModelKind::LogReg, seed: 0, spec: MethodSpec::grid_point("sgd", 1e38) };
        let result = run(&data, &job, &protocol, &|_| {});
        assert!(matches!(result.outcome, Outcome::Diverged { .. }), "{:?}", result.outcome);
        assert!(result.final_train_loss().is_nan());
    }

    #[test]
    fn a_failing_configuration_is_recorded_not_a_crash() {
        let data = tiny_data(64);
        let protocol = Protocol { epochs: 1, batch_size: 32, log_every: 20 };
        let job = Job { model: ModelKind::LogReg, seed: 0, spec: MethodSpec::new("no-such-algorithm") };
        let result = run(&data, &job, &protocol, &|_| {});
        assert!(matches!(&result.outcome, Outcome::Failed(why) if why.contains("no-such-algorithm")), "{:?}", result.outcome);
    }

    #[test]
    fn runs_are_deterministic_and_independent_of_threads() {
        let data = tiny_data(128);
        let protocol = Protocol { epochs: 1, batch_size: 32, log_every: 1 };
        let jobs: Vec<Job> = ["auto-sgd", "sgd", "adam"].iter().map(|a| Job { model: ModelKind::LogReg, seed: 3, spec: MethodSpec::new(a) }).collect();
        let one = run_all(&data, &jobs, &protocol, 1);
        let two = run_all(&data, &jobs, &protocol, 2);
        for (a, b) in one.iter().zip(&two) {
            assert_eq!(a.final_train_loss(), b.final_train_loss());
            assert_eq!(a.spec.label, b.spec.label);
        }
    }
}

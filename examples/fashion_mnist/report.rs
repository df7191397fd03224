//! Turning run results into what a person reads: the tuned baselines (best learning rate of
//! the grid by final training loss, per seed), one markdown table per model with the gap of
//! every automatic method to the better tuned baseline, the sensitivity table, and CSV files
//! of the training curves and of the schedules the optimizers chose.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::runner::{format_lr, MethodSpec, ModelKind, Outcome, RunResult};

/// The tracked goal: every automatic method within this many test-accuracy points of the
/// better tuned baseline.
pub const GOAL_POINTS: f64 = 1.0;

/// Results by (model, seed, configuration key).
#[derive(Default)]
pub struct Index {
    runs: HashMap<(ModelKind, u64, String), RunResult>,
}

impl Index {
    pub fn insert(&mut self, result: RunResult) {
        self.runs.insert((result.model, result.seed, result.spec.key()), result);
    }

    pub fn get(&self, model: ModelKind, seed: u64, spec: &MethodSpec) -> Option<&RunResult> {
        self.runs.get(&(model, seed, spec.key()))
    }

    /// The runs of `spec` for every seed that has one.
    pub fn over_seeds(&self, model: ModelKind, seeds: &[u64], spec: &MethodSpec) -> Vec<&RunResult> {
        seeds.iter().filter_map(|&s| self.get(model, s, spec)).collect()
    }
}

/// Mean and sample standard deviation of the finite values (std 0 for one value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
}

pub fn stats(values: impl IntoIterator<Item = f64>) -> Stats {
    let finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    let n = finite.len();
    if n == 0 {
        return Stats { n, mean: f64::NAN, std: f64::NAN };
    }
    let mean = finite.iter().sum::<f64>() / n as f64;
    let std = if n > 1 { (finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
    Stats { n, mean, std }
}

fn pm(s: Stats, scale: f64, digits: usize) -> String {
    if s.n == 0 {
        return "—".to_string();
    }
    let (mean, std) = (s.mean * scale, s.std * scale);
    if mean.abs() >= 1e4 {
        // An exploded loss: its digits say nothing, its size does.
        format!("{mean:.2e} ± {std:.1e}")
    } else {
        format!("{mean:.digits$} ± {std:.digits$}")
    }
}

/// The tuned baseline of one family for one model: per seed, the grid point with the lowest
/// final training loss (a diverged point counts as +∞; a seed where all diverged has none).
pub struct Tuned<'a> {
    pub family: String,
    /// Per seed (same order as the seeds given): the chosen run.
    pub chosen: Vec<Option<&'a RunResult>>,
    /// Every grid run of the family, all seeds.
    pub grid: Vec<&'a RunResult>,
    pub grid_size: usize,
}

pub fn tune<'a>(index: &'a Index, model: ModelKind, seeds: &[u64], family: &str, grid: &[MethodSpec]) -> Tuned<'a> {
    let points: Vec<&MethodSpec> = grid.iter().filter(|s| s.grid.as_ref().is_some_and(|(f, _)| f == family)).collect();
    let mut all = Vec::new();
    let chosen = seeds
        .iter()
        .map(|&seed| {
            let runs: Vec<&RunResult> = points.iter().filter_map(|p| index.get(model, seed, p)).collect();
            all.extend(runs.iter().copied());
            runs.into_iter().filter(|r| r.final_train_loss().is_finite()).min_by(|a, b| a.final_train_loss().total_cmp(&b.final_train_loss()))
        })
        .collect();
    Tuned { family: family.to_string(), chosen, grid: all, grid_size: points.len() }
}

impl Tuned<'_> {
    pub fn label(&self) -> String {
        format!("{} (tuned)", self.family)
    }

    pub fn accuracy(&self) -> Stats {
        stats(self.chosen.iter().flatten().map(|r| r.final_test_accuracy()))
    }

    pub fn loss(&self) -> Stats {
        stats(self.chosen.iter().flatten().map(|r| r.final_train_loss()))
    }

    /// "3.16e-1 (all seeds)" or "1e-1, 3.16e-1, 1e-1".
    pub fn chosen_lrs(&self) -> String {
        let lrs: Vec<String> =
            self.chosen.iter().map(|c| c.and_then(|r| r.spec.grid.as_ref()).map_or("none (all diverged)".to_string(), |(_, lr)| format_lr(*lr))).collect();
        if lrs.len() > 1 && lrs.iter().all(|l| l == &lrs[0]) {
            format!("{} (every seed)", lrs[0])
        } else {
            lrs.join(", ")
        }
    }
}

/// How one automatic method compares with the reference accuracy (fractions, not points).
pub fn gap_text(runs: &[&RunResult], seeds: usize, reference: f64) -> (String, bool) {
    let acc = stats(runs.iter().map(|r| r.final_test_accuracy()));
    let bad = seeds - acc.n;
    if acc.n == 0 {
        return ("all runs diverged/failed: misses".to_string(), false);
    }
    if !reference.is_finite() {
        return ("no baseline".to_string(), false);
    }
    let gap = 100.0 * (acc.mean - reference);
    let meets = gap >= -GOAL_POINTS && bad == 0;
    let text = if bad > 0 {
        format!("{gap:+.2}, misses: {bad}/{seeds} seeds diverged/failed")
    } else if meets {
        format!("{gap:+.2} (meets)")
    } else {
        format!("{gap:+.2} (misses by {:.2})", (-gap - GOAL_POINTS).max(0.01))
    };
    (text, meets)
}

fn outcome_note(runs: &[&RunResult]) -> String {
    let mut notes = Vec::new();
    for r in runs {
        match &r.outcome {
            Outcome::Completed => {
                // Not NaN, so not "diverged", but worth a word: training made the loss worse.
                let initial = r.curve.first().map_or(f64::NAN, |p| p.train_loss);
                let last = r.final_train_loss();
                if last > initial {
                    notes.push(format!("seed {}: final train loss {last:.3e} above its initial {initial:.3}", r.seed));
                }
            }
            Outcome::Diverged { epoch, step } => notes.push(format!("seed {}: diverged in epoch {epoch} (step {step})", r.seed)),
            Outcome::Failed(why) => notes.push(format!("seed {}: failed: {}", r.seed, why.replace('|', "/"))),
        }
    }
    notes.join("; ")
}

fn mean_wall(runs: &[&RunResult]) -> String {
    let s = stats(runs.iter().map(|r| r.wall_s));
    if s.n == 0 {
        "—".to_string()
    } else {
        format!("{:.1}", s.mean)
    }
}

/// Everything a model's report needs besides the results.
pub struct ModelReport<'a> {
    pub model: ModelKind,
    pub seeds: &'a [u64],
    pub methods: &'a [MethodSpec],
    pub grid: &'a [MethodSpec],
    pub families: &'a [&'a str],
    /// Lines describing data and protocol, printed above the table.
    pub preamble: &'a [String],
    /// Methods not run, with why.
    pub skipped: &'a [String],
}

/// The markdown report of one model (title, protocol, main table, baseline grid, notes).
pub fn model_markdown(index: &Index, r: &ModelReport) -> String {
    let seeds = r.seeds;
    let tuned: Vec<Tuned> = r.families.iter().map(|f| tune(index, r.model, seeds, f, r.grid)).collect();
    let reference = tuned.iter().map(|t| t.accuracy().mean).filter(|a| a.is_finite()).fold(f64::NAN, f64::max);
    let reference_label = tuned.iter().find(|t| t.accuracy().mean == reference).map(|t| t.label()).unwrap_or_default();

    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut met = 0;
    let mut counted = 0;
    for spec in r.methods {
        let runs = index.over_seeds(r.model, seeds, spec);
        if runs.is_empty() {
            continue;
        }
        let completed: Vec<&RunResult> = runs.iter().copied().filter(|r| r.completed()).collect();
        let (gap, meets) = gap_text(&runs, seeds.len(), reference);
        counted += 1;
        met += usize::from(meets);
        let loss = if completed.is_empty() { "diverged".to_string() } else { pm(stats(completed.iter().map(|r| r.final_train_loss())), 1.0, 4) };
        let acc = if completed.is_empty() { "diverged".to_string() } else { pm(stats(completed.iter().map(|r| r.final_test_accuracy())), 100.0, 2) };
        rows.push([spec.label.clone(), loss, acc, gap, mean_wall(&runs), "1".to_string(), outcome_note(&runs)]);
    }
    for t in &tuned {
        let acc = t.accuracy();
        let gap = if t.accuracy().mean == reference {
            "reference".to_string()
        } else if acc.n > 0 && reference.is_finite() {
            format!("{:+.2} (baseline)", 100.0 * (acc.mean - reference))
        } else {
            "—".to_string()
        };
        rows.push([
            format!("**{}**", t.label()),
            pm(t.loss(), 1.0, 4),
            pm(acc, 100.0, 2),
            gap,
            mean_wall(&t.grid),
            t.grid_size.to_string(),
            format!("lr {}", t.chosen_lrs()),
        ]);
    }

    let mut md = String::new();
    let _ = writeln!(md, "# Fashion-MNIST: {}\n", r.model.title());
    for line in r.preamble {
        let _ = writeln!(md, "{line}  ");
    }
    let _ = writeln!(
        md,
        "\nGoal: every automatic method within {GOAL_POINTS:.1} test-accuracy point of the better tuned baseline \
         (here **{reference_label}**, {:.2}% mean test accuracy) after the same epochs, with nothing tuned per method.  \n\
         **{met} of {counted} automatic methods meet it.**\n",
        100.0 * reference
    );
    let header = ["method", "final train loss", "test acc (%)", "vs best tuned (acc pts, goal ≥ −1.0)", "wall/run (s)", "runs needed", "notes"];
    md.push_str(&markdown_table(&header, &rows));
    let _ = writeln!(
        md,
        "\nMean ± sample std over {} seed(s). Final train loss: mean cross-entropy on the whole training set after the last epoch. \
         Test accuracy on the 10 000 test images. Wall time per run includes the per-epoch evaluations on the train and test sets. \
         \"Tuned\": per seed, the learning rate of the grid 1e-4 … 1 (half decades, {} points) with the lowest final train loss; \
         it needed all {} runs. The gap column compares each method's mean test accuracy with the better tuned baseline's.",
        seeds.len(),
        r.grid.len() / r.families.len().max(1),
        r.grid.len() / r.families.len().max(1),
    );
    if !r.skipped.is_empty() {
        let _ = writeln!(md, "\nNot run: {}.", r.skipped.join("; "));
    }
    md.push_str("\n## Baseline grid (mean over seeds)\n\n");
    md.push_str(&grid_table(index, r.model, seeds, r.grid, r.families));
    md
}

fn grid_table(index: &Index, model: ModelKind, seeds: &[u64], grid: &[MethodSpec], families: &[&str]) -> String {
    let mut lrs: Vec<f64> = grid.iter().filter_map(|s| s.grid.as_ref().map(|g| g.1)).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let mut header = vec!["lr".to_string()];
    for f in families {
        header.push(format!("{f}: train loss"));
        header.push(format!("{f}: test acc (%)"));
    }
    let rows: Vec<Vec<String>> = lrs
        .iter()
        .map(|&lr| {
            let mut row = vec![format_lr(lr)];
            for f in families {
                let Some(spec) = grid.iter().find(|s| s.grid.as_ref().is_some_and(|(gf, glr)| gf == f && *glr == lr)) else {
                    row.extend(["—".to_string(), "—".to_string()]);
                    continue;
                };
                let runs = index.over_seeds(model, seeds, spec);
                let bad = runs.iter().filter(|r| !r.completed()).count();
                if bad == runs.len() {
                    row.extend(["diverged".to_string(), "diverged".to_string()]);
                    continue;
                }
                let suffix = if bad > 0 { format!(" ({bad}/{} diverged)", runs.len()) } else { String::new() };
                let loss = stats(runs.iter().map(|r| r.final_train_loss())).mean;
                let loss = if loss.abs() >= 1e4 { format!("{loss:.2e}") } else { format!("{loss:.4}") };
                row.push(format!("{loss}{suffix}"));
                row.push(format!("{:.2}", 100.0 * stats(runs.iter().map(|r| r.final_test_accuracy())).mean));
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    markdown_table(&header, &rows)
}

pub fn markdown_table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut md = format!("| {} |\n|{}|\n", header.join(" | "), header.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.as_ref().join(" | "));
    }
    md
}

/// One line of the sensitivity study.
#[derive(Clone, Debug)]
pub struct SweepEntry {
    /// The method varied, e.g. "auto-adam".
    pub method: String,
    /// E.g. "ν = 0.99".
    pub setting: String,
    pub is_default: bool,
    /// Per model (the setting may depend on the model, e.g. C = d/10).
    pub specs: Vec<(ModelKind, MethodSpec)>,
}

pub fn sensitivity_markdown(index: &Index, entries: &[SweepEntry], models: &[ModelKind], seeds: &[u64], preamble: &[String]) -> String {
    let mut header = vec!["method".to_string(), "setting".to_string()];
    for m in models {
        header.push(format!("{}: train loss", m.slug()));
        header.push(format!("{}: test acc (%)", m.slug()));
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let setting = if e.is_default { format!("{} (default)", e.setting) } else { e.setting.clone() };
            let mut row = vec![e.method.clone(), setting];
            for m in models {
                let runs = e.specs.iter().find(|(sm, _)| sm == m).map(|(_, spec)| index.over_seeds(*m, seeds, spec)).unwrap_or_default();
                let completed: Vec<&&RunResult> = runs.iter().filter(|r| r.completed()).collect();
                if runs.is_empty() {
                    row.extend(["not run".to_string(), "not run".to_string()]);
                } else if completed.is_empty() {
                    row.extend(["diverged".to_string(), "diverged".to_string()]);
                } else {
                    let bad = runs.len() - completed.len();
                    let suffix = if bad > 0 { format!(" ({bad}/{} diverged)", runs.len()) } else { String::new() };
                    row.push(format!("{}{suffix}", pm(stats(completed.iter().map(|r| r.final_train_loss())), 1.0, 4)));
                    row.push(pm(stats(completed.iter().map(|r| r.final_test_accuracy())), 100.0, 2));
                }
            }
            row
        })
        .collect();
    let mut md = String::from("# Sensitivity of the automatic methods to their few constants\n\n");
    for line in preamble {
        let _ = writeln!(md, "{line}  ");
    }
    md.push('\n');
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    md.push_str(&markdown_table(&header, &rows));
    let _ = writeln!(
        md,
        "\nMean ± sample std over {} seed(s); d = number of parameters of the model ({}).",
        seeds.len(),
        models.iter().map(|m| format!("{}: {}", m.slug(), m.num_params())).collect::<Vec<_>>().join(", ")
    );
    md
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn status(r: &RunResult) -> &'static str {
    match r.outcome {
        Outcome::Completed => "completed",
        Outcome::Diverged { .. } => "diverged",
        Outcome::Failed(_) => "failed",
    }
}

/// Per-epoch training loss and test accuracy: every automatic method (kind "auto"), the tuned
/// baselines (kind "tuned", the chosen grid run of each seed) and every grid point ("grid").
pub fn loss_csv(index: &Index, model: ModelKind, seeds: &[u64], methods: &[MethodSpec], grid: &[MethodSpec], families: &[&str]) -> String {
    let mut csv = String::from("method,kind,seed,epoch,train_loss,test_accuracy,elapsed_s,status,lr\n");
    let mut emit = |label: &str, kind: &str, r: &RunResult| {
        let lr = r.spec.grid.as_ref().map_or(String::new(), |(_, lr)| lr.to_string());
        for p in &r.curve {
            let _ =
                writeln!(csv, "{},{kind},{},{},{},{},{:.3},{},{lr}", csv_field(label), r.seed, p.epoch, p.train_loss, p.test_accuracy, p.elapsed, status(r));
        }
    };
    for spec in methods {
        for r in index.over_seeds(model, seeds, spec) {
            emit(&spec.label, "auto", r);
        }
    }
    for f in families {
        let t = tune(index, model, seeds, f, grid);
        for r in t.chosen.iter().flatten() {
            emit(&t.label(), "tuned", r);
        }
    }
    for spec in grid {
        for r in index.over_seeds(model, seeds, spec) {
            emit(&spec.label, "grid", r);
        }
    }
    csv
}

/// The learning rate (and momentum) each automatic method chose, every few steps.
pub fn schedule_csv(index: &Index, model: ModelKind, seeds: &[u64], methods: &[MethodSpec]) -> String {
    let mut csv = String::from("method,seed,step,epoch,lr_mean,momentum_mean,lr_g0,lr_g1,momentum_g0,momentum_g1\n");
    for spec in methods {
        for r in index.over_seeds(model, seeds, spec) {
            for p in &r.schedule {
                let _ = writeln!(
                    csv,
                    "{},{},{},{:.4},{},{},{},{},{},{}",
                    csv_field(&spec.label),
                    r.seed,
                    p.step,
                    p.epoch,
                    p.lr_mean,
                    p.momentum_mean,
                    p.lr[0],
                    p.lr[1],
                    p.momentum[0],
                    p.momentum[1]
                );
            }
        }
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{EpochPoint, MethodSpec};

    fn result(model: ModelKind, seed: u64, spec: &MethodSpec, loss: f64, acc: f64, outcome: Outcome) -> RunResult {
        RunResult {
            model,
            seed,
            spec: spec.clone(),
            curve: vec![EpochPoint { epoch: 1, train_loss: loss, test_accuracy: acc, elapsed: 1.0 }],
            schedule: Vec::new(),
            outcome,
            wall_s: 2.0,
            steps: 10,
        }
    }

    #[test]
    fn stats_ignore_non_finite_and_use_sample_std() {
        let s = stats([1.0, 3.0, f64::NAN]);
        assert_eq!((s.n, s.mean), (2, 2.0));
        assert!((s.std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(stats([5.0]).std, 0.0);
        assert_eq!(stats([f64::NAN]).n, 0);
        assert_eq!(pm(stats([0.5, 0.7]), 1.0, 2), "0.60 ± 0.14");
        assert_eq!(pm(stats([5.2e10]), 1.0, 4), "5.20e10 ± 0.0e0");
        assert_eq!(pm(Stats { n: 0, mean: f64::NAN, std: f64::NAN }, 1.0, 4), "—");
    }

    #[test]
    fn tuning_picks_the_lowest_final_train_loss_per_seed_and_skips_diverged_points() {
        let m = ModelKind::LogReg;
        let grid: Vec<MethodSpec> = [1e-2, 1e-1, 1.0].iter().map(|&lr| MethodSpec::grid_point("sgd", lr)).collect();
        let mut index = Index::default();
        // seed 0: lr 1 diverged, lr 0.1 best; seed 1: lr 1 best.
        index.insert(result(m, 0, &grid[0], 0.9, 0.70, Outcome::Completed));
        index.insert(result(m, 0, &grid[1], 0.5, 0.80, Outcome::Completed));
        index.insert(result(m, 0, &grid[2], f64::NAN, 0.1, Outcome::Diverged { epoch: 1, step: 3 }));
        index.insert(result(m, 1, &grid[0], 0.9, 0.70, Outcome::Completed));
        index.insert(result(m, 1, &grid[1], 0.6, 0.79, Outcome::Completed));
        index.insert(result(m, 1, &grid[2], 0.4, 0.78, Outcome::Completed));
        let t = tune(&index, m, &[0, 1], "sgd", &grid);
        let lrs: Vec<f64> = t.chosen.iter().map(|c| c.unwrap().spec.grid.as_ref().unwrap().1).collect();
        assert_eq!(lrs, vec![0.1, 1.0]);
        assert_eq!(t.grid.len(), 6);
        assert!((t.accuracy().mean - 0.79).abs() < 1e-12);
        assert_eq!(t.chosen_lrs(), "1e-1, 1");
    }

    #[test]
    fn gap_says_meets_or_misses_and_by_how_much() {
        let spec = MethodSpec::new("auto-sgd");
        let m = ModelKind::Mlp;
        let a = result(m, 0, &spec, 0.5, 0.845, Outcome::Completed);
        let b = result(m, 1, &spec, 0.5, 0.835, Outcome::Completed);
        let (text, meets) = gap_text(&[&a, &b], 2, 0.845);
        assert!(meets && text.starts_with("-0.50"), "{text}");
        let (text, meets) = gap_text(&[&a, &b], 2, 0.855);
        assert!(!meets && text == "-1.50 (misses by 0.50)", "{text}");
        let d = result(m, 1, &spec, f64::NAN, 0.1, Outcome::Diverged { epoch: 2, step: 9 });
        let (text, meets) = gap_text(&[&a, &d], 2, 0.845);
        assert!(!meets && text.contains("1/2 seeds diverged"), "{text}");
        let (_, meets) = gap_text(&[&d], 1, 0.845);
        assert!(!meets);
    }

    #[test]
    fn the_model_table_shows_every_method_the_baselines_and_divergence() {
        let m = ModelKind::LogReg;
        let grid: Vec<MethodSpec> = ["sgd", "adam"].iter().flat_map(|f| [1e-2, 1e-1].map(|lr| MethodSpec::grid_point(f, lr))).collect();
        let methods = vec![MethodSpec::new("auto-sgd"), MethodSpec::gi("adam")];
        let mut index = Index::default();
        for (i, g) in grid.iter().enumerate() {
            index.insert(result(m, 0, g, 0.5 - 0.01 * i as f64, 0.80 + 0.001 * i as f64, Outcome::Completed));
        }
        index.insert(result(m, 0, &methods[0], 0.45, 0.798, Outcome::Completed));
        index.insert(result(m, 0, &methods[1], f64::NAN, 0.1, Outcome::Diverged { epoch: 1, step: 5 }));
        let skipped = vec!["vsgd-l (not in autolr::registry::ALGORITHMS)".to_string()];
        let md = model_markdown(
            &index,
            &ModelReport { model: m, seeds: &[0], methods: &methods, grid: &grid, families: &["sgd", "adam"], preamble: &[], skipped: &skipped },
        );
        assert!(md.contains("| auto-sgd | 0.4500 ± 0.0000 | 79.80 ± 0.00 | -0.50 (meets) | 2.0 | 1 |"), "{md}");
        assert!(md.contains("| gi(adam) | diverged | diverged |"), "{md}");
        assert!(md.contains("seed 0: diverged in epoch 1 (step 5)"), "{md}");
        assert!(md.contains("| **adam (tuned)** | 0.4700 ± 0.0000 | 80.30 ± 0.00 | reference | 2.0 | 2 | lr 1e-1 |"), "{md}");
        assert!(md.contains("**1 of 2 automatic methods meet it.**"), "{md}");
        assert!(md.contains("Not run: vsgd-l"), "{md}");
        let csv = loss_csv(&index, m, &[0], &methods, &grid, &["sgd", "adam"]);
        assert!(csv.contains("adam (tuned),tuned,0,1,0.47,0.803,1.000,completed,0.1\n"), "{csv}");
        assert!(csv.contains("gi(adam),auto,0,1,NaN,0.1,1.000,diverged,\n"), "{csv}");
    }
}

//! One battery for every registered algorithm (and GI over every base), as optax's common tests
//! do for its transformations:
//! - propose then apply (scale 1) is the fused step, bit for bit;
//! - a checkpoint round trip resumes bit-exactly;
//! - a noisy convex quadratic converges;
//! - bad inputs are refused with the parameters and the state untouched.

use autolr::algorithm::{Algorithm, Context};
use autolr::backend::{cpu::Cpu, AnyDevice, TensorMut};
use autolr::options::Options;
use autolr::registry::{self, ALGORITHMS};
use autolr::{Callbacks, Layout, Optimizer, SampleData, SampleScale, Samples, StepInputs, Tensor};

const LENS: [usize; 3] = [7, 40, 3];
const GROUPS: [usize; 3] = [0, 1, 0];
const N: usize = 8;

/// Schedule-free takes no part in propose/apply, so nothing can wrap it (GI refuses it as a
/// base) and it is left out of the propose/apply test, as GI is: its step moves three
/// sequences (the caller's y, its z and, through them, x), not one displacement a wrapper could
/// scale. It wraps bases itself through their fused step (a fixed-rate base), propose/apply
/// (an automatic one), which the propose/apply test checks for every base, or GI's move
/// (docs/algorithms.md §3.3).
fn is_schedule_free(name: &str) -> bool {
    matches!(name, "schedule-free" | "sf-adamw" | "sf-sgd")
}

/// One configuration: an algorithm over its base ("" for none), and for schedule-free over gi
/// GI's base (`base_base`, docs/algorithms.md §3.3; "" otherwise).
type Case = (&'static str, &'static str, &'static str);

/// Every algorithm, GI over every other one but schedule-free, schedule-free over every base
/// that is neither, and schedule-free over gi over every base of GI's.
fn cases() -> Vec<Case> {
    let wraps = |n: &&&str| **n != "gi" && !is_schedule_free(n);
    let mut out: Vec<Case> = ALGORITHMS.iter().filter(|&&n| n != "gi" && n != "schedule-free").map(|&n| (n, "", "")).collect();
    out.extend(ALGORITHMS.iter().filter(wraps).map(|&b| ("gi", b, "")));
    out.extend(ALGORITHMS.iter().filter(wraps).map(|&b| ("schedule-free", b, "")));
    out.extend(ALGORITHMS.iter().filter(wraps).map(|&b| ("schedule-free", "gi", b)));
    out
}

/// Its label in messages.
fn label((name, base, base_base): Case) -> String {
    [name, base, base_base].iter().filter(|n| !n.is_empty()).copied().collect::<Vec<_>>().join("/")
}

/// The algorithm that takes the per-sample data and curvature: the innermost.
fn innermost((name, base, base_base): Case) -> &'static str {
    [base_base, base, name].into_iter().find(|n| !n.is_empty()).unwrap_or(name)
}

/// Whether GI runs in the case (on its own or under schedule-free): it takes the loss.
fn has_gi((name, base, _): Case) -> bool {
    name == "gi" || base == "gi"
}

/// A noisy quadratic `f(θ) = ½ Σ h (θ − c)²`: its curvature, centre, and per-step draws.
struct Quadratic {
    h: Vec<Vec<f32>>,
    c: Vec<Vec<f32>>,
}

/// Deterministic numbers in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| (((((i as u64 + 1) * 2_654_435_761) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % 2001) as f32 / 1000.0) - 1.0).collect()
}

impl Quadratic {
    fn new() -> Self {
        let h = LENS.iter().enumerate().map(|(t, &n)| noise(t as u64 + 100, n).iter().map(|v| 1.0 + 0.5 * v).collect()).collect();
        let c = LENS.iter().enumerate().map(|(t, &n)| noise(t as u64 + 200, n)).collect();
        Quadratic { h, c }
    }

    fn loss(&self, params: &[&[f32]]) -> f64 {
        let mut f = 0.0;
        for ((p, h), c) in params.iter().zip(&self.h).zip(&self.c) {
            for ((&p, &h), &c) in p.iter().zip(h).zip(c) {
                f += 0.5 * f64::from(h) * (f64::from(p) - f64::from(c)).powi(2);
            }
        }
        f
    }

    /// Per tensor, the N × len per-sample gradients at `params` for step `step`.
    fn per_sample(&self, params: &[Vec<f32>], step: u64) -> Vec<Vec<f32>> {
        params
            .iter()
            .enumerate()
            .map(|(t, p)| {
                let mut rows = Vec::with_capacity(N * p.len());
                for i in 0..N {
                    let z = noise(step * 1000 + (t * N + i) as u64, p.len());
                    rows.extend(p.iter().zip(&self.h[t]).zip(&self.c[t]).zip(&z).map(|(((&p, &h), &c), &z)| h * (p - c) + 0.2 * z));
                }
                rows
            })
            .collect()
    }
}

/// What one step of `name` (over `base`) reads, as owned buffers.
struct Batch {
    grads: Vec<Vec<f32>>,
    sum_sq: Vec<Vec<f32>>,
    curvature: Vec<Vec<f32>>,
    loss: f64,
}

fn batch(q: &Quadratic, params: &[Vec<f32>], step: u64) -> Batch {
    let rows = q.per_sample(params, step);
    let grads = rows.iter().zip(LENS).map(|(r, n)| (0..n).map(|j| (0..N).map(|i| r[i * n + j]).sum::<f32>() / N as f32).collect()).collect();
    let sum_sq = rows.iter().zip(LENS).map(|(r, n)| (0..n).map(|j| (0..N).map(|i| r[i * n + j] * r[i * n + j]).sum::<f32>()).collect()).collect();
    let views: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
    Batch { grads, sum_sq, curvature: q.h.clone(), loss: q.loss(&views) }
}

fn uses(case: Case, what: &str) -> bool {
    let inner = innermost(case);
    match what {
        "samples" => inner.starts_with("auto") || inner.starts_with("vsgd"),
        "curvature" => inner.starts_with("vsgd"),
        "loss" => has_gi(case),
        _ => unreachable!(),
    }
}

fn inputs(case: Case, b: &Batch) -> StepInputs<'_> {
    let mut inputs = StepInputs::new(b.grads.iter().map(Vec::as_slice).collect());
    if uses(case, "samples") {
        inputs.samples = Some(Samples { data: SampleData::SumSq(b.sum_sq.iter().map(Tensor::from).collect()), scale: SampleScale::Sample, batch_size: N });
    }
    if uses(case, "curvature") {
        inputs.curvature = Some(b.curvature.iter().map(Tensor::from).collect());
    }
    if uses(case, "loss") {
        inputs.loss = Some(b.loss);
    }
    inputs
}

fn make(case: Case) -> Optimizer {
    let (name, base, base_base) = case;
    let mut opt = Optimizer::new(name, &LENS, Some(&GROUPS)).expect("create");
    if !base.is_empty() {
        opt.set_option_str("base", base).expect("base");
    }
    if !base_base.is_empty() {
        opt.set_option_str("base_base", base_base).expect("base_base");
    }
    // Fixed-rate rules at a rate that makes progress in the budget (their own default is
    // PyTorch's; these tests are about the machinery, not the defaults).
    if registry::is_fixed_rate(name) && opt.set_option("lr", None, 0.05).is_err() {
        unreachable!("fixed-rate rules take lr");
    }
    // So does schedule-free over one (sf-adamw and sf-sgd keep the reference's defaults).
    if name == "schedule-free" && registry::is_fixed_rate(base) && opt.set_option("lr", None, 0.05).is_err() {
        unreachable!("schedule-free over a fixed-rate rule takes lr");
    }
    opt
}

fn start() -> Vec<Vec<f32>> {
    LENS.iter().enumerate().map(|(t, &n)| noise(t as u64 + 300, n).iter().map(|v| 2.0 * v).collect()).collect()
}

/// One step of `opt` on the quadratic (GI's closure evaluates the same batch's loss).
fn step(opt: &mut Optimizer, q: &Quadratic, params: &mut [Vec<f32>], t: u64, case: Case) -> autolr::Result<()> {
    let b = batch(q, params, t);
    let inputs = inputs(case, &b);
    let mut callbacks = Callbacks::default();
    if has_gi(case) {
        callbacks.loss_fn = Some(Box::new(|ps: &[&[f32]]| Ok(q.loss(ps))));
    }
    let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
    opt.step(&mut views, &inputs, &mut callbacks)
}

fn bits(params: &[Vec<f32>]) -> Vec<Vec<u32>> {
    params.iter().map(|p| p.iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn propose_then_apply_is_the_fused_step() {
    let q = Quadratic::new();
    let layout = Layout::new(&LENS, Some(&GROUPS)).unwrap();
    let device = AnyDevice::Cpu(Cpu);
    for &name in ALGORITHMS.iter().filter(|&&n| n != "gi" && !is_schedule_free(n)) {
        let options = Options::new(registry::specs(name, "", "").unwrap(), layout.n_groups()).unwrap();
        let ctx = Context { layout: &layout, options: &options };
        let build = || {
            let mut a: Box<dyn Algorithm> = registry::build(name, "", "", &layout, &device, false, &None).unwrap();
            a.options_changed(&ctx).unwrap();
            a
        };
        let (mut fused, mut split) = (build(), build());
        let (mut p_fused, mut p_split) = (start(), start());
        for t in 0..30 {
            let b = batch(&q, &p_fused, t);
            let inputs = inputs((name, "", ""), &b);
            let mut views: Vec<TensorMut> = p_fused.iter_mut().map(|p| TensorMut::host(p)).collect();
            fused.step(&ctx, &mut views, &inputs, &mut Callbacks::default()).unwrap();
            let mut views: Vec<TensorMut> = p_split.iter_mut().map(|p| TensorMut::host(p)).collect();
            split.propose(&ctx, &views, &inputs, &mut Callbacks::default()).unwrap();
            split.apply(&ctx, &mut views, &inputs, 1.0).unwrap();
            assert_eq!(bits(&p_fused), bits(&p_split), "{name}: step {t}");
        }
        assert_ne!(bits(&p_fused), bits(&start()), "{name}: nothing moved in 30 steps");
    }
}

#[test]
fn a_checkpoint_resumes_bit_exactly() {
    let q = Quadratic::new();
    for case in cases() {
        let at = label(case);
        let mut opt = make(case);
        let mut params = start();
        for t in 0..12 {
            step(&mut opt, &q, &mut params, t, case).unwrap_or_else(|e| panic!("{at}: {e}"));
        }
        let saved = opt.save().unwrap();
        let mut resumed = make(case);
        resumed.load(&saved).unwrap();
        assert_eq!(resumed.save().unwrap(), saved, "{at}: a loaded state saves to other bytes");
        let mut resumed_params = params.clone();
        for t in 12..24 {
            step(&mut opt, &q, &mut params, t, case).unwrap();
            step(&mut resumed, &q, &mut resumed_params, t, case).unwrap();
        }
        assert_eq!(bits(&params), bits(&resumed_params), "{at}: resumed run differs");
        assert_eq!(opt.save().unwrap(), resumed.save().unwrap(), "{at}: resumed state differs");
    }
}

/// GI over TLR is left out: on this problem TLR's α, trained from successive gradients that
/// hardly change once GI has shrunk its scale η, grows by (1 + c) per step while η shrinks to
/// compensate, until η underflows to 0 and α overflows float32 (NaN parameters after ~1100
/// steps). That is the composition docs/algorithms.md §3 specifies (the base keeps its state
/// as if it had applied its own step); the README's open points record it. Under schedule-free
/// (§3.3) the same happens sooner, to TLR's α (φ overflows at step 483) and to D-Adaptation's d,
/// estimated from the base's own unscaled steps (d grows to 1e39 while η is halved on each step
/// whose small positive φ_y gives ρ < lo, most steps being φ_y ≤ 0 skips once the noise
/// dominates; φ overflows at step 623); GI over dadapt-adam alone drifts the same way (η 1e-160,
/// d 5e5 at step 625) but converged first.
const DIVERGES: [Case; 3] = [("gi", "tlr", ""), ("schedule-free", "gi", "tlr"), ("schedule-free", "gi", "dadapt-adam")];

#[test]
fn a_noisy_convex_quadratic_converges() {
    let q = Quadratic::new();
    for case in cases().into_iter().filter(|c| !DIVERGES.contains(c)) {
        let at = label(case);
        let mut opt = make(case);
        let mut params = start();
        let views = |p: &[Vec<f32>]| -> f64 { q.loss(&p.iter().map(Vec::as_slice).collect::<Vec<_>>()) };
        let initial = views(&params);
        for t in 0..1500 {
            step(&mut opt, &q, &mut params, t, case).unwrap_or_else(|e| panic!("{at} step {t}: {e}"));
        }
        let last = views(&params);
        assert!(last.is_finite() && last < 0.2 * initial, "{at}: loss {initial:.3} → {last:.3} in 1500 steps");
    }
}

#[test]
fn bad_inputs_are_refused_with_nothing_changed() {
    let q = Quadratic::new();
    for case in cases() {
        let at = label(case);
        let mut opt = make(case);
        let mut params = start();
        for t in 0..3 {
            step(&mut opt, &q, &mut params, t, case).unwrap();
        }
        let (state, before) = (opt.save().unwrap(), bits(&params));
        let good = batch(&q, &params, 3);
        let mut nan = batch(&q, &params, 3);
        nan.grads[1][5] = f32::NAN;
        let mut short = batch(&q, &params, 3);
        short.grads[2].pop();
        for (what, b) in [("a NaN gradient", &nan), ("a short gradient", &short)] {
            let inputs = inputs(case, b);
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            let e = opt.step(&mut views, &inputs, &mut Callbacks::default()).expect_err(&format!("{at}: {what} accepted"));
            assert!(!e.message.is_empty());
            assert_eq!(bits(&params), before, "{at}: {what} moved the parameters");
            assert_eq!(opt.save().unwrap(), state, "{at}: {what} changed the state");
        }
        // An input the algorithm does not use is refused too, not ignored.
        let mut inputs = inputs(case, &good);
        let unused_curvature = !uses(case, "curvature");
        if unused_curvature {
            inputs.curvature = Some(good.curvature.iter().map(Tensor::from).collect());
        } else {
            inputs.loss = Some(1.0);
        }
        if !has_gi(case) || unused_curvature {
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            assert!(opt.step(&mut views, &inputs, &mut Callbacks::default()).is_err(), "{at}: an unused input was accepted");
            assert_eq!(bits(&params), before);
            assert_eq!(opt.save().unwrap(), state);
        }
    }
}

"""AutoOpt (docs/algorithms.md §1): auto-sgd, auto-adam, auto-adagrad against the float64 reference,
plus statistical, behavioural and precision checks of the noise estimate V."""
import numpy as np
import pytest

import autolr
from conftest import SideBySide, f32

SHAPES = [(6, 5), (5,), (40,), (3, 3), (2,)]
GROUPS = [0, 0, 1, 2, 2]  # three groups of different sizes (35, 40, 11 elements)
N = 8


def batch(rng, params, noise=1.0):
    """Per-sample gradients of a noisy quadratic 0.5·Σ h θ², N samples (float32-exact float64)."""
    rows = []
    for p in params:
        h = 0.5 + np.linspace(0, 1, p.size).reshape(p.shape)
        rows.append(f32(h * p + noise * rng.standard_normal((N,) + p.shape)))
    grads = [f32(r.mean(axis=0)) for r in rows]
    return rows, grads


def inputs(form, scale, rows, grads):
    k = 1.0 if scale == "sample" else 1.0 / N
    if form == "per_sample":
        return dict(grads=grads, per_sample=[f32(r * k) for r in rows], per_sample_scale=scale, batch_size=N)
    return dict(grads=grads, sum_sq=[f32((r * r).sum(axis=0) * k * k) for r in rows], per_sample_scale=scale, batch_size=N)


@pytest.mark.parametrize("algorithm", ["auto-sgd", "auto-adam", "auto-adagrad"])
@pytest.mark.parametrize("form", ["sum_sq", "per_sample"])
@pytest.mark.parametrize("scale", ["sample", "mean"])
def test_matches_reference(algorithm, form, scale):
    rng = np.random.default_rng(7)
    # ν = 0.9 for every base (auto-adam's default 0.99999 barely moves γ_E, so its 2-D path
    # would hardly be exercised); the default itself is compared in test_defaults_match_reference.
    sbs = SideBySide(algorithm, SHAPES, groups=GROUPS, seed=3, nu=0.9)
    for t in range(120):
        rows, grads = batch(rng, sbs.p64)
        sbs.step(**inputs(form, scale, rows, grads))
        sbs.assert_close(1e-5, f"{algorithm}/{form}/{scale} step {t}")
        sbs.assert_rates_close(1e-4, f"{algorithm}/{form}/{scale} step {t}")
    lib_t, ref_t = sbs.lib.telemetry(), sbs.ref.telemetry()
    for name in ("V", "a", "c", "e", "gamma1", "gamma2"):
        np.testing.assert_allclose(lib_t[name], ref_t[name], rtol=1e-4, atol=1e-10, err_msg=name)
    for name in ("fallbacks", "clamps", "skips"):
        assert lib_t[name] == ref_t[name], name
    fallbacks = sum(lib_t["fallbacks"])
    # The comparison must have exercised the 2-D oracle, not only the 1-D fallback.
    assert fallbacks < 120 * 3, "every step fell back: the 2-D path was never compared"
    assert max(sbs.lib.momentum) > 0.0


@pytest.mark.parametrize("algorithm", ["auto-sgd", "auto-adam", "auto-adagrad"])
def test_defaults_match_reference(algorithm):
    rng = np.random.default_rng(8)
    sbs = SideBySide(algorithm, SHAPES, groups=GROUPS, seed=4)
    for t in range(40):
        rows, grads = batch(rng, sbs.p64)
        sbs.step(**inputs("sum_sq", "sample", rows, grads))
        sbs.assert_close(1e-5, f"{algorithm} defaults step {t}")
        sbs.assert_rates_close(1e-4, f"{algorithm} defaults step {t}")
    assert sbs.lib.get_option("nu") == (0.99999 if algorithm == "auto-adam" else 0.9)


def test_input_forms_agree():
    """Σg² and the N×len matrix, in both scale conventions, give the same steps (float32 rounding)."""
    rng = np.random.default_rng(11)
    params = {key: [np.ones(s, np.float32) for s in SHAPES] for key in ("sum_sq/sample", "per_sample/sample", "sum_sq/mean", "per_sample/mean")}
    opts = {key: autolr.Optimizer("auto-adam", params[key], groups=GROUPS) for key in params}
    for _ in range(50):
        rows, grads = batch(rng, [p.astype(np.float64) for p in params["sum_sq/sample"]])
        for key, opt in opts.items():
            form, scale = key.split("/")
            kw = inputs(form, scale, rows, grads)
            opt.step(**{k: ([np.asarray(a, np.float32) for a in v] if isinstance(v, list) else v) for k, v in kw.items()})
    ref = params["sum_sq/sample"]
    for key, ps in params.items():
        for a, b in zip(ps, ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=key)


def test_noise_estimate_is_unbiased_for_linear_regression():
    """Linear regression y = x·w* + σ ε with x ~ N(0, I): at w, g_i = x_i (x_i·(w − w*) − σ ε_i).
    At w = w* the per-sample gradients are σ ε_i x_i, whose variance per coordinate is σ²,
    so E[V] = Σ_j D_j σ² / N with D = 1 (auto-sgd) = p σ² / N. The mean of V over many batches
    must lie within 3 standard errors of that."""
    rng = np.random.default_rng(5)
    p, n, sigma, batches = 20, 16, 0.7, 400
    w_star = rng.standard_normal(p)
    values = []
    for _ in range(batches):
        w = [w_star.astype(np.float32)]
        opt = autolr.Optimizer("auto-sgd", w)
        x = rng.standard_normal((n, p))
        resid = x @ (w[0].astype(np.float64) - w_star) - sigma * rng.standard_normal(n)
        rows = (x * resid[:, None]).astype(np.float32)
        opt.step([rows.mean(axis=0)], per_sample=[rows], batch_size=n)
        values.append(opt.telemetry()["V"][0])
    expected = p * sigma**2 / n
    mean, se = np.mean(values), np.std(values, ddof=1) / np.sqrt(batches)
    assert abs(mean - expected) < 3 * se, f"mean V {mean:.5f} vs E[V] {expected:.5f} (se {se:.5f})"


def test_noise_precision_when_mean_dominates():
    """Signal-to-noise 1e3: V's relative error against a float64 computation from the same
    float32 inputs stays below 1e-3 (the per-sample matrix is reduced without cancellation)."""
    rng = np.random.default_rng(9)
    n, p = 32, 5000
    mean = rng.uniform(1.0, 2.0, p)
    rows = (mean * (1.0 + 1e-3 * rng.standard_normal((n, p)))).astype(np.float32)
    g = rows.astype(np.float64).mean(axis=0).astype(np.float32)
    opt = autolr.Optimizer("auto-sgd", [np.zeros(p, np.float32)])
    opt.step([g], per_sample=[rows], batch_size=n)
    r64, g64 = rows.astype(np.float64), g.astype(np.float64)
    exact = np.sum((r64 * r64).sum(axis=0) - n * g64 * g64) / (n * (n - 1))
    v = opt.telemetry()["V"][0]
    assert abs(v - exact) / exact < 1e-3, f"V {v} vs float64 {exact}"


def noisy_quadratic_run(algorithm, steps, seed, p=50, n=16, noise=2.0, **options):
    """0.5·Σ h θ² with per-sample gradients h θ + noise. Returns the final loss, the learning
    rate after each step and the oracle rate ‖ḡ‖²/E‖g‖² = ‖hθ‖² / (‖hθ‖² + p σ²/N) at each step."""
    rng = np.random.default_rng(seed)
    h = np.linspace(0.2, 1.0, p)
    theta = [np.full(p, 3.0, np.float32)]
    opt = autolr.Optimizer(algorithm, theta, **options)
    lrs, oracle = [], []
    for _ in range(steps):
        true_grad = h * theta[0].astype(np.float64)
        oracle.append(true_grad @ true_grad / (true_grad @ true_grad + p * noise**2 / n))
        rows = (true_grad + noise * rng.standard_normal((n, p))).astype(np.float32)
        per_sample = dict(per_sample=[rows], batch_size=n) if algorithm.startswith("auto") else {}
        opt.step([rows.mean(axis=0)], **per_sample)
        lrs.append(opt.lr[0])
    th = theta[0].astype(np.float64)
    return 0.5 * np.sum(h * th * th), np.array(lrs), np.array(oracle)


def test_auto_sgd_follows_the_oracle_against_a_fixed_grid():
    """On a noisy quadratic (p = 1000, h from 0.2 to 1, N = 16, σ = 2, 300 steps, 5 seeds),
    auto-sgd's α follows the oracle ‖ḡ‖²/E‖g‖² down as the signal vanishes, from above, and its
    final loss is below the best of a 9-point fixed-lr SGD grid (1e-3 … 1) over the same steps.

    Measured on this code: final loss 1.64 (median) against 3.57 for the best grid point (lr
    0.032); mean |α − oracle| after a 30-step warm-up 0.086 (tolerance asserted: 0.1); from step
    10 to 300 the oracle falls 33× and α falls 6×, so α ends 7× above the oracle (asserted: 1 to
    10×). With p = 50 the same run loses to the grid (0.207 vs 0.183): a and V are sums over the
    p coordinates, their noise shrinks like 1/√p, and below a few hundred coordinates that noise,
    clamped one-sidedly at γ_max, keeps α from falling (README, "AutoOpt on a noisy quadratic")."""
    steps, seeds, p = 300, range(5), 1000
    runs = [noisy_quadratic_run("auto-sgd", steps, seed, p=p) for seed in seeds]
    lrs = np.mean([r[1] for r in runs], axis=0)
    oracle = np.mean([r[2] for r in runs], axis=0)
    gap = np.mean(np.abs(lrs[30:] - oracle[30:]))
    assert gap < 0.1, f"mean |α − oracle| = {gap:.3f}"
    assert lrs[10] > 3 * lrs[-1], "α did not fall as the signal vanished"
    tail_ratio = np.mean(lrs[-50:]) / np.mean(oracle[-50:])
    assert 1.0 <= tail_ratio <= 10.0, f"α / oracle over the last 50 steps = {tail_ratio:.2f}"
    auto_loss = np.median([r[0] for r in runs])
    grid = np.logspace(-3, 0, 9)
    grid_losses = np.array([np.median([noisy_quadratic_run("sgd", steps, seed, p=p, lr=lr)[0] for seed in seeds]) for lr in grid])
    assert auto_loss < grid_losses.min(), f"auto-sgd {auto_loss:.4f} vs best fixed {grid_losses.min():.4f}: {grid_losses}"


def test_errors_leave_everything_untouched():
    p = [np.ones(4, np.float32), np.ones(3, np.float32)]
    opt = autolr.Optimizer("auto-sgd", p)
    g = [np.ones(4, np.float32), np.ones(3, np.float32)]
    s = [np.full(4, 2.0, np.float32), np.full(3, 2.0, np.float32)]
    opt.step(g, sum_sq=s, batch_size=2)
    before = [x.copy() for x in p], opt.state_dict()
    cases = [
        (dict(), "needs per-sample data"),
        (dict(sum_sq=s, batch_size=1), "N ≥ 2"),
        (dict(sum_sq=[np.ones(4, np.float32), np.full(3, np.nan, np.float32)], batch_size=4), "tensor 1"),
        (dict(per_sample=[np.ones((2, 4), np.float32), np.ones((3, 3), np.float32)]), "shape"),
    ]
    for kw, words in cases:
        with pytest.raises(autolr.Error) as info:
            opt.step(g, **kw)
        assert words in str(info.value), str(info.value)
        assert all(np.array_equal(a, b) for a, b in zip(p, before[0]))
        assert opt.state_dict() == before[1]


def test_state_is_d_and_base_moments_only():
    """Checkpoint size grows by exactly (1 + base slots) floats per parameter element."""
    sizes = {}
    for algorithm in ("auto-sgd", "auto-adam", "auto-adagrad"):
        small = autolr.Optimizer(algorithm, [np.zeros(10, np.float32)]).state_dict()
        large = autolr.Optimizer(algorithm, [np.zeros(1010, np.float32)]).state_dict()
        sizes[algorithm] = (len(large) - len(small)) / 1000 / 4
    assert sizes == {"auto-sgd": 1.0, "auto-adam": 2.0, "auto-adagrad": 2.0}


@pytest.mark.parametrize("algorithm", ["auto-sgd", "auto-adam", "auto-adagrad"])
def test_checkpoint_round_trip_is_bit_exact(algorithm):
    rng = np.random.default_rng(2)
    data = [batch(rng, [np.ones(s) for s in SHAPES]) for _ in range(30)]

    def run(split):
        params = [np.ones(s, np.float32) for s in SHAPES]
        opt = autolr.Optimizer(algorithm, params, groups=GROUPS)
        for t, (rows, grads) in enumerate(data):
            if t == split:
                state = opt.state_dict()
                opt = autolr.Optimizer(algorithm, params, groups=GROUPS)
                opt.load_state_dict(state)
            kw = inputs("sum_sq", "sample", rows, grads)
            opt.step(**{k: ([np.asarray(a, np.float32) for a in v] if isinstance(v, list) else v) for k, v in kw.items()})
        return b"".join(p.tobytes() for p in params), opt.lr, opt.momentum

    assert run(None) == run(13)

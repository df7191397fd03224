"""Self-checks of reference.py by independent routes (hand numbers, np.var, closed forms).

Run:  python -m pytest tests/python/test_reference_selfcheck.py
"""

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402


def _copy(xs):
    return [np.array(x, dtype=np.float64, copy=True) for x in xs]


# ---------------------------------------------------------------------------
# fixed-rate bases: hand-written numbers
# ---------------------------------------------------------------------------
def test_sgd_two_steps_hand_numbers():
    opt = ref.make("sgd", [(2,)], lr=0.1, weight_decay=0.1)
    th = [np.array([1.0, -2.0])]
    opt.step(th, [np.array([0.5, 0.5])])
    # θ - 0.1 (g + 0.1 θ) = [1 - 0.1*0.6, -2 - 0.1*0.3]
    np.testing.assert_allclose(th[0], [0.94, -2.03], rtol=0, atol=1e-15)
    opt.step(th, [np.array([-1.0, 2.0])])
    np.testing.assert_allclose(th[0], [1.0306, -2.2097], rtol=0, atol=1e-15)


def test_adam_two_steps_hand_numbers():
    opt = ref.make("adam", [(1,)], lr=0.1)
    th = [np.array([1.0])]
    opt.step(th, [np.array([2.0])])
    # m = 0.2, v = 0.004, m̂ = 2, v̂ = 4
    x1 = 1.0 - 0.1 * 2.0 / (2.0 + 1e-8)
    np.testing.assert_allclose(th[0], [x1], rtol=1e-15)
    opt.step(th, [np.array([-1.0])])
    # m = 0.9*0.2 - 0.1 = 0.08 ; v = 0.999*0.004 + 0.001 = 0.004996
    mhat = 0.08 / 0.19
    vhat = 0.004996 / 0.001999
    x2 = x1 - 0.1 * mhat / (math.sqrt(vhat) + 1e-8)
    np.testing.assert_allclose(th[0], [x2], rtol=1e-14)
    assert abs(x2 - 0.8733663) < 1e-7    # by hand: 0.9 - 0.1*0.421053/1.580902


def test_adamw_decoupled_vs_adam_coupled():
    # one step from θ=1, g=0: adam (coupled) sees g = λθ; adamw shrinks θ by (1-ηλ)
    a = ref.make("adam", [(1,)], lr=0.1, weight_decay=0.5)
    w = ref.make("adamw", [(1,)], lr=0.1, weight_decay=0.5)
    ta, tw = [np.array([1.0])], [np.array([1.0])]
    a.step(ta, [np.array([0.0])])
    w.step(tw, [np.array([0.0])])
    np.testing.assert_allclose(ta[0], [1.0 - 0.1 * 0.5 / (0.5 + 1e-8)], rtol=1e-15)
    np.testing.assert_allclose(tw[0], [1.0 - 0.1 * 0.5], rtol=1e-15)


def test_momentum_torch_convention():
    g = [np.array([1.0])]
    # plain: buf1 = g = 1 ; buf2 = 0.9 + 1 = 1.9
    o = ref.make("momentum", [(1,)], lr=0.1, momentum=0.9)
    th = [np.array([0.0])]
    o.step(th, g); assert th[0][0] == pytest.approx(-0.1, abs=1e-16)
    o.step(th, g); assert th[0][0] == pytest.approx(-0.29, abs=1e-15)
    # nesterov: g + μ buf = 1.9, then 1 + 0.9*1.9 = 2.71
    o = ref.make("momentum", [(1,)], lr=0.1, momentum=0.9, nesterov=True)
    th = [np.array([0.0])]
    o.step(th, g); assert th[0][0] == pytest.approx(-0.19, abs=1e-15)
    o.step(th, g); assert th[0][0] == pytest.approx(-0.19 - 0.271, abs=1e-15)
    # dampening: first buffer is g itself (not (1-d) g); then 0.9*1 + 0.5*1
    o = ref.make("momentum", [(1,)], lr=0.1, momentum=0.9, dampening=0.5)
    th = [np.array([0.0])]
    o.step(th, g); assert th[0][0] == pytest.approx(-0.1, abs=1e-16)
    o.step(th, g); assert th[0][0] == pytest.approx(-0.24, abs=1e-15)
    assert o.momentum == [0.9]


def test_adagrad_rmsprop_hand_numbers():
    o = ref.make("adagrad", [(1,)], lr=0.5, eps=0.0 + 1e-10)
    th = [np.array([0.0])]
    o.step(th, [np.array([3.0])])       # s = 9 -> 0.5*3/3
    o.step(th, [np.array([4.0])])       # s = 25 -> 0.5*4/5
    assert th[0][0] == pytest.approx(-0.5 - 0.4, abs=1e-9)
    o = ref.make("rmsprop", [(1,)], lr=0.5, alpha=0.75, eps=1e-8)
    th = [np.array([0.0])]
    o.step(th, [np.array([2.0])])       # s = 0.25*4 = 1 -> 0.5*2/1
    assert th[0][0] == pytest.approx(-1.0, abs=1e-7)


def test_group_options_override_lr_and_wd():
    o = ref.make("sgd", [(1,), (1,)], lr=0.1, group_options={1: {"lr": 0.2, "weight_decay": 1.0}})
    th = [np.array([1.0]), np.array([1.0])]
    o.step(th, [np.array([1.0]), np.array([1.0])])
    assert th[0][0] == pytest.approx(0.9) and th[1][0] == pytest.approx(0.6)
    assert o.lr == [0.1, 0.2]


# ---------------------------------------------------------------------------
# AutoOpt
# ---------------------------------------------------------------------------
def _ps_data(rng, N, shapes):
    ps = [rng.normal(size=(N,) + s) + 0.3 for s in shapes]
    g = [p.mean(axis=0) for p in ps]
    S = [np.sum(p * p, axis=0) for p in ps]
    return ps, g, S


@pytest.mark.parametrize("alg", ["auto-sgd", "auto-adam", "auto-adagrad"])
def test_autoopt_noise_matches_np_var(alg):
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (5,)]
    N = 7
    ps, g, S = _ps_data(rng, N, shapes)
    opt = ref.make(alg, shapes, groups=[0, 0])
    th = [np.zeros(s) for s in shapes]
    opt.step(th, g, sum_sq=S, batch_size=N)
    # independent D after one step
    if alg == "auto-sgd":
        D = [np.ones(s) for s in shapes]
    elif alg == "auto-adam":      # v = (1-β2) g²,  v/(1-β2) = g²
        D = [1.0 / (np.abs(x) + 1e-8) for x in g]
    else:                         # s = g²
        D = [1.0 / (np.abs(x) + 1e-10) for x in g]
    V = sum(np.sum(d * np.var(p, axis=0, ddof=1)) for d, p in zip(D, ps)) / N
    tel = opt.telemetry()
    assert tel["V"][0] == pytest.approx(V, rel=1e-12)
    a = sum(np.sum(d * x * x) for d, x in zip(D, g))
    assert tel["a"][0] == pytest.approx(a, rel=1e-12)
    # t = 1: d = 0 -> fallback, γ_O = (min(V/a, γmax), 0)
    assert tel["fallbacks"] == [1.0] and tel["det"][0] == 0.0
    g1 = min(V / a, 0.999)
    assert tel["gamma1_oracle"][0] == pytest.approx(g1, rel=1e-12)
    gE1 = 0.1 * g1 + 0.9 * 0.999
    assert tel["gamma1"][0] == pytest.approx(gE1, rel=1e-12)
    assert opt.lr[0] == pytest.approx(1 - gE1, rel=1e-10) and opt.momentum == [0.0]
    # θ = -D (1-γ1) g
    for t_, d, x in zip(th, D, g):
        np.testing.assert_allclose(t_, -d * (1 - gE1) * x, rtol=1e-12)


@pytest.mark.parametrize("alg", ["auto-sgd", "auto-adam", "vsgd-l", "vsgd-g"])
def test_per_sample_matrix_sum_sq_and_mean_scale_agree(alg):
    shapes = [(3, 2), (4,)]
    N = 5
    kw = {"curvature": [np.full(s, 2.0) for s in shapes]} if alg.startswith("vsgd") else {}
    extra = {"n0": 2} if alg.startswith("vsgd") else {}
    runs = []
    for mode in ("matrix", "sum_sq", "matrix_mean", "sum_sq_mean"):
        r = np.random.default_rng(1)
        opt = ref.make(alg, shapes, **extra)
        th = [np.ones(s) for s in shapes]
        for _ in range(4):
            ps, g, S = _ps_data(r, N, shapes)
            if mode == "matrix":
                opt.step(th, g, per_sample=ps, **kw)
            elif mode == "sum_sq":
                opt.step(th, g, sum_sq=S, batch_size=N, **kw)
            elif mode == "matrix_mean":
                opt.step(th, g, per_sample=[p / N for p in ps], per_sample_scale="mean", **kw)
            else:
                opt.step(th, g, sum_sq=[s / N**2 for s in S], batch_size=N,
                         per_sample_scale="mean", **kw)
        runs.append((th, opt.telemetry(), opt.lr))
    for th, tel, lr in runs[1:]:
        for a, b in zip(runs[0][0], th):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(runs[0][2], lr, rtol=1e-11)


def test_autoopt_2d_oracle_matches_linear_solve():
    rng = np.random.default_rng(3)
    p, N = 6, 32
    opt = ref.make("auto-sgd", [(p,)], nu=0.0)
    th = [np.zeros(p)]
    mean = rng.normal(size=p)
    found = False
    for t in range(40):
        ps = mean + 0.5 * rng.normal(size=(N, p))
        g = ps.mean(0)
        d_prev = opt.d[0].copy()  # ĝ_{t-1}: state read only to build the independent solve
        fb = opt.telemetry()["fallbacks"][0]
        opt.step(th, [g], per_sample=[ps])
        tel = opt.telemetry()
        if t > 0 and tel["fallbacks"][0] == fb:
            V = np.sum(np.var(ps, axis=0, ddof=1)) / N
            G = np.stack([g, g - d_prev], axis=1)        # eq. 15
            A = G.T @ G                                    # eq. 24, D = 1
            gam = np.linalg.solve(A, [V, V])               # eq. 25
            assert tel["gamma1_oracle"][0] == pytest.approx(gam[0], rel=1e-9)
            assert tel["gamma2_oracle"][0] == pytest.approx(gam[1], rel=1e-9)
            # ν = 0: γ_E = γ_O; α = 1-γ1, β = γ2/α
            assert opt.lr[0] == pytest.approx(1 - gam[0], rel=1e-9)
            assert opt.momentum[0] == pytest.approx(gam[1] / (1 - gam[0]), rel=1e-9)
            found = True
        mean *= 0.9
    assert found, "no step used the 2-D solution"


def test_autoopt_skip_on_zero_gradient():
    opt = ref.make("auto-adam", [(3,)])
    th = [np.array([1.0, 2.0, 3.0])]
    ps = np.zeros((4, 3))
    opt.step(th, [np.zeros(3)], per_sample=[ps])
    tel = opt.telemetry()
    assert tel["skips"] == [1.0] and tel["fallbacks"] == [0.0]
    np.testing.assert_array_equal(th[0], [1.0, 2.0, 3.0])
    assert tel["gamma1"] == [0.999] and tel["gamma2"] == [0.0]


def test_autoopt_errors():
    opt = ref.make("auto-sgd", [(2,)])
    th, g = [np.zeros(2)], [np.ones(2)]
    with pytest.raises(ValueError):
        opt.step(th, g)                                            # no per-sample data
    with pytest.raises(ValueError):
        opt.step(th, g, per_sample=[np.ones((1, 2))])              # N < 2
    with pytest.raises(ValueError):
        opt.step(th, g, sum_sq=[np.ones(2)])                       # no batch_size
    with pytest.raises(ValueError):
        ref.make("auto-sgd", [(2,)], lr=0.1)
    with pytest.raises(ValueError):
        ref.make("auto-sgd", [(2,)], weight_decay=0.1)


def test_autoopt_gamma_bounds_over_run():
    rng = np.random.default_rng(5)
    opt = ref.make("auto-sgd", [(10,), (3,)], groups=[0, 1], nu=0.5)
    th = [np.ones(10), np.ones(3)]
    for _ in range(50):
        ps = [th[0] + rng.normal(size=(8, 10)), th[1] + rng.normal(size=(8, 3))]
        opt.step(th, [p.mean(0) for p in ps], per_sample=ps)
        for a, b in zip(opt.lr, opt.momentum):
            assert 1e-3 - 1e-15 <= a <= 1 and 0 <= b < 1


# ---------------------------------------------------------------------------
# vSGD
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["vsgd-l", "vsgd-g", "vsgd-b"])
def test_vsgd_slow_start_leaves_params(alg):
    rng = np.random.default_rng(7)
    shapes = [(3,), (2, 2)]
    n0 = 5
    opt = ref.make(alg, shapes, n0=n0, slow_start_c=3.0)
    th = [rng.normal(size=s) for s in shapes]
    th0 = _copy(th)
    for t in range(n0):
        opt.step(th, [rng.normal(size=s) for s in shapes], curvature=[np.ones(s) for s in shapes])
        for a, b in zip(th, th0):
            np.testing.assert_array_equal(a, b)
        assert opt.lr == [0.0, 0.0] and opt.telemetry()["slow_start"] == [1.0, 1.0]
    opt.step(th, [rng.normal(size=s) for s in shapes], curvature=[np.ones(s) for s in shapes])
    assert opt.telemetry()["slow_start"] == [0.0, 0.0]
    assert any(not np.array_equal(a, b) for a, b in zip(th, th0))


def test_vsgd_l_first_regular_step_by_hand():
    n0, C = 3, 4.0
    gs = [np.array([1.0, -2.0]), np.array([3.0, 0.0]), np.array([2.0, 1.0]), np.array([0.5, -1.0])]
    hs = [np.array([2.0, 0.0])] * 4                 # h = 0 is floored at 1e-9
    opt = ref.make("vsgd-l", [(2,)], n0=n0, slow_start_c=C)
    th = [np.zeros(2)]
    for g, h in zip(gs, hs):
        opt.step(th, [g], curvature=[h])
    G = np.array(gs[:3])
    gbar = G.mean(0); vbar = C * (G**2).mean(0); hbar = np.array([2.0, 1e-9])
    g = gs[3]
    gbar = 0.5 * gbar + 0.5 * g
    vbar = 0.5 * vbar + 0.5 * g * g
    hbar = 0.5 * hbar + 0.5 * np.array([2.0, 1e-9])
    rho = gbar**2 / vbar
    eta = rho / hbar
    np.testing.assert_allclose(th[0], -eta * g, rtol=1e-13)
    tau = (1 - rho) * 2 + 1
    tel = opt.telemetry()
    assert tel["tau_min"][0] == pytest.approx(tau.min()) and tel["tau_max"][0] == pytest.approx(tau.max())
    assert opt.lr[0] == pytest.approx(np.median(eta))


def test_vsgd_g_minibatch_form_by_hand():
    # one regular step after n0 = 1 slow-start step, with per-sample data (n = N)
    N, C = 4, 2.0
    rng = np.random.default_rng(11)
    shapes = [(3,), (2,)]
    ps1 = [rng.normal(size=(N,) + s) for s in shapes]
    ps2 = [rng.normal(size=(N,) + s) for s in shapes]
    h = [np.array([1.0, 3.0, 2.0]), np.array([0.5, 4.0])]
    opt = ref.make("vsgd-g", shapes, groups=[0, 1], n0=1, slow_start_c=C)
    th = [np.zeros(s) for s in shapes]
    for ps in (ps1, ps2):
        opt.step(th, [p.mean(0) for p in ps], per_sample=ps, curvature=h)
    g1 = [p.mean(0) for p in ps1]; x1 = [np.mean(p * p, 0) for p in ps1]
    g2 = [p.mean(0) for p in ps2]; x2 = [np.mean(p * p, 0) for p in ps2]
    gbar = [0.5 * a + 0.5 * b for a, b in zip(g1, g2)]
    l = 0.5 * C * sum(x.sum() for x in x1) + 0.5 * sum(x.sum() for x in x2)
    sg = sum((b * b).sum() for b in gbar)
    rho = sg / (l / N + (N - 1) / N * sg)
    eta = rho / 4.0                                  # h⁺ = max hbar = 4 (h constant)
    for t_, g in zip(th, g2):
        np.testing.assert_allclose(t_, -eta * g, rtol=1e-13)
    assert opt.lr == pytest.approx([eta, eta])
    assert opt.telemetry()["tau_min"][0] == pytest.approx((1 - rho) * 2 + 1)


def test_vsgd_b_single_group_equals_g():
    shapes = [(3,), (4,)]
    out = []
    for alg in ("vsgd-g", "vsgd-b"):
        r = np.random.default_rng(2)
        opt = ref.make(alg, shapes, groups=[0, 0], n0=2)
        th = [np.ones(s) for s in shapes]
        for _ in range(6):
            opt.step(th, [r.normal(size=s) for s in shapes], curvature=[np.abs(r.normal(size=s)) for s in shapes])
        out.append(th)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_vsgd_finite_difference_matches_exact_curvature_on_quadratic():
    hdiag = [np.array([1.0, 4.0, 0.25]), np.array([[2.0, 3.0]])]
    shift = [np.array([0.1, -0.2, 0.3]), np.array([[0.05, -0.4]])]

    def grad(ps):
        return [h * p + s for h, p, s in zip(hdiag, ps, shift)]

    shapes = [(3,), (1, 2)]
    for alg in ("vsgd-l", "vsgd-b"):
        a = ref.make(alg, shapes, n0=2)
        b = ref.make(alg, shapes, n0=2)
        ta = [np.array([1.0, -1.0, 2.0]), np.array([[0.5, 1.5]])]
        tb = _copy(ta)
        for _ in range(8):
            a.step(ta, grad(ta), curvature=hdiag)
            b.step(tb, grad(tb), grad_closure=grad)
        for x, y in zip(ta, tb):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-12)


def test_vsgd_needs_curvature_source():
    opt = ref.make("vsgd-l", [(2,)])
    with pytest.raises(ValueError):
        opt.step([np.zeros(2)], [np.ones(2)])


def test_vsgd_tau_at_least_one_and_d10_option():
    rng = np.random.default_rng(4)
    opt = ref.make("vsgd-l", [(50,)], n0=3, slow_start_c="d/10")
    assert opt.C == 5.0
    th = [np.zeros(50)]
    for t in range(1, 31):
        opt.step(th, [rng.normal(size=50) + 1.0], curvature=[np.ones(50)])
        if t >= 3:                       # τ exists from the end of step n0 on
            assert opt.telemetry()["tau_min"][0] >= 1.0


# ---------------------------------------------------------------------------
# TLR
# ---------------------------------------------------------------------------
def test_tlr_growth_bounded_by_1_plus_c():
    rng = np.random.default_rng(9)
    c = 0.25
    opt = ref.make("tlr", [(5,)], lr=0.01, c=c)
    th = [np.zeros(5)]
    a_prev = opt.lr[0]
    for _ in range(200):
        opt.step(th, [rng.normal(size=5) + 0.5])
        a = opt.lr[0]
        assert a <= a_prev * (1 + c) * (1 + 1e-15)
        assert a >= a_prev * 0.75 * (1 - 1e-15)
        a_prev = a


def test_tlr_identical_gradients_hit_cap_exactly():
    opt = ref.make("tlr", [(3,)], lr=0.01, c=0.25)
    th = [np.zeros(3)]
    g = [np.array([1.0, 2.0, -1.0])]
    opt.step(th, g)                          # t = 1: no update
    assert opt.lr == [0.01] and opt.telemetry()["cap_hits"] == [0.0]
    np.testing.assert_allclose(th[0], -0.01 * g[0], rtol=1e-15)
    opt.step(th, g)                          # ip = nn -> den = ip/c -> α (1 + c)
    assert opt.lr[0] == pytest.approx(0.0125, rel=1e-15)
    assert opt.telemetry()["cap_hits"] == [1.0]
    np.testing.assert_allclose(th[0], -0.0225 * g[0], rtol=1e-14)


def test_tlr_opposite_gradients_shrink_by_quarter_bound():
    opt = ref.make("tlr", [(2,)], lr=1.0)
    th = [np.zeros(2)]
    g = np.array([1.0, 1.0])
    opt.step(th, [g]); opt.step(th, [-g])
    # ip = -2, nn = 2: den = max(16, -8) = 16 -> α (1 - 2/16)
    assert opt.lr[0] == pytest.approx(0.875, rel=1e-15)
    tel = opt.telemetry()
    assert tel["ip"] == [-2.0] and tel["den"] == [16.0]
    # zero gradients: den = 0 -> unchanged
    opt.step(th, [np.zeros(2)]); opt.step(th, [np.zeros(2)])
    assert opt.lr[0] == pytest.approx(0.875, rel=1e-15)


def test_tlr_window_uses_summed_steps():
    rng = np.random.default_rng(12)
    K = 3
    opt = ref.make("tlr", [(4,)], lr=0.05, window=K)
    th = [np.zeros(4)]
    gs = [rng.normal(size=4) + 0.2 for _ in range(2 * K)]
    for g in gs:
        opt.step(th, [g])
    G1, G2 = sum(gs[:K]), sum(gs[K:])
    ip, nn = G2 @ G1, G2 @ G2
    den = max(4 * (nn - ip), ip / 0.25)
    assert opt.telemetry()["ip"][0] == pytest.approx(ip, rel=1e-10)
    assert opt.lr[0] == pytest.approx(0.05 * (1 + ip / den), rel=1e-10)


def test_tlr_per_group_and_momentum():
    opt = ref.make("tlr", [(1,), (1,)], per_group=True, lr=0.1, momentum=0.5,
                   group_options={1: {"lr": 0.2}})
    th = [np.zeros(1), np.zeros(1)]
    g = [np.array([1.0]), np.array([1.0])]
    opt.step(th, g); opt.step(th, g)
    # both groups: α ×1.25 at t=2; buffer 1 then 1.5
    assert opt.lr == pytest.approx([0.125, 0.25])
    assert th[0][0] == pytest.approx(-0.1 - 0.125 * 1.5)
    assert th[1][0] == pytest.approx(-0.2 - 0.25 * 1.5)
    assert opt.momentum == [0.5, 0.5]


# ---------------------------------------------------------------------------
# GI
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["sgd", "momentum", "adam", "rmsprop", "adagrad"])
def test_gi_without_fstar_moves_like_base(base):
    rng = np.random.default_rng(13)
    shapes = [(3,), (2,)]
    eta = 0.01
    gi = ref.make("gi", shapes, base=base, lr=eta)
    bo = {"momentum": 0.5} if base == "momentum" else {"beta1": 0.5} if base == "adam" else {}
    b = ref.make(base, shapes, lr=eta, **bo)
    t1 = [rng.normal(size=s) for s in shapes]
    t2 = _copy(t1)
    for _ in range(5):
        g = [rng.normal(size=s) for s in shapes]
        before = _copy(t1)
        # f+ = f - φ/2 * 2 would make ρ = 2 > hi; use f+ = f - φ/2 (ρ = 1): η unchanged
        f = 3.0

        def closure(t1=t1, before=before, g=g, f=f):
            phi = sum(float(np.sum(gg * (bb - pp))) for gg, bb, pp in zip(g, before, t1))
            return f - phi / 2.0
        gi.step(t1, g, loss=f, closure=closure)
        b.step(t2, g)
        for x, y in zip(t1, t2):
            np.testing.assert_array_equal(x, y)
        assert gi.lr == [eta, eta] and gi.telemetry()["eta"] == [eta, eta]
        assert gi.telemetry()["rho"][0] == pytest.approx(1.0, rel=1e-12)


def test_gi_eta_adaptation_rules():
    shapes = [(2,)]
    gi = ref.make("gi", shapes, base="sgd", lr=0.1)
    th = [np.array([1.0, 1.0])]
    g = [np.array([1.0, 1.0])]                  # φ = 0.1 * 2 = 0.2
    gi.step(th, g, loss=1.0, closure=lambda: 1.0 - 0.2)       # ρ = 0.2/0.1 = 2 > 4/3
    assert gi.telemetry()["eta"][0] == pytest.approx(0.12)
    assert gi.lr == [0.1]                                      # multiplier used this step
    assert gi.telemetry()["phi"][0] == pytest.approx(0.2)
    gi.step(th, g, loss=1.0, closure=lambda: 1.0)             # ρ = 0 < 3/4
    assert gi.telemetry()["eta"][0] == pytest.approx(0.06)
    gi.step(th, g, loss=1.0, closure=lambda: float("nan"))    # f+ non-finite -> down
    assert gi.telemetry()["eta"][0] == pytest.approx(0.03)
    before = th[0].copy()
    gi.step(th, [np.array([0.0, 0.0])], loss=1.0, closure=lambda: 0.0)   # φ = 0 -> skip
    tel = gi.telemetry()
    assert tel["skipped"][0] == 1.0 and tel["eta"][0] == pytest.approx(0.03)
    np.testing.assert_array_equal(th[0], before)


def test_gi_fstar_polyak_step_and_adapt_every():
    gi = ref.make("gi", [(2,)], base="sgd", lr=0.5, f_star=0.0, R=0.0, adapt_every=2)
    th = [np.array([2.0, 0.0])]
    g = [np.array([2.0, 0.0])]             # f = ½|θ|² = 2 ; v = 0.5 g ; φ = 2
    calls = []
    gi.step(th, g, loss=2.0, closure=lambda: calls.append(1) or 0.0)   # adapt step
    # Polyak: θ - v * 2*2/2 = θ - 2 v = θ - g  -> [0, 0]
    np.testing.assert_allclose(th[0], [0.0, 0.0], atol=1e-15)
    assert gi.lr == [pytest.approx(1.0)] and len(calls) == 1
    # ρ = (2 - 0)/(1) = 2 > hi -> η 0.6
    assert gi.telemetry()["eta"][0] == pytest.approx(0.6)
    # step 2 does not re-evaluate; with f_star set the loss is still needed
    with pytest.raises(ValueError):
        gi.step([np.array([1.0, 0.0])], [np.array([1.0, 0.0])])
    th = [np.array([1.0, 0.0])]
    gi2 = ref.make("gi", [(2,)], base="sgd", lr=0.5, adapt_every=2)
    gi2.step(th, [np.array([1.0, 0.0])], loss=0.5, closure=lambda: 0.4)
    gi2.step(th, [np.array([1.0, 0.0])])      # no loss, no closure needed (f_star unset)
    assert gi2.telemetry()["rho"][0] == 0.0


def test_gi_automatic_base_lr_multiplier():
    gi = ref.make("gi", [(3,)], base="tlr", lr=2.0, base_lr=0.01)
    th = [np.zeros(3)]
    g = [np.array([1.0, 0.0, 0.0])]
    gi.step(th, g, loss=1.0, closure=lambda: 1.0 - 0.02 / 2)   # φ = 2*0.01 = 0.02, ρ = 1
    assert gi.lr == [pytest.approx(0.02)]
    np.testing.assert_allclose(th[0], [-0.02, 0, 0], rtol=1e-15)


def test_gi_errors():
    gi = ref.make("gi", [(2,)])
    with pytest.raises(ValueError):
        gi.step([np.zeros(2)], [np.ones(2)], closure=lambda: 0.0)   # no loss
    with pytest.raises(ValueError):
        gi.step([np.zeros(2)], [np.ones(2)], loss=1.0)              # no closure
    with pytest.raises(ValueError):
        ref.make("gi", [(2,)], base="gi")
    with pytest.raises(ValueError):
        ref.make("gi", [(2,)], group_options={0: {"lr": 0.1}})


# ---------------------------------------------------------------------------
# propose() == step()
# ---------------------------------------------------------------------------
CASES = [
    ("sgd", {"weight_decay": 0.01}), ("momentum", {"nesterov": True}), ("adam", {}),
    ("adamw", {"weight_decay": 0.1}), ("adagrad", {}), ("rmsprop", {}),
    ("auto-sgd", {}), ("auto-adam", {}), ("auto-adagrad", {}),
    ("vsgd-l", {"n0": 2}), ("vsgd-g", {"n0": 2}), ("vsgd-b", {"n0": 2}),
    ("tlr", {"momentum": 0.8, "weight_decay": 5e-4}), ("tlr", {"window": 2, "per_group": True}),
    ("gi", {"base": "adam"}), ("gi", {"base": "auto-sgd"}), ("gi", {"base": "vsgd-l", "n0": 1}),
]


@pytest.mark.parametrize("alg,opts", CASES)
def test_propose_equals_step(alg, opts):
    shapes = [(3, 2), (4,)]
    a = ref.make(alg, shapes, groups=[0, 1], **opts)
    b = ref.make(alg, shapes, groups=[0, 1], **opts)
    rng = np.random.default_rng(21)
    ta = [rng.normal(size=s) for s in shapes]
    tb = _copy(ta)
    N = 6
    for _ in range(5):
        ps = [rng.normal(size=(N,) + s) + 0.2 for s in shapes]
        g = [p.mean(0) for p in ps]
        kw = dict(per_sample=ps, curvature=[np.ones(s) for s in shapes], loss=1.0)
        a.step(ta, g, closure=lambda: 0.999, **kw)
        snap = _copy(tb)
        s = b.propose(tb, g, closure=lambda: 0.999, **kw)
        for x, y in zip(tb, snap):
            np.testing.assert_array_equal(x, y)          # propose does not touch params
        for p, si in zip(tb, s):
            p -= si
        for x, y in zip(ta, tb):
            np.testing.assert_array_equal(x, y)
        assert a.lr == b.lr and a.momentum == b.momentum
        assert a.telemetry() == b.telemetry()


def test_unknown_algorithm_and_option():
    with pytest.raises(ValueError):
        ref.make("lbfgs", [(1,)])
    with pytest.raises(ValueError):
        ref.make("sgd", [(1,)], bogus=1)
    with pytest.raises(ValueError):
        ref.make("momentum", [(1,)], momentum=0.0, nesterov=True)
    with pytest.raises(ValueError):
        ref.make("sgd", [(1,), (1,)], groups=[0, 2])

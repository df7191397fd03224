"""autolr.torch: the torch.optim adapter and SumGradSquared, against torch itself and brute force."""
import io

import numpy as np
import pytest

from conftest import import_torch

torch = import_torch()

import autolr  # noqa: E402
import autolr.torch as alt  # noqa: E402

nn = torch.nn
F = torch.nn.functional


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def data(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


@torch.no_grad()
def assert_params_close(a, b, rtol=1e-5, what=""):
    for i, (x, y) in enumerate(zip(a.parameters(), b.parameters())):
        scale = max(1.0, float(y.abs().max()))
        err = float((x - y).abs().max()) / scale
        assert err <= rtol, f"{what} tensor {i}: relative error {err:.3e}"


# -- fixed-rate rules against torch.optim ---------------------------------------------------------

@pytest.mark.parametrize("ours,theirs,options", [
    (alt.Adam, torch.optim.Adam, dict(lr=1e-2)),
    (alt.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, betas=None)),
    (alt.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (alt.SGD, torch.optim.SGD, dict(lr=0.1)),
], ids=["adam", "adam-l2", "adamw", "sgd"])
def test_matches_torch_step_by_step(ours, theirs, options):
    options = {k: v for k, v in options.items() if v is not None}
    a, b = mlp(), mlp()
    # two param groups with different rates, as torch param groups
    groups = lambda m, lr: [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": lr}]  # noqa: E731
    opt_a = ours(groups(a, 3e-3), **options)
    opt_b = theirs(groups(b, 3e-3), **options)
    for t in range(25):
        x, y = data(seed=t)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        assert_params_close(a, b, what=f"{ours.__name__} step {t}")
    assert opt_a.lr == pytest.approx([options["lr"], 3e-3])


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_a_gradient_that_is_not_contiguous_float32_gives_the_bits_of_one_that_is(layout):
    """A `.grad` the adapter must convert (a transposed view, a strided slice) steps as
    its contiguous float32 copy does: the converted copy lives until the library has read it
    (the plain step once handed the library a pointer to a freed copy)."""
    def run(convert):
        w, b = nn.Parameter(torch.zeros(64, 64)), nn.Parameter(torch.zeros(64))
        opt = alt.Adam([w, b], lr=0.1)
        for t in range(3):
            g = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64) / 4096.0 + t
            if convert:
                w.grad = {"transposed": lambda: g.t().contiguous().t(), "strided": lambda: torch.stack([g, g], -1)[..., 0]}[layout]()
                assert not w.grad.is_contiguous()
            else:
                w.grad = g.clone()
            b.grad = torch.ones(64)
            opt.step()
        return w.detach().clone()
    assert torch.equal(run(convert=True), run(convert=False))


def test_a_param_group_value_the_library_refuses_changes_no_option():
    """Options reach the library group by group; when one is refused, the ones sent before it
    are put back, so the refused step leaves options and state as they were."""
    a, b = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(3))
    opt = alt.Prodigy([{"params": [a]}, {"params": [b]}])
    a.grad, b.grad = torch.ones(4), torch.ones(3)
    opt.step()
    before, params = opt._core.state_dict(), (a.detach().clone(), b.detach().clone())
    opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = 0.5, float("nan")
    with pytest.raises(autolr.Error, match="lr"):
        opt.step()
    assert opt._core.state_dict() == before and opt._core.get_option("lr", group=0) == 1.0
    assert torch.equal(a, params[0]) and torch.equal(b, params[1])
    opt.param_groups[1]["lr"] = 0.5
    opt.step()
    assert opt._core.get_option("lr", group=0) == opt._core.get_option("lr", group=1) == 0.5


def test_params_are_updated_in_place_zero_copy():
    model = mlp()
    pointers = [p.data_ptr() for p in model.parameters()]
    opt = alt.SGD(model.parameters(), lr=0.5)
    before = params_of(model)
    x, y = data()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, p0, g, ptr in zip(model.parameters(), before, grads, pointers):
        assert p.data_ptr() == ptr
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, rtol=1e-6, atol=1e-7)


def test_lr_scheduler_drives_the_library_rate():
    model = mlp()
    opt = alt.Momentum(model.parameters(), lr=0.1, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    x, y = data()
    seen = []
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        seen.append(opt.lr[0])
        sched.step()
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    assert opt.momentum == pytest.approx([0.5])  # one torch param group = one autolr group


def test_errors_are_autolr_errors():
    with pytest.raises(autolr.Error, match="float32"):
        alt.SGD([nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    with pytest.raises(autolr.Error, match="unknown algorithm"):
        alt.AutoLR(mlp().parameters(), "nope")
    with pytest.raises(autolr.Error, match="no_such_option"):
        alt.Adam(mlp().parameters(), no_such_option=1.0)
    with pytest.raises(autolr.Error, match="CPU or CUDA tensors"):
        alt.SGD([nn.Parameter(torch.zeros(3, device="meta"))])
    model = mlp()
    opt = alt.SGD(model.parameters(), lr=0.1)
    with pytest.raises(autolr.Error, match="cannot be added"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    model[0].weight.data = model[0].weight.data.clone()  # re-allocated storage
    with pytest.raises(autolr.Error, match="re-allocated"):
        opt.step()


# -- SumGradSquared feeding the optimizer (its forms against brute force: test_torch_sum_sq.py) -----

def brute_force_sum_sq(model, loss_of, x, y):
    """Σ_i (g_i/N)² with g_i the gradient of sample i's own loss (the "mean" convention)."""
    n = x.shape[0]
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    for i in range(n):
        model.zero_grad()
        loss_of(model(x[i:i + 1]), y[i:i + 1]).backward()
        for s, p in zip(sums, model.parameters()):
            s += (p.grad.double() / n) ** 2
    return sums


def test_sum_grad_squared_feeds_auto_sgd_like_the_numpy_api():
    """AutoSGD through the adapter with SumGradSquared = autolr.Optimizer fed brute-force S."""
    a, b = mlp(7), mlp(7)
    opt_a = alt.AutoSGD(a.parameters())
    b_params = [p.detach().numpy() for p in b.parameters()]
    opt_b = autolr.Optimizer("auto-sgd", b_params, groups=[0] * len(b_params))  # one torch group
    sgs = alt.SumGradSquared(a)
    for t in range(8):
        x, y = data(seed=10 + t, n=10)
        expected = [s.float().numpy() for s in brute_force_sum_sq(b, F.cross_entropy, x, y)]
        b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        opt_b.step([p.grad.numpy().copy() for p in b.parameters()], sum_sq=expected, per_sample_scale="mean", batch_size=10)
        opt_a.zero_grad()
        F.cross_entropy(a(x), y).backward()
        opt_a.step(sum_sq=sgs)
        assert_params_close(a, b, rtol=1e-4, what=f"auto-sgd step {t}")
    assert opt_a.lr == pytest.approx(opt_b.lr, rel=1e-3)


# -- GI's closure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_backward_kwarg", [False, True])
def test_gi_closure_matches_the_two_phase_protocol(with_backward_kwarg):
    a, b = mlp(2), mlp(2)
    opt_a = alt.GI(a.parameters(), base="adam", lr=1e-2)
    b_params = [p.detach().numpy() for p in b.parameters()]
    opt_b = autolr.Optimizer("gi", b_params, groups=[0] * len(b_params), base="adam", lr=1e-2)
    calls = {"backward": 0, "forward_only": 0}
    for t in range(15):
        x, y = data(seed=20 + t)

        if with_backward_kwarg:
            def closure(backward=True):
                opt_a.zero_grad()
                loss = F.cross_entropy(a(x), y)
                if backward:
                    loss.backward()
                    calls["backward"] += 1
                else:
                    assert not torch.is_grad_enabled()
                    calls["forward_only"] += 1
                return loss
        else:
            def closure():
                opt_a.zero_grad()
                loss = F.cross_entropy(a(x), y)
                loss.backward()
                calls["backward"] += 1
                return loss
        loss_a = opt_a.step(closure)

        b.zero_grad()
        loss_b = F.cross_entropy(b(x), y)
        loss_b.backward()
        opt_b.step([p.grad.numpy().copy() for p in b.parameters()], loss=float(loss_b.detach()))
        with torch.no_grad():
            opt_b.report_loss(float(F.cross_entropy(b(x), y)))
        assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-5)
        assert_params_close(a, b, rtol=1e-5, what=f"gi step {t}")
    eta_a, eta_b = opt_a.telemetry()["eta"], opt_b.telemetry()["eta"]
    assert eta_a == pytest.approx(eta_b, rel=1e-5)
    assert eta_a[0] != pytest.approx(1e-2), "η never adapted"
    if with_backward_kwarg:
        assert calls == {"backward": 15, "forward_only": 15}
    else:
        assert calls["backward"] == 30


def test_schedule_free_over_gi_closure_matches_the_two_phase_protocol():
    """alt.ScheduleFree(base="gi", base_base=...) routes step(closure) as alt.GI does (docs/
    algorithms.md §3.3: the closure's second call sees y'), step for step the numpy optimizer fed
    loss= and report_loss; eval() waits for a due report, and gives the same x."""
    a, b = mlp(4), mlp(4)
    options = dict(base="gi", base_base="adam", base_lr=1e-2, hi=1.1, lo=0.9)
    opt_a = alt.ScheduleFree(a.parameters(), **options)
    b_params = [p.detach().numpy() for p in b.parameters()]
    opt_b = autolr.Optimizer("schedule-free", b_params, groups=[0] * len(b_params), **options)
    seen = []
    for t in range(15):
        x, y = data(seed=40 + t)

        def closure(backward=True):
            opt_a.zero_grad()
            loss = F.cross_entropy(a(x), y)
            if backward:
                loss.backward()
            else:
                seen.append(params_of(a))
            return loss
        opt_a.step(closure)
        assert all(torch.equal(s, p) for s, p in zip(seen[-1], params_of(a))), f"step {t}: the closure did not see y'"

        b.zero_grad()
        loss_b = F.cross_entropy(b(x), y)
        loss_b.backward()
        opt_b.step([p.grad.numpy().copy() for p in b.parameters()], loss=float(loss_b.detach()))
        with pytest.raises(autolr.Error, match="report") as info:
            opt_b.eval()
        assert info.value.status == "ALR_WRONG_STATE"
        with torch.no_grad():
            opt_b.report_loss(float(F.cross_entropy(b(x), y)))
        assert_params_close(a, b, rtol=1e-5, what=f"schedule-free over gi step {t}")
    eta_a, eta_b = opt_a.telemetry()["eta"], opt_b.telemetry()["eta"]
    assert eta_a == pytest.approx(eta_b, rel=1e-5)
    assert eta_a[0] != pytest.approx(1e-2), "η never adapted"
    assert opt_a.telemetry()["phi_y"] == pytest.approx(opt_b.telemetry()["phi_y"], rel=1e-5)
    opt_a.eval()
    opt_b.eval()
    assert_params_close(a, b, rtol=1e-5, what="schedule-free over gi, x")
    opt_a.train()
    opt_b.train()


def test_gi_closure_exception_surfaces():
    model = mlp()
    opt = alt.GI(model.parameters(), base="sgd", lr=0.1)
    x, y = data()
    state = {"n": 0}

    def closure():
        state["n"] += 1
        if state["n"] == 2:
            raise RuntimeError("data loader died")
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(autolr.Error, match="data loader died") as info:
        opt.step(closure)
    assert info.value.status == "ALR_CALLBACK_FAILED"


def test_vsgd_closure_supplies_finite_difference_curvature():
    model = mlp(4)
    opt = alt.VSGD(model.parameters(), variant="l", n0=2)
    x, y = data(seed=3, n=32)
    losses = []
    for t in range(30):
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        before = params_of(model)
        losses.append(float(opt.step(closure)))
        if t < 2:  # slow start: nothing moves, and the shifted evaluation was undone bit-exactly
            for p, q in zip(model.parameters(), before):
                assert torch.equal(p.detach(), q)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


# -- checkpoints --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda p: alt.Adam(p, lr=1e-2),
    lambda p: alt.GI(p, base="momentum", lr=1e-2),
], ids=["adam", "gi-momentum"])
def test_state_dict_round_trip(make):
    a = mlp(6)
    opt_a = make(a.parameters())

    def train(model, opt, seeds):
        for s in seeds:
            x, y = data(seed=s)

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)

    train(a, opt_a, range(5))
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    assert saved["opt"]["autolr"].dtype == torch.uint8  # a tensor: torch.load's weights_only accepts it

    b = mlp(99)
    b.load_state_dict(saved["model"])
    opt_b = make(b.parameters())
    opt_b.load_state_dict(saved["opt"])
    train(a, opt_a, range(5, 10))
    train(b, opt_b, range(5, 10))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), "resumed training differs"
    assert opt_a.lr == opt_b.lr

    # another algorithm's, or torch's own, state dict is refused
    with pytest.raises(autolr.Error):
        alt.SGD(mlp().parameters()).load_state_dict(opt_a.state_dict())
    with pytest.raises(autolr.Error, match="autolr"):
        opt_b.load_state_dict(torch.optim.SGD(b.parameters(), lr=0.1).state_dict())


def test_every_named_class_constructs():
    for cls, kw in [(alt.SGD, {}), (alt.Momentum, {}), (alt.Adam, {}), (alt.AdamW, {}), (alt.Adagrad, {}),
                    (alt.RMSprop, {}), (alt.AutoSGD, {}), (alt.AutoAdam, {}), (alt.AutoAdagrad, {}),
                    (alt.GI, {"base": "adam"}), (alt.TLR, {}), (alt.VSGD, {"variant": "g"})]:
        opt = cls(mlp().parameters(), **kw)
        assert opt.algorithm in autolr.ALGORITHMS
        assert len(opt.lr) == 1  # one param group


# -- the default: Auto -------------------------------------------------------------------------

def test_auto_is_a_drop_in_for_adam():
    """autolr.torch.Auto(model.parameters()) in Adam's loop (no lr, no closure, no Σg²): it is
    the algorithm "auto", lowers the loss, and its eval()/train() and checkpoint work."""
    assert "auto" in autolr.ALGORITHMS
    model = mlp()
    x, y = data(n=64)
    opt = alt.Auto(model.parameters())
    assert opt.algorithm == "auto"

    def loss_now():
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))
    before = loss_now()
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.eval()  # schedule-free's x where "auto" stands for it; a no-op otherwise
    after = loss_now()
    assert after < 0.7 * before, f"loss {before:.4f} -> {after:.4f}"
    opt.train()
    saved = opt.state_dict()
    twin = mlp()
    twin.load_state_dict(model.state_dict())
    other = alt.Auto(twin.parameters())
    other.load_state_dict(saved)
    for o, m in ((opt, model), (other, twin)):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    assert_params_close(model, twin, rtol=0, what="Auto resumed from its state_dict")

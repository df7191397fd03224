"""Schedule-free against the authors' own implementation (docs/algorithms.md §6): `sf-adamw` and
`sf-sgd` step by step against `schedulefree` 1.4.1's AdamWScheduleFree and SGDScheduleFree on
the same float32 tensors and gradients — three tensors of different sizes in two param groups
with different options, weight decay on and off, warmup, 120 steps — checking the training
parameters y after every step and the evaluation parameters x after each eval().

Needs torch and schedulefree (scripts/test.sh's torch stage installs both and runs this file
with AUTOLR_NO_SKIPS=1, where a skip is a failure)."""
import os

import numpy as np
import pytest

from conftest import autolr, import_torch

torch = import_torch()
if os.environ.get("AUTOLR_NO_SKIPS") == "1":
    import schedulefree
else:
    schedulefree = pytest.importorskip(
        "schedulefree", reason="schedulefree==1.4.1 (the reference) is not in this venv; scripts/test.sh's torch stage installs it")

import autolr.torch as alt  # noqa: E402

SHAPES = [(13, 7), (29,), (5, 3, 4)]
GROUPS = [0, 1, 0]
STEPS = 120
RTOL = 1e-5


def group_options(kind, decay):
    """Different options per group; `decay` turns weight decay (at y) on in group 1."""
    if kind == "sf-adamw":
        return [dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, r=0.0, weight_lr_power=2.0),
                dict(lr=0.004, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1 if decay else 0.0, r=0.5, weight_lr_power=1.0)]
    return [dict(lr=0.3, momentum=0.9, weight_decay=0.0, r=0.0, weight_lr_power=2.0),
            dict(lr=0.1, momentum=0.75, weight_decay=0.05 if decay else 0.0, r=1.0, weight_lr_power=0.0)]


def reference(kind, tensors, options, warmup):
    groups = []
    for g, opts in enumerate(options):
        params = [t for t, gid in zip(tensors, GROUPS) if gid == g]
        opts = dict(opts)
        if kind == "sf-adamw":
            opts["betas"] = (opts.pop("beta1"), opts.pop("beta2"))
        groups.append(dict(params=params, **opts))
    cls = schedulefree.AdamWScheduleFree if kind == "sf-adamw" else schedulefree.SGDScheduleFree
    return cls(groups, warmup_steps=warmup)


def gradient(rng, y, t):
    """A noisy quadratic's gradient at y, float32 (both sides get these bits)."""
    h = np.linspace(0.5, 2.0, y.size, dtype=np.float32).reshape(y.shape)
    return (h * (y - 0.3) + 0.5 * rng.standard_normal(y.shape).astype(np.float32) * np.float32(1 + (t % 3))).astype(np.float32)


def assert_close(lib, ref, what, floor=1e-30):
    """Each tensor within RTOL of the reference's, relative to its largest entry (at least `floor`)."""
    for i, (a, b) in enumerate(zip(lib, ref)):
        b = b.detach().numpy()
        err = float(np.abs(a - b).max()) / max(float(np.abs(b).max()), floor)
        assert err <= RTOL, f"{what}: tensor {i} differs by {err:.2e} (relative to its largest entry) > {RTOL:.0e}"


@pytest.mark.parametrize("decay", [False, True], ids=["no-decay", "decay"])
@pytest.mark.parametrize("kind", ["sf-adamw", "sf-sgd"])
def test_steps_match_the_reference(kind, decay):
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    options = group_options(kind, decay)
    warmup = 10
    ref_params = [torch.tensor(p.copy(), requires_grad=True) for p in start]
    ref = reference(kind, ref_params, options, warmup)
    ref.train()
    params = [p.copy() for p in start]
    lib = autolr.Optimizer(kind, params, groups=GROUPS, warmup_steps=warmup)
    for g, opts in enumerate(options):
        for name, value in opts.items():
            lib.set_option(name, value, group=g)
    lib.train()  # the reference's protocol: accepted before the first step
    evals = 0
    for t in range(STEPS):
        grads = [gradient(rng, p.detach().numpy(), t) for p in ref_params]
        for p, g in zip(ref_params, grads):
            p.grad = torch.tensor(g.copy())  # the reference divides p.grad in place
        ref.step()
        lib.step(grads)
        assert_close(params, ref_params, f"{kind} y after step {t + 1}")
        if t % 40 == 39 or t == STEPS - 1:
            ref.eval()
            lib.eval()
            assert_close(params, ref_params, f"{kind} x after step {t + 1}")
            evals += 1
            if t < STEPS - 1:
                ref.train()
                lib.train()
                assert_close(params, ref_params, f"{kind} y again after step {t + 1}")
    assert evals == 3
    # The per-group scalars: the scheduled lr and x's averaging weight of the last step.
    tele = lib.telemetry()
    for g, group in enumerate(ref.param_groups):
        lr = group["scheduled_lr"]
        weight = (group["k"] ** group["r"]) * (group["lr_max"] ** group["weight_lr_power"])
        np.testing.assert_allclose(tele["sf_lr"][g], lr, rtol=1e-15)
        np.testing.assert_allclose(tele["weight_sum"][g], group["weight_sum"], rtol=1e-15)
        np.testing.assert_allclose(tele["ckp1"][g], weight / group["weight_sum"], rtol=1e-15)
    assert lib.lr == pytest.approx([group["scheduled_lr"] for group in ref.param_groups], rel=1e-15)
    # x really is another point than y (the check above could not pass by comparing y twice).
    x = [p.copy() for p in params]
    lib.train()
    assert max(float(np.abs(a - b).max()) for a, b in zip(x, params)) > 1e-4


def test_warmup_and_weights_follow_the_reference_schedule():
    """lr = 0 in one group (the reference's ZeroDivisionError branch: c = 0) and a long warmup."""
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    options = group_options("sf-sgd", True)
    options[0]["lr"] = 0.0
    ref_params = [torch.tensor(p.copy(), requires_grad=True) for p in start]
    ref = reference("sf-sgd", ref_params, options, 50)
    ref.train()
    params = [p.copy() for p in start]
    lib = autolr.Optimizer("sf-sgd", params, groups=GROUPS, warmup_steps=50)
    for g, opts in enumerate(options):
        for name, value in opts.items():
            lib.set_option(name, value, group=g)
    for t in range(100):
        grads = [gradient(rng, p.detach().numpy(), t) for p in ref_params]
        for p, g in zip(ref_params, grads):
            p.grad = torch.tensor(g.copy())
        ref.step()
        lib.step(grads)
        assert_close(params, ref_params, f"step {t + 1}")
    assert lib.telemetry()["ckp1"][0] == 0.0


def test_modes_and_checkpoints():
    """eval twice and a step in eval mode are refused with nothing changed; a checkpoint resumes
    bit-exactly in either mode; other algorithms take train/eval as no-ops."""
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    params = [p.copy() for p in start]
    opt = autolr.Optimizer("sf-adamw", params, groups=GROUPS)
    grads = [[gradient(rng, p, t) for p in start] for t in range(12)]
    for t in range(6):
        opt.step(grads[t])
    opt.eval()
    x = [p.copy() for p in params]
    state = opt.state_dict()
    with pytest.raises(autolr.Error) as e:
        opt.eval()
    assert e.value.status == "ALR_WRONG_STATE"
    with pytest.raises(autolr.Error) as e:
        opt.step(grads[6])
    assert e.value.status == "ALR_WRONG_STATE"
    assert all(np.array_equal(a, b) for a, b in zip(params, x)) and opt.state_dict() == state
    assert not opt.training
    # Resume from the eval-mode checkpoint with the caller's x: the same bits as going on.
    params2 = [p.copy() for p in x]
    opt2 = autolr.Optimizer("sf-adamw", params2, groups=GROUPS)
    opt2.load_state_dict(state)
    assert not opt2.training
    for o in (opt, opt2):
        o.train()
        for t in range(6, 12):
            o.step(grads[t])
    assert all(np.array_equal(a, b) for a, b in zip(params, params2))
    assert opt.state_dict() == opt2.state_dict()
    # Train/eval are no-ops for the other algorithms, repeated or not.
    for other in ("sgd", "gi"):
        plain = [p.copy() for p in start]
        o = autolr.Optimizer(other, plain)
        o.eval()
        o.eval()
        o.train()
        assert all(np.array_equal(a, b) for a, b in zip(plain, start))


def test_over_gi_resumes_bit_exactly_in_either_mode():
    """Schedule-free over gi (docs/algorithms.md §3.3): a checkpoint in eval mode, with the caller's
    x, resumes to the same bits as going on (its φ_y and GI's η included), and saves to the same
    bytes; the loss is the same quadratic's at whatever the parameters hold."""
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    loss = lambda ps: float(sum(0.5 * np.sum(np.linspace(0.5, 2.0, p.size).reshape(p.shape) * (p.astype(np.float64) - 0.3) ** 2) for p in ps))
    options = dict(base="gi", base_base="momentum", base_lr=0.05, hi=1.1, lo=0.9)
    params = [p.copy() for p in start]
    opt = autolr.Optimizer("schedule-free", params, groups=GROUPS, **options)
    noise = [[0.3 * rng.standard_normal(p.shape).astype(np.float32) for p in start] for _ in range(12)]

    def step(o, ps, t):
        grads = [(np.linspace(0.5, 2.0, p.size, dtype=np.float32).reshape(p.shape) * (p - 0.3) + n).astype(np.float32) for p, n in zip(ps, noise[t])]
        o.step(grads, loss=loss(ps), closure=lambda: loss(ps))

    for t in range(6):
        step(opt, params, t)
    opt.eval()
    state = opt.state_dict()
    params2 = [p.copy() for p in params]
    opt2 = autolr.Optimizer("schedule-free", params2, groups=GROUPS, **options)
    opt2.load_state_dict(state)
    assert opt2.state_dict() == state and not opt2.training
    assert opt2.telemetry()["phi_y"] == opt.telemetry()["phi_y"] != [0.0] * 2
    for o, ps in ((opt, params), (opt2, params2)):
        o.train()
        for t in range(6, 12):
            step(o, ps, t)
    assert all(np.array_equal(a, b) for a, b in zip(params, params2))
    assert opt.state_dict() == opt2.state_dict()
    assert opt.telemetry()["eta"] != [0.05] * 2, "η never adapted"


def test_torch_adapter_follows_the_reference():
    """autolr.torch.AdamWScheduleFree with the reference's protocol (train(), steps, eval()), in a
    closed loop (each side's gradients at its own parameters, so rounding differences feed back):
    errors are relative to max(1, the largest entry), as the other reference tests measure them
    (the output bias is a single entry near 0)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    twin.load_state_dict(model.state_dict())
    ours = alt.AdamWScheduleFree(model.parameters(), lr=0.01, warmup_steps=5, weight_decay=0.01)
    ref = schedulefree.AdamWScheduleFree(twin.parameters(), lr=0.01, warmup_steps=5, weight_decay=0.01)
    data = torch.randn(32, 6)
    target = torch.randn(32, 1)
    for opt in (ours, ref):
        opt.train()
        opt.train()  # repeated: nothing (as the reference)
    for t in range(100):
        for m, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(data), target).backward()
            opt.step()
        assert_close([p.detach().numpy() for p in model.parameters()], list(twin.parameters()), f"torch y after step {t + 1}", floor=1.0)
    for opt in (ours, ref):
        opt.eval()
        opt.eval()
    assert_close([p.detach().numpy() for p in model.parameters()], list(twin.parameters()), "torch x", floor=1.0)
    with pytest.raises(autolr.Error):
        ours.step()
    assert set(ours.telemetry()["train_mode"]) == {0.0}


@pytest.mark.parametrize("field,fmt,value,why", [
    ("mode", "<I", 2, "mode 2"),
    ("k", "<Q", 7, "group 1 took other steps than group 0"),
    ("k", "<Q", 1 << 60, "a count beyond any run"),
    ("lr", "<d", float("nan"), "lr NaN"),
    ("lr", "<d", -0.5, "lr < 0"),
    ("weight_sum", "<d", float("inf"), "weight_sum Inf"),
    ("ckp1", "<d", 1.5, "ckp1 > 1"),
    ("z", "<f", float("nan"), "z NaN"),
])
def test_every_loaded_value_is_checked(field, fmt, value, why):
    """A resealed checkpoint with one impossible value is refused, nothing changed (the layout of
    ScheduleFree::save: mode, per-group k, lr, lr_max, weight, weight_sum, ckp1, z per tensor)."""
    from test_checkpoint_values import SHAPES, GROUPS, Fields, refused
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = autolr.Optimizer("sf-sgd", params, groups=GROUPS, weight_decay=0.01)
    for _ in range(3):
        opt.step([rng.standard_normal(s).astype(np.float32) for s in SHAPES])
    good = opt.state_dict()
    f = Fields(good)
    f.header(2)
    at = {"mode": f.u32()}
    at["k"] = f.vec("u64")[0] + 8  # group 1's count
    for name in ("lr", "lr_max", "weight", "weight_sum", "ckp1"):
        at[name] = f.vec("f64")[0]
    at["z"] = f.vec("f32")[0] + 4
    assert f.put("<I", at["mode"], 1) == good, "the parse of the layout is off"
    message = refused(opt, params, f.put(fmt, at[field], value), why)
    assert "schedule-free" in message or "count" in message, message

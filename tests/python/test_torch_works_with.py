"""autolr.torch with torch's training machinery: LR schedulers, gradient accumulation, gradient
clipping, AMP's GradScaler, a torch.compile'd model, and torch.save/torch.load(weights_only=True)
of the optimizer's state_dict — each against torch.optim.Adam doing the same."""
import io
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import import_torch

torch = import_torch()

import autolr.torch as alt  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

nn = torch.nn
F = torch.nn.functional


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def batch(t, n=16):
    g = torch.Generator().manual_seed(100 + t)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@torch.no_grad()
def assert_same_params(a, b, rtol, what):
    for i, (x, y) in enumerate(zip(a.parameters(), b.parameters())):
        err = float((x - y).abs().max()) / max(1.0, float(y.abs().max()))
        assert err <= rtol, f"{what}: tensor {i}, relative error {err:.2e}"


def train_pair(steps, micro=1, clip=None, scaler=False, scheduler=None, compile_a=False):
    """Trains the same MLP with alt.Adam and torch.optim.Adam through the same loop; returns
    (models, optimizers) after checking the parameters agree after every step."""
    a, b = mlp(), mlp()
    opt_a, opt_b = alt.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    run_a = torch.compile(a) if compile_a else a
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) for _ in range(2)] if scaler else [None, None]
    scheds = [scheduler(o) for o in (opt_a, opt_b)] if scheduler else [None, None]
    lrs = []
    for t in range(steps):
        for model, opt, sc, sched in ((run_a, opt_a, scalers[0], scheds[0]), (b, opt_b, scalers[1], scheds[1])):
            opt.zero_grad()
            for m in range(micro):
                x, y = batch(t * micro + m)
                loss = F.cross_entropy(model(x), y) / micro
                (sc.scale(loss) if sc else loss).backward()
            if sc:
                sc.unscale_(opt)
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            if sc:
                sc.step(opt)
                sc.update()
            else:
                opt.step()
            if sched:
                sched.step()
        lrs.append(opt_a.lr[0])
        assert_same_params(a, b, 1e-5, f"step {t}")
    return (a, b), (opt_a, opt_b), lrs


def test_lr_scheduler_on_param_groups_lr():
    _, (opt_a, opt_b), lrs = train_pair(8, scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8))
    expected = [0.5 * 1e-2 * (1 + torch.cos(torch.tensor(t * torch.pi / 8))).item() for t in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert opt_a.param_groups[0]["lr"] == pytest.approx(opt_b.param_groups[0]["lr"])


def test_gradient_accumulation_and_clipping():
    train_pair(10, micro=3, clip=0.05)


def test_grad_scaler_unscale_then_step_with_float32_master_weights():
    (a, _), (opt_a, _), _ = train_pair(6, clip=0.5, scaler=True)
    assert all(p.dtype == torch.float32 for p in a.parameters())


def test_grad_scaler_skips_a_step_with_inf_gradients():
    model = mlp()
    opt = alt.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # the scaled loss overflows to inf
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(0)
    scaler.scale(F.cross_entropy(model(x), y) * 1e10).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 1e38
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q), "a step with inf gradients moved the parameters"


def test_step_hooks_and_the_profiler_see_the_step():
    """torch's step observers: the optimizer's and the global pre/post hooks (a pre-hook may
    replace the arguments), and a profiler's Optimizer.step range; once removed, none runs."""
    model = mlp()
    opt = alt.SGD(model.parameters(), lr=0.1)
    calls = []
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def pre(o, args, kwargs):
        calls.append(("pre", o is opt, len(args), dict(kwargs)))
        return (o, closure), kwargs  # the step then runs the closure

    handles = [opt.register_step_pre_hook(pre),
               opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o is opt))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", o is opt)))]
    before = [p.detach().clone() for p in model.parameters()]
    assert opt.step() is not None, "the closure the pre-hook put in was not run"
    assert calls == [("pre", True, 1, {}), ("post", True), ("global post", True)]
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    for h in handles:
        h.remove()
    calls.clear()
    opt.step()
    assert calls == []

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#SGD.step" in {e.key for e in prof.key_averages()}


def test_torch_compiled_model():
    """The model is compiled (inductor, C++ codegen with the system's g++); the optimizer is not."""
    train_pair(4, compile_a=True)


@pytest.mark.parametrize("make", [lambda p: alt.Adam(p, lr=1e-2), lambda p: alt.GI(p, base="auto-adam")], ids=["adam", "gi-auto-adam"])
def test_state_dict_survives_torch_load_weights_only(make):
    a = mlp(3)
    sgs = alt.SumGradSquared(a)
    opt_a = make(a.parameters())

    def train(model, opt, helper, seeds):
        for s in seeds:
            x, y = batch(s)

            def closure(backward=True):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                if backward:
                    loss.backward()
                return loss
            opt.step(closure, sum_sq=helper if opt.algorithm == "gi" else None)
    train(a, opt_a, sgs, range(4))
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert isinstance(saved["opt"]["autolr"], torch.Tensor) and saved["opt"]["autolr"].dtype == torch.uint8

    b = mlp(99)
    b.load_state_dict(saved["model"])
    opt_b = make(b.parameters())
    opt_b.load_state_dict(saved["opt"])
    train(a, opt_a, sgs, range(4, 8))
    train(b, opt_b, alt.SumGradSquared(b), range(4, 8))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), "resumed training differs"


def test_transformer_example_trains():
    """examples/torch/transformer.py, tiny: GI over auto-adam with Σg² of every parameter."""
    script = Path(__file__).resolve().parents[2] / "examples" / "torch" / "transformer.py"
    out = subprocess.run([sys.executable, str(script), "--steps", "40", "--batch", "8", "--context", "16"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    final, initial = (float(v) for v in out.stdout.strip().splitlines()[-1].split()[3::2])
    assert final < initial - 0.5, out.stdout

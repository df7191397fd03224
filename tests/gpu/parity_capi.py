"""CPU/GPU parity through the C ABI: every algorithm with CUDA kernels, created on the GPU with
alr_create(ALR_DEVICE_CUDA) and stepped with device pointers (autolr.CudaOptimizer), against the
same library's CPU optimizer on the same inputs. For a machine with an NVIDIA GPU and PyTorch:

    CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda
    AUTOLR_LIB=target/cuda/release/libautolr.so python3 tests/gpu/parity_capi.py
    compute-sanitizer --tool memcheck python3 tests/gpu/parity_capi.py --small

(AUTOLR_LIB defaults to target/cuda/release/libautolr.so.) Checks, each on fresh random inputs:
- 20 steps of each fixed-rate rule and each AutoOpt base (both per-sample forms, both scales,
  N ∈ {2, 33, 256}) over three tensors whose lengths are not multiples of the block size, in two
  groups; parameters between NaN sentinels; per step α and β per group; at the end the
  parameters (fixed-rate rules: the same bits; AutoOpt: float32 tolerance) and telemetry.
- A fixed-rate CUDA checkpoint is the CPU checkpoint byte for byte; an AutoOpt CUDA checkpoint
  loads into a CPU optimizer, and a CPU one into a CUDA optimizer.
- A NaN gradient on step 3: the next read of lr raises ALR_NON_FINITE, the parameters are those
  of step 2, and later steps continue as a CPU optimizer that never saw step 3 (Adam's bias
  correction included).
- A whole auto-adam step captured in a CUDA graph and replayed equals eager steps; a fixed-rate
  step refuses capture with ALR_UNSUPPORTED.
- 20 steps of TLR (window 1 and 3, with and without momentum, global and per group) against
  the CPU: α per step and the parameters to float32 tolerance (its dots are reduced in another
  order on the GPU).
- 20 steps of vsgd-l/-g/-b with the caller's curvature (no per-sample data, Σg², N × len rows),
  through the slow start: η per step, τ and h⁺, the parameters, checkpoints both ways; a step
  without curvature is refused (finite differences need a host gradient callback: CPU only).
- A negative sum_sq entry: reported as ALR_INVALID_ARGUMENT on read-back, parameters untouched.
- One 2^28-element auto-sgd tensor (Σg² form): the grid-stride loops and the partial cap, `a`
  and `V` against float64 sums on the host.
- autolr.torch on CUDA parameters (AutoAdam fed by SumGradSquared, and Adam) trains a small
  model as on the CPU (forward/backward differ in rounding between devices: 1e-3 relative).
- autolr.torch's reduce= on CUDA parameters (all_reduce()'s device form: NCCL on a CUDA view
  of the library's device values, one rank): auto-adam and tlr equal the unsharded CUDA
  optimizer to 1e-5 relative over 10 steps, the callback called 10 and 9 times.
- 24 steps of prodigy, dadapt-adam, dog and ldog (several option sets: β1 = 0, coupled and decoupled
  decay, bias correction, safeguard warmup, growth bound, a group with lr 0, per-group options,
  init_eta) on a noisy quadratic: lr per group and every telemetry entry (d, d_hat, dlr, η, r̄,
  G, step and skip counts) after every step, the parameters at the end (float32 tolerance: their
  sums are reduced in another order on the GPU), the adaptation having moved d or r̄; each
  checkpoint loaded into the other device's optimizer carries the scalars, and a GPU optimizer
  resumed from the CPU's checkpoint (with the CPU's parameters) continues as the CPU does.
- A NaN gradient in sf-adamw's first step: the next eval() raises ALR_NON_FINITE with the
  parameters untouched, and the optimizer carries on as one that never took that step.
- 24 steps of sf-adamw, sf-sgd, schedule-free over momentum (warmup, weight decay) and over
  automatic bases (auto-adam fed Σg², tlr, prodigy, dadapt-adam, dog, ldog: their scaled steps): the
  averaging scalars (ckp1, lr, weights) and the base's telemetry and the parameters after every
  step (over a fixed-rate base only the scalars' powers can round differently; over an automatic
  base its sums too); halfway the eval() swap to x on both devices (x compared), a step and a
  second eval() refused with ALR_WRONG_STATE and the parameters untouched, checkpoints taken in
  eval mode moved both ways (the CPU one resumes the GPU optimizer), then train() back to y and
  the remaining steps.
- Sharded schedule-free over auto-adam (one process, a device reduce callback): a step whose
  base's reduction fails is ALR_CALLBACK_FAILED, the parameters and the checkpoint are those of
  before it, and the next steps equal the unsharded CPU optimizer's.

These drive every kernel in cuda/ through the library's CUDA device (src/backend/cuda.rs), which
loads them by name; there is no other way in.
Prints one line per check and a summary (date, GPU, driver).
"""
import copy
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("AUTOLR_LIB", str(ROOT / "target" / "cuda" / "release" / "libautolr.so"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import autolr, padded, report, sentinels_intact, summary  # noqa: E402

STEPS = 20
LENS = [257, 4097, 30_011]
GROUPS = [0, 1, 0]
FIXED = {
    "sgd": dict(lr=0.05, weight_decay=0.01),
    "momentum": dict(lr=0.05, momentum=0.9, nesterov=1, weight_decay=0.01),
    "adam": dict(lr=0.01, weight_decay=0.01),
    "adamw": dict(lr=0.01, weight_decay=0.01),
    "adagrad": dict(lr=0.05),
    "rmsprop": dict(lr=0.01),
}
AUTO = ("auto-sgd", "auto-adam", "auto-adagrad")
# (name, options, per-group options set after creation). prodigy and dadapt-adam: a group's lr
# is the largest one or 0 (the references' rule), so the per-group case sets group 1's to 0.
PEERS = [
    ("prodigy", {}, {}),
    ("prodigy", dict(beta1=0.0, weight_decay=0.01, decouple=0, use_bias_correction=1), {}),
    ("prodigy", dict(weight_decay=0.01, safeguard_warmup=1, d_coef=0.5, growth_rate=1.05), {"lr": 0.0}),
    ("dadapt-adam", {}, {}),
    ("dadapt-adam", dict(weight_decay=0.01, decouple=1, use_bias_correction=1, growth_rate=1.02), {"lr": 0.0}),
    ("dog", {}, {}),
    ("dog", dict(weight_decay=1e-3), {"reps_rel": 1e-4, "lr": 0.5}),
    ("dog", dict(init_eta=1e-3), {}),
    # ldog: dog's kernels over a record per tensor (GROUPS puts several tensors in a group).
    ("ldog", {}, {}),
    ("ldog", dict(weight_decay=1e-3), {"reps_rel": 1e-4, "lr": 0.5}),
    ("ldog", dict(init_eta=1e-3), {}),
]
PEER_STEPS = 24
SCHEDULE_FREE = [
    ("sf-adamw", {}),
    ("sf-adamw", dict(weight_decay=0.01, warmup_steps=5, lr=0.01)),
    ("sf-sgd", dict(lr=0.5, weight_decay=1e-3)),
    ("schedule-free", dict(base="momentum", lr=0.1, warmup_steps=3)),
    ("schedule-free", dict(base="auto-adam", warmup_steps=3)),
    ("schedule-free", dict(base="tlr", weight_decay=1e-3)),
    ("schedule-free", dict(base="prodigy")),
    ("schedule-free", dict(base="dadapt-adam", warmup_steps=3)),
    ("schedule-free", dict(base="dog")),
    ("schedule-free", dict(base="ldog")),
]
TLR = [dict(), dict(momentum=0.8, weight_decay=5e-4), dict(window=3), dict(window=3, momentum=0.8, per_group=1)]


class Pair:
    """The same optimizer on the CPU (numpy) and on the GPU (device pointers on `stream`)."""

    def __init__(self, name, rng, stream, options):
        initial = [rng.standard_normal(n).astype(np.float32) for n in LENS]
        self.bufs = [padded(p) for p in initial]
        self.host = [p.copy() for p in initial]
        self.cpu = autolr.Optimizer(name, self.host, groups=GROUPS, **options)
        with torch.cuda.stream(stream):
            self.gpu = autolr.CudaOptimizer(name, LENS, groups=GROUPS, device=0, stream=stream.cuda_stream, **options)
        self.stream = stream

    def step(self, grads, **per_sample):
        self.cpu.step(grads, **per_sample)
        self.gpu_step(grads, **per_sample)

    def gpu_step(self, grads, **per_sample):
        """The GPU half of a step (alone: a step the CPU twin does not take)."""
        device = lambda arrays: [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in arrays]
        g = device(grads)
        extra = {key: device(per_sample[key]) for key in ("sum_sq", "per_sample", "curvature") if key in per_sample}
        pointers = lambda key: [t.data_ptr() for t in extra[key]] if key in extra else None
        torch.cuda.current_stream().synchronize()  # the copies above ran on the default stream
        self.gpu.step([view.data_ptr() for _, view in self.bufs], [t.data_ptr() for t in g],
                      sum_sq=pointers("sum_sq"), per_sample=pointers("per_sample"),
                      per_sample_scale=per_sample.get("per_sample_scale", "sample"), batch_size=per_sample.get("batch_size"),
                      curvature=pointers("curvature"))
        self.stream.synchronize()  # keeps g / extra alive until the kernels have read them

    def params(self):
        return [view.cpu().numpy() for _, view in self.bufs]

    def intact(self):
        return sentinels_intact(*[buf for buf, _ in self.bufs])


def batch(rng, n, form, scale):
    per_sample = [rng.standard_normal((n, m)).astype(np.float32) * 0.5 + rng.standard_normal(m).astype(np.float32) for m in LENS]
    grads = [x.mean(axis=0) for x in per_sample]
    k = 1.0 / n if scale == "mean" else 1.0
    if form == "per_sample":
        data = [x * np.float32(k) for x in per_sample]
    else:
        data = [((x * np.float32(k)) ** 2).sum(axis=0).astype(np.float32) for x in per_sample]
    return grads, {form: data, "per_sample_scale": scale, "batch_size": n}


def rel(a, b):
    return max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-30)) for x, y in zip(a, b))


def fixed_rate(name, rng, stream):
    pair = Pair(name, rng, stream, FIXED[name])
    same_steps = True
    for _ in range(STEPS):
        pair.step([rng.standard_normal(n).astype(np.float32) for n in LENS])
        same_steps &= pair.gpu.telemetry() == pair.cpu.telemetry()
    same_bits = all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(pair.params(), pair.host))
    same_checkpoint = pair.gpu.state_dict() == pair.cpu.state_dict()
    ok = same_bits and same_checkpoint and same_steps and pair.intact()
    return ok, f"same bits={same_bits} same checkpoint bytes={same_checkpoint} same step counts={same_steps} sentinels={pair.intact()}"


def autoopt(name, form, scale, n, rng, stream):
    pair = Pair(name, rng, stream, {})
    worst = 0.0
    for _ in range(STEPS):
        grads, per_sample = batch(rng, n, form, scale)
        pair.step(grads, **per_sample)
        for a, b in zip(pair.gpu.lr + pair.gpu.momentum, pair.cpu.lr + pair.cpu.momentum):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    t_gpu, t_cpu = pair.gpu.telemetry(), pair.cpu.telemetry()
    tele = max(abs(x - y) / max(abs(y), 1e-30) for key in ("V", "a") for x, y in zip(t_gpu[key], t_cpu[key]))
    counts = all(t_gpu[key] == t_cpu[key] for key in ("fallbacks", "clamps", "skips"))
    params = rel(pair.params(), pair.host)
    # The CUDA checkpoint carries the GPU's scalars to the CPU, the CPU's carries them back.
    moved = autolr.Optimizer(name, [p.copy() for p in pair.host], groups=GROUPS)
    moved.load_state_dict(pair.gpu.state_dict())
    carried = moved.telemetry() == t_gpu and moved.lr == pair.gpu.lr
    pair.gpu.load_state_dict(pair.cpu.state_dict())
    carried &= pair.gpu.telemetry() == t_cpu and pair.gpu.lr == pair.cpu.lr
    ok = params < 1e-4 and worst < 1e-4 and tele < 1e-5 and counts and carried and pair.intact()
    return ok, (f"params rel={params:.1e} lr/momentum rel={worst:.1e} V/a rel={tele:.1e} counts equal={counts} "
                f"checkpoints carry the scalars both ways={carried} sentinels={pair.intact()}")


def tlr(options, rng, stream):
    pair = Pair("tlr", rng, stream, options)
    worst = 0.0
    for _ in range(STEPS):
        pair.step([rng.standard_normal(n).astype(np.float32) for n in LENS])
        worst = max(worst, max(abs(a - b) / abs(b) for a, b in zip(pair.gpu.lr, pair.cpu.lr)))
    params = rel(pair.params(), pair.host)
    trained = pair.cpu.lr != [0.01] * len(pair.cpu.lr)
    moved = autolr.Optimizer("tlr", [p.copy() for p in pair.host], groups=GROUPS, **options)
    moved.load_state_dict(pair.gpu.state_dict())
    carried = moved.lr == pair.gpu.lr
    ok = params < 1e-4 and worst < 1e-5 and trained and carried and pair.intact()
    return ok, f"params rel={params:.1e} α rel={worst:.1e} α trained={trained} checkpoint to the CPU={carried} sentinels={pair.intact()}"


def vsgd(name, form, rng, stream):
    """vSGD with the caller's curvature (its finite differences call a host callback: CPU only),
    through the slow start (n0 = 3) and 17 regular steps: η per group and the parameters to
    float32 tolerance (the units' sums are reduced in another order on the GPU), checkpoints
    both ways."""
    pair = Pair(name, rng, stream, dict(n0=3))
    worst = 0.0
    for _ in range(STEPS):
        grads, per_sample = batch(rng, 8, form, "sample") if form else ([rng.standard_normal(n).astype(np.float32) for n in LENS], {})
        per_sample["curvature"] = [rng.uniform(0.5, 2.0, n).astype(np.float32) for n in LENS]
        pair.step(grads, **per_sample)
        worst = max(worst, max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(pair.gpu.lr, pair.cpu.lr)))
    params = rel(pair.params(), pair.host)
    tele = max(abs(x - y) / max(abs(y), 1e-30) for key in ("tau_median", "h_plus") for x, y in zip(pair.gpu.telemetry()[key], pair.cpu.telemetry()[key]))
    moved = autolr.Optimizer(name, [p.copy() for p in pair.host], groups=GROUPS, n0=3)
    moved.load_state_dict(pair.gpu.state_dict())
    carried = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(moved.lr, pair.gpu.lr)) == 0.0
    pair.gpu.load_state_dict(pair.cpu.state_dict())
    carried &= pair.gpu.lr == pair.cpu.lr
    try:
        pair.gpu_step([rng.standard_normal(n).astype(np.float32) for n in LENS])
        refused = "nothing"
    except autolr.Error as e:
        refused = e.status
    # CudaOptimizer takes no gradient callback: without curvature vSGD has no curvature at all.
    ok = params < 1e-4 and worst < 1e-4 and tele < 1e-4 and carried and refused == "ALR_INVALID_ARGUMENT" and pair.intact()
    return ok, (f"params rel={params:.1e} η rel={worst:.1e} τ/h⁺ rel={tele:.1e} checkpoints both ways={carried} "
                f"without curvature: {refused} sentinels={pair.intact()}")
def quadratic(rng, params, target):
    """A noisy quadratic's gradient at the CPU's parameters (both devices get these bits): a
    consistent direction, so that the peers' estimates grow."""
    return [(np.float32(0.5) * (p - c) + np.float32(0.1) * rng.standard_normal(p.size).astype(np.float32)).astype(np.float32)
            for p, c in zip(params, target)]


def tele_rel(got, want):
    """The largest relative difference over every telemetry entry and group (a missing key fails)."""
    if sorted(got) != sorted(want):
        return float("inf")
    return max((abs(x - y) / max(abs(y), 1e-30) for key in want for x, y in zip(got[key], want[key])), default=0.0)


def set_group_options(opt, per_group):
    for key, value in per_group.items():
        opt.set_option(key, value, group=1)


def peer(name, options, per_group, rng, stream):
    pair = Pair(name, rng, stream, options)
    set_group_options(pair.cpu, per_group)
    set_group_options(pair.gpu, per_group)
    start = [p.copy() for p in pair.host]
    target = [rng.standard_normal(n).astype(np.float32) for n in LENS]
    worst_lr = worst_tele = 0.0
    for _ in range(PEER_STEPS):
        pair.step(quadratic(rng, pair.host, target))
        worst_lr = max(worst_lr, max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(pair.gpu.lr, pair.cpu.lr)))
        worst_tele = max(worst_tele, tele_rel(pair.gpu.telemetry(), pair.cpu.telemetry()))
    params = rel(pair.params(), pair.host)
    tele = pair.cpu.telemetry()
    adapted = min(tele["rbar"]) > 0.0 if name in ("dog", "ldog") else tele["d"][0] > pair.cpu.get_option("d0")
    moved = any(not np.array_equal(a, b) for a, b in zip(pair.host, start))
    # The checkpoints carry the scalars both ways; the GPU resumed from the CPU's state (and the
    # CPU's parameters) continues as the CPU does.
    other = autolr.Optimizer(name, [p.copy() for p in pair.host], groups=GROUPS, **options)
    set_group_options(other, per_group)
    other.load_state_dict(pair.gpu.state_dict())
    carried = other.telemetry() == pair.gpu.telemetry() and other.lr == pair.gpu.lr
    pair.gpu.load_state_dict(pair.cpu.state_dict())
    carried &= pair.gpu.telemetry() == pair.cpu.telemetry() and pair.gpu.lr == pair.cpu.lr
    for (_, view), h in zip(pair.bufs, pair.host):
        view.copy_(torch.from_numpy(h))
    torch.cuda.current_stream().synchronize()
    for _ in range(3):
        pair.step(quadratic(rng, pair.host, target))
    resumed = rel(pair.params(), pair.host)
    ok = (params < 1e-4 and worst_lr < 1e-5 and worst_tele < 1e-5 and adapted and moved and carried and resumed < 1e-4
          and pair.intact())
    return ok, (f"params rel={params:.1e} lr rel={worst_lr:.1e} telemetry rel={worst_tele:.1e} adapted={adapted} "
                f"moved={moved} checkpoints carry the scalars both ways={carried} resumed from the CPU rel={resumed:.1e} "
                f"sentinels={pair.intact()}")


def status_of(call):
    """The status a call raises ("nothing" when it returns)."""
    try:
        call()
    except autolr.Error as e:
        return e.status
    return "nothing"


def schedule_free(name, options, rng, stream):
    pair = Pair(name, rng, stream, options)
    pointers = [view.data_ptr() for _, view in pair.bufs]
    target = [rng.standard_normal(n).astype(np.float32) for n in LENS]
    base = options.get("base", "")
    if base.startswith("auto-"):
        inputs = lambda: batch(rng, 8, "sum_sq", "sample")  # noqa: E731
    else:
        inputs = lambda: (quadratic(rng, pair.host, target), {})  # noqa: E731
    # Over an automatic base its sums are reduced in another order on the GPU.
    params_tol, scalars_tol = (1e-6, 1e-12) if base in ("", "momentum") else (1e-4, 1e-5)
    worst = worst_tele = 0.0
    same_bits = True
    swap = {}
    for t in range(PEER_STEPS):
        grads, per_sample = inputs()
        pair.step(grads, **per_sample)
        worst = max(worst, rel(pair.params(), pair.host))
        same_bits &= all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(pair.params(), pair.host))
        worst_tele = max(worst_tele, tele_rel(pair.gpu.telemetry(), pair.cpu.telemetry()))
        if t != PEER_STEPS // 2:
            continue
        # To x on both devices.
        pair.cpu.eval()
        pair.gpu.eval(pointers)
        pair.stream.synchronize()
        x = pair.params()
        swap["x rel"] = rel(x, pair.host)
        # In eval mode a step and a second eval() are refused, the parameters untouched.
        refused_grads, refused_extra = inputs()
        refused = [status_of(lambda: pair.gpu_step(refused_grads, **refused_extra)), status_of(lambda: pair.gpu.eval(pointers))]
        pair.stream.synchronize()
        swap["refused"] = refused == ["ALR_WRONG_STATE"] * 2 and all(np.array_equal(a, b) for a, b in zip(pair.params(), x))
        # Checkpoints taken in eval mode, moved both ways: a CPU optimizer on the CPU's x takes
        # the GPU's, the GPU optimizer (its buffers set to the CPU's x) the CPU's.
        other = autolr.Optimizer(name, [p.copy() for p in pair.host], groups=GROUPS, **options)
        other.load_state_dict(pair.gpu.state_dict())
        carried = other.telemetry() == pair.gpu.telemetry() and not other.training
        pair.gpu.load_state_dict(pair.cpu.state_dict())
        carried &= pair.gpu.telemetry() == pair.cpu.telemetry()
        for (_, view), h in zip(pair.bufs, pair.host):
            view.copy_(torch.from_numpy(h))
        torch.cuda.current_stream().synchronize()
        # Back to y on both devices (and on the CPU optimizer that took the GPU's state).
        pair.cpu.train()
        pair.gpu.train(pointers)
        other.train()
        pair.stream.synchronize()
        swap["y rel"] = max(rel(pair.params(), pair.host), rel(other._params, pair.host))
        swap["carried"] = carried
    ok = (worst < params_tol and worst_tele < scalars_tol and swap["x rel"] < params_tol and swap["y rel"] < params_tol
          and swap["refused"] and swap["carried"] and pair.intact())
    return ok, (f"params rel={worst:.1e} (same bits every step={same_bits}) scalars rel={worst_tele:.1e} "
                f"x after eval() rel={swap['x rel']:.1e} step/eval in eval mode refused, untouched={swap['refused']} "
                f"eval-mode checkpoints carried both ways={swap['carried']} y after train() rel={swap['y rel']:.1e} "
                f"sentinels={pair.intact()}")


def sharded_refusal(rng, stream):
    """Sharded schedule-free over auto-adam on CUDA (one process): a step whose base's reduction
    fails (the device callback raises, as when another process's inputs were refused) is
    ALR_CALLBACK_FAILED and changes nothing — the parameters and the checkpoint are those of
    before it (z and the averages put back by device copies) — and the next steps run as on an
    optimizer that never saw it."""
    failing = [False]

    def reduce(pointer, n, op, stream_handle):  # one process: the local sums are the sums
        if failing[0]:
            raise RuntimeError("another process refused this step")
    options = dict(base="auto-adam", warmup_steps=2)
    pair = Pair("schedule-free", rng, stream, options)
    with torch.cuda.stream(stream):
        pair.gpu = autolr.CudaOptimizer("schedule-free", LENS, groups=GROUPS, device=0, stream=stream.cuda_stream, reduce=reduce, **options)
    worst = 0.0
    for t in range(6):
        grads, per_sample = batch(rng, 8, "sum_sq", "sample")
        if t == 3:
            before, saved = pair.params(), bytes(pair.gpu.state_dict())
            failing[0] = True
            status = status_of(lambda: pair.gpu_step(grads, **per_sample))
            failing[0] = False
            pair.stream.synchronize()
            unchanged = all(np.array_equal(a, b) for a, b in zip(pair.params(), before)) and bytes(pair.gpu.state_dict()) == saved
            if status != "ALR_CALLBACK_FAILED" or not unchanged:
                return False, f"refused step: status {status}, parameters and checkpoint unchanged={unchanged}"
            grads, per_sample = batch(rng, 8, "sum_sq", "sample")
        pair.step(grads, **per_sample)
        worst = max(worst, rel(pair.params(), pair.host))
    return worst < 1e-4 and pair.intact(), f"refused step changed nothing; params rel to the unsharded CPU={worst:.1e} sentinels={pair.intact()}"


def nan_then_eval(rng, stream):
    """A NaN gradient in sf-adamw's first step (which then never runs on the GPU): eval() reports
    it and changes nothing; the next eval() and train() are those of an optimizer that has not
    stepped, and later steps equal the CPU's, which never saw the bad one."""
    pair = Pair("sf-adamw", rng, stream, {})
    pointers = [view.data_ptr() for _, view in pair.bufs]
    start = pair.params()
    poisoned = [rng.standard_normal(n).astype(np.float32) for n in LENS]
    poisoned[2][11] = np.nan
    pair.gpu_step(poisoned)
    first = status_of(lambda: pair.gpu.eval(pointers))
    pair.stream.synchronize()
    untouched = all(np.array_equal(a, b) for a, b in zip(pair.params(), start))
    again = [status_of(lambda: pair.gpu.eval(pointers)), status_of(lambda: pair.gpu.train(pointers))]
    for _ in range(3):
        pair.step([rng.standard_normal(n).astype(np.float32) for n in LENS])
    cont = rel(pair.params(), pair.host)
    ok = first == "ALR_NON_FINITE" and untouched and again == ["nothing", "nothing"] and cont < 1e-6
    return ok, f"eval() raised={first} untouched={untouched} then eval()/train()={again} continues as the CPU: rel={cont:.1e}"


def negative_sum_sq(rng, stream):
    pair = Pair("auto-adam", rng, stream, {})
    grads, per_sample = batch(rng, 8, "sum_sq", "sample")
    pair.step(grads, **per_sample)
    before = pair.params()
    grads, per_sample = batch(rng, 8, "sum_sq", "sample")
    per_sample["sum_sq"][2][5] = -1.0
    pair.gpu_step(grads, **per_sample)
    try:
        pair.gpu.lr
        raised = "nothing"
    except autolr.Error as e:
        raised = e.status
    untouched = all(np.array_equal(a, b) for a, b in zip(pair.params(), before))
    return raised == "ALR_INVALID_ARGUMENT" and untouched, f"raised={raised} untouched={untouched}"


def large(stream):
    """One 2^28-element tensor, Σg² form: the grid-stride loops and the 1024-partial cap."""
    length, n = 1 << 28, 4
    g = torch.randn(length, device="cuda")
    s = g * g * n + torch.rand(length, device="cuda")
    p = torch.zeros(length, device="cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        opt = autolr.CudaOptimizer("auto-sgd", [length], device=0, stream=stream.cuda_stream)
        opt.step([p.data_ptr()], [g.data_ptr()], sum_sq=[s.data_ptr()], batch_size=n)
    tele = opt.telemetry()
    g64, s64 = g.double(), s.double()
    a = float((g64 * g64).sum())
    v = max(float((s64.sum() - n * a) / (n * (n - 1))), 0.0)
    ok = abs(tele["a"][0] - a) <= 1e-6 * a and abs(tele["V"][0] - v) <= 1e-5 * v
    return ok, f"a rel diff={abs(tele['a'][0] - a) / a:.1e} V rel diff={abs(tele['V'][0] - v) / v:.1e}"


def bad_input(name, rng, stream):
    options = FIXED.get(name, {})
    pair = Pair(name, rng, stream, options)
    skipped_host = [p.copy() for p in pair.host]
    skipped = autolr.Optimizer(name, skipped_host, groups=GROUPS, **options)
    batches = [batch(rng, 8, "sum_sq", "sample") for _ in range(5)]
    per_sample = lambda i: batches[i][1] if name in AUTO else {}  # noqa: E731
    for i in (0, 1):
        pair.step(batches[i][0], **per_sample(i))
        skipped.step(batches[i][0], **per_sample(i))
    after_two = pair.params()
    poisoned = [g.copy() for g in batches[2][0]]
    poisoned[1][7] = np.nan
    pair.gpu_step(poisoned, **per_sample(2))
    try:
        pair.gpu.lr
        raised = "nothing"
    except autolr.Error as e:
        raised = e.status
    untouched = all(np.array_equal(a, b) for a, b in zip(pair.params(), after_two))
    for i in (3, 4):
        pair.gpu_step(batches[i][0], **per_sample(i))
        skipped.step(batches[i][0], **per_sample(i))
    cont = rel(pair.params(), skipped_host)
    # AutoOpt's and Prodigy's steps depend on reductions, which the GPU adds in another order.
    ok = raised == "ALR_NON_FINITE" and untouched and cont < (1e-4 if name in AUTO or name == "prodigy" else 1e-6)
    return ok, f"raised={raised} untouched={untouched} continues as without the bad step: rel={cont:.1e}"


def graph_replay(rng, stream):
    """Three auto-adam steps replayed from one captured graph equal three eager steps."""
    n = 1 << 20
    results = []
    sums = [torch.rand(n, device="cuda") * 4 + 1 for _ in range(3)]
    grads = [torch.randn(n, device="cuda") for _ in range(3)]
    for captured in (False, True):
        param = torch.ones(n, device="cuda")
        g_static, s_static = torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
        stream.wait_stream(torch.cuda.current_stream())  # the buffers above were made on the default stream
        with torch.cuda.stream(stream):
            opt = autolr.CudaOptimizer("auto-adam", [n], device=0, stream=stream.cuda_stream)
            step = lambda: opt.step([param.data_ptr()], [g_static.data_ptr()], sum_sq=[s_static.data_ptr()], batch_size=16)
            graph = None
            if captured:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    step()
            for i in range(3):
                g_static.copy_(grads[i])
                s_static.copy_(sums[i])
                graph.replay() if captured else step()
        stream.synchronize()
        results.append((param.cpu().numpy(), opt.lr))
    (eager, lr_eager), (replayed, lr_replayed) = results
    return np.array_equal(eager, replayed) and lr_eager == lr_replayed


def refuses_capture(name, stream):
    """A step whose scalars are host values (fixed-rate coefficients, TLR's schedule) cannot be
    captured: a clear error."""
    n = 1 << 10
    param, grad = torch.ones(n, device="cuda"), torch.ones(n, device="cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        opt = autolr.CudaOptimizer(name, [n], device=0, stream=stream.cuda_stream)
        graph = torch.cuda.CUDAGraph()
        status = "nothing"
        try:
            with torch.cuda.graph(graph, stream=stream):
                opt.step([param.data_ptr()], [grad.data_ptr()])
        except autolr.Error as e:
            status = e.status
    return status == "ALR_UNSUPPORTED", f"raised={status}"


def torch_adapter(rng):
    import autolr.torch as alt

    torch.manual_seed(int(rng.integers(1 << 30)))
    reference = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    worst = 0.0
    for make in (lambda ps: alt.AutoAdam(ps), lambda ps: alt.Adam(ps, lr=1e-2)):
        results = []
        for device in ("cpu", "cuda"):
            model = copy.deepcopy(reference).to(device)
            sgs = alt.SumGradSquared(model)
            opt = make(model.parameters())
            for _ in range(10):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
                opt.step(sum_sq=sgs) if isinstance(opt, alt.AutoAdam) else opt.step()
            results.append([p.detach().cpu().numpy() for p in model.parameters()])
        worst = max(worst, rel(results[1], results[0]))
    return worst < 1e-3, f"params rel={worst:.1e}"


def torch_device_reduce(rng):
    """autolr.torch's reduce= on CUDA parameters: all_reduce()'s device form (a CUDA tensor
    viewing the library's float64 values, NCCL on the optimizer's stream) over a one-rank NCCL
    group: auto-adam and tlr over 10 steps equal the unsharded CUDA optimizer (one rank: the
    sums are the local ones) and the callback runs as often as the README's table says."""
    import socket

    import torch.distributed as dist
    import autolr.torch as alt

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(int(rng.integers(1 << 30)))
        reference = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).cuda()
        x, y = torch.randn(64, 20, device="cuda"), torch.randint(0, 4, (64,), device="cuda")
        worst, counts = 0.0, {}
        for name, options, want_calls in (("auto-adam", {}, 10), ("tlr", dict(lr=0.05), 9)):
            results = []
            for sharded in (False, True):
                model = copy.deepcopy(reference)
                sgs = alt.SumGradSquared(model)
                calls = [0]
                reduce = None
                if sharded:
                    reduce = alt.all_reduce()
                    inner = reduce.on_device

                    def counted(*args, inner=inner, calls=calls):
                        calls[0] += 1
                        inner(*args)
                    reduce.on_device = counted
                opt = alt.AutoLR(model.parameters(), name, reduce=reduce, data_parallel=False, **options)
                for _ in range(10):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                    opt.step(sum_sq=sgs) if name.startswith("auto") else opt.step()
                results.append([p.detach().cpu().numpy() for p in model.parameters()])
                counts[name] = calls[0]
            worst = max(worst, rel(results[1], results[0]))
            if counts[name] != want_calls:
                return False, f"{name}: {counts[name]} calls to the device callback in 10 steps, want {want_calls}"
        return worst < 1e-5, f"params rel={worst:.1e} calls={counts}"
    finally:
        dist.destroy_process_group()


def checks(small, rng, stream):
    """Every check as (section, label, run); `run()` gives ok or (ok, detail)."""
    for name in FIXED:
        yield "fixed-rate", f"{name:12s} 20 steps", lambda name=name: fixed_rate(name, rng, stream)
    for name in AUTO:
        for form in ("per_sample", "sum_sq"):
            for scale in ("sample", "mean"):
                for n in ((2, 33) if small else (2, 33, 256)):
                    yield ("autoopt", f"{name:12s} {form:10s} scale={scale:6s} N={n:3d}",
                           lambda name=name, form=form, scale=scale, n=n: autoopt(name, form, scale, n, rng, stream))
    for options in TLR:
        yield "tlr", f"tlr {options}", lambda options=options: tlr(options, rng, stream)
    for name in ("vsgd-l", "vsgd-g", "vsgd-b"):
        for form in (None, "sum_sq", "per_sample"):
            yield "vsgd", f"{name} curvature given, per-sample data: {form}", lambda name=name, form=form: vsgd(name, form, rng, stream)
    for name, options, per_group in PEERS:
        yield "peers", f"{name} {options} {per_group} {PEER_STEPS} steps", lambda a=(name, options, per_group): peer(*a, rng, stream)
    for name, options in SCHEDULE_FREE:
        yield "schedule-free", f"{name} {options} {PEER_STEPS} steps, eval()/train() halfway", lambda a=(name, options): schedule_free(*a, rng, stream)
    bad = (("fixed-rate", "adam"), ("autoopt", "auto-adam"), ("tlr", "tlr"), ("peers", "prodigy"), ("schedule-free", "sf-adamw"))
    for section, name in bad:
        yield section, f"{name:12s} NaN gradient: reported on read-back, step skipped", lambda name=name: bad_input(name, rng, stream)
    yield "schedule-free", "sf-adamw NaN gradient at step 1: eval() reports it, nothing swapped", lambda: nan_then_eval(rng, stream)
    yield "schedule-free", "sharded sf over auto-adam: a step its base's reduction refuses changes nothing", lambda: sharded_refusal(rng, stream)
    yield "autoopt", "auto-adam negative sum_sq: reported on read-back, step skipped", lambda: negative_sum_sq(rng, stream)
    if not small:
        yield "autoopt", "CUDA graph capture + replay of an auto-adam step through the C ABI", lambda: graph_replay(rng, stream)
        yield "autoopt", "2^28-element tensor", lambda: large(stream)
    capture = (("fixed-rate", "adam"), ("tlr", "tlr"), ("peers", "prodigy"), ("peers", "dadapt-adam"), ("peers", "dog"), ("peers", "ldog"), ("schedule-free", "sf-adamw"))
    for section, name in capture:
        yield section, f"a {name} step refuses CUDA-graph capture", lambda name=name: refuses_capture(name, stream)
    yield "torch", "autolr.torch on CUDA parameters (AutoAdam + SumGradSquared, Adam)", lambda: torch_adapter(rng)
    yield "torch", "autolr.torch reduce= on CUDA: all_reduce()'s device form over NCCL (one rank)", lambda: torch_device_reduce(rng)


def main(sections=None):
    """Runs every check, or those of `sections` (parity_fixed_rate.py and parity_autoopt.py)."""
    small = "--small" in sys.argv
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    stream = torch.cuda.Stream()
    failures = 0
    for section, label, run in checks(small, rng, stream):
        if sections is None or section in sections:
            result = run()
            ok, detail = result if isinstance(result, tuple) else (result, "")
            failures += report(label, ok, detail)
    summary(failures)


if __name__ == "__main__":
    main()

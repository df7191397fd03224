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
    ok = raised == "ALR_NON_FINITE" and untouched and cont < (1e-4 if name in AUTO else 1e-6)
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
    for section, name in (("fixed-rate", "adam"), ("autoopt", "auto-adam"), ("tlr", "tlr")):
        yield section, f"{name:12s} NaN gradient: reported on read-back, step skipped", lambda name=name: bad_input(name, rng, stream)
    yield "autoopt", "auto-adam negative sum_sq: reported on read-back, step skipped", lambda: negative_sum_sq(rng, stream)
    if not small:
        yield "autoopt", "CUDA graph capture + replay of an auto-adam step through the C ABI", lambda: graph_replay(rng, stream)
        yield "autoopt", "2^28-element tensor", lambda: large(stream)
    for section, name in (("fixed-rate", "adam"), ("tlr", "tlr")):
        yield section, f"a {name} step refuses CUDA-graph capture", lambda name=name: refuses_capture(name, stream)
    yield "torch", "autolr.torch on CUDA parameters (AutoAdam + SumGradSquared, Adam)", lambda: torch_adapter(rng)


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

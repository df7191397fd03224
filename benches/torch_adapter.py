"""autolr.torch against torch's own optimizers, in one run, on one thread, on the same tensors.

    .venv-torch/bin/python benches/torch_adapter.py [--quick] [--training-only | --sum-sq-only] [--clock wall|thread]

Prints Markdown tables (README "torch adapter speed"):
1. fixed-rate steps at p = 1e7 in 1 and in 100 tensors: autolr.torch Adam/SGD, with the NaN/Inf
   check of the gradients on (the default) and off (`check_finite=False`: what the check's extra
   read of g costs), against torch.optim.Adam(fused=True) / (foreach=True) and
   SGD(foreach=True) / (fused=True), which check nothing;
2. per-step overhead: the same steps on tensors so small that the arithmetic is negligible
   (a 4-tensor MLP 8-8-8 and 100 tensors of 16 floats), so the time is the Python/C-call cost;
3. full training steps on the Fashion-MNIST MLP 784-120-10 and a small CNN (batch 128):
   Adam (zero_grad, forward, backward, step) against GI over auto-adam (closure + the GI
   re-evaluation forward + Σg² hooks + step), interleaved, with the parts of the GI step timed
   inside it (training_table's docstring);
4. Σg² of single layers (convolutions from 1 to 256 channels, a linear layer over positions) at
   two chunk budgets, beside the layer's own weight gradient (sum_sq_table's docstring).

Each number is the median of `--reps` timed calls after warm-up; the optimizers compared in a row
step in rotation, one step of each per repetition, so that the machine's drift hits them alike.
The library's own worker threads are limited to one (AUTOLR_NUM_THREADS=1) like torch's
(torch.set_num_threads(1)).
"""
import argparse
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("AUTOLR_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bindings" / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import autolr.torch as alt  # noqa: E402

nn = torch.nn
DATA = Path("/usr/share/datasets/fashion-mnist")
# --clock: "wall" (perf_counter) or "thread" (this thread's CPU time: torch and the library both
# run on the calling thread here, and a shared machine's preemption is left out).
clock = time.perf_counter


def tensors(total, count, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = total // count
    params = [nn.Parameter(torch.randn(size, generator=g)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=g) * 1e-3
    return params


def interleaved(makers, make_params, reps, warmup=3):
    """Median step time of each optimizer `makers[label](params)`, each on its own tensors from
    `make_params()`, stepped in rotation (one step of each per repetition), so that the machine's
    drift within the run — other processes, frequency, memory bandwidth — hits them alike."""
    steps = {label: make(make_params()).step for label, make in makers.items()}
    times = {label: [] for label in makers}
    for rep in range(warmup + reps):
        for label, step in steps.items():
            t0 = clock()
            step()
            if rep >= warmup:
                times[label].append(clock() - t0)
    return {label: statistics.median(series) for label, series in times.items()}


FIXED = [
    ("adam", "autolr.torch Adam", lambda p, **o: alt.Adam(p, lr=1e-3, **o), [
        ("torch Adam fused", lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)),
        ("torch Adam foreach", lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True))]),
    ("sgd", "autolr.torch SGD", lambda p, **o: alt.SGD(p, lr=1e-3, **o), [
        ("torch SGD fused", lambda p: torch.optim.SGD(p, lr=1e-3, fused=True)),
        ("torch SGD foreach", lambda p: torch.optim.SGD(p, lr=1e-3, foreach=True))]),
]


def fixed_rate_table(reps):
    print("| step | tensors | autolr (ms) | autolr, check off (ms) | torch fastest (ms) | which | autolr / fastest | check off / fastest |")
    print("|---|---|---|---|---|---|---|---|")
    for _, name, ours, theirs in FIXED:
        for count in (1, 100):
            makers = {"ours": ours, "unchecked": lambda p, ours=ours: ours(p, check_finite=False), **dict(theirs)}
            t = interleaved(makers, lambda count=count: tensors(10_000_000, count), reps)
            best = min((t[label], label) for label, _ in theirs)
            print(f"| {name} | {count} | {t['ours'] * 1e3:.2f} | {t['unchecked'] * 1e3:.2f} | {best[0] * 1e3:.2f} | {best[1]} | "
                  f"{t['ours'] / best[0]:.2f} | {t['unchecked'] / best[0]:.2f} |")


def overhead_table(reps):
    print("| model | step | autolr (µs) | torch fastest (µs) | which | autolr / fastest |")
    print("|---|---|---|---|---|---|")
    shapes = {"MLP 8-8-8 (4 tensors)": [(8, 8), (8,), (8, 8), (8,)], "100 tensors of 16": [(16,)] * 100}
    for model, shape_list in shapes.items():
        for _, name, ours, theirs in FIXED:
            def make_params():
                g = torch.Generator().manual_seed(1)
                ps = [nn.Parameter(torch.randn(s, generator=g)) for s in shape_list]
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=g) * 1e-3
                return ps
            t = interleaved({"ours": ours, **dict(theirs)}, make_params, reps * 20)
            best = min((t[label], label) for label, _ in theirs)
            print(f"| {model} | {name} | {t['ours'] * 1e6:.1f} | {best[0] * 1e6:.1f} | {best[1]} | {t['ours'] / best[0]:.2f} |")


def load_fashion_mnist(n):
    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        print(f"(no {DATA}: `apt-get install dataset-fashion-mnist`; using random images)")
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    with gzip.open(DATA / "train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784].reshape(n, 1, 28, 28)
    with gzip.open(DATA / "train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def models():
    torch.manual_seed(0)
    mlp = lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 120), nn.Tanh(), nn.Linear(120, 10))  # noqa: E731
    cnn = lambda: nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(),  # noqa: E731
                                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10))
    return {"MLP 784-120-10": mlp, "CNN (conv5x5 8, conv5x5 16, linear)": cnn}


def training_table(reps):
    """Adam's and GI's steps interleaved (one of each, and one plain forward + backward, per
    repetition, so that load from other processes hits them alike); GI's parts are timed inside
    its own steps: the closure with backward (forward, backward and the Σg² hooks), the
    re-evaluation (the closure without backward, inside the library's step), the library's step
    (alr_step less the re-evaluation it calls) and the adapter (the rest of GI's step())."""
    x_all, y_all = load_fashion_mnist(128 * 16)
    batches = [(x_all[i:i + 128], y_all[i:i + 128]) for i in range(0, len(x_all), 128)]
    print("| model | Adam step (ms) | GI(auto-adam) step (ms) | ratio | of which: fwd+bwd | Σg² hooks | GI's re-evaluation | library step | adapter |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, make in models().items():
        def batch_source():
            counter = iter(range(1 << 30))
            return lambda: batches[next(counter) % len(batches)]

        adam_model, plain, gi_model = make(), make(), make()
        adam = torch.optim.Adam(adam_model.parameters(), lr=1e-3)
        sgs = alt.SumGradSquared(gi_model)
        gi = alt.GI(gi_model.parameters(), base="auto-adam")
        adam_batch, plain_batch, gi_batch = batch_source(), batch_source(), batch_source()
        times = {name: [] for name in ("adam", "fwd_bwd", "gi", "closure", "re-evaluation", "alr_step")}

        def adam_step():
            x, y = adam_batch()
            adam.zero_grad()
            F.cross_entropy(adam_model(x), y).backward()
            adam.step()

        def fwd_bwd():
            x, y = plain_batch()
            plain.zero_grad()
            F.cross_entropy(plain(x), y).backward()

        library_step = gi._core._step_raw

        def timed_library_step(*args, **kwargs):
            t0 = clock()
            library_step(*args, **kwargs)
            times["alr_step"].append(clock() - t0)
        gi._core._step_raw = timed_library_step

        def gi_step():
            x, y = gi_batch()

            def closure(backward=True):
                t0 = clock()
                gi.zero_grad()
                loss = F.cross_entropy(gi_model(x), y)
                if backward:
                    loss.backward()
                times["closure" if backward else "re-evaluation"].append(clock() - t0)
                return loss
            gi.step(closure, sum_sq=sgs)

        steps = {"adam": adam_step, "fwd_bwd": fwd_bwd, "gi": gi_step}
        for _ in range(3):
            for fn in steps.values():
                fn()
        for series in times.values():
            series.clear()
        for _ in range(reps):
            for name, fn in steps.items():
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
        med = {name: statistics.median(series) * 1e3 for name, series in times.items()}
        library = statistics.median(s - r for s, r in zip(times["alr_step"], times["re-evaluation"])) * 1e3
        adapter = statistics.median(t - c - s for t, c, s in zip(times["gi"], times["closure"], times["alr_step"])) * 1e3
        hooks = med["closure"] - med["fwd_bwd"]
        print(f"| {label} | {med['adam']:.2f} | {med['gi']:.2f} | {med['gi'] / med['adam']:.2f} | {med['fwd_bwd']:.2f} | "
              f"{hooks:.2f} | {med['re-evaluation']:.2f} | {library:.2f} | {adapter:.2f} |")


SUM_SQ_LAYERS = [  # (label, layer, input shape without the batch), batch 32
    ("conv 1→8, 5×5, 28×28", lambda: nn.Conv2d(1, 8, 5), (1, 28, 28)),
    ("conv 8→16, 5×5, 12×12", lambda: nn.Conv2d(8, 16, 5), (8, 12, 12)),
    ("conv 32→32, 3×3, 32×32", lambda: nn.Conv2d(32, 32, 3, padding=1), (32, 32, 32)),
    ("conv 128→128, 3×3, 8×8", lambda: nn.Conv2d(128, 128, 3, padding=1), (128, 8, 8)),
    ("conv 256→256, 3×3, 4×4", lambda: nn.Conv2d(256, 256, 3, padding=1), (256, 4, 4)),
    ("linear 256→256, 64 positions", lambda: nn.Linear(256, 256), (64, 256)),
]


def sum_sq_table(reps, budgets=(1 << 24, 1 << 20, 1 << 18)):
    """Σg² of one layer (SumGradSquared's hook on a saved input and δ, batch 32) at each chunk
    budget (`max_chunk_elements`), beside the layer's own weight gradient (what its backward
    pass computes for the summed gradient): the cost of the per-sample form."""
    n = 32
    print("| layer | own weight gradient (ms) | " + " | ".join(f"Σg², chunks of ≤ 2^{b.bit_length() - 1} floats (ms)" for b in budgets) + " |")
    print("|---|---|" + "---|" * len(budgets))
    for label, make, shape in SUM_SQ_LAYERS:
        torch.manual_seed(0)
        layer = make()
        x = torch.randn(n, *shape, requires_grad=False)
        out = layer(x)
        delta = torch.randn_like(out)
        helpers = [alt.SumGradSquared(layer, max_chunk_elements=b) for b in budgets]
        for h in helpers:
            h.remove()

        def own_weight_gradient():  # the backward pass alone, through the graph kept from the forward
            torch.autograd.grad(out, layer.weight, delta, retain_graph=True)

        def collect(h):
            with torch.no_grad():
                h._collect(layer, x, delta)
            h.zero_()
        steps = {"own": own_weight_gradient, **{b: (lambda h=h: collect(h)) for b, h in zip(budgets, helpers)}}
        times = {k: [] for k in steps}
        for rep in range(reps + 2):
            for k, step in steps.items():
                t0 = clock()
                step()
                if rep >= 2:
                    times[k].append(clock() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {label} | {med['own']:.2f} | " + " | ".join(f"{med[b]:.2f}" for b in budgets) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument("--training-only", action="store_true", help="only the full-training-step table")
    parser.add_argument("--sum-sq-only", action="store_true", help="only the Σg²-per-layer table")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall time, or this thread's CPU time (leaves out preemption on a shared machine)")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    global clock
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, AUTOLR_NUM_THREADS={os.environ['AUTOLR_NUM_THREADS']}, median of {reps}, {args.clock} clock\n")
    if not (args.training_only or args.sum_sq_only):
        print("Fixed-rate step, p = 1e7 (float32):\n")
        fixed_rate_table(reps)
        print("\nPer-step overhead (tiny tensors):\n")
        overhead_table(reps)
    if not args.sum_sq_only:
        print("\nFull training step, batch 128:\n")
        training_table(reps)
    if not args.training_only:
        print("\nΣg² of one layer, batch 32:\n")
        sum_sq_table(reps)


if __name__ == "__main__":
    main()

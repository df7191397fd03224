"""The benchmark suite: autolr's default and automatic algorithms against tuned Adam, tuned SGD
with momentum and the tuning-free peers' own packages, on three problems, in torch on the CPU.

    bash scripts/suite.sh [--quick]          # sets everything up, runs this, then the plots
    .venv-torch/bin/python benches/suite.py [--quick] [--out DIR] [--problems mlp,cnn,lm] [--seeds N]

Problems (the budget of each is fixed, the same for every entrant; BUDGETS below):
* ``mlp``: Fashion-MNIST MLP 784-120-10, tanh (Debian's dataset-fashion-mnist);
* ``cnn``: Fashion-MNIST CNN, a slim variant of DeepOBS's fmnist_2c2d: conv 5x5 x8, max-pool,
  conv 5x5 x16, max-pool, linear 256-10 (fmnist_2c2d has 32/64 channels and a 1024-unit layer,
  about 50x the compute: too much for a 2-core machine);
* ``lm``: a character-level transformer language model (examples/torch/transformer.py: token and
  position embeddings, 2 pre-norm blocks of LayerNorm, causal self-attention and an MLP) on the
  licence texts of Debian's base-files package (/usr/share/common-licenses, symlinks skipped).

Data splits, fixed before any run: Fashion-MNIST trains on the first ``train`` images of its
training set, validates on its last 5000 (never trained on) and tests on the full test set;
the corpus is cut into 1000-character chunks, chunk i going to validation when i % 10 == 8, to
test when i % 10 == 9, else to training.

Protocols fixed in advance (no test metric enters a choice):
* tuned Adam / tuned SGD+momentum: the grid point with the best mean validation metric over the
  seeds (accuracy; validation loss for the LM);
* the suite's pick for ``auto``: among the autolr configurations that need nothing but
  gradients (what ``autolr.torch.Auto(model.parameters())`` can be: no closure, no Σg² hooks),
  the best mean rank over the problems by mean validation metric, among those at most 1.5x
  Adam's wall time on every problem (all of them when none is).

Outputs in ``--out``: suite.md (the tables), suite.json (every run: metrics, wall time, the loss
curve and the learning rate the method chose, sampled during training); scripts/plot_suite.py
draws the plots from suite.json. Each run uses one torch thread and one autolr worker thread.
"""
import argparse
import gzip
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("AUTOLR_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bindings" / "python"))
sys.path.insert(0, str(ROOT / "examples" / "torch"))
sys.path.insert(0, str(ROOT / "benches"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import autolr  # noqa: E402
import autolr.torch as alt  # noqa: E402
from torch_adapter import models as fmnist_models  # noqa: E402
from transformer import CharTransformer  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
LICENSES = Path("/usr/share/common-licenses")

# The budgets (steps of one batch), chosen so that the full suite fits in 45 minutes on two quiet
# cores of this machine; --quick is a smoke run of the machinery.
BUDGETS = {
    "full": {"mlp": dict(train=20000, batch=128, epochs=3), "cnn": dict(train=10000, batch=128, epochs=2),
             "lm": dict(batch=16, context=64, steps=300, dim=32, heads=4, layers=2)},
    "quick": {"mlp": dict(train=512, batch=64, epochs=1), "cnn": dict(train=256, batch=64, epochs=1),
              "lm": dict(batch=4, context=16, steps=6, dim=16, heads=2, layers=2)},
}
ADAM_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
SGD_GRID = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
CURVE_POINTS = 25  # loss and lr samples per run
WALL_LIMIT = 1.5   # the goal's wall-time bound, relative to Adam


# data -------------------------------------------------------------------------------------------

def _idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def fashion_mnist(n_train, n_test=None):
    """(train, validation, test) as (images N×1×28×28 in [0, 1], labels) tensors."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"no Fashion-MNIST in {FMNIST}: apt-get install dataset-fashion-mnist (scripts/suite.sh does)")
    out = []
    for prefix in ("train", "t10k"):
        x = _idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
        y = _idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz", 8)
        out.append((torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))))
    (x, y), (xt, yt) = out
    if n_train > len(x) - 5000:
        raise SystemExit(f"train subset {n_train} overlaps the validation images (the last 5000)")
    n_test = len(xt) if n_test is None else n_test
    return (x[:n_train], y[:n_train]), (x[-5000:], y[-5000:]), (xt[:n_test], yt[:n_test])


def corpus():
    files = sorted(p for p in LICENSES.iterdir() if p.is_file() and not p.is_symlink())
    if not files:
        raise SystemExit(f"no licence texts in {LICENSES} (Debian's base-files package)")
    text = "\n".join(p.read_text(errors="replace") for p in files)
    return text, f"{LICENSES}/* ({len(files)} files of base-files)"


# problems ---------------------------------------------------------------------------------------

@dataclass
class Problem:
    key: str
    title: str
    metric: str              # the test metric's name
    higher_is_better: bool
    make_model: object
    batches: object          # seed -> list of (x, y)
    loss: object             # (model output, y) -> mean loss
    evaluate: object         # (model, split) -> {"loss": .., "acc" or "bpc": ..}
    splits: dict = field(default_factory=dict)
    note: str = ""


def image_problem(key, budget, quick):
    train, val, test = fashion_mnist(budget["train"], 1000 if quick else None)
    label = {"mlp": "MLP 784-120-10", "cnn": "CNN (conv5x5 8, conv5x5 16, linear)"}[key]
    make = fmnist_models()[label]
    batch, epochs = budget["batch"], budget["epochs"]
    x, y = train

    def batches(seed):
        g = torch.Generator().manual_seed(1000 + seed)
        out = []
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            out.extend((x[idx], y[idx]) for idx in order.split(batch) if len(idx) == batch)
        return out

    def evaluate(model, split):
        xs, ys = split
        with torch.no_grad():
            logits = torch.cat([model(xs[i:i + 1000]) for i in range(0, len(xs), 1000)])
        return {"loss": float(F.cross_entropy(logits, ys)), "acc": 100.0 * float((logits.argmax(1) == ys).float().mean())}

    steps = epochs * (len(x) // batch)
    title = {"mlp": "Fashion-MNIST MLP 784-120-10 (tanh)", "cnn": "Fashion-MNIST CNN (slim 2c2d: conv 5x5 x8, pool, conv 5x5 x16, pool, linear 256-10)"}[key]
    note = (f"first {len(x)} of 60000 training images, batch {batch}, {epochs} epochs ({steps} steps); "
            f"validation: the last 5000 training images; test: {len(test[0])} test images")
    return Problem(key, title, "test acc (%)", True, make, batches, F.cross_entropy, evaluate,
                   {"train": (x[:5000], y[:5000]), "val": val, "test": test}, note)


def lm_problem(budget):
    text, source = corpus()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    chunks = ids.split(1000)
    parts = {name: torch.cat([c for i, c in enumerate(chunks) if sel(i)]) for name, sel in
             (("train", lambda i: i % 10 < 8), ("val", lambda i: i % 10 == 8), ("test", lambda i: i % 10 == 9))}
    ctx, batch, steps = budget["context"], budget["batch"], budget["steps"]
    train = parts["train"]

    def windows(data):
        starts = torch.arange(0, len(data) - ctx - 1, ctx)
        return torch.stack([data[s:s + ctx] for s in starts]), torch.stack([data[s + 1:s + ctx + 1] for s in starts])

    def batches(seed):
        g = torch.Generator().manual_seed(1000 + seed)
        starts = torch.randint(0, len(train) - ctx - 1, (steps, batch), generator=g)
        return [(torch.stack([train[s:s + ctx] for s in row]), torch.stack([train[s + 1:s + ctx + 1] for s in row])) for row in starts]

    def loss(out, y):
        return F.cross_entropy(out.flatten(0, 1), y.flatten())

    def evaluate(model, split):
        xs, ys = split
        with torch.no_grad():
            total = sum(float(loss(model(xs[i:i + 64]), ys[i:i + 64])) * len(xs[i:i + 64]) for i in range(0, len(xs), 64))
        nats = total / len(xs)
        return {"loss": nats, "bpc": nats / math.log(2)}

    def make():
        return CharTransformer(len(chars), ctx, dim=budget["dim"], heads=budget["heads"], layers=budget["layers"])

    train_windows = windows(train)
    splits = {"train": (train_windows[0][:256], train_windows[1][:256]), "val": windows(parts["val"]), "test": windows(parts["test"])}
    note = (f"corpus {source}: {len(text)} characters, {len(chars)} distinct; train/val/test {len(train)}/{len(parts['val'])}/"
            f"{len(parts['test'])} characters; model dim {budget['dim']}, {budget['layers']} layers, {budget['heads']} heads, "
            f"context {ctx}; batch {batch}, {steps} steps")
    return Problem("lm", "Character-level transformer LM", "test bits/char", False, make, batches, loss, evaluate, splits, note)


# entrants ---------------------------------------------------------------------------------------

@dataclass
class Entrant:
    label: str
    family: str       # adam-grid, sgd-grid, peer, autolr
    build: object     # model -> optimizer
    sum_sq: bool = False      # needs autolr.torch.SumGradSquared
    closure: bool = False     # needs the closure (GI, vSGD's finite differences)
    lr: object = None         # optimizer -> the learning rate it uses now (group 0)
    gradients_only: bool = False  # a candidate for `auto`


def _group_lr(opt):
    return float(opt.param_groups[0]["lr"])


def _d_lr(opt):  # Prodigy, D-Adaptation: the step is d·lr
    g = opt.param_groups[0]
    return float(g["d"]) * float(g["lr"])


def _dog_lr(opt):
    eta = opt.param_groups[0]["eta"]
    return float(eta[0] if isinstance(eta, (list, tuple)) else eta)


def _sf_lr(opt):
    g = opt.param_groups[0]
    return float(g.get("scheduled_lr", g["lr"]))


def _autolr_lr(opt):
    return float(opt.lr[0])


def entrants(quick):
    import dadaptation
    import dog
    import prodigyopt
    import schedulefree

    out = []
    for lr in ADAM_GRID[1:4] if quick else ADAM_GRID:
        out.append(Entrant(f"adam lr={lr:g}", "adam-grid", lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr), lr=_group_lr))
    for lr in SGD_GRID[1:4] if quick else SGD_GRID:
        out.append(Entrant(f"sgd+momentum 0.9 lr={lr:g}", "sgd-grid", lambda m, lr=lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9), lr=_group_lr))
    out += [
        Entrant("schedulefree AdamWScheduleFree", "peer", lambda m: schedulefree.AdamWScheduleFree(m.parameters()), lr=_sf_lr),
        Entrant("prodigyopt Prodigy", "peer", lambda m: prodigyopt.Prodigy(m.parameters()), lr=_d_lr),
        Entrant("dadaptation DAdaptAdam", "peer", lambda m: dadaptation.DAdaptAdam(m.parameters()), lr=_d_lr),
        Entrant("dog-optimizer DoG", "peer", lambda m: dog.DoG(m.parameters()), lr=_dog_lr),
    ]

    def ours(name, base=None, **needs):
        label = name if base is None else f"{name}({base})"
        options = {} if base is None else {"base": base}
        return Entrant(label, "autolr", lambda m: alt.AutoLR(m.parameters(), name, **options), lr=_autolr_lr, **needs)

    needs = {"sgd": {}, "adam": {}, "tlr": {}, "prodigy": {}, "dadapt-adam": {}, "dog": {},
             "sf-adamw": {}, "auto-sgd": {"sum_sq": True}, "auto-adam": {"sum_sq": True}, "auto-adagrad": {"sum_sq": True},
             "vsgd-g": {"closure": True}, "vsgd-b": {"closure": True}, "vsgd-l": {"closure": True}}
    # autolr's own prodigy, dadapt-adam, dog and sf-adamw are the peers' rules (conformance tests):
    # they run here as candidates for `auto`, next to the peers' packages.
    alone = ["prodigy", "auto-adam", "tlr"] if quick else ["auto-sgd", "auto-adam", "auto-adagrad", "vsgd-l", "vsgd-g", "vsgd-b", "tlr",
                                                           "prodigy", "dadapt-adam", "dog", "sf-adamw"]
    gi_bases = ["adam", "auto-adam"] if quick else ["sgd", "adam", "auto-sgd", "auto-adam", "auto-adagrad", "prodigy", "dadapt-adam", "dog"]
    sf_bases = ["prodigy"] if quick else ["auto-sgd", "auto-adam", "auto-adagrad", "tlr", "prodigy", "dadapt-adam", "dog"]
    for name in alone:
        out.append(ours(name, **needs[name]))
    for base in gi_bases:
        out.append(ours("gi", base, closure=True, **needs[base]))
    for base in sf_bases:
        out.append(ours("schedule-free", base, **needs[base]))
    for e in out:
        e.gradients_only = e.family == "autolr" and not (e.sum_sq or e.closure)
    return out


# one run ----------------------------------------------------------------------------------------

def train_once(problem, entrant, seed):
    torch.manual_seed(seed)
    model = problem.make_model()
    opt = entrant.build(model)
    sgs = alt.SumGradSquared(model) if entrant.sum_sq else None
    modes = hasattr(opt, "train") and hasattr(opt, "eval")  # schedule-free: gradients at y, evaluation at x
    if modes:
        opt.train()
    batches = problem.batches(seed)
    every = max(1, len(batches) // CURVE_POINTS)
    curve, lrs, window = [], [], []
    diverged, error = False, None
    start = time.perf_counter()
    for k, (x, y) in enumerate(batches):
        try:
            if entrant.closure:
                def closure(backward=True, x=x, y=y):
                    opt.zero_grad()
                    loss = problem.loss(model(x), y)
                    if backward:
                        loss.backward()
                    return loss
                loss = opt.step(closure, sum_sq=sgs) if sgs is not None else opt.step(closure)
            else:
                opt.zero_grad()
                loss = problem.loss(model(x), y)
                loss.backward()
                opt.step(sum_sq=sgs) if sgs is not None else opt.step()
            value = float(loss.detach())
        except (autolr.Error, RuntimeError) as e:  # autolr refuses NaN/Inf inputs with an Error
            diverged, error = True, f"step {k}: {type(e).__name__}: {str(e)[:160]}"
            break
        if not math.isfinite(value):
            diverged, error = True, f"step {k}: loss {value}"
            break
        window.append(value)
        if (k + 1) % every == 0:
            curve.append((k + 1, sum(window) / len(window)))
            lrs.append((k + 1, entrant.lr(opt)))
            window = []
    wall = time.perf_counter() - start
    if modes:
        opt.eval()
    model.eval()
    result = {"entrant": entrant.label, "family": entrant.family, "seed": seed, "wall_s": wall, "steps": k + 1,
              "diverged": diverged, "error": error, "curve": curve, "lr": lrs}
    for split in ("train", "val", "test"):
        metrics = problem.evaluate(model, problem.splits[split])
        if not all(math.isfinite(v) for v in metrics.values()):
            result["diverged"] = True
            result["error"] = result["error"] or f"{split} metrics not finite"
        result[split] = metrics
    return result


# the report -------------------------------------------------------------------------------------

def score_key(problem):
    return "acc" if problem.higher_is_better else "loss"


def summarise(problem, runs):
    """Per entrant: means/stds of the metrics, wall time relative to Adam, divergences."""
    by = {}
    for r in runs:
        by.setdefault(r["entrant"], []).append(r)
    # Wall time per entrant: its fastest seed (other jobs only ever add time), relative to the
    # mean of the Adam grid points' fastest seeds.
    fastest = {label: min(r["wall_s"] for r in rs) for label, rs in by.items()}
    adam_wall = np.mean([fastest[label] for label, rs in by.items() if rs[0]["family"] == "adam-grid"])
    test_key = "acc" if problem.higher_is_better else "bpc"
    rows = {}
    for label, rs in by.items():
        def stat(split, key):
            v = np.array([r[split][key] for r in rs], dtype=float)
            return float(np.mean(v)), float(np.std(v))
        rows[label] = {"family": rs[0]["family"], "train_loss": stat("train", "loss"), "val": stat("val", score_key(problem)),
                       "test_loss": stat("test", "loss"), "test": stat("test", test_key),
                       "wall_rel": float(fastest[label] / adam_wall),
                       "wall_s": float(np.mean([r["wall_s"] for r in rs])),
                       "diverged": sum(r["diverged"] for r in rs), "seeds": len(rs),
                       "errors": [r["error"] for r in rs if r["error"]]}
    sign = 1 if problem.higher_is_better else -1
    for family in ("adam-grid", "sgd-grid"):
        grid = [label for label, row in rows.items() if row["family"] == family]
        best = max(grid, key=lambda label: sign * rows[label]["val"][0])
        rows[best]["tuned"] = True
    return rows


def pick_auto(problems, summaries):
    """The suite's protocol for `auto` (module docstring): validation metric ranks, wall bound."""
    candidates = [label for label, row in summaries[problems[0].key].items() if row.get("gradients_only")]
    if not candidates:
        raise SystemExit("no entrant needs gradients only: nothing to pick `auto` from (--only left them out?)")
    ranks = {c: [] for c in candidates}
    for p in problems:
        sign = 1 if p.higher_is_better else -1
        order = sorted(summaries[p.key], key=lambda label: -sign * summaries[p.key][label]["val"][0])
        for c in candidates:
            ranks[c].append(order.index(c) + 1)
    within = [c for c in candidates if all(summaries[p.key][c]["wall_rel"] <= WALL_LIMIT for p in problems)]
    pool = within or candidates
    best = min(pool, key=lambda c: (np.mean(ranks[c]), max(summaries[p.key][c]["wall_rel"] for p in problems)))
    return best, {c: float(np.mean(ranks[c])) for c in candidates}


def fmt(mean_std, digits):
    m, s = mean_std
    if not math.isfinite(m) or abs(m) >= 1e4:
        return f"{m:.3g}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(problem, rows, pick):
    test_name = "test acc (%)" if problem.higher_is_better else "test bits/char"
    val_name = "val acc (%)" if problem.higher_is_better else "val loss"
    lines = [f"| entrant | final train loss | {val_name} | test loss | {test_name} | wall / Adam | diverged |",
             "|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        name = f"**{label}** (tuned)" if row.get("tuned") else label
        if label == pick:
            name = f"**{label} = auto**"
        lines.append(f"| {name} | {fmt(row['train_loss'], 4)} | {fmt(row['val'], 2 if problem.higher_is_better else 4)} | "
                     f"{fmt(row['test_loss'], 4)} | {fmt(row['test'], 2 if problem.higher_is_better else 4)} | "
                     f"{row['wall_rel']:.2f} | {row['diverged']}/{row['seeds']} |")
    return "\n".join(lines)


def standing(problem, rows, auto):
    """The default (`auto`, the row it stands for) against tuned Adam, the best peer, and the
    goal, on one problem."""
    sign = 1 if problem.higher_is_better else -1
    tuned = next(label for label, row in rows.items() if row["family"] == "adam-grid" and row.get("tuned"))
    peers = [label for label, row in rows.items() if row["family"] == "peer"]
    best_peer = max(peers, key=lambda label: sign * rows[label]["test"][0])
    a = rows[auto]["test"][0]
    refs = {f"tuned Adam ({tuned})": rows[tuned]["test"][0], f"best peer ({best_peer})": rows[best_peer]["test"][0]}
    gaps = {name: sign * (a - ref) for name, ref in refs.items()}
    unit, digits = ("points", 2) if problem.higher_is_better else ("bits/char", 4)
    parts = [f"{a - refs[name]:+.{digits}f} {unit} vs {name}: {'at least as good' if g >= 0 else 'worse'}" for name, g in gaps.items()]
    wall = rows[auto]["wall_rel"]
    met = all(g >= 0 for g in gaps.values()) and wall <= WALL_LIMIT
    return (f"auto: {problem.metric} {a:.{2 if problem.higher_is_better else 4}f}; " + "; ".join(parts) +
            f"; wall {wall:.2f}x Adam; goal {'met' if met else 'NOT met'}"), met


def overview(problems, summaries, pick):
    """One line per problem: the default, tuned Adam and SGD, each peer, the best autolr entrant."""
    peers = [label for label, row in summaries[problems[0].key].items() if row["family"] == "peer"]
    lines = ["| problem (test metric) | auto = " + pick + " | tuned Adam | tuned SGD+momentum | " + " | ".join(peers) +
             " | best autolr entrant | auto wall / Adam |", "|---" * (len(peers) + 6) + "|"]
    for p in problems:
        rows = summaries[p.key]
        digits = 2 if p.higher_is_better else 3
        sign = 1 if p.higher_is_better else -1
        tuned = {f: next(label for label, row in rows.items() if row["family"] == f and row.get("tuned")) for f in ("adam-grid", "sgd-grid")}
        ours = max((label for label, row in rows.items() if row["family"] == "autolr"), key=lambda label: sign * rows[label]["test"][0])
        cell = lambda label: f"{rows[label]['test'][0]:.{digits}f}"  # noqa: E731
        lines.append(f"| {p.key} ({p.metric}) | **{cell(pick)}** | {cell(tuned['adam-grid'])} ({tuned['adam-grid'].split()[-1]}) | "
                     f"{cell(tuned['sgd-grid'])} ({tuned['sgd-grid'].split()[-1]}) | " + " | ".join(cell(label) for label in peers) +
                     f" | {cell(ours)} ({ours}, {rows[ours]['wall_rel']:.2f}x) | {rows[pick]['wall_rel']:.2f} |")
    return "\n".join(lines)


def report(problems, summaries, pick, ranks, meta):
    out = ["# Benchmark suite", "",
           f"Made by `{meta['command']}` ({meta['mode']} mode) in {meta['total_s'] / 60:.1f} min on {meta['machine']}; "
           f"torch {torch.__version__}, one torch thread, AUTOLR_NUM_THREADS={os.environ['AUTOLR_NUM_THREADS']}; "
           f"seeds {meta['seeds']}. Mean ± std over the seeds. Wall time: the training loop only (no evaluation), "
           "the fastest of an entrant's seeds (the machine is shared: other jobs only add time), relative to the mean "
           "of the Adam grid points' fastest seeds on the same problem in the same run (seeds outer, entrants inner, so "
           "that a passing load falls on all of them).", "",
           "Final train loss: the mean loss on the first 5000 training images (LM: 256 training windows) after "
           "training, in evaluation mode (schedule-free: at x), as the test and validation metrics. "
           "Tuned Adam / SGD+momentum: the grid point with the best mean validation metric (chosen before looking at "
           "test numbers). Divergence: a non-finite loss or metric, or autolr refusing a non-finite input; a diverged "
           "run's metrics are those of the parameters it had when it stopped.", ""]
    out.append(f"The suite's pick for `auto` by its protocol (module docstring of benches/suite.py): **{pick}** "
               f"(mean validation rank over the problems {ranks[pick]:.1f}; the full run's pick is what `auto` stands for "
               "in src/registry.rs, step for step the same, which a test checks against docs/results/suite.json). Ranks of every candidate: " +
               ", ".join(f"{c} {r:.1f}" for c, r in sorted(ranks.items(), key=lambda kv: kv[1])) + ".\n")
    out.append("## The default against tuned Adam and the peers (test metric, mean of seeds)\n")
    out += [overview(problems, summaries, pick), ""]
    for p in problems:
        line, _ = standing(p, summaries[p.key], pick)
        out.append(f"- **{p.key}**: {line}")
    out.append("")
    for p in problems:
        out += [f"## {p.title}", "", p.note, "", table(p, summaries[p.key], pick), ""]
        errors = [(label, e) for label, row in summaries[p.key].items() for e in row["errors"]]
        if errors:
            out.append("Stopped runs: " + "; ".join(f"{label}: {e}" for label, e in errors[:20]) + "\n")
        out.append(f"![loss curves](suite_{p.key}_loss.png) ![learning rates](suite_{p.key}_lr.png)\n")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed, few entrants (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--problems", default="mlp,cnn,lm")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--only", default=None, help="comma-separated entrant labels (a partial run, for a look)")
    parser.add_argument("--from-json", action="store_true", help="no runs: rewrite OUT/suite.md from OUT/suite.json")
    args = parser.parse_args()
    if args.from_json:
        return rewrite_report(Path(args.out))
    torch.set_num_threads(1)
    mode = "quick" if args.quick else "full"
    seeds = args.seeds or (1 if args.quick else 3)
    budgets = BUDGETS[mode]
    builders = {"mlp": lambda: image_problem("mlp", budgets["mlp"], args.quick), "cnn": lambda: image_problem("cnn", budgets["cnn"], args.quick),
                "lm": lambda: lm_problem(budgets["lm"])}
    keys = args.problems.split(",")
    unknown = [k for k in keys if k not in builders]
    if unknown:
        raise SystemExit(f"unknown problem(s) {unknown}; accepted: {', '.join(builders)}")
    problems = [builders[k]() for k in keys]
    field_ = entrants(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        field_ = [e for e in field_ if e.label in wanted or e.family in ("adam-grid", "peer")]
    print(f"{len(problems)} problems x {len(field_)} entrants x {seeds} seeds ({mode})", flush=True)
    started = time.perf_counter()
    runs, summaries = {}, {}
    for p in problems:
        print(f"== {p.key}: {p.note}", flush=True)
        runs[p.key] = []
        # Seeds outside, entrants inside: a load that other jobs put on the machine for a while
        # falls on every entrant alike, not on the seeds of one.
        for seed in range(seeds):
            for e in field_:
                r = train_once(p, e, seed)
                runs[p.key].append(r)
                test_key = "acc" if p.higher_is_better else "bpc"
                print(f"{p.key} {e.label:34s} seed {seed}: train loss {r['train']['loss']:.4f} test {test_key} {r['test'][test_key]:.4f} "
                      f"{r['wall_s']:.1f}s{'  DIVERGED ' + str(r['error']) if r['diverged'] else ''}", flush=True)
        summaries[p.key] = summarise(p, runs[p.key])
        for e in field_:
            summaries[p.key][e.label]["gradients_only"] = e.gradients_only
    pick, ranks = pick_auto(problems, summaries)
    meta = {"command": "bash scripts/suite.sh" + (" --quick" if args.quick else ""), "mode": mode, "seeds": seeds,
            "total_s": time.perf_counter() - started, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    md = report(problems, summaries, pick, ranks, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.md").write_text(md + "\n")
    (out / "suite.json").write_text(json.dumps({"meta": meta, "pick": pick, "ranks": ranks,
                                                "problems": {p.key: {"title": p.title, "note": p.note, "metric": p.metric,
                                                                     "summary": summaries[p.key], "runs": runs[p.key]} for p in problems}}))
    print(md)
    print(f"\nwrote {out / 'suite.md'} and {out / 'suite.json'} ({meta['total_s']:.0f} s)")


def rewrite_report(out):
    """suite.md again from suite.json (the report's wording changed, the runs did not)."""
    data = json.loads((out / "suite.json").read_text())
    problems = [Problem(key, p["title"], p["metric"], p["metric"] != "test bits/char", None, None, None, None, note=p["note"])
                for key, p in data["problems"].items()]
    summaries = {key: p["summary"] for key, p in data["problems"].items()}
    (out / "suite.md").write_text(report(problems, summaries, data["pick"], data["ranks"], data["meta"]) + "\n")
    print(f"rewrote {out / 'suite.md'} from {out / 'suite.json'}")


if __name__ == "__main__":
    main()

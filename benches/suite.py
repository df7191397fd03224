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

Research protocol (issue 20 item 5), written down before any of its runs: which configurations
might close the goal's gaps (the default's test metric at least tuned Adam's and the best peer's,
at <= 1.5x Adam's wall time), each with the reason it might help (RESEARCH below). Every option is
one global value, the same on all three problems; nothing is tuned per problem; budgets, seeds
(3), splits, and the two protocols above are unchanged; a research entrant becomes ``auto`` only
through the pick above (it must need gradients alone), never by a test metric.
* GI over its best bases (adam: best LM row; prodigy: best CNN row) with ``adapt_every`` 2 and 4:
  the paper's cost remedy (Appendix B.1), one re-evaluation every 2 or 4 steps, to bring GI's
  1.6-1.8x down towards Adam's time. Needs the closure, so a candidate for the goal, not ``auto``.
* AutoOpt's smoothing: auto-adam at nu = 0.999 (at its 0.99999, gamma_E moves ~0.5% of the way to
  the oracle in 468 steps, so its rate is nearly its cautious start), auto-sgd at nu = 0.99 (its
  rate at 0.9 follows the oracle's noise: 72% / 31% on the MLP / CNN). Need Sum g^2: not ``auto``.
* Global defaults of the gradient-only peers: prodigy and dadapt-adam with
  ``use_bias_correction`` 1 (without it, m/sqrt(v) is 1.6-6.5x Adam's m-hat/sqrt(v-hat) over these
  budgets: 1 - beta2^t is still 0.14-0.37 at their last step, so the rate applied is a multiple
  of the d found); prodigy with
  ``safeguard_warmup`` 1 (bounds d's growth while the first steps are large).
* Schedule-free over the automatic bases: over prodigy and dadapt-adam with the base's
  ``beta1`` 0 (the reference runs Adam without its first moment under schedule-free: the
  interpolation is the momentum, and keeping both is momentum twice); over prodigy and tlr with
  ``r`` 1 (weights (t+1)^r: later iterates, made at the rate the base has found, count more than
  the early ones made while it was still growing; over an automatic base ``weight_lr_power`` acts
  only through a warmup, whose length in steps would be a per-budget choice, so it is not varied).
Rows the comparison needs run again in the same run (wall time is only ever relative to the Adam
of the run a row comes from): the Adam grid, the peers, prodigy (``auto`` today), gi(adam) and
gi(prodigy) (adapt_every 1, beside their variants), and schedule-free over prodigy, dadapt-adam
and dog (rows a fix of the peers' displacement under a wrapper moved). ``--merge`` joins such a
partial run to the full one: a label found in several runs takes its row from the last, every row
says which run it is from, and the pick is made again over the merged rows by the same rule.

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
RESEARCH_SUMMARY = (
    "besides the 41 entrants of the first full run, 13 configurations that might close the goal's gaps, each one global "
    "setting on every problem: GI over adam and over prodigy with adapt_every 2 and 4 (fewer extra forward passes); "
    "auto-adam at nu 0.999 and auto-sgd at nu 0.99 (AutoOpt's smoothing); prodigy and dadapt-adam with "
    "use_bias_correction 1, prodigy with safeguard_warmup 1; schedule-free over prodigy and dadapt-adam with the base's "
    "beta1 0, over prodigy and tlr with r 1. Selection: unchanged — `auto` is the pick below (gradients-only "
    "configurations, mean validation rank, ≤ 1.5× Adam's wall time); seeds, budgets and splits unchanged; nothing per "
    "problem; no test metric enters a choice.")

# The research entrants (module docstring: the protocol, and why each might help): (algorithm,
# base, options), every option one global value on every problem.
RESEARCH = [
    ("gi", "adam", {"adapt_every": 2}), ("gi", "adam", {"adapt_every": 4}),
    ("gi", "prodigy", {"adapt_every": 2}), ("gi", "prodigy", {"adapt_every": 4}),
    ("auto-adam", None, {"nu": 0.999}), ("auto-sgd", None, {"nu": 0.99}),
    ("prodigy", None, {"use_bias_correction": 1}), ("prodigy", None, {"safeguard_warmup": 1}),
    ("dadapt-adam", None, {"use_bias_correction": 1}),
    ("schedule-free", "prodigy", {"beta1": 0}), ("schedule-free", "dadapt-adam", {"beta1": 0}),
    ("schedule-free", "prodigy", {"r": 1}), ("schedule-free", "tlr", {"r": 1}),
]
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

    def ours(name, base=None, settings=None, **needs):
        label = (name if base is None else f"{name}({base})") + "".join(f" {k}={v:g}" for k, v in (settings or {}).items())
        options = dict({} if base is None else {"base": base}, **(settings or {}))
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
    if not quick:
        for name, base, options in RESEARCH:
            need = dict(needs[base], closure=True) if name == "gi" else needs[base or name]
            out.append(ours(name, base, options, **need))
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
    mark_tuned(problem, rows)
    return rows


def mark_tuned(problem, rows):
    """The tuned point of each grid that has rows: the best mean validation metric."""
    sign = 1 if problem.higher_is_better else -1
    for family in ("adam-grid", "sgd-grid"):
        grid = [label for label, row in rows.items() if row["family"] == family]
        for label in grid:
            rows[label].pop("tuned", None)
        if grid:
            rows[max(grid, key=lambda label: sign * rows[label]["val"][0])]["tuned"] = True


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
    merged = any("run" in row for row in rows.values())  # rows from several runs (--merge): say which
    lines = [f"| entrant | final train loss | {val_name} | test loss | {test_name} | wall / Adam | diverged |" + (" run |" if merged else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if merged else "")]
    for label, row in rows.items():
        name = f"**{label}** (tuned)" if row.get("tuned") else label
        if label == pick:
            name = f"**{label} = auto**"
        lines.append(f"| {name} | {fmt(row['train_loss'], 4)} | {fmt(row['val'], 2 if problem.higher_is_better else 4)} | "
                     f"{fmt(row['test_loss'], 4)} | {fmt(row['test'], 2 if problem.higher_is_better else 4)} | "
                     f"{row['wall_rel']:.2f} | {row['diverged']}/{row['seeds']} |" + (f" {row['run']} |" if merged else ""))
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
        tuned = {f: next((label for label, row in rows.items() if row["family"] == f and row.get("tuned")), None) for f in ("adam-grid", "sgd-grid")}
        ours = max((label for label, row in rows.items() if row["family"] == "autolr"), key=lambda label: sign * rows[label]["test"][0])
        cell = lambda label: f"{rows[label]['test'][0]:.{digits}f}"  # noqa: E731
        grid = lambda label: "–" if label is None else f"{cell(label)} ({label.split()[-1]})"  # noqa: E731 (a grid --only left out)
        lines.append(f"| {p.key} ({p.metric}) | **{cell(pick)}** | {grid(tuned['adam-grid'])} | "
                     f"{grid(tuned['sgd-grid'])} | " + " | ".join(cell(label) for label in peers) +
                     f" | {cell(ours)} ({ours}, {rows[ours]['wall_rel']:.2f}x) | {rows[pick]['wall_rel']:.2f} |")
    return "\n".join(lines)


def describe_run(meta):
    entrants = "every entrant" if not meta.get("only") else "the Adam grid, the peers and the `--only` entrants"
    return (f"`{meta['command']}` ({meta['mode']} mode, {entrants}; problems {meta.get('problems', 'mlp,cnn,lm')}) in "
            f"{meta['total_s'] / 60:.1f} min on {meta['machine']}; torch {meta.get('torch', torch.__version__)}, "
            f"one torch thread, AUTOLR_NUM_THREADS=1; seeds {meta['seeds']}")


def rerun_note(reruns):
    """What running a row again changed (merge), measured: the same seeds and inputs need not
    give the same bits in another run (torch's own rows move too), and a chaotic run turns a
    rounding into a different trajectory."""
    moved = [r for r in reruns if r["val_diff"] != 0 or r["test_diff"] != 0]
    if not reruns:
        return ""
    text = (f"Rows run again ({len(reruns)} entrant × problem pairs): {len(reruns) - len(moved)} with the same mean validation "
            f"and test metrics to the last digit, {len(moved)} different")
    if not moved:
        return text + "."
    worst = {}
    for r in moved:
        if r["problem"] not in worst or abs(r["val_diff"]) > abs(worst[r["problem"]]["val_diff"]):
            worst[r["problem"]] = r
    return text + (" (torch.optim.Adam's rows too, so not the library alone: presumably the rounding of torch's CPU kernels "
                   "on the runs' hosts, amplified by training; the largest change of a mean validation metric per problem: " +
                   ", ".join(f"{k} {r['label']} {r['val_diff']:+.4g}" for k, r in worst.items()) + ").")


def report(problems, summaries, pick, ranks, meta):
    runs = meta.get("runs")
    if runs:  # --merge
        made = ("Made from several runs, joined by `benches/suite.py --merge` (a label found in more than one run takes "
                "its row from the last; the run column says which; every wall time is relative to the Adam grid of the "
                "row's own run): " + "; ".join(f"run {m['run']}: {describe_run(m)}" for m in runs) + ". " + rerun_note(meta["reruns"]))
    else:
        made = f"Made by {describe_run(meta)}."
    out = ["# Benchmark suite", "",
           made + " Mean ± std over the seeds. Wall time: the training loop only (no evaluation), "
           "the fastest of an entrant's seeds (the machine is shared: other jobs only add time), relative to the mean "
           "of the Adam grid points' fastest seeds on the same problem in the same run (seeds outer, entrants inner, so "
           "that a passing load falls on all of them).", "",
           "Research protocol (issue 20 item 5; fixed before its runs, benches/suite.py's module docstring and RESEARCH): " +
           RESEARCH_SUMMARY, "",
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
    parser.add_argument("--only", default=None, help="comma-separated entrant labels, besides the Adam grid and the peers (a partial run; --merge joins it to a full one)")
    parser.add_argument("--from-json", action="store_true", help="no runs: rewrite OUT/suite.md from OUT/suite.json")
    parser.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                        help="no runs: join DIR/suite.json of each run (a full one first, then partial --only runs) into OUT")
    args = parser.parse_args()
    if args.from_json:
        return rewrite_report(Path(args.out))
    if args.merge:
        return merge([Path(d) for d in args.merge], Path(args.out))
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
        unknown = wanted - {e.label for e in field_}
        if unknown:
            raise SystemExit(f"--only: no entrant {sorted(unknown)}")
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
    command = " ".join(["bash scripts/suite.sh"] + (["--quick"] if args.quick else []) +
                       ([f"--problems {args.problems}"] if args.problems != parser.get_default("problems") else []) +
                       ([f"--only {args.only}"] if args.only else []))
    meta = {"command": command, "mode": mode, "seeds": seeds, "only": args.only, "problems": args.problems, "torch": torch.__version__,
            "total_s": time.perf_counter() - started, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    md = report(problems, summaries, pick, ranks, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.md").write_text(md + "\n")
    (out / "suite.json").write_text(json.dumps({"meta": meta, "pick": pick, "ranks": ranks,
                                                "problems": {p.key: {"title": p.title, "note": p.note, "metric": p.metric,
                                                                     "summary": summaries[p.key], "runs": runs[p.key]} for p in problems}}))
    print(md)
    print(f"\nwrote {out / 'suite.md'} and {out / 'suite.json'} ({meta['total_s']:.0f} s)")


def stored_problems(data):
    return [Problem(key, p["title"], p["metric"], p["metric"] != "test bits/char", None, None, None, None, note=p["note"])
            for key, p in data["problems"].items()]


def rewrite_report(out):
    """suite.md again from suite.json (the report's wording changed, the runs did not)."""
    data = json.loads((out / "suite.json").read_text())
    summaries = {key: p["summary"] for key, p in data["problems"].items()}
    (out / "suite.md").write_text(report(stored_problems(data), summaries, data["pick"], data["ranks"], data["meta"]) + "\n")
    print(f"rewrote {out / 'suite.md'} from {out / 'suite.json'}")


def merge(sources, out):
    """One suite.json and suite.md from several runs of the same mode and seeds (the module
    docstring's protocol): run i is sources[i - 1]; a label in several runs keeps the row (and the
    raw runs) of the last; every row keeps the wall time its own run measured against its own
    Adam grid and says which run it is from; the tuned grid points and the pick are made again
    over the merged rows by the same rules."""
    datas = [json.loads((d / "suite.json").read_text()) for d in sources]
    if any("runs" in d["meta"] for d in datas):
        raise SystemExit("--merge takes the suite.json of single runs (a merged one lists its runs: merge those)")
    if len({(d["meta"]["mode"], d["meta"]["seeds"]) for d in datas}) != 1:
        raise SystemExit("--merge: the runs differ in mode or seeds: " + ", ".join(f"{d['meta']['mode']}/{d['meta']['seeds']}" for d in datas))
    metas, problems, reruns = [], {}, []
    for run, (source, data) in enumerate(zip(sources, datas), 1):
        metas.append(dict(data["meta"], run=run, source=str(source)))
        for key, p in data["problems"].items():
            into = problems.setdefault(key, {"title": p["title"], "note": p["note"], "metric": p["metric"], "summary": {}, "runs": []})
            if p["note"] != into["note"]:
                raise SystemExit(f"--merge: {key} differs between the runs ({into['note']!r} against {p['note']!r})")
            for label, row in p["summary"].items():
                if label in into["summary"]:
                    before = into["summary"][label]
                    reruns.append({"problem": key, "label": label, "runs": [before["run"], run],
                                   "val_diff": row["val"][0] - before["val"][0], "test_diff": row["test"][0] - before["test"][0]})
                into["summary"][label] = dict(row, run=run)  # a label seen before keeps its place in the table
            into["runs"] = [r for r in into["runs"] if r["entrant"] not in p["summary"]] + [dict(r, run=run) for r in p["runs"]]
    data = {"meta": {"mode": datas[0]["meta"]["mode"], "seeds": datas[0]["meta"]["seeds"], "runs": metas, "reruns": reruns}, "problems": problems}
    stored = stored_problems(data)
    summaries = {key: p["summary"] for key, p in problems.items()}
    for p in stored:
        mark_tuned(p, summaries[p.key])
    data["pick"], data["ranks"] = pick_auto(stored, summaries)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps({"meta": data["meta"], "pick": data["pick"], "ranks": data["ranks"], "problems": problems}))
    (out / "suite.md").write_text(report(stored, summaries, data["pick"], data["ranks"], data["meta"]) + "\n")
    print(f"merged {len(sources)} runs into {out / 'suite.md'} and {out / 'suite.json'}; pick {data['pick']}")


if __name__ == "__main__":
    main()

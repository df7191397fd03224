#!/usr/bin/env python3
"""Plots of the Fashion-MNIST benchmark (examples/fashion_mnist) from its CSV files.

For every model with results/<model>_loss.csv (and results/<model>_schedule.csv) writes

  results/<model>_loss.png      training loss vs epochs, mean over seeds: every automatic
                                method, one panel per family, with the tuned SGD and Adam
                                baselines drawn in every panel;
  results/<model>_lr.png        the learning rate each automatic method chose vs steps
                                (mean over groups, first seed), one panel per family, with the
                                tuned baselines' fixed rates as horizontal lines;
  results/<model>_momentum.png  the momentum AutoOpt chose vs steps (auto-* and gi(auto-*)).

usage: python scripts/plot_results.py [RESULTS_DIR]   (default: results)
Needs numpy and matplotlib (Agg backend: no display required).
"""

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FAMILIES = [
    ("AutoOpt", lambda m: m.startswith("auto-")),
    ("vSGD", lambda m: m.startswith("vsgd-")),
    ("GI (over the base in brackets)", lambda m: m.startswith("gi(")),
    ("TLR", lambda m: m.startswith("tlr")),
]
BASELINE_STYLE = {
    "sgd (tuned)": dict(color="black", linestyle="--", linewidth=2.2),
    "adam (tuned)": dict(color="dimgray", linestyle=":", linewidth=2.6),
}
LINESTYLES = ["-", "--", "-.", ":"]
# Learning rates outside this range are drawn off the panel and their range is put in the legend.
LR_RANGE = (1e-7, 1e5)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def family_of(method):
    for index, (_, member) in enumerate(FAMILIES):
        if member(method):
            return index
    return None


def ordered(methods):
    seen = []
    for m in methods:
        if m not in seen:
            seen.append(m)
    return seen


def loss_curves(rows):
    """method -> (epochs, mean train loss over seeds, diverged?) for kinds auto and tuned."""
    by_method = defaultdict(lambda: defaultdict(list))
    diverged = defaultdict(bool)
    order = []
    for r in rows:
        if r["kind"] not in ("auto", "tuned"):
            continue
        order.append(r["method"])
        by_method[r["method"]][int(r["epoch"])].append(num(r["train_loss"]))
        diverged[r["method"]] |= r["status"] != "completed"
    curves = {}
    for method in ordered(order):
        epochs = sorted(by_method[method])
        # A mean over seeds only where every seed has a finite value (a stopped run ends there).
        counts = [len(by_method[method][e]) for e in epochs]
        full = max(counts)
        xs, ys = [], []
        for e, c in zip(epochs, counts):
            values = by_method[method][e]
            if c == full and all(math.isfinite(v) for v in values):
                xs.append(e)
                ys.append(float(np.mean(values)))
        curves[method] = (np.array(xs), np.array(ys), diverged[method])
    return curves


def tuned_lrs(rows):
    """'sgd (tuned)' -> learning rate chosen for the first seed."""
    lrs = {}
    for r in rows:
        if r["kind"] == "tuned" and r["method"] not in lrs:
            lrs[r["method"]] = num(r.get("lr"))
    return lrs


def style_for(index):
    cmap = plt.get_cmap("tab10")
    return dict(color=cmap(index % 10), linestyle=LINESTYLES[(index // 10) % len(LINESTYLES)], linewidth=1.6)


def plot_loss(model, curves, out):
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True, sharey=True)
    initial = [c[1][0] for c in curves.values() if len(c[1]) and c[0][0] == 0]
    start = float(np.median(initial)) if initial else 2.3
    finite = np.concatenate([c[1] for c in curves.values() if len(c[1])] or [np.array([start])])
    bottom = max(float(np.min(finite)) * 0.8, 1e-4)
    top = start * 10  # losses that explode beyond this are drawn off the top and labelled
    for panel, (title, member) in enumerate(FAMILIES):
        ax = axes.flat[panel]
        methods = [m for m in curves if member(m)]
        for i, method in enumerate(methods):
            xs, ys, diverged = curves[method]
            label = method
            if len(ys) and ys[-1] > top:
                label += f" (ends at {ys[-1]:.2g}, off scale)"
            if diverged:
                label += " (diverged)"
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label, **style_for(i))
            if diverged and len(xs):
                ax.plot(xs[-1], min(ys[-1], top), marker="x", markersize=10, color=line.get_color())
        for method, style in BASELINE_STYLE.items():
            if method in curves:
                xs, ys, _ = curves[method]
                ax.plot(xs, ys, label=method, **style)
        ax.set_title(title)
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        if panel >= 2:
            ax.set_xlabel("epoch")
        if panel % 2 == 0:
            ax.set_ylabel("training loss (mean over seeds)")
    fig.suptitle(f"Fashion-MNIST, {model}: training loss (whole training set, after each epoch)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def schedules(rows):
    """method -> (steps, lr_mean, momentum_mean) for the first seed that has data."""
    first_seed = {}
    data = defaultdict(lambda: ([], [], []))
    for r in rows:
        method, seed = r["method"], r["seed"]
        first_seed.setdefault(method, seed)
        if seed != first_seed[method]:
            continue
        steps, lrs, moms = data[method]
        steps.append(int(r["step"]))
        lrs.append(num(r["lr_mean"]))
        moms.append(num(r["momentum_mean"]))
    return {m: tuple(np.array(v) for v in d) for m, d in data.items()}, first_seed


def plot_lr(model, sched, seeds, baselines, out):
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    for panel, (title, member) in enumerate(FAMILIES):
        ax = axes.flat[panel]
        methods = [m for m in sched if member(m)]
        for i, method in enumerate(methods):
            steps, lrs, _ = sched[method]
            positive = np.where(lrs > 0, lrs, np.nan)  # vSGD's slow start moves nothing (lr 0)
            label = method
            finite = positive[np.isfinite(positive)]
            if len(finite) and (finite.min() < LR_RANGE[0] or finite.max() > LR_RANGE[1]):
                label += f" (off scale: {finite.min():.2g} … {finite.max():.2g})"
            ax.plot(steps, positive, label=label, **style_for(i))
        for method, style in BASELINE_STYLE.items():
            lr = baselines.get(method)
            if lr is not None and math.isfinite(lr):
                ax.axhline(lr, label=f"{method}: lr {lr:.3g}", **style)
        ax.set_title(title)
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, LR_RANGE[0]), min(hi, LR_RANGE[1]))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if panel >= 2:
            ax.set_xlabel("optimizer step")
        if panel % 2 == 0:
            ax.set_ylabel("learning rate (opt.lr, mean over groups)")
    seed_note = ", ".join(sorted(set(seeds.values())))
    fig.suptitle(f"Fashion-MNIST, {model}: learning rate each method chose (seed {seed_note})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_momentum(model, sched, out):
    methods = [m for m in sched if m.startswith("auto-") or m.startswith("gi(auto-")]
    if not methods:
        return False
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, method in enumerate(methods):
        steps, _, moms = sched[method]
        ax.plot(steps, moms, label=method, **style_for(i))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("momentum β (opt.momentum, mean over groups)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Fashion-MNIST, {model}: momentum AutoOpt chose")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    loss_files = sorted(results.glob("*_loss.csv"))
    if not loss_files:
        print(f"plot_results: no *_loss.csv in {results}/ (run the benchmark first)")
        return 0
    written = []
    for loss_file in loss_files:
        model = loss_file.name[: -len("_loss.csv")]
        rows = read_csv(loss_file)
        curves = loss_curves(rows)
        if curves:
            out = results / f"{model}_loss.png"
            plot_loss(model, curves, out)
            written.append(out)
        schedule_file = results / f"{model}_schedule.csv"
        if schedule_file.exists():
            sched, seeds = schedules(read_csv(schedule_file))
            if sched:
                out = results / f"{model}_lr.png"
                plot_lr(model, sched, seeds, tuned_lrs(rows), out)
                written.append(out)
                out = results / f"{model}_momentum.png"
                if plot_momentum(model, sched, out):
                    written.append(out)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

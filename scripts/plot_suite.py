"""Plots of the benchmark suite (benches/suite.py) from DIR/suite.json: per problem, the training
loss curves and the learning rate each method used, seed 0, one line per entrant (the Adam and
SGD grids by their tuned point only, to keep the plots readable; the row `auto` stands for drawn thick).

    .venv/bin/python scripts/plot_suite.py DIR      # writes DIR/suite_{problem}_loss.png, DIR/suite_{problem}_lr.png
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    data = json.loads((out / "suite.json").read_text())
    for key, problem in data["problems"].items():
        summary = problem["summary"]
        shown = {label for label, row in summary.items() if row["family"] not in ("adam-grid", "sgd-grid") or row.get("tuned")}
        runs = [r for r in problem["runs"] if r["seed"] == 0 and r["entrant"] in shown]
        for what, ylabel, log_y in (("curve", "training loss (running mean)", False), ("lr", "learning rate used (group 0)", True)):
            fig, ax = plt.subplots(figsize=(10, 6))
            for i, r in enumerate(runs):
                points = [(s, v) for s, v in r[what] if v is not None and v > 0 or not log_y]
                if not points:
                    continue
                steps, values = zip(*points)
                style = "-" if r["family"] == "autolr" else "--"
                width = 2.5 if r["entrant"] == data["pick"] else 1.0
                label = r["entrant"] + (" (tuned)" if summary[r["entrant"]].get("tuned") else "") + (" = auto" if r["entrant"] == data["pick"] else "")
                ax.plot(steps, values, style, lw=width, label=label, color=plt.cm.tab20(i % 20))
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            if log_y:
                ax.set_yscale("log")
            else:
                finals = [r["curve"][-1][1] for r in runs if r["curve"]]
                if finals:
                    ax.set_ylim(0, 2.5 * sorted(finals)[len(finals) // 2] + 0.5)
            ax.set_title(f"{problem['title']} — seed 0")
            ax.legend(fontsize=6, ncol=2)
            fig.tight_layout()
            name = out / f"suite_{key}_{'loss' if what == 'curve' else 'lr'}.png"
            fig.savefig(name, dpi=90)
            plt.close(fig)
            print(f"wrote {name}")


if __name__ == "__main__":
    main()

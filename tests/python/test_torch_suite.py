"""The benchmark suite (benches/suite.py, `bash scripts/suite.sh`) end to end in its --quick mode
(tiny budgets, one seed, few entrants): every problem's table with every entrant, the tuned grid
points, the curves the plots are drawn from, and the pick for `auto`."""
import json
import math
import subprocess
import sys

from conftest import ROOT, import_torch

import_torch()  # the suite needs torch: a missing torch fails here with the usual message


def test_quick_suite_runs_end_to_end_and_writes_the_tables(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benches" / "suite.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    md = (tmp_path / "suite.md").read_text()
    data = json.loads((tmp_path / "suite.json").read_text())
    assert list(data["problems"]) == ["mlp", "cnn", "lm"]
    assert md.count("| entrant | final train loss |") == 3
    assert "## The default against tuned Adam and the peers" in md
    for key, problem in data["problems"].items():
        summary = problem["summary"]
        assert {row["family"] for row in summary.values()} == {"adam-grid", "sgd-grid", "peer", "autolr"}
        # One tuned point per grid, chosen by the validation metric.
        assert sorted(row["family"] for row in summary.values() if row.get("tuned")) == ["adam-grid", "sgd-grid"]
        sign = 1 if key != "lm" else -1
        for family in ("adam-grid", "sgd-grid"):
            grid = {label: row for label, row in summary.items() if row["family"] == family}
            tuned = next(label for label, row in grid.items() if row.get("tuned"))
            assert all(sign * grid[tuned]["val"][0] >= sign * row["val"][0] for row in grid.values())
        assert {r["entrant"] for r in problem["runs"]} == set(summary)
        for r in problem["runs"]:
            assert r["wall_s"] > 0 and r["steps"] > 0, r["entrant"]
            assert r["curve"] and len(r["curve"]) == len(r["lr"]), r["entrant"]
            assert r["diverged"] or all(math.isfinite(v) for split in ("train", "val", "test") for v in r[split].values()), r["entrant"]
        for label in summary:
            assert f"| {label} " in md or f"| **{label}" in md, f"{key}: no row for {label}"
        adam = [row["wall_rel"] for row in summary.values() if row["family"] == "adam-grid"]
        assert abs(sum(adam) / len(adam) - 1.0) < 1e-9  # wall times are relative to the Adam grid's mean
    pick = data["pick"]
    assert data["problems"]["mlp"]["summary"][pick]["gradients_only"]
    assert f"**{pick} = auto**" in md

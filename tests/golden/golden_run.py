"""The golden run: every algorithm (GI over every base, both per-sample forms and both scale
conventions where per-sample data is used, vSGD with given and finite-difference curvature,
TLR global/per group and windowed) for 50 steps from fixed inputs, hashed to one digest per
case: the parameter bits after every step with the rates read back (the trajectory), and the
final checkpoint bytes (kept apart, so a change of the checkpoint format alone shows as such).

`python golden_run.py --write` records tests/golden/golden.json; `test_golden.py` reruns it and
requires the same bits, so a refactor that changes any result, by one ulp, fails. Rerecord only
for a change that is meant to change results, and say so in the commit."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "bindings" / "python"))
import autolr  # noqa: E402

SHAPES = [(13, 7), (7,), (300,)]
GROUPS = [0, 0, 1]
STEPS = 50
N = 6


def cases():
    fixed = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop"]
    auto = ["auto-sgd", "auto-adam", "auto-adagrad"]
    vsgd = ["vsgd-l", "vsgd-g", "vsgd-b"]
    out = []
    for name in fixed:
        out.append((name, {}, "none"))
    for name in auto:
        for form in ("sum_sq", "per_sample"):
            for scale in ("sample", "mean"):
                out.append((name, {}, f"{form}/{scale}"))
    for name in vsgd:
        out.append((name, {}, "per_sample/sample+curvature"))
        out.append((name, {}, "sum_sq/mean+curvature"))
        out.append((name, {}, "fd"))
    out.append(("tlr", {}, "none"))
    out.append(("tlr", {"per_group": 1, "window": 3}, "none"))
    out.append(("tlr", {"momentum": 0.8, "weight_decay": 5e-4}, "none"))
    for base in fixed:
        out.append(("gi", {"base": base}, "none+loss"))
    out.append(("gi", {"base": "sgd", "f_star": 0.0}, "none+loss"))
    for base in auto:
        out.append(("gi", {"base": base}, "sum_sq/sample+loss"))
        out.append(("gi", {"base": base}, "per_sample/mean+loss"))
    for base in vsgd:
        out.append(("gi", {"base": base}, "per_sample/sample+curvature+loss"))
    out.append(("gi", {"base": "tlr"}, "none+loss"))
    return out


def run_case(name, options, mode):
    rng = np.random.default_rng(7)
    target = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = autolr.Optimizer(name, params, groups=GROUPS, **options)
    digest = hashlib.sha256()

    def loss_at(ps):
        return float(sum(0.5 * np.sum((p.astype(np.float64) - c) ** 2) for p, c in zip(ps, target)))

    for t in range(STEPS):
        noise = [rng.standard_normal((N,) + s).astype(np.float32) * 0.3 for s in SHAPES]
        rows = [(p - c + z).astype(np.float32) for p, c, z in zip(params, target, noise)]
        grads = [r.mean(axis=0).astype(np.float32) for r in rows]
        kw = {}
        form, _, extras = mode.partition("+")
        if form in ("sum_sq/sample", "sum_sq/mean", "per_sample/sample", "per_sample/mean"):
            kind, scale = form.split("/")
            k = np.float32(1.0 / N) if scale == "mean" else np.float32(1.0)
            scaled = [(r * k).astype(np.float32) for r in rows]
            if kind == "sum_sq":
                kw["sum_sq"] = [np.sum(s * s, axis=0, dtype=np.float32) for s in scaled]
            else:
                kw["per_sample"] = scaled
            kw["per_sample_scale"] = scale
            kw["batch_size"] = N
        if "curvature" in extras:
            kw["curvature"] = [np.full(s, 1.0, np.float32) + 0.1 * np.abs(z[0]) for s, z in zip(SHAPES, noise)]
        if form == "fd":
            kw["grad_closure"] = lambda ps: [(p - c).astype(np.float32) for p, c in zip(ps, target)]
        if "loss" in extras:
            kw["loss"] = loss_at(params)
            kw["closure"] = lambda: loss_at(params)
        opt.step(grads, **kw)
        for p in params:
            digest.update(p.tobytes())
        digest.update(np.asarray(opt.lr, np.float64).tobytes())
        digest.update(np.asarray(opt.momentum, np.float64).tobytes())
    return {"trajectory": digest.hexdigest(), "checkpoint": hashlib.sha256(opt.state_dict()).hexdigest()}


def key(name, options, mode):
    return f"{name} {json.dumps(options, sort_keys=True)} {mode}"


def digests():
    return {key(*c): run_case(*c) for c in cases()}


if __name__ == "__main__":
    result = digests()
    if "--write" in sys.argv:
        (HERE / "golden.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))

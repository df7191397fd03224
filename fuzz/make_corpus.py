"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/): for `checkpoint`, a real
checkpoint of every algorithm in both tensor layouts (and GI over each of its fuzzed bases),
fresh and after 3 steps, behind the configuration byte that fuzz_targets/checkpoint.rs reads;
for `options` and `step`, a few byte strings per algorithm. Run from the repository root after
`cargo build --release`:  .venv/bin/python fuzz/make_corpus.py
"""
import hashlib
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))
os.environ.setdefault("AUTOLR_LIB", os.path.join(os.path.dirname(__file__), "..", "target", "release", "libautolr.so"))
import autolr  # noqa: E402

ALGORITHMS = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "auto-sgd", "auto-adam", "auto-adagrad", "gi", "tlr", "vsgd-l", "vsgd-g", "vsgd-b"]
LAYOUTS = [([3, 5], None), ([4, 2, 3], [0, 0, 1])]  # as fuzz_targets/checkpoint.rs
GI_BASES = ["sgd", "adam", "auto-sgd", "vsgd-l"]
ROOT = os.path.join(os.path.dirname(__file__), "corpus")


def write(target, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def steps(opt, name, params, k):
    rng = np.random.default_rng(k)
    for _ in range(k):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        kw = {}
        if name.startswith("auto-") or (name == "gi" and opt_base(opt).startswith("auto-")):
            kw = dict(sum_sq=[4 * g * g + 0.1 for g in grads], batch_size=4)
        if name.startswith("vsgd") or (name == "gi" and opt_base(opt).startswith("vsgd")):
            kw["curvature"] = [np.ones_like(g) for g in grads]
        if name == "gi":
            loss = lambda: float(sum(0.25 * np.sum(p.astype(np.float64) ** 2) for p in params))
            kw.update(loss=loss(), closure=loss)
        opt.step(grads, **kw)


def opt_base(opt):
    return getattr(opt, "_fuzz_base", "")


for li, (lens, groups) in enumerate(LAYOUTS):
    for ai, name in enumerate(ALGORITHMS):
        bases = GI_BASES if name == "gi" else [None]
        for bi, base in enumerate(bases):
            config = ai + len(ALGORITHMS) * li + (2 * len(ALGORITHMS) * bi if base else 0)
            for k in (0, 3):
                params = [np.linspace(-1, 1, n).astype(np.float32) for n in lens]
                opt = autolr.Optimizer(name, params, groups=groups, **({"base": base} if base else {}))
                opt._fuzz_base = base or ""
                steps(opt, name, params, k)
                write("checkpoint", bytes([config]) + opt.state_dict())

rng = random.Random(17)
for ai in range(len(ALGORITHMS)):
    for _ in range(3):
        write("options", bytes([ai]) + bytes(rng.randrange(256) for _ in range(rng.randrange(8, 96))))
        write("step", bytes([ai]) + bytes(rng.randrange(256) for _ in range(rng.randrange(16, 200))))
print("corpus written to", ROOT)

"""Same inputs, same bits: across runs, between the AVX2 kernels and the portable ones
(AUTOLR_PORTABLE=1 forces the latter), for every algorithm over a short training run; and for
the per-sample reductions, between one worker thread and several (AUTOLR_NUM_THREADS)."""
import os
import subprocess
import sys
from pathlib import Path

import autolr

HERE = Path(__file__).resolve().parent

SCRIPT = r"""
import hashlib, sys
import numpy as np
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import autolr
rng = np.random.default_rng(3)
# "large": one tensor big enough for its 8 × len per-sample reduction and its update (3 or 4
# floats an element) to be split over three workers.
large = sys.argv[3] == "large"
shapes = [(1 << 20,)] if large else [(37, 11), (11,), (5000,)]
# Every algorithm, GI over auto-adam, and schedule-free over gi over auto-adam (its φ_y pass).
names = ["auto-sgd", "auto-adam", "auto-adagrad", "gi"] if large else [*autolr.ALGORITHMS, "schedule-free over gi"]
steps = 4 if large else 25
digest = hashlib.sha256()
for label in names:
    if label == "schedule-free over gi":
        name, extra = "schedule-free", {"base": "gi", "base_base": "auto-adam"}
    else:
        name, extra = label, {"base": "auto-adam"} if label == "gi" else {}
    gi = name == "gi" or extra.get("base") == "gi"
    params = [np.ones(s, np.float32) * 0.1 for s in shapes]
    opt = autolr.Optimizer(name, params, **extra)
    for t in range(steps):
        rows = [(p * 0.5 + rng.standard_normal((8,) + s)).astype(np.float32) for p, s in zip(params, shapes)]
        kw = {}
        if name.startswith("auto-") or name.startswith("vsgd") or gi:
            kw.update(per_sample=rows)
        if name.startswith("vsgd"):
            kw.update(curvature=[np.full(s, 0.5, np.float32) for s in shapes])
        if gi:
            kw.update(loss=1.0 / (t + 1), closure=lambda: 0.9 / (t + 1))
        opt.step([r.mean(axis=0) for r in rows], **kw)
    for p in params:
        digest.update(p.tobytes())
    digest.update(opt.state_dict())
print(digest.hexdigest())
"""


def run(portable, threads=None, case="all"):
    env = dict(os.environ)
    env.pop("AUTOLR_PORTABLE", None)
    env.pop("AUTOLR_NUM_THREADS", None)
    if portable:
        env["AUTOLR_PORTABLE"] = "1"
    if threads:
        env["AUTOLR_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(HERE.parents[1] / "bindings" / "python"), str(HERE), case],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_same_bits_run_to_run_and_on_both_kernel_builds():
    first = run(portable=False)
    assert first == run(portable=False)
    assert first == run(portable=True), "the AVX2 and portable kernels gave different bits"
    assert len(autolr.ALGORITHMS) >= 14


def test_same_bits_on_one_worker_thread_and_on_several():
    one = run(portable=False, threads=1, case="large")
    assert one == run(portable=False, threads=2, case="large"), "1 and 2 worker threads gave different bits"
    assert one == run(portable=False, threads=3, case="large"), "1 and 3 worker threads gave different bits"

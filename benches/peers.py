"""The tuning-free peers (docs/algorithms.md §6): autolr's native step beside the authors' torch
step, on the same tensors, in one run, on one thread, with a memcpy of the step's floor bytes.

    AUTOLR_LIB=target/release/libautolr.so .venv-torch/bin/python benches/peers.py [--reps 15] [--quick]

For prodigy, dadapt-adam, dog, sf-adamw and sf-sgd, with p = 1e7 float32 parameters in 1 and in
100 tensors, against prodigyopt 1.1.2 `Prodigy`, dadaptation 3.2 `DAdaptAdam`, dog-optimizer 1.0.3
`DoG`, schedulefree 1.4.1 `AdamWScheduleFree` / `SGDScheduleFree` (each with its defaults, as a
user gets it: schedulefree's foreach path, torch.set_num_threads(1)).

What is timed on the autolr side is the library's step: `alr_step` through the Python binding's
ctypes call with the pointer arrays built once (as the torch adapter caches them), so the only
Python cost is one foreign call (a few µs, printed as "call overhead" from a 1-element
optimizer), not the binding's per-tensor argument checks. The library's workers are limited
to one (AUTOLR_NUM_THREADS=1, set before the library loads).

Each repetition times, back to back, a memcpy of the floor bytes (libc memmove through ctypes:
B/2 bytes read, B/2 written), autolr's step with the NaN/Inf check on (the default), the same
with it off, and the reference's step; every ratio is the median over the repetitions of that
repetition's ratio (this VM's bandwidth drifts by tens of percent within a minute, and pairing
compares the same moment), every time the median of its own column.

Floor bytes: the bytes a step must move if each per-element buffer is read once and those it
changes written once (float32; the NaN check's extra read of g is not counted, it is the check's
price, the difference between the two autolr columns):

- prodigy: read g, θ, m, v, s, p0; write θ, m, v, s: 40 B/element;
- dadapt-adam: read g, θ, s, m, v; write θ, s, m, v: 36 B;
- dog: read g, θ, x0; write θ: 16 B;
- sf-adamw: read g, y, z, v; write y, z, v: 28 B;
- sf-sgd: read g, y, z; write y, z: 20 B.

Prodigy's and DoG's move needs this step's sums over the whole group (d, η), so one pass cannot
do it: the least a two-pass step moves is printed too (prodigy: pass 1 reads g, θ, s, p0 and writes
s, pass 2 reads g, θ, m, v and writes θ, m, v: 52 B; dog: 12 B, then read g, θ, write θ: 24 B).
"""
import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["AUTOLR_NUM_THREADS"] = "1"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bindings" / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import autolr  # noqa: E402

import dadaptation  # noqa: E402
import dog  # noqa: E402
import prodigyopt  # noqa: E402
import schedulefree  # noqa: E402

P = 10_000_000


def train_mode(opt):
    """schedulefree's optimizers step only in train mode."""
    opt.train()
    return opt


# name, floor bytes per element, two-pass bytes per element (None: one pass suffices), reference
CASES = [
    ("prodigy", 40, 52, lambda ps: prodigyopt.Prodigy(ps)),
    ("dadapt-adam", 36, None, lambda ps: dadaptation.DAdaptAdam(ps)),
    ("dog", 16, 24, lambda ps: dog.DoG(ps)),
    ("sf-adamw", 28, None, lambda ps: train_mode(schedulefree.AdamWScheduleFree(ps))),
    ("sf-sgd", 20, None, lambda ps: train_mode(schedulefree.SGDScheduleFree(ps))),
]


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Memcpy:
    """libc memmove of `nbytes / 2` bytes: moves `nbytes` (half read, half written)."""

    def __init__(self, nbytes):
        half = nbytes // 2 // 4
        self.src = np.ones(half, np.float32)
        self.dst = np.zeros(half, np.float32)
        self.args = (self.dst.ctypes.data, self.src.ctypes.data, half * 4)

    def __call__(self):
        ctypes.memmove(*self.args)


def pointers(arrays):
    ptrs = (ctypes.POINTER(ctypes.c_float) * len(arrays))(*[a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays])
    return ctypes.cast(ptrs, ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))


class Native:
    """autolr's step over numpy arrays, through one alr_step call per step."""

    def __init__(self, name, params, grads):
        self.opt = autolr.Optimizer(name, params)
        self.ptrs = (pointers(params), pointers(grads))
        self.keep = (params, grads)

    def check(self, on):
        self.opt.set_option("check_finite", 1.0 if on else 0.0)

    def __call__(self):
        self.opt._step_raw(*self.ptrs)


def tensors(count, seed=0):
    """`count` tensors of P/count floats: parameters ~ N(0, 1), gradients 1e-3 · N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    size = P // count
    return [torch.randn(size, generator=g) for _ in range(count)], [torch.randn(size, generator=g) * 1e-3 for _ in range(count)]


def measure(name, floor, make_ref, count, reps, warm):
    start, grads = tensors(count)
    ref_params = [torch.nn.Parameter(p.clone()) for p in start]
    for p, g in zip(ref_params, grads):
        p.grad = g
    ref = make_ref(ref_params)
    # The same values for autolr: its own parameters, the reference's gradient tensors (read only).
    native = Native(name, [p.numpy().copy() for p in start], [g.numpy() for g in grads])
    copy = Memcpy(floor * P)
    for _ in range(warm):
        copy()
        native()
        ref.step()
    rows = []
    for _ in range(reps):
        t_copy = timed(copy)
        native.check(True)
        t_on = timed(native)
        native.check(False)
        t_off = timed(native)
        t_ref = timed(ref.step)
        rows.append((t_copy, t_on, t_off, t_ref))
    med = lambda f: statistics.median(f(r) for r in rows)  # noqa: E731
    return {
        "copy": med(lambda r: r[0]), "on": med(lambda r: r[1]), "off": med(lambda r: r[2]), "ref": med(lambda r: r[3]),
        "vs_ref": med(lambda r: r[1] / r[3]), "frac_on": med(lambda r: r[0] / r[1]), "frac_off": med(lambda r: r[0] / r[2]),
    }


def call_overhead(reps):
    """One alr_step on a 1-element sgd optimizer: the foreign call's own cost."""
    native = Native("sgd", [np.zeros(1, np.float32)], [np.zeros(1, np.float32)])
    for _ in range(100):
        native()
    return statistics.median(timed(native) for _ in range(reps * 100))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 1 warm-up (a smoke run)")
    parser.add_argument("--only", nargs="*", help="algorithms to run (default: all)")
    args = parser.parse_args()
    reps, warm = (3, 1) if args.quick else (args.reps, 3)
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(f"torch {torch.__version__} (threads: {torch.get_num_threads()}), autolr {autolr.__version__} "
          f"(AUTOLR_NUM_THREADS={os.environ['AUTOLR_NUM_THREADS']}), p = {P:.0e}, median of {reps} after {warm} warm-up; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"call overhead (alr_step on 1 element through ctypes): {call_overhead(reps) * 1e6:.1f} µs\n")
    print("| algorithm | tensors | floor B/elem | autolr ms | reference ms | autolr / reference | autolr GB/s | memcpy GB/s "
          "| fraction of memcpy | check off: ms | fraction | fraction at two-pass bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, floor, two_pass, make_ref in CASES:
        if args.only and name not in args.only:
            continue
        for count in (1, 100):
            m = measure(name, floor, make_ref, count, reps, warm)
            nbytes = floor * P
            two = f"{m['frac_off'] * two_pass / floor:.2f} ({two_pass} B, check off)" if two_pass else "—"
            print(f"| {name} | {count} | {floor} | {m['on'] * 1e3:.2f} | {m['ref'] * 1e3:.2f} | {m['vs_ref']:.2f} | "
                  f"{nbytes / m['on'] / 1e9:.1f} | {nbytes / m['copy'] / 1e9:.1f} | {m['frac_on']:.2f} | "
                  f"{m['off'] * 1e3:.2f} | {m['frac_off']:.2f} | {two} |", flush=True)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()

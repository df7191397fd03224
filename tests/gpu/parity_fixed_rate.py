"""CPU/GPU parity of the fixed-rate CUDA kernels (cuda/fixed_rate.cu), for a machine with an
NVIDIA GPU, nvcc and PyTorch (the lent GPU machines have all three):

    python3 tests/gpu/parity_fixed_rate.py            # parity, sentinels, 2^28 elements, CUDA graph
    python3 tests/gpu/parity_fixed_rate.py --small    # without the 2^28 tensor (for compute-sanitizer)
    compute-sanitizer --tool memcheck python3 tests/gpu/parity_fixed_rate.py --small

It compiles cuda/fixed_rate.cu into a shared library with the flags build.rs uses, runs every
rule for 25 steps on fresh random inputs on the GPU (through the kernels' C entry points, on a
torch stream) and on the CPU (the autolr library, CPU build, `cargo build --release`), and
checks that the parameters after 25 steps agree (they depend on every step's state): bit for bit is expected (no FMA contraction, IEEE
division and square root on both sides), float32 tolerance is asserted. The coefficient
structs are formed here from ALGORITHMS.md §0, independently of the Rust code. Every device
buffer has NaN sentinels on both sides that must survive (no out-of-bounds writes). Prints one
line per check and a summary with the date, GPU and driver, for docs/gpu-validation.md.
"""
import ctypes
import os
import sys

import numpy as np
import torch

from common import autolr, build_kernels, padded, report, sentinels_intact, summary

STEPS = 25
SIZES = [1, 255, 256, 257, 4097, 100_003]


def f32(x):
    return float(np.float32(x))


def coeffs(rule, options, t):
    """The kernel argument for `rule` at step t (from 1), as ALGORITHMS.md §0 defines it."""
    lr, wd = options["lr"], options.get("weight_decay", 0.0)
    if rule == "sgd":
        return [f32(lr), f32(wd)], None
    if rule == "momentum":
        mu, damp = options["momentum"], options["dampening"]
        keep, gain = (0.0, 1.0) if t == 1 else (f32(mu), f32(1.0 - f32(damp)))
        return [f32(lr), f32(wd), f32(mu), keep, gain], bool(options["nesterov"])
    if rule == "adagrad":
        return [f32(lr), f32(wd), f32(options["eps"])], None
    if rule == "rmsprop":
        a = options["alpha"]
        return [f32(lr), f32(wd), f32(a), f32(1.0 - a), f32(options["eps"])], None
    b1, b2, eps = options["beta1"], options["beta2"], options["eps"]
    decoupled = rule == "adamw"
    return [0.0 if decoupled else f32(wd), f32(b1), f32(b2), f32(1.0 - b1), f32(1.0 - b2),
            f32(lr / (1.0 - b1 ** t)), f32(1.0 / np.sqrt(1.0 - b2 ** t)), f32(eps),
            f32(lr * wd) if decoupled else 0.0], None


def pack(values, flag):
    """The C struct bytes: float fields, then (momentum) one bool padded to 4-byte alignment."""
    raw = np.asarray(values, np.float32).tobytes()
    if flag is not None:
        raw += bytes([1 if flag else 0, 0, 0, 0])
    return ctypes.create_string_buffer(raw, len(raw))


RULES = {
    "sgd": ("alr_cuda_sgd_step", 0, dict(lr=0.05, weight_decay=0.01)),
    "momentum": ("alr_cuda_momentum_step", 1, dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=1.0, weight_decay=0.01)),
    "adagrad": ("alr_cuda_adagrad_step", 1, dict(lr=0.05, eps=1e-10, weight_decay=0.01)),
    "rmsprop": ("alr_cuda_rmsprop_step", 1, dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.01)),
    "adam": ("alr_cuda_adam_step", 2, dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    "adamw": ("alr_cuda_adam_step", 2, dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
}


def run_rule(lib, rule, n, rng, stream):
    entry, state_floats, options = RULES[rule]
    kernel = getattr(lib, entry)
    kernel.restype = ctypes.c_int
    # (param, grad, state, len, coeffs, status — NULL: unchecked, stream)
    kernel.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    theta0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(STEPS)]

    params = [theta0.copy()]
    opt = autolr.Optimizer(rule, params, **options)
    for g in grads:
        opt.step([g])

    p_buf, p = padded(theta0)
    s_buf, s = padded(np.zeros(n * state_floats, np.float32)) if state_floats else (None, None)
    g_buf, g_dev = padded(np.zeros(n, np.float32))
    for t, g in enumerate(grads, start=1):
        g_dev.copy_(torch.from_numpy(g))
        values, flag = coeffs(rule, options, t)
        err = kernel(p.data_ptr(), g_dev.data_ptr(), s.data_ptr() if s is not None else None, n,
                     ctypes.cast(pack(values, flag), ctypes.c_void_p), None, ctypes.c_void_p(stream.cuda_stream))
        assert err == 0, f"{rule}: launch returned cudaError {err}"
    torch.cuda.synchronize()
    gpu = p.cpu().numpy()
    cpu = params[0]
    identical = np.array_equal(gpu.view(np.uint32), cpu.view(np.uint32))
    close = np.allclose(gpu, cpu, rtol=1e-6, atol=1e-7)
    intact = sentinels_intact(p_buf, g_buf, s_buf)
    return identical, close, intact


def graph_replay(lib, stream):
    """Captures one Adam step in a CUDA graph and replays it: same result as launching it."""
    kernel = lib.alr_cuda_adam_step
    kernel.restype = ctypes.c_int
    kernel.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    n = 1 << 20
    g = torch.randn(n, device="cuda")
    coeff = pack(*coeffs("adam", RULES["adam"][2], 1))
    results = []
    for use_graph in (False, True):
        p = torch.ones(n, device="cuda")
        s = torch.zeros(2 * n, device="cuda")
        if use_graph:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                kernel(p.data_ptr(), g.data_ptr(), s.data_ptr(), n, ctypes.cast(coeff, ctypes.c_void_p), None, ctypes.c_void_p(stream.cuda_stream))
            # Capture records the launch without running it: replay twice = two steps.
            graph.replay()
            graph.replay()
        else:
            with torch.cuda.stream(stream):
                for _ in range(2):
                    kernel(p.data_ptr(), g.data_ptr(), s.data_ptr(), n, ctypes.cast(coeff, ctypes.c_void_p), None, ctypes.c_void_p(stream.cuda_stream))
        torch.cuda.synchronize()
        results.append(p.cpu().numpy())
    return np.array_equal(results[0], results[1])


def main():
    small = "--small" in sys.argv
    lib = build_kernels("fixed_rate.cu")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    stream = torch.cuda.Stream()
    failures = 0
    sizes = SIZES + ([] if small else [1 << 28])
    for rule in RULES:
        for n in sizes:
            if n == 1 << 28 and rule not in ("sgd", "adam"):
                continue  # one large tensor per state shape keeps the run short
            identical, close, intact = run_rule(lib, rule, n, rng, stream)
            failures += report(f"{rule:8s} n={n:>10d}", close and intact, f"bit-identical={identical} within-f32={close} sentinels={intact}")
    if not small:
        failures += report("CUDA graph capture + replay of an Adam step matches eager launches", graph_replay(lib, stream))
    summary(failures)


if __name__ == "__main__":
    main()

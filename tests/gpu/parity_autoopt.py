"""CPU/GPU parity of the AutoOpt CUDA kernels (cuda/autoopt.cu), for a machine with an NVIDIA
GPU, nvcc and PyTorch (the lent GPU machines have all three):

    python3 tests/gpu/parity_autoopt.py            # parity, bad input, 2^28 elements, CUDA graph
    python3 tests/gpu/parity_autoopt.py --small    # without the 2^28 tensor (for compute-sanitizer)
    compute-sanitizer --tool memcheck python3 tests/gpu/parity_autoopt.py --small

It compiles cuda/autoopt.cu with build.rs's flags and runs auto-sgd, auto-adam and auto-adagrad
for 20 steps on fresh random inputs — three tensors (lengths not multiples of the block size)
in two groups, N ∈ {2, 33, 256}, both per-sample forms (the N × len matrix and Σ g_i²), both
scale conventions — through the kernels' C entry points on a torch stream, and the same steps
on the CPU through the autolr library (CPU build, `cargo build --release`). Asserted to float32
tolerance (the device sums in a different fixed order): the parameters after 20 steps, and
every step's α, β, V, a per group. Every device buffer lies between NaN sentinels that must
survive, and the partial-sum buffers start as NaN (the kernels must write them before they
read them). Also: a NaN gradient and a negative S set the status
and leave parameters and state as they were; a captured CUDA graph of a whole step replays to
the same bits as eager launches. Prints one line per check and a summary (date, GPU, driver).
"""
import ctypes
import os
import sys

import numpy as np
import torch

from common import autolr, build_kernels, padded, report, sentinels_intact, summary

STEPS = 20
LENS = [257, 4097, 30_011]
GROUPS = [0, 1, 0]  # tensor → group; group 0's tensors are not adjacent
PRECONDS = {"auto-sgd": (0, 1), "auto-adam": (1, 2), "auto-adagrad": (2, 2)}  # kernel id, state floats

# struct AutoOptGroup (cuda/autoopt.cu)
GROUP_DTYPE = np.dtype([("gamma", "<f8", 2), ("noise", "<f8"), ("a", "<f8"), ("c", "<f8"), ("e", "<f8"),
                        ("det", "<f8"), ("gamma_oracle", "<f8", 2), ("coef_g", "<f4"), ("coef_d", "<f4"),
                        ("moved", "<i4"), ("pad", "<i4"), ("steps", "<u8"), ("fallbacks", "<u8"),
                        ("clamps", "<u8"), ("skips", "<u8")])


def declare(lib):
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.alr_cuda_autoopt_partials.restype = sz
    lib.alr_cuda_autoopt_partials.argtypes = [sz]
    lib.alr_cuda_autoopt_moments.restype = ctypes.c_int
    lib.alr_cuda_autoopt_moments.argtypes = [ctypes.c_int, vp, vp, vp, vp, sz, ctypes.c_float, sz, vp, vp, vp, vp, vp]
    lib.alr_cuda_autoopt_solve.restype = ctypes.c_int
    lib.alr_cuda_autoopt_solve.argtypes = [vp, vp, vp, vp, vp, sz, ctypes.c_double, ctypes.c_double, vp, vp]
    lib.alr_cuda_autoopt_update.restype = ctypes.c_int
    lib.alr_cuda_autoopt_update.argtypes = [ctypes.c_int, vp, vp, vp, sz, vp, vp, vp, vp]
    lib.alr_cuda_autoopt_struct_size.restype = ctypes.c_long
    lib.alr_cuda_autoopt_struct_size.argtypes = [ctypes.c_int]
    sizes = [lib.alr_cuda_autoopt_struct_size(i) for i in range(3)]
    assert sizes == [GROUP_DTYPE.itemsize, 32, 16], f"struct sizes {sizes}: update GROUP_DTYPE"


def device_bytes(host_bytes):
    """A device buffer (uint8) holding `host_bytes`."""
    return torch.from_numpy(np.frombuffer(bytearray(host_bytes), np.uint8).copy()).cuda()


class DeviceAutoOpt:
    """The device side of one optimizer: what the Rust engine will own, driven through the
    kernels' entry points in the order of a step."""

    def __init__(self, lib, name, lens, groups, options, stream):
        self.lib, self.lens, self.groups, self.stream = lib, lens, groups, stream
        self.kernel, floats = PRECONDS[name]
        self.n_groups = max(groups) + 1
        # Partials ordered by group, so each group's lie together.
        order = sorted(range(len(lens)), key=lambda t: (groups[t], t))
        self.offset, ranges, at = {}, [], 0
        for g in range(self.n_groups):
            start = at
            for t in order:
                if groups[t] == g:
                    self.offset[t] = at
                    at += lib.alr_cuda_autoopt_partials(lens[t])
            ranges.append((start, at - start))
        self.ranges = device_bytes(np.array(ranges, np.uint64).tobytes())
        self.partials = torch.full((at * 4,), float("nan"), dtype=torch.float64, device="cuda")
        self.group_sums = torch.full((self.n_groups * 4,), float("nan"), dtype=torch.float64, device="cuda")
        # Group state starts zeroed (steps = 0: γ_E starts at [γ_max, 0] on the device).
        self.group_state = device_bytes(np.zeros(self.n_groups, GROUP_DTYPE).tobytes())
        opts = np.array([[options["nu"][g], options["gamma_max"], options.get("eps", 0.0), options.get("beta2", 0.0)]
                         for g in range(self.n_groups)], np.float64)
        self.options = device_bytes(opts.tobytes())
        self.status = torch.zeros(4, dtype=torch.int32, device="cuda")  # struct DeviceStatus (cuda/status.cuh)
        self.state_bufs = [padded(np.zeros(n * floats, np.float32)) for n in lens]

    def group_ptr(self, g):
        return self.group_state.data_ptr() + g * GROUP_DTYPE.itemsize

    def options_ptr(self, g):
        return self.options.data_ptr() + g * 32

    def step(self, params, grads, data, form, n, k):
        """Enqueues one step; `data`: per tensor the device matrix (N × len) or Σg² vector."""
        lib, s = self.lib, ctypes.c_void_p(self.stream.cuda_stream)
        for t, n_elems in enumerate(self.lens):
            g = self.groups[t]
            rows, sum_sq = (data[t].data_ptr(), None) if form == "per_sample" else (None, data[t].data_ptr())
            rc = lib.alr_cuda_autoopt_moments(self.kernel, grads[t].data_ptr(), self.state_bufs[t][1].data_ptr(), sum_sq, rows,
                                              n if form == "per_sample" else 0, k, n_elems, self.group_ptr(g), self.options_ptr(g),
                                              self.status.data_ptr(), self.partials.data_ptr() + 32 * self.offset[t], s)
            assert rc == 0, f"moments: cudaError {rc}"
        square_scale = k * k if form == "sum_sq" else 0.0
        rc = lib.alr_cuda_autoopt_solve(self.partials.data_ptr(), self.ranges.data_ptr(), self.group_sums.data_ptr(),
                                        self.group_state.data_ptr(), self.options.data_ptr(), self.n_groups, float(n),
                                        square_scale, self.status.data_ptr(), s)
        assert rc == 0, f"solve: cudaError {rc}"
        for t, n_elems in enumerate(self.lens):
            g = self.groups[t]
            rc = lib.alr_cuda_autoopt_update(self.kernel, params[t].data_ptr(), grads[t].data_ptr(), self.state_bufs[t][1].data_ptr(),
                                             n_elems, self.group_ptr(g), self.options_ptr(g), self.status.data_ptr(), s)
            assert rc == 0, f"update: cudaError {rc}"

    def group_host(self):
        torch.cuda.synchronize()
        return np.frombuffer(self.group_state.cpu().numpy().tobytes(), GROUP_DTYPE)


def batch(rng, lens, n, scale):
    """Per tensor: mean gradient, per-sample matrix entries and Σ entries² (float32), in the
    caller's convention: g_i ("sample") or g_i/N ("mean")."""
    grads, rows, sum_sq = [], [], []
    for length in lens:
        signal = rng.standard_normal(length).astype(np.float32)
        samples = (signal + 2.0 * rng.standard_normal((n, length))).astype(np.float32)
        grads.append(samples.mean(axis=0, dtype=np.float64).astype(np.float32))
        entries = samples / np.float32(n) if scale == "mean" else samples
        rows.append(np.ascontiguousarray(entries, np.float32))
        sum_sq.append((entries.astype(np.float64) ** 2).sum(axis=0).astype(np.float32))
    return grads, rows, sum_sq


def run_case(lib, name, form, scale, n, rng, stream, lens=LENS, groups=GROUPS):
    theta0 = [rng.standard_normal(length).astype(np.float32) for length in lens]
    cpu_params = [p.copy() for p in theta0]  # updated in place by the CPU optimizer
    opt = autolr.Optimizer(name, cpu_params, groups=groups)
    options = {"nu": [opt.get_option("nu", g) for g in range(max(groups) + 1)], "gamma_max": opt.get_option("gamma_max", 0)}
    if name != "auto-sgd":
        options["eps"] = opt.get_option("eps", 0)
    if name == "auto-adam":
        options["beta2"] = opt.get_option("beta2", 0)
    dev = DeviceAutoOpt(lib, name, lens, groups, options, stream)
    params = [padded(p) for p in theta0]
    k = float(n) if scale == "mean" else 1.0
    worst = {"lr": 0.0, "momentum": 0.0, "V": 0.0, "a": 0.0}
    for _ in range(STEPS):
        grads, rows, sum_sq = batch(rng, lens, n, scale)
        data_host = rows if form == "per_sample" else sum_sq
        opt.step(grads, per_sample_scale=scale, batch_size=n, **{form: data_host})
        g_dev = [padded(g) for g in grads]
        d_dev = [padded(d) for d in data_host]
        dev.step([p[1] for p in params], [g[1] for g in g_dev], [d[1] for d in d_dev], form, n, k)
        gs = dev.group_host()
        tel = opt.telemetry()
        for g in range(dev.n_groups):
            alpha = 1.0 - gs["gamma"][g][0]
            pairs = {"lr": (alpha, opt.lr[g]), "momentum": (gs["gamma"][g][1] / alpha, opt.momentum[g]),
                     "V": (gs["noise"][g], tel["V"][g]), "a": (gs["a"][g], tel["a"][g])}
            for key, (gpu, cpu) in pairs.items():
                # lr and momentum lie in [0, 1): compared relative to at least 1e-3.
                floor = 1e-3 if key in ("lr", "momentum") else 1e-30
                worst[key] = max(worst[key], abs(gpu - cpu) / max(abs(cpu), floor))
        if not sentinels_intact(*[b for b, _ in g_dev + d_dev]):
            return False, "sentinels of an input buffer overwritten"
    torch.cuda.synchronize()
    status = int(dev.status[0].item())
    gpu = [p[1].cpu().numpy() for p in params]
    rel = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))) for a, b in zip(gpu, cpu_params))
    intact = sentinels_intact(*[b for b, _ in params], *[b for b, _ in dev.state_bufs])
    ok = status == 0 and rel < 1e-4 and max(worst.values()) < 1e-5 and intact
    detail = f"status={status} params max rel diff={rel:.2e} " + " ".join(f"{key}={v:.1e}" for key, v in worst.items()) + f" sentinels={intact}"
    return ok, detail


def bad_input(lib, rng, stream, poison):
    """A NaN gradient or a negative S on step 2: status set, parameters and state as after step 1."""
    name, n = "auto-adam", 8
    dev = DeviceAutoOpt(lib, name, LENS, GROUPS, {"nu": [0.9, 0.9], "gamma_max": 0.999, "eps": 1e-8, "beta2": 0.999}, stream)
    params = [padded(rng.standard_normal(length).astype(np.float32)) for length in LENS]
    snapshot = None
    for step in range(3):
        grads, _, sum_sq = batch(rng, LENS, n, "sample")
        if step == 1:
            if poison == "nan":
                grads[2][17] = np.nan
            else:
                sum_sq[1][5] = -1.0
        dev.step([p[1] for p in params], [padded(g)[1] for g in grads], [padded(s)[1] for s in sum_sq], "sum_sq", n, 1.0)
        torch.cuda.synchronize()
        if step == 0:
            snapshot = [p[1].clone() for p in params] + [s[1].clone() for s in dev.state_bufs], dev.group_host().copy()
    expected = 1 if poison == "nan" else 2
    unchanged = all(torch.equal(a, b) for a, b in zip(snapshot[0], [p[1] for p in params] + [s[1] for s in dev.state_bufs]))
    same_groups = dev.group_host().tobytes() == snapshot[1].tobytes()
    status = int(dev.status[0].item())
    return status == expected and unchanged and same_groups, f"status={status} (want {expected}) untouched={unchanged} groups-untouched={same_groups}"


def graph_replay(lib, rng, stream):
    """One whole step (moments, solve, update) captured in a CUDA graph and replayed twice gives
    the bits of two eager steps."""
    n, lens, groups = 33, [4097, 100_003], [0, 1]
    grads, _, sum_sq = batch(rng, lens, n, "sample")
    theta0 = [rng.standard_normal(length).astype(np.float32) for length in lens]
    results = []
    for use_graph in (False, True):
        dev = DeviceAutoOpt(lib, "auto-adam", lens, groups, {"nu": [0.9, 0.9], "gamma_max": 0.999, "eps": 1e-8, "beta2": 0.999}, stream)
        params = [padded(p) for p in theta0]
        g_dev, s_dev = [padded(g)[1] for g in grads], [padded(s)[1] for s in sum_sq]
        torch.cuda.synchronize()
        if use_graph:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                dev.step([p[1] for p in params], g_dev, s_dev, "sum_sq", n, 1.0)
            graph.replay()
            graph.replay()
        else:
            with torch.cuda.stream(stream):
                for _ in range(2):
                    dev.step([p[1] for p in params], g_dev, s_dev, "sum_sq", n, 1.0)
        torch.cuda.synchronize()
        results.append([p[1].cpu().numpy() for p in params] + [dev.group_host().tobytes()])
    return all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(*results))


def large(lib, rng, stream):
    """One 2^28-element tensor, Σg² form: the grid-stride loops and the 1024-partial cap."""
    length, n = 1 << 28, 4
    dev = DeviceAutoOpt(lib, "auto-sgd", [length], [0], {"nu": [0.9], "gamma_max": 0.999}, stream)
    g = torch.randn(length, device="cuda")
    s = g * g * n + torch.rand(length, device="cuda")
    p = torch.zeros(length, device="cuda")
    dev.step([p], [g], [s], "sum_sq", n, 1.0)
    gs = dev.group_host()
    # On the host in float64 from the same inputs: a = Σ g², V = (Σ S − N a) / (N (N−1)).
    g64, s64 = g.double(), s.double()
    a = float((g64 * g64).sum())
    v = max(float((s64.sum() - n * a) / (n * (n - 1))), 0.0)
    ok = abs(gs["a"][0] - a) <= 1e-6 * a and abs(gs["noise"][0] - v) <= 1e-5 * v and int(dev.status[0].item()) == 0
    return ok, f"a rel diff={abs(gs['a'][0] - a) / a:.1e} V rel diff={abs(gs['noise'][0] - v) / v:.1e}"


def main():
    small = "--small" in sys.argv
    lib = build_kernels("autoopt.cu")
    declare(lib)
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    stream = torch.cuda.Stream()
    failures = 0
    for name in PRECONDS:
        for form in ("per_sample", "sum_sq"):
            for scale in ("sample", "mean"):
                for n in (2, 33, 256):
                    ok, detail = run_case(lib, name, form, scale, n, rng, stream)
                    failures += report(f"{name:12s} {form:10s} scale={scale:6s} N={n:3d}", ok, detail)
    for poison in ("nan", "negative"):
        ok, detail = bad_input(lib, rng, stream, poison)
        failures += report(f"bad input ({poison}) leaves everything untouched", ok, detail)
    if not small:
        failures += report("CUDA graph capture + replay of an auto-adam step matches eager launches", graph_replay(lib, rng, stream))
        ok, detail = large(lib, rng, stream)
        failures += report("2^28-element tensor", ok, detail)
    summary(failures)


if __name__ == "__main__":
    main()

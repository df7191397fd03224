"""Shared helpers: run the library (float32) and the independent float64 reference side by side
on identical inputs, and compare after every step."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import autolr  # noqa: E402
import reference as ref  # noqa: E402


def f32(x):
    """Rounds to float32 and back, so both sides see bit-identical inputs."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def to_lib(kw):
    """float64 step kwargs -> float32 arrays for the library."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, list):
            out[k] = [np.ascontiguousarray(a, dtype=np.float32) for a in v]
        else:
            out[k] = v
    return out


class SideBySide:
    """The library and the reference, same algorithm, same options, same starting point."""

    def __init__(self, algorithm, shapes, seed=0, groups=None, group_options=None, reference=ref.make, **options):
        """`reference`: the reference's factory (reference.make, or reference_peers.make)."""
        rng = np.random.default_rng(seed)
        self.p64 = [f32(rng.standard_normal(s)) for s in shapes]
        self.p32 = [p.astype(np.float32) for p in self.p64]
        self.shapes = [tuple(s) for s in shapes]
        self.lib = autolr.Optimizer(algorithm, self.p32, groups=groups, **options)
        for g, opts in (group_options or {}).items():
            for name, value in opts.items():
                self.lib.set_option(name, value, group=g)
        self.ref = reference(algorithm, self.shapes, groups=groups, group_options=group_options, **options)

    def step(self, **kw):
        """`kw` holds float64 lists already rounded with f32(); callbacks get their own side."""
        lib_kw = to_lib({k: v for k, v in kw.items() if not k.startswith("ref_") and not k.startswith("lib_")})
        ref_kw = {k: v for k, v in kw.items() if not k.startswith("ref_") and not k.startswith("lib_")}
        lib_kw.update(to_lib({k[4:]: v for k, v in kw.items() if k.startswith("lib_")}))
        ref_kw.update({k[4:]: v for k, v in kw.items() if k.startswith("ref_")})
        self.lib.step(**lib_kw)
        self.ref.step(self.p64, **ref_kw)

    def assert_close(self, rtol=1e-5, what=""):
        for i, (a, b) in enumerate(zip(self.p32, self.p64)):
            scale = max(1.0, float(np.abs(b).max()))
            err = float(np.abs(a - b).max()) / scale
            assert err <= rtol, f"{what} tensor {i}: relative error {err:.3e} > {rtol:.0e}"

    def assert_rates_close(self, rtol=1e-5, what=""):
        np.testing.assert_allclose(self.lib.lr, self.ref.lr, rtol=rtol, atol=1e-12, err_msg=f"{what} lr")
        np.testing.assert_allclose(self.lib.momentum, self.ref.momentum, rtol=rtol, atol=1e-12, err_msg=f"{what} momentum")


def import_torch():
    """torch, or a skip of the calling test module; under AUTOLR_NO_SKIPS=1 (the torch stage of
    scripts/test.sh) a missing torch is an error."""
    if os.environ.get("AUTOLR_NO_SKIPS") == "1":
        import torch
        return torch
    return pytest.importorskip("torch", reason="torch is not in this venv; scripts/test.sh runs the torch tests in .venv-torch (PyPI's torch)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under AUTOLR_NO_SKIPS=1 (scripts/test.sh's torch stage) a skipped test is a failure, so a
    stage meant to run everything cannot pass by skipping."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("AUTOLR_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under AUTOLR_NO_SKIPS=1: {report.longrepr}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

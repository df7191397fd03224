"""Packaging: `pip install ./bindings/python` runs cargo itself (setuptools-rust) and bundles the
library; the sdist carries the crate and builds a wheel outside the repository; the installed
package imports and trains from a fresh virtual environment with AUTOLR_LIB unset.

Each build runs cargo into its own target dir under target/ (target/python-pkg, python-sdist), so
the library the other tests load (target/release) is never rebuilt under them, and a second run
in the same checkout recompiles nothing for the source-tree install (the sdist's crate lies in a
new temporary folder each run, so cargo compiles it again: the crate alone, no dependencies).
Set AUTOLR_SKIP_PACKAGING=1 to skip. Builds run without build isolation when this interpreter
has setuptools >= 70.1 and setuptools-rust (scripts/test.sh installs them), else with pip's
isolation, which fetches them from the package index."""
import importlib.util
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

import autolr

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "bindings" / "python"

pytestmark = [
    pytest.mark.skipif(os.environ.get("AUTOLR_SKIP_PACKAGING") == "1", reason="AUTOLR_SKIP_PACKAGING=1"),
    pytest.mark.skipif(sys.platform != "linux", reason="the packaging test is written for Linux (.so)"),
]

# Run inside the installed package, from a folder outside the repository: a least-squares fit
# with auto-sgd (per-sample Σg² from the residuals), so the bundled library really trains.
PROBE = r"""
import autolr, autolr._lib as L, numpy as np
print(autolr.__version__)
print(autolr.__file__)
print(L.lib._name)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 8)).astype(np.float32)
y = x @ rng.standard_normal(8).astype(np.float32)
w = np.zeros(8, np.float32)
opt = autolr.Optimizer("auto-sgd", [w])
loss = lambda: float(np.mean((x @ w - y) ** 2))
first = loss()
for t in range(30):
    idx = rng.integers(0, 256, 32)
    r = (x[idx] @ w - y[idx])[:, None]
    per_sample = 2 * r * x[idx]                         # gradient of each sample's own loss
    opt.step([per_sample.mean(0)], sum_sq=[(per_sample ** 2).sum(0)], batch_size=32)
print(first, loss())
"""


def _load_setup_module():
    """bindings/python/setup.py as a module (its setup() call runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("autolr_setup", PKG / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_isolation_args():
    """Offline (--no-build-isolation) when this interpreter has what the build needs; else pip's
    default build isolation, which fetches setuptools and setuptools-rust from the package index."""
    try:
        import setuptools
        major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    except Exception:
        return []
    wheel_ok = (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None
    if wheel_ok and importlib.util.find_spec("setuptools_rust") is not None:
        return ["--no-build-isolation"]
    return []


def _run(cmd, cwd, env=None, timeout=600):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env(target_dir=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("AUTOLR_LIB", "AUTOLR_BUNDLE_LIB", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CARGO_TARGET_DIR")}
    env["PYTHONNOUSERSITE"] = "1"
    if target_dir is not None:
        env["CARGO_TARGET_DIR"] = str(target_dir)
    return env


def _fresh_venv(path):
    """A venv that sees neither the repository nor this one's packages, except numpy and the
    build tools, lent from this interpreter by a .pth file so that nothing is downloaded."""
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(path)
    python = path / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=path, env=_clean_env()).stdout.strip())
    (site / "_lent_by_test.pth").write_text(str(Path(np.__file__).resolve().parent.parent) + "\n")
    return python, site


def _pip(python, *args, cwd, env):
    return _run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q", *args],
                cwd=cwd, env=env)


def _probe_trains(python, site, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    out = _run([str(python), "-c", PROBE], cwd=outside, env=_clean_env()).stdout.split("\n")
    version, module_file, library = out[0], Path(out[1]), Path(out[2])
    first, last = (float(v) for v in out[3].split())
    print(f"installed autolr {version} from {module_file.parent}, library {library}; loss {first:.4g} -> {last:.4g}")
    assert version == autolr.__version__
    assert module_file.is_relative_to(site), module_file
    assert library == module_file.parent / "libautolr.so", library
    assert np.isfinite(last) and last < 0.5 * first, (first, last)


def test_setup_finds_the_crate_and_checks_the_override(tmp_path):
    pytest.importorskip("setuptools")
    setup = _load_setup_module()
    assert setup.crate_root() == ROOT
    assert setup.cargo_version() == autolr.__version__
    with pytest.raises(SystemExit, match="no Cargo.toml"):
        setup.crate_root(tmp_path / "a" / "b")
    (tmp_path / "crate").mkdir()
    (tmp_path / "crate" / "Cargo.toml").write_text('[package]\nname = "x"\nversion = "9.8.7"\n')
    assert setup.crate_root(tmp_path) == tmp_path / "crate"  # an unpacked sdist
    assert setup.cargo_version(tmp_path / "crate") == "9.8.7"
    assert setup.bundle_override({}) is None
    with pytest.raises(SystemExit, match="AUTOLR_BUNDLE_LIB"):
        setup.bundle_override({"AUTOLR_BUNDLE_LIB": str(tmp_path / "nope.so")})


def test_pip_install_from_the_source_tree_builds_with_cargo_and_trains(tmp_path):
    python, site = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "--no-deps", *_build_isolation_args(), str(PKG),
         cwd=tmp_path, env=_clean_env(ROOT / "target" / "python-pkg"))
    assert (site / "autolr" / "libautolr.so").is_file()
    _probe_trains(python, site, tmp_path)


def test_sdist_carries_the_crate_and_builds_a_wheel_elsewhere(tmp_path):
    pytest.importorskip("setuptools_rust")
    dist = tmp_path / "dist"
    dist.mkdir()
    build_sdist = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    name = _run([sys.executable, "-c", build_sdist], cwd=PKG, env=_clean_env()).stdout.strip().splitlines()[-1]
    assert name == f"autolr-{autolr.__version__}.tar.gz", name
    unpacked = tmp_path / "unpacked"  # outside the repository: only what the sdist carries
    with tarfile.open(dist / name) as tar:
        members = set(tar.getnames())
        try:
            tar.extractall(unpacked, filter="data")
        except TypeError:  # Python before 3.11.4 has no extraction filters
            tar.extractall(unpacked)
    top = f"autolr-{autolr.__version__}"
    for needed in ("setup.py", "pyproject.toml", "autolr/torch.py", "crate/Cargo.toml", "crate/Cargo.lock",
                   "crate/build.rs", "crate/src/lib.rs", "crate/include/autolr.h", "crate/cuda/fixed_rate.cu"):
        assert f"{top}/{needed}" in members, f"the sdist lacks {needed}"
    assert not any("/target/" in m for m in members), "the sdist carries build outputs"

    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          *_build_isolation_args(), "-w", str(wheels), str(unpacked / top)],
         cwd=tmp_path, env=_clean_env(ROOT / "target" / "python-sdist"))
    (wheel,) = wheels.glob("autolr-*.whl")
    assert wheel.name.startswith(f"autolr-{autolr.__version__}-py3-none-"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "autolr/libautolr.so" in names and "autolr/_ffi.py" in names, names
    assert f"Version: {autolr.__version__}" in metadata and "Requires-Dist: numpy" in metadata, metadata

    python, site = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path, env=_clean_env())
    _probe_trains(python, site, tmp_path)

"""Packaging: `pip wheel ./bindings/python` bundles target/release/libautolr.so inside the package,
and the wheel installed into a fresh virtual environment imports from outside the repository
with AUTOLR_LIB unset. Set AUTOLR_SKIP_PACKAGING=1 to skip (it takes a few seconds, and the
network when the build cannot run without build isolation — see _build_isolation_args)."""
import importlib.util
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

import autolr

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "bindings" / "python"
LIB = ROOT / "target" / "release" / "libautolr.so"

pytestmark = [
    pytest.mark.skipif(os.environ.get("AUTOLR_SKIP_PACKAGING") == "1", reason="AUTOLR_SKIP_PACKAGING=1"),
    pytest.mark.skipif(sys.platform != "linux", reason="the packaging test is written for Linux (.so)"),
]


def _load_setup_module():
    """bindings/python/setup.py as a module (its setup() call runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("autolr_setup", PKG / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_isolation_args():
    """Offline (--no-build-isolation) when this interpreter can build wheels itself (setuptools
    >= 70.1, or an older setuptools with the `wheel` package); else pip's default build isolation,
    which fetches setuptools from the package index."""
    try:
        import setuptools
        major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    except Exception:
        return []
    if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None:
        return ["--no-build-isolation"]
    return []


def _run(cmd, cwd, env=None, timeout=180):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOLR_LIB", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_setup_reports_a_missing_library_clearly(tmp_path):
    pytest.importorskip("setuptools")
    setup = _load_setup_module()
    assert setup.cargo_version() == autolr.__version__
    with pytest.raises(SystemExit) as info:
        setup.find_library(root=tmp_path, environ={})
    message = str(info.value)
    assert "cargo build --release" in message and "not built" in message, message
    with pytest.raises(SystemExit, match="AUTOLR_BUNDLE_LIB"):
        setup.find_library(root=tmp_path, environ={"AUTOLR_BUNDLE_LIB": str(tmp_path / "nope.so")})
    assert setup.find_library() == LIB


def test_wheel_bundles_the_library_and_imports_outside_the_repo(tmp_path):
    if not LIB.is_file():
        pytest.fail(f"{LIB} is not built: run `cargo build --release` first")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          *_build_isolation_args(), "-w", str(wheels), str(PKG)], cwd=tmp_path)
    (wheel,) = wheels.glob("autolr-*.whl")
    assert wheel.name.startswith(f"autolr-{autolr.__version__}-py3-none-"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "autolr/libautolr.so" in names and "autolr/_ffi.py" in names, names
    assert f"Version: {autolr.__version__}" in metadata and "Requires-Dist: numpy" in metadata, metadata

    # A fresh environment that sees neither the repository nor this one's packages; numpy (the
    # one dependency, checked in METADATA above) is lent from this interpreter by a .pth file so
    # that the test needs no download.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path, env=_clean_env()).stdout.strip())
    (site / "_numpy_from_test.pth").write_text(str(Path(np.__file__).resolve().parent.parent) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)], cwd=tmp_path, env=_clean_env())

    probe = (
        "import autolr, autolr._lib as L, numpy as np\n"
        "print(autolr.__version__)\n"
        "print(autolr.__file__)\n"
        "print(L.lib._name)\n"
        "p = [np.ones(3, np.float32)]\n"
        "opt = autolr.Optimizer('sgd', p, lr=0.5)\n"
        "opt.step([np.ones(3, np.float32)])\n"
        "assert np.allclose(p[0], 0.5), p\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = _run([str(python), "-c", probe], cwd=outside, env=_clean_env()).stdout.split("\n")
    version, module_file, library = out[0], Path(out[1]), Path(out[2])
    print(f"installed autolr {version} from {module_file.parent}, library {library}")
    assert version == autolr.__version__
    assert module_file.is_relative_to(site), module_file
    assert library == module_file.parent / "libautolr.so", library

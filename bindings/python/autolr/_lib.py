"""Finds and loads the autolr shared library: $AUTOLR_LIB, then next to this package, then the
repository's target/release (and target/debug) build."""
import ctypes
import os
import sys
from pathlib import Path

from . import _ffi

_NAMES = {"linux": "libautolr.so", "darwin": "libautolr.dylib", "win32": "autolr.dll"}


def _candidates():
    env = os.environ.get("AUTOLR_LIB")
    if env:
        yield Path(env)
        return
    name = _NAMES.get(sys.platform, "libautolr.so")
    here = Path(__file__).resolve().parent
    yield here / name
    for parent in here.parents:
        if (parent / "Cargo.toml").exists():
            yield parent / "target" / "release" / name
            yield parent / "target" / "debug" / name
            break


def load():
    tried = []
    for path in _candidates():
        tried.append(str(path))
        if path.exists():
            return _ffi.declare(ctypes.CDLL(str(path)))
    raise ImportError(
        "autolr: shared library not found (tried: " + ", ".join(tried) + "). "
        "Install the package with `pip install ./bindings/python` (it builds and bundles the library), "
        "or build it with `cargo build --release`, or set AUTOLR_LIB to the path of libautolr.so."
    )


lib = load()

"""Build hook of the `autolr` Python package (metadata lives in pyproject.toml).

`pip install ./bindings/python` (or `pip wheel`, or a build from the sdist) compiles the native
library with cargo through setuptools-rust and bundles it in the package as libautolr.so (or
.dylib / .dll) next to _lib.py, which loads it from there first. Nothing has to be built first
and no environment variable is needed; cargo (Rust >= the crate's rust-version) must be on PATH.

Where the crate is: in a checkout, the repository root (bindings/python/../../Cargo.toml); in the
sdist, `crate/` beside this file (the sdist command copies the crate's sources there, so the sdist
builds anywhere). cargo writes into the crate's target/ unless CARGO_TARGET_DIR says otherwise,
so in a checkout an earlier `cargo build --release` is reused.

The wheel is tagged py3-none-<platform>: the library depends on the OS and CPU, not on the Python
version (it is loaded with ctypes, not imported). AUTOLR_BUNDLE_LIB=/path/to/libautolr.so bundles
that file instead of running cargo (e.g. a build with the `cuda` feature)."""
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.sdist import sdist as _sdist

HERE = Path(__file__).resolve().parent
NAMES = {"linux": "libautolr.so", "darwin": "libautolr.dylib", "win32": "autolr.dll"}
LIB_NAME = NAMES.get(sys.platform, "libautolr.so")
# What the sdist carries of the crate: everything cargo reads to build the library. benches/ and
# examples/fashion_mnist/ are there because Cargo.toml declares targets in them (cargo refuses a
# manifest whose declared target files are missing), include/ because the C header is the ABI.
CRATE_FILES = ("Cargo.toml", "Cargo.lock", "build.rs", "cbindgen.toml")
CRATE_DIRS = ("src", "cuda", "include", "benches", "examples/fashion_mnist")


def crate_root(here=HERE):
    """The directory holding the crate's Cargo.toml: `crate/` in an sdist, else the checkout's root."""
    for candidate in (Path(here) / "crate", Path(here).parent.parent):
        if (candidate / "Cargo.toml").is_file():
            return candidate
    raise SystemExit(f"autolr: no Cargo.toml in {Path(here) / 'crate'} (an sdist) nor in {Path(here).parent.parent} "
                     "(a checkout): build the package from the repository or from its sdist")


def cargo_version(root=None):
    """The [package] version of the crate's Cargo.toml."""
    cargo = Path(root or crate_root()) / "Cargo.toml"
    text = cargo.read_text()
    package = re.search(r"^\[package\]\s*$(.*?)(?=^\[|\Z)", text, re.S | re.M)
    version = package and re.search(r'^version\s*=\s*"([^"]+)"', package.group(1), re.M)
    if not version:
        raise SystemExit(f"autolr: no [package] version in {cargo}")
    return version.group(1)


def bundle_override(environ=os.environ):
    """AUTOLR_BUNDLE_LIB as a Path (checked), or None: then cargo builds the library."""
    override = environ.get("AUTOLR_BUNDLE_LIB")
    if not override:
        return None
    path = Path(override)
    if not path.is_file():
        raise SystemExit(f"autolr: AUTOLR_BUNDLE_LIB={override} is not a file")
    return path


class Sdist(_sdist):
    """sdist that also carries the crate under crate/, so the archive builds without the checkout."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = crate_root()
        dest = Path(base_dir) / "crate"
        for name in CRATE_FILES:
            if (root / name).is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, dest / name)
        for name in CRATE_DIRS:
            if (root / name).is_dir():
                shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("target", "__pycache__", "*.pyc"))


class BinaryDistribution(Distribution):
    """Platform-specific: installs into platlib (the wheel's root), like a package with extensions."""

    def has_ext_modules(self):
        return True


def rust_commands():
    """setuptools-rust's build_rust, with the library installed as autolr/libautolr.so (the name
    _lib.py loads, not a Python extension-module name) and AUTOLR_BUNDLE_LIB honoured."""
    try:
        from setuptools_rust import Binding, RustExtension
        from setuptools_rust.build import build_rust
    except ImportError as e:
        raise SystemExit("autolr: building needs setuptools-rust (pyproject.toml's build requirement; "
                         "with --no-build-isolation install it first: pip install setuptools-rust)") from e

    class BuildRust(build_rust):
        def run_for_extension(self, ext):
            override = bundle_override()
            if override is None:
                super().run_for_extension(ext)
            else:
                self.install_extension(ext, [(ext.name, str(override))], None)

        def get_dylib_ext_path(self, ext, target_fname):
            return str(Path(super().get_dylib_ext_path(ext, target_fname)).with_name(LIB_NAME))

    manifest = crate_root() / "Cargo.toml"
    extension = RustExtension("autolr.libautolr", path=os.path.relpath(manifest, HERE),
                              binding=Binding.NoBinding, py_limited_api=False)
    return {"build_rust": BuildRust}, [extension]


cmdclass = {"sdist": Sdist}

try:  # setuptools >= 70.1
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # older setuptools with the `wheel` package
    try:
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        _bdist_wheel = None

if _bdist_wheel is not None:
    class PlatformWheel(_bdist_wheel):
        """py3-none-<platform>: contains a native library but no Python extension module."""

        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = PlatformWheel


if __name__ == "__main__":
    rust_cmdclass, rust_extensions = rust_commands()
    build_base = crate_root() / "target" / "python-build"
    build_base.mkdir(parents=True, exist_ok=True)
    setup(
        version=cargo_version(),
        cmdclass={**cmdclass, **rust_cmdclass},
        distclass=BinaryDistribution,
        rust_extensions=rust_extensions,
        options={
            "build": {"build_base": str(build_base)},
            "egg_info": {"egg_base": str(build_base)},
            "bdist_wheel": {"bdist_dir": str(build_base / "bdist")},
        },
    )

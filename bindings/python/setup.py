"""Build hook of the `autolr` Python package (metadata lives in pyproject.toml).

At build time it copies the native library the repository built (target/release/libautolr.so,
or .dylib / .dll) into the package, next to _lib.py, which loads it from there first; and it tags
the wheel as platform-specific (py3-none-<platform>: the library depends on the OS and CPU, not
on the Python version). Run `cargo build --release` first; without the library the build stops
with a message that says so. AUTOLR_BUNDLE_LIB=/path/to/libautolr.so bundles another build
(e.g. one with the `cuda` feature). Build outputs go under target/python-build (git-ignored)."""
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the repository: bindings/python/setup.py
NAMES = {"linux": "libautolr.so", "darwin": "libautolr.dylib", "win32": "autolr.dll"}
LIB_NAME = NAMES.get(sys.platform, "libautolr.so")


def cargo_version(root=ROOT):
    """The [package] version of the repository's Cargo.toml."""
    cargo = Path(root) / "Cargo.toml"
    try:
        text = cargo.read_text()
    except OSError as e:
        raise SystemExit(f"autolr: cannot read {cargo} for the version ({e}); build the package from the repository checkout") from e
    package = re.search(r"^\[package\]\s*$(.*?)(?=^\[|\Z)", text, re.S | re.M)
    version = package and re.search(r'^version\s*=\s*"([^"]+)"', package.group(1), re.M)
    if not version:
        raise SystemExit(f"autolr: no [package] version in {cargo}")
    return version.group(1)


def find_library(root=ROOT, environ=os.environ):
    """The native library to bundle, or SystemExit with what to do."""
    override = environ.get("AUTOLR_BUNDLE_LIB")
    if override:
        path = Path(override)
        if not path.is_file():
            raise SystemExit(f"autolr: AUTOLR_BUNDLE_LIB={override} is not a file")
        return path
    path = Path(root) / "target" / "release" / LIB_NAME
    if not path.is_file():
        raise SystemExit(
            f"autolr: the native library {path} is not built. Run `cargo build --release` in {root} "
            f"first (or set AUTOLR_BUNDLE_LIB to a built {LIB_NAME}), then build this package again."
        )
    return path


class BuildPyWithLibrary(build_py):
    """build_py that also copies the native library into the built package."""

    def run(self):
        library = find_library()  # fail before doing anything else
        super().run()
        target = Path(self.build_lib) / "autolr" / LIB_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, target)
        os.chmod(target, 0o755)
        print(f"autolr: bundled {library} -> {target}")


class BinaryDistribution(Distribution):
    """Platform-specific: installs into platlib (the wheel's root), like a package with extensions."""

    def has_ext_modules(self):
        return True


cmdclass = {"build_py": BuildPyWithLibrary}

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
    build_base = ROOT / "target" / "python-build"
    build_base.mkdir(parents=True, exist_ok=True)
    setup(
        version=cargo_version(),
        cmdclass=cmdclass,
        distclass=BinaryDistribution,
        options={
            "build": {"build_base": str(build_base)},
            "egg_info": {"egg_base": str(build_base)},
            "bdist_wheel": {"bdist_dir": str(build_base / "bdist")},
        },
    )

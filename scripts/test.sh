#!/usr/bin/env bash
# Runs every test of autolr, doing all set-up itself on a fresh Debian machine:
# system packages (valgrind, g++, python3-venv, the Fashion-MNIST data), a Python venv (.venv)
# with numpy, pytest, scikit-learn, setuptools and setuptools-rust (the package build), a second
# venv (.venv-torch) with PyPI's default torch wheel (torch 2.x; its CUDA libraries are not needed
# to run on a CPU), the release build, then: Rust unit and integration tests (the header
# freshness check among them), the CUDA kernels compiled with nvcc (the system's, or NVIDIA's pip
# wheel) and the no-driver error checked, the check that the generated bindings match
# include/autolr.h, rustfmt and clippy (both builds, warnings as errors), the C ABI test under valgrind, the C++ binding's tests, the torch adapter's
# tests (in .venv-torch, where a skipped test counts as a failure) and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v valgrind >/dev/null || missing="$missing valgrind"
  command -v g++ >/dev/null || missing="$missing g++"
  [ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
  python3 -c "import ensurepip, venv" 2>/dev/null || missing="$missing python3-venv"
  if [ -n "$missing" ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
      || echo "warning: could not install$missing (tests that need them will say so)"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check numpy pytest scikit-learn "setuptools>=70.1" wheel "setuptools-rust>=1.9"

echo "== cargo build"
cargo build --release --all-targets
echo "== lint: rustfmt (rustfmt.toml), clippy with warnings as errors"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
echo "== cargo test (the layering scan and the per-algorithm battery among them)"
# Benches are built above but not run here: they measure, they do not test.
cargo test --release --lib --tests --examples
echo "== CUDA kernels (feature cuda; own target dir, so the CPU build the tests below load is untouched)"
# nvcc: $NVCC if set, else one on PATH, else NVIDIA's nvidia-cuda-nvcc wheel in .venv (what CI
# gets): a kernel that does not compile fails the test command.
if [ -z "${NVCC:-}" ]; then
  if command -v nvcc >/dev/null; then
    NVCC="$(command -v nvcc)"
  else
    .venv/bin/pip install -q --disable-pip-version-check nvidia-cuda-nvcc==13.5.37
    NVCC="$(ls -d "$PWD"/.venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -n 1)"
  fi
fi
export NVCC
CARGO_TARGET_DIR=target/cuda cargo clippy --release --all-targets --features cuda -- -D warnings
CARGO_TARGET_DIR=target/cuda cargo test --release --features cuda --lib --test cuda_device
echo "== generated bindings"
python3 scripts/gen_bindings.py --check
echo "== C ABI test (valgrind)"
bash tests/c/run.sh
echo "== C++ binding tests"
bash tests/cpp/run.sh
echo "== torch adapter tests (PyPI's torch in .venv-torch)"
[ -x .venv-torch/bin/python ] || python3 -m venv .venv-torch
.venv-torch/bin/pip install -q --disable-pip-version-check "torch>=2" numpy pytest schedulefree==1.4.1
echo "torch $(.venv-torch/bin/python -c 'import torch; print(torch.__version__)')"
# AUTOLR_NO_SKIPS=1: a test that would skip here (torch missing, a feature unavailable) fails.
(cd tests/python && AUTOLR_NO_SKIPS=1 ../../.venv-torch/bin/python -m pytest -q -p no:cacheprovider test_torch_*.py test_schedule_free.py)
echo "== Python tests"
cd tests/python
../../.venv/bin/python -m pytest -q -rs

#!/usr/bin/env bash
# Runs every test of autolr, doing all set-up itself on a fresh Debian machine:
# system packages (valgrind, g++, Open MPI, python3-venv, the Fashion-MNIST data), a Python venv (.venv)
# with numpy, pytest, scikit-learn, setuptools and setuptools-rust (the package build), a second
# venv (.venv-torch) with PyPI's default torch wheel (torch 2.x; its CUDA libraries are not needed
# to run on a CPU), the release build, then: rustfmt and clippy (both builds, warnings as errors),
# Rust unit and integration tests (the header freshness check, the layering scan and the
# per-algorithm battery among them), the CUDA kernels compiled with nvcc (the system's, or
# NVIDIA's pip wheel) and the no-driver error checked, the check that the generated bindings
# match include/autolr.h, the C ABI test (natively, under valgrind, and under ASan + UBSan), the
# MPI example under mpirun (tests/mpi/run.sh), Miri
# over the unit tests of the unsafe C boundary, each fuzz target for 20 s (cargo-fuzz, nightly
# toolchain; installed when missing), the C++ binding's tests, the torch adapter's tests (in
# .venv-torch, where a skipped test counts as a failure) and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v valgrind >/dev/null || missing="$missing valgrind"
  command -v g++ >/dev/null || missing="$missing g++"
  { command -v mpicc && command -v mpirun; } >/dev/null || missing="$missing openmpi-bin libopenmpi-dev"
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
echo "== C ABI test (native, valgrind, ASan + UBSan)"
bash tests/c/run.sh
echo "== MPI example: sharded over 1, 2 and 3 ranks equals the unsharded run"
bash tests/mpi/run.sh
echo "== nightly toolchain for Miri and cargo-fuzz (installed when missing)"
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
rustup +nightly component add miri rust-src
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
echo "== Miri: unit tests of the C boundary (handles, raw buffers, the size bound), the checkpoint writer"
# Handles are ids mapped to addresses kept as integers (src/ffi/handle.rs), hence permissive
# provenance. The algorithm and backend tests are not run under Miri: see README "Guarantees".
MIRIFLAGS=-Zmiri-permissive-provenance cargo +nightly miri test --lib -- ffi:: checkpoint:: limits::
echo "== fuzz: each target for 20 s from the committed corpus (fuzz/corpus, run on a copy)"
(
  cd fuzz
  env -u CARGO_TARGET_DIR cargo +nightly fuzz build
  for target in checkpoint options step; do
    work="$(mktemp -d)"
    cp corpus/"$target"/* "$work"/
    if ! env -u CARGO_TARGET_DIR cargo +nightly fuzz run "$target" "$work" -- -max_total_time=20 -print_final_stats=1 >"$work.log" 2>&1; then
      tail -n 60 "$work.log"
      echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/"
      exit 1
    fi
    echo "$target: $(grep -E '^Done' "$work.log")"
    rm -rf "$work" "$work.log"
  done
)
echo "== C++ binding tests"
bash tests/cpp/run.sh
echo "== torch adapter tests and the peers against their reference code (PyPI's torch in .venv-torch)"
[ -x .venv-torch/bin/python ] || python3 -m venv .venv-torch
# The peers' reference implementations (docs/algorithms.md §6), at the versions that specify them.
.venv-torch/bin/pip install -q --disable-pip-version-check "torch>=2" numpy pytest prodigyopt==1.1.2 dadaptation==3.2 dog-optimizer==1.0.3 schedulefree==1.4.1
echo "torch $(.venv-torch/bin/python -c 'import torch; print(torch.__version__)')"
# AUTOLR_NO_SKIPS=1: a test that would skip here (torch missing, a feature unavailable) fails.
(cd tests/python && AUTOLR_NO_SKIPS=1 ../../.venv-torch/bin/python -m pytest -q -p no:cacheprovider test_torch_*.py test_peers*.py test_schedule_free.py)
echo "== Python tests"
cd tests/python
../../.venv/bin/python -m pytest -q -rs

#!/usr/bin/env bash
# Runs every test of autolr, doing all set-up itself on a fresh Debian machine:
# system packages (valgrind, g++, the Fashion-MNIST data, Debian's CPU build of PyTorch), a Python
# venv (.venv) with numpy, pytest, scikit-learn and setuptools, the release build, then: Rust unit
# and integration tests (the header freshness check among them), the CUDA kernels compiled with
# nvcc (the system's, or NVIDIA's pip wheel) and the no-driver error checked, the check that the generated
# bindings match include/autolr.h, the C ABI test (natively, under valgrind, and under ASan +
# UBSan), the C++ binding's tests, Miri over the unit tests of the unsafe C boundary, each fuzz
# target for 20 s (cargo-fuzz, nightly toolchain; installed when missing), and the Python tests. The torch adapter's tests run with Debian's python3-torch through a second
# venv (.venv-torch) when that package installs; otherwise pytest shows them as skipped, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v valgrind >/dev/null || missing="$missing valgrind"
  command -v g++ >/dev/null || missing="$missing g++"
  [ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
  if [ -n "$missing" ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
      || echo "warning: could not install$missing (tests that need them will say so)"
  fi
  if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch python3-venv >/dev/null \
      || echo "warning: python3-torch did not install; the torch adapter tests will be skipped"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check numpy pytest scikit-learn "setuptools>=70.1" wheel

echo "== cargo build"
cargo build --release --all-targets
echo "== cargo test"
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
CARGO_TARGET_DIR=target/cuda cargo test --release --features cuda --lib --test cuda_device
echo "== generated bindings"
python3 scripts/gen_bindings.py --check
echo "== C ABI test (native, valgrind, ASan + UBSan)"
bash tests/c/run.sh
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
if /usr/bin/python3 -c "import torch" 2>/dev/null \
  && { [ -x .venv-torch/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv-torch; } \
  && .venv-torch/bin/python -m pip install -q --disable-pip-version-check pytest; then
  echo "== torch adapter tests (Debian's python3-torch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'))"
  (cd tests/python && ../../.venv-torch/bin/python -m pytest -q -p no:cacheprovider test_torch_adapter.py)
else
  echo "== torch adapter tests not run with torch: Debian's python3-torch is not available here (see the skip below)"
fi
echo "== Python tests"
cd tests/python
../../.venv/bin/python -m pytest -q -rs

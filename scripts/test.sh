#!/usr/bin/env bash
# Runs every test of autolr, doing all set-up itself on a fresh Debian machine:
# system packages (valgrind, the Fashion-MNIST data), a Python venv (.venv) with numpy, pytest and
# scikit-learn, the release build, then: Rust unit and integration tests (the header freshness
# check among them), the check that the generated bindings match include/autolr.h, the C ABI test
# under valgrind, and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v valgrind >/dev/null || missing="$missing valgrind"
  [ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
  if [ -n "$missing" ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
      || echo "warning: could not install$missing (tests that need them will say so)"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check numpy pytest scikit-learn

echo "== cargo build"
cargo build --release --all-targets
echo "== cargo test"
cargo test --release --all-targets
echo "== generated bindings"
python3 scripts/gen_bindings.py --check
echo "== C ABI test (valgrind)"
bash tests/c/run.sh
echo "== Python tests"
cd tests/python
../../.venv/bin/python -m pytest -q

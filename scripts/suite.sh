#!/usr/bin/env bash
# The benchmark suite (benches/suite.py): autolr's default and automatic algorithms against tuned
# Adam, tuned SGD with momentum and the tuning-free peers' own packages on three problems
# (Fashion-MNIST MLP and CNN, a character-level transformer LM), then its plots. Sets up what it
# needs itself on a Debian machine: the Fashion-MNIST data (apt, as root), .venv-torch (PyPI's
# torch and the peers' packages, reused if present), .venv (numpy, matplotlib: the plots), the
# release build of the library.
#
#   bash scripts/suite.sh            full suite (3 seeds; about 45 min on two quiet cores)
#   bash scripts/suite.sh --quick    smoke run (tiny budgets, 1 seed, few entrants; about a minute)
#   bash scripts/suite.sh --out DIR  (default docs/results) and any other option of benches/suite.py
#
# Results: DIR/suite.md, DIR/suite.json, DIR/suite_{mlp,cnn,lm}_{loss,lr}.png.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[suite.sh] %s\n' "$*" >&2; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    log "installing dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi

# The peers at the versions the conformance tests pin (scripts/test.sh's torch stage).
peers=(prodigyopt==1.1.2 dadaptation==3.2 dog-optimizer==1.0.3 schedulefree==1.4.1)
[ -x .venv-torch/bin/python ] || python3 -m venv .venv-torch
if ! .venv-torch/bin/python -c 'import torch, numpy, prodigyopt, dadaptation, dog, schedulefree' >/dev/null 2>&1; then
    log "installing torch and the peers into .venv-torch"
    .venv-torch/bin/pip install -q --disable-pip-version-check "torch>=2" numpy "${peers[@]}"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c 'import numpy, matplotlib' >/dev/null 2>&1; then
    log "installing numpy and matplotlib into .venv"
    .venv/bin/pip install -q --disable-pip-version-check numpy matplotlib
fi

log "building the library (release)"
cargo build --release --quiet --lib
export AUTOLR_LIB="${AUTOLR_LIB:-$PWD/target/release/libautolr.so}"

out=docs/results
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[i]}" = --out ] && out="${args[i + 1]:-docs/results}"
done
log "running the suite"
.venv-torch/bin/python benches/suite.py "$@"
log "plotting"
.venv/bin/python scripts/plot_suite.py "$out"

#!/usr/bin/env bash
# The main job: the Fashion-MNIST benchmark of every automatic optimizer against tuned SGD and
# Adam (examples/fashion_mnist), then its plots. Sets everything up on a fresh Debian machine.
#
#   bash scripts/main.sh            short version (1 seed, 2 epochs; a few minutes on 2 cores)
#   bash scripts/main.sh --full     full protocol (3 seeds, 8 epochs) + sensitivity study
#   bash scripts/main.sh --sweep    sensitivity study only
#   bash scripts/main.sh --help     every option of the driver
#
# Results: results/<model>.md, results/sensitivity.md, CSV files and PNG plots in results/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[main.sh] %s\n' "$*" >&2; }

# Real data from Debian's package; without it the driver runs on its built-in stand-in and
# says so in its second line of output (the first names the default, algorithm "auto").
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Skipped when the files are already there (a second run needs no network).
    if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        log "installing dataset-fashion-mnist"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }; then
            log "could not install dataset-fashion-mnist; the benchmark will use its fallback data"
        fi
    fi
fi

as_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

# Python for the plots. A failure here costs the plots, not the benchmark.
plots=1
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    if ! python3 -m venv .venv; then
        rm -rf .venv
        # Debian ships venv separately.
        if as_root_with_apt && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && python3 -m venv .venv; then
            :
        else
            log "WARNING: cannot create .venv (python3 -m venv failed); no plots this time"
            rm -rf .venv
            plots=0
        fi
    fi
fi
if [ "$plots" = 1 ] && ! .venv/bin/python -c 'import numpy, matplotlib' >/dev/null 2>&1; then
    log "installing numpy and matplotlib into .venv"
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check numpy matplotlib; then
        log "WARNING: pip could not install numpy and matplotlib; no plots this time"
        plots=0
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "ERROR: cargo not found; install a Rust toolchain (https://rustup.rs) and run again"
    exit 1
fi
log "building (release)"
cargo build --release --quiet --example fashion_mnist

log "running the benchmark"
./target/release/examples/fashion_mnist "$@"

out=results
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --help | -h) exit 0 ;;
        --out) out="${args[i + 1]:-results}" ;;
    esac
done

if [ "$plots" = 1 ]; then
    log "plotting"
    .venv/bin/python scripts/plot_results.py "$out"
fi

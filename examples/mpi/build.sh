#!/usr/bin/env bash
# Builds examples/mpi/sharded_regression against include/autolr.h and target/release/libautolr.so
# with the MPI compiler wrapper (Debian: apt-get install openmpi-bin libopenmpi-dev, or mpich).
# Run `cargo build --release` first. Then: mpirun -np 2 examples/mpi/build/sharded_regression auto-adam
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LIB="$ROOT/target/release"
if [[ ! -e "$LIB/libautolr.so" ]]; then
    echo "build.sh: $LIB/libautolr.so not found: run 'cargo build --release' first" >&2
    exit 2
fi
if ! command -v mpicc >/dev/null; then
    echo "build.sh: mpicc not found: apt-get install openmpi-bin libopenmpi-dev (or mpich)" >&2
    exit 2
fi
mkdir -p "$ROOT/examples/mpi/build"
mpicc -std=c11 -O2 -Wall -Wextra -Werror -I"$ROOT/include" "$ROOT/examples/mpi/sharded_regression.c" \
    -L"$LIB" -lautolr -lm -Wl,-rpath,"$LIB" -o "$ROOT/examples/mpi/build/sharded_regression"

#!/usr/bin/env bash
# Builds tests/c/test_capi.c against include/autolr.h and target/release/libautolr.so and runs it
# under valgrind: any memory error, or any definite/indirect leak, fails (the Rust runtime's
# "still reachable" blocks are fine). Run `cargo build --release` first.
# Usage: tests/c/run.sh            (from anywhere; VALGRIND=0 runs the binary without valgrind)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
LIB="$ROOT/target/release"
if [[ ! -e "$LIB/libautolr.so" ]]; then
    echo "run.sh: $LIB/libautolr.so not found: run 'cargo build --release' first" >&2
    exit 2
fi
mkdir -p tests/c/build
BIN=tests/c/build/test_capi
gcc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/test_capi.c -L"$LIB" -lautolr -lm -Wl,-rpath,"$LIB" -o "$BIN"
if [[ "${VALGRIND:-1}" == "0" ]]; then
    exec "$BIN"
fi
if ! command -v valgrind >/dev/null; then
    echo "run.sh: valgrind not found (set VALGRIND=0 to run without it)" >&2
    exit 2
fi
# --error-exitcode: memory errors and the leak kinds below make valgrind exit 1; the test itself
# exits 1 on a failed check. Either way the script fails.
exec valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect "$BIN"

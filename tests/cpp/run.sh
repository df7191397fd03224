#!/usr/bin/env bash
# Builds the C++ binding's test (tests/cpp/test_hpp.cpp) and example (examples/cpp/logreg.cpp)
# against include/autolr.h, bindings/cpp/autolr.hpp and target/release/libautolr.so, with
# -Wall -Wextra -Werror, and runs both; any failure fails the script. Run `cargo build --release`
# first. The example runs a short setting (LOGREG_STEPS, default 150 steps per algorithm) on
# Fashion-MNIST when /usr/share/datasets/fashion-mnist is installed, else on its built-in data.
# test_hpp runs under valgrind when it is installed (VALGRIND=0 to skip it).
# Usage: tests/cpp/run.sh     (from anywhere; CXX=clang++ to use another compiler)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
LIB="$ROOT/target/release"
if [[ ! -e "$LIB/libautolr.so" ]]; then
    echo "run.sh: $LIB/libautolr.so not found: run 'cargo build --release' first" >&2
    exit 2
fi
CXX="${CXX:-g++}"
OUT=target/cpp  # build outputs stay under the git-ignored target/
mkdir -p "$OUT"
FLAGS=(-std=c++17 -O2 -g -Wall -Wextra -Werror -Wpedantic -Wshadow -Iinclude -Ibindings/cpp)
LINK=(-L"$LIB" -lautolr -Wl,-rpath,"$LIB")

echo "== build tests/cpp/test_hpp.cpp"
"$CXX" "${FLAGS[@]}" tests/cpp/test_hpp.cpp "${LINK[@]}" -o "$OUT/test_hpp"
echo "== build examples/cpp/logreg.cpp"
"$CXX" "${FLAGS[@]}" examples/cpp/logreg.cpp "${LINK[@]}" -o "$OUT/logreg"

export RUST_BACKTRACE=0  # the deliberate panic (alr_selftest_panic) prints one line, not a trace
echo "== run test_hpp"
if [[ "${VALGRIND:-1}" != "0" ]] && command -v valgrind >/dev/null; then
    # memory errors and definite/indirect leaks fail the run (the Rust runtime's reachable blocks are fine)
    valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --show-leak-kinds=definite,indirect "$OUT/test_hpp"
else
    [[ "${VALGRIND:-1}" == "0" ]] || echo "run.sh: valgrind not found: running test_hpp without it"
    "$OUT/test_hpp"
fi
echo "== run logreg (short setting)"
"$OUT/logreg" --steps "${LOGREG_STEPS:-150}"
echo "== C++ binding: all passed"

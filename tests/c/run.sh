#!/usr/bin/env bash
# Builds tests/c/test_capi.c against include/autolr.h and target/release/libautolr.so and runs it
# three times: natively (the allocation-failure cases, which limit the address space, run only
# here), under valgrind (any memory error, or any definite/indirect leak, fails; the Rust
# runtime's "still reachable" blocks are fine), and built with AddressSanitizer and
# UndefinedBehaviorSanitizer (gcc -fsanitize=address,undefined; any report fails, leaks
# included). The library itself is the uninstrumented release build: the C side is checked by
# the sanitizers, the library's memory by valgrind here and by ASan in the fuzz targets
# (fuzz/). Run `cargo build --release` first.
# Usage: tests/c/run.sh            (from anywhere; VALGRIND=0: native run only; SANITIZE=0: no ASan run)
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
echo "-- native"
"$BIN"
if [[ "${VALGRIND:-1}" == "0" ]]; then
    exit 0
fi
if ! command -v valgrind >/dev/null; then
    echo "run.sh: valgrind not found (set VALGRIND=0 to run without it)" >&2
    exit 2
fi
echo "-- valgrind"
# --error-exitcode: memory errors and the leak kinds below make valgrind exit 1; the test itself
# exits 1 on a failed check. Either way the script fails.
ALR_TEST_NO_RLIMIT=1 valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect "$BIN"
if [[ "${SANITIZE:-1}" == "0" ]]; then
    exit 0
fi
echo "-- AddressSanitizer + UndefinedBehaviorSanitizer"
ASAN_BIN=tests/c/build/test_capi_asan
gcc -std=c11 -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
    -Iinclude tests/c/test_capi.c -L"$LIB" -lautolr -lm -Wl,-rpath,"$LIB" -o "$ASAN_BIN"
ALR_TEST_NO_RLIMIT=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "$ASAN_BIN"

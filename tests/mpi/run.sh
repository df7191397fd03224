#!/usr/bin/env bash
# The MPI example (examples/mpi/sharded_regression.c) under mpirun: for every algorithm with
# reductions (and adam, which has none), 50 steps over 1, 2 and 3 ranks (uneven slices of a
# 60- and a 3-element tensor) equal the unsharded run (`-np 1 --whole`): every parameter within
# 2e-5 of the largest one's magnitude and every group's learning rate within 1e-5 relative
# (float32 reduction-order tolerance: the library adds its sums per rank, then over ranks, and
# a block of 32 elements in float32 before widening (docs/algorithms.md "Numerics"), so
# another slicing rounds them differently: AutoOpt's rates differ by ~5e-8 relative at step 1,
# up to ~2e-6 after 50 steps);
# and the reduce callback was called as often as the README's table says, on every rank.
# Run `cargo build --release` first; needs mpicc and mpirun (Debian: openmpi-bin libopenmpi-dev).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bash "$ROOT/examples/mpi/build.sh"
BIN="$ROOT/examples/mpi/build/sharded_regression"
MPIRUN=(mpirun -np)
# Open MPI refuses root without these, and more ranks than cores without --oversubscribe.
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np)
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Calls in 50 steps: AutoOpt one per step; TLR one per step that trains α (from step 2);
# vsgd-g/-b two; GI one for φ after its base's; the peers one; adam none.
declare -A CALLS=([auto-sgd]=50 [auto-adam]=50 [auto-adagrad]=50 [tlr]=49 [vsgd-g]=100 [vsgd-b]=100
                  [gi-adam]=50 [gi-auto-adam]=100 [prodigy]=50 [dadapt-adam]=50 [dog]=50 [ldog]=50 [adam]=0)
fail=0
for alg in auto-sgd auto-adam auto-adagrad tlr vsgd-g vsgd-b gi-adam gi-auto-adam prodigy dadapt-adam dog ldog adam; do
    timeout 60 "${MPIRUN[@]}" 1 "$BIN" "$alg" --whole > "$WORK/whole"
    for np in 1 2 3; do
        timeout 60 "${MPIRUN[@]}" "$np" "$BIN" "$alg" > "$WORK/np$np" || { echo "FAIL $alg -np $np: exit $?"; fail=1; continue; }
        if ! awk -v want="${CALLS[$alg]}" -v what="$alg -np $np" '
            NR == FNR { ref[FNR] = $0; next }
            { split(ref[FNR], r, " ") }
            $1 == "calls" { if ($2 != want || $3 != want) { printf "FAIL %s: %s..%s calls, want %s on every rank\n", what, $2, $3, want; bad = 1 } }
            $1 == "lr" { d = $3 - r[3]; if (d < 0) d = -d; if (d > 1e-5 * (r[3] < 0 ? -r[3] : r[3])) { printf "FAIL %s: lr of group %s %s, unsharded %s\n", what, $2, $3, r[3]; bad = 1 } }
            $1 == "param" { d = $4 - r[4]; if (d < 0) d = -d; if (d > diff) diff = d; m = r[4] < 0 ? -r[4] : r[4]; if (m > big) big = m; n++ }
            END {
                if (n != 63) { printf "FAIL %s: %d parameters printed, want 63\n", what, n; exit 1 }
                if (diff > 2e-5 * big) { printf "FAIL %s: parameters differ from the unsharded run by %.2g of the largest\n", what, diff / big; bad = 1 }
                if (!bad) printf "ok   %-20s parameters within %.1e of the largest, lr within 1e-5\n", what, diff / big
                exit bad
            }' "$WORK/whole" "$WORK/np$np"; then
            fail=1
        fi
    done
done
exit $fail

#!/usr/bin/env bash
# brats train under mpirun, against one process on the same global batch; a killed rank ends the
# job with its rank named and the run resumes from the last checkpoint; a hung rank ends the job
# at the collective timeout instead of a hang.
#   brats_mpi.sh <brats> <mpiexec> <work folder>
set -euo pipefail
brats=$1 mpiexec=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
launch=("$mpiexec" -np 2 --oversubscribe)
[[ $(id -u) == 0 ]] && launch+=(--allow-run-as-root)
fail() { echo "FAILED: $*" >&2; exit 1; }

"$brats" synth --out "$work/data" --cases 4 --extent 48x48x24 --seed 3 > /dev/null 2>&1
"$brats" convert --data "$work/data" --out "$work/store.h5" > /dev/null 2>&1
common=(--data "$work/store.h5" --patch 32x32 --batch 4 --epochs 2 --steps-per-epoch 3 --val-batches 3 --no-progress
        --pictures 0 --no-watchdog --lr 0.001)

# 1. Two ranks x 1 thread against one process x 2 threads, same global batch, SGD and Adam.
for opt in sgd adam; do
    "$brats" train "${common[@]}" --optimizer $opt --threads 2 --out "$work/single_$opt" > "$work/single_$opt.log" 2>&1 ||
        fail "single-process $opt run: $(tail -5 "$work/single_$opt.log")"
    "${launch[@]}" "$brats" train "${common[@]}" --optimizer $opt --threads 1 --out "$work/split_$opt" > "$work/split_$opt.log" 2>&1 ||
        fail "mpirun $opt run: $(tail -20 "$work/split_$opt.log")"
    grep -q "Data parallel: 2 ranks x 2 images per step (global batch 4)" "$work/split_$opt.log" || fail "no data-parallel line"
    [[ $(grep -c "Epoch [0-9] |" "$work/split_$opt.log") == 2 ]] || fail "rank 0 should log each epoch once"
    grep -q "Epoch" "$work/split_$opt/logs/rank-1.log" && fail "rank 1 logged epochs"
done
# Summation order differs, so float rounding: SGD passes it on linearly (measured 1.2e-7 of the
# largest weight); Adam moves each weight about lr per step whatever the gradient's size, so a
# near-zero gradient whose sign the order flips moves that weight up to 2 lr per step the other
# way (measured 2.0e-3 after 6 steps at lr 1e-3; bound 2 x 6 x 1e-3).
/usr/bin/python3 - "$work" <<'PY' || fail "weights differ"
import sys, h5py, numpy as np, csv
work = sys.argv[1]
def weights(run):
    with h5py.File(f"{work}/{run}/checkpoints/checkpoint-000000006.h5") as f:
        return np.asarray(f["model/parameters"], np.float64), np.asarray(f["model/buffers"], np.float64)
ok = True
for opt, bound in (("sgd", 1e-5), ("adam", 2 * 6 * 1e-3)):
    (p1, b1), (p2, b2) = weights(f"single_{opt}"), weights(f"split_{opt}")
    rel = np.abs(p1 - p2).max() / np.abs(p1).max()
    print(f"{opt}: weights differ by {rel:.3g} of the largest, buffers by {np.abs(b1 - b2).max() / np.abs(b1).max():.3g}")
    ok &= rel < bound and (opt != "sgd" or np.abs(b1 - b2).max() / np.abs(b1).max() < 1e-5)
rows = lambda run: list(csv.DictReader(open(f"{work}/{run}/metrics.csv")))
for a, b in zip(rows("single_sgd"), rows("split_sgd")):
    for key in ("train_loss", "val_loss"):
        d = abs(float(a[key]) - float(b[key])) / abs(float(a[key]))
        print(f"sgd epoch {a['epoch']} {key}: {a[key]} vs {b[key]}")
        ok &= d < 1e-4
sys.exit(0 if ok else 1)
PY

# 2. Kill rank 1 mid-run: the job ends naming the rank; --resume latest continues from the last checkpoint.
# The run is far longer than the test waits (50 epochs of 40 steps), so the kill always lands in it;
# the resumed run stops after its next epoch.
long=(--data "$work/store.h5" --patch 32x32 --batch 4 --epochs 50 --steps-per-epoch 40 --val-batches 1 --no-progress
      --pictures 0 --no-watchdog --threads 1 --out "$work/killed")
"${launch[@]}" "$brats" train "${long[@]}" > "$work/killed.log" 2>&1 &
job=$!
for _ in $(seq 600); do [[ -e "$work/killed/checkpoints/checkpoint-000000040.h5" ]] && break; sleep 0.2; done
[[ -e "$work/killed/checkpoints/checkpoint-000000040.h5" ]] || fail "no checkpoint after epoch 1: $(tail -20 "$work/killed.log")"
victim=""
for pid in $(pgrep -f "brats train .*$work/killed"); do
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$pid
done
[[ -n $victim ]] || fail "rank 1 not found"
kill -9 "$victim"
status=0
wait $job || status=$?
[[ $status != 0 ]] || fail "the job went on after rank 1 was killed"
grep -Eq "rank 1 .*(signal 9|Killed)" "$work/killed.log" || fail "the job's end does not name rank 1: $(tail -20 "$work/killed.log")"
last=$(ls "$work/killed/checkpoints" | grep -E '^checkpoint-[0-9]+\.h5$' | sort | tail -1)
last_step=$((10#$(sed -E 's/checkpoint-0*([0-9]+)\.h5/\1/' <<< "$last")))
"${launch[@]}" "$brats" train "${long[@]}" --resume latest --stop-after-steps $((last_step + 40)) > "$work/resumed.log" 2>&1 ||
    fail "resume: $(tail -20 "$work/resumed.log")"
grep -q "Resumed from .*$last" "$work/resumed.log" || fail "did not resume from $last: $(head -20 "$work/resumed.log")"
[[ -e "$work/killed/checkpoints/$(printf 'checkpoint-%09d.h5' $((last_step + 40)))" ]] || fail "the resumed run did not go on"

# 3. A rank that hangs (stopped) ends the job at the collective timeout, with a message.
"${launch[@]}" "$brats" train "${long[@]/killed/hung}" --mpi-timeout 3 > "$work/hung.log" 2>&1 &
job=$!
for _ in $(seq 600); do [[ -e "$work/hung/checkpoints/checkpoint-000000040.h5" ]] && break; sleep 0.2; done
victim=""
for pid in $(pgrep -f "brats train .*$work/hung"); do
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$pid
done
[[ -n $victim ]] || fail "rank 1 of the hung run not found"
kill -STOP "$victim"
for _ in $(seq 600); do kill -0 $job 2>/dev/null || break; sleep 0.2; done
if kill -0 $job 2>/dev/null; then
    kill -9 "$victim" $job 2>/dev/null || true
    fail "the job still runs 120 s after rank 1 stopped (timeout 3 s)"
fi
status=0
wait $job || status=$?
[[ $status != 0 ]] || fail "the hung job did not fail"
grep -q "rank 0 of 2: the .* waited [0-9]* s for the other ranks (timeout 3 s)" "$work/hung.log" ||
    fail "no timeout message: $(tail -20 "$work/hung.log")"
echo "brats under mpirun: all checks passed"

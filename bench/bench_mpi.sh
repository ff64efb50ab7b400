#!/usr/bin/env bash
# Data parallelism on one machine: the BraTS program's real 2D recipe (`brats train`, the 2D
# network, 160x192 slices, global batch 8) as 1 process x 2 threads against mpirun -np 2 x 1
# thread each. The time per step is the difference of two runs of N_SHORT and N_LONG steps
# divided by their difference (start-up, data opening and the one validation cancel out); rounds
# interleave the two layouts (the host is shared and drifts); the report gives medians. A step's
# time in collectives (rank 0's, from brats's "[INFO] MPI:" line) is taken the same way.
#
#   bash bench/bench_mpi.sh [BUILD_DIR]      (default build/release; configured with MPI)
#
# Env: ROUNDS (default 3), N_SHORT (default 4), N_LONG (default 24), LIGHTUNET_BENCH_STORE (a
#      store; default: ../shared/data/brats2018 converted once into BUILD_DIR/bench_mpi/store.h5).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build/release}
rounds=${ROUNDS:-3}
short=${N_SHORT:-4}
long=${N_LONG:-24}
work=$build/bench_mpi
brats=$build/examples/brats
cmake --build "$build" --target brats bench_mpi_allreduce -j "${LIGHTUNET_JOBS:-2}" >&2
mkdir -p "$work"
store=${LIGHTUNET_BENCH_STORE:-$work/store.h5}
if [[ ! -e $store ]]; then
    "$brats" convert --data "$root/../shared/data/brats2018" --out "$store" >&2
fi
launch=(mpirun -np 2 --oversubscribe)
[[ $(id -u) == 0 ]] && launch+=(--allow-run-as-root)

model=$(lscpu | sed -n 's/^Model name: *//p')
isa=$(grep -o -w -E 'avx512f|avx512_bf16|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "host: $model, $(nproc) CPUs, flags: $isa; store: $store" >&2

# run <layout> <steps> -> wall seconds (and the MPI line in $work/last.log)
run() {
    local out=$work/run_$1_$2 start end
    rm -rf "$out"
    local args=(train --data "$store" --out "$out" --model 2d --patch 160x192 --batch 8 --epochs 1 --steps-per-epoch "$2"
                --val-batches 1 --pictures 0 --no-progress --no-watchdog --autosave 0 --workers 1)
    start=$(date +%s.%N)
    if [[ $1 == mpi ]]; then "${launch[@]}" "$brats" "${args[@]}" --threads 1 > "$work/last.log" 2>&1
    else "$brats" "${args[@]}" --threads 2 > "$work/last.log" 2>&1; fi
    end=$(date +%s.%N)
    awk "BEGIN { print $end - $start }"
}

# rank 0's seconds in collectives in the last run (its "[INFO] MPI:" line), 0 without one
collective_seconds() { sed -n -E 's/.*rank 0 spent ([0-9.]+) of .*/\1/p' "$work/last.log" | grep . || echo 0; }

"${launch[@]}" "$build/bench/bench_mpi_allreduce" 21

declare -a single mpi share
for r in $(seq "$rounds"); do
    for layout in single mpi; do
        t_short=$(run $layout "$short")
        c_short=$(collective_seconds)
        t_long=$(run $layout "$long")
        c_long=$(collective_seconds)
        step=$(awk "BEGIN { print ($t_long - $t_short) / ($long - $short) }")
        if [[ $layout == mpi ]]; then
            mpi+=("$step")
            per_step=$(awk "BEGIN { print ($c_long - $c_short) / ($long - $short) }")
            share+=("$(awk "BEGIN { print 100 * $per_step / $step }")")
            echo "round $r: 2 ranks x 1 thread: $(printf %.3f "$step") s/step, of which $(printf %.3f "$per_step") s in collectives" \
                 "($(printf %.1f "${share[-1]}") %); $(grep "\[INFO\] MPI:" "$work/last.log")" >&2
        else
            single+=("$step")
            echo "round $r: 1 process x 2 threads: $(printf %.3f "$step") s/step" >&2
        fi
    done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
s=$(median "${single[@]}") m=$(median "${mpi[@]}")
printf '1 process x 2 threads: %.3f s/step; 2 ranks x 1 thread: %.3f s/step (%.2fx faster); a step'"'"'s collectives: median %.1f %% of it\n' \
    "$s" "$m" "$(awk "BEGIN { print $s / $m }")" "$(median "${share[@]}")"

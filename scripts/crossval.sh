#!/usr/bin/env bash
# Usage: scripts/crossval.sh [--cases DIR] [--out DIR] [--folds K] [--minutes M] [-- train options...]
# Cross-validation of `brats train` on a folder of labelled NIfTI cases (default: the 8 BraTS 2018
# cases of ../shared/data/brats2018): the sorted cases are dealt into K folds (case i into fold
# i mod K); each fold trains on the others with --plan and a --minutes budget (its own validation
# split inside them picks the post-processing), predicts its held-out cases and scores them.
# Writes <out>/fold_<k>/{train,test,run,pred,metrics.csv} and <out>/summary.csv: every held-out
# case's Dice and HD95 per region, then the mean over all of them. BRATS names the program
# (default build/demo/examples/brats, which scripts/demo.sh builds); THREADS the threads (2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cases=$root/../shared/data/brats2018
out=$root/crossval
folds=4
minutes=38
while [[ $# -gt 0 ]]; do
    case $1 in
        --cases) cases=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --folds) folds=$2; shift 2 ;;
        --minutes) minutes=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "crossval.sh: unknown option $1 (train options go after --)" >&2; exit 2 ;;
    esac
done
brats=${BRATS:-$root/build/demo/examples/brats}
threads=${THREADS:-2}
[[ -x $brats ]] || { echo "crossval.sh: no brats at $brats (run scripts/demo.sh, or set BRATS)" >&2; exit 2; }
mapfile -t all < <(find "$cases" -mindepth 1 -maxdepth 1 -type d | sort)
(( ${#all[@]} >= 2 * folds )) || { echo "crossval.sh: ${#all[@]} cases in $cases, need at least $((2 * folds)) for $folds folds" >&2; exit 2; }

# A case folder of links to the files (the readers follow folders, not links to folders).
link_case() {  # case_dir target_parent
    mkdir -p "$2/$(basename "$1")"
    for f in "$1"/*; do ln -sf "$(realpath "$f")" "$2/$(basename "$1")/"; done
}

rm -rf "$out"
mkdir -p "$out"
for ((k = 0; k < folds; k++)); do
    fold=$out/fold_$k
    mkdir -p "$fold/train" "$fold/test"
    for i in "${!all[@]}"; do
        if (( i % folds == k )); then link_case "${all[$i]}" "$fold/test"; else link_case "${all[$i]}" "$fold/train"; fi
    done
    echo "crossval: fold $k of $folds: held out $(ls "$fold/test" | tr '\n' ' ')"
    start=$SECONDS
    "$brats" train --data "$fold/train" --out "$fold/run" --plan --minutes "$minutes" --threads "$threads" --no-progress \
        --pictures 1 "$@" > "$fold/train.log" 2>&1 || { tail -n 20 "$fold/train.log"; exit 1; }
    "$brats" predict --run "$fold/run" --data "$fold/test" --out "$fold/pred" --threads "$threads" --pictures 2 \
        > "$fold/predict.log" 2>&1 || { tail -n 20 "$fold/predict.log"; exit 1; }
    "$brats" evaluate --pred "$fold/pred" --truth "$fold/test" --out "$fold/metrics.csv" > "$fold/evaluate.log" 2>&1 ||
        { tail -n 20 "$fold/evaluate.log"; exit 1; }
    echo "crossval: fold $k: $((SECONDS - start)) s; $(grep -E '^mean' "$fold/evaluate.log" || tail -n 1 "$fold/evaluate.log")"
done

# Every held-out case once, then the mean over them (not the mean of the folds' means).
{
    head -n 1 "$out/fold_0/metrics.csv"
    for ((k = 0; k < folds; k++)); do tail -n +2 "$out/fold_$k/metrics.csv" | grep -v '^mean,'; done
} > "$out/summary.csv"
awk -F, 'NR > 1 { n++; for (i = 2; i <= NF; i++) sum[i] += $i; fields = NF }
         END { printf "mean"; for (i = 2; i <= fields; i++) printf ",%.6f", sum[i] / n; printf "\n" }' "$out/summary.csv" >> "$out/summary.csv"
echo "crossval: $(($(wc -l < "$out/summary.csv") - 2)) held-out cases; $out/summary.csv:"
column -s, -t < "$out/summary.csv"

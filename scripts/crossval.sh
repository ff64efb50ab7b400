#!/usr/bin/env bash
# Usage: scripts/crossval.sh [--cases DIR] [--out DIR] [--folds K] [--fold k] [--minutes M] [--reference]
#                            [--rescore] [-- train options...]
# Cross-validation of `brats train` on a folder of labelled NIfTI cases (default: the 8 BraTS 2018
# cases of ../shared/data/brats2018): the sorted cases are dealt into K folds (case i into fold
# i mod K); each fold trains on the others with --plan and a --minutes budget (its own validation
# split inside them picks the post-processing), predicts its held-out cases and scores them.
# --reference trains and predicts with the PyTorch reference recipe instead
# (bench/reference/train_brats_reference.py, the same budget and threads; options after -- go to
# it); the same `brats evaluate` scores both. --fold k runs that fold only and keeps the others'
# results in <out>, so that folds can run on different days. --rescore trains nothing: each fold
# with a run (or --fold k) is scored again by the brats given, its end-of-run choice of weights and
# post-processing made anew on its validation cases (a finished run resumed), its held-out cases
# predicted and scored again; give the train options it ran with. For a newer brats on old runs.
# Writes <out>/fold_<k>/{train,test,run,pred,metrics.csv,seconds} and <out>/summary.csv: every
# held-out case of the folds done so far with its Dice and HD95 per region, then the mean over all
# of them. BRATS names the program (default build/demo/examples/brats, which scripts/demo.sh
# builds; `evaluate` is all --reference needs of it); THREADS the threads (2); PYTHON the
# interpreter of the reference (/usr/bin/python3, which owns Debian's python3-torch).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cases=$root/../shared/data/brats2018
out=$root/crossval
folds=4
minutes=38
only=
reference=0
rescore=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --cases) cases=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --folds) folds=$2; shift 2 ;;
        --minutes) minutes=$2; shift 2 ;;
        --fold) only=$2; shift 2 ;;
        --reference) reference=1; shift ;;
        --rescore) rescore=1; shift ;;
        --) shift; break ;;
        *) echo "crossval.sh: unknown option $1 (train options go after --)" >&2; exit 2 ;;
    esac
done
brats=${BRATS:-$root/build/demo/examples/brats}
threads=${THREADS:-2}
python=${PYTHON:-/usr/bin/python3}
[[ -z $only ]] || [[ $only =~ ^[0-9]+$ && $only -lt $folds ]] || { echo "crossval.sh: --fold $only: expected 0 .. $((folds - 1))" >&2; exit 2; }
[[ -x $brats ]] || { echo "crossval.sh: no brats at $brats (run scripts/demo.sh, or set BRATS)" >&2; exit 2; }
mapfile -t all < <(find "$cases" -mindepth 1 -maxdepth 1 -type d | sort)
(( ${#all[@]} >= 2 * folds )) || { echo "crossval.sh: ${#all[@]} cases in $cases, need at least $((2 * folds)) for $folds folds" >&2; exit 2; }

# A case folder of links to the files (the readers follow folders, not links to folders).
link_case() {  # case_dir target_parent
    mkdir -p "$2/$(basename "$1")"
    for f in "$1"/*; do ln -sf "$(realpath "$f")" "$2/$(basename "$1")/"; done
}

(( !(rescore && reference) )) || { echo "crossval.sh: --rescore: the reference makes no end-of-run choice; there is nothing to re-score" >&2; exit 2; }
# Runs a brats command into <fold>/<log>; on failure shows the log's end and stops.
brats_into() {  # log command args...
    local log=$1; shift
    "$brats" "$@" > "$fold/$log" 2>&1 || { tail -n 20 "$fold/$log"; exit 1; }
}

if (( reference )); then
    "$python" -c 'import torch' 2> /dev/null || { echo "crossval.sh: --reference needs PyTorch in $python (apt install python3-torch)" >&2; exit 2; }
fi
# Results of another fold count or case split would mix into the summary: a changed split starts afresh.
split="cases=$(realpath "$cases") folds=$folds minutes=$minutes reference=$reference"
if (( rescore )); then
    [[ -f $out/split && $(cat "$out/split") == "$split" ]] ||
        { echo "crossval.sh: --rescore: $out holds no cross-validation of this protocol ($split)" >&2; exit 2; }
else
    [[ -f $out/split && $(cat "$out/split") == "$split" ]] || { rm -rf "$out"; mkdir -p "$out"; echo "$split" > "$out/split"; }
fi
train_options=(--plan --minutes "$minutes" --threads "$threads" --no-progress --pictures 1 "$@")
for ((k = 0; k < folds; k++)); do
    [[ -z $only || $k == "$only" ]] || continue
    fold=$out/fold_$k
    if (( rescore )); then
        if [[ ! -f $fold/run/run.cfg ]]; then
            [[ -z $only ]] || { echo "crossval.sh: --rescore: fold $k has no run in $fold" >&2; exit 2; }
            echo "crossval: fold $k: no run to re-score"
            continue
        fi
        echo "crossval: fold $k: re-scoring its run with $brats (no training)"
        brats_into rescore.log train --data "$fold/train" --out "$fold/run" "${train_options[@]}" --resume latest
        rm -rf "$fold/pred"
    else
        rm -rf "$fold"
        mkdir -p "$fold/train" "$fold/test"
        for i in "${!all[@]}"; do
            if (( i % folds == k )); then link_case "${all[$i]}" "$fold/test"; else link_case "${all[$i]}" "$fold/train"; fi
        done
        echo "crossval: fold $k of $folds: held out $(ls "$fold/test" | tr '\n' ' ')"
        start=$SECONDS
        if (( reference )); then
            OMP_NUM_THREADS=$threads "$python" "$root/bench/reference/train_brats_reference.py" --train "$fold/train" \
                --test "$fold/test" --out "$fold/run" --minutes "$minutes" --threads "$threads" "$@" \
                > "$fold/train.log" 2>&1 || { tail -n 20 "$fold/train.log"; exit 1; }
            ln -s run/pred "$fold/pred"
        else
            brats_into train.log train --data "$fold/train" --out "$fold/run" "${train_options[@]}"
        fi
    fi
    (( reference )) || brats_into predict.log predict --run "$fold/run" --data "$fold/test" --out "$fold/pred" --threads "$threads" --pictures 2
    brats_into evaluate.log evaluate --pred "$fold/pred" --truth "$fold/test" --out "$fold/metrics.csv"
    (( rescore )) || echo $((SECONDS - start)) > "$fold/seconds"
    echo "crossval: fold $k: $( (( rescore )) && echo re-scored || echo "$((SECONDS - start)) s");" \
         "$(grep -E '^mean' "$fold/evaluate.log" || tail -n 1 "$fold/evaluate.log")"
done

# Every held-out case of the folds done once, then the mean over them (not the mean of the folds' means).
done_folds=()
for ((k = 0; k < folds; k++)); do [[ -f $out/fold_$k/metrics.csv ]] && done_folds+=("$k"); done
{
    head -n 1 "$out/fold_${done_folds[0]}/metrics.csv"
    for k in "${done_folds[@]}"; do tail -n +2 "$out/fold_$k/metrics.csv" | grep -v '^mean,'; done
} > "$out/summary.csv"
awk -F, 'NR > 1 { n++; for (i = 2; i <= NF; i++) sum[i] += $i; fields = NF }
         END { printf "mean"; for (i = 2; i <= fields; i++) printf ",%.6f", sum[i] / n; printf "\n" }' "$out/summary.csv" >> "$out/summary.csv"
echo "crossval: ${#done_folds[@]} of $folds folds done (${done_folds[*]}), $(($(wc -l < "$out/summary.csv") - 2)) held-out cases; $out/summary.csv:"
if command -v column > /dev/null; then column -s, -t < "$out/summary.csv"; else cat "$out/summary.csv"; fi  # column: bsdextrautils

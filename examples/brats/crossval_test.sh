#!/usr/bin/env bash
# ctest example.brats.crossval[_reference]: scripts/crossval.sh on 4 small synthetic cases in 2
# folds, ours (brats train --plan) or, with --reference, the PyTorch reference recipe (skipped,
# exit 77, where /usr/bin/python3 has no torch). Checks what the accuracy table is built from:
# every held-out case scored once, the mean over the cases, a single --fold rerun that keeps the
# other fold's results, --rescore of the runs, and a changed protocol that does not mix into them.
# Usage: crossval_test.sh BRATS WORK [--reference]
set -euo pipefail
brats=$1
work=$2
mode=${3:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fail() { echo "FAIL: $*" >&2; exit 1; }

if [[ $mode == --reference ]]; then
    /usr/bin/python3 -c 'import torch' 2> /dev/null || { echo "SKIPPED: /usr/bin/python3 has no torch (python3-torch)"; exit 77; }
    options=(--reference -- --window 64x64 --batch 4)
else
    options=(-- --no-watchdog)
fi
rm -rf "$work"
mkdir -p "$work"
"$brats" synth --out "$work/cases" --cases 4 --extent 64x64x32 --seed 11 > /dev/null
minutes=0.05
crossval() { BRATS=$brats THREADS=2 bash "$root/scripts/crossval.sh" --cases "$work/cases" --out "$work/cv" --folds 2 --minutes "$minutes" "$@"; }

crossval "${options[@]}" | tee "$work/all.log"
summary=$work/cv/summary.csv
[[ $(head -n 1 "$summary") == case,dice_WT,dice_TC,dice_ET,hd95_WT,hd95_TC,hd95_ET ]] || fail "summary header: $(head -n 1 "$summary")"
# Case i is held out in fold i mod 2, each once.
[[ $(tail -n +2 "$summary" | grep -v '^mean,' | cut -d, -f1 | sort | tr '\n' ' ') == "Synth_001 Synth_002 Synth_003 Synth_004 " ]] ||
    fail "held-out cases: $(cut -d, -f1 "$summary" | tr '\n' ' ')"
grep -q '^case,' "$work/cv/fold_0/metrics.csv" && grep -q '^Synth_001,' "$work/cv/fold_0/metrics.csv" &&
    grep -q '^Synth_003,' "$work/cv/fold_0/metrics.csv" || fail "fold 0 did not hold out cases 1 and 3"
[[ -L $work/cv/fold_1/test/Synth_002/Synth_002_flair.nii.gz && ! -e $work/cv/fold_1/train/Synth_002 ]] ||
    fail "fold 1 trained on its held-out case"
# Every value a number, Dice in [0, 1]; the mean row the mean of the case rows (recomputed here).
awk -F, 'NR > 1 && $1 != "mean" { for (i = 2; i <= 4; i++) if ($i !~ /^[0-9.]+$/ || $i < 0 || $i > 1) exit 1;
                                  for (i = 2; i <= NF; i++) s[i] += $i; n++ }
         $1 == "mean" { for (i = 2; i <= NF; i++) if ((s[i] / n - $i) ^ 2 > 1e-10) exit 1; m = 1 }
         END { exit !(m && n == 4) }' "$summary" || fail "summary values or mean: $(cat "$summary")"
for k in 0 1; do [[ $(cat "$work/cv/fold_$k/seconds") =~ ^[0-9]+$ ]] || fail "fold $k: no seconds"; done

# --fold 1 again: fold 0's results stay, fold 1 is redone, the summary still has all 4 cases.
before=$(md5sum < "$work/cv/fold_0/metrics.csv")
touch "$work/cv/fold_1/stale"
crossval --fold 1 "${options[@]}" > "$work/fold1.log"
[[ $(md5sum < "$work/cv/fold_0/metrics.csv") == "$before" ]] || fail "--fold 1 changed fold 0"
[[ ! -e $work/cv/fold_1/stale ]] || fail "--fold 1 kept fold 1's old files"
[[ $(grep -c '^Synth_' "$summary") == 4 ]] || fail "summary after --fold 1: $(cat "$summary")"
grep -q "2 of 2 folds done (0 1), 4 held-out cases" "$work/fold1.log" || fail "$(tail -n 3 "$work/fold1.log")"

# --rescore trains nothing: each fold's run makes its end-of-run choice again and its held-out
# cases are predicted and scored again by the same (deterministic) brats: the same metrics, the
# training seconds and epochs kept. The reference has nothing to re-score.
if [[ $mode != --reference ]]; then
    metrics_before=$(cat "$work"/cv/fold_*/metrics.csv | md5sum)
    seconds_before=$(cat "$work"/cv/fold_*/seconds)
    epochs_before=$(cat "$work"/cv/fold_*/run/metrics.csv | wc -l)
    crossval --rescore "${options[@]}" > "$work/rescore.log"
    [[ $(cat "$work"/cv/fold_*/metrics.csv | md5sum) == "$metrics_before" ]] || fail "--rescore changed the metrics: $(cat "$work/rescore.log")"
    [[ $(cat "$work"/cv/fold_*/seconds) == "$seconds_before" && $(cat "$work"/cv/fold_*/run/metrics.csv | wc -l) == "$epochs_before" ]] ||
        fail "--rescore trained or changed the fold seconds"
    for k in 0 1; do
        grep -q "predicted whole with final.h5" "$work/cv/fold_$k/rescore.log" || fail "fold $k: $(tail -n 5 "$work/cv/fold_$k/rescore.log")"
    done
    grep -q "fold 1: re-scored; mean" "$work/rescore.log" && grep -q "2 of 2 folds done (0 1), 4 held-out cases" "$work/rescore.log" ||
        fail "$(cat "$work/rescore.log")"
    if crossval --rescore --reference > "$work/bad.log" 2>&1; then fail "--rescore --reference accepted"; fi
    grep -q "the reference makes no end-of-run choice" "$work/bad.log" || fail "$(cat "$work/bad.log")"
fi

# Another budget is another protocol: the old folds go, the summary has the new fold only.
minutes=0.04
crossval --fold 0 "${options[@]}" > "$work/fold0.log"
[[ ! -e $work/cv/fold_1 && $(grep -c '^Synth_' "$summary") == 2 ]] || fail "a changed --minutes mixed with the old folds"
grep -q "1 of 2 folds done (0), 2 held-out cases" "$work/fold0.log" || fail "$(tail -n 3 "$work/fold0.log")"

# Usage errors: a fold outside 0 .. K-1.
if crossval --fold 2 "${options[@]}" > "$work/bad.log" 2>&1; then fail "--fold 2 of 2 accepted"; fi
grep -q -- "--fold 2: expected 0 .. 1" "$work/bad.log" || fail "$(cat "$work/bad.log")"
echo "crossval_test: passed"

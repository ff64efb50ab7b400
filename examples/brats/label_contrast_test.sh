#!/usr/bin/env bash
# ctest example.brats.label_contrast: scripts/label_contrast.py on synthetic cases (brats synth:
# the enhancing rim is bright on T1ce, so nothing is flagged), on a copy of one whose labels 1 and
# 4 are swapped (its "enhancing" label now lies on the dark necrosis: flagged), and, where
# ../shared/data/brats2018 is present, on the real cases (Brats18_TCIA13_623_1 alone is flagged,
# docs/accuracy.md). Skipped (77) where /usr/bin/python3 has no numpy.
# Usage: label_contrast_test.sh BRATS WORK
set -euo pipefail
brats=$1
work=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fail() { echo -e "FAIL: $*" >&2; exit 1; }
/usr/bin/python3 -c 'import numpy' 2> /dev/null || { echo "SKIPPED: /usr/bin/python3 has no numpy (python3-numpy)"; exit 77; }
contrast() { /usr/bin/python3 "$root/scripts/label_contrast.py" "$@"; }

rm -rf "$work"
mkdir -p "$work"
"$brats" synth --out "$work/cases" --cases 3 --extent 64x64x32 --seed 5 > /dev/null
contrast "$work/cases" > "$work/synthetic.csv"
[[ $(head -n 1 "$work/synthetic.csv") == case,t1ce_core_z,t1ce_edema_z,t1ce_enhancing_z,* ]] || fail "header: $(head -n 1 "$work/synthetic.csv")"
(( $(wc -l < "$work/synthetic.csv") == 4 )) || fail "expected 3 case rows:\n$(cat "$work/synthetic.csv")"
! grep -q "not bright" "$work/synthetic.csv" || fail "a synthetic case flagged:\n$(cat "$work/synthetic.csv")"
# Every case with an enhancing label has it bright on T1ce (z > 1).
awk -F, 'NR > 1 && $4 != "nan" && $4 <= 1 { exit 1 }' "$work/synthetic.csv" || fail "T1ce enhancing z:\n$(cat "$work/synthetic.csv")"

# A case whose labels 1 and 4 are swapped: the same images, the enhancing label on the necrosis.
case_dir=$(find "$work/cases" -mindepth 1 -maxdepth 1 -type d | sort | head -n 1)
awk -F, -v c="$(basename "$case_dir")" '$1 == c && $17 == "" { found = 1 } END { exit !found }' "$work/synthetic.csv" ||
    fail "the first synthetic case should have all three labels:\n$(cat "$work/synthetic.csv")"
name=$(basename "$case_dir")
mkdir -p "$work/swapped/Swapped"
for m in flair t1 t1ce t2; do cp "$case_dir/${name}_$m.nii.gz" "$work/swapped/Swapped/Swapped_$m.nii.gz"; done
/usr/bin/python3 - "$case_dir/${name}_seg.nii.gz" "$work/swapped/Swapped/Swapped_seg.nii.gz" <<'EOF'
import gzip, struct, sys
import numpy as np
raw = bytearray(gzip.open(sys.argv[1]).read())
offset = int(struct.unpack("<f", raw[108:112])[0])
dtype = {2: np.uint8, 4: np.int16}[struct.unpack("<h", raw[70:72])[0]]
labels = np.frombuffer(bytes(raw[offset:]), dtype=dtype).copy()
swapped = labels.copy()
swapped[labels == 1], swapped[labels == 4] = 4, 1
raw[offset:] = swapped.tobytes()
gzip.open(sys.argv[2], "wb").write(bytes(raw))
EOF
contrast "$work/swapped" > "$work/swapped.csv" 2> "$work/swapped.err"
grep -q "^Swapped,.*enhancing label not bright on T1ce$" "$work/swapped.csv" || fail "the swapped case is not flagged:\n$(cat "$work/swapped.csv")"
grep -q "^# 1 case(s)" "$work/swapped.err" || fail "summary: $(cat "$work/swapped.err")"

real=$root/../shared/data/brats2018
if [[ -d $real ]]; then
    contrast "$real" > "$work/real.csv"
    flagged=$(grep "not bright" "$work/real.csv" | cut -d, -f1 | tr '\n' ' ')
    [[ $flagged == "Brats18_TCIA13_623_1 " ]] || fail "real cases flagged: '$flagged'\n$(cat "$work/real.csv")"
    echo "real cases: $(($(wc -l < "$work/real.csv") - 1)), flagged: $flagged"
else
    echo "no $real: the real cases are not checked"
fi
echo "label_contrast: synthetic, swapped and real cases as expected"

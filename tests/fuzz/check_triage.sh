#!/usr/bin/env bash
# Runs scripts/fuzz_triage.sh on the saved sanitizer and libFuzzer reports in tests/fuzz/reports:
# a report named libhdf5-* must be classed as libhdf5's own fault, one named ours-* as ours (the
# first word of the triage line; the rest is the reason, printed here).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
failed=0
for report in "$root"/tests/fuzz/reports/*.txt; do
    name=$(basename "$report")
    expected=${name%%-*}
    line=$("$root/scripts/fuzz_triage.sh" "$report")
    got=${line%%:*}
    if [[ $got != "$expected" ]]; then
        echo "FAIL $name: classed as $line (expected $expected)"
        failed=1
    else
        echo "ok   $name: $line"
    fi
done
exit $failed

#!/usr/bin/env bash
# Runs scripts/fuzz_triage.sh on the saved sanitizer reports in tests/fuzz/reports: a report named
# libhdf5-* must be classed as libhdf5's own fault, one named ours-* as ours.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
failed=0
for report in "$root"/tests/fuzz/reports/*.txt; do
    name=$(basename "$report")
    expected=${name%%-*}
    got=$("$root/scripts/fuzz_triage.sh" "$report")
    if [[ $got != "$expected" ]]; then
        echo "FAIL $name: classed as $got, expected $expected"
        failed=1
    else
        echo "ok   $name: $got"
    fi
done
exit $failed

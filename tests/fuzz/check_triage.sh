#!/usr/bin/env bash
# Runs scripts/fuzz_triage.sh on the saved sanitizer and libFuzzer reports in tests/fuzz/reports:
# a report named libhdf5-* must be classed as libhdf5's own fault, one named ours-* as ours,
# stopped-* as cut off by the end of the fuzzing time (the first word of the triage line; the rest
# is the reason, printed here). A report <name>.txt with a <name>.stopped beside it is triaged with
# that list of the processes the stop ended, as scripts/fuzz.sh does for reports written while
# fuzzing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
failed=0
for report in "$root"/tests/fuzz/reports/*.txt; do
    name=$(basename "$report")
    expected=${name%%-*}
    stopped=()
    [[ -f ${report%.txt}.stopped ]] && stopped=("${report%.txt}.stopped")
    line=$("$root/scripts/fuzz_triage.sh" "$report" "${stopped[@]}")
    got=${line%%:*}
    if [[ $got != "$expected" ]]; then
        echo "FAIL $name: classed as $line (expected $expected)"
        failed=1
    else
        echo "ok   $name: $line"
    fi
done
# The triage calls a read of a block we freed libhdf5's stale pointer only because our code gives
# libhdf5 no pointer to keep after a call returns: every H5 call of the sources that could keep one
# (property and type setters, registration, callbacks, file images, error handlers) must be one
# known to copy its arguments, and the error handler is only ever switched off.
keeps_nothing='^(H5Pset_chunk|H5Pset_deflate|H5Pset_fapl_core|H5Pset_shuffle|H5Tset_cset|H5Tset_size|H5Eset_auto2)$'
while read -r call; do
    if [[ ! $call =~ $keeps_nothing ]]; then
        echo "FAIL the sources call $call: it may keep a pointer of ours; check it and add it to check_triage.sh's list"
        failed=1
    fi
done < <(grep -rhoE '\bH5[A-Z]?[A-Za-z0-9_]*(set|register|push|_cb|callback|image|replace|append)[A-Za-z0-9_]*\b' \
    "$root/include" "$root/examples" | grep -vE '^H5[A-Z]?get|__' | sort -u)
while read -r use; do
    if [[ ! $use =~ H5Eset_auto2\(H5E_DEFAULT,\ nullptr,\ nullptr\) ]]; then
        echo "FAIL H5Eset_auto2 with a handler or client data: $use"
        failed=1
    fi
done < <(grep -rhoE 'H5Eset_auto2\([^)]*\)' "$root/include" "$root/examples")
exit $failed

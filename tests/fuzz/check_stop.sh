#!/usr/bin/env bash
# Checks scripts/fuzz_run_for.sh, which ends a fuzzing run at its time: on a stand-in for
# libFuzzer's fork mode (a parent and two job processes in one group) it must wait for the job
# that has begun a sanitizer report until the report is out (SUMMARY line and all), must not wait
# for a job whose report file holds only a warning, must list the processes its signal ended (that
# job and the parent, not the reporter), and must not take the 60 s it allows a report.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "FAIL $*"; failed=1; }

# A job writes its error line at once and its stack 4 s later (ASan symbolizing), then dies as a
# sanitizer does; the other writes a warning (a failed allocation) and fuzzes on.
cat >"$work/fuzzer.sh" <<'FAKE'
prefix=$1
( echo "==$BASHPID==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x1" >"$prefix.$BASHPID"
  echo $BASHPID >"$prefix.reporter"
  sleep 4
  printf '    #0 0x1 in frame\nSUMMARY: AddressSanitizer: heap-buffer-overflow\n' >>"$prefix.$BASHPID"
  exit 1 ) &
( echo "==$BASHPID==WARNING: AddressSanitizer failed to allocate 0x100 bytes" >"$prefix.$BASHPID"
  echo $BASHPID >"$prefix.warner"
  sleep 100 ) &
wait
FAKE

start=$SECONDS
rc=0
bash "$root/scripts/fuzz_run_for.sh" 1 "$work/report" "$work/stopped" -- bash "$work/fuzzer.sh" "$work/report" || rc=$?
took=$((SECONDS - start))
reporter=$(<"$work/report.reporter")
warner=$(<"$work/report.warner")

((rc == 0)) || fail "the run the stop ended exited $rc, not 0"
grep -q '^SUMMARY: ' "$work/report.$reporter" || fail "the report was cut off: $(tr '\n' '|' <"$work/report.$reporter")"
((took >= 3)) || fail "stopped after $took s, before the report (4 s) was out"
((took < 20)) || fail "took $took s: waited for the process that only warned"
grep -qx "$warner" "$work/stopped" || fail "the warning job $warner is not in the stopped list: $(tr '\n' ' ' <"$work/stopped")"
grep -qx "$reporter" "$work/stopped" && fail "the reporter $reporter, which ended by itself, is in the stopped list"
kill -0 "$warner" 2>/dev/null && fail "the warning job $warner still runs after the stop"

# A command that ends before its time: its own status, nothing stopped.
rc=0
bash "$root/scripts/fuzz_run_for.sh" 30 "$work/none" "$work/stopped2" -- bash -c 'exit 3' || rc=$?
((rc == 3)) || fail "a command that exits 3 by itself gave $rc"
[[ ! -s $work/stopped2 ]] || fail "a command that ended by itself left a stopped list: $(<"$work/stopped2")"

((failed)) || echo "ok: the report was waited for ($took s), the warning job stopped and listed"
exit $failed

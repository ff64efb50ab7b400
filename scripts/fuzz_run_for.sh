#!/usr/bin/env bash
# Usage: fuzz_run_for.sh SECONDS REPORT_PREFIX STOPPED_LIST -- COMMAND [ARG...]
# Runs COMMAND in a process group of its own for SECONDS (or until it ends), then stops the whole
# group without cutting a sanitizer report short, and exits with COMMAND's status (0 when the stop
# ended it).
#
# Why: libFuzzer's fork-mode parent only stops between jobs, so the fuzzing time is held by a
# signal to all its processes. A job process that is writing a sanitizer report when the signal
# comes dies with the report cut after its first lines (ASan symbolizes the stack after printing
# the error line), and a report without a stack cannot be judged (seen in CI: "==6016==ERROR:
# AddressSanitizer: heap-buffer-overflow ... READ of size 3784" and nothing after). So before the
# signal, every process of the group that has begun a report (an error line in REPORT_PREFIX.<pid>,
# the sanitizers' log_path; warnings such as a failed allocation go there too and do not count) is
# waited for, up to 60 s: it ends by itself once the report is out.
# The pids the signal still reaches are written to STOPPED_LIST: a report of one of them that
# has no SUMMARY line was cut by the stop, not by its own fault (scripts/fuzz_triage.sh).
set -uo pipefail
if (($# < 5)) || [[ $4 != -- ]]; then
    echo "usage: fuzz_run_for.sh SECONDS REPORT_PREFIX STOPPED_LIST -- COMMAND [ARG...]" >&2
    exit 2
fi
seconds=$1 report_prefix=$2 stopped_list=$3
shift 4
: >"$stopped_list"

# The processes of group $1, from /proc (procps may be absent on a fresh machine). A process can
# end while it is read; it is then not listed.
group_members() {
    local stat fields pid
    for stat in /proc/[0-9]*/stat; do
        { read -r fields <"$stat"; } 2>/dev/null || continue
        pid=${fields%% *}
        fields=${fields##*) }  # the command name, in parentheses, may hold spaces
        read -r _ _ group _ <<<"$fields"
        [[ $group == "$1" ]] && echo "$pid"
    done
}

# setsid: a shell without job control starts COMMAND in the shell's own group; a new session gives
# it a group whose id is its pid (setsid only forks when called by a group leader, which a
# background child of this shell is not).
setsid "$@" &
leader=$!
deadline=$((SECONDS + seconds))
while kill -0 "$leader" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 1
done

if kill -0 "$leader" 2>/dev/null; then
    for ((waited = 0; waited < 60; waited++)); do
        reporting=0
        for pid in $(group_members "$leader"); do
            [[ -e $report_prefix.$pid ]] && grep -qE 'ERROR: |runtime error: ' "$report_prefix.$pid" 2>/dev/null && reporting=1
        done
        ((reporting)) || break
        sleep 1
    done
    group_members "$leader" >"$stopped_list"
    kill -TERM -- "-$leader" 2>/dev/null
    for ((waited = 0; waited < 10; waited++)); do
        [[ -z $(group_members "$leader") ]] && break
        sleep 1
    done
    kill -KILL -- "-$leader" 2>/dev/null
    wait "$leader"
    exit 0
fi
wait "$leader"

#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang and fuzzes each target that has a corpus
# (tests/fuzz/fuzz_<name>.cpp with tests/fuzz/corpus/<name>) for a fixed time, then gates on what
# it found. New inputs go to a scratch copy of the corpus, so the committed corpus only changes when
# someone copies findings in on purpose.
#
# Fuzzing runs in libFuzzer's fork mode, crashes, hangs and out-of-memory ignored: each input that
# ends a fuzzing process is saved as an artifact (crash-*, timeout-*, oom-*) and fuzzing goes on for
# the whole time, so a libhdf5 fault found early does not end the run. Afterwards each artifact is
# run once more alone, for a full report, and scripts/fuzz_triage.sh classes the report: "libhdf5"
# (provably libhdf5's own fault on a corrupt file: reported, not failed) or "ours" (fails the run).
#   * A hang is re-run with the fuzzing time limit; if it hangs in our code it is re-run once more
#     with a generous limit, so that a slow machine cannot fail the run: only a hang that repeats
#     there fails. One that finishes alone is reported, not failed.
#   * An out-of-memory whose report blames no one (the live heap when libFuzzer looked is its own
#     buffers) is re-run with a malloc limit of half the RSS limit; the block it stops is judged.
#   * The run is held to its time by scripts/fuzz_run_for.sh, which lets a job finish a report it
#     has begun before it stops them all; a report the stop still cut off (no SUMMARY, its process
#     among those stopped) is listed, not judged and not failing.
#   * Every sanitizer report written while fuzzing is kept (log_path) and triaged too: a crash that
#     depends on what the process ran before and does not reproduce alone is still judged by its
#     own report. A crash that neither reproduces nor left a sanitizer report fails. An
#     out-of-memory that does not reproduce alone (memory piled up over earlier inputs, e.g.
#     libhdf5's leaks on broken files) is reported, not failed.
# Environment: LIGHTUNET_FUZZ_SECONDS (default 25 per target), LIGHTUNET_BUILD_ROOT (default
# <repo>/build), LIGHTUNET_JOBS (default 2: parallel re-runs). Artifacts, logs and reports stay in
# <build root>/fuzz/runs/<name>. Skips (exit 0) when clang++ is absent.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_root=${LIGHTUNET_BUILD_ROOT:-$root/build}
seconds=${LIGHTUNET_FUZZ_SECONDS:-25}
jobs=${LIGHTUNET_JOBS:-2}
rss_limit=2048      # MB, while fuzzing and for every re-run
hang_seconds=5      # -timeout while fuzzing and for the first re-run of a hang (inputs take ms)
confirm_seconds=30  # -timeout for re-running a crash, and a hang the first re-run placed in our code

if ! command -v clang++ >/dev/null 2>&1; then
    echo "fuzz: clang++ not found, fuzzing skipped"
    exit 0
fi

# Compiled through ccache when present, with the settings of scripts/test.sh (which calls this
# one): paths hashed relative to the checkout, build folder not hashed. With -g a hit from another
# checkout keeps that checkout's build folder as the debug info's compilation folder; the stack
# traces' functions, files (relative) and lines are the same.
launcher=()
if command -v ccache >/dev/null 2>&1; then
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root}
    export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
    launcher+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

cmake -S "$root/tests/fuzz" -B "$build_root/fuzz" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DLIGHTUNET_FUZZ=ON "${launcher[@]}" >/dev/null
cmake --build "$build_root/fuzz" -j "$jobs"

runs=$build_root/fuzz/runs
rm -rf "$runs"
mkdir -p "$runs"

# The report of a failure: the sanitizer's own lines, without the shadow-memory map.
excerpt() {
    sed -n '/ERROR: \|runtime error: /,/^SUMMARY/p' "$1" | grep -v '^INFO: ' | head -60 | sed 's/^/    /'
}

# Runs one artifact alone (its log: <artifact>.log) and writes "<verdict line>" to <artifact>.verdict:
# "libhdf5: ...", "ours: ...", or "not reproduced: ..." (not failing). A third argument replaces
# the target's malloc limit (MB).
rerun_artifact() {
    local artifact=$1 limit=$2 log=$1.log rc start
    local malloc_mb=${3:-$malloc_limit}
    start=$SECONDS
    set +e
    ASAN_OPTIONS=$asan UBSAN_OPTIONS=$ubsan TMPDIR=$dir/tmp timeout -k 10 $((limit + 60)) "$binary" -rss_limit_mb="$rss_limit" -malloc_limit_mb="$malloc_mb" -timeout="$limit" \
        "$artifact" >"$log" 2>&1
    rc=$?
    set -e
    if ((rc == 0)); then
        echo "not reproduced: ran to the end alone in $((SECONDS - start)) s" >"$artifact.verdict"
    else
        "$root/scripts/fuzz_triage.sh" "$log" >"$artifact.verdict"
    fi
}

triage_artifact() {
    local artifact=$1 verdict
    case $(basename "$artifact") in
        timeout-*)
            rerun_artifact "$artifact" "$hang_seconds"
            verdict=$(<"$artifact.verdict")
            if [[ $verdict == ours:* ]]; then
                # In our code under the fuzzing limit: once more with a generous one, so that a
                # loaded machine cannot fail the run; a hang that repeats there fails.
                cp "$artifact.log" "$artifact.first.log"
                rerun_artifact "$artifact" "$confirm_seconds"
                verdict=$(<"$artifact.verdict")
                if [[ $verdict == not\ reproduced:* ]]; then
                    echo "not reproduced: slow, not endless (over ${hang_seconds} s in our code, then finished alone within ${confirm_seconds} s; first re-run: $artifact.first.log)" >"$artifact.verdict"
                fi
            fi
            ;;
        oom-*)
            rerun_artifact "$artifact" "$confirm_seconds"
            verdict=$(<"$artifact.verdict")
            if [[ $verdict == ours:* ]] && grep -q 'ERROR: libFuzzer: out-of-memory (used' "$artifact.log"; then
                # The RSS report lists the live heap when libFuzzer's watchdog looked (once a
                # second) against the peak RSS: a block of half the limit or more, touched and
                # freed in between, leaves only libFuzzer's own buffers on the list. Once more with
                # such blocks stopped as they are made, so that the report names who asked.
                cp "$artifact.log" "$artifact.first.log"
                rerun_artifact "$artifact" "$confirm_seconds" $((rss_limit / 2))
                if ! grep -q 'ERROR: libFuzzer: out-of-memory (malloc' "$artifact.log"; then
                    echo "$verdict (no block of $((rss_limit / 2)) MB or more either: $artifact.log)" >"$artifact.verdict"
                fi
            fi
            ;;
        *) rerun_artifact "$artifact" "$confirm_seconds" ;;
    esac
}

fuzz_target() {
    local name=$1 dir=$runs/$1 asan ubsan stats execs cov corpus verdict artifact kind failed=0
    local -a artifacts=() fuzz_reports=()
    local started=$SECONDS
    local libhdf5=0 ours=0 unreproduced=0 unreproduced_crashes=0 report_libhdf5=0 report_ours=0 report_stopped=0
    binary=$build_root/fuzz/fuzz_$name
    mkdir -p "$dir/corpus" "$dir/artifacts" "$dir/reports" "$dir/tmp"
    cp -r "$root/tests/fuzz/corpus/$name/." "$dir/corpus/"
    # HDF5's own parser is not what we test: leaks inside libhdf5 on broken files are not ours.
    # libhdf5 sizes its metadata buffers from the (corrupt) file and handles a failed malloc as an
    # error; let impossible allocations fail (return null) instead of ending the run as an OOM.
    # Our own readers bound every allocation from the header first (NIfTI: 1 GB limit holds).
    # UBSan stops at the first report: undefined behaviour of ours fails the run.
    malloc_limit=1024
    asan=detect_leaks=0
    if [[ $name == hdf5 || $name == checkpoint ]]; then
        malloc_limit=1048576
        asan=detect_leaks=0:allocator_may_return_null=1
    fi
    asan=${ASAN_OPTIONS:+$ASAN_OPTIONS:}$asan
    ubsan=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:print_stacktrace=1

    echo "fuzz: $name for ${seconds}s (fork mode; crashes, hangs and OOMs saved and triaged afterwards)"
    # The fork-mode parent stops only between jobs; a SIGTERM to all its processes holds the run to
    # its time (not SIGINT: the parent runs each job through system(), which ignores SIGINT), sent
    # by fuzz_run_for.sh once no job is writing a report; the jobs it still had to stop are listed
    # in stopped.pids. Reports written while fuzzing go to reports/fuzz.<pid>.
    ASAN_OPTIONS=$asan:log_path=$dir/reports/fuzz UBSAN_OPTIONS=$ubsan:log_path=$dir/reports/fuzz TMPDIR=$dir/tmp \
        "$root/scripts/fuzz_run_for.sh" "$seconds" "$dir/reports/fuzz" "$dir/stopped.pids" -- \
        "$binary" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -max_total_time="$seconds" -rss_limit_mb="$rss_limit" -malloc_limit_mb="$malloc_limit" -timeout="$hang_seconds" \
        -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/fuzz.log" 2>&1 || true

    for artifact in "$dir"/artifacts/*; do
        [[ -f $artifact ]] && artifacts+=("$artifact")
    done
    for artifact in "${artifacts[@]}"; do
        triage_artifact "$artifact" &
        while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    done
    wait

    for artifact in "${artifacts[@]}"; do
        verdict=$(<"$artifact.verdict")
        kind=$(basename "$artifact")
        case $verdict in
            libhdf5:*)
                libhdf5=$((libhdf5 + 1))
                echo "fuzz: $name $kind: $verdict (not failing)"
                ;;
            not\ reproduced:*)
                unreproduced=$((unreproduced + 1))
                [[ $kind == crash-* ]] && unreproduced_crashes=$((unreproduced_crashes + 1))
                echo "fuzz: $name $kind: $verdict (not failing; judged by the reports written while fuzzing)"
                ;;
            *)
                ours=$((ours + 1))
                failed=1
                echo "fuzz: $name $kind: $verdict -- FAILED, reproduce: ASAN_OPTIONS=$asan UBSAN_OPTIONS=$ubsan $binary $artifact"
                excerpt "$artifact.log"
                ;;
        esac
    done

    # Reports written while fuzzing (timeouts and OOMs write only a stack there: left to the
    # artifacts above).
    for report in "$dir"/reports/fuzz.*; do
        [[ -f $report ]] && grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: ' "$report" && fuzz_reports+=("$report")
    done
    for report in "${fuzz_reports[@]}"; do
        verdict=$("$root/scripts/fuzz_triage.sh" "$report" "$dir/stopped.pids")
        if [[ $verdict == libhdf5:* ]]; then
            report_libhdf5=$((report_libhdf5 + 1))
        elif [[ $verdict == stopped:* ]]; then
            report_stopped=$((report_stopped + 1))
            echo "fuzz: $name report written while fuzzing, $report: $verdict (not failing)"
        else
            report_ours=$((report_ours + 1))
            echo "fuzz: $name report written while fuzzing, $report: $verdict -- FAILED"
            ((failed)) || excerpt "$report"
            failed=1
        fi
    done
    if ((unreproduced_crashes > 0 && ${#fuzz_reports[@]} == 0)); then
        echo "fuzz: $name: $unreproduced_crashes crash(es) neither reproduce alone nor left a sanitizer report -- FAILED (inputs in $dir/artifacts, log $dir/fuzz.log)"
        grep -E 'ERROR: |runtime error: ' "$dir/fuzz.log" | head -10 | sed 's/^/    /' || true
        failed=1
    fi

    # libFuzzer's fork-mode status line after the last finished job: "#execs: cov: N ft: N corp: N ...".
    stats=$(grep -E '^#[0-9]+: cov: ' "$dir/fuzz.log" | tail -1 || true)
    if [[ -n $stats ]]; then
        read -r execs cov corpus < <(awk '{ sub(/^#/, "", $1); sub(/:$/, "", $1); print $1, $3, $7 }' <<<"$stats")
    else
        execs=0 cov=? corpus=?
    fi
    echo "fuzz: $name summary ($((SECONDS - started)) s): $execs execs in finished jobs, coverage $cov, corpus $corpus; artifacts ${#artifacts[@]}" \
        "(libhdf5 $libhdf5, ours $ours, not reproduced $unreproduced); sanitizer reports while fuzzing ${#fuzz_reports[@]}" \
        "(libhdf5 $report_libhdf5, ours $report_ours, cut off by the stop $report_stopped)$( ((failed)) && echo " -- FAILED" || echo ", passed")"
    rm -rf "$dir/corpus" "$dir/tmp"
    return $failed
}

status=0
for source in "$root"/tests/fuzz/fuzz_*.cpp; do
    name=$(basename "$source" .cpp)
    name=${name#fuzz_}
    if [[ ! -d $root/tests/fuzz/corpus/$name ]]; then
        echo "fuzz: $name has no corpus (tests/fuzz/corpus/$name), not run"
        continue
    fi
    fuzz_target "$name" || status=1
done
exit $status

#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang and runs each for a short time, seeded
# from the committed corpus (tests/fuzz/corpus/<target>). New inputs go to a scratch copy, so the
# committed corpus only changes when someone copies findings in on purpose.
# Environment: LIGHTUNET_FUZZ_SECONDS (default 25 per target), LIGHTUNET_BUILD_ROOT (default
# <repo>/build), LIGHTUNET_JOBS (default 2). Skips (exit 0) when clang++ is absent.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_root=${LIGHTUNET_BUILD_ROOT:-$root/build}
seconds=${LIGHTUNET_FUZZ_SECONDS:-25}
jobs=${LIGHTUNET_JOBS:-2}

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

status=0
for target in nifti hdf5; do
    work=$(mktemp -d)
    cp -r "$root/tests/fuzz/corpus/$target/." "$work/"
    echo "fuzz: $target for ${seconds}s"
    # HDF5's own parser is not what we test: leaks inside libhdf5 on broken files are not ours.
    # A hang is reported but does not fail the run: libhdf5 1.10 can loop forever in its own
    # metadata code on corrupt files (seen: H5HG_read under H5Aread of a variable-length string),
    # which no check of ours before the call can see. Crashes and sanitizer reports do fail.
    # libhdf5 sizes its metadata buffers from the (corrupt) file and handles a failed malloc as an
    # error; let impossible allocations fail (return null) instead of ending the run as an OOM.
    # Our own readers bound every allocation from the header first (NIfTI: 1 GB limit holds).
    malloc_limit=1024
    asan_options=detect_leaks=0
    if [[ $target == hdf5 ]]; then
        malloc_limit=1048576
        asan_options=detect_leaks=0:allocator_may_return_null=1
    fi
    if ! ASAN_OPTIONS=${ASAN_OPTIONS:-$asan_options} \
        "$build_root/fuzz/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb="$malloc_limit" \
            -timeout=10 -timeout_exitcode=0 -artifact_prefix="$build_root/fuzz/crash-$target-" -print_final_stats=1 "$work" \
            >"$build_root/fuzz/$target.log" 2>&1; then
        # A fault inside libhdf5 on memory libhdf5 owns is that library's parser trusting its own
        # corrupt metadata (seen in 1.10.8: H5HG_read under H5Aread of a variable-length string,
        # H5O__msg_iterate_real under H5Aexists, H5VM_memcpyvv reading past a buffer H5C_protect
        # allocated): reported like a hang, not failed. A fault in our code, or inside libhdf5 on a
        # buffer we allocated (a read into a too-small array of ours), fails.
        # The rule is scripts/fuzz_triage.sh, checked on saved reports by the fuzz_triage test.
        if [[ $("$root/scripts/fuzz_triage.sh" "$build_root/fuzz/$target.log") == libhdf5 ]]; then
            echo "fuzz: $target stopped on a fault inside libhdf5 on its own memory (not failing; input $build_root/fuzz/crash-$target-*):"
            # A libhdf5 out-of-memory report has no AddressSanitizer line and no named H5 frames.
            { grep -m1 -E "ERROR: (AddressSanitizer|libFuzzer)" "$build_root/fuzz/$target.log" | cut -c1-120; } || true
            { grep -E "^    #[0-9]+ .* (in H5|libhdf5)" "$build_root/fuzz/$target.log" | head -3; } || true
        else
            echo "fuzz: $target FAILED, see $build_root/fuzz/$target.log; the input is $build_root/fuzz/crash-$target-*"
            sed -n "/ERROR: /,/SUMMARY/p" "$build_root/fuzz/$target.log" | head -60
            tail -8 "$build_root/fuzz/$target.log"
            status=1
        fi
    else
        if grep -q "libFuzzer: timeout" "$build_root/fuzz/$target.log"; then
            echo "fuzz: $target stopped on a hang (not failing; input $build_root/fuzz/crash-$target-timeout-*):"
            grep -E "^    #[0-9]+ .* in H5" "$build_root/fuzz/$target.log" | head -3
        fi
        grep -E "stat::number_of_executed_units|cov:" "$build_root/fuzz/$target.log" | tail -2
    fi
    rm -rf "$work"
done
exit $status

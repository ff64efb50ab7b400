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

cmake -S "$root/tests/fuzz" -B "$build_root/fuzz" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DLIGHTUNET_FUZZ=ON >/dev/null
cmake --build "$build_root/fuzz" -j "$jobs"

status=0
for target in nifti hdf5; do
    work=$(mktemp -d)
    cp -r "$root/tests/fuzz/corpus/$target/." "$work/"
    echo "fuzz: $target for ${seconds}s"
    # HDF5's own parser is not what we test: leaks inside libhdf5 on broken files are not ours.
    if ! ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} \
        "$build_root/fuzz/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
            -timeout=10 -artifact_prefix="$build_root/fuzz/crash-$target-" -print_final_stats=1 "$work" \
            >"$build_root/fuzz/$target.log" 2>&1; then
        echo "fuzz: $target FAILED, see $build_root/fuzz/$target.log; the input is $build_root/fuzz/crash-$target-*"
        tail -40 "$build_root/fuzz/$target.log"
        status=1
    else
        grep -E "stat::number_of_executed_units|cov:" "$build_root/fuzz/$target.log" | tail -2
    fi
    rm -rf "$work"
done
exit $status

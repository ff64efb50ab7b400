#!/usr/bin/env bash
# Builds and runs every test:
#   1. Release with -march=native: unit, compile-fail, consumer and benchmark smoke tests;
#   2. ASan + UBSan: the unit tests (consumer and compile-fail tests left out: no sanitized code).
# Environment: LIGHTUNET_JOBS (default 2), LIGHTUNET_BUILD_ROOT (default <repo>/build).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${LIGHTUNET_JOBS:-2}
build_root=${LIGHTUNET_BUILD_ROOT:-$root/build}

# ccache: every compile below goes through it (C++ and CUDA; the fuzz build, and the builds the
# compile-fail and consumer tests start, too). Hits do not depend on where the checkout lies:
# paths under the repository are hashed relative to it (CCACHE_BASEDIR, exported so the nested
# builds see it), the build folder is not hashed (CCACHE_NOHASHDIR), and no absolute path of the
# checkout is on a compile line (tests/test_paths.hpp). So a CI run in a fresh clone reuses what
# an earlier run on the same machine compiled. The cache stays in ccache's default folder
# (CCACHE_DIR overrides it), capped at CCACHE_MAXSIZE (default 5G); its statistics for this run
# are printed at the end.
common=()
cuda_launcher=()
if command -v ccache >/dev/null 2>&1; then
    export CCACHE_BASEDIR=$root
    export CCACHE_NOHASHDIR=1
    export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
    common+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    cuda_launcher+=(-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
    ccache --zero-stats >/dev/null
    trap 'printf "\n=== ccache (this run) ===\n"; ccache --show-stats' EXIT
else
    echo "test.sh: ccache not found, nothing is cached (scripts/install-deps.sh installs it)"
fi

# Each step names the time it starts (UTC), so a CI log shows where its time went.
step() { printf '\n=== %s (%s) ===\n' "$*" "$(date -u +%H:%M:%S)"; }

# CUDA: the tests and benchmark compile wherever nvcc exists (CI has it, without a GPU: the
# CUDA tests then report skipped). Two architectures keep the compile time down; the
# library's default is 75;80;86;89;90.
cuda=()
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
    cuda+=(-DLIGHTUNET_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${LIGHTUNET_CUDA_ARCHS:-75;90}" "${cuda_launcher[@]}")
fi

# One OpenMP thread per test: ctest -j N runs N tests at once, and with two threads each the
# cores are oversubscribed, where libgomp's spin-waiting barriers collapse: a 2-second bf16 test
# took 30-120 s with a second copy beside it on 2 cores, and CI timed it out at 900 s. Measured
# on a 2-vCPU host, release ctest -j2 (all but consumer and compile-fail tests): 393 s with two
# threads per test, 229 s with one. Results do not depend on the thread count; the tests that
# compare 1 and 2 threads (or train on 2) set the count themselves, and brats sets its own.
export OMP_NUM_THREADS=1

step "release: configure"
cmake -S "$root" -B "$build_root/release" -DCMAKE_BUILD_TYPE=Release -DLIGHTUNET_NATIVE=ON "${cuda[@]}" "${common[@]}"
step "release: build"
cmake --build "$build_root/release" -j "$jobs"
step "release: ctest"
ctest --test-dir "$build_root/release" --output-on-failure -j "$jobs" --timeout 900

step "sanitize: configure"
cmake -S "$root" -B "$build_root/sanitize" -DCMAKE_BUILD_TYPE=Release -DLIGHTUNET_NATIVE=ON \
    -DLIGHTUNET_SANITIZE=ON -DLIGHTUNET_BUILD_BENCH=OFF -DLIGHTUNET_BUILD_EXAMPLES=OFF -DLIGHTUNET_CUDA=OFF "${common[@]}"
step "sanitize: build"
cmake --build "$build_root/sanitize" -j "$jobs"
step "sanitize: ctest"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$build_root/sanitize" --output-on-failure -j "$jobs" --timeout 900 -LE 'consumer|compile_fail'

step "fuzz: NIfTI, HDF5 and checkpoint readers (25 s each, findings triaged)"
"$root/scripts/fuzz.sh"

step "all tests passed"

#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in one run on a machine with an NVIDIA GPU:
#   1. the CUDA test suite (every kernel and the whole network against the CPU backend);
#   2. bench_cuda (per-op and whole-network timings) and PyTorch + cuDNN on the same GPU;
#   3. compute-sanitizer memcheck and racecheck on the kernel tests (and memcheck on a model test).
# 1 and 3 run side by side, then 2 alone. Logs go to $OUT (default ./gpu-check-out); time limits
# per step: GPU_CHECK_CHECKS_S (tests and sanitizers), GPU_CHECK_BENCH_S, GPU_CHECK_TORCH_S.
#
# Binaries: by default those in $LIGHTUNET_GPU_BIN (default build/gpu-carry, made by
# `scripts/gpu-check.sh --prepare` on a build machine: sm_90, static C++ runtime, libgomp
# alongside), so the GPU machine needs only a driver. With --build, configures and builds
# here instead (needs the build dependencies; CMAKE_CUDA_ARCHITECTURES=native).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-check-out}
bin=${LIGHTUNET_GPU_BIN:-$root/build/gpu-carry}
mkdir -p "$out"

if [[ ${1:-} == --prepare ]]; then
    # Build machine: compile the GPU binaries for sm_90 (H100/H200) into build/gpu-carry.
    set -e
    arch=${LIGHTUNET_GPU_ARCH:-90}
    build=${LIGHTUNET_GPU_BUILD:-$root/build/cuda}
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLIGHTUNET_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch"
    cmake --build "$build" --target lightunet_cuda_tests bench_cuda -j "${LIGHTUNET_JOBS:-2}"
    mkdir -p "$bin/lib"
    cp "$build/tests/cuda/lightunet_cuda_tests" "$build/bench/bench_cuda" "$bin/"
    cp "$(g++ -print-file-name=libgomp.so.1)" "$bin/lib/"
    ls -la "$bin" "$bin/lib"
    exit 0
fi

if [[ ${1:-} == --build ]]; then
    build=$root/build/gpu
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLIGHTUNET_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native \
        -DLIGHTUNET_BUILD_EXAMPLES=OFF >"$out/configure.log" 2>&1 &&
        cmake --build "$build" --target lightunet_cuda_tests bench_cuda -j 16 >"$out/build.log" 2>&1 || {
        echo "build failed (see build.log)"
        tail -n 30 "$out/build.log"
        exit 1
    }
    bin=$out/../build-bin
    mkdir -p "$bin"
    cp "$build/tests/cuda/lightunet_cuda_tests" "$build/bench/bench_cuda" "$bin/"
fi

export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$root"
step() { printf '\n=== %s (%s) ===\n' "$*" "$(date +%T)" | tee -a "$out/summary.txt"; }
status() { echo "exit $1" | tee -a "$out/summary.txt"; }
# Time limits per step (seconds), so that a whole run fits a lease: the checks run side by side
# (phase 1), the benchmarks alone afterwards (phase 2).
checks_s=${GPU_CHECK_CHECKS_S:-200}
bench_s=${GPU_CHECK_BENCH_S:-150}
torch_s=${GPU_CHECK_TORCH_S:-150}
# With GPU_CHECK_DEADLINE_S (seconds from the start), the benchmarks take what phase 1 left,
# keeping torch_s for PyTorch.
deadline=${GPU_CHECK_DEADLINE_S:-0}

step device
nvidia-smi -L 2>&1 | tee "$out/device.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1 | tee -a "$out/device.txt"

# Phase 1: the test suite and the sanitizers at once (4 OpenMP threads each for the CPU
# references). The sanitizers leave out [errors], whose deliberately failing cudaMalloc they
# would report as an API error.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
check() {  # name, command...
    local name=$1 t0=$SECONDS
    shift
    OMP_NUM_THREADS=4 timeout "$checks_s" "$@" >"$out/$name.log" 2>&1
    echo "exit $? after $((SECONDS - t0)) s" >"$out/$name.status"
}
step "phase 1: CUDA tests, memcheck, racecheck (side by side, limit ${checks_s} s each)"
check tests "$bin/lightunet_cuda_tests" --durations yes &
if [[ -n $sanitizer ]]; then
    check memcheck_kernels "$sanitizer" --tool memcheck --leak-check full --error-exitcode 3 \
        "$bin/lightunet_cuda_tests" "[kernels]~[errors]" &
    check memcheck_model "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[allocation],[checkpoint]" &
    check racecheck_kernels "$sanitizer" --tool racecheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[kernels]~[errors]" &
else
    echo "compute-sanitizer: not found on this machine" | tee -a "$out/summary.txt"
fi
wait
for name in tests memcheck_kernels memcheck_model racecheck_kernels; do
    [[ -f $out/$name.log ]] || continue
    step "$name: $(cat "$out/$name.status")"
    tail -n 5 "$out/$name.log" | tee -a "$out/summary.txt"
done

if ((deadline > 0)); then
    bench_s=$((deadline - SECONDS - torch_s))
    ((bench_s < 30)) && bench_s=30
fi
step "bench_cuda (limit ${bench_s} s)"
timeout "$bench_s" "$bin/bench_cuda" --repeats 10 >"$out/bench_cuda.log" 2>&1
status $?
cat "$out/bench_cuda.log"

((deadline > 0)) && torch_s=$((deadline - SECONDS)) && ((torch_s < 30)) && torch_s=30
step "PyTorch + cuDNN (limit ${torch_s} s)"
timeout "$torch_s" python3 bench/reference/bench_torch_cuda.py --repeats 10 >"$out/bench_torch.log" 2>&1
status $?
cat "$out/bench_torch.log"
step done

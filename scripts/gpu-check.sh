#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in one run on a machine with an NVIDIA GPU:
#   1. the CUDA test suite (every kernel and the whole network against the CPU backend);
#   2. bench_cuda (per-op and whole-network timings) and PyTorch + cuDNN on the same GPU;
#   3. compute-sanitizer memcheck and racecheck on the kernel tests (and memcheck on a model test).
# Logs go to $OUT (default ./gpu-check-out).
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

step device
nvidia-smi -L 2>&1 | tee "$out/device.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>&1 | tee -a "$out/device.txt"

step "CUDA tests"
timeout 150 "$bin/lightunet_cuda_tests" --durations yes >"$out/tests.log" 2>&1
status $?
tail -n 5 "$out/tests.log" | tee -a "$out/summary.txt"

step "bench_cuda"
timeout 150 "$bin/bench_cuda" --repeats 10 >"$out/bench_cuda.log" 2>&1
status $?
cat "$out/bench_cuda.log"

step "PyTorch + cuDNN"
timeout 150 python3 bench/reference/bench_torch_cuda.py --repeats 10 >"$out/bench_torch.log" 2>&1
status $?
cat "$out/bench_torch.log"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
if [[ -z $sanitizer ]]; then
    step "compute-sanitizer: not found on this machine"
else
    step "memcheck: kernel tests"
    timeout 120 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 3 "$bin/lightunet_cuda_tests" "[kernels]" \
        >"$out/memcheck_kernels.log" 2>&1
    status $?
    tail -n 4 "$out/memcheck_kernels.log" | tee -a "$out/summary.txt"
    step "memcheck: model (allocation and checkpoint tests)"
    timeout 90 "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[allocation],[checkpoint]" \
        >"$out/memcheck_model.log" 2>&1
    status $?
    tail -n 4 "$out/memcheck_model.log" | tee -a "$out/summary.txt"
    step "racecheck: kernel tests"
    timeout 150 "$sanitizer" --tool racecheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[kernels]" \
        >"$out/racecheck_kernels.log" 2>&1
    status $?
    tail -n 4 "$out/racecheck_kernels.log" | tee -a "$out/summary.txt"
fi
step done

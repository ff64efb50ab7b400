#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in one run on a machine with an NVIDIA GPU:
#   1. the CUDA test suite (every kernel and the whole network against the CPU backend);
#   2. bench_cuda (per-op and whole-network timings) and PyTorch + cuDNN on the same GPU;
#   3. compute-sanitizer memcheck and racecheck on the kernel tests (and memcheck on a model test
#      and the trainer tests);
#   4. the BraTS program end to end on the GPU: the demo's recipe (scripts/demo.sh) with
#      --device cuda, predicted on the GPU and on the CPU from the same checkpoint, evaluated.
# 1 and 3 run side by side, then 4, then 2 alone. GPU_CHECK_PARTS picks parts (default
# "checks brats bench"). Logs go to $OUT (default ./gpu-check-out); time limits per step:
# GPU_CHECK_CHECKS_S (tests and sanitizers), GPU_CHECK_BRATS_S, GPU_CHECK_BENCH_S, GPU_CHECK_TORCH_S.
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
    cmake --build "$build" --target lightunet_cuda_tests bench_cuda brats -j "${LIGHTUNET_JOBS:-2}"
    mkdir -p "$bin/lib"
    cp "$build/tests/cuda/lightunet_cuda_tests" "$build/bench/bench_cuda" "$build/examples/brats" "$bin/"
    cp "$(g++ -print-file-name=libgomp.so.1)" "$bin/lib/"
    # The shared libraries the programs load (HDF5, PNG, ONNX, MPI, ...) except the C library's
    # own and the driver's: the GPU machine has none of the build machine's packages.
    ldd "$bin/brats" "$bin/lightunet_cuda_tests" | awk '/=> \// {print $3}' | sort -u |
        grep -vE '/(libc|libm|libdl|librt|libpthread|libresolv|ld-linux[^/]*|libcuda|libstdc\+\+|libgcc_s)\.so' | xargs -r cp -L -t "$bin/lib/"
    strip --strip-unneeded "$bin/brats" "$bin/lightunet_cuda_tests" "$bin/bench_cuda"
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

# Our programs load the carried libraries; Python (PyTorch) keeps the machine's own.
system_library_path=${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$root"
step() { printf '\n=== %s (%s) ===\n' "$*" "$(date +%T)" | tee -a "$out/summary.txt"; }
status() { echo "exit $1" | tee -a "$out/summary.txt"; }
# Time limits per step (seconds), so that a whole run fits a lease: the checks run side by side
# (phase 1), the benchmarks alone afterwards (phase 2).
checks_s=${GPU_CHECK_CHECKS_S:-200}
brats_s=${GPU_CHECK_BRATS_S:-240}
parts=" ${GPU_CHECK_PARTS:-checks brats bench} "
has() { [[ $parts == *" $1 "* ]]; }
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
if has checks; then
step "phase 1: CUDA tests, memcheck, racecheck (side by side, limit ${checks_s} s each)"
check tests "$bin/lightunet_cuda_tests" --durations yes &
if [[ -n $sanitizer ]]; then
    check memcheck_kernels "$sanitizer" --tool memcheck --leak-check full --error-exitcode 3 \
        "$bin/lightunet_cuda_tests" "[kernels]~[errors]" &
    check memcheck_model "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[allocation],[checkpoint]" &
    check racecheck_kernels "$sanitizer" --tool racecheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[kernels]~[errors]" &
    check memcheck_trainer "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/lightunet_cuda_tests" "[trainer]" &
else
    echo "compute-sanitizer: not found on this machine" | tee -a "$out/summary.txt"
fi
wait
for name in tests memcheck_kernels memcheck_model racecheck_kernels memcheck_trainer; do
    [[ -f $out/$name.log ]] || continue
    step "$name: $(cat "$out/$name.status")"
    tail -n 5 "$out/$name.log" | tee -a "$out/summary.txt"
done
fi

if has brats; then
# Phase 2: the demo's recipe (scripts/demo.sh: same seeds, cases, network and schedule) trained on
# the GPU; its checkpoint predicts the held-out cases on the GPU and on the CPU, both evaluated.
step "brats end to end: train --device cuda, predict on the GPU and the CPU (limit ${brats_s} s)"
brats_e2e() {  # bin out
    set -e
    local b=$1/brats out=$2 t0
    cd "$(mktemp -d)"
    t0=$SECONDS
    "$b" synth --out data/train --cases 12 --seed 1 --prefix Synth
    "$b" synth --out data/test --cases 4 --seed 1001 --prefix Held
    echo "synth: $((SECONDS - t0)) s"
    t0=$SECONDS
    "$b" train --data data/train --out run --model 2d --patch 96x96 --batch 8 --epochs 6 --steps-per-epoch 30 \
        --val-batches 4 --threads 8 --autosave 60 --device cuda --watchdog-seconds 1 --no-progress
    echo "train --device cuda: $((SECONDS - t0)) s"
    cp run/metrics.csv "$out/brats_train_metrics.csv"
    cp run/curves.png "$out/brats_curves.png"
    cp run/validation.csv "$out/brats_validation.csv"
    cp run/postprocess.cfg "$out/brats_postprocess.cfg"
    for device in cuda cpu; do
        t0=$SECONDS
        "$b" predict --run run --data data/test --out "pred_$device" --threads 8 --pictures 2 --device "$device"
        echo "predict --device $device: $((SECONDS - t0)) s"
        "$b" evaluate --pred "pred_$device" --truth data/test --out "$out/brats_eval_$device.csv"
    done
    cp "$(ls pred_cuda/*.png | head -n 1)" "$out/brats_prediction.png"
    # The same checkpoint folder resumed on the GPU from a CPU stop, TF32, and the 3D network.
    t0=$SECONDS
    "$b" train --data data/train --out run_switch --model 2d --patch 96x96 --batch 8 --epochs 2 --steps-per-epoch 30 \
        --val-batches 4 --threads 8 --no-progress --stop-after-steps 10
    "$b" train --data data/train --out run_switch --model 2d --patch 96x96 --batch 8 --epochs 2 --steps-per-epoch 30 \
        --val-batches 4 --threads 8 --no-progress --resume latest --device cuda
    echo "train on the CPU for 10 steps, resumed with --device cuda: $((SECONDS - t0)) s"
    t0=$SECONDS
    "$b" train --data data/train --out run_tf32 --model 2d --patch 96x96 --batch 8 --epochs 6 --steps-per-epoch 30 \
        --val-batches 4 --threads 8 --device cuda --precision tf32 --no-progress
    echo "train --device cuda --precision tf32: $((SECONDS - t0)) s"
    t0=$SECONDS
    "$b" train --data data/train --out run3d --model 3d --patch 48x64x64 --batch 2 --epochs 3 --steps-per-epoch 30 \
        --val-batches 4 --threads 8 --device cuda --no-progress --plan
    "$b" predict --run run3d --data data/test --out pred3d --threads 8 --pictures 0 --device cuda
    "$b" evaluate --pred pred3d --truth data/test --out "$out/brats_eval_3d.csv"
    echo "3D train (--plan) and predict (mirrored) --device cuda: $((SECONDS - t0)) s"
}
timeout "$brats_s" bash -c "$(declare -f brats_e2e); brats_e2e '$bin' '$out'" >"$out/brats.log" 2>&1
status $?
grep -vE "^\s*$" "$out/brats.log" | grep -vE "^\[INFO\] Wrote|^  - " | tail -n 40 | tee -a "$out/summary.txt"
fi
has bench || { step done; exit 0; }

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
LD_LIBRARY_PATH=$system_library_path timeout "$torch_s" python3 bench/reference/bench_torch_cuda.py --repeats 10 >"$out/bench_torch.log" 2>&1
status $?
cat "$out/bench_torch.log"
step done

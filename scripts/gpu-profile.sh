#!/usr/bin/env bash
# Where the CUDA convolution time goes, on a GPU machine: Nsight Compute (ncu) on our kernels for
# the 2D 240^2 batch-32 32->32 3x3 convolution (Fprop fp32 and TF32, Wgrad fp32; speed of light,
# occupancy, warp states, memory and compute workload) and torch.profiler on the cuDNN kernels
# PyTorch picks for the same convolution (bench/reference/torch_conv_kernels.py). Binaries from
# `scripts/gpu-check.sh --prepare` ($LIGHTUNET_GPU_BIN, default build/gpu-carry); reports in $OUT.
# ncu locks the clocks to base (1.5 GHz on an H200), so its durations exceed bench_cuda's.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${LIGHTUNET_GPU_BIN:-$root/build/gpu-carry}
out=${OUT:-$root/gpu-profile-out}
mkdir -p "$out"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
echo "ncu: $ncu"
for op in conv_fprop_fp32 conv_fprop_tf32 conv_wgrad_fp32; do
    LD_LIBRARY_PATH="$bin/lib" timeout 70 "$ncu" -k regex:"conv_gemm|wgrad" -c 1 --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
        "$bin/bench_cuda" --filter "op/2d_240x240_b32_32to32/$op" --repeats 1 >"$out/ncu_$op.txt" 2>&1
    echo "$op: exit $?"
done
timeout 120 python3 "$root/bench/reference/torch_conv_kernels.py" >"$out/torch_kernels.txt" 2>&1
echo "torch: exit $?"

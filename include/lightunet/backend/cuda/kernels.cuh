#pragma once
// The CUDA backend's kernel facade: Kernels<cuda> has the functions of Kernels<cpu>
// (backend/cpu/kernels.hpp) with the same signatures, over device pointers. Everything is
// queued on cuda::stream(); functions that return a value computed on the device (losses,
// norms, checks) synchronise with it.
#ifndef __CUDACC__
#error "lightunet/backend/cuda/kernels.cuh must be compiled by nvcc"
#endif
#include <cmath>
#include <cstdint>

#include "../kernels.hpp"
#include "conv.cuh"
#include "join.cuh"
#include "loss.cuh"
#include "memory.cuh"
#include "norm.cuh"
#include "optim.cuh"
#include "resample.cuh"

namespace lightunet {

namespace cuda_kernels {

template <class T>
__global__ void transpose_kernel(int rows, int cols, const T* in, T* out) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= std::ptrdiff_t(rows) * cols) return;
    const std::ptrdiff_t r = i / cols, c = i % cols;
    out[c * rows + r] = in[i];
}

template <class T>
__global__ void add_kernel(std::ptrdiff_t count, const T* in, T* inout) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i < count) inout[i] += in[i];
}

template <class T>
__global__ void all_finite_kernel(std::ptrdiff_t count, const T* x, int* bad) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i < count && !isfinite(x[i])) *bad = 1;
}

}  // namespace cuda_kernels

template <>
struct Kernels<cuda> {
    // conv_forward_prepared stores outputs as they are (no activation argument): inference keeps
    // its batch-norm pass instead of folding it into the convolution.
    static constexpr bool conv_output_activation = false;

    template <class T>
    static constexpr std::size_t conv_workspace_size(const ConvProblem& p) {
        return cuda_kernels::conv_workspace_size<T>(p);
    }
    template <class T>
    static constexpr std::size_t conv_forward_workspace_size(const ConvProblem& p) {
        return cuda_kernels::conv_forward_workspace_size<T>(p);
    }
    // The implicit GEMM reads the PyTorch-layout kernel as it is: the prepared weights are a
    // copy of it, so a layer runs the same calls on every backend.
    template <class T>
    static constexpr std::size_t conv_prepared_size(const ConvProblem& p) {
        return p.weight_count();
    }
    template <class T>
    static constexpr std::size_t conv_forward_prepared_workspace_size(const ConvProblem& p) {
        return cuda_kernels::conv_forward_workspace_size<T>(p);
    }
    template <class T>
    static void conv_prepare(const ConvProblem& p, const T* weight, T* prepared) {
        cuda::copy(prepared, weight, p.weight_count());
    }
    template <class T>
    static void conv_forward_prepared(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* prepared,
                                      const T* bias, T* output, std::ptrdiff_t output_image_stride, T* workspace) {
        cuda_kernels::conv_forward(p, images, input, prepared, bias, output, output_image_stride, workspace);
    }
    template <class... A>
    static void conv_forward(A&&... a) { cuda_kernels::conv_forward(std::forward<A>(a)...); }
    template <class... A>
    static void conv_backward(A&&... a) { cuda_kernels::conv_backward(std::forward<A>(a)...); }
    template <class... A>
    static void max_pool_forward(A&&... a) { cuda_kernels::max_pool_forward(std::forward<A>(a)...); }
    template <class... A>
    static void max_pool_backward(A&&... a) { cuda_kernels::max_pool_backward(std::forward<A>(a)...); }
    template <class... A>
    static void space_to_depth(A&&... a) { cuda_kernels::space_to_depth(std::forward<A>(a)...); }
    template <class... A>
    static void depth_to_space(A&&... a) { cuda_kernels::depth_to_space(std::forward<A>(a)...); }
    template <class... A>
    static void upsample_nearest_forward(A&&... a) { cuda_kernels::upsample_nearest_forward(std::forward<A>(a)...); }
    template <class... A>
    static void upsample_nearest_backward(A&&... a) { cuda_kernels::upsample_nearest_backward(std::forward<A>(a)...); }
    template <class... A>
    static void subsample_nearest(A&&... a) { cuda_kernels::subsample_nearest(std::forward<A>(a)...); }
    template <class... A>
    static void add_act_forward(A&&... a) { cuda_kernels::add_act_forward(std::forward<A>(a)...); }
    template <class... A>
    static void add_act_backward(A&&... a) { cuda_kernels::add_act_backward(std::forward<A>(a)...); }
    template <class... A>
    static void norm_act_forward(A&&... a) { cuda_kernels::norm_act_forward(std::forward<A>(a)...); }
    template <class... A>
    static void norm_act_backward(A&&... a) { cuda_kernels::norm_act_backward(std::forward<A>(a)...); }
    template <class... A>
    static void softmax_channels(A&&... a) { cuda_kernels::softmax_channels(std::forward<A>(a)...); }
    template <class... A>
    static void sigmoid(A&&... a) { cuda_kernels::sigmoid(std::forward<A>(a)...); }
    template <class... A>
    static double dice_loss(A&&... a) { return cuda_kernels::dice_loss(std::forward<A>(a)...); }
    template <class... A>
    static double squared_norm(A&&... a) { return cuda_kernels::squared_norm(std::forward<A>(a)...); }
    template <class... A>
    static void scale(A&&... a) { cuda_kernels::scale(std::forward<A>(a)...); }
    template <class... A>
    static void adam_update(A&&... a) { cuda_kernels::adam_update(std::forward<A>(a)...); }
    template <class... A>
    static void sgd_update(A&&... a) { cuda_kernels::sgd_update(std::forward<A>(a)...); }
    template <class T>
    static void transpose(int rows, int cols, const T* in, T* out) {  // out[c][r] = in[r][c]
        const std::ptrdiff_t count = std::ptrdiff_t(rows) * cols;
        if (!count) return;
        cuda_kernels::transpose_kernel<<<cuda_kernels::grid_for(count), cuda_kernels::block_threads, 0, cuda::stream()>>>(rows, cols, in, out);
        LIGHTUNET_CUDA_LAUNCHED("transpose_kernel");
    }
    template <class T>
    static void add(std::ptrdiff_t count, const T* in, T* inout) {
        if (!count) return;
        cuda_kernels::add_kernel<<<cuda_kernels::grid_for(count), cuda_kernels::block_threads, 0, cuda::stream()>>>(count, in, inout);
        LIGHTUNET_CUDA_LAUNCHED("add_kernel");
    }
    // sums[c] += sum over images and voxels of x[n][c][:]
    template <class T>
    static void channel_sums(int images, int channels, std::ptrdiff_t plane, const T* x, T* sums) {
        cuda_kernels::channel_sums(images, channels, plane, std::ptrdiff_t(channels) * plane, x, sums);
    }
    template <class T>
    static bool all_finite(std::ptrdiff_t count, const T* x) {
        int* bad = static_cast<int*>(cuda::scratch(sizeof(int)));
        LIGHTUNET_CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(int), cuda::stream()));
        if (count > 0) {
            cuda_kernels::all_finite_kernel<<<cuda_kernels::grid_for(count), cuda_kernels::block_threads, 0, cuda::stream()>>>(count, x, bad);
            LIGHTUNET_CUDA_LAUNCHED("all_finite_kernel");
        }
        int result = 0;
        cuda::download(&result, bad, 1);
        return result == 0;
    }
    static std::ptrdiff_t first_invalid_label(Head head, int classes, std::ptrdiff_t count, const std::uint8_t* target) {
        return cuda_kernels::first_invalid_label(head, classes, count, target);
    }
    static void set_threads(int) {}  // the CPU thread count has no meaning on the GPU
    // Fprop and Dgrad on TF32 tensor cores (sm_80+; fp32 elsewhere) or in fp32 (the default).
    static void set_tf32(bool on) { cuda_kernels::conv_precision() = on ? cuda_kernels::Precision::tf32 : cuda_kernels::Precision::fp32; }
};

}  // namespace lightunet

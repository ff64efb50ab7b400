#pragma once
// The residual join act(a + b) and its gradient (backend/cpu/join.hpp), one thread per element.
#include <cstddef>

#include "reduce.cuh"

namespace lightunet::cuda_kernels {

template <class T>
__global__ void add_act_forward_kernel(std::ptrdiff_t count, const T* a, const T* b, T slope, T* out) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= count) return;
    const T v = a[i] + b[i];
    out[i] = v > T(0) ? v : v * slope;
}

template <class T>
__global__ void add_act_backward_kernel(std::ptrdiff_t count, const T* out, const T* grad_out, T slope, T* grad_a, bool accumulate_a,
                                        T* grad_b, bool accumulate_b) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= count) return;
    const T g = out[i] > T(0) ? grad_out[i] : grad_out[i] * slope;
    if (grad_b) grad_b[i] = accumulate_b ? grad_b[i] + g : g;
    if (grad_a) grad_a[i] = accumulate_a ? grad_a[i] + g : g;
}

template <class T>
void add_act_forward(std::ptrdiff_t count, const T* a, const T* b, T slope, T* out) {
    if (!count) return;
    add_act_forward_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(count, a, b, slope, out);
    LIGHTUNET_CUDA_LAUNCHED("add_act_forward_kernel");
}

template <class T>
void add_act_backward(std::ptrdiff_t count, const T* out, const T* grad_out, T slope, T* grad_a, bool accumulate_a, T* grad_b,
                      bool accumulate_b) {
    if (!count) return;
    add_act_backward_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(count, out, grad_out, slope, grad_a, accumulate_a,
                                                                                   grad_b, accumulate_b);
    LIGHTUNET_CUDA_LAUNCHED("add_act_backward_kernel");
}

}  // namespace lightunet::cuda_kernels

#pragma once
// Parameter updates over the model's one contiguous parameter buffer: the CUDA kernels of the
// steps in optim/step.hpp (norms summed over the same blocks as on the CPU).
#include <cmath>
#include <cstddef>
#include <vector>

#include "../../optim/step.hpp"
#include "reduce.cuh"

namespace lightunet::cuda_kernels {

using optim::update_block;

// partial[b] = sum of squares over block b of update_block elements (as on the CPU).
template <class T>
__global__ void __launch_bounds__(block_threads) squares_kernel(std::ptrdiff_t count, const T* x, double* partial) {
    const std::ptrdiff_t begin = blockIdx.x * update_block, end = min(count, begin + update_block);
    double acc[1] = {0};
    for (std::ptrdiff_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc[0] += double(x[i]) * double(x[i]);
    block_sum<1>(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc[0];
}

// `partial` (device) holds ceil(count / update_block) doubles.
template <class T>
double squared_norm(std::ptrdiff_t count, const T* x, double* partial) {
    const std::ptrdiff_t blocks = optim::update_blocks(count);
    if (blocks == 0) return 0.0;
    squares_kernel<<<unsigned(blocks), block_threads, 0, cuda::stream()>>>(count, x, partial);
    LIGHTUNET_CUDA_LAUNCHED("squares_kernel");
    std::vector<double> host(blocks);
    cuda::download(host.data(), static_cast<const double*>(partial), std::size_t(blocks));
    double s = 0;
    for (double v : host) s += v;
    return s;
}

template <class T>
__global__ void scale_kernel(std::ptrdiff_t count, T* x, T factor) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i < count) x[i] *= factor;
}

template <class T>
void scale(std::ptrdiff_t count, T* x, T factor) {
    if (!count) return;
    scale_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(count, x, factor);
    LIGHTUNET_CUDA_LAUNCHED("scale_kernel");
}

template <class T>
__global__ void adam_kernel(std::ptrdiff_t count, T* param, const T* grad, T* m, T* v, T b1, T b2, T c1, T c2, T lr, T eps, T wd,
                            bool decoupled) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= count) return;
    T g = grad[i];
    if (!decoupled) g += wd * param[i];
    const T mi = b1 * m[i] + (T(1) - b1) * g;
    const T vi = b2 * v[i] + (T(1) - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    T p = param[i];
    if (decoupled) p -= lr * wd * p;
    param[i] = p - lr * (mi * c1) / (sqrt(vi * c2) + eps);
}

template <class T>
void adam_update(std::ptrdiff_t count, T* param, const T* grad, T* m, T* v, const optim::AdamStep& s) {
    if (!count) return;
    const T c1 = T(s.first_moment_correction()), c2 = T(s.second_moment_correction());
    adam_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(count, param, grad, m, v, T(s.beta1), T(s.beta2), c1, c2,
                                                                       T(s.lr), T(s.eps), T(s.weight_decay), s.decoupled);
    LIGHTUNET_CUDA_LAUNCHED("adam_kernel");
}

template <class T>
__global__ void sgd_kernel(std::ptrdiff_t count, T* param, const T* grad, T* velocity, T mu, T lr, T wd, bool nesterov) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= count) return;
    const T g = grad[i] + wd * param[i];
    const T vel = mu * velocity[i] + g;
    velocity[i] = vel;
    param[i] -= lr * (nesterov ? g + mu * vel : vel);
}

template <class T>
void sgd_update(std::ptrdiff_t count, T* param, const T* grad, T* velocity, const optim::SgdStep& s) {
    if (!count) return;
    sgd_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(count, param, grad, velocity, T(s.momentum), T(s.lr),
                                                                      T(s.weight_decay), s.nesterov);
    LIGHTUNET_CUDA_LAUNCHED("sgd_kernel");
}

}  // namespace lightunet::cuda_kernels

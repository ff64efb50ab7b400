#pragma once
// Parameter updates over the model's one contiguous parameter buffer: the CPU kernels of the
// steps in optim/step.hpp, one block of optim::update_block elements per parallel task.
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "../../optim/step.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

using optim::update_block;

// Sum of squares in fixed blocks, so the result does not depend on the thread count.
template <class T>
double squared_norm(std::ptrdiff_t count, const T* x, double* partial) {
    const std::ptrdiff_t blocks = optim::update_blocks(count);
    parallel_for(blocks, [&](std::ptrdiff_t b) {
        double s = 0;
        const std::ptrdiff_t end = std::min(count, (b + 1) * update_block);
#pragma omp simd reduction(+ : s)
        for (std::ptrdiff_t i = b * update_block; i < end; ++i) s += double(x[i]) * double(x[i]);
        partial[b] = s;
    });
    double s = 0;
    for (std::ptrdiff_t b = 0; b < blocks; ++b) s += partial[b];
    return s;
}

template <class T>
void scale(std::ptrdiff_t count, T* x, T factor) {
    parallel_for(optim::update_blocks(count), [&](std::ptrdiff_t b) {
        const std::ptrdiff_t end = std::min(count, (b + 1) * update_block);
        for (std::ptrdiff_t i = b * update_block; i < end; ++i) x[i] *= factor;
    });
}

template <class T>
void adam_update(std::ptrdiff_t count, T* param, const T* grad, T* m, T* v, const optim::AdamStep& s) {
    const T b1 = T(s.beta1), b2 = T(s.beta2);
    const T c1 = T(s.first_moment_correction()), c2 = T(s.second_moment_correction());
    const T lr = T(s.lr), eps = T(s.eps), wd = T(s.weight_decay);
    // Elements between two prefetches of each array the update streams through: a cache line.
    constexpr std::ptrdiff_t prefetch_run = cache_line_bytes / std::ptrdiff_t(sizeof(T));
    parallel_for(optim::update_blocks(count), [&](std::ptrdiff_t b) {
        const std::ptrdiff_t end = std::min(count, (b + 1) * update_block);
        for (std::ptrdiff_t i0 = b * update_block; i0 < end; i0 += prefetch_run) {
            prefetch_ahead(param + i0, stream_prefetch_bytes);
            prefetch_ahead(grad + i0, stream_prefetch_bytes);
            prefetch_ahead(m + i0, stream_prefetch_bytes);
            prefetch_ahead(v + i0, stream_prefetch_bytes);
            const std::ptrdiff_t i1 = std::min(end, i0 + prefetch_run);
#pragma omp simd
            for (std::ptrdiff_t i = i0; i < i1; ++i) {
                T g = grad[i];
                if (!s.decoupled) g += wd * param[i];
                m[i] = b1 * m[i] + (T(1) - b1) * g;
                v[i] = b2 * v[i] + (T(1) - b2) * g * g;
                T p = param[i];
                if (s.decoupled) p -= lr * wd * p;
                param[i] = p - lr * (m[i] * c1) / (std::sqrt(v[i] * c2) + eps);
            }
        }
    });
}

template <class T>
void sgd_update(std::ptrdiff_t count, T* param, const T* grad, T* velocity, const optim::SgdStep& s) {
    const T mu = T(s.momentum), lr = T(s.lr), wd = T(s.weight_decay);
    parallel_for(optim::update_blocks(count), [&](std::ptrdiff_t b) {
        const std::ptrdiff_t end = std::min(count, (b + 1) * update_block);
#pragma omp simd
        for (std::ptrdiff_t i = b * update_block; i < end; ++i) {
            const T g = grad[i] + wd * param[i];
            velocity[i] = mu * velocity[i] + g;
            param[i] -= lr * (s.nesterov ? g + mu * velocity[i] : velocity[i]);
        }
    });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

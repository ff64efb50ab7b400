#pragma once
// The residual join act(a + b) and its gradient.
#include <algorithm>
#include <cstddef>

#include "parallel.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

inline constexpr std::ptrdiff_t join_block = 1 << 14;
constexpr std::ptrdiff_t join_blocks(std::ptrdiff_t count) { return (count + join_block - 1) / join_block; }

template <class T>
void add_act_forward(std::ptrdiff_t count, const T* a, const T* b, T slope, T* out) {
    parallel_for(join_blocks(count), [&](std::ptrdiff_t block) {
        const std::ptrdiff_t end = std::min(count, (block + 1) * join_block);
#pragma omp simd
        for (std::ptrdiff_t i = block * join_block; i < end; ++i) {
            const T v = a[i] + b[i];
            out[i] = v > T(0) ? v : v * slope;
        }
    });
}

// g = d out * act'(out) goes to both terms; grad_a may be grad_out itself (written last).
template <class T>
void add_act_backward(std::ptrdiff_t count, const T* out, const T* grad_out, T slope, T* grad_a, bool accumulate_a, T* grad_b,
                      bool accumulate_b) {
    parallel_for(join_blocks(count), [&](std::ptrdiff_t block) {
        const std::ptrdiff_t end = std::min(count, (block + 1) * join_block);
        for (std::ptrdiff_t i = block * join_block; i < end; ++i) {
            const T g = out[i] > T(0) ? grad_out[i] : grad_out[i] * slope;
            if (grad_b) grad_b[i] = accumulate_b ? grad_b[i] + g : g;
            if (grad_a) grad_a[i] = accumulate_a ? grad_a[i] + g : g;
        }
    });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

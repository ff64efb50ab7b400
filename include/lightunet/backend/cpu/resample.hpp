#pragma once
// Changes of resolution by 2 per axis (depth too in 3D): max-pooling, nearest up-sampling, and
// the space-to-depth rearrangements that turn 2x2(x2) stride-2 convolutions into 1x1 ones.
#include <cstddef>
#include <type_traits>

#include "../conv_problem.hpp"
#include "parallel.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

using lightunet::Cells;

// Visits every coarse voxel of every plane: f(plane, o, cell, n) with o its index, cell[k] the
// fine index of its cell's voxel k in the order (a_d, a_h, a_w) row-major, as a PyTorch kernel
// [kd][kh][kw], and n the voxels per cell (4 in 2D, 8 in 3D) as a std::integral_constant, so
// that the loops over a cell unroll. Along a row the cell indices step by 2.
template <class F>
void for_each_cell(const Cells& g, std::ptrdiff_t planes, F&& f) {
    const Extent fine = g.fine();
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size()), fine_size = std::ptrdiff_t(fine.size());
    auto walk = [&](auto n) {
        constexpr int N = decltype(n)::value;
        parallel_for(planes, [&](std::ptrdiff_t plane) {
            std::ptrdiff_t cell[N];
            for (int z = 0; z < g.coarse.d; ++z)
                for (int y = 0; y < g.coarse.h; ++y) {
                    for (int k = 0; k < N; ++k) {
                        const int a = k / 4, b = (k / 2) % 2, c = k % 2;
                        cell[k] = plane * fine_size + ((std::ptrdiff_t(z) * g.fd + a) * fine.h + (2 * y + b)) * fine.w + c;
                    }
                    const std::ptrdiff_t row = plane * coarse_size + (std::ptrdiff_t(z) * g.coarse.h + y) * g.coarse.w;
                    for (int x = 0; x < g.coarse.w; ++x) {
                        f(plane, row + x, static_cast<const std::ptrdiff_t*>(cell), n);
                        for (int k = 0; k < N; ++k) cell[k] += 2;
                    }
                }
        });
    };
    if (g.fd == 1) walk(std::integral_constant<int, 4>{});
    else walk(std::integral_constant<int, 8>{});
}

template <class T>
void max_pool_forward(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        T m = fine[cell[0]];
        for (int k = 1; k < n; ++k) m = fine[cell[k]] > m ? fine[cell[k]] : m;
        coarse[o] = m;
    });
}

// The gradient goes to the first voxel holding the maximum (PyTorch's choice on ties), or is
// added to what fine_grad holds when accumulate is set. The maximum is found without branches:
// which voxel wins is data, and mispredicted jumps cost more than the selects.
template <class T>
void max_pool_backward(const Cells& g, std::ptrdiff_t planes, const T* fine, const T* coarse_grad, T* fine_grad,
                       bool accumulate) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        int arg = 0;
        T best = fine[cell[0]];
        for (int k = 1; k < n; ++k) {
            const T v = fine[cell[k]];
            const bool greater = v > best;
            best = greater ? v : best;
            arg = greater ? k : arg;
        }
        for (int k = 0; k < n; ++k) {
            const T v = k == arg ? coarse_grad[o] : T(0);
            fine_grad[cell[k]] = accumulate ? fine_grad[cell[k]] + v : v;
        }
    });
}

// fine [images][C][fine] -> coarse [images][C * per_cell][coarse], channel c * per_cell + k.
template <class T>
void space_to_depth(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size());
    for_each_cell(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        const std::ptrdiff_t base = o + plane * (n - 1) * coarse_size;  // plane p's block starts at p * n * coarse
        for (int k = 0; k < n; ++k) coarse[base + k * coarse_size] = fine[cell[k]];
    });
}

// The inverse, adding bias[plane % channels] (may be null), overwriting or accumulating.
template <class T>
void depth_to_space(const Cells& g, std::ptrdiff_t planes, int channels, const T* coarse, const T* bias, T* fine,
                    bool accumulate) {
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size());
    for_each_cell(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        const std::ptrdiff_t base = o + plane * (n - 1) * coarse_size;
        const T b = bias ? bias[plane % channels] : T(0);
        for (int k = 0; k < n; ++k) {
            const T v = coarse[base + k * coarse_size] + b;
            fine[cell[k]] = accumulate ? fine[cell[k]] + v : v;
        }
    });
}

template <class T>
void upsample_nearest_forward(const Cells& g, std::ptrdiff_t planes, const T* coarse, T* fine) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        for (int k = 0; k < n; ++k) fine[cell[k]] = coarse[o];
    });
}

template <class T>
void upsample_nearest_backward(const Cells& g, std::ptrdiff_t planes, const T* fine_grad, T* coarse_grad) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        T s = 0;
        for (int k = 0; k < n; ++k) s += fine_grad[cell[k]];
        coarse_grad[o] = s;
    });
}

// Nearest down-sampling (the first voxel of each cell), as PyTorch's interpolate(scale 1/2,
// 'nearest'): label maps for deep supervision.
template <class T>
void subsample_nearest(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto) { coarse[o] = fine[cell[0]]; });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

#pragma once
// Changes of resolution by 2 per axis (depth too in 3D): max-pooling, nearest up-sampling, and
// the space-to-depth rearrangements that turn 2x2(x2) stride-2 convolutions into 1x1 ones.
#include <cstddef>

#include "../conv_problem.hpp"
#include "parallel.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

using lightunet::Cells;

// Visits every coarse voxel of every plane with the fine index of each of its cell's voxels,
// cell voxel order (a_d, a_h, a_w) row-major as in a PyTorch kernel [kd][kh][kw].
template <class F>
void for_each_cell(const Cells& g, std::ptrdiff_t planes, F&& f) {
    const Extent fine = g.fine();
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size()), fine_size = std::ptrdiff_t(fine.size());
    parallel_for(planes, [&](std::ptrdiff_t plane) {
        std::ptrdiff_t cell_index[8];
        for (int z = 0; z < g.coarse.d; ++z)
            for (int y = 0; y < g.coarse.h; ++y)
                for (int x = 0; x < g.coarse.w; ++x) {
                    int k = 0;
                    for (int a = 0; a < g.fd; ++a)
                        for (int b = 0; b < 2; ++b)
                            for (int c = 0; c < 2; ++c)
                                cell_index[k++] = plane * fine_size +
                                                  ((std::ptrdiff_t(z) * g.fd + a) * fine.h + (2 * y + b)) * fine.w + (2 * x + c);
                    f(plane, plane * coarse_size + (std::ptrdiff_t(z) * g.coarse.h + y) * g.coarse.w + x, cell_index);
                }
    });
}

template <class T>
void max_pool_forward(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    const int n = g.per_cell();
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell) {
        T m = fine[cell[0]];
        for (int k = 1; k < n; ++k) m = fine[cell[k]] > m ? fine[cell[k]] : m;
        coarse[o] = m;
    });
}

// The gradient goes to the first voxel holding the maximum (PyTorch's choice on ties), or is
// added to what fine_grad holds when accumulate is set.
template <class T>
void max_pool_backward(const Cells& g, std::ptrdiff_t planes, const T* fine, const T* coarse_grad, T* fine_grad,
                       bool accumulate) {
    const int n = g.per_cell();
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell) {
        int arg = 0;
        for (int k = 1; k < n; ++k)
            if (fine[cell[k]] > fine[cell[arg]]) arg = k;
        for (int k = 0; k < n; ++k) {
            const T v = k == arg ? coarse_grad[o] : T(0);
            fine_grad[cell[k]] = accumulate ? fine_grad[cell[k]] + v : v;
        }
    });
}

// fine [images][C][fine] -> coarse [images][C * per_cell][coarse], channel c * per_cell + k.
template <class T>
void space_to_depth(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    const int n = g.per_cell();
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size());
    for_each_cell(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* cell) {
        const std::ptrdiff_t base = o + plane * (n - 1) * coarse_size;  // plane p's block starts at p * n * coarse
        for (int k = 0; k < n; ++k) coarse[base + k * coarse_size] = fine[cell[k]];
    });
}

// The inverse, adding bias[plane % channels] (may be null), overwriting or accumulating.
template <class T>
void depth_to_space(const Cells& g, std::ptrdiff_t planes, int channels, const T* coarse, const T* bias, T* fine,
                    bool accumulate) {
    const int n = g.per_cell();
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size());
    for_each_cell(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* cell) {
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
    const int n = g.per_cell();
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell) {
        for (int k = 0; k < n; ++k) fine[cell[k]] = coarse[o];
    });
}

template <class T>
void upsample_nearest_backward(const Cells& g, std::ptrdiff_t planes, const T* fine_grad, T* coarse_grad) {
    const int n = g.per_cell();
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell) {
        T s = 0;
        for (int k = 0; k < n; ++k) s += fine_grad[cell[k]];
        coarse_grad[o] = s;
    });
}

// Nearest down-sampling (the first voxel of each cell), as PyTorch's interpolate(scale 1/2,
// 'nearest'): label maps for deep supervision.
template <class T>
void subsample_nearest(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell) { coarse[o] = fine[cell[0]]; });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

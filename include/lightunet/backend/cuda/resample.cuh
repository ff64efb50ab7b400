#pragma once
// Changes of resolution by 2 per axis (backend/cpu/resample.hpp): one thread per coarse voxel,
// cell voxel order (a_d, a_h, a_w) row-major as in a PyTorch kernel [kd][kh][kw].
#include <cstddef>

#include "../conv_problem.hpp"
#include "reduce.cuh"

namespace lightunet::cuda_kernels {

enum class CellOp { max_fwd, max_bwd, to_depth, from_depth, up_fwd, up_bwd, pick };

template <CellOp Op, class T>
__global__ void cell_kernel(Cells g, std::ptrdiff_t planes, int channels, const T* a, const T* b, T* out, bool accumulate) {
    const std::ptrdiff_t cs = std::ptrdiff_t(g.coarse.d) * g.coarse.h * g.coarse.w;
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= planes * cs) return;
    const std::ptrdiff_t plane = i / cs, o = i % cs;
    const int x = int(o % g.coarse.w), y = int((o / g.coarse.w) % g.coarse.h), z = int(o / (std::ptrdiff_t(g.coarse.w) * g.coarse.h));
    const int fh = g.coarse.h * 2, fw = g.coarse.w * 2;
    const std::ptrdiff_t fine_size = cs * g.fd * 4;
    const int n = g.fd * 4;
    std::ptrdiff_t cell[8];
    int k = 0;
    for (int ad = 0; ad < g.fd; ++ad)
        for (int ah = 0; ah < 2; ++ah)
            for (int aw = 0; aw < 2; ++aw)
                cell[k++] = plane * fine_size + ((std::ptrdiff_t(z) * g.fd + ad) * fh + (2 * y + ah)) * fw + (2 * x + aw);
    const std::ptrdiff_t oc = plane * cs + o;
    const std::ptrdiff_t block = oc + plane * (n - 1) * cs;  // space-to-depth: plane's block of n channels
    if constexpr (Op == CellOp::max_fwd) {  // a = fine
        T m = a[cell[0]];
        for (int j = 1; j < n; ++j) m = a[cell[j]] > m ? a[cell[j]] : m;
        out[oc] = m;
    } else if constexpr (Op == CellOp::max_bwd) {  // a = fine, b = coarse grad, out = fine grad
        int arg = 0;
        for (int j = 1; j < n; ++j)
            if (a[cell[j]] > a[cell[arg]]) arg = j;
        for (int j = 0; j < n; ++j) {
            const T v = j == arg ? b[oc] : T(0);
            out[cell[j]] = accumulate ? out[cell[j]] + v : v;
        }
    } else if constexpr (Op == CellOp::to_depth) {  // a = fine, out = coarse
        for (int j = 0; j < n; ++j) out[block + j * cs] = a[cell[j]];
    } else if constexpr (Op == CellOp::from_depth) {  // a = coarse, b = bias, out = fine
        const T bias = b ? b[plane % channels] : T(0);
        for (int j = 0; j < n; ++j) {
            const T v = a[block + j * cs] + bias;
            out[cell[j]] = accumulate ? out[cell[j]] + v : v;
        }
    } else if constexpr (Op == CellOp::up_fwd) {  // a = coarse, out = fine
        for (int j = 0; j < n; ++j) out[cell[j]] = a[oc];
    } else if constexpr (Op == CellOp::pick) {  // a = fine, out = coarse: the cell's first voxel
        out[oc] = a[cell[0]];
    } else {  // up_bwd: a = fine grad, out = coarse grad
        T s = 0;
        for (int j = 0; j < n; ++j) s += a[cell[j]];
        out[oc] = s;
    }
}

template <CellOp Op, class T>
void launch_cells(const Cells& g, std::ptrdiff_t planes, int channels, const T* a, const T* b, T* out, bool accumulate) {
    const std::ptrdiff_t count = planes * std::ptrdiff_t(g.coarse.size());
    if (!count) return;
    cell_kernel<Op, T><<<grid_for(count), block_threads, 0, cuda::stream()>>>(g, planes, channels, a, b, out, accumulate);
    LIGHTUNET_CUDA_LAUNCHED("cell_kernel");
}

template <class T>
void max_pool_forward(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    launch_cells<CellOp::max_fwd, T>(g, planes, 1, fine, nullptr, coarse, false);
}
template <class T>
void max_pool_backward(const Cells& g, std::ptrdiff_t planes, const T* fine, const T* coarse_grad, T* fine_grad, bool accumulate) {
    launch_cells<CellOp::max_bwd, T>(g, planes, 1, fine, coarse_grad, fine_grad, accumulate);
}
template <class T>
void space_to_depth(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    launch_cells<CellOp::to_depth, T>(g, planes, 1, fine, nullptr, coarse, false);
}
template <class T>
void depth_to_space(const Cells& g, std::ptrdiff_t planes, int channels, const T* coarse, const T* bias, T* fine, bool accumulate) {
    launch_cells<CellOp::from_depth, T>(g, planes, channels, coarse, bias, fine, accumulate);
}
template <class T>
void upsample_nearest_forward(const Cells& g, std::ptrdiff_t planes, const T* coarse, T* fine) {
    launch_cells<CellOp::up_fwd, T>(g, planes, 1, coarse, nullptr, fine, false);
}
template <class T>
void upsample_nearest_backward(const Cells& g, std::ptrdiff_t planes, const T* fine_grad, T* coarse_grad) {
    launch_cells<CellOp::up_bwd, T>(g, planes, 1, fine_grad, nullptr, coarse_grad, false);
}

template <class T>
void subsample_nearest(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    launch_cells<CellOp::pick, T>(g, planes, 1, fine, nullptr, coarse, false);
}

}  // namespace lightunet::cuda_kernels

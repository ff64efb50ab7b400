#pragma once
// Normalisation fused with its activation, as on the CPU (backend/cpu/norm.hpp): statistics in
// double from deterministic per-plane partial sums, two passes (mean, then squared deviations).
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "../../dist/cross_batch.hpp"
#include "../norm_problem.hpp"
#include "reduce.cuh"

namespace lightunet::cuda_kernels {

// NormGrouping's mapping, on the device.
struct DeviceGrouping {
    Norm norm;
    int images, channels, groups;
    std::ptrdiff_t plane;
    static DeviceGrouping of(const NormGrouping& g) { return {g.norm, g.images, g.channels, g.groups, g.plane}; }
    __host__ __device__ int per_group() const { return norm == Norm::group ? channels / groups : 1; }
    __host__ __device__ int stat_count() const {
        return norm == Norm::batch ? channels : norm == Norm::instance ? images * channels : norm == Norm::group ? images * groups : 0;
    }
    __host__ __device__ int stat_of_plane(std::ptrdiff_t i) const {
        const int n = int(i / channels), c = int(i % channels);
        return norm == Norm::batch ? c : norm == Norm::instance ? int(i) : n * groups + c / per_group();
    }
    __host__ __device__ double members() const {
        return double(norm == Norm::batch ? std::ptrdiff_t(images) * plane : norm == Norm::group ? per_group() * plane : plane);
    }
    // Planes of a statistic: count and the k-th.
    __host__ __device__ int planes_of(int) const { return norm == Norm::batch ? images : norm == Norm::group ? per_group() : 1; }
    __host__ __device__ std::ptrdiff_t plane_of(int s, int k) const {
        if (norm == Norm::batch) return std::ptrdiff_t(k) * channels + s;
        if (norm == Norm::instance) return s;
        const int n = s / groups, c0 = (s % groups) * per_group();
        return std::ptrdiff_t(n) * channels + c0 + k;
    }
};

template <class T>
__device__ inline T activate(T v, T slope) {
    return v > T(0) ? v : v * slope;
}

template <class T>
struct PlaneSum {
    const T* z;
    std::ptrdiff_t plane;
    __device__ void operator()(std::ptrdiff_t i, std::ptrdiff_t k, double (&acc)[1]) const { acc[0] += double(z[i * plane + k]); }
};
template <class T>
struct PlaneSquares {
    const T* z;
    std::ptrdiff_t plane;
    DeviceGrouping g;
    const double* mean;
    __device__ void operator()(std::ptrdiff_t i, std::ptrdiff_t k, double (&acc)[1]) const {
        const double d = double(z[i * plane + k]) - mean[g.stat_of_plane(i)];
        acc[0] += d * d;
    }
};

// stat[s] = sum of plane values over the statistic's planes, divided by its members.
template <int = 0>
__global__ void stat_mean_kernel(DeviceGrouping g, const double* plane_values, double* stat) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= g.stat_count()) return;
    double t = 0;
    for (int k = 0; k < g.planes_of(s); ++k) t += plane_values[g.plane_of(s, k)];
    stat[s] = t / g.members();
}

template <class T>
__global__ void finish_stats_kernel(DeviceGrouping g, const double* mu, const double* var, T* mean, T* invstd, T* running_mean,
                                    T* running_var, double momentum, double eps) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= g.stat_count()) return;
    mean[s] = T(mu[s]);
    invstd[s] = T(1.0 / sqrt(var[s] + eps));
    if (running_mean && g.norm == Norm::batch) {
        const double M = g.members();
        running_mean[s] = T((1.0 - momentum) * double(running_mean[s]) + momentum * mu[s]);
        const double unbiased = M > 1 ? var[s] * M / (M - 1) : var[s];
        running_var[s] = T((1.0 - momentum) * double(running_var[s]) + momentum * unbiased);
    }
}

template <class T>
__global__ void running_stats_kernel(int stats, const T* running_mean, const T* running_var, T* mean, T* invstd, double eps) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= stats) return;
    mean[s] = running_mean[s];
    invstd[s] = T(1.0 / sqrt(double(running_var[s]) + eps));
}

// The affine map of plane i, v = z * scale + shift (identity without a norm), for forward and
// backward alike: explicit fused multiply-adds, so the backward's activation masks see exactly
// the forward's v and need not read its output.
template <class T>
__device__ inline void plane_affine(const DeviceGrouping& g, std::ptrdiff_t i, const T* gamma, const T* beta, const T* mean,
                                    const T* invstd, T& scale, T& shift) {
    scale = T(1), shift = T(0);
    if (g.norm == Norm::none) return;
    const int c = int(i % g.channels), s = g.stat_of_plane(i);
    scale = gamma[c] * invstd[s];
    shift = fma(-mean[s], scale, beta[c]);
}

// y = act(z * scale + shift) per plane; grid.y walks planes.
template <class T>
__global__ void norm_apply_kernel(DeviceGrouping g, T slope, const T* z, const T* gamma, const T* beta, const T* mean,
                                  const T* invstd, T* y) {
    const std::ptrdiff_t planes = std::ptrdiff_t(g.images) * g.channels;
    for (std::ptrdiff_t i = blockIdx.y; i < planes; i += gridDim.y) {
        T scale, shift;
        plane_affine(g, i, gamma, beta, mean, invstd, scale, shift);
        const T* in = z + i * g.plane;
        T* out = y + i * g.plane;
        for (std::ptrdiff_t k = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x; k < g.plane; k += std::ptrdiff_t(gridDim.x) * blockDim.x)
            out[k] = activate(fma(in[k], scale, shift), slope);
    }
}

inline dim3 plane_grid(const DeviceGrouping& g) {
    const std::ptrdiff_t planes = std::ptrdiff_t(g.images) * g.channels;
    const unsigned x = unsigned(std::min<std::ptrdiff_t>((g.plane + block_threads - 1) / block_threads, 1024));
    return dim3(std::max(1u, x), unsigned(std::clamp<std::ptrdiff_t>(planes, 1, 65535)));
}

// Batch norm whose batch is split across processes needs its statistics exchanged mid-kernel;
// the CUDA backend does not do that yet (instance and group norm need no exchange).
inline void refuse_batch_norm_across(const NormGrouping& g, const CrossBatch* across, const char* who) {
    if (across && across->ranks > 1 && g.norm == Norm::batch)
        throw std::invalid_argument(std::string(who) + ": batch norm over a batch split across " + std::to_string(across->ranks) +
                                    " processes is not available on the CUDA backend; use instance or group norm");
}

template <class T>
void norm_act_forward(const NormGrouping& ng, const Activation& a, const T* z, const T* gamma, const T* beta, T* y, T* mean,
                      T* invstd, T* running_mean, T* running_var, NormStats stats_from, CrossBatch* across = nullptr,
                      double momentum = 0.1, double eps = 1e-5) {
    refuse_batch_norm_across(ng, across, "norm_act_forward");
    const DeviceGrouping g = DeviceGrouping::of(ng);
    const T slope = T(a.negative_slope());
    const std::ptrdiff_t planes = std::ptrdiff_t(g.images) * g.channels;
    if (planes == 0) return;
    if (g.norm != Norm::none) {
        const int stats = g.stat_count();
        if (stats_from == NormStats::batch) {
            const RowSplit rs = RowSplit::of(planes, g.plane);
            double* partial = static_cast<double*>(cuda::scratch((rs.partial_count() + planes + 2 * std::size_t(stats)) * sizeof(double)));
            double* plane_values = partial + rs.partial_count();
            double* mu = plane_values + planes;
            double* var = mu + stats;
            row_sums<1>(PlaneSum<T>{z, g.plane}, rs, partial, plane_values);
            stat_mean_kernel<><<<grid_for(stats), block_threads, 0, cuda::stream()>>>(g, plane_values, mu);
            LIGHTUNET_CUDA_LAUNCHED("stat_mean_kernel");
            row_sums<1>(PlaneSquares<T>{z, g.plane, g, mu}, rs, partial, plane_values);
            stat_mean_kernel<><<<grid_for(stats), block_threads, 0, cuda::stream()>>>(g, plane_values, var);
            LIGHTUNET_CUDA_LAUNCHED("stat_mean_kernel");
            finish_stats_kernel<<<grid_for(stats), block_threads, 0, cuda::stream()>>>(g, mu, var, mean, invstd, running_mean,
                                                                                      running_var, momentum, eps);
            LIGHTUNET_CUDA_LAUNCHED("finish_stats_kernel");
        } else if (stats_from == NormStats::running) {
            running_stats_kernel<<<grid_for(stats), block_threads, 0, cuda::stream()>>>(stats, running_mean, running_var, mean, invstd, eps);
            LIGHTUNET_CUDA_LAUNCHED("running_stats_kernel");
        }
    }
    norm_apply_kernel<<<plane_grid(g), block_threads, 0, cuda::stream()>>>(g, slope, z, gamma, beta, mean, invstd, y);
    LIGHTUNET_CUDA_LAUNCHED("norm_apply_kernel");
}

// The activation's derivative by the sign of its argument v (the sign its output has).
template <class T>
__device__ inline T act_grad(T v, T dy, T slope) {
    return v > T(0) ? dy : dy * slope;
}

// Per plane: sum of u = act'(v) dy and of u * xhat.
template <class T>
struct BackwardSums {
    const T *z, *dy, *gamma, *beta, *mean, *invstd;
    T slope;
    DeviceGrouping g;
    __device__ void operator()(std::ptrdiff_t i, std::ptrdiff_t k, double (&acc)[2]) const {
        const int s = g.stat_of_plane(i);
        const std::ptrdiff_t at = i * g.plane + k;
        T scale, shift;
        plane_affine(g, i, gamma, beta, mean, invstd, scale, shift);
        const double u = double(act_grad(fma(z[at], scale, shift), dy[at], slope));
        acc[0] += u;
        acc[1] += u * (double(z[at]) - double(mean[s])) * double(invstd[s]);
    }
};

// sums[i] = {sum u, sum u xhat} per plane. dgamma/dbeta per channel, then k1, k2 per statistic.
template <class T>
__global__ void norm_param_grads_kernel(DeviceGrouping g, const double* sums, T* dgamma, T* dbeta) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= g.channels) return;
    double gs = 0, bs = 0;
    for (int n = 0; n < g.images; ++n) {
        const std::ptrdiff_t i = std::ptrdiff_t(n) * g.channels + c;
        gs += sums[2 * i + 1];
        bs += sums[2 * i];
    }
    dgamma[c] += T(gs);
    dbeta[c] += T(bs);
}

template <class T>
__global__ void norm_k_kernel(DeviceGrouping g, const double* sums, const T* gamma, double* k12) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= g.stat_count()) return;
    double s1 = 0, s2 = 0;
    for (int k = 0; k < g.planes_of(s); ++k) {
        const std::ptrdiff_t i = g.plane_of(s, k);
        const double gm = double(gamma[i % g.channels]);
        s1 += gm * sums[2 * i];
        s2 += gm * sums[2 * i + 1];
    }
    k12[2 * s] = s1 / g.members();
    k12[2 * s + 1] = s2 / g.members();
}

template <class T>
__global__ void norm_backward_apply_kernel(DeviceGrouping g, T slope, const T* z, const T* dy, const T* gamma, const T* beta,
                                           const T* mean, const T* invstd, const double* k12, T* dz) {
    const std::ptrdiff_t planes = std::ptrdiff_t(g.images) * g.channels;
    for (std::ptrdiff_t i = blockIdx.y; i < planes; i += gridDim.y) {
        const std::ptrdiff_t base = i * g.plane;
        T scale, shift;
        plane_affine(g, i, gamma, beta, mean, invstd, scale, shift);
        if (g.norm == Norm::none) {
            for (std::ptrdiff_t k = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x; k < g.plane; k += std::ptrdiff_t(gridDim.x) * blockDim.x)
                dz[base + k] = act_grad(fma(z[base + k], scale, shift), dy[base + k], slope);
            continue;
        }
        const int c = int(i % g.channels), s = g.stat_of_plane(i);
        const T tis = invstd[s], tmu = mean[s], gi = gamma[c] * tis;
        const T k1 = T(k12[2 * s]), k2 = T(k12[2 * s + 1]);
        for (std::ptrdiff_t k = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x; k < g.plane; k += std::ptrdiff_t(gridDim.x) * blockDim.x) {
            const T xhat = (z[base + k] - tmu) * tis;
            const T u = act_grad(fma(z[base + k], scale, shift), dy[base + k], slope);
            dz[base + k] = gi * u - tis * (k1 + xhat * k2);
        }
    }
}

// dz from dy (dz may alias dy). Accumulates dgamma, dbeta. `scratch` is unused here (the
// backend's own double-precision scratch holds the sums).
template <class T>
void norm_act_backward(const NormGrouping& ng, const Activation& a, const T* z, const T* dy, const T* gamma, const T* beta,
                       const T* mean, const T* invstd, T* dz, T* dgamma, T* dbeta, T* /*scratch*/, CrossBatch* across = nullptr) {
    refuse_batch_norm_across(ng, across, "norm_act_backward");
    const DeviceGrouping g = DeviceGrouping::of(ng);
    const T slope = T(a.negative_slope());
    const std::ptrdiff_t planes = std::ptrdiff_t(g.images) * g.channels;
    if (planes == 0) return;
    double* k12 = nullptr;
    if (g.norm != Norm::none) {
        const int stats = g.stat_count();
        const RowSplit rs = RowSplit::of(planes, g.plane);
        double* partial = static_cast<double*>(cuda::scratch((2 * rs.partial_count() + 2 * planes + 2 * std::size_t(stats)) * sizeof(double)));
        double* sums = partial + 2 * rs.partial_count();
        k12 = sums + 2 * planes;
        row_sums<2>(BackwardSums<T>{z, dy, gamma, beta, mean, invstd, slope, g}, rs, partial, sums);
        norm_param_grads_kernel<<<grid_for(g.channels), block_threads, 0, cuda::stream()>>>(g, static_cast<const double*>(sums), dgamma, dbeta);
        LIGHTUNET_CUDA_LAUNCHED("norm_param_grads_kernel");
        norm_k_kernel<<<grid_for(stats), block_threads, 0, cuda::stream()>>>(g, static_cast<const double*>(sums), gamma, k12);
        LIGHTUNET_CUDA_LAUNCHED("norm_k_kernel");
    }
    norm_backward_apply_kernel<<<plane_grid(g), block_threads, 0, cuda::stream()>>>(g, slope, z, dy, gamma, beta, mean, invstd,
                                                                                   static_cast<const double*>(k12), dz);
    LIGHTUNET_CUDA_LAUNCHED("norm_backward_apply_kernel");
}

}  // namespace lightunet::cuda_kernels

#pragma once
// Normalisation fused with the activation that follows it: y = act(gamma * (z - mean) * invstd
// + beta). Batch, instance and group norm differ only in which voxels share statistics, so one
// kernel serves them all through NormGrouping.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "../../dist/cross_batch.hpp"
#include "../norm_problem.hpp"
#include "parallel.hpp"
#include "simd.hpp"

// GCC 12 flags the pass-through operand of the AVX-512 extracts behind xsimd::hadd (as in
// winograd.hpp) as maybe uninitialised once inlined here; fixed in GCC 13.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define LIGHTUNET_NORM_DIAGNOSTICS_PUSHED
#endif

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

using lightunet::Activation;
using lightunet::NormGrouping;

// out = act(in * scale + shift) over a plane, in vectors (GCC leaves the scalar loop scalar).
template <class T>
inline void affine_activate(const T* in, T* out, std::ptrdiff_t count, T scale, T shift, T slope) {
    using B = Batch<T>;
    constexpr std::ptrdiff_t L = lanes<T>;
    const B vscale(scale), vshift(shift), vslope(slope);
    std::ptrdiff_t k = 0;
    for (; k + L <= count; k += L) {
        prefetch_ahead(in + k, stream_prefetch_bytes);
        const B v = xsimd::fma(B::load_unaligned(in + k), vscale, vshift);
        activate(v, vslope).store_unaligned(out + k);
    }
    for (; k < count; ++k) out[k] = activate(std::fma(in[k], scale, shift), slope);
}

// The affine map of plane i's normalisation, v = z * scale + shift, for forward and backward
// alike (explicit fused multiply-adds, so no contraction choice of the compiler can make the
// backward's v differ from the forward's).
template <class T>
inline void norm_affine(T gamma, T beta, T mean, T invstd, T& scale, T& shift) {
    scale = gamma * invstd;
    shift = std::fma(-mean, scale, beta);
}

// Per-plane sums run over millions of voxels: each lane sums a block of voxels in T (short
// sums, a few ulps), and the blocks' sums are added in double. Converting every value to double
// instead made the sums compute-bound (two conversions per vector and operand).
inline constexpr std::ptrdiff_t norm_sum_block = 256;  // voxels per short sum

// sum += the lanes of a vector of T, as doubles (in vectors of double).
template <class T>
inline void add_as_double(const Batch<T>& v, Batch<double>& sum) {
    constexpr std::ptrdiff_t L = lanes<T>, LD = Batch<double>::size;
    alignas(64) T part[L];
    v.store_aligned(part);
    for (std::ptrdiff_t h = 0; h < L; h += LD) sum += load_as_double(part + h);
}

// y = act(norm(z)). With NormStats::batch, computes the statistics (mean, invstd per stat) and
// updates the running ones when given (batch norm).
template <class T>
void norm_act_forward(const NormGrouping& g, const Activation& a, const T* z, const T* gamma, const T* beta, T* y,
                      T* mean, T* invstd, T* running_mean, T* running_var, NormStats stats_from, CrossBatch* across = nullptr,
                      double momentum = 0.1, double eps = 1e-5) {
    const T slope = T(a.negative_slope());
    const std::ptrdiff_t P = g.plane;
    if (g.norm == Norm::none) {
        parallel_for(std::ptrdiff_t(g.images) * g.channels, [&](std::ptrdiff_t i) {
            const T* in = z + i * P;
            T* out = y + i * P;
            affine_activate(in, out, P, T(1), T(0), slope);
        });
        return;
    }
    const int stats = g.stat_count();
    if (stats_from == NormStats::batch) {
        // Batch norm split across processes: each computes its members' count, mean and sum of
        // squared deviations; they are exchanged and merged in rank order (Chan et al.), so every
        // process gets the same statistics of the global batch.
        const bool across_batch = across && across->ranks > 1 && g.norm == Norm::batch;
        std::span<double> shares = across_batch ? across->zeroed(3 * std::size_t(across->ranks) * std::size_t(stats)) : std::span<double>{};
        auto finish = [&](std::ptrdiff_t s, double M, double mu, double var) {
            mean[s] = T(mu);
            invstd[s] = T(1.0 / std::sqrt(var + eps));
            if (running_mean && g.norm == Norm::batch) {
                running_mean[s] = T((1.0 - momentum) * double(running_mean[s]) + momentum * mu);
                const double unbiased = M > 1 ? var * M / (M - 1) : var;
                running_var[s] = T((1.0 - momentum) * double(running_var[s]) + momentum * unbiased);
            }
        };
        parallel_for(stats, [&](std::ptrdiff_t s) {
            // One pass over the members: sums of x - K and (x - K)^2, shifted by one member K so
            // that a large mean does not cancel the variance. Each plane is summed about its own
            // first value K_p (short sums in T added in double, norm_sum_block), and moved to K
            // in double: a plane's sums then do not depend on which plane came first, so batch
            // statistics split across processes by images stay the single process's to double
            // rounding.
            double shift = 0;
            bool shift_set = false;
            double sum = 0, sq = 0;
            g.for_each_plane(int(s), [&](int n, int c) {
                const T* in = z + (std::ptrdiff_t(n) * g.channels + c) * P;
                if (!shift_set) shift = double(in[0]), shift_set = true;
                using B = Batch<T>;
                using D = Batch<double>;
                constexpr std::ptrdiff_t L = lanes<T>;
                const T plane_shift = in[0];
                const B vshift = B(plane_shift);
                D vpart(0.0), vpart_sq(0.0);
                const std::ptrdiff_t whole = P / L * L;
                for (std::ptrdiff_t b0 = 0; b0 < whole; b0 += norm_sum_block) {
                    const std::ptrdiff_t b1 = std::min(whole, b0 + norm_sum_block);
                    B block(T(0)), block_sq(T(0));
                    for (std::ptrdiff_t k = b0; k < b1; k += L) {
                        prefetch_ahead(in + k, stream_prefetch_bytes);
                        const B d = B::load_unaligned(in + k) - vshift;
                        block += d;
                        block_sq = xsimd::fma(d, d, block_sq);
                    }
                    add_as_double(block, vpart);
                    add_as_double(block_sq, vpart_sq);
                }
                double part = xsimd::hadd(vpart), part_sq = xsimd::hadd(vpart_sq);
                for (std::ptrdiff_t k = whole; k < P; ++k) {
                    const double d = double(in[k]) - double(plane_shift);
                    part += d;
                    part_sq += d * d;
                }
                // About K: x - K = (x - K_p) + delta.
                const double delta = double(plane_shift) - shift;
                sum += part + double(P) * delta;
                sq += part_sq + delta * (2.0 * part + double(P) * delta);
            });
            const double M = double(g.members(int(s)));
            const double mu = shift + sum / M;
            sq = std::max(0.0, sq - sum * sum / M);
            if (across_batch) {
                double* mine = shares.data() + 3 * (std::size_t(across->rank) * std::size_t(stats) + std::size_t(s));
                mine[0] = M, mine[1] = mu, mine[2] = sq;
                return;
            }
            finish(s, M, mu, sq / M);
        });
        if (across_batch) {
            across->sum(shares);
            for (int s = 0; s < stats; ++s) {
                double M = 0, mu = 0, m2 = 0;
                for (int r = 0; r < across->ranks; ++r) {
                    const double* share = shares.data() + 3 * (std::size_t(r) * std::size_t(stats) + std::size_t(s));
                    if (share[0] == 0) continue;
                    const double merged = M + share[0], delta = share[1] - mu;
                    mu += delta * share[0] / merged;
                    m2 += share[2] + delta * delta * M * share[0] / merged;
                    M = merged;
                }
                finish(s, M, mu, m2 / M);
            }
        }
    } else if (stats_from == NormStats::running) {
        for (int s = 0; s < stats; ++s) {
            mean[s] = running_mean[s];
            invstd[s] = T(1.0 / std::sqrt(double(running_var[s]) + eps));
        }
    }
    parallel_for(std::ptrdiff_t(g.images) * g.channels, [&](std::ptrdiff_t i) {
        const int n = int(i / g.channels), c = int(i % g.channels);
        const int s = g.stat_of(n, c);
        T scale, shift;
        norm_affine(gamma[c], beta[c], mean[s], invstd[s], scale, shift);
        const T* in = z + i * P;
        T* out = y + i * P;
        affine_activate(in, out, P, scale, shift, slope);
    });
}

// dz from dy (dz may alias dy). Accumulates dgamma, dbeta; `scratch` holds 2 * images * channels.
// The activation's derivative comes from the sign of its argument v = z * scale + shift, computed
// as norm_act_forward computes it (the same fused multiply-add in vectors of Batch<T> and in the
// scalar tail), so it is the sign the forward output had, without reading that output: training
// need not keep or rebuild it for this pass.
template <class T>
void norm_act_backward(const NormGrouping& g, const Activation& a, const T* z, const T* dy, const T* gamma, const T* beta,
                       const T* mean, const T* invstd, T* dz, T* dgamma, T* dbeta, T* scratch, CrossBatch* across = nullptr) {
    const T slope = T(a.negative_slope());
    const std::ptrdiff_t P = g.plane;
    const std::ptrdiff_t planes = std::ptrdiff_t(g.images) * g.channels;
    auto act_grad = [slope](T v, T dyv) { return v > T(0) ? dyv : dyv * slope; };
    using B = Batch<T>;
    using D = Batch<double>;
    constexpr std::ptrdiff_t L = lanes<T>, LD = D::size;
    static_assert(L % LD == 0, "a vector of T holds whole vectors of double");
    const B vslope(slope), zero(T(0));
    auto act_grad_v = [&](const B& v, const B& dyv) { return xsimd::select(v > zero, dyv, dyv * vslope); };
    // The forward's affine map of plane i (identity without a norm).
    auto affine_of = [&](std::ptrdiff_t i, T& scale, T& shift) {
        if (g.norm == Norm::none) {
            scale = T(1), shift = T(0);
            return;
        }
        const int c = int(i % g.channels), s = g.stat_of(int(i / g.channels), c);
        norm_affine(gamma[c], beta[c], mean[s], invstd[s], scale, shift);
    };
    if (g.norm == Norm::none) {
        // v = fma(z, 1, 0) = z exactly (but for the sign of a zero, which no mask sees).
        parallel_for(planes, [&](std::ptrdiff_t i) {
            const T* zi = z + i * P;
            const T* dyi = dy + i * P;
            T* dzi = dz + i * P;
            std::ptrdiff_t k = 0;
            for (; k + L <= P; k += L) {
                prefetch_ahead(zi + k, stream_prefetch_bytes);
                prefetch_ahead(dyi + k, stream_prefetch_bytes);
                act_grad_v(B::load_unaligned(zi + k), B::load_unaligned(dyi + k)).store_unaligned(dzi + k);
            }
            for (; k < P; ++k) dzi[k] = act_grad(zi[k], dyi[k]);
        });
        return;
    }
    // Per plane: sum of the activation gradient u and of u * xhat.
    T* sum_u = scratch;
    T* sum_ux = scratch + planes;
    parallel_for(planes, [&](std::ptrdiff_t i) {
        const int n = int(i / g.channels), c = int(i % g.channels);
        const int s = g.stat_of(n, c);
        const double mu = double(mean[s]), is = double(invstd[s]);
        T scale, shift;
        affine_of(i, scale, shift);
        const T* zi = z + i * P;
        const T* dyi = dy + i * P;
        // u = dy or dy * slope (by the sign of v), and its products with xhat (as the second
        // pass computes them), in short sums of T added in double.
        const B vscale(scale), vshift(shift), vmu = B(T(mu)), vis = B(T(is));
        D vsu(0.0), vsux(0.0);
        const std::ptrdiff_t whole = P / L * L;
        for (std::ptrdiff_t b0 = 0; b0 < whole; b0 += norm_sum_block) {
            const std::ptrdiff_t b1 = std::min(whole, b0 + norm_sum_block);
            B block_u(T(0)), block_ux(T(0));
            for (std::ptrdiff_t k = b0; k < b1; k += L) {
                prefetch_ahead(zi + k, stream_prefetch_bytes);
                prefetch_ahead(dyi + k, stream_prefetch_bytes);
                const B zv = B::load_unaligned(zi + k);
                const B u = act_grad_v(xsimd::fma(zv, vscale, vshift), B::load_unaligned(dyi + k));
                block_u += u;
                block_ux = xsimd::fma(u, (zv - vmu) * vis, block_ux);
            }
            add_as_double(block_u, vsu);
            add_as_double(block_ux, vsux);
        }
        double su = xsimd::hadd(vsu), sux = xsimd::hadd(vsux);
        std::ptrdiff_t k = whole;
        for (; k < P; ++k) {
            const double u = std::fma(zi[k], scale, shift) > T(0) ? double(dyi[k]) : double(dyi[k]) * double(slope);
            su += u;
            sux += u * (double(zi[k]) - mu) * is;
        }
        sum_u[i] = T(su);
        sum_ux[i] = T(sux);
    });
    for (int c = 0; c < g.channels; ++c) {
        double gsum = 0, bsum = 0;
        for (int n = 0; n < g.images; ++n) {
            gsum += double(sum_ux[std::ptrdiff_t(n) * g.channels + c]);
            bsum += double(sum_u[std::ptrdiff_t(n) * g.channels + c]);
        }
        dgamma[c] += T(gsum);
        dbeta[c] += T(bsum);
    }
    // Batch norm across processes: the sums of dxhat and dxhat * xhat run over the global batch.
    const bool across_batch = across && across->ranks > 1 && g.norm == Norm::batch;
    std::span<double> sums = across_batch ? across->zeroed(2 * std::size_t(g.stat_count())) : std::span<double>{};
    auto dxhat_sums = [&](int s, double& s1, double& s2) {
        // dxhat = u * gamma; sums of dxhat and dxhat * xhat over the statistic's members.
        s1 = 0, s2 = 0;
        g.for_each_plane(s, [&](int n, int c) {
            const std::ptrdiff_t i = std::ptrdiff_t(n) * g.channels + c;
            s1 += double(gamma[c]) * double(sum_u[i]);
            s2 += double(gamma[c]) * double(sum_ux[i]);
        });
    };
    if (across_batch) {
        for (int s = 0; s < g.stat_count(); ++s) dxhat_sums(s, sums[2 * std::size_t(s)], sums[2 * std::size_t(s) + 1]);
        across->sum(sums);
    }
    parallel_for(g.stat_count(), [&](std::ptrdiff_t s) {
        double s1, s2, M;
        if (across_batch) {
            s1 = sums[2 * std::size_t(s)], s2 = sums[2 * std::size_t(s) + 1];
            M = double(across->total_images) * double(P);
        } else {
            dxhat_sums(int(s), s1, s2);
            M = double(g.members(int(s)));
        }
        const double mu = double(mean[s]), is = double(invstd[s]);
        const T k1 = T(s1 / M), k2 = T(s2 / M);
        g.for_each_plane(int(s), [&](int n, int c) {
            const std::ptrdiff_t i = std::ptrdiff_t(n) * g.channels + c;
            const T gi = gamma[c] * T(is);
            T scale, shift;
            affine_of(i, scale, shift);
            const T* zi = z + i * P;
            const T* dyi = dy + i * P;
            T* dzi = dz + i * P;
            const T tmu = T(mu), tis = T(is);
            const B vmu(tmu), vis(tis), vgi(gi), vk1(k1), vk2(k2), vscale(scale), vshift(shift);
            std::ptrdiff_t k = 0;
            for (; k + L <= P; k += L) {
                prefetch_ahead(zi + k, stream_prefetch_bytes);
                prefetch_ahead(dyi + k, stream_prefetch_bytes);
                const B zv = B::load_unaligned(zi + k);
                const B xhat = (zv - vmu) * vis;
                const B u = act_grad_v(xsimd::fma(zv, vscale, vshift), B::load_unaligned(dyi + k));
                (vgi * u - vis * (vk1 + xhat * vk2)).store_unaligned(dzi + k);
            }
            for (; k < P; ++k) {
                const T xhat = (zi[k] - tmu) * tis;
                const T u = act_grad(std::fma(zi[k], scale, shift), dyi[k]);
                dzi[k] = gi * u - tis * (k1 + xhat * k2);
            }
        });
    });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

#ifdef LIGHTUNET_NORM_DIAGNOSTICS_PUSHED
#pragma GCC diagnostic pop
#undef LIGHTUNET_NORM_DIAGNOSTICS_PUSHED
#endif

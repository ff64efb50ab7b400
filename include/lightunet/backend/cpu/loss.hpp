#pragma once
// The head's nonlinearity and the losses on its output. Targets are uint8: a class index per
// voxel for a softmax head, a 0/1 mask per channel for a sigmoid head.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "../../config/unet_config.hpp"
#include "../../dist/cross_batch.hpp"
#include "../../loss/dice.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

// GCC 12 flags _mm512_undefined_ps (inside xsimd::exp's AVX-512 code) as (maybe)
// uninitialised once inlined here, as in winograd.hpp and resample.hpp; fixed in GCC 13.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define LIGHTUNET_LOSS_DIAGNOSTICS_PUSHED
#endif

// exp in Batch<T> lanes (xsimd::exp) for every voxel: the last, partial vector of a row goes
// through a zero-padded batch, so that a voxel's value does not depend on where a vector ends.
// libm's scalar exp was 2-3 % of a 3D inference (8 M values for a 4-class 128^3 head).
template <class T>
struct LaneVector {
    std::ptrdiff_t count;  // lanes in use: all but in a row's last vector
    Batch<T> load(const T* from) const {
        if (count == lanes<T>) return Batch<T>::load_unaligned(from);
        alignas(64) T lane[lanes<T>] = {};
        std::copy(from, from + count, lane);
        return Batch<T>::load_aligned(lane);
    }
    void store(const Batch<T>& v, T* to) const {
        if (count == lanes<T>) return v.store_unaligned(to);
        alignas(64) T lane[lanes<T>];
        v.store_aligned(lane);
        std::copy(lane, lane + count, to);
    }
};
template <class T, class F>
void for_each_lane_vector(std::ptrdiff_t n, F&& f) {
    for (std::ptrdiff_t k = 0; k < n; k += lanes<T>) f(k, LaneVector<T>{std::min<std::ptrdiff_t>(lanes<T>, n - k)});
}

// exp of every lane: xsimd::exp for float; libm's for double, whose AVX-512 xsimd::exp GCC 12
// compiles out of line with the same false warning, outside any pragma here (double runs the
// reference model of the fidelity tests, not training).
template <class T>
Batch<T> exp_lanes(const Batch<T>& v) {
    if constexpr (std::is_same_v<T, float>) {
        return xsimd::exp(v);
    } else {
        alignas(64) T lane[lanes<T>];
        v.store_aligned(lane);
        for (T& e : lane) e = std::exp(e);
        return Batch<T>::load_aligned(lane);
    }
}

template <class T>
void softmax_channels(int images, int channels, std::ptrdiff_t plane, const T* logits, T* probs) {
    using B = Batch<T>;
    constexpr std::ptrdiff_t block = 256;
    const std::ptrdiff_t blocks = (plane + block - 1) / block;
    parallel_for(std::ptrdiff_t(images) * blocks, [&](std::ptrdiff_t item) {
        const std::ptrdiff_t n = item / blocks, b0 = (item % blocks) * block, len = std::min(block, plane - b0);
        const T* in = logits + n * channels * plane + b0;
        T* out = probs + n * channels * plane + b0;
        for_each_lane_vector<T>(len, [&](std::ptrdiff_t k, const LaneVector<T>& v) {
            B m = v.load(in + k);
            for (int c = 1; c < channels; ++c) m = xsimd::max(m, v.load(in + c * plane + k));
            B s(T(0));
            for (int c = 0; c < channels; ++c) {
                const B e = exp_lanes<T>(v.load(in + c * plane + k) - m);
                v.store(e, out + c * plane + k);
                s += e;
            }
            const B inverse = B(T(1)) / s;
            for (int c = 0; c < channels; ++c) v.store(v.load(out + c * plane + k) * inverse, out + c * plane + k);
        });
    });
}

template <class T>
void sigmoid(std::ptrdiff_t count, const T* logits, T* probs) {
    using B = Batch<T>;
    parallel_for((count + 4095) / 4096, [&](std::ptrdiff_t b) {
        const std::ptrdiff_t begin = b * 4096, end = std::min(count, begin + 4096);
        for_each_lane_vector<T>(end - begin, [&](std::ptrdiff_t k, const LaneVector<T>& v) {
            v.store(B(T(1)) / (B(T(1)) + exp_lanes<T>(-v.load(logits + begin + k))), probs + begin + k);
        });
    });
}

#ifdef LIGHTUNET_LOSS_DIAGNOSTICS_PUSHED
#pragma GCC diagnostic pop
#undef LIGHTUNET_LOSS_DIAGNOSTICS_PUSHED
#endif

// Returns the loss and writes d loss / d logits. `sums` holds 3 * images * channels. With
// `across`, these images are a share of a global batch: the loss and its gradient are those of
// the global batch (every process returns the same loss).
template <class T>
double dice_loss(Head head, int images, int channels, std::ptrdiff_t plane, const T* probs, const std::uint8_t* target,
                 const DiceLoss& o, T* grad_logits, double* sums, CrossBatch* across = nullptr) {
    const bool softmax = head == Head::softmax;
    const std::ptrdiff_t planes = std::ptrdiff_t(images) * channels;
    auto truth = [&](std::ptrdiff_t n, int c, std::ptrdiff_t k) -> T {
        return softmax ? T(target[n * plane + k] == c) : T(target[(n * channels + c) * plane + k] != 0);
    };
    double* inter = sums;
    double* psum = sums + planes;
    double* gsum = sums + 2 * planes;
    parallel_for(planes, [&](std::ptrdiff_t i) {
        const std::ptrdiff_t n = i / channels;
        const int c = int(i % channels);
        const T* p = probs + i * plane;
        double a = 0, b = 0, g = 0;
        for (std::ptrdiff_t k = 0; k < plane; ++k) {
            const double t = double(truth(n, c, k));
            a += double(p[k]) * t;
            b += double(p[k]);
            g += t;
        }
        inter[i] = a, psum[i] = b, gsum[i] = g;
    });
    double ce = 0;
    if (o.ce_weight > 0) {
        double part[4096];
        const std::ptrdiff_t chunks = std::min<std::ptrdiff_t>(4096, planes);
        parallel_for(chunks, [&](std::ptrdiff_t ch) {
            double acc = 0;
            for (std::ptrdiff_t i = ch; i < (softmax ? images : planes); i += chunks) {
                if (softmax) {
                    for (std::ptrdiff_t k = 0; k < plane; ++k) {
                        const int t = target[i * plane + k];
                        acc -= std::log(std::max(double(probs[(i * channels + t) * plane + k]), 1e-12));
                    }
                } else {
                    const std::ptrdiff_t n = i / channels;
                    const int c = int(i % channels);
                    for (std::ptrdiff_t k = 0; k < plane; ++k) {
                        const double p = std::clamp(double(probs[i * plane + k]), 1e-12, 1.0 - 1e-12);
                        acc -= truth(n, c, k) > 0 ? std::log(p) : std::log(1.0 - p);
                    }
                }
            }
            part[ch] = acc;
        });
        for (std::ptrdiff_t ch = 0; ch < chunks; ++ch) ce += part[ch];
    }
    // A share of a global batch: every process's per-(image, channel) sums land in the global
    // image order (each slot is written by one process, the others add zeros, so the exchange
    // is exact) and the cross-entropy sums in one slot per rank.
    const bool split = across && across->ranks > 1;
    const int total = split ? across->total_images : images;
    const int offset = split ? across->first_image : 0;
    if (split) {
        const std::size_t global_planes = std::size_t(total) * std::size_t(channels);
        const std::span<double> all = across->zeroed(3 * global_planes + std::size_t(across->ranks));
        const std::size_t at = std::size_t(offset) * std::size_t(channels);
        std::copy_n(inter, planes, all.data() + at);
        std::copy_n(psum, planes, all.data() + global_planes + at);
        std::copy_n(gsum, planes, all.data() + 2 * global_planes + at);
        all[3 * global_planes + std::size_t(across->rank)] = ce;
        across->sum(all);
        inter = all.data(), psum = inter + global_planes, gsum = inter + 2 * global_planes;
        ce = 0;
        for (int r = 0; r < across->ranks; ++r) ce += all[3 * global_planes + std::size_t(r)];
    }
    const int first = softmax && !o.include_background ? 1 : 0;
    const int counted = channels - first;
    const int groups = o.batch_dice ? 1 : total;
    // Per (group, channel): dice and the two factors of its gradient in p.
    double loss = 0;
    const double weight = 1.0 / (double(counted) * groups);
    // d dice / d p = (2 t D - N) / D^2 with N = 2 I + s, D = P + G + s.
    auto factors = [&](int group, int c, double& two_over_d, double& n_over_d2) {
        double I = 0, P = 0, G = 0;
        for (int n = 0; n < total; ++n) {
            if (!o.batch_dice && n != group) continue;
            const std::ptrdiff_t i = std::ptrdiff_t(n) * channels + c;
            I += inter[i], P += psum[i], G += gsum[i];
        }
        const double N = 2 * I + o.smooth, D = P + G + o.smooth;
        two_over_d = 2.0 / D;
        n_over_d2 = N / (D * D);
        return N / D;
    };
    double two_over_d[64 * 8], n_over_d2[64 * 8];
    if (std::ptrdiff_t(groups) * channels > 64 * 8) throw std::invalid_argument("dice_loss: more than 512 (group, channel) pairs");
    for (int grp = 0; grp < groups; ++grp)
        for (int c = 0; c < channels; ++c) {
            const double d = factors(grp, c, two_over_d[grp * channels + c], n_over_d2[grp * channels + c]);
            if (c >= first) loss += weight * (1.0 - d);
        }
    const double voxels = double(total) * double(plane);
    if (o.ce_weight > 0) {
        ce /= softmax ? voxels : voxels * channels;
        loss += o.ce_weight * ce;
    }
    const double ce_scale = o.ce_weight / (softmax ? voxels : voxels * channels);
    // Gradient through the head: softmax Jacobian p_c (dp_c - sum_k p_k dp_k), sigmoid p (1 - p).
    constexpr std::ptrdiff_t block = 256;
    const std::ptrdiff_t blocks = (plane + block - 1) / block;
    parallel_for(std::ptrdiff_t(images) * blocks, [&](std::ptrdiff_t item) {
        const std::ptrdiff_t n = item / blocks, b0 = (item % blocks) * block, len = std::min(block, plane - b0);
        const int grp = o.batch_dice ? 0 : offset + int(n);
        auto dp = [&](int c, std::ptrdiff_t k) {
            if (c < first) return 0.0;
            const double t = double(truth(n, c, k));
            return -weight * (t * two_over_d[grp * channels + c] - n_over_d2[grp * channels + c]);
        };
        for (std::ptrdiff_t k = b0; k < b0 + len; ++k) {
            if (softmax) {
                double dot = 0;
                for (int c = 0; c < channels; ++c) dot += double(probs[(n * channels + c) * plane + k]) * dp(c, k);
                for (int c = 0; c < channels; ++c) {
                    const double p = double(probs[(n * channels + c) * plane + k]);
                    double gz = p * (dp(c, k) - dot);
                    if (o.ce_weight > 0) gz += ce_scale * (p - double(truth(n, c, k)));
                    grad_logits[(n * channels + c) * plane + k] = T(gz);
                }
            } else {
                for (int c = 0; c < channels; ++c) {
                    const double p = double(probs[(n * channels + c) * plane + k]);
                    double gz = dp(c, k) * p * (1 - p);
                    if (o.ce_weight > 0) gz += ce_scale * (p - double(truth(n, c, k)));
                    grad_logits[(n * channels + c) * plane + k] = T(gz);
                }
            }
        }
    });
    return loss;
}

// Labels outside [0, classes) for a softmax head, or other than 0/1 for a sigmoid head.
inline std::ptrdiff_t first_invalid_label(Head head, int classes, std::ptrdiff_t count, const std::uint8_t* target) {
    for (std::ptrdiff_t i = 0; i < count; ++i)
        if (head == Head::softmax ? target[i] >= classes : target[i] > 1) return i;
    return -1;
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

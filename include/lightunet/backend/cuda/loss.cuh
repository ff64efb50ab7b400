#pragma once
// The head's nonlinearity and the Dice (+ CE) loss, as backend/cpu/loss.hpp. The loss value
// needs the per-(image, channel) sums on the host: one synchronising read per call.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "../../config/unet_config.hpp"
#include "../../dist/cross_batch.hpp"
#include "../../loss/dice.hpp"
#include "reduce.cuh"

namespace lightunet::cuda_kernels {

template <class T>
__global__ void softmax_kernel(int images, int channels, std::ptrdiff_t plane, const T* logits, T* probs) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= std::ptrdiff_t(images) * plane) return;
    const std::ptrdiff_t n = i / plane, k = i % plane;
    const T* in = logits + n * channels * plane + k;
    T* out = probs + n * channels * plane + k;
    T m = in[0];
    for (int c = 1; c < channels; ++c) m = max(m, in[c * plane]);
    T s = 0;
    for (int c = 0; c < channels; ++c) {
        const T e = exp(in[c * plane] - m);
        out[c * plane] = e;
        s += e;
    }
    const T r = T(1) / s;
    for (int c = 0; c < channels; ++c) out[c * plane] *= r;
}

template <class T>
void softmax_channels(int images, int channels, std::ptrdiff_t plane, const T* logits, T* probs) {
    const std::ptrdiff_t count = std::ptrdiff_t(images) * plane;
    if (!count) return;
    softmax_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(images, channels, plane, logits, probs);
    LIGHTUNET_CUDA_LAUNCHED("softmax_kernel");
}

template <class T>
__global__ void sigmoid_kernel(std::ptrdiff_t count, const T* logits, T* probs) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i < count) probs[i] = T(1) / (T(1) + exp(-logits[i]));
}

template <class T>
void sigmoid(std::ptrdiff_t count, const T* logits, T* probs) {
    if (!count) return;
    sigmoid_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(count, logits, probs);
    LIGHTUNET_CUDA_LAUNCHED("sigmoid_kernel");
}

struct DiceGeometry {
    bool softmax;
    int images, channels;
    std::ptrdiff_t plane;
    __device__ double truth(const std::uint8_t* target, std::ptrdiff_t n, int c, std::ptrdiff_t k) const {
        return softmax ? double(target[n * plane + k] == c) : double(target[(n * channels + c) * plane + k] != 0);
    }
};

// Row (n, c): {sum p g, sum p, sum g}.
template <class T>
struct DiceSums {
    DiceGeometry d;
    const T* probs;
    const std::uint8_t* target;
    __device__ void operator()(std::ptrdiff_t i, std::ptrdiff_t k, double (&acc)[3]) const {
        const std::ptrdiff_t n = i / d.channels;
        const int c = int(i % d.channels);
        const double p = double(probs[i * d.plane + k]), t = d.truth(target, n, c, k);
        acc[0] += p * t;
        acc[1] += p;
        acc[2] += t;
    }
};

// Softmax: row n, -log p_target; sigmoid: row (n, c), binary cross-entropy.
template <class T>
struct CrossEntropy {
    DiceGeometry d;
    const T* probs;
    const std::uint8_t* target;
    __device__ void operator()(std::ptrdiff_t i, std::ptrdiff_t k, double (&acc)[1]) const {
        if (d.softmax) {
            const int t = target[i * d.plane + k];
            acc[0] -= log(fmax(double(probs[(i * d.channels + t) * d.plane + k]), 1e-12));
        } else {
            const double p = fmin(fmax(double(probs[i * d.plane + k]), 1e-12), 1.0 - 1e-12);
            acc[0] -= d.truth(target, i / d.channels, int(i % d.channels), k) > 0 ? log(p) : log(1.0 - p);
        }
    }
};

// factors[(group * channels + c) * 2] = {2 / D, N / D^2}
template <class T>
__global__ void dice_grad_kernel(DiceGeometry d, int first, bool batch_dice, int group_offset, double weight, double ce_weight, double ce_scale,
                                 const T* probs, const std::uint8_t* target, const double* factors, T* grad) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= std::ptrdiff_t(d.images) * d.plane) return;
    const std::ptrdiff_t n = i / d.plane, k = i % d.plane;
    const int grp = batch_dice ? 0 : group_offset + int(n);
    auto dp = [&](int c) {
        if (c < first) return 0.0;
        const double t = d.truth(target, n, c, k);
        const double* f = factors + 2 * (std::ptrdiff_t(grp) * d.channels + c);
        return -weight * (t * f[0] - f[1]);
    };
    const std::ptrdiff_t base = n * d.channels * d.plane + k;
    if (d.softmax) {
        double dot = 0;
        for (int c = 0; c < d.channels; ++c) dot += double(probs[base + c * d.plane]) * dp(c);
        for (int c = 0; c < d.channels; ++c) {
            const double p = double(probs[base + c * d.plane]);
            double gz = p * (dp(c) - dot);
            if (ce_weight > 0) gz += ce_scale * (p - d.truth(target, n, c, k));
            grad[base + c * d.plane] = T(gz);
        }
    } else {
        for (int c = 0; c < d.channels; ++c) {
            const double p = double(probs[base + c * d.plane]);
            double gz = dp(c) * p * (1 - p);
            if (ce_weight > 0) gz += ce_scale * (p - d.truth(target, n, c, k));
            grad[base + c * d.plane] = T(gz);
        }
    }
}

// Returns the loss and writes d loss / d logits. `sums` (device) holds 3 * images * channels:
// {sum p g, sum p, sum g} per (image, channel). With `across`, these images are a share of a
// global batch (cpu/loss.hpp): the sums are exchanged on the host, where they are anyway.
template <class T>
double dice_loss(Head head, int images, int channels, std::ptrdiff_t plane, const T* probs, const std::uint8_t* target,
                 const DiceLoss& o, T* grad_logits, double* sums, CrossBatch* across = nullptr) {
    const bool softmax = head == Head::softmax;
    const DiceGeometry d{softmax, images, channels, plane};
    const std::ptrdiff_t planes = std::ptrdiff_t(images) * channels;
    const int first = softmax && !o.include_background ? 1 : 0;
    const int counted = channels - first;
    const bool split = across && across->ranks > 1;
    const int total = split ? across->total_images : images;
    const int offset = split ? across->first_image : 0;
    const int groups = o.batch_dice ? 1 : total;
    if (std::ptrdiff_t(groups) * channels > 64 * 8) throw std::invalid_argument("dice_loss: more than 512 (group, channel) pairs");
    const std::ptrdiff_t ce_rows = softmax ? images : planes;
    const RowSplit ds = RowSplit::of(planes, plane), cs = RowSplit::of(ce_rows, plane);
    const std::size_t partials = std::max(3 * ds.partial_count(), cs.partial_count());
    double* scratch = static_cast<double*>(cuda::scratch((partials + ce_rows + 2 * std::size_t(groups) * channels) * sizeof(double)));
    double* ce_rows_sum = scratch + partials;
    double* factors = ce_rows_sum + ce_rows;
    row_sums<3>(DiceSums<T>{d, probs, target}, ds, scratch, sums);
    if (o.ce_weight > 0) row_sums<1>(CrossEntropy<T>{d, probs, target}, cs, scratch, ce_rows_sum);
    std::vector<double> host(3 * planes + (o.ce_weight > 0 ? ce_rows : 0));
    LIGHTUNET_CUDA_CHECK(cudaMemcpyAsync(host.data(), sums, 3 * planes * sizeof(double), cudaMemcpyDeviceToHost, cuda::stream()));
    if (o.ce_weight > 0)
        LIGHTUNET_CUDA_CHECK(cudaMemcpyAsync(host.data() + 3 * planes, ce_rows_sum, ce_rows * sizeof(double), cudaMemcpyDeviceToHost,
                                             cuda::stream()));
    cuda::synchronize();
    double ce = 0;
    if (o.ce_weight > 0)
        for (std::ptrdiff_t r = 0; r < ce_rows; ++r) ce += host[3 * planes + r];
    const double* global = host.data();
    if (split) {
        const std::size_t global_planes = std::size_t(total) * std::size_t(channels);
        const std::span<double> all = across->zeroed(3 * global_planes + std::size_t(across->ranks));
        std::copy_n(host.data(), 3 * planes, all.data() + 3 * std::size_t(offset) * std::size_t(channels));
        all[3 * global_planes + std::size_t(across->rank)] = ce;
        across->sum(all);
        global = all.data();
        ce = 0;
        for (int r = 0; r < across->ranks; ++r) ce += all[3 * global_planes + std::size_t(r)];
    }
    double loss = 0;
    const double weight = 1.0 / (double(counted) * groups);
    double f[2 * 64 * 8];
    for (int grp = 0; grp < groups; ++grp)
        for (int c = 0; c < channels; ++c) {
            double I = 0, P = 0, G = 0;
            for (int n = 0; n < total; ++n) {
                if (!o.batch_dice && n != grp) continue;
                const std::ptrdiff_t i = std::ptrdiff_t(n) * channels + c;
                I += global[3 * i], P += global[3 * i + 1], G += global[3 * i + 2];
            }
            const double N = 2 * I + o.smooth, D = P + G + o.smooth;
            f[2 * (grp * channels + c)] = 2.0 / D;
            f[2 * (grp * channels + c) + 1] = N / (D * D);
            if (c >= first) loss += weight * (1.0 - N / D);
        }
    const double voxels = double(total) * double(plane);
    if (o.ce_weight > 0) {
        ce /= softmax ? voxels : voxels * channels;
        loss += o.ce_weight * ce;
    }
    const double ce_scale = o.ce_weight / (softmax ? voxels : voxels * channels);
    cuda::upload(factors, f, 2 * std::size_t(groups) * channels);
    const std::ptrdiff_t count = std::ptrdiff_t(images) * plane;
    dice_grad_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(d, first, o.batch_dice, offset, weight, o.ce_weight, ce_scale,
                                                                            probs, target, static_cast<const double*>(factors),
                                                                            grad_logits);
    LIGHTUNET_CUDA_LAUNCHED("dice_grad_kernel");
    return loss;
}

template <int = 0>
__global__ void invalid_label_kernel(bool softmax, int classes, std::ptrdiff_t count, const std::uint8_t* target,
                                            unsigned long long* first) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i < count && (softmax ? target[i] >= classes : target[i] > 1)) atomicMin(first, static_cast<unsigned long long>(i));
}

// Labels outside [0, classes) for a softmax head, or other than 0/1 for a sigmoid head; -1 if none.
inline std::ptrdiff_t first_invalid_label(Head head, int classes, std::ptrdiff_t count, const std::uint8_t* target) {
    auto* first = static_cast<unsigned long long*>(cuda::scratch(sizeof(unsigned long long)));
    const unsigned long long none = ~0ull;
    LIGHTUNET_CUDA_CHECK(cudaMemcpyAsync(first, &none, sizeof none, cudaMemcpyHostToDevice, cuda::stream()));
    if (count > 0) {
        invalid_label_kernel<><<<grid_for(count), block_threads, 0, cuda::stream()>>>(head == Head::softmax, classes, count, target, first);
        LIGHTUNET_CUDA_LAUNCHED("invalid_label_kernel");
    }
    unsigned long long result = 0;
    cuda::download(&result, first, 1);
    return result == none ? -1 : std::ptrdiff_t(result);
}

}  // namespace lightunet::cuda_kernels

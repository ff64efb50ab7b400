#pragma once
// Whole-volume prediction with a patch model: windows of the patch size with overlap, Gaussian
// importance weighting (sigma = patch / 8 per axis, as nnU-Net), optional mirror test-time
// augmentation (every combination of flips of the spatial axes, averaged), batches of windows.
// A 2D model (config.dims == 2) runs slice by slice: its window is one axial slice deep.
//
// Model: any type with `static constexpr UNetConfig config`, `static constexpr int
// size_multiple` and `predict(const Tensor<float>&)` returning probabilities
// [n][classes][d][h][w] (UNet<...> is one). A model in device memory (UNet<C, cuda>) gets
// each batch of windows uploaded and its probabilities read back; the weighting stays on the host.
//
// Memory: the caller's float32 output [classes][D][H][W] is the accumulator, plus one float32
// weight per voxel and one batch of windows in and out; nothing in fp64, nothing per window.
// Volumes smaller than the window, or windows that are not a multiple of size_multiple, are
// padded with zeros; only voxels inside the volume are written.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../config/unet_config.hpp"
#include "../data/case.hpp"
#include "../model/staging.hpp"
#include "../tensor/tensor.hpp"
#include "metrics.hpp"

namespace lightunet::eval {

struct SlidingWindowOptions {
    Extent patch{0, 0, 0};   // D, H, W; 0 in an axis = the whole volume along it (rounded up to
                             // size_multiple). 2D models always use D = 1.
    double overlap = 0.5;    // fraction of the window shared by neighbours, [0, 1)
    bool gaussian = true;    // false: uniform weights
    double sigma_scale = 1.0 / 8.0;
    bool mirror = false;     // test-time augmentation over all flips of the spatial axes
    int batch = 4;           // windows per predict() call
};

// Window start positions along an axis of `length` for window `size`: evenly spread from 0 to
// length - size with steps of at most size * (1 - overlap); one window when it covers the axis.
inline std::vector<int> window_starts(int length, int size, double overlap) {
    if (length <= size) return {0};
    const int step = std::max(1, int(std::floor(size * (1.0 - overlap))));
    const int n = (length - size + step - 1) / step + 1;
    std::vector<int> s(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) s[std::size_t(i)] = int(std::lround(double(i) * (length - size) / double(n - 1)));
    return s;
}

template <class Model>
class SlidingWindowPredictor {
public:
    static constexpr UNetConfig config = Model::config;

    SlidingWindowPredictor(Model& model, SlidingWindowOptions options) : model_(model), opt_(options) {
        if (!(opt_.overlap >= 0.0 && opt_.overlap < 1.0))
            throw std::invalid_argument("SlidingWindowPredictor: overlap must lie in [0, 1), not " + std::to_string(opt_.overlap));
        if (opt_.batch < 1) throw std::invalid_argument("SlidingWindowPredictor: batch must be at least 1");
    }

    // The window used for a volume of this extent.
    Extent window_for(Extent volume) const {
        const int m = Model::size_multiple;
        auto round_up = [&](int v) { return (v + m - 1) / m * m; };
        Extent p{opt_.patch.d, opt_.patch.h, opt_.patch.w};
        if (p.h <= 0) p.h = round_up(volume.h);
        if (p.w <= 0) p.w = round_up(volume.w);
        if (config.dims == 2) p.d = 1;
        else if (p.d <= 0) p.d = round_up(volume.d);
        if (p.h % m || p.w % m || (config.dims == 3 && p.d % m))
            throw ShapeError("SlidingWindowPredictor: window (" + std::to_string(p.d) + ", " + std::to_string(p.h) + ", " +
                             std::to_string(p.w) + ") must be a multiple of the model's size multiple " + std::to_string(m));
        return p;
    }

    // images: [in_channels][D][H][W]; probabilities: [classes][D][H][W], overwritten.
    void predict(const float* images, Extent volume, float* probabilities) {
        if (volume.d < 1 || volume.h < 1 || volume.w < 1)
            throw ShapeError("SlidingWindowPredictor: empty volume (" + std::to_string(volume.d) + ", " +
                             std::to_string(volume.h) + ", " + std::to_string(volume.w) + ")");
        const Extent p = window_for(volume);
        make_weights(p);
        const std::size_t vox = volume.size();
        std::fill_n(probabilities, vox * std::size_t(config.classes), 0.f);
        weight_sum_.assign(vox, 0.f);
        const auto zs = window_starts(volume.d, p.d, config.dims == 2 ? 0.0 : opt_.overlap);
        const auto ys = window_starts(volume.h, p.h, opt_.overlap), xs = window_starts(volume.w, p.w, opt_.overlap);
        windows_.clear();
        for (int z : zs)
            for (int y : ys)
                for (int x : xs) windows_.push_back({z, y, x});
        const int flips = opt_.mirror ? (config.dims == 3 ? 8 : 4) : 1;
        for (int flip = 0; flip < flips; ++flip)
            for (std::size_t first = 0; first < windows_.size(); first += std::size_t(opt_.batch)) {
                const int n = int(std::min<std::size_t>(std::size_t(opt_.batch), windows_.size() - first));
                run_batch(images, volume, p, first, n, flip, probabilities);
            }
        for (int c = 0; c < config.classes; ++c) {
            float* out = probabilities + std::size_t(c) * vox;
            for (std::size_t i = 0; i < vox; ++i) out[i] /= weight_sum_[i];
        }
    }

    // Canonical labels [D][H][W] (see probabilities_to_labels); `probabilities` is scratch of
    // classes x voxels floats kept by the predictor.
    void predict_labels(const float* images, Extent volume, std::uint8_t* labels) {
        probs_.resize(volume.size() * std::size_t(config.classes));
        predict(images, volume, probs_.data());
        probabilities_to_labels(config.head, config.classes, probs_.data(), volume.size(), labels);
    }

private:
    // Flip bit 0: W, bit 1: H, bit 2: D.
    void run_batch(const float* images, Extent vol, Extent p, std::size_t first, int n, int flip, float* out) {
        const int cin = config.in_channels;
        input_.resize({n, cin, p.d, p.h, p.w});
        input_.fill(0.f);
        const bool fw = flip & 1, fh = flip & 2, fd = flip & 4;
        const std::size_t vplane = std::size_t(vol.h) * vol.w, vvol = vol.size();
        for (int b = 0; b < n; ++b) {
            const auto [z0, y0, x0] = windows_[first + std::size_t(b)];
            for (int c = 0; c < cin; ++c)
                for (int d = 0; d < p.d && z0 + d < vol.d; ++d)
                    for (int h = 0; h < p.h && y0 + h < vol.h; ++h) {
                        const float* src = images + std::size_t(c) * vvol + std::size_t(z0 + d) * vplane + std::size_t(y0 + h) * vol.w + x0;
                        const int dd = fd ? p.d - 1 - d : d, hh = fh ? p.h - 1 - h : h;
                        float* dst = &input_.at(b, c, dd, hh, 0);
                        const int wn = std::min(p.w, vol.w - x0);
                        if (fw) for (int w = 0; w < wn; ++w) dst[p.w - 1 - w] = src[w];
                        else std::copy_n(src, wn, dst);
                    }
        }
        const Tensor<float>& probs = staging_.to_host(model_.predict(staging_.images(input_)));
        if (probs.shape() != Shape{n, config.classes, p.d, p.h, p.w})
            throw ShapeError("SlidingWindowPredictor: the model returned " + probs.shape().str() + " for input " + input_.shape().str());
        for (int b = 0; b < n; ++b) {
            const auto [z0, y0, x0] = windows_[first + std::size_t(b)];
            const int wn = std::min(p.w, vol.w - x0);
            for (int d = 0; d < p.d && z0 + d < vol.d; ++d)
                for (int h = 0; h < p.h && y0 + h < vol.h; ++h) {
                    const std::size_t row = std::size_t(z0 + d) * vplane + std::size_t(y0 + h) * vol.w + x0;
                    const float* g = &weights_[(std::size_t(d) * p.h + h) * p.w];
                    const int dd = fd ? p.d - 1 - d : d, hh = fh ? p.h - 1 - h : h;
                    for (int w = 0; w < wn; ++w) weight_sum_[row + w] += g[w];
                    for (int c = 0; c < config.classes; ++c) {
                        const float* src = &probs.at(b, c, dd, hh, 0);
                        float* dst = out + std::size_t(c) * vvol + row;
                        if (fw) for (int w = 0; w < wn; ++w) dst[w] += g[w] * src[p.w - 1 - w];
                        else for (int w = 0; w < wn; ++w) dst[w] += g[w] * src[w];
                    }
                }
        }
    }

    void make_weights(Extent p) {
        if (p == weights_extent_) return;
        weights_extent_ = p;
        auto axis = [&](int size) {
            std::vector<double> g(static_cast<std::size_t>(size), 1.0);
            if (!opt_.gaussian || size == 1) return g;
            const double sigma = size * opt_.sigma_scale, c = (size - 1) / 2.0;
            for (int i = 0; i < size; ++i) g[std::size_t(i)] = std::exp(-(i - c) * (i - c) / (2 * sigma * sigma));
            return g;
        };
        const auto gd = axis(p.d), gh = axis(p.h), gw = axis(p.w);
        weights_.resize(p.size());
        for (int d = 0; d < p.d; ++d)
            for (int h = 0; h < p.h; ++h)
                for (int w = 0; w < p.w; ++w)
                    weights_[(std::size_t(d) * p.h + h) * p.w + w] = std::max(1e-6f, float(gd[d] * gh[h] * gw[w]));
    }

    Model& model_;
    SlidingWindowOptions opt_;
    Tensor<float> input_;
    Staging<Model> staging_;  // a device model: windows uploaded, probabilities read back
    std::vector<float> weights_, weight_sum_, probs_;
    Extent weights_extent_{0, 0, 0};
    std::vector<std::array<int, 3>> windows_;
};

// Canonical labels [z][y][x] for a whole case (its images [4][z][y][x] are the predictor's input
// layout; the model must take data::kModalityCount input channels).
template <class Model>
std::vector<std::uint8_t> predict_case(SlidingWindowPredictor<Model>& predictor, const data::Case& c) {
    static_assert(Model::config.in_channels == data::kModalityCount, "predict_case needs a model with 4 input channels");
    if (c.images.size() != c.extent.voxels() * data::kModalityCount)
        throw std::invalid_argument("predict_case: case " + c.id + " holds " + std::to_string(c.images.size()) +
                                    " image values, expected 4 x " + std::to_string(c.extent.voxels()));
    std::vector<std::uint8_t> labels(c.extent.voxels());
    predictor.predict_labels(c.images.data(), {c.extent.z, c.extent.y, c.extent.x}, labels.data());
    return labels;
}

}  // namespace lightunet::eval

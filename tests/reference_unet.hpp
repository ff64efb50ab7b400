#pragma once
// A naive forward pass of the network docs/design.md describes, written from the configuration
// alone: not from the library's op graph, layers or kernels. It returns every head's
// probabilities, deep-supervision heads included (the model exposes the top head's only), so
// the whole-network gradient tests can take their loss from it. Double precision, parameters
// read in the order of docs/design.md; batch norm on the batch's statistics (training mode), or
// on running statistics when given (eval mode: each norm's means, then its variances, in the
// parameters' order).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include <lightunet/config/unet_config.hpp>

#include "reference_ops.hpp"

namespace lightunet::reference {

// [n][c][d][h][w], d = 1 in 2D.
struct Volume {
    int n = 0, c = 0, d = 1, h = 0, w = 0;
    std::vector<double> v;

    Volume() = default;
    Volume(int n_, int c_, int d_, int h_, int w_) : n(n_), c(c_), d(d_), h(h_), w(w_), v(std::size_t(n_) * c_ * d_ * h_ * w_) {}
    std::size_t spatial() const { return std::size_t(d) * h * w; }
    std::size_t index(int i, int ch, int z, int y, int x) const {
        return ((std::size_t(i) * c + ch) * d + z) * std::size_t(h) * w + std::size_t(y) * w + x;
    }
    double& at(int i, int ch, int z, int y, int x) { return v[index(i, ch, z, y, x)]; }
    double at(int i, int ch, int z, int y, int x) const { return v[index(i, ch, z, y, x)]; }
};

class UNetForward {
public:
    UNetForward(const UNetConfig& c, std::span<const double> params, std::span<const double> running = {})
        : c_(c), params_(params), running_(running) {}

    // Probabilities of the top head, then of the deep-supervision heads (decoder levels 1, 2, ...).
    std::vector<Volume> run(const Volume& input) {
        next_ = next_running_ = 0;
        const int depth = c_.depth();
        std::vector<Volume> skips(std::size_t(depth), Volume{}), decoded(std::size_t(depth), Volume{});
        Volume x = input;
        for (int l = 0; l < depth; ++l) {
            if (l > 0) x = c_.down == Down::max_pool ? max_pool(x) : strided_down(x);
            if (c_.encoder == Encoder::plain) {
                x = plain_block(x, c_.widths[l]);
            } else {
                const int blocks = c_.encoder_blocks[l] > 0 ? c_.encoder_blocks[l] : 1;
                for (int b = 0; b < blocks; ++b) x = residual_block(x, c_.widths[l]);
            }
            skips[std::size_t(l)] = x;
        }
        for (int l = depth - 2; l >= 0; --l) {
            const int w = c_.widths[l];
            const Volume up = c_.up == Up::transposed_conv ? up_transposed(x, w) : conv(upsample(x), w, 1);
            x = plain_block(concat(skips[std::size_t(l)], up), w);
            decoded[std::size_t(l)] = x;
        }
        std::vector<Volume> probs{output(conv(x, c_.classes, 1))};
        if (c_.deep_supervision)
            for (int l = 1; l <= depth - 3; ++l) probs.push_back(output(conv(decoded[std::size_t(l)], c_.classes, 1)));
        if (next_ != params_.size()) throw std::logic_error("reference forward: parameters left over");
        if (next_running_ != running_.size()) throw std::logic_error("reference forward: running statistics left over");
        return probs;
    }

private:
    const double* take(std::size_t count) {
        if (next_ + count > params_.size()) throw std::logic_error("reference forward: too few parameters");
        const double* p = params_.data() + next_;
        next_ += count;
        return p;
    }
    int fd() const { return c_.dims == 3 ? 2 : 1; }  // the depth extent of a 2x(2x)2 cell

    // 'Same' convolution with bias, kernel k = 3 or 1.
    Volume conv(const Volume& x, int cout, int k) {
        const int kd = c_.dims == 3 ? k : 1;
        const ConvProblem p{Extent{x.d, x.h, x.w}, kd, k, k, x.c, cout};
        const double* w = take(std::size_t(cout) * x.c * kd * k * k);
        const double* b = take(std::size_t(cout));
        Volume y(x.n, cout, x.d, x.h, x.w);
        y.v = conv_forward(p, x.n, x.v, std::vector<double>(w, w + std::size_t(cout) * x.c * kd * k * k),
                           std::vector<double>(b, b + cout));
        return y;
    }
    double activate(double v, Act act) const {
        if (act == Act::relu) return v > 0 ? v : 0.0;
        if (act == Act::leaky_relu) return v > 0 ? v : c_.leaky_slope * v;
        return v;
    }
    // The norm over its statistic's members (biased variance, eps 1e-5), then the activation.
    Volume norm_act(Volume z, Act act) {
        if (c_.norm != Norm::none) {
            const double* gamma = take(std::size_t(z.c));
            const double* beta = take(std::size_t(z.c));
            const std::size_t S = z.spatial();
            const int per_group = c_.norm == Norm::group ? z.c / c_.groups : 1;
            // Statistic k's members: images [n0, n1) x channels [c0, c1).
            auto normalise = [&](int n0, int n1, int c0, int c1) {
                double sum = 0, sq = 0, count = double(n1 - n0) * (c1 - c0) * double(S);
                for (int n = n0; n < n1; ++n)
                    for (int ch = c0; ch < c1; ++ch)
                        for (std::size_t s = 0; s < S; ++s) sum += z.v[(std::size_t(n) * z.c + ch) * S + s];
                const double mean = sum / count;
                for (int n = n0; n < n1; ++n)
                    for (int ch = c0; ch < c1; ++ch)
                        for (std::size_t s = 0; s < S; ++s) sq += std::pow(z.v[(std::size_t(n) * z.c + ch) * S + s] - mean, 2);
                const double invstd = 1.0 / std::sqrt(sq / count + 1e-5);
                for (int n = n0; n < n1; ++n)
                    for (int ch = c0; ch < c1; ++ch)
                        for (std::size_t s = 0; s < S; ++s) {
                            double& v = z.v[(std::size_t(n) * z.c + ch) * S + s];
                            v = gamma[ch] * (v - mean) * invstd + beta[ch];
                        }
            };
            if (c_.norm == Norm::batch && !running_.empty()) {
                if (next_running_ + 2 * std::size_t(z.c) > running_.size())
                    throw std::logic_error("reference forward: too few running statistics");
                const double* mean = running_.data() + next_running_;
                const double* var = mean + z.c;
                next_running_ += 2 * std::size_t(z.c);
                for (int n = 0; n < z.n; ++n)
                    for (int ch = 0; ch < z.c; ++ch)
                        for (std::size_t s = 0; s < S; ++s) {
                            double& v = z.v[(std::size_t(n) * z.c + ch) * S + s];
                            v = gamma[ch] * (v - mean[ch]) / std::sqrt(var[ch] + 1e-5) + beta[ch];
                        }
            } else if (c_.norm == Norm::batch) {
                for (int ch = 0; ch < z.c; ++ch) normalise(0, z.n, ch, ch + 1);
            } else {
                for (int n = 0; n < z.n; ++n)
                    for (int c0 = 0; c0 < z.c; c0 += per_group) normalise(n, n + 1, c0, c0 + per_group);
            }
        }
        for (double& v : z.v) v = activate(v, act);
        return z;
    }
    Volume plain_block(const Volume& x, int width) {
        const Volume y = norm_act(conv(x, width, 3), c_.act);
        return norm_act(conv(y, width, 3), c_.act);
    }
    // nnU-Net's ResEnc block: act(norm(conv(act(norm(conv(x))))) + skip), the skip projected by a
    // 1x1 conv and a norm where the channels change.
    Volume residual_block(const Volume& x, int width) {
        const Volume y1 = norm_act(conv(x, width, 3), c_.act);
        Volume y = norm_act(conv(y1, width, 3), Act::identity);
        const Volume skip = x.c == width ? x : norm_act(conv(x, width, 1), Act::identity);
        for (std::size_t i = 0; i < y.v.size(); ++i) y.v[i] = activate(y.v[i] + skip.v[i], c_.act);
        return y;
    }
    Volume max_pool(const Volume& x) const {
        Volume y(x.n, x.c, x.d / fd(), x.h / 2, x.w / 2);
        for (int n = 0; n < y.n; ++n)
            for (int ch = 0; ch < y.c; ++ch)
                for (int z = 0; z < y.d; ++z)
                    for (int i = 0; i < y.h; ++i)
                        for (int j = 0; j < y.w; ++j) {
                            double m = -INFINITY;
                            for (int a = 0; a < fd(); ++a)
                                for (int b = 0; b < 2; ++b)
                                    for (int e = 0; e < 2; ++e) m = std::max(m, x.at(n, ch, z * fd() + a, 2 * i + b, 2 * j + e));
                            y.at(n, ch, z, i, j) = m;
                        }
        return y;
    }
    // Kernel 2 stride 2, channels kept; weight [out][in][fd][2][2].
    Volume strided_down(const Volume& x) {
        const int cells = fd() * 4;
        const double* w = take(std::size_t(x.c) * x.c * cells);
        const double* bias = take(std::size_t(x.c));
        Volume y(x.n, x.c, x.d / fd(), x.h / 2, x.w / 2);
        for (int n = 0; n < y.n; ++n)
            for (int o = 0; o < y.c; ++o)
                for (int z = 0; z < y.d; ++z)
                    for (int i = 0; i < y.h; ++i)
                        for (int j = 0; j < y.w; ++j) {
                            double acc = bias[o];
                            for (int ci = 0; ci < x.c; ++ci)
                                for (int a = 0; a < fd(); ++a)
                                    for (int b = 0; b < 2; ++b)
                                        for (int e = 0; e < 2; ++e)
                                            acc += w[((std::size_t(o) * x.c + ci) * fd() + a) * 4 + std::size_t(b) * 2 + e] *
                                                   x.at(n, ci, z * fd() + a, 2 * i + b, 2 * j + e);
                            y.at(n, o, z, i, j) = acc;
                        }
        return y;
    }
    // Transposed convolution kernel 2 stride 2; weight [in][out][fd][2][2].
    Volume up_transposed(const Volume& x, int cout) {
        const int cells = fd() * 4;
        const double* w = take(std::size_t(x.c) * cout * cells);
        const double* bias = take(std::size_t(cout));
        Volume y(x.n, cout, x.d * fd(), x.h * 2, x.w * 2);
        for (int n = 0; n < y.n; ++n)
            for (int o = 0; o < cout; ++o)
                for (int z = 0; z < y.d; ++z)
                    for (int i = 0; i < y.h; ++i)
                        for (int j = 0; j < y.w; ++j) {
                            const int a = z % fd(), b = i % 2, e = j % 2;
                            double acc = bias[o];
                            for (int ci = 0; ci < x.c; ++ci)
                                acc += w[((std::size_t(ci) * cout + o) * fd() + a) * 4 + std::size_t(b) * 2 + e] *
                                       x.at(n, ci, z / fd(), i / 2, j / 2);
                            y.at(n, o, z, i, j) = acc;
                        }
        return y;
    }
    Volume upsample(const Volume& x) const {
        Volume y(x.n, x.c, x.d * fd(), x.h * 2, x.w * 2);
        for (int n = 0; n < y.n; ++n)
            for (int ch = 0; ch < y.c; ++ch)
                for (int z = 0; z < y.d; ++z)
                    for (int i = 0; i < y.h; ++i)
                        for (int j = 0; j < y.w; ++j) y.at(n, ch, z, i, j) = x.at(n, ch, z / fd(), i / 2, j / 2);
        return y;
    }
    static Volume concat(const Volume& a, const Volume& b) {
        Volume y(a.n, a.c + b.c, a.d, a.h, a.w);
        const std::size_t S = a.spatial();
        for (int n = 0; n < a.n; ++n) {
            std::copy_n(a.v.begin() + std::ptrdiff_t(std::size_t(n) * a.c * S), std::size_t(a.c) * S,
                        y.v.begin() + std::ptrdiff_t(std::size_t(n) * y.c * S));
            std::copy_n(b.v.begin() + std::ptrdiff_t(std::size_t(n) * b.c * S), std::size_t(b.c) * S,
                        y.v.begin() + std::ptrdiff_t((std::size_t(n) * y.c + a.c) * S));
        }
        return y;
    }
    Volume output(Volume z) const {
        const std::size_t S = z.spatial();
        if (c_.head == Head::sigmoid) {
            for (double& v : z.v) v = 1.0 / (1.0 + std::exp(-v));
            return z;
        }
        for (int n = 0; n < z.n; ++n)
            for (std::size_t s = 0; s < S; ++s) {
                double m = -INFINITY, sum = 0;
                for (int ch = 0; ch < z.c; ++ch) m = std::max(m, z.v[(std::size_t(n) * z.c + ch) * S + s]);
                for (int ch = 0; ch < z.c; ++ch) sum += std::exp(z.v[(std::size_t(n) * z.c + ch) * S + s] - m);
                for (int ch = 0; ch < z.c; ++ch) {
                    double& v = z.v[(std::size_t(n) * z.c + ch) * S + s];
                    v = std::exp(v - m) / sum;
                }
            }
        return z;
    }

    UNetConfig c_;
    std::span<const double> params_, running_;
    std::size_t next_ = 0, next_running_ = 0;
};

// Targets one level coarser: the first voxel of each 2x2(x2) cell, PyTorch's
// interpolate(scale_factor=0.5, mode='nearest'). `labels` is [n][channels][d][h][w].
inline std::vector<std::uint8_t> subsample_labels(const std::vector<std::uint8_t>& labels, int n, int channels, int d, int h, int w,
                                                  int fd) {
    const int cd = d / fd, ch = h / 2, cw = w / 2;
    std::vector<std::uint8_t> out(std::size_t(n) * channels * cd * ch * cw);
    for (int p = 0; p < n * channels; ++p)
        for (int z = 0; z < cd; ++z)
            for (int i = 0; i < ch; ++i)
                for (int j = 0; j < cw; ++j)
                    out[((std::size_t(p) * cd + z) * ch + i) * cw + j] =
                        labels[((std::size_t(p) * d + std::size_t(z) * fd) * h + std::size_t(2 * i)) * w + std::size_t(2 * j)];
    return out;
}

}  // namespace lightunet::reference

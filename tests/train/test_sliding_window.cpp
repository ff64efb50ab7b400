#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

#include "lightunet/model/unet.hpp"
#include "lightunet/eval/sliding_window.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::eval;

namespace {
constexpr UNetConfig net2d{.dims = 2, .in_channels = 2, .classes = 3, .widths = {4, 8}};

// A per-voxel "model": softmax of (a, b, a * b) from the two input channels. Its output at a
// voxel depends only on that voxel, so any window layout, weighting or flip must reproduce it.
template <int Dims>
struct VoxelModel {
    static constexpr UNetConfig config{.dims = Dims, .in_channels = 2, .classes = 3, .widths = {4, 8, 16}};
    static constexpr int size_multiple = 4;
    Tensor<float> out;
    int calls = 0;
    static void apply(float a, float b, float* p) {
        const float l[3] = {a, b, a * b};
        const float m = std::max({l[0], l[1], l[2]});
        float s = 0;
        for (int c = 0; c < 3; ++c) s += (p[c] = std::exp(l[c] - m));
        for (int c = 0; c < 3; ++c) p[c] /= s;
    }
    const Tensor<float>& predict(const Tensor<float>& x) {
        ++calls;
        const Shape s = x.shape();
        out.resize({s.n, 3, s.d, s.h, s.w});
        const std::size_t sp = s.spatial();
        for (int n = 0; n < s.n; ++n)
            for (std::size_t i = 0; i < sp; ++i) {
                float p[3];
                apply(x.channel(n, 0)[i], x.channel(n, 1)[i], p);
                for (int c = 0; c < 3; ++c) out.channel(n, c)[i] = p[c];
            }
        return out;
    }
};

// A model whose output depends on where the window lies and where a voxel sits in the model's
// input frame, so that the blend depends on the weights and flips. Its input is one channel
// holding each voxel's linear index in the volume (exact in float here); for every window it
// returns
//   channel 0: the window's smallest input, i.e. the linear index of its origin voxel (the same
//              for every voxel of the window and under every flip),
//   channels 1, 2, 3: the voxel's d, h, w position in the model's (possibly flipped) input,
//   channel 4: the input itself (equivariant: any consistent flip-and-unflip gives it back).
template <int Dims>
struct WindowModel {
    static constexpr UNetConfig config{.dims = Dims, .in_channels = 1, .classes = 5, .widths = {4, 8}};
    static constexpr int size_multiple = 4;
    Tensor<float> out;
    int calls = 0;
    const Tensor<float>& predict(const Tensor<float>& x) {
        ++calls;
        const Shape s = x.shape();
        out.resize({s.n, 5, s.d, s.h, s.w});
        for (int n = 0; n < s.n; ++n) {
            const float* in = x.channel(n, 0);
            const float origin = *std::min_element(in, in + s.spatial());
            for (int d = 0; d < s.d; ++d)
                for (int h = 0; h < s.h; ++h)
                    for (int w = 0; w < s.w; ++w) {
                        out.at(n, 0, d, h, w) = origin;
                        out.at(n, 1, d, h, w) = float(d);
                        out.at(n, 2, d, h, w) = float(h);
                        out.at(n, 3, d, h, w) = float(w);
                        out.at(n, 4, d, h, w) = x.at(n, 0, d, h, w);
                    }
        }
        return out;
    }
};

std::vector<float> index_volume(Extent e) {
    std::vector<float> v(e.size());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = float(i);
    return v;
}

// What the predictor should return for WindowModel, computed voxel by voxel in double from the
// definition: every window that covers a voxel, under every flip, adds weight x value, and the
// sum is divided by the summed weights. Gaussian weights: exp(-(i - c)^2 / (2 sigma^2)) per axis
// with c = (size - 1) / 2 and sigma = size / 8, multiplied over the axes, floored at 1e-6 (the
// predictor's floor, which only matters where every covering window has the voxel in a far
// corner). Windows must lie inside the volume (no padding).
std::vector<double> expected_blend(Extent vol, Extent p, const std::array<std::vector<int>, 3>& starts, bool gaussian,
                                   int flips) {
    auto axis = [&](int size) {
        std::vector<double> g(std::size_t(size), 1.0);
        const double sigma = size / 8.0, c = (size - 1) / 2.0;
        if (gaussian && size > 1)
            for (int i = 0; i < size; ++i) g[std::size_t(i)] = std::exp(-(i - c) * (i - c) / (2 * sigma * sigma));
        return g;
    };
    const auto gd = axis(p.d), gh = axis(p.h), gw = axis(p.w);
    std::vector<double> num(5 * vol.size(), 0.0), den(vol.size(), 0.0);
    for (int z0 : starts[0])
        for (int y0 : starts[1])
            for (int x0 : starts[2]) {
                REQUIRE((z0 + p.d <= vol.d && y0 + p.h <= vol.h && x0 + p.w <= vol.w));
                const double origin = (double(z0) * vol.h + y0) * vol.w + x0;
                for (int flip = 0; flip < flips; ++flip)
                    for (int d = 0; d < p.d; ++d)
                        for (int h = 0; h < p.h; ++h)
                            for (int w = 0; w < p.w; ++w) {
                                const std::size_t i = (std::size_t(z0 + d) * vol.h + (y0 + h)) * vol.w + (x0 + w);
                                const double weight = gaussian ? std::max(1e-6, gd[d] * gh[h] * gw[w]) : 1.0;
                                const double frame[3] = {double(flip & 4 ? p.d - 1 - d : d), double(flip & 2 ? p.h - 1 - h : h),
                                                         double(flip & 1 ? p.w - 1 - w : w)};
                                den[i] += weight;
                                num[i] += weight * origin;
                                for (int a = 0; a < 3; ++a) num[(1 + a) * vol.size() + i] += weight * frame[a];
                                num[4 * vol.size() + i] += weight * double(i);
                            }
            }
    for (int c = 0; c < 5; ++c)
        for (std::size_t i = 0; i < vol.size(); ++i) {
            REQUIRE(den[i] > 0);
            num[c * vol.size() + i] /= den[i];
        }
    return num;
}

// Largest |a - b| over channel `c`.
double max_difference(const std::vector<double>& a, const std::vector<double>& b, int c, std::size_t voxels) {
    double m = 0;
    for (std::size_t i = 0; i < voxels; ++i) m = std::max(m, std::abs(a[c * voxels + i] - b[c * voxels + i]));
    return m;
}

std::vector<float> random_volume(int channels, Extent e, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd;
    std::vector<float> v(std::size_t(channels) * e.size());
    for (auto& x : v) x = nd(gen);
    return v;
}
}  // namespace

TEST_CASE("Window starts cover the axis with the requested overlap", "[sliding_window]") {
    CHECK(window_starts(10, 16, 0.5) == std::vector<int>{0});
    CHECK(window_starts(16, 16, 0.5) == std::vector<int>{0});
    CHECK(window_starts(40, 16, 0.5) == std::vector<int>{0, 8, 16, 24});
    CHECK(window_starts(37, 16, 0.5) == std::vector<int>{0, 7, 14, 21});
    CHECK(window_starts(5, 1, 0.0) == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("Sliding window equals the whole-image output where one window covers the image", "[sliding_window]") {
    UNet<net2d> net(3);
    const Extent vol{3, 32, 24};
    const auto img = random_volume(2, vol, 1);
    SlidingWindowPredictor<UNet<net2d>> sw(net, {.batch = 2});
    std::vector<float> probs(3 * vol.size());
    sw.predict(img.data(), vol, probs.data());
    // Reference: each slice through predict() on its own.
    for (int z = 0; z < vol.d; ++z) {
        Tensor<float> x({1, 2, 1, vol.h, vol.w});
        for (int c = 0; c < 2; ++c)
            std::copy_n(img.data() + c * vol.size() + std::size_t(z) * vol.h * vol.w, vol.h * vol.w, x.channel(0, c));
        const auto& ref = net.predict(x);
        for (int c = 0; c < 3; ++c)
            for (int i = 0; i < vol.h * vol.w; ++i)
                REQUIRE(probs[c * vol.size() + std::size_t(z) * vol.h * vol.w + i] == Approx(ref.channel(0, c)[i]).margin(1e-6));
    }
}

TEST_CASE("Volumes that are not a multiple of the model's size are padded with zeros", "[sliding_window]") {
    UNet<net2d> net(4);
    const Extent vol{1, 27, 30};  // height padded to 28 (size multiple 2)
    const auto img = random_volume(2, vol, 2);
    SlidingWindowPredictor<UNet<net2d>> sw(net, {});
    CHECK(sw.window_for(vol) == Extent{1, 28, 30});
    std::vector<float> probs(3 * vol.size());
    sw.predict(img.data(), vol, probs.data());
    Tensor<float> x({1, 2, 1, 28, 30});
    x.fill(0.f);
    for (int c = 0; c < 2; ++c)
        for (int h = 0; h < 27; ++h) std::copy_n(img.data() + c * vol.size() + h * 30, 30, &x.at(0, c, 0, h, 0));
    const auto& ref = net.predict(x);
    for (int c = 0; c < 3; ++c)
        for (int h = 0; h < 27; ++h)
            for (int w = 0; w < 30; ++w) REQUIRE(probs[c * vol.size() + h * 30 + w] == Approx(ref.at(0, c, 0, h, w)).margin(1e-6));
}

// A per-voxel model gives the same value in every window and flip, so these cases check the
// window layout, padding and flip bookkeeping but not the weighting (any positive weights give
// the same average); "Gaussian blending of window-dependent outputs" below checks the weights.
TEST_CASE("Overlapping windows and mirroring reproduce a per-voxel model exactly", "[sliding_window]") {
    SECTION("2D, 16x16 windows over 40x37 slices") {
        VoxelModel<2> model;
        const Extent vol{2, 40, 37};
        const auto img = random_volume(2, vol, 3);
        SlidingWindowPredictor<VoxelModel<2>> sw(model, {.patch = {1, 16, 16}, .overlap = 0.5, .mirror = true, .batch = 3});
        std::vector<float> probs(3 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        CHECK(model.calls == 4 * ((2 * 4 * 4 + 2) / 3));  // 4 flips x ceil(32 windows / 3)
        for (std::size_t i = 0; i < vol.size(); ++i) {
            float p[3];
            VoxelModel<2>::apply(img[i], img[vol.size() + i], p);
            for (int c = 0; c < 3; ++c) REQUIRE(probs[c * vol.size() + i] == Approx(p[c]).margin(1e-5));
        }
        std::vector<std::uint8_t> labels(vol.size());
        sw.predict_labels(img.data(), vol, labels.data());
        int clear_winners = 0;
        for (std::size_t i = 0; i < vol.size(); ++i) {
            float p[3];
            VoxelModel<2>::apply(img[i], img[vol.size() + i], p);
            const int best = int(std::max_element(p, p + 3) - p);
            REQUIRE(labels[i] < 3);
            // The argmax; where the runner-up is within rounding of the best, either of them.
            std::array<float, 3> rest{p[0], p[1], p[2]};
            rest[std::size_t(best)] = -1.f;
            if (p[best] - *std::max_element(rest.begin(), rest.end()) > 1e-4f) {
                ++clear_winners;
                REQUIRE(int(labels[i]) == best);
            } else {
                REQUIRE(p[labels[i]] >= p[best] - 1e-4f);
            }
        }
        CHECK(clear_winners > int(vol.size()) * 9 / 10);
    }
    SECTION("3D, 8x8x8 windows over 10x20x13, smaller than the window in no axis but odd") {
        VoxelModel<3> model;
        const Extent vol{10, 20, 13};
        const auto img = random_volume(2, vol, 4);
        SlidingWindowPredictor<VoxelModel<3>> sw(model, {.patch = {8, 8, 8}, .overlap = 0.5, .mirror = true, .batch = 2});
        std::vector<float> probs(3 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        for (std::size_t i = 0; i < vol.size(); ++i) {
            float p[3];
            VoxelModel<3>::apply(img[i], img[vol.size() + i], p);
            for (int c = 0; c < 3; ++c) REQUIRE(probs[c * vol.size() + i] == Approx(p[c]).margin(1e-5));
        }
    }
    SECTION("a window larger than the volume pads it") {
        VoxelModel<3> model;
        const Extent vol{3, 5, 6};
        const auto img = random_volume(2, vol, 5);
        SlidingWindowPredictor<VoxelModel<3>> sw(model, {.patch = {8, 8, 8}});
        std::vector<float> probs(3 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        CHECK(model.calls == 1);
        for (std::size_t i = 0; i < vol.size(); ++i) {
            float p[3];
            VoxelModel<3>::apply(img[i], img[vol.size() + i], p);
            for (int c = 0; c < 3; ++c) REQUIRE(probs[c * vol.size() + i] == Approx(p[c]).margin(1e-6));
        }
    }
    SECTION("a window that is not a multiple of size_multiple is refused") {
        VoxelModel<3> model;
        SlidingWindowPredictor<VoxelModel<3>> sw(model, {.patch = {8, 10, 8}});
        CHECK_THROWS_WITH(sw.window_for({8, 8, 8}), Catch::Contains("multiple of the model's size multiple 4"));
    }
}

TEST_CASE("Gaussian blending of window-dependent outputs, worked by hand", "[sliding_window]") {
    // One 16x24 slice, 16x16 windows with overlap 0.5: windows start at x = 0 and x = 8 (and
    // y = 0), so column x = 12 lies at w = 12 in the first window and w = 4 in the second.
    // Gaussian weights along w (c = 7.5, sigma = 2): g(12) / g(4) = exp(-(4.5^2 - 3.5^2) / 8) =
    // exp(-1); the h factor is the same for both windows and cancels. Channel 0 (the window's
    // origin index: 0 and 8) then blends to 8 / (1 + e^-1) = 5.848..., against 4 with uniform
    // weights; channel 3 (w in the window) to (12 e^-1 + 4) / (1 + e^-1) = 4 + 8 / (1 + e) =
    // 6.151..., against 8. At x = 10 (w = 10 and 2, weight ratio exp(-3)) channel 0 is
    // 8 / (1 + e^3) = 0.379..., against 4.
    const Extent vol{1, 16, 24};
    const auto img = index_volume(vol);
    const double e = std::exp(1.0);
    auto at = [&](const std::vector<float>& probs, int c, int y, int x) {
        return probs[std::size_t(c) * vol.size() + std::size_t(y) * vol.w + x];
    };
    SECTION("Gaussian weights") {
        WindowModel<2> model;
        SlidingWindowPredictor<WindowModel<2>> sw(model, {.patch = {1, 16, 16}, .overlap = 0.5});
        std::vector<float> probs(5 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        CHECK(model.calls == 1);  // both windows in one batch
        for (int y : {0, 5, 8, 15}) {
            INFO("y = " << y);
            CHECK(at(probs, 0, y, 12) == Approx(8 / (1 + 1 / e)).epsilon(1e-5));
            CHECK(at(probs, 3, y, 12) == Approx(4 + 8 / (1 + e)).epsilon(1e-5));
            CHECK(at(probs, 0, y, 10) == Approx(8 / (1 + e * e * e)).epsilon(1e-4));
            // Columns only the first (x < 8) or the second (x >= 16) window covers.
            CHECK(at(probs, 0, y, 3) == Approx(0).margin(1e-6));
            CHECK(at(probs, 0, y, 20) == Approx(8));
            CHECK(at(probs, 2, y, 12) == Approx(y));  // one window along y: h is y
        }
    }
    SECTION("uniform weights (gaussian = false) average the two windows") {
        WindowModel<2> model;
        SlidingWindowPredictor<WindowModel<2>> sw(model, {.patch = {1, 16, 16}, .overlap = 0.5, .gaussian = false});
        std::vector<float> probs(5 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        for (int y : {0, 8, 15}) {
            CHECK(at(probs, 0, y, 12) == Approx(4));
            CHECK(at(probs, 3, y, 12) == Approx(8));
            CHECK(at(probs, 0, y, 10) == Approx(4));
        }
    }
    SECTION("mirroring averages each window over its flips") {
        // The flips of one window see the same origin, so channel 0 keeps its Gaussian blend;
        // h and w in the model's frame average to (16 - 1) / 2 over a flip and its mirror; the
        // input comes back unflipped.
        WindowModel<2> model;
        SlidingWindowPredictor<WindowModel<2>> sw(model, {.patch = {1, 16, 16}, .overlap = 0.5, .mirror = true});
        std::vector<float> probs(5 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        CHECK(model.calls == 4);  // 4 flips, both windows in one batch each
        for (int y : {0, 5, 8, 15}) {
            INFO("y = " << y);
            CHECK(at(probs, 0, y, 12) == Approx(8 / (1 + 1 / e)).epsilon(1e-5));
            for (int x : {0, 10, 12, 23}) {
                CHECK(at(probs, 2, y, x) == Approx(7.5));
                CHECK(at(probs, 3, y, x) == Approx(7.5));
                CHECK(at(probs, 4, y, x) == Approx(y * vol.w + x));
            }
        }
    }
}

TEST_CASE("Gaussian blending of window-dependent outputs matches the definition", "[sliding_window]") {
    // The predictor against expected_blend (a direct, voxel-by-voxel evaluation of the weighted
    // average), with and without mirroring; the uniform average is computed too and must differ
    // by far more than the tolerance, so these checks fail if the weighting is not Gaussian.
    auto run = [](auto& model, Extent vol, const SlidingWindowOptions& options, const std::array<std::vector<int>, 3>& starts) {
        using Model = std::remove_reference_t<decltype(model)>;
        SlidingWindowPredictor<Model> sw(model, options);
        const Extent p = sw.window_for(vol);
        CHECK(window_starts(vol.d, p.d, Model::config.dims == 2 ? 0.0 : options.overlap) == starts[0]);
        CHECK(window_starts(vol.h, p.h, options.overlap) == starts[1]);
        CHECK(window_starts(vol.w, p.w, options.overlap) == starts[2]);
        const auto img = index_volume(vol);
        std::vector<float> probs(5 * vol.size());
        sw.predict(img.data(), vol, probs.data());
        const int flips = options.mirror ? (Model::config.dims == 3 ? 8 : 4) : 1;
        const auto gauss = expected_blend(vol, p, starts, true, flips);
        const auto uniform = expected_blend(vol, p, starts, false, flips);
        CHECK(max_difference(gauss, uniform, 0, vol.size()) > 1.0);  // channel 0: window origins
        if (!options.mirror) CHECK(max_difference(gauss, uniform, 3, vol.size()) > 0.5);  // w in the window
        for (int c = 0; c < 5; ++c)
            for (std::size_t i = 0; i < vol.size(); ++i) {
                INFO("channel " << c << ", voxel " << i);
                REQUIRE(probs[c * vol.size() + i] == Approx(gauss[c * vol.size() + i]).epsilon(1e-5).margin(1e-3));
            }
        return model.calls;
    };
    for (bool mirror : {false, true}) {
        DYNAMIC_SECTION("2D, 16x16 windows over two 40x37 slices, mirror " << mirror) {
            WindowModel<2> model;
            const int calls = run(model, {2, 40, 37}, {.patch = {1, 16, 16}, .overlap = 0.5, .mirror = mirror, .batch = 3},
                                  {std::vector<int>{0, 1}, {0, 8, 16, 24}, {0, 7, 14, 21}});
            CHECK(calls == (mirror ? 4 : 1) * ((2 * 4 * 4 + 2) / 3));
        }
        DYNAMIC_SECTION("3D, 8x8x8 windows over 10x20x13, mirror " << mirror) {
            WindowModel<3> model;
            const int calls = run(model, {10, 20, 13}, {.patch = {8, 8, 8}, .overlap = 0.5, .mirror = mirror, .batch = 5},
                                  {std::vector<int>{0, 2}, {0, 4, 8, 12}, {0, 3, 5}});
            CHECK(calls == (mirror ? 8 : 1) * ((2 * 4 * 3 + 4) / 5));
        }
    }
}

TEST_CASE("predict_case labels a whole case slice by slice", "[sliding_window]") {
    constexpr UNetConfig brats_like{.dims = 2, .in_channels = 4, .classes = 4, .widths = {4, 8}};
    UNet<brats_like> net(6);
    data::Case c;
    c.id = "p";
    c.extent = {20, 16, 3};
    c.images = random_volume(4, {3, 16, 20}, 6);
    SlidingWindowPredictor<UNet<brats_like>> sw(net, {});
    const auto labels = predict_case(sw, c);
    REQUIRE(labels.size() == c.extent.voxels());
    // Slice 1 by hand.
    Tensor<float> x({1, 4, 1, 16, 20});
    for (int m = 0; m < 4; ++m) std::copy_n(c.image(m) + 320, 320, x.channel(0, m));
    const auto& p = net.predict(x);
    for (int i = 0; i < 320; ++i) {
        int best = 0;
        for (int k = 1; k < 4; ++k)
            if (p.channel(0, k)[i] > p.channel(0, best)[i]) best = k;
        const float gap = p.channel(0, best)[i] - p.channel(0, labels[320 + i])[i];
        REQUIRE(gap <= 1e-5f);  // the same class, up to ties within rounding
    }
}

TEST_CASE("Labels from probabilities: softmax argmax and nested sigmoid regions", "[sliding_window]") {
    // Two voxels, softmax 3 classes.
    const float soft[6] = {0.2f, 0.3f, 0.7f, 0.1f, 0.1f, 0.6f};  // [c][v]
    std::uint8_t l[2];
    probabilities_to_labels(Head::softmax, 3, soft, 2, l);
    CHECK(l[0] == 1);
    CHECK(l[1] == 2);
    // Sigmoid WT, TC, ET over 4 voxels: none, WT only, WT+TC, WT+TC+ET.
    const float sig[12] = {0.1f, 0.9f, 0.9f, 0.9f, 0.1f, 0.2f, 0.8f, 0.8f, 0.1f, 0.1f, 0.3f, 0.7f};
    std::uint8_t s[4];
    probabilities_to_labels(Head::sigmoid, 3, sig, 4, s);
    CHECK(std::vector<int>(s, s + 4) == std::vector<int>{0, 2, 1, 3});
    CHECK_THROWS(probabilities_to_labels(Head::sigmoid, 2, sig, 4, s));
}

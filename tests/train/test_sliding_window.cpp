#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "lightunet/model/unet.hpp"
#include "lightunet/train/sliding_window.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::train;

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

TEST_CASE("Overlapping windows, Gaussian weights and mirroring reproduce a per-voxel model exactly", "[sliding_window]") {
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
        for (std::size_t i = 0; i < vol.size(); ++i) {
            float p[3];
            VoxelModel<2>::apply(img[i], img[vol.size() + i], p);
            const int best = int(std::max_element(p, p + 3) - p);
            if (std::abs(p[best] - *std::max_element(p, p + 3)) < 1e-5f) REQUIRE((labels[i] == best || p[labels[i]] > p[best] - 1e-5f));
        }
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
            REQUIRE(probs[i] == Approx(p[0]).margin(1e-6));
        }
    }
    SECTION("a window that is not a multiple of size_multiple is refused") {
        VoxelModel<3> model;
        SlidingWindowPredictor<VoxelModel<3>> sw(model, {.patch = {8, 10, 8}});
        CHECK_THROWS_WITH(sw.window_for({8, 8, 8}), Catch::Contains("multiple of the model's size multiple 4"));
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

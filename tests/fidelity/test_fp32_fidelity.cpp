// fp32 against fp64 at the sizes users train on. The same network in float and in double, the
// double one given the float one's parameters bit for bit, runs one training step's forward and
// backward on the same batch; the probabilities, the loss, every parameter tensor's gradient
// and the input gradient are compared as relative L2 errors, for every convolution algorithm
// the dispatcher can pick (automatic, direct forced, Winograd forced).
//
// Two kinds of network, because a ReLU or max-pool network's gradient is not a continuous
// function of its input: where an activation sits within rounding of a kink, or two pooled
// values within rounding of each other, float and double take different branches and that
// element's gradient changes by its whole size. At 240 x 240 with widths 32..512 this happens
// at a handful of the ~10^7 activations and moves gradients by 10^-3 to 10^-2 relative, in
// exact arithmetic too: the double network with inputs and parameters moved by 2^-24 differs
// from itself by as much (LIGHTUNET_FIDELITY_CONDITIONING=1 prints that; docs/design.md).
// - Smooth twins (LeakyReLU slope 0.99, strided down-sampling) of the BraTS networks: the same
//   kernels, sizes, norms, heads and losses with the branch flips 100x smaller, so the float
//   arithmetic itself is measured: every tensor within 1e-3 (measured: 1e-7 .. 2e-4).
// - The networks users train (ReLU, max-pool): every tensor within 2e-2 and all gradients
//   together within 5e-3 (measured: up to 8e-3 and 2e-3); the in-place bug this suite was
//   written for gave 0.1 .. 0.5.
//
// Each measurement prints one line (run this binary directly to see them; with
// LIGHTUNET_FIDELITY_VERBOSE=1 every tensor's error too).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <lightunet/lightunet.hpp>

#include "../test_support.hpp"

using namespace lightunet;
using lightunet::testing::parameter_segments;
using lightunet::testing::Rng;

namespace {

struct Bounds {
    double tensor, all, input;  // relative L2 errors of gradients
    double probs = 1e-3, loss = 1e-5;
};
constexpr Bounds smooth{.tensor = 1e-3, .all = 1e-3, .input = 1e-3};
constexpr Bounds kinked{.tensor = 2e-2, .all = 5e-3, .input = 2e-2};

double norm(const std::vector<double>& v, std::size_t offset, std::size_t count) {
    double s = 0;
    for (std::size_t i = offset; i < offset + count; ++i) s += v[i] * v[i];
    return std::sqrt(s);
}

double distance(const std::vector<double>& a, const std::vector<double>& b, std::size_t offset, std::size_t count) {
    double s = 0;
    for (std::size_t i = offset; i < offset + count; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
    return std::sqrt(s);
}

template <class T>
std::vector<double> widened(const T* data, std::size_t count) {
    return std::vector<double>(data, data + count);
}

// Inputs: smooth structures plus noise, so the network sees image-like statistics; labels: disks
// or balls (softmax: one class per blob, nested blobs of classes 1..3 like BraTS's edema, core
// and enhancing tumour; sigmoid: nested regions, channel k inside channel k - 1).
struct Batch {
    Shape shape;
    std::vector<double> x;
    std::vector<std::uint8_t> labels;
};

Batch make_batch(const UNetConfig& c, const Shape& s, std::uint64_t seed) {
    Rng rng(seed);
    Batch b{s, std::vector<double>(s.size()), {}};
    const std::size_t plane = s.spatial();
    const int label_channels = c.head == Head::softmax ? 1 : c.classes;
    b.labels.assign(std::size_t(s.n) * label_channels * plane, 0);
    for (int n = 0; n < s.n; ++n) {
        struct Blob {
            double z, y, x, r;
        };
        std::vector<Blob> blobs;
        for (int k = 0; k < 3; ++k)
            blobs.push_back({rng.uniform(0.3, 0.7) * s.d, rng.uniform(0.25, 0.75) * s.h, rng.uniform(0.25, 0.75) * s.w,
                             rng.uniform(0.08, 0.2) * std::min(s.h, s.w)});
        const double fz = rng.uniform(0.5, 2.0), fy = rng.uniform(0.5, 2.0), fx = rng.uniform(0.5, 2.0);
        for (int z = 0; z < s.d; ++z)
            for (int y = 0; y < s.h; ++y)
                for (int x = 0; x < s.w; ++x) {
                    const std::size_t at = (std::size_t(z) * s.h + y) * s.w + x;
                    int inside = 0;  // how deep into the nested blob of the first centre
                    for (int k = 0; k < 3; ++k) {
                        const Blob& bl = blobs[std::size_t(k)];
                        const double dz = s.d > 1 ? z - bl.z : 0.0, dy = y - bl.y, dx = x - bl.x;
                        const double r2 = dz * dz + dy * dy + dx * dx;
                        // Blob k holds three nested shells: radius r, 0.6 r and 0.3 r.
                        for (int shell = 0; shell < 3; ++shell) {
                            const double r = bl.r * (1.0 - 0.35 * shell);
                            if (r2 < r * r) inside = std::max(inside, shell + 1);
                        }
                    }
                    if (c.head == Head::softmax) {
                        b.labels[std::size_t(n) * plane + at] = std::uint8_t(std::min(inside, c.classes - 1));
                    } else {
                        for (int k = 0; k < c.classes; ++k)
                            b.labels[(std::size_t(n) * c.classes + k) * plane + at] = inside > k ? 1 : 0;
                    }
                    for (int ch = 0; ch < s.c; ++ch) {
                        const double smooth = std::sin(fz * z * 0.11 + ch) * std::cos(fy * y * 0.07 - ch) +
                                              0.5 * std::sin(fx * x * 0.05 + 2.0 * ch);
                        b.x[(std::size_t(n) * s.c + ch) * plane + at] = smooth + 0.8 * inside + 0.3 * rng.normal();
                    }
                }
    }
    return b;
}

// One forward + backward of one loss: probabilities, loss, parameter and input gradients.
struct Step {
    double loss = 0;
    std::vector<double> probs, grads, input_grad;
};

template <class Net>
Step run_step(Net& net, const Batch& b, const DiceLoss& loss) {
    using T = typename Net::scalar;
    Tensor<T> x(b.shape);
    std::copy(b.x.begin(), b.x.end(), x.data());
    const int label_channels = Net::config.head == Head::softmax ? 1 : Net::config.classes;
    Tensor<std::uint8_t> labels(Shape{b.shape.n, label_channels, b.shape.d, b.shape.h, b.shape.w});
    std::copy(b.labels.begin(), b.labels.end(), labels.data());
    Step s;
    const Tensor<T>& probs = net.forward(x, Mode::train);
    s.probs = widened(probs.data(), probs.size());
    Tensor<T> input_grad;
    s.loss = net.backward(x, labels, loss, &input_grad);
    s.grads = widened(net.gradients().data(), net.gradients().size());
    s.input_grad = widened(input_grad.data(), input_grad.size());
    return s;
}

std::string loss_name(const DiceLoss& l) {
    return std::string(l.batch_dice ? "batch Dice" : "Dice") + (l.ce_weight > 0 ? " + CE" : "");
}

// A conv bias followed by batch or instance norm has a gradient of exactly zero in exact
// arithmetic (the norm subtracts the mean the bias shifts): both precisions return rounding
// noise there, and a relative error of noise against noise means nothing. Such a tensor passes
// when its fp32 values are noise on the scale of the same convolution's weight gradient.
bool bias_before_norm(const UNetConfig& c, const std::string& name) {
    const bool mean_removing = c.norm == Norm::batch || c.norm == Norm::instance;
    return mean_removing && (name.ends_with(".conv1.bias") || name.ends_with(".conv2.bias"));
}

struct Worst {
    double value = 0;
    std::string where;
    void take(double v, const std::string& w) {
        if (v >= value) value = v, where = w;
    }
};

template <UNetConfig C>
void check_fidelity(const char* title, const Shape& shape, std::initializer_list<ConvAlgorithm> algorithms,
                    const Bounds& bounds, std::uint64_t seed) {
    // Per-sample Dice, and batch Dice + CE as the BraTS program trains.
    const std::vector<DiceLoss> losses = {DiceLoss{}, DiceLoss{.batch_dice = true, .ce_weight = 1.0}};
    const Batch batch = make_batch(C, shape, seed);
    const auto segments = parameter_segments(C);

    auto single = std::make_unique<UNet<C, cpu, float>>(seed);
    auto twin = std::make_unique<UNet<C, cpu, double>>(seed);
    std::copy(single->parameters().begin(), single->parameters().end(), twin->parameters().begin());
    std::copy(single->buffers().begin(), single->buffers().end(), twin->buffers().begin());
    std::vector<Step> reference;
    for (const DiceLoss& loss : losses) reference.push_back(run_step(*twin, batch, loss));
    if (std::getenv("LIGHTUNET_FIDELITY_CONDITIONING")) {
        // The problem's own sensitivity: the double network with parameters and input moved by
        // about one float rounding (relative 2^-24).
        Rng jitter(seed + 99);
        for (auto& v : twin->parameters()) v *= 1.0 + std::ldexp(jitter.uniform(-1.0, 1.0), -24);
        Batch moved = batch;
        for (auto& v : moved.x) v *= 1.0 + std::ldexp(jitter.uniform(-1.0, 1.0), -24);
        for (std::size_t li = 0; li < losses.size(); ++li) {
            const Step got = run_step(*twin, moved, losses[li]);
            const Step& want = reference[li];
            std::printf("conditioning | %s, %s | all grads %.1e | input grad %.1e\n", title, loss_name(losses[li]).c_str(),
                        distance(got.grads, want.grads, 0, want.grads.size()) / norm(want.grads, 0, want.grads.size()),
                        distance(got.input_grad, want.input_grad, 0, want.input_grad.size()) /
                            norm(want.input_grad, 0, want.input_grad.size()));
            for (const auto& seg : segments)
                std::printf("  %-22s rel %.2e\n", seg.name.c_str(),
                            distance(got.grads, want.grads, seg.offset, seg.size) / norm(want.grads, seg.offset, seg.size));
        }
    }
    twin.reset();

    for (ConvAlgorithm algorithm : algorithms) {
        single->set_conv_algorithm(algorithm);
        for (std::size_t li = 0; li < losses.size(); ++li) {
            // The same starting point for every run: batch norm's running statistics do not
            // enter a training-mode pass, but keep the buffers identical anyway.
            const Step got = run_step(*single, batch, losses[li]);
            const Step& want = reference[li];
            const std::string run = std::string(title) + ", " + loss_name(losses[li]) + ", " + to_string(algorithm);
            INFO(run);
            const double loss_error = std::abs(got.loss - want.loss) / std::abs(want.loss);
            const double prob_error = distance(got.probs, want.probs, 0, want.probs.size()) / norm(want.probs, 0, want.probs.size());
            const double input_error =
                distance(got.input_grad, want.input_grad, 0, want.input_grad.size()) / norm(want.input_grad, 0, want.input_grad.size());
            const double all_error = distance(got.grads, want.grads, 0, want.grads.size()) / norm(want.grads, 0, want.grads.size());
            Worst worst, worst_zero;
            double first_conv = 0;
            for (std::size_t k = 0; k < segments.size(); ++k) {
                const auto& seg = segments[k];
                const double ref_norm = norm(want.grads, seg.offset, seg.size);
                const double err = distance(got.grads, want.grads, seg.offset, seg.size);
                INFO(seg.name << ": |fp32 - fp64| = " << err << ", |fp64| = " << ref_norm);
                if (std::getenv("LIGHTUNET_FIDELITY_VERBOSE"))
                    std::printf("  %-22s rel %.2e  |fp64| %.3e\n", seg.name.c_str(), err / ref_norm, ref_norm);
                if (bias_before_norm(C, seg.name)) {
                    // The weight gradient is the segment before the bias.
                    const double weight_norm = norm(want.grads, segments[k - 1].offset, segments[k - 1].size);
                    REQUIRE(weight_norm > 0);
                    const double noise = norm(got.grads, seg.offset, seg.size) / weight_norm;
                    worst_zero.take(noise, seg.name);
                    CHECK(noise < 1e-4);
                    continue;
                }
                REQUIRE(ref_norm > 0);
                worst.take(err / ref_norm, seg.name);
                if (seg.name == "enc0.conv1.weight") first_conv = err / ref_norm;
                CHECK(err / ref_norm < bounds.tensor);
            }
            std::printf("fidelity | %-62s | loss %.1e | probs %.1e | all grads %.1e | enc0.conv1.weight %.1e | worst tensor "
                        "%.1e (%s) | input grad %.1e | zero-mean biases %.1e\n",
                        run.c_str(), loss_error, prob_error, all_error, first_conv, worst.value, worst.where.c_str(), input_error,
                        worst_zero.value);
            std::fflush(stdout);
            CHECK(loss_error < bounds.loss);
            CHECK(prob_error < bounds.probs);
            CHECK(input_error < bounds.input);
            CHECK(all_error < bounds.all);
        }
    }
}

// The networks users train: the BraTS 2D network (the program's regions model has widths
// 24..384; 32..512 is the common one) and a 3D network.
constexpr UNetConfig brats2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512},
                             .norm = Norm::batch, .act = Act::relu, .head = Head::softmax};
constexpr UNetConfig brats3d{.dims = 3, .in_channels = 4, .classes = 3, .widths = {16, 32, 64, 128},
                             .norm = Norm::instance, .act = Act::relu, .head = Head::sigmoid};
// Smooth twins: the same sizes, both norms, both heads, both up-sampling layers.
constexpr UNetConfig smooth2d_batch{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512},
                                    .norm = Norm::batch, .act = Act::leaky_relu, .down = Down::strided_conv,
                                    .up = Up::transposed_conv, .head = Head::softmax, .leaky_slope = 0.99};
constexpr UNetConfig smooth2d_instance{.dims = 2, .in_channels = 4, .classes = 3, .widths = {32, 64, 128, 256, 512},
                                       .norm = Norm::instance, .act = Act::leaky_relu, .down = Down::strided_conv,
                                       .up = Up::interpolate_conv, .head = Head::sigmoid, .leaky_slope = 0.99};
constexpr UNetConfig smooth3d_instance{.dims = 3, .in_channels = 4, .classes = 3, .widths = {16, 32, 64, 128},
                                       .norm = Norm::instance, .act = Act::leaky_relu, .down = Down::strided_conv,
                                       .up = Up::transposed_conv, .head = Head::sigmoid, .leaky_slope = 0.99};
constexpr UNetConfig smooth3d_batch{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128},
                                    .norm = Norm::batch, .act = Act::leaky_relu, .down = Down::strided_conv,
                                    .up = Up::interpolate_conv, .head = Head::softmax, .leaky_slope = 0.99};

// The probe: a two-level 2D network at growing planes.
constexpr UNetConfig probe2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64}, .norm = Norm::batch,
                             .act = Act::relu};

constexpr auto all_2d = {ConvAlgorithm::automatic, ConvAlgorithm::direct, ConvAlgorithm::winograd};
constexpr auto all_3d = {ConvAlgorithm::automatic, ConvAlgorithm::direct};

}  // namespace

TEST_CASE("fp32 arithmetic equals fp64 within 1e-3 on smooth twins of the BraTS networks", "[fidelity][smooth]") {
    SECTION("2D 32..512, 240 x 240, batch 2: batch norm, transposed conv, softmax") {
        check_fidelity<smooth2d_batch>("smooth 2D batch/softmax 2x4x240^2", {2, 4, 1, 240, 240}, all_2d, smooth, 11);
    }
    SECTION("2D 32..512, 240 x 240, batch 2: instance norm, interpolation, sigmoid") {
        check_fidelity<smooth2d_instance>("smooth 2D instance/sigmoid 2x4x240^2", {2, 4, 1, 240, 240}, all_2d, smooth, 12);
    }
    SECTION("3D 16..128, 64^3: instance norm, transposed conv, sigmoid") {
        check_fidelity<smooth3d_instance>("smooth 3D instance/sigmoid 1x4x64^3", {1, 4, 64, 64, 64}, all_3d, smooth, 13);
    }
    SECTION("3D 16..128, 64^3, batch 2: batch norm, interpolation, softmax") {
        check_fidelity<smooth3d_batch>("smooth 3D batch/softmax 2x4x64^3", {2, 4, 64, 64, 64}, all_3d, smooth, 14);
    }
}

TEST_CASE("fp32 equals fp64 up to branch flips on the ReLU/max-pool networks users train", "[fidelity][kinked]") {
    SECTION("2D 32..512, 240 x 240, batch 2: batch norm, ReLU, max-pool, softmax") {
        check_fidelity<brats2d>("2D batch/ReLU/max-pool/softmax 2x4x240^2", {2, 4, 1, 240, 240}, all_2d, kinked, 15);
    }
    SECTION("3D 16..128, 64^3: instance norm, ReLU, max-pool, sigmoid") {
        check_fidelity<brats3d>("3D instance/ReLU/max-pool/sigmoid 1x4x64^3", {1, 4, 64, 64, 64}, all_3d, kinked, 16);
    }
}

TEST_CASE("fp32 equals fp64 on a two-level 2D network from 16 x 16 to 240 x 240", "[fidelity][probe]") {
    for (int size : {16, 64, 128, 240}) {
        const std::string title = "probe 2D 32,64 batch/ReLU/softmax 2x4x" + std::to_string(size) + "^2";
        check_fidelity<probe2d>(title.c_str(), {2, 4, 1, size, size}, {ConvAlgorithm::automatic}, kinked, 20 + std::uint64_t(size));
    }
}

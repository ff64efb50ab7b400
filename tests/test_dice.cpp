// Dice loss values on cases small enough to work out by hand, and the model's checks of labels.
#include <catch2/catch.hpp>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <lightunet/lightunet.hpp>

#include "test_support.hpp"

using namespace lightunet;
using lightunet::testing::thrown_message;

namespace {

constexpr double s = 1e-5;  // DiceLoss's default smoothing

// probs [n][c][voxel]; targets [n][voxel] (softmax) or [n][c][voxel] (sigmoid).
template <class T = double>
double dice(Head head, int images, int classes, const std::vector<double>& probs, const std::vector<std::uint8_t>& target,
            const DiceLoss& o = {}) {
    const std::size_t plane = probs.size() / (std::size_t(images) * classes);
    REQUIRE(probs.size() == plane * images * classes);
    REQUIRE(target.size() == (head == Head::softmax ? plane * images : probs.size()));
    const std::vector<T> p(probs.begin(), probs.end());
    std::vector<T> grad(p.size());
    std::vector<double> sums(3 * std::size_t(images) * classes);
    const double loss = cpu_kernels::dice_loss(head, images, classes, std::ptrdiff_t(plane), p.data(), target.data(), o,
                                               grad.data(), sums.data());
    for (T g : grad) REQUIRE(std::isfinite(double(g)));
    return loss;
}

// Whether the message holds n as a whole number (not as part of another).
bool names_number(const std::string& message, long n) {
    std::string token;
    for (char ch : message + " ") {
        if (std::isdigit(static_cast<unsigned char>(ch))) {
            token += ch;
        } else if (!token.empty()) {
            if (std::stol(token) == n) return true;
            token.clear();
        }
    }
    return false;
}

}  // namespace

TEST_CASE("softmax Dice loss on a hand-worked 1 x 2 x 1x2x2 case", "[dice]") {
    // Voxels:        0    1    2    3
    // p(class 0):   0.9  0.2  0.6  0.1
    // p(class 1):   0.1  0.8  0.4  0.9
    // label:         0    1    0    1
    // Class 0: I = 0.9 + 0.6 = 1.5, P = 1.8, G = 2  -> dice (3.0 + s) / (3.8 + s)
    // Class 1: I = 0.8 + 0.9 = 1.7, P = 2.2, G = 2  -> dice (3.4 + s) / (4.2 + s)
    const std::vector<double> p = {0.9, 0.2, 0.6, 0.1, 0.1, 0.8, 0.4, 0.9};
    const std::vector<std::uint8_t> t = {0, 1, 0, 1};
    const double d0 = (3.0 + s) / (3.8 + s), d1 = (3.4 + s) / (4.2 + s);
    SECTION("with background: 1 - mean over both classes (= 0.2005007494)") {
        CHECK(dice(Head::softmax, 1, 2, p, t) == Approx(1 - 0.5 * (d0 + d1)).epsilon(1e-12));
        CHECK(dice(Head::softmax, 1, 2, p, t) == Approx(0.2005007494).epsilon(1e-9));
    }
    SECTION("without background: class 1 only (= 0.1904757370)") {
        CHECK(dice(Head::softmax, 1, 2, p, t, {.include_background = false}) == Approx(1 - d1).epsilon(1e-12));
        CHECK(dice(Head::softmax, 1, 2, p, t, {.include_background = false}) == Approx(0.1904757370).epsilon(1e-9));
    }
    SECTION("plus cross-entropy: mean of -log p(label) = -(ln .9 + ln .8 + ln .6 + ln .9) / 4") {
        const double ce = -(std::log(0.9) + std::log(0.8) + std::log(0.6) + std::log(0.9)) / 4;
        CHECK(ce == Approx(0.2361725516).epsilon(1e-9));
        CHECK(dice(Head::softmax, 1, 2, p, t, {.ce_weight = 1.0}) == Approx(1 - 0.5 * (d0 + d1) + ce).epsilon(1e-12));
        CHECK(dice(Head::softmax, 1, 2, p, t, {.ce_weight = 0.5}) == Approx(1 - 0.5 * (d0 + d1) + 0.5 * ce).epsilon(1e-12));
    }
    SECTION("a larger smoothing term") {
        CHECK(dice(Head::softmax, 1, 2, p, t, {.smooth = 1.0}) == Approx(1 - 0.5 * (4.0 / 4.8 + 4.4 / 5.2)).epsilon(1e-12));
    }
    SECTION("float probabilities give the same value") {
        CHECK(dice<float>(Head::softmax, 1, 2, p, t) == Approx(1 - 0.5 * (d0 + d1)).epsilon(1e-6));
    }
}

TEST_CASE("softmax Dice loss per sample and over the batch", "[dice]") {
    // Image 0 as above. Image 1:
    // p(class 0):   0.5  0.5  0.3  0.7
    // p(class 1):   0.5  0.5  0.7  0.3
    // label:         1    1    1    0
    // Class 0: I = 0.7, P = 2.0, G = 1;  class 1: I = 1.7, P = 2.0, G = 3.
    const std::vector<double> p = {0.9, 0.2, 0.6, 0.1, 0.1, 0.8, 0.4, 0.9, 0.5, 0.5, 0.3, 0.7, 0.5, 0.5, 0.7, 0.3};
    const std::vector<std::uint8_t> t = {0, 1, 0, 1, 1, 1, 1, 0};
    SECTION("per sample: the mean of four Dice values") {
        const double want = 1 - 0.25 * ((3.0 + s) / (3.8 + s) + (3.4 + s) / (4.2 + s) + (1.4 + s) / (3.0 + s) + (3.4 + s) / (5.0 + s));
        CHECK(dice(Head::softmax, 2, 2, p, t) == Approx(want).epsilon(1e-12));
    }
    SECTION("batch Dice: sums over both images, then one Dice per class") {
        // Class 0: I = 2.2, P = 3.8, G = 3;  class 1: I = 3.4, P = 4.2, G = 5.
        const double want = 1 - 0.5 * ((4.4 + s) / (6.8 + s) + (6.8 + s) / (9.2 + s));
        CHECK(dice(Head::softmax, 2, 2, p, t, {.batch_dice = true}) == Approx(want).epsilon(1e-12));
    }
    SECTION("batch Dice without background") {
        CHECK(dice(Head::softmax, 2, 2, p, t, {.include_background = false, .batch_dice = true}) ==
              Approx(1 - (6.8 + s) / (9.2 + s)).epsilon(1e-12));
    }
}

TEST_CASE("softmax Dice loss limits: perfect, disjoint, empty", "[dice]") {
    const std::vector<std::uint8_t> t = {0, 1, 0, 1};
    SECTION("a perfect prediction gives 0") {
        CHECK(dice(Head::softmax, 1, 2, {1, 0, 1, 0, 0, 1, 0, 1}, t) == Approx(0.0).margin(1e-12));
        CHECK(dice(Head::softmax, 1, 2, {1, 0, 1, 0, 0, 1, 0, 1}, t, {.ce_weight = 1.0}) == Approx(0.0).margin(1e-11));
    }
    SECTION("a disjoint prediction gives 1 - s / (4 + s)") {
        CHECK(dice(Head::softmax, 1, 2, {0, 1, 0, 1, 1, 0, 1, 0}, t) == Approx(1 - s / (4 + s)).epsilon(1e-12));
        CHECK(dice(Head::softmax, 1, 2, {0, 1, 0, 1, 1, 0, 1, 0}, t) > 0.99999);
    }
    SECTION("a class absent from labels and prediction counts as a perfect match (s / s)") {
        // 3 classes, class 2 nowhere: dice 1; classes 0 and 1 perfect.
        CHECK(dice(Head::softmax, 1, 3, {1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0}, t) == Approx(0.0).margin(1e-12));
        // A little probability on the absent class: its Dice is s / (0.04 + s), nearly 0.
        const std::vector<double> p = {0.99, 0, 0.99, 0, 0, 0.99, 0, 0.99, 0.01, 0.01, 0.01, 0.01};
        const double d01 = (2 * 1.98 + s) / (1.98 + 2 + s);
        CHECK(dice(Head::softmax, 1, 3, p, t) == Approx(1 - (2 * d01 + s / (0.04 + s)) / 3).epsilon(1e-12));
    }
}

TEST_CASE("sigmoid Dice loss on a hand-worked 1 x 2 x 1x2x2 case", "[dice]") {
    // Channel 0: p 0.8 0.3 0.6 0.1, mask 1 0 1 1  -> I = 1.5, P = 1.8, G = 3
    // Channel 1: p 0.2 0.9 0.4 0.7, mask 0 1 0 0  -> I = 0.9, P = 2.2, G = 1
    const std::vector<double> p = {0.8, 0.3, 0.6, 0.1, 0.2, 0.9, 0.4, 0.7};
    const std::vector<std::uint8_t> t = {1, 0, 1, 1, 0, 1, 0, 0};
    const double want = 1 - 0.5 * ((3.0 + s) / (4.8 + s) + (1.8 + s) / (3.2 + s));
    SECTION("Dice: 1 - (3 / 4.8 + 1.8 / 3.2) / 2, about 0.40625") {
        CHECK(dice(Head::sigmoid, 1, 2, p, t) == Approx(want).epsilon(1e-12));
        CHECK(dice(Head::sigmoid, 1, 2, p, t) == Approx(1 - 0.5 * (3.0 / 4.8 + 1.8 / 3.2)).epsilon(1e-5));
    }
    SECTION("include_background has no meaning for a sigmoid head: every channel counts") {
        CHECK(dice(Head::sigmoid, 1, 2, p, t, {.include_background = false}) == Approx(want).epsilon(1e-12));
    }
    SECTION("plus binary cross-entropy, the mean over all 8 voxel-channels") {
        const double bce = -(std::log(0.8) + std::log(0.7) + std::log(0.6) + std::log(0.1) + std::log(0.8) + std::log(0.9) +
                             std::log(0.6) + std::log(0.3)) /
                           8;
        CHECK(dice(Head::sigmoid, 1, 2, p, t, {.ce_weight = 1.0}) == Approx(want + bce).epsilon(1e-12));
    }
    SECTION("a perfect prediction gives 0, a disjoint one nearly 1") {
        CHECK(dice(Head::sigmoid, 1, 2, {1, 0, 1, 1, 0, 1, 0, 0}, t) == Approx(0.0).margin(1e-12));
        const double d = 1 - 0.5 * (s / (1 + 3 + s) + s / (3 + 1 + s));
        CHECK(dice(Head::sigmoid, 1, 2, {0, 1, 0, 0, 1, 0, 1, 1}, t) == Approx(d).epsilon(1e-12));
    }
    SECTION("an empty mask predicted empty is a perfect match; small false positives are not") {
        const std::vector<std::uint8_t> empty0 = {0, 0, 0, 0, 0, 1, 0, 0};
        CHECK(dice(Head::sigmoid, 1, 2, {0, 0, 0, 0, 0, 1, 0, 0}, empty0) == Approx(0.0).margin(1e-12));
        // p = 0.001 on the empty channel: its Dice is s / (0.004 + s) ~ 0.0025, so the loss is ~0.5.
        const std::vector<double> fp = {0.001, 0.001, 0.001, 0.001, 0, 1, 0, 0};
        CHECK(dice(Head::sigmoid, 1, 2, fp, empty0) == Approx(1 - 0.5 * (s / (0.004 + s) + 1)).epsilon(1e-12));
        // A large smoothing term forgives them: Dice 1 / 1.004.
        CHECK(dice(Head::sigmoid, 1, 2, fp, empty0, {.smooth = 1.0}) == Approx(1 - 0.5 * (1 / 1.004 + 1)).epsilon(1e-12));
    }
}

namespace {
constexpr UNetConfig softmax_net{.dims = 2, .in_channels = 1, .classes = 3, .widths = {4, 8}};
constexpr UNetConfig sigmoid_net{.dims = 2, .in_channels = 1, .classes = 3, .widths = {4, 8}, .head = Head::sigmoid};

template <UNetConfig C>
struct LabelFixture {
    using Net = UNet<C>;
    Net net{5};
    Tensor<float> x{Shape{2, 1, 1, 4, 6}};
    typename Net::Labels labels{Shape{2, C.head == Head::softmax ? 1 : C.classes, 1, 4, 6}};
    LabelFixture() {
        lightunet::testing::Rng rng(9);
        lightunet::testing::fill_uniform(x, rng);
        for (auto& t : labels) t = std::uint8_t(rng.index(C.head == Head::softmax ? std::size_t(C.classes) : 2));
        net.forward(x, Mode::train);
    }
};
}  // namespace

TEST_CASE("label values outside the head's range throw std::invalid_argument naming the value", "[dice][labels]") {
    SECTION("softmax: value 200 of 3 classes") {
        LabelFixture<softmax_net> f;
        f.labels[13] = 200;
        const std::string m = thrown_message<std::invalid_argument>([&] { f.net.backward(f.x, f.labels, {}); });
        INFO(m);
        CHECK(names_number(m, 200));
        CHECK(names_number(m, 13));  // and where it is
        // The network stays usable once the labels are fixed.
        f.labels[13] = 2;
        f.net.forward(f.x, Mode::train);
        CHECK(std::isfinite(f.net.backward(f.x, f.labels, {})));
    }
    SECTION("softmax: value == classes is the first invalid one, classes - 1 the last valid one") {
        LabelFixture<softmax_net> f;
        f.labels[47] = 2;
        CHECK_NOTHROW(f.net.backward(f.x, f.labels, {}));
        f.labels[47] = 3;
        f.net.forward(f.x, Mode::train);
        const std::string m = thrown_message<std::invalid_argument>([&] { f.net.backward(f.x, f.labels, {}); });
        INFO(m);
        CHECK(names_number(m, 47));
    }
    SECTION("sigmoid: value 2 in a mask") {
        LabelFixture<sigmoid_net> f;
        f.labels[131] = 2;
        const std::string m = thrown_message<std::invalid_argument>([&] { f.net.backward(f.x, f.labels, {}); });
        INFO(m);
        CHECK(names_number(m, 2));
        CHECK(names_number(m, 131));
    }
    SECTION("sigmoid: 255 (a mask saved as 0/255) is rejected too") {
        LabelFixture<sigmoid_net> f;
        f.labels[0] = 255;
        const std::string m = thrown_message<std::invalid_argument>([&] { f.net.backward(f.x, f.labels, {}); });
        INFO(m);
        CHECK(names_number(m, 255));
    }
}

TEST_CASE("labels of the wrong shape throw ShapeError naming both shapes", "[dice][labels]") {
    SECTION("softmax: one channel of class indices expected, given 3") {
        LabelFixture<softmax_net> f;
        UNet<softmax_net>::Labels wrong(Shape{2, 3, 1, 4, 6});
        const std::string m = thrown_message<ShapeError>([&] { f.net.backward(f.x, wrong, {}); });
        INFO(m);
        CHECK_THAT(m, Catch::Contains("(2, 3, 1, 4, 6)"));
        CHECK_THAT(m, Catch::Contains("(2, 1, 1, 4, 6)"));
    }
    SECTION("sigmoid: a mask per class expected, given one channel") {
        LabelFixture<sigmoid_net> f;
        UNet<sigmoid_net>::Labels wrong(Shape{2, 1, 1, 4, 6});
        const std::string m = thrown_message<ShapeError>([&] { f.net.backward(f.x, wrong, {}); });
        INFO(m);
        CHECK_THAT(m, Catch::Contains("(2, 1, 1, 4, 6)"));
        CHECK_THAT(m, Catch::Contains("(2, 3, 1, 4, 6)"));
    }
    SECTION("spatial extent and batch size must match the input") {
        LabelFixture<softmax_net> f;
        UNet<softmax_net>::Labels small(Shape{2, 1, 1, 4, 4}), batch(Shape{1, 1, 1, 4, 6});
        CHECK_THAT(thrown_message<ShapeError>([&] { f.net.backward(f.x, small, {}); }), Catch::Contains("(2, 1, 1, 4, 4)"));
        CHECK_THAT(thrown_message<ShapeError>([&] { f.net.backward(f.x, batch, {}); }), Catch::Contains("(1, 1, 1, 4, 6)"));
    }
}

// Optimiser updates and learning-rate schedules against values worked out by hand (PyTorch's
// update rules for Adam, AdamW and SGD with momentum).
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <vector>

#include <lightunet/lightunet.hpp>

using namespace lightunet;

namespace {

// p0 and the gradients of two steps, on a 3-element parameter tensor.
const std::vector<double> p0 = {1.0, -2.0, 0.5};
const std::vector<double> g1 = {0.1, -0.2, 0.3};
const std::vector<double> g2 = {-0.05, 0.4, 0.0};

template <class T = double>
Tensor<T> tensor(const std::vector<double>& v) {
    Tensor<T> t(Shape{1, 1, 1, 1, int(v.size())});
    for (std::size_t i = 0; i < v.size(); ++i) t[i] = T(v[i]);
    return t;
}

// Runs two steps; returns the parameters after each.
template <class Opt, class T = double>
std::vector<std::vector<double>> two_steps(Opt& opt) {
    Tensor<T> p = tensor<T>(p0);
    std::vector<std::vector<double>> out;
    for (const auto* g : {&g1, &g2}) {
        Tensor<T> grad = tensor<T>(*g);
        opt.step(p, grad);
        out.emplace_back(p.begin(), p.end());
    }
    return out;
}

void check_values(const std::vector<double>& got, const std::vector<double>& want, double eps = 1e-11) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        INFO("element " << i);
        CHECK(got[i] == Approx(want[i]).epsilon(eps));
    }
}

}  // namespace

TEST_CASE("Adam: two steps by hand", "[optim]") {
    // Step 1: m = 0.1 g, v = 0.001 g^2, bias-corrected m^ = g, v^ = g^2, so the update is
    // lr * g / (|g| + eps): lr * sign(g) up to eps.
    // Step 2, element 0: m = 0.9 * 0.01 + 0.1 * -0.05 = 0.004, v = 0.999 * 1e-5 + 0.001 * 0.0025
    // = 1.249e-5; m^ = 0.004 / 0.19, v^ = 1.249e-5 / 0.001999, update 0.1 * m^ / (sqrt(v^) + eps)
    // = 0.0266337, so p = 0.9 - 0.0266337 = 0.8733663.
    SECTION("plain, lr 0.1") {
        Adam<double> opt(0.1);
        const auto p = two_steps(opt);
        check_values(p[0], {0.9 + 1e-8, -1.9 - 5e-9, 0.4 + 1e-8 / 3});
        check_values(p[1], {0.873366309403, -1.93661035655, 0.332994181079});
        CHECK(opt.steps == 2);
    }
    SECTION("L2 weight decay 0.1 is added to the gradient before the moments") {
        // Step 1: g' = g + 0.1 p = (0.2, -0.4, 0.35): still lr * sign(g') up to eps.
        Adam<double> opt(0.1, 0.1);
        const auto p = two_steps(opt);
        check_values(p[0], {0.900000005, -1.9000000025, 0.400000002857});
        check_values(p[1], {0.819695912582, -1.87528316884, 0.32497436529});
    }
    SECTION("AdamW: decoupled decay p -= lr * wd * p, then the plain Adam step") {
        // Step 1: p = 0.99 p0 - lr * sign(g) = (0.99 - 0.1, -1.98 + 0.1, 0.495 - 0.1).
        auto opt = AdamW<double>(0.1, 0.1);
        CHECK(opt.decoupled);
        const auto p = two_steps(opt);
        check_values(p[0], {0.89000001, -1.880000005, 0.395000003333});
        check_values(p[1], {0.854466309303, -1.8978103565, 0.324044181046});
    }
    SECTION("float parameters follow the same rule") {
        Adam<float> opt(0.1);
        const auto p = two_steps<Adam<float>, float>(opt);
        check_values(p[1], {0.873366309403, -1.93661035655, 0.332994181079}, 2e-5);  // float bias corrections
    }
}

TEST_CASE("SGD with momentum, plain and Nesterov: two steps by hand", "[optim]") {
    SECTION("plain momentum 0.9: v = 0.9 v + g, p -= lr v") {
        // Step 1: v = g1, p = p0 - 0.1 g1. Step 2: v = 0.9 g1 + g2 = (0.04, 0.22, 0.27).
        Sgd<double> opt(0.1, 0.9, false);
        const auto p = two_steps(opt);
        check_values(p[0], {0.99, -1.98, 0.47});
        check_values(p[1], {0.986, -2.002, 0.443});
    }
    SECTION("Nesterov momentum 0.9: p -= lr (g + 0.9 v)") {
        // Step 1: v = g1, p = p0 - 0.19 g1. Step 2: v = (0.04, 0.22, 0.27),
        // p -= 0.1 (g2 + 0.9 v) = 0.1 (-0.014, 0.598, 0.243).
        Sgd<double> opt(0.1, 0.9, true);
        const auto p = two_steps(opt);
        check_values(p[0], {0.981, -1.962, 0.443});
        check_values(p[1], {0.9824, -2.0218, 0.4187});
    }
    SECTION("Nesterov with L2 weight decay 0.01: g' = g + 0.01 p") {
        // Step 1: g' = (0.11, -0.22, 0.305), p = p0 - 0.19 g' = (0.9791, -1.9582, 0.44205).
        Sgd<double> opt(0.1, 0.9, true, 0.01);
        const auto p = two_steps(opt);
        check_values(p[0], {0.9791, -1.9582, 0.44205});
        check_values(p[1], {0.97782971, -2.01265942, 0.416505105});
    }
    SECTION("no momentum: plain gradient descent") {
        Sgd<double> opt(0.5, 0.0, false);
        const auto p = two_steps(opt);
        check_values(p[0], {0.95, -1.9, 0.35});
        check_values(p[1], {0.975, -2.1, 0.35});
    }
}

TEST_CASE("gradient clipping scales the global norm down to clip_norm and reports the norm", "[optim]") {
    SECTION("norm 5 clipped to 1") {
        Sgd<double> opt(1.0, 0.0, false);
        opt.clip_norm = 1.0;
        Tensor<double> p = tensor({0.0, 0.0, 0.0}), g = tensor({3.0, 4.0, 0.0});
        opt.step(p, g);
        CHECK(opt.last_grad_norm == Approx(5.0).epsilon(1e-14));
        // PyTorch's clip_grad_norm_: factor clip / (norm + 1e-6).
        check_values({p.begin(), p.end()}, {-0.6 * 5 / (5 + 1e-6), -0.8 * 5 / (5 + 1e-6), 0.0}, 1e-14);
        CHECK(std::hypot(p[0], p[1]) == Approx(1.0).epsilon(1e-6));
    }
    SECTION("a norm below clip_norm is left alone, and still reported") {
        Sgd<double> opt(1.0, 0.0, false);
        opt.clip_norm = 1.0;
        Tensor<double> p = tensor({0.0, 0.0, 0.0}), g = tensor({0.3, 0.4, 0.0});
        opt.step(p, g);
        CHECK(opt.last_grad_norm == Approx(0.5).epsilon(1e-14));
        check_values({p.begin(), p.end()}, {-0.3, -0.4, 0.0}, 1e-14);
    }
    SECTION("clip_norm 0 disables clipping") {
        Sgd<double> opt(1.0, 0.0, false);
        Tensor<double> p = tensor({0.0, 0.0, 0.0}), g = tensor({30.0, 40.0, 0.0});
        opt.step(p, g);
        CHECK(opt.last_grad_norm == Approx(50.0).epsilon(1e-14));
        check_values({p.begin(), p.end()}, {-30.0, -40.0, 0.0}, 1e-14);
    }
    SECTION("the norm spans every element of a tensor larger than one update block") {
        // 40000 gradients of 0.01: norm 0.01 * sqrt(40000) = 2; clipped to 1, each is 0.005.
        Sgd<double> opt(1.0, 0.0, false);
        opt.clip_norm = 1.0;
        Tensor<double> p(Shape{1, 1, 1, 1, 40000}), g(Shape{1, 1, 1, 1, 40000});
        p.fill(0.0);
        g.fill(0.01);
        opt.step(p, g);
        CHECK(opt.last_grad_norm == Approx(2.0).epsilon(1e-12));
        double lo = 1, hi = -1;
        for (double v : p) lo = std::min(lo, v), hi = std::max(hi, v);
        CHECK(lo == Approx(-0.005 * 2 / (2 + 1e-6)).epsilon(1e-12));
        CHECK(hi == lo);
    }
    SECTION("Adam clips before its moments") {
        // Clipped gradient (0.6, 0.8, 0) * 5 / (5 + 1e-6); the first step is lr * sign up to eps.
        Adam<double> opt(0.1);
        opt.clip_norm = 1.0;
        Tensor<double> p = tensor({0.0, 0.0, 0.0}), g = tensor({3.0, 4.0, 0.0});
        opt.step(p, g);
        CHECK(opt.last_grad_norm == Approx(5.0).epsilon(1e-14));
        const double c = 5 / (5 + 1e-6);
        check_values({p.begin(), p.end()}, {-0.1 * 0.6 * c / (0.6 * c + 1e-8), -0.1 * 0.8 * c / (0.8 * c + 1e-8), 0.0}, 1e-12);
        // Its second moment saw the clipped gradient: v = 0.001 * (0.6 c)^2.
        CHECK(opt.v[0] == Approx(0.001 * 0.36 * c * c).epsilon(1e-12));
    }
}

TEST_CASE("Adam updates every element of a tensor larger than one update block", "[optim]") {
    Adam<double> opt(0.01);
    const int n = int(3 * optim::update_block + 5);
    Tensor<double> p(Shape{1, 1, 1, 1, n}), g(Shape{1, 1, 1, 1, n});
    for (int i = 0; i < n; ++i) p[i] = 1.0, g[i] = (i % 2 ? 0.5 : -0.5);
    opt.step(p, g);
    for (int i = 0; i < n; ++i) {
        const double want = i % 2 ? 1.0 - 0.01 * 0.5 / (0.5 + 1e-8) : 1.0 + 0.01 * 0.5 / (0.5 + 1e-8);
        if (std::abs(p[i] - want) > 1e-14) FAIL("element " << i << ": " << p[i] << ", expected " << want);
    }
    SUCCEED();
}

TEST_CASE("learning-rate schedules", "[optim][schedule]") {
    SECTION("PolyLR: base (1 - step / total)^power") {
        const PolyLR poly{.total_steps = 100, .power = 0.9};
        CHECK(poly(0.01, 0) == Approx(0.01).epsilon(1e-15));
        CHECK(poly(0.01, 50) == Approx(0.005358867312681466).epsilon(1e-13));  // 0.01 * 0.5^0.9
        CHECK(poly(0.01, 90) == Approx(0.01 * std::pow(0.1, 0.9)).epsilon(1e-13));
        CHECK(poly(0.01, 100) == 0.0);
        CHECK(poly(0.01, 150) == 0.0);  // past the end: stays at 0
        const PolyLR linear{.total_steps = 10, .power = 1.0};
        CHECK(linear(1.0, 3) == Approx(0.7).epsilon(1e-15));
    }
    SECTION("CosineLR: min + (base - min) (1 + cos(pi step / total)) / 2") {
        const CosineLR cosine{.total_steps = 100, .min_lr = 0.001};
        CHECK(cosine(0.01, 0) == Approx(0.01).epsilon(1e-15));
        CHECK(cosine(0.01, 25) == Approx(0.008681980515339463).epsilon(1e-13));  // 0.001 + 0.0045 (1 + 1/sqrt 2)
        CHECK(cosine(0.01, 50) == Approx(0.0055).epsilon(1e-13));
        CHECK(cosine(0.01, 100) == Approx(0.001).epsilon(1e-13));
        CHECK(cosine(0.01, 200) == Approx(0.001).epsilon(1e-13));
    }
    SECTION("StepLR: base gamma^(step / step_size), integer division") {
        const StepLR step{.step_size = 30, .gamma = 0.1};
        CHECK(step(0.01, 0) == Approx(0.01).epsilon(1e-15));
        CHECK(step(0.01, 29) == Approx(0.01).epsilon(1e-15));
        CHECK(step(0.01, 30) == Approx(0.001).epsilon(1e-13));
        CHECK(step(0.01, 59) == Approx(0.001).epsilon(1e-13));
        CHECK(step(0.01, 60) == Approx(0.0001).epsilon(1e-13));
    }
    SECTION("a schedule drives an optimiser through its lr field") {
        Sgd<double> opt(0.0, 0.0, false);
        const StepLR schedule{.step_size = 1, .gamma = 0.5};
        Tensor<double> p = tensor({0.0}), g = tensor({1.0});
        for (long s = 0; s < 3; ++s) {
            opt.lr = schedule(1.0, s);
            opt.step(p, g);
        }
        CHECK(p[0] == Approx(-(1.0 + 0.5 + 0.25)).epsilon(1e-15));
    }
}

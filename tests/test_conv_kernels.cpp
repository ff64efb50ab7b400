#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include <lightunet/backend/cpu/conv.hpp>

#include "reference_ops.hpp"

using namespace lightunet;

namespace {

template <class T>
std::vector<T> random_vector(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<T> v(n);
    for (auto& x : v) x = T(u(rng));
    return v;
}

template <class T>
void check_close(const std::vector<T>& a, const std::vector<T>& b, double tol) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (1.0 + std::abs(double(b[i]))));
    CHECK(worst < tol);
}

template <class T>
void check_conv(const ConvProblem& p, int images, double tol) {
    const std::size_t S = p.extent.size();
    auto x = random_vector<T>(std::size_t(images) * p.cin * S, 1);
    auto w = random_vector<T>(p.weight_count(), 2);
    auto b = random_vector<T>(p.cout, 3);
    auto g = random_vector<T>(std::size_t(images) * p.cout * S, 4);
    std::vector<T> ws(cpu_kernels::conv_workspace_size<T>(p));

    // Split the input across two sources, as the decoder's skip concatenation does.
    const int first = p.cin / 2;
    const ChannelSource<T> sources[2] = {{x.data(), first, std::ptrdiff_t(p.cin * S)},
                                         {x.data() + first * S, p.cin - first, std::ptrdiff_t(p.cin * S)}};
    std::vector<T> y(std::size_t(images) * p.cout * S);
    cpu_kernels::conv_forward<T>(p, images, sources, w.data(), b.data(), y.data(), std::ptrdiff_t(p.cout * S), ws.data());
    check_close(y, reference::conv_forward(p, images, x, w, b), tol);

    std::vector<T> dx_ref, dw_ref, db_ref;
    reference::conv_backward(p, images, x, w, g, dx_ref, dw_ref, db_ref);
    std::vector<T> dx(x.size(), T(7)), dw(w.size(), T(0)), db(p.cout, T(0));
    // The first sink accumulates onto 7s, the second overwrites.
    const ChannelSink<T> sinks[2] = {{dx.data(), first, std::ptrdiff_t(p.cin * S), true},
                                     {dx.data() + first * S, p.cin - first, std::ptrdiff_t(p.cin * S), false}};
    cpu_kernels::conv_backward<T>(p, images, sources, w.data(), g.data(), std::ptrdiff_t(p.cout * S), sinks, dw.data(),
                                  db.data(), ws.data());
    for (int n = 0; n < images; ++n)
        for (std::size_t i = 0; i < first * S; ++i) dx_ref[n * p.cin * S + i] += T(7);
    check_close(dx, dx_ref, tol);
    check_close(dw, dw_ref, tol);
    check_close(db, db_ref, tol);
}

}  // namespace

TEMPLATE_TEST_CASE("convolution kernels equal the naive reference on odd sizes", "[conv]", float, double) {
    const double tol = std::is_same_v<TestType, float> ? 2e-4 : 1e-12;
    SECTION("2D 3x3, 5 -> 11 channels, 7x13") { check_conv<TestType>({{1, 7, 13}, 1, 3, 3, 5, 11}, 2, tol); }
    SECTION("2D 3x3, 1 -> 3 channels, 1x1") { check_conv<TestType>({{1, 1, 1}, 1, 3, 3, 2, 3}, 1, tol); }
    SECTION("2D 3x3, 17 -> 9 channels, 19x5") { check_conv<TestType>({{1, 19, 5}, 1, 3, 3, 17, 9}, 1, tol); }
    SECTION("3D 3x3x3, 3 -> 10 channels, 5x6x7") { check_conv<TestType>({{5, 6, 7}, 3, 3, 3, 3, 10}, 2, tol); }
    SECTION("3D 1x1x1, 13 -> 5 channels, 3x4x9") { check_conv<TestType>({{3, 4, 9}, 1, 1, 1, 13, 5}, 1, tol); }
    // Enough input channels that the kernel takes several passes through padded output rows.
    SECTION("3D 3x3x3, 90 -> 9 channels, 3x4x5 (several input-channel passes)") {
        check_conv<TestType>({{3, 4, 5}, 3, 3, 3, 90, 9}, 1, tol);
    }
    SECTION("2D 1x1, 36 -> 4 channels, 9x11") { check_conv<TestType>({{1, 9, 11}, 1, 1, 1, 36, 4}, 2, tol); }
}

// Large enough 2D planes take Winograd F(2x2, 3x3) in float (Fprop, Dgrad and, on larger
// planes, Wgrad): odd sizes (partial tiles at the right and bottom), several bands of tile rows,
// output blocks partly past cout, the direct kernels where a side has too few channels.
TEST_CASE("Winograd convolution equals the naive reference", "[conv][winograd]") {
    using cpu_kernels::winograd::applies;
    const double tol = 2e-4;
    SECTION("17 -> 20 channels, 33x35, two images") {
        const ConvProblem p{{1, 33, 35}, 1, 3, 3, 17, 20};
        REQUIRE(applies<float>(p));
        REQUIRE(cpu_kernels::winograd::applies_to_weight_gradient<float>(p));
        REQUIRE(applies<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 2, tol);
    }
    SECTION("64 -> 6 channels, 130x37: three bands, direct Dgrad") {
        const ConvProblem p{{1, 130, 37}, 1, 3, 3, 64, 6};
        REQUIRE(applies<float>(p));
        REQUIRE(cpu_kernels::winograd::plan<float>(p).band_rows < 65);
        REQUIRE_FALSE(applies<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 1, tol);
    }
    SECTION("5 -> 16 channels, 40x32: direct Fprop, Winograd Dgrad") {
        const ConvProblem p{{1, 40, 32}, 1, 3, 3, 5, 16};
        REQUIRE_FALSE(applies<float>(p));
        REQUIRE(applies<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 1, tol);
    }
    SECTION("16 -> 4 channels, 9x300: rows of tiles wider than one pass") {
        const ConvProblem p{{1, 9, 300}, 1, 3, 3, 16, 4};
        REQUIRE(applies<float>(p));
        check_conv<float>(p, 1, tol);
    }
    SECTION("20 -> 16 channels, 17x16: Winograd Fprop and Dgrad, direct Wgrad (72 tiles)") {
        const ConvProblem p{{1, 17, 16}, 1, 3, 3, 20, 16};
        REQUIRE(applies<float>(p));
        REQUIRE_FALSE(cpu_kernels::winograd::applies_to_weight_gradient<float>(p));
        check_conv<float>(p, 2, tol);
    }
    SECTION("double and 3D stay direct") {
        REQUIRE_FALSE(applies<double>(ConvProblem{{1, 64, 64}, 1, 3, 3, 32, 32}));
        REQUIRE_FALSE(applies<float>(ConvProblem{{16, 16, 16}, 3, 3, 3, 32, 32}));
        REQUIRE_FALSE(applies<float>(ConvProblem{{1, 13, 13}, 1, 3, 3, 32, 32}));  // 49 tiles
    }
}

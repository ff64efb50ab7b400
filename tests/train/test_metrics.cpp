#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include "lightunet/eval/metrics.hpp"
#include "train_test_support.hpp"

using namespace lightunet::eval;

namespace {
std::vector<std::uint8_t> mask(const Grid& g, std::initializer_list<std::array<int, 3>> voxels, std::uint8_t value = 1) {
    std::vector<std::uint8_t> m(g.voxels());
    for (auto [x, y, z] : voxels) m[(std::size_t(z) * g.y + y) * g.x + x] = value;
    return m;
}
}  // namespace

TEST_CASE("Dice per region follows the canonical class sets", "[metrics]") {
    // truth:      0 1 2 3 3 2 0 0
    // prediction: 0 1 2 2 3 0 3 1
    const std::vector<std::uint8_t> truth{0, 1, 2, 3, 3, 2, 0, 0}, pred{0, 1, 2, 2, 3, 0, 3, 1};
    const auto c = region_counts(pred, truth);
    // WT: truth {1,2,3,4,5}, pred {1,2,3,4,6,7}: overlap 4 -> 8/11.
    CHECK(c[0].dice() == Approx(8.0 / 11.0));
    // TC (1,3): truth {1,3,4}, pred {1,4,6,7}: overlap 2 -> 4/7.
    CHECK(c[1].dice() == Approx(4.0 / 7.0));
    // ET (3): truth {3,4}, pred {4,6}: overlap 1 -> 2/4.
    CHECK(c[2].dice() == Approx(0.5));
}

TEST_CASE("Empty masks: both empty score Dice 1 / HD95 0, one empty Dice 0 / HD95 max", "[metrics]") {
    const Grid g{10, 8, 3, {1.0, 1.0, 2.0}};
    const auto empty = mask(g, {});
    const auto one = mask(g, {{2, 2, 1}});
    DiceCounts none;
    CHECK(none.dice() == 1.0);
    CHECK(hd95(empty, empty, g) == 0.0);
    CHECK(hd95(one, empty, g) == Approx(std::sqrt(100.0 + 64.0 + 36.0)));  // the grid's diagonal in mm
    CHECK(hd95(empty, one, g, MetricOptions{373.13}) == Approx(373.13));
    const Grid brats{240, 240, 155};
    CHECK(brats.diagonal_mm() == Approx(373.13).margin(0.01));
    const auto m = evaluate_case("c", one, empty, g);
    CHECK(m.dice[0] == 0.0);
    CHECK(m.hd95[0] == Approx(g.diagonal_mm()));
    // Only class 2 (edema): TC and ET are empty in both, so they score 1 / 0.
    const auto edema = mask(g, {{3, 3, 1}}, 2);
    const auto m2 = evaluate_case("c2", edema, edema, g);
    CHECK(m2.dice == std::array<double, 3>{1.0, 1.0, 1.0});
    CHECK(m2.hd95 == std::array<double, 3>{0.0, 0.0, 0.0});
}

TEST_CASE("HD95 of hand-computed cases", "[metrics]") {
    SECTION("two single voxels, isotropic and anisotropic spacing") {
        Grid g{10, 10, 1};
        const auto a = mask(g, {{2, 2, 0}}), b = mask(g, {{5, 6, 0}});
        CHECK(hd95(a, b, g) == Approx(5.0));
        g.spacing = {2.0, 1.0, 1.0};
        CHECK(hd95(a, b, g) == Approx(std::sqrt(36.0 + 16.0)));
    }
    SECTION("two 3x3 squares four voxels apart") {
        const Grid g{12, 6, 1};
        std::vector<std::uint8_t> a(g.voxels()), b(g.voxels());
        for (int y = 1; y <= 3; ++y)
            for (int x = 1; x <= 3; ++x) a[y * g.x + x] = 1, b[y * g.x + x + 4] = 1;
        // Surface distances A -> B: 2,2,2,3,3,4,4,4; q95 at position 6.65 -> 4. Symmetric.
        CHECK(hd95(a, b, g) == Approx(4.0));
    }
    SECTION("an outlier moves the 95th percentile by interpolation") {
        const Grid g{40, 3, 1};
        std::vector<std::uint8_t> a(g.voxels()), b(g.voxels());
        for (int x = 0; x < 20; ++x) a[x] = 1;
        for (int x = 0; x < 10; ++x) b[x] = 1;
        b[2 * g.x + 39] = 1;
        // A -> B: ten 0s and 1..10, q95 at 18.05 -> 9.05. B -> A: ten 0s and sqrt(404),
        // q95 at 9.5 -> sqrt(404) / 2.
        CHECK(hd95(a, b, g) == Approx(std::sqrt(404.0) / 2.0));
        CHECK(hd95(b, a, g) == Approx(std::sqrt(404.0) / 2.0));
    }
}

TEST_CASE("The distance transform is exact against brute force, with anisotropic spacing", "[metrics]") {
    std::mt19937 gen(42);
    for (int trial = 0; trial < 4; ++trial) {
        const Grid g{7 + trial, 5 + 2 * trial, 4, {0.8, 1.3, 2.5}};
        std::vector<std::uint8_t> f(g.voxels());
        for (auto& v : f) v = std::uniform_int_distribution<int>(0, 19)(gen) == 0;
        f[3] = 1;
        std::vector<double> dist;
        squared_distance_transform(f.data(), g, dist);
        for (int z = 0; z < g.z; ++z)
            for (int y = 0; y < g.y; ++y)
                for (int x = 0; x < g.x; ++x) {
                    double best = std::numeric_limits<double>::infinity();
                    for (int zz = 0; zz < g.z; ++zz)
                        for (int yy = 0; yy < g.y; ++yy)
                            for (int xx = 0; xx < g.x; ++xx)
                                if (f[(std::size_t(zz) * g.y + yy) * g.x + xx]) {
                                    const double dx = (x - xx) * 0.8, dy = (y - yy) * 1.3, dz = (z - zz) * 2.5;
                                    best = std::min(best, dx * dx + dy * dy + dz * dz);
                                }
                    REQUIRE(dist[(std::size_t(z) * g.y + y) * g.x + x] == Approx(best).epsilon(1e-12).margin(1e-12));
                }
    }
}

TEST_CASE("A case is scored on its own grid and spacing", "[metrics]") {
    lightunet::data::Case c;
    c.id = "c7";
    c.extent = {6, 5, 4};
    c.geometry.spacing = {1.0f, 1.0f, 3.0f};
    c.labels.assign(c.extent.voxels(), 0);
    std::vector<std::uint8_t> pred(c.extent.voxels(), 0);
    c.labels[(1 * 5 + 2) * 6 + 2] = 3;  // z 1
    pred[(3 * 5 + 2) * 6 + 2] = 3;      // z 3: 2 slices of 3 mm away
    const auto m = evaluate_case(c, pred);
    CHECK(m.id == "c7");
    CHECK(m.dice[2] == 0.0);
    CHECK(m.hd95[2] == Approx(6.0));
    CHECK(m.hd95[0] == Approx(6.0));
    c.labels.clear();
    CHECK_THROWS_WITH(evaluate_case(c, pred), Catch::Contains("c7"));
}

TEST_CASE("Metrics CSV holds one row per case and the mean", "[metrics]") {
    lightunet::test::ScratchDir dir("metrics");
    std::vector<CaseMetrics> cases{{"a", {1.0, 0.5, 0.0}, {0.0, 2.0, 4.0}}, {"b", {0.5, 0.5, 1.0}, {2.0, 2.0, 0.0}}};
    write_metrics_csv(dir.file("m.csv"), cases);
    std::ifstream f(dir.file("m.csv"));
    std::string header, a, b, mean, extra;
    std::getline(f, header), std::getline(f, a), std::getline(f, b), std::getline(f, mean);
    CHECK(header == "case,dice_WT,dice_TC,dice_ET,hd95_WT,hd95_TC,hd95_ET");
    CHECK(a == "a,1.000000,0.500000,0.000000,0.000000,2.000000,4.000000");
    CHECK(mean == "mean,0.750000,0.500000,0.500000,1.000000,2.000000,2.000000");
    CHECK_FALSE(std::getline(f, extra));
}

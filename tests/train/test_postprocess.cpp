#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "lightunet/eval/postprocess.hpp"

using namespace lightunet::eval;

namespace {
// A label volume of `size` voxels: `enhancing` voxels of class 3 first, then `necrotic` of 1,
// then `edema` of 2, the rest background.
std::vector<std::uint8_t> labels(std::size_t size, std::size_t enhancing, std::size_t necrotic = 0, std::size_t edema = 0) {
    std::vector<std::uint8_t> v(size, 0);
    std::size_t i = 0;
    for (std::size_t k = 0; k < enhancing; ++k) v[i++] = 3;
    for (std::size_t k = 0; k < necrotic; ++k) v[i++] = 1;
    for (std::size_t k = 0; k < edema; ++k) v[i++] = 2;
    return v;
}
}  // namespace

TEST_CASE("Post-processing turns a small enhancing tumour into necrosis and leaves core and whole tumour", "[postprocess]") {
    const PostProcessing p{100};
    auto small = labels(1000, 40, 10, 30);
    const auto before = small;
    // 40 voxels of 2 mm^3: 80 mm^3 < 100.
    CHECK(postprocess(p, small, 2.0) == 40);
    CHECK(std::count(small.begin(), small.end(), 3) == 0);
    CHECK(std::count(small.begin(), small.end(), 1) == 50);
    const auto r_after = region_counts(small, before);
    CHECK(r_after[0].dice() == 1.0);  // WT unchanged
    CHECK(r_after[1].dice() == 1.0);  // TC unchanged
    CHECK(r_after[2].dice() == 0.0);  // ET removed
    CHECK(r_after[2].truth == 40);    // the truth had it

    // The same voxels at 2.5 mm^3 are 100 mm^3: not below the threshold.
    auto at_threshold = before;
    CHECK(postprocess(p, at_threshold, 2.5) == 0);
    CHECK(at_threshold == before);
    // Off, or no enhancing tumour: nothing changes.
    auto off = before;
    CHECK(postprocess(PostProcessing{}, off, 1.0) == 0);
    CHECK(off == before);
    auto none = labels(100, 0, 5, 5);
    CHECK(postprocess(p, none, 1.0) == 0);
    CHECK_THROWS_WITH(postprocess(p, off, 0.0), Catch::Contains("voxel volume"));
}

TEST_CASE("The threshold is chosen by the mean ET Dice of the validation cases", "[postprocess]") {
    // Case A: no ET in the truth, 150 false ET voxels predicted (Dice 0; any threshold > 150 makes it 1).
    // Case B: a true ET of 400 voxels found with 300 of 350 predicted (Dice 600/750 = 0.8).
    // Case C: a true small ET of 60 voxels, 50 of 55 predicted (Dice 100/115): a threshold above 55
    // loses it.
    const auto truth_a = labels(2000, 0, 0, 50), pred_a = labels(2000, 150, 0, 0);
    std::vector<std::uint8_t> truth_b = labels(2000, 400), pred_b(2000, 0);
    for (std::size_t i = 100; i < 450; ++i) pred_b[i] = 3;  // 300 inside the truth, 50 outside
    std::vector<std::uint8_t> truth_c = labels(2000, 60), pred_c(2000, 0);
    for (std::size_t i = 10; i < 65; ++i) pred_c[i] = 3;  // 50 inside, 5 outside
    const std::vector<EnhancingCounts> cases{enhancing_counts(pred_a, truth_a, 1.0), enhancing_counts(pred_b, truth_b, 1.0),
                                             enhancing_counts(pred_c, truth_c, 1.0)};
    const double dice_b = 0.8, dice_c = 100.0 / 115.0;

    // 0 and 50 keep everything; 100 loses C; 200 and 300 fix A and lose C; 400 also loses B.
    const std::vector<double> candidates{0, 50, 100, 200, 300, 400};
    const PostProcessingChoice with_c = choose_postprocessing(cases, candidates);
    REQUIRE(with_c.scores.size() == candidates.size());
    CHECK(with_c.scores[0].mean_et_dice == Approx((0 + dice_b + dice_c) / 3));
    CHECK(with_c.scores[1].mean_et_dice == Approx((0 + dice_b + dice_c) / 3));
    CHECK(with_c.scores[2].mean_et_dice == Approx((0 + dice_b + 0) / 3));
    CHECK(with_c.scores[3].mean_et_dice == Approx((1 + dice_b + 0) / 3));
    CHECK(with_c.scores[3].cases_changed == 2);
    CHECK(with_c.scores[5].mean_et_dice == Approx(1.0 / 3));
    // 0.556 keeping C against 0.6 fixing A: 200 (the smallest of the equal 200 and 300).
    CHECK(with_c.chosen.min_enhancing_mm3 == 200);
    CHECK(with_c.et_dice_without == Approx((dice_b + dice_c) / 3));
    CHECK(with_c.et_dice_with == Approx(0.6));

    // Without case A nothing helps: off.
    const PostProcessingChoice without_a = choose_postprocessing(std::span(cases).subspan(1), candidates);
    CHECK(without_a.chosen.min_enhancing_mm3 == 0);
    CHECK_FALSE(without_a.chosen.active());
    CHECK(without_a.et_dice_with == Approx(without_a.et_dice_without));

    // Voxel volume counts: A's 150 voxels of 8 mm^3 are 1200 mm^3, above every threshold but 2000.
    const std::vector<EnhancingCounts> coarse{enhancing_counts(pred_a, truth_a, 8.0)};
    CHECK(choose_postprocessing(coarse).chosen.min_enhancing_mm3 == 1500);
    // No validation cases: off.
    CHECK(choose_postprocessing({}).chosen.min_enhancing_mm3 == 0);
}

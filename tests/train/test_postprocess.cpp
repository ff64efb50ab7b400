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
// `size` voxels in a row along x, each of `voxel_mm3` (that long, 1 mm by 1 mm).
Grid line(std::size_t size, double voxel_mm3 = 1.0) { return Grid{int(size), 1, 1, {voxel_mm3, 1.0, 1.0}}; }
}  // namespace

TEST_CASE("Post-processing turns a small enhancing tumour into necrosis and leaves core and whole tumour", "[postprocess]") {
    const PostProcessing p{100};
    auto small = labels(1000, 40, 10, 30);
    const auto before = small;
    // 40 voxels of 2 mm^3: 80 mm^3 < 100.
    CHECK(postprocess(p, small, line(1000, 2.0)).enhancing_relabelled == 40);
    CHECK(std::count(small.begin(), small.end(), 3) == 0);
    CHECK(std::count(small.begin(), small.end(), 1) == 50);
    const auto r_after = region_counts(small, before);
    CHECK(r_after[0].dice() == 1.0);  // WT unchanged
    CHECK(r_after[1].dice() == 1.0);  // TC unchanged
    CHECK(r_after[2].dice() == 0.0);  // ET removed
    CHECK(r_after[2].truth == 40);    // the truth had it

    // The same voxels at 2.5 mm^3 are 100 mm^3: not below the threshold.
    auto at_threshold = before;
    CHECK_FALSE(postprocess(p, at_threshold, line(1000, 2.5)).changed());
    CHECK(at_threshold == before);
    // Off, or no enhancing tumour: nothing changes.
    auto off = before;
    CHECK_FALSE(postprocess(PostProcessing{}, off, line(1000)).changed());
    CHECK(off == before);
    auto none = labels(100, 0, 5, 5);
    CHECK_FALSE(postprocess(p, none, line(100)).changed());
    CHECK_THROWS_WITH(postprocess(p, off, line(1000, 0.0)), Catch::Contains("voxel volume"));
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
    const PostProcessingChoice with_c = choose_enhancing_threshold(cases, candidates);
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
    const PostProcessingChoice without_a = choose_enhancing_threshold(std::span(cases).subspan(1), candidates);
    CHECK(without_a.chosen.min_enhancing_mm3 == 0);
    CHECK_FALSE(without_a.chosen.active());
    CHECK(without_a.et_dice_with == Approx(without_a.et_dice_without));

    // Voxel volume counts: A's 150 voxels of 8 mm^3 are 1200 mm^3, above every threshold but 2000.
    const std::vector<EnhancingCounts> coarse{enhancing_counts(pred_a, truth_a, 8.0)};
    CHECK(choose_enhancing_threshold(coarse).chosen.min_enhancing_mm3 == 1500);
    // No validation cases: off.
    CHECK(choose_enhancing_threshold({}).chosen.min_enhancing_mm3 == 0);
}

namespace {
// A 20 x 20 x 20 grid; boxes of a label painted into it.
constexpr int kSide = 20;
struct Volume {
    std::vector<std::uint8_t> labels = std::vector<std::uint8_t>(std::size_t(kSide) * kSide * kSide, 0);
    Grid grid{kSide, kSide, kSide};
    std::uint8_t& at(int x, int y, int z) { return labels[std::size_t((z * kSide + y) * kSide + x)]; }
    // Fills [x0, x1) x [y0, y1) x [z0, z1) with `label`.
    Volume& box(int x0, int x1, int y0, int y1, int z0, int z1, std::uint8_t label) {
        for (int z = z0; z < z1; ++z)
            for (int y = y0; y < y1; ++y)
                for (int x = x0; x < x1; ++x) at(x, y, z) = label;
        return *this;
    }
    std::size_t count(std::uint8_t label) const { return std::size_t(std::count(labels.begin(), labels.end(), label)); }
};
}  // namespace

TEST_CASE("Tumour components under a fraction of the largest become background", "[postprocess]") {
    // The tumour: a 6^3 box of edema (216) with a 2^3 enhancing core (8) inside; touching it only
    // at a corner, a 2^3 necrotic box (8): one 26-connected component of 224. Apart from it: a
    // 3^3 edema blob (27) and a single enhancing voxel (1).
    Volume v;
    v.box(2, 8, 2, 8, 2, 8, 2).box(4, 6, 4, 6, 4, 6, 3).box(8, 10, 8, 10, 8, 10, 1).box(14, 17, 14, 17, 14, 17, 2).box(18, 19, 2, 3, 2, 3, 3);
    const auto before = v.labels;
    REQUIRE(v.count(0) == std::size_t(kSide * kSide * kSide) - 224 - 27 - 1);

    // 0.1 of 224 is 22.4: the 27 stays, the single voxel goes.
    auto kept = v;
    const ComponentsRemoved tenth = remove_small_components(kept.labels, kept.grid, 0.1);
    CHECK(tenth.components == 1);
    CHECK(tenth.voxels == 1);
    CHECK(tenth.kept == 2);
    CHECK(kept.at(18, 2, 2) == 0);
    CHECK(kept.at(15, 15, 15) == 2);
    // 0.2 of 224 is 44.8: only the tumour (its corner-touching necrosis included) is left.
    auto largest = v;
    const ComponentsRemoved fifth = remove_small_components(largest.labels, largest.grid, 0.2);
    CHECK(fifth.components == 2);
    CHECK(fifth.voxels == 28);
    CHECK(largest.count(2) == 216 - 8);
    CHECK(largest.count(3) == 8);
    CHECK(largest.count(1) == 8);
    CHECK(largest.at(9, 9, 9) == 1);
    // The largest alone (fraction 1) is the same here; off (0) and empty volumes change nothing.
    auto alone = v;
    CHECK(remove_small_components(alone.labels, alone.grid, 1.0).voxels == 28);
    CHECK(alone.labels == largest.labels);
    auto off = v;
    CHECK(remove_small_components(off.labels, off.grid, 0.0).voxels == 0);
    CHECK(off.labels == before);
    Volume empty;
    CHECK(remove_small_components(empty.labels, empty.grid, 1.0).components == 0);
    // Two equal largest components both stay at fraction 1.
    Volume twins;
    twins.box(0, 3, 0, 3, 0, 3, 2).box(10, 13, 10, 13, 10, 13, 2);
    CHECK(remove_small_components(twins.labels, twins.grid, 1.0).components == 0);
    // Components do not wrap around the grid's rows: (19, 0, 0) and (0, 1, 0) are neighbours in
    // memory, not in space.
    Volume edges;
    edges.box(19, 20, 0, 1, 0, 1, 2).box(0, 2, 1, 2, 0, 1, 2);
    CHECK(remove_small_components(edges.labels, edges.grid, 1.0).voxels == 1);
    CHECK_THROWS_WITH(remove_small_components(edges.labels, Grid{kSide, kSide, kSide - 1}, 0.5), Catch::Contains("20x20x19"));
    CHECK_THROWS_WITH(remove_small_components(edges.labels, edges.grid, 1.5), Catch::Contains("fraction 1.5"));
    std::vector<std::uint8_t> shorter(edges.labels.begin(), edges.labels.end() - 1);
    CHECK_THROWS_WITH(TumourComponents(edges.labels, edges.grid).remove_small(shorter, 1.0),
                      Catch::Contains(std::to_string(shorter.size()) + " labels, but the components were found in " +
                                      std::to_string(edges.labels.size())));

    // postprocess: the components first, then the enhancing volume of what is left: the lone
    // enhancing voxel is gone, so the 8 of the core decide against a 10 mm^3 threshold.
    auto both = v;
    const PostProcessed done = postprocess(PostProcessing{10, 0.1}, both.labels, both.grid);
    CHECK(done.components.voxels == 1);
    CHECK(done.enhancing_relabelled == 8);
    CHECK(both.count(3) == 0);
    CHECK(both.count(1) == 16);
}

TEST_CASE("The component fraction is chosen by the validation cases' mean Dice, then the ET threshold", "[postprocess]") {
    // Case A: the truth is the tumour box; the prediction adds a far false edema blob of 27.
    // Case B: a multifocal truth: the tumour box and a second true focus of 27, both predicted.
    Volume truth_a, pred_a, truth_b, pred_b;
    truth_a.box(2, 8, 2, 8, 2, 8, 2).box(4, 6, 4, 6, 4, 6, 3);
    pred_a = truth_a;
    pred_a.box(14, 17, 14, 17, 14, 17, 2);
    truth_b = truth_a;
    truth_b.box(14, 17, 14, 17, 14, 17, 2);
    pred_b = truth_b;
    const std::vector<double> fractions{0, 0.1, 0.2, 1};

    // A alone: removing the blob (fractions 0.2 and 1: 27 < 0.2 x 216) makes every region
    // perfect; of the equal best, the larger fraction (A cannot tell them apart).
    const std::vector<ValidationCase> a{{pred_a.labels, truth_a.labels, pred_a.grid}};
    const PostProcessingChoice only_a = choose_postprocessing(a, fractions);
    REQUIRE(only_a.component_scores.size() == 4);
    const double wt_with_blob = 2.0 * 216 / (243 + 216);
    CHECK(only_a.component_scores[0].mean_dice == Approx((wt_with_blob + 1 + 1) / 3));
    CHECK(only_a.component_scores[1].mean_dice == Approx(only_a.component_scores[0].mean_dice));
    CHECK(only_a.component_scores[1].cases_changed == 0);
    CHECK(only_a.component_scores[2].mean_dice == Approx(1.0));
    CHECK(only_a.component_scores[2].cases_changed == 1);
    CHECK(only_a.chosen.min_component_fraction == 1);
    CHECK(only_a.dice_without == Approx(only_a.component_scores[0].mean_dice));
    CHECK(only_a.dice_after_components == Approx(1.0));
    CHECK(only_a.chosen.min_enhancing_mm3 == 0);  // ET is right: no threshold helps

    // With B, removing its true second focus costs as much as A gains: no gain, off.
    const std::vector<ValidationCase> ab{{pred_a.labels, truth_a.labels, pred_a.grid}, {pred_b.labels, truth_b.labels, pred_b.grid}};
    const PostProcessingChoice both = choose_postprocessing(ab, fractions);
    CHECK(both.component_scores[2].mean_dice == Approx((1.0 + (wt_with_blob + 1 + 1) / 3) / 2));
    CHECK(both.component_scores[0].mean_dice == Approx(both.component_scores[2].mean_dice));
    CHECK(both.chosen.min_component_fraction == 0);
    CHECK_FALSE(both.chosen.active());

    // The ET threshold is chosen on the predictions as the components leave them: a false
    // enhancing blob of 27 apart from a tumour without ET is removed by the components (0.2 and
    // 1), so no threshold is needed after it; without the component rule a 50 mm^3 threshold
    // would be.
    Volume truth_c, pred_c;
    truth_c.box(2, 8, 2, 8, 2, 8, 2);
    pred_c = truth_c;
    pred_c.box(14, 17, 14, 17, 14, 17, 3);
    const std::vector<ValidationCase> c{{pred_c.labels, truth_c.labels, pred_c.grid}};
    const PostProcessingChoice with_components = choose_postprocessing(c, fractions);
    CHECK(with_components.chosen.min_component_fraction == 1);
    CHECK(with_components.et_dice_without == Approx(1.0));
    CHECK(with_components.chosen.min_enhancing_mm3 == 0);
    const std::vector<double> none{0};
    const PostProcessingChoice without_components = choose_postprocessing(c, none);
    CHECK(without_components.chosen.min_component_fraction == 0);
    CHECK(without_components.et_dice_without == Approx(0.0));
    CHECK(without_components.chosen.min_enhancing_mm3 == 50);
    CHECK(without_components.et_dice_with == Approx(1.0));

    // A gain in the mean that costs a region is not taken (nnU-Net's guard): removing a false
    // edema blob of 36 raises WT more than removing a true enhancing focus of 2 lowers TC and ET.
    Volume truth_d, pred_d;
    truth_d.box(2, 8, 2, 8, 2, 8, 2).box(3, 7, 3, 7, 3, 7, 3).box(18, 20, 18, 19, 0, 1, 3);
    pred_d = truth_d;
    pred_d.box(12, 15, 12, 15, 12, 16, 2);
    const std::vector<ValidationCase> d{{pred_d.labels, truth_d.labels, pred_d.grid}};
    const PostProcessingChoice guarded = choose_postprocessing(d, fractions);
    CHECK(guarded.component_scores[2].mean_dice > guarded.component_scores[0].mean_dice);
    CHECK(guarded.component_scores[2].region_dice[0] > guarded.component_scores[0].region_dice[0]);
    CHECK(guarded.component_scores[2].region_dice[2] < guarded.component_scores[0].region_dice[2]);
    CHECK(guarded.chosen.min_component_fraction == 0);

    const std::vector<double> without_off{0.1, 0.2};
    CHECK_THROWS_WITH(choose_postprocessing(d, without_off), Catch::Contains("must start with 0"));
    const std::vector<ValidationCase> mismatched{{pred_c.labels, std::span(truth_c.labels).first(10), pred_c.grid}};
    CHECK_THROWS_WITH(choose_postprocessing(mismatched), Catch::Contains("validation case 0"));
    CHECK(choose_postprocessing({}).chosen.min_component_fraction == 0);
}

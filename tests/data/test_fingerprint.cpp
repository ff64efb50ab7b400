#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <vector>

#include "../../examples/brats/plan.hpp"
#include "io_test_support.hpp"
#include "lightunet/io/fingerprint.hpp"
#include "lightunet/io/store.hpp"

namespace io = lightunet::io;
namespace data = lightunet::data;
namespace test = lightunet::test;
using test::ScratchDir;

namespace {
// make_test_case's tumour is a ball around the centre: 7 necrotic voxels (distance^2 <= 1), 26
// enhancing (<= 4), 90 edema (<= 9), whatever the case's extent.
constexpr std::int64_t kNecrotic = 7, kEnhancing = 26, kEdema = 90;
}  // namespace

TEST_CASE("A store's fingerprint: crop extents, spacing, class shares, enhancing-tumour volumes", "[io][store][fingerprint]") {
    ScratchDir dir("fingerprint");
    data::Case a = test::make_test_case("A", {24, 28, 16}, 1);
    data::Case b = test::make_test_case("B", {32, 20, 18}, 2);
    b.geometry.spacing = {2.0f, 1.0f, 1.0f};
    data::Case no_enhancing = test::make_test_case("C", {20, 36, 14}, 3);
    std::replace(no_enhancing.labels.begin(), no_enhancing.labels.end(), std::uint8_t(3), std::uint8_t(1));
    data::Case unlabelled = test::make_test_case("D", {40, 40, 20}, 4, false);
    {
        io::StoreWriter writer(dir / "store.h5");
        for (const data::Case* c : {&a, &b, &no_enhancing, &unlabelled}) writer.add(*c, data::Edition::brats2017_2021, {});
        writer.finish();
    }
    const io::StoreSource store(dir / "store.h5");
    const io::DatasetFingerprint f = io::fingerprint(store);
    CHECK(f.cases == 4);
    CHECK(f.labelled == 3);
    // Extents: the stored crops of all four cases, upper median of 4 = the third smallest.
    for (int axis = 0; axis < 3; ++axis) {
        std::vector<int> e;
        for (std::size_t i = 0; i < store.size(); ++i) {
            const auto x = store.info(i).extent;
            e.push_back(axis == 0 ? x.x : axis == 1 ? x.y : x.z);
        }
        std::sort(e.begin(), e.end());
        INFO("axis " << axis);
        CHECK(f.min_extent[axis] == e.front());
        CHECK(f.max_extent[axis] == e.back());
        CHECK(f.median_extent[axis] == e[2]);
    }
    CHECK(f.median_extent[0] < 40);  // cropped to the brain: D's 40 voxels are not its crop
    CHECK(f.median_spacing[0] == 1.0);
    // Class shares over the three labelled crops.
    std::int64_t voxels = 0;
    for (std::size_t i = 0; i < 3; ++i) voxels += std::int64_t(store.info(i).extent.voxels());
    CHECK(f.class_fraction[1] == Approx(double(2 * kNecrotic + kNecrotic + kEnhancing) / double(voxels)));
    CHECK(f.class_fraction[2] == Approx(double(3 * kEdema) / double(voxels)));
    CHECK(f.class_fraction[3] == Approx(double(2 * kEnhancing) / double(voxels)));
    // Enhancing tumour: absent in C; 26 mm^3 in A, 52 mm^3 in B (2 mm voxels).
    CHECK(f.cases_without_enhancing == 1);
    CHECK(f.smallest_enhancing_mm3 == Approx(26));
    CHECK(f.median_enhancing_mm3 == Approx(52));
    CHECK(f.median_tumour_fraction > 0);
    CHECK_THAT(io::describe(f), Catch::Contains("cases: 4 (3 labelled)") && Catch::Contains("absent in 1 cases"));
}

TEST_CASE("The training plan follows the fingerprint", "[io][fingerprint][plan]") {
    io::DatasetFingerprint f;
    f.cases = f.labelled = 8;
    f.median_extent = {170, 136, 138};  // BraTS's brain crops: x y z
    f.median_tumour_fraction = 0.05;
    auto value = [](const brats::TrainingPlan& p, const std::string& option) {
        for (const auto& s : p.settings)
            if (s.option == option) return s.value;
        return std::string("(none)");
    };
    const brats::TrainingPlan flat = brats::plan_training(f, "2d");
    CHECK(value(flat, "patch") == "144x176");  // H x W: y x, up to multiples of 16
    CHECK(value(flat, "batch") == "9");         // 8 * 160 * 192 / (144 * 176) = 9.7
    CHECK(value(flat, "foreground") == "0.33");
    CHECK(value(flat, "labels") == "regions");
    CHECK(value(flat, "loss") == "dice_ce");
    const brats::TrainingPlan volume = brats::plan_training(f, "3d");
    // 144 x 144 x 160 (z y x, 176 capped) is over 128^3: the longest axis is cut by 16 until it fits.
    CHECK(value(volume, "patch") == "128x128x128");
    CHECK(value(volume, "batch") == "2");

    // Small crops get the smallest patch (64 in-plane in 2D, 32 in 3D); large ones are capped at 256 (2D).
    f.median_extent = {40, 50, 20};
    CHECK(value(brats::plan_training(f, "2d"), "patch") == "64x64");
    CHECK(value(brats::plan_training(f, "2d"), "batch") == "16");
    CHECK(value(brats::plan_training(f, "3d"), "patch") == "32x64x48");
    f.median_extent = {400, 300, 20};
    CHECK(value(brats::plan_training(f, "2d"), "patch") == "256x256");
    CHECK(value(brats::plan_training(f, "2d"), "batch") == "3");

    // Small tumours: half the patches on tumour.
    f.median_tumour_fraction = 0.01;
    CHECK(value(brats::plan_training(f, "2d"), "foreground") == "0.5");
    f.cases = 0;
    CHECK_THROWS_WITH(brats::plan_training(f, "2d"), Catch::Contains("no cases"));
}

TEST_CASE("The plan takes bf16 where a timed training step says it is faster", "[io][fingerprint][plan]") {
    // AMX tiles against fp32 on the Intel host: about 2.4x; AVX512_BF16 on Zen 5: about 1.4x.
    CHECK(brats::precision_setting(2.40, 1.00).value == "bf16");
    CHECK(brats::precision_setting(1.40, 1.00).value == "bf16");
    CHECK(brats::precision_setting(1.15, 1.00).value == "bf16");
    // vdpbf16ps at half the fp32 rate (an Intel CPU without AMX) makes bf16 slower; a gain within
    // the noise of a few timed steps is not taken either.
    CHECK(brats::precision_setting(1.00, 1.60).value == "fp32");
    CHECK(brats::precision_setting(1.10, 1.00).value == "fp32");
    const auto said = brats::precision_setting(2.0, 0.8);
    CHECK(said.option == "precision");
    CHECK_THAT(said.reason, Catch::Contains("2.000 s in fp32") && Catch::Contains("0.800 s in bf16") && Catch::Contains("2.50x"));
    CHECK_THROWS_WITH(brats::precision_setting(1.0, 0.0), Catch::Contains("0.000000 s (bf16)"));
    CHECK_THROWS_WITH(brats::precision_setting(std::nan(""), 1.0), Catch::Contains("must be positive"));
}

TEST_CASE("A resumed run reads the precision its plan.cfg recorded", "[io][fingerprint][plan]") {
    ScratchDir dir("plan-cfg");
    CHECK(brats::planned_value(dir.path(), "precision").empty());  // no plan.cfg
    {
        std::ofstream f(dir / "plan.cfg");
        f << "# cases: 8 (8 labelled)\ntrain.patch=64x64  # given; planned 144x176\ntrain.batch=9\ntrain.precision=bf16\n"
             "predict.tta=on\n";
    }
    CHECK(brats::planned_value(dir.path(), "precision") == "bf16");
    CHECK(brats::planned_value(dir.path(), "patch") == "64x64");  // a given value, not the planned one
    CHECK(brats::planned_value(dir.path(), "batch") == "9");
    CHECK(brats::planned_value(dir.path(), "foreground").empty());
}

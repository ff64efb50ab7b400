// The BraTS program's networks (examples/brats/models.hpp): each of its compiled configurations
// passes the ONNX checker's full check, and ONNX Runtime runs the 2D and 3D networks (plain, and
// the residual encoder trained with deep supervision) as UNet::predict does, within 1e-4.
#include "../../examples/brats/models.hpp"
#include "onnx_test_support.hpp"

using namespace lightunet;
using namespace lightunet::onnx_test;

namespace {

constexpr UNetConfig resenc2d = brats::variant(brats::slice2d_regions, true, true);
constexpr UNetConfig resenc3d = brats::variant(brats::patch3d_classes, true, true);

}  // namespace

TEST_CASE("onnx export: the BraTS networks pass the ONNX checker's full check", "[onnx]") {
    auto check = []<UNetConfig C>(const Shape& shape) {
        auto model = std::make_unique<UNet<C>>(7);
        randomise(*model, 3);
        check_exports(*model, shape);
    };
    SECTION("2d regions") { check.operator()<brats::slice2d_regions>(Shape{1, 4, 1, 240, 240}); }
    SECTION("2d classes") { check.operator()<brats::slice2d_classes>(Shape{1, 4, 1, 160, 192}); }
    SECTION("3d regions") { check.operator()<brats::patch3d_regions>(Shape{1, 4, 128, 128, 128}); }
    SECTION("3d classes") { check.operator()<brats::patch3d_classes>(Shape{1, 4, 64, 64, 64}); }
    SECTION("2d regions resenc deep supervision") { check.operator()<resenc2d>(Shape{1, 4, 1, 240, 240}); }
    SECTION("3d classes resenc deep supervision") { check.operator()<resenc3d>(Shape{1, 4, 64, 64, 64}); }
}

TEST_CASE("onnx export: ONNX Runtime runs the BraTS networks as predict does", "[onnx][onnxruntime]") {
    const Runtime rt = find_runtime();
    LIGHTUNET_REQUIRE_ONNXRUNTIME(rt);
    TemporaryFolder dir("lightunet_onnx_brats");
    // Timed runs per side (the times are printed, not checked): 1 in the suite, more for a table
    // (docs/onnx.md: LIGHTUNET_ONNX_TIMING_REPEATS=3).
    const char* env = std::getenv("LIGHTUNET_ONNX_TIMING_REPEATS");
    const int repeats = std::clamp(env && *env ? std::atoi(env) : 1, 1, 100);
    std::vector<Job> jobs;
    auto add = [&]<UNetConfig C>(const std::string& name, const Shape& shape, bool fixed) {
        auto model = std::make_unique<UNet<C>>(5);
        model->set_threads(2);
        randomise_trained(*model, 9, Shape{1, shape.c, shape.d, shape.h, shape.w}, 10);
        jobs.push_back(prepare(*model, name, dir.path, shape, fixed, repeats));
    };
    add.operator()<brats::slice2d_regions>("brats_2d_regions_240x240", Shape{1, 4, 1, 240, 240}, true);
    add.operator()<brats::slice2d_classes>("brats_2d_classes_2x160x192", Shape{2, 4, 1, 160, 192}, false);
    add.operator()<brats::patch3d_regions>("brats_3d_regions_64^3", Shape{1, 4, 64, 64, 64}, false);
    add.operator()<brats::patch3d_classes>("brats_3d_classes_32x48x64", Shape{1, 4, 32, 48, 64}, true);
    add.operator()<resenc2d>("brats_2d_regions_resenc_ds_240x240", Shape{1, 4, 1, 240, 240}, true);
    add.operator()<resenc3d>("brats_3d_classes_resenc_ds_48^3", Shape{1, 4, 48, 48, 48}, false);
    run_and_compare(rt, jobs, repeats);
}

// The ONNX export of every kind of op: 2D and 3D, every norm (batch as a node and folded),
// both ways down and up, both heads, the residual encoder and deep supervision (its auxiliary
// heads left out). Each export passes the ONNX checker's full check (symbolic and fixed shapes),
// and ONNX Runtime gives the probabilities of UNet::predict within 1e-4.
#include "onnx_test_support.hpp"

using namespace lightunet;
using namespace lightunet::onnx_test;

namespace {

constexpr UNetConfig plain2d{.dims = 2, .in_channels = 3, .classes = 4, .widths = {8, 16, 32, 64}, .norm = Norm::batch,
                             .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv, .head = Head::softmax};
constexpr UNetConfig instance2d{.dims = 2, .in_channels = 2, .classes = 3, .widths = {8, 16, 24}, .norm = Norm::instance,
                                .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                .head = Head::sigmoid, .leaky_slope = 0.1};
constexpr UNetConfig group_resenc2d{.dims = 2, .in_channels = 4, .classes = 3, .widths = {8, 16, 32, 64}, .norm = Norm::group,
                                    .act = Act::relu, .down = Down::strided_conv, .up = Up::transposed_conv, .head = Head::softmax,
                                    .groups = 4, .encoder = Encoder::residual, .encoder_blocks = {1, 2, 2, 1},
                                    .deep_supervision = true};
constexpr UNetConfig none_resenc2d{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16, 16}, .norm = Norm::none,
                                   .act = Act::leaky_relu, .down = Down::max_pool, .up = Up::interpolate_conv,
                                   .head = Head::sigmoid, .encoder = Encoder::residual};
constexpr UNetConfig batch_resenc2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {8, 16, 32, 32}, .norm = Norm::batch,
                                    .act = Act::leaky_relu, .down = Down::max_pool, .up = Up::transposed_conv,
                                    .head = Head::softmax, .encoder = Encoder::residual, .encoder_blocks = {2, 1, 2, 1},
                                    .deep_supervision = true};
constexpr UNetConfig batch3d{.dims = 3, .in_channels = 2, .classes = 3, .widths = {4, 8, 16, 16}, .norm = Norm::batch,
                             .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv, .head = Head::softmax,
                             .deep_supervision = true};
constexpr UNetConfig instance3d{.dims = 3, .in_channels = 4, .classes = 3, .widths = {4, 8, 16}, .norm = Norm::instance,
                                .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv, .head = Head::sigmoid};
constexpr UNetConfig group_resenc3d{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 8, 16}, .norm = Norm::group,
                                    .act = Act::leaky_relu, .down = Down::max_pool, .up = Up::transposed_conv,
                                    .head = Head::sigmoid, .groups = 2, .encoder = Encoder::residual, .encoder_blocks = {1, 2, 2}};
constexpr UNetConfig none3d{.dims = 3, .in_channels = 2, .classes = 2, .widths = {4, 8}, .norm = Norm::none, .act = Act::relu,
                            .down = Down::strided_conv, .up = Up::transposed_conv, .head = Head::softmax};

// Calls f.template operator()<C>(name, shape) for each configuration, with a shape it takes
// (batch 2 in 2D, so that a symbolic batch is exercised).
template <class F>
void for_each_configuration(F&& f) {
    f.template operator()<plain2d>("2d batch max_pool transposed softmax", Shape{2, 3, 1, 32, 24});
    f.template operator()<instance2d>("2d instance strided interpolate sigmoid", Shape{2, 2, 1, 16, 20});
    f.template operator()<group_resenc2d>("2d group resenc strided ds", Shape{2, 4, 1, 24, 32});
    f.template operator()<none_resenc2d>("2d none resenc interpolate sigmoid", Shape{2, 1, 1, 16, 16});
    f.template operator()<batch_resenc2d>("2d batch resenc ds", Shape{2, 4, 1, 32, 32});
    f.template operator()<batch3d>("3d batch strided interpolate ds", Shape{1, 2, 16, 8, 16});
    f.template operator()<instance3d>("3d instance max_pool transposed sigmoid", Shape{1, 4, 8, 12, 8});
    f.template operator()<group_resenc3d>("3d group resenc sigmoid", Shape{1, 1, 8, 8, 12});
    f.template operator()<none3d>("3d none strided softmax", Shape{2, 2, 4, 6, 8});
}

}  // namespace

TEST_CASE("onnx export: every op kind passes the ONNX checker's full check", "[onnx]") {
    for_each_configuration([]<UNetConfig C>(const char* name, const Shape& shape) {
        SECTION(name) {
            UNet<C> model(7);
            randomise(model, 3);
            check_exports(model, shape);
        }
    });
}

TEST_CASE("onnx export: a fixed shape the network cannot take is refused naming it", "[onnx]") {
    UNet<plain2d> model(1);
    OnnxOptions o;
    o.input_shape = Shape{1, 3, 1, 30, 32};
    CHECK_THROWS_WITH(to_onnx(model, o), Catch::Contains("(1, 3, 1, 30, 32)") && Catch::Contains("multiples of 2^(depth-1) = 8"));
    o.input_shape = Shape{1, 2, 1, 32, 32};
    CHECK_THROWS_WITH(to_onnx(model, o), Catch::Contains("expected 3 channels"));
}

TEST_CASE("onnx export: a file that cannot be written is named", "[onnx]") {
    UNet<none3d> model(1);
    CHECK_THROWS_WITH(export_onnx(model, "/nonexistent-folder/model.onnx"), Catch::Contains("/nonexistent-folder/model.onnx.tmp"));
    TemporaryFolder dir("lightunet_onnx_write");
    const fs::path path = dir.path / "model.onnx";
    export_onnx(model, path);
    const onnx::ModelProto m = read_onnx(path);
    CHECK_NOTHROW(check_onnx(m));
    int conv_like = 0;
    for (const graph::Op& op : UNet<none3d>::Graph::ops) conv_like += op.is_conv_like();
    CHECK(m.graph().initializer_size() == 2 * conv_like);  // weight and bias each (no norm parameters)
    CHECK_FALSE(fs::exists(dir.path / "model.onnx.tmp"));
    std::ofstream(dir.path / "garbage.onnx") << "not a model";
    CHECK_THROWS_WITH(read_onnx(dir.path / "garbage.onnx"), Catch::Contains("garbage.onnx"));
}

TEST_CASE("onnx export: ONNX Runtime matches predict for every op kind", "[onnx][onnxruntime]") {
    const Runtime rt = find_runtime();
    LIGHTUNET_REQUIRE_ONNXRUNTIME(rt);
    TemporaryFolder dir("lightunet_onnx_ort");
    std::vector<Job> jobs;
    bool fixed = false;
    for_each_configuration([&]<UNetConfig C>(const char* name, const Shape& shape) {
        UNet<C> model(5);
        randomise_trained(model, 9, shape);
        std::string file = name;
        std::replace(file.begin(), file.end(), ' ', '_');
        jobs.push_back(prepare(model, file, dir.path, shape, fixed = !fixed, 1));
        if constexpr (C.norm == Norm::batch) jobs.push_back(prepare(model, file + "_folded", dir.path, shape, !fixed, 1, OnnxBatchNorm::fold));
    });
    run_and_compare(rt, jobs, 1);
}

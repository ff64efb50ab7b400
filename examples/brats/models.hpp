#pragma once
// The BraTS configurations this program instantiates at compile time. Each is one type; the
// command line picks one at run time (--model 2d|3d, --labels regions|classes, --arch plain|resenc,
// --deep-supervision).
#include <lightunet/graph/unet_graph.hpp>

namespace brats {

using lightunet::Act;
using lightunet::Encoder;
using lightunet::Head;
using lightunet::Norm;
using lightunet::UNetConfig;

// 2D slice U-Net, as the classic light BraTS 2D models: 5 levels, batch norm, ReLU;
// 4.37 M parameters, 17.5 MB of fp32 weights (regions head).
inline constexpr UNetConfig slice2d_regions{.dims = 2, .in_channels = 4, .classes = 3, .widths = {24, 48, 96, 192, 384},
                                            .norm = Norm::batch, .act = Act::relu, .head = Head::sigmoid};
inline constexpr UNetConfig slice2d_classes{.dims = 2, .in_channels = 4, .classes = 4, .widths = {24, 48, 96, 192, 384},
                                            .norm = Norm::batch, .act = Act::relu, .head = Head::softmax};
// Lightweight 3D patch U-Net (widths 16..256, instance norm, LeakyReLU): 5.65 M parameters.
inline constexpr UNetConfig patch3d_regions{.dims = 3, .in_channels = 4, .classes = 3, .widths = {16, 32, 64, 128, 256},
                                            .norm = Norm::instance, .act = Act::leaky_relu, .head = Head::sigmoid};
inline constexpr UNetConfig patch3d_classes{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128, 256},
                                            .norm = Norm::instance, .act = Act::leaky_relu, .head = Head::softmax};

static_assert(lightunet::parameter_count(slice2d_regions) == 4'370'547, "the 2D model should stay ~20 MB");

// --arch resenc: nnU-Net's residual encoder (one block at the top level, two below, as a light
// version of ResEnc-M's 1, 3, 4, 6, 6); --deep-supervision: auxiliary heads while training.
constexpr UNetConfig variant(UNetConfig c, bool resenc, bool deep_supervision) {
    if (resenc) {
        c.encoder = Encoder::residual;
        c.encoder_blocks = {1, 2, 2, 2, 2};
    }
    c.deep_supervision = deep_supervision;
    return c;
}
// ResEnc 2D: 8.0 M parameters (32 MB in fp32); ResEnc 3D: 10.4 M. Deep supervision adds two
// 1x1 heads (a few hundred parameters).
static_assert(lightunet::parameter_count(variant(slice2d_regions, true, false)) == 8'000'235);
static_assert(lightunet::parameter_count(variant(patch3d_regions, true, false)) == 10'397'299);


// Calls f.template operator()<C>() with the configuration of one architecture the run names
// (its labels and deep supervision).
template <UNetConfig Regions, UNetConfig Classes, bool Resenc, class RunInfo, class F>
auto with_configuration(const RunInfo& run, F&& f) {
    auto pick = [&]<UNetConfig Base>() {
        return run.deep_supervision ? f.template operator()<variant(Base, Resenc, true)>()
                                    : f.template operator()<variant(Base, Resenc, false)>();
    };
    return run.labels == "regions" ? pick.template operator()<Regions>() : pick.template operator()<Classes>();
}

}  // namespace brats

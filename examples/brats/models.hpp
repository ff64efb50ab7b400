#pragma once
// The BraTS configurations this program instantiates at compile time. Each is one type; the
// command line picks one at run time (--model 2d|3d, --labels regions|classes).
#include <lightunet/graph/unet_graph.hpp>

namespace brats {

using lightunet::Act;
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

}  // namespace brats

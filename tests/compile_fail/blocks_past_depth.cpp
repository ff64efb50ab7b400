// expect-error: encoder_blocks must lie in 0..16 (0 means 1) and be zero past the last level
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8},
                                    .encoder = lightunet::Encoder::residual, .encoder_blocks = {1, 2, 2}};

int main() { lightunet::UNet<bad> net(1); }

// expect-error: encoder_blocks other than 1 need encoder = Encoder::residual
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8}, .encoder_blocks = {1, 2}};

int main() { lightunet::UNet<bad> net(1); }

// expect-error: leaky_slope must lie in [0, 1)
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8},
                                    .act = lightunet::Act::leaky_relu, .leaky_slope = 1.5};

int main() { lightunet::UNet<bad> net(1); }

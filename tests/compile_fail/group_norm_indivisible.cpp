// expect-error: group norm needs every width divisible by groups
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8},
                                    .norm = lightunet::Norm::group, .groups = 3};

int main() { lightunet::UNet<bad> net(1); }

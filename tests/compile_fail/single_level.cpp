// expect-error: widths must give at least two levels
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8}};

int main() { lightunet::UNet<bad> net(1); }

// expect-error: widths must be positive
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 0, 8}};

int main() { lightunet::UNet<bad> net(1); }

// expect-error: dims must be 2 or 3
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 4, .in_channels = 1, .classes = 2, .widths = {4, 8}};

int main() { lightunet::UNet<bad> net(1); }

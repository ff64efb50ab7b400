// expect-error: classes must be at least 1
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 0, .widths = {4, 8}};

int main() { lightunet::UNet<bad> net(1); }

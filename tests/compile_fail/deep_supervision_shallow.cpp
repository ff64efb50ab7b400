// expect-error: deep supervision needs at least four levels (auxiliary heads go on decoder levels 1 .. depth-3)
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8, 16}, .deep_supervision = true};

int main() { lightunet::UNet<bad> net(1); }

// expect-error: a softmax head needs at least two classes
#include <lightunet/lightunet.hpp>

constexpr lightunet::UNetConfig bad{
    .dims = 2, .in_channels = 1, .classes = 1, .widths = {4, 8}, .head = lightunet::Head::softmax};

int main() { lightunet::UNet<bad> net(1); }

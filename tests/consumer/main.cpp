#include <lightunet/lightunet.hpp>
constexpr lightunet::UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8}};
int main() {
    lightunet::UNet<tiny> net(42);
    static_assert(decltype(net)::parameter_count > 0);
    lightunet::Tensor<float> x(lightunet::Shape{1, 1, 1, 8, 8});
    const auto& y = net.predict(x);
    return y.size() == 2 * 64 ? 0 : 1;
}

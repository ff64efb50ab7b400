// The constexpr workspace size is what a pass at that shape really holds.
#include <catch2/catch.hpp>

#include <lightunet/lightunet.hpp>

using namespace lightunet;

namespace {

constexpr UNetConfig group2d{.dims = 2, .in_channels = 3, .classes = 3, .widths = {4, 8, 16}, .norm = Norm::group,
                             .groups = 2};
constexpr UNetConfig strided3d{.dims = 3, .in_channels = 2, .classes = 3, .widths = {4, 8}, .norm = Norm::instance,
                               .down = Down::strided_conv, .up = Up::interpolate_conv, .head = Head::sigmoid};
constexpr UNetConfig batch2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {8, 16, 32, 64}};

// Usable in constant expressions, e.g. to size a deployment at compile time.
static_assert(UNet<batch2d>::workspace_bytes({1, 4, 1, 240, 240}, Mode::eval) <
              UNet<batch2d>::workspace_bytes({1, 4, 1, 240, 240}, Mode::train));
static_assert(UNet<batch2d>::workspace_bytes({8, 4, 1, 240, 240}, Mode::train) >
              UNet<batch2d>::workspace_bytes({1, 4, 1, 240, 240}, Mode::train));

template <UNetConfig C>
void check(Shape s) {
    const int label_channels = C.head == Head::softmax ? 1 : C.classes;
    {
        UNet<C> net(1);
        Tensor<float> x(s);
        Tensor<std::uint8_t> labels({s.n, label_channels, s.d, s.h, s.w});
        Adam<> adam(1e-3);
        net.train_step(x, labels, DiceLoss{}, adam);
        CHECK(net.planned_bytes() == UNet<C>::workspace_bytes(s, Mode::train));
    }
    {
        UNet<C> net(1);
        Tensor<float> x(s);
        net.predict(x);
        CHECK(net.planned_bytes() == UNet<C>::workspace_bytes(s, Mode::eval));
    }
}

}  // namespace

TEST_CASE("workspace_bytes equals what a pass allocates: 2D group norm", "[model][memory]") {
    check<group2d>({2, 3, 1, 12, 20});
}
TEST_CASE("workspace_bytes equals what a pass allocates: 3D strided, interpolation, sigmoid", "[model][memory]") {
    check<strided3d>({1, 2, 6, 8, 10});
}
TEST_CASE("workspace_bytes equals what a pass allocates: 2D batch norm", "[model][memory]") {
    check<batch2d>({2, 4, 1, 16, 24});
}

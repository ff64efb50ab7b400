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
constexpr UNetConfig resenc_ds2d{.dims = 2, .in_channels = 4, .classes = 3, .widths = {8, 16, 32, 64, 64}, .head = Head::sigmoid,
                                 .encoder = Encoder::residual, .encoder_blocks = {1, 2, 2, 2, 1}, .deep_supervision = true};
constexpr UNetConfig ds3d{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 8, 8, 16}, .norm = Norm::instance,
                          .deep_supervision = true};

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

// The loss writes every head's logits gradient before the reverse walk starts: no two of them
// may share a buffer (they did: each was taken when the walk reached its head, and freed after
// its conv, so the deep-supervision heads' gradients overwrote the top head's).
template <UNetConfig C>
void check_head_gradients_apart(Shape s) {
    using G = graph::UNetGraph<C>;
    const auto plan = MemoryPlan<C, cpu, float>::make(s, Mode::train, ConvAlgorithm::automatic);
    REQUIRE(G::head_count == 1 + C.auxiliary_heads());
    for (int a = 0; a < G::head_count; ++a)
        for (int b = a + 1; b < G::head_count; ++b) {
            INFO("heads " << a << " and " << b);
            CHECK(plan.gradient[G::head_logits[a]] != plan.gradient[G::head_logits[b]]);
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
TEST_CASE("workspace_bytes equals what a pass allocates: 2D residual encoder, deep supervision", "[model][memory]") {
    check<resenc_ds2d>({2, 4, 1, 32, 48});
}
TEST_CASE("workspace_bytes equals what a pass allocates: 3D deep supervision", "[model][memory]") {
    check<ds3d>({1, 1, 16, 8, 16});
}
TEST_CASE("training plan: the heads' logits gradients have buffers of their own", "[model][memory][deep_supervision]") {
    check_head_gradients_apart<resenc_ds2d>({2, 4, 1, 32, 48});
    check_head_gradients_apart<ds3d>({1, 1, 16, 8, 16});
    check_head_gradients_apart<batch2d>({2, 4, 1, 16, 24});  // one head: trivially
}

// The constexpr workspace size is what a pass at that shape really holds.
#include <catch2/catch.hpp>

#include <lightunet/lightunet.hpp>

#include <algorithm>
#include <stdexcept>
#include <vector>

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
    const auto plan = MemoryPlan<C, cpu, float>::make(s, Mode::train, ConvSettings{});
    REQUIRE(G::head_count == 1 + C.auxiliary_heads());
    for (int a = 0; a < G::head_count; ++a)
        for (int b = a + 1; b < G::head_count; ++b) {
            INFO("heads " << a << " and " << b);
            CHECK(plan.gradient[G::head_logits[a]] != plan.gradient[G::head_logits[b]]);
        }
}

// Training: no buffer holds a value the reverse walk still reads together with a gradient, nor
// two gradients alive at once but for a norm's (or a residual join's) in-place hand-over. Steps
// count down the walk: op_count is the loss (reads the heads' probabilities, writes their
// logits' gradients), then op i's backward (reads its inputs; a norm also its output, a join
// only its output; writes its inputs' gradients; consumes its output's).
template <UNetConfig C>
void check_training_lifetimes(Shape s) {
    using G = graph::UNetGraph<C>;
    using graph::OpKind;
    const auto plan = MemoryPlan<C, cpu, float>::make(s, Mode::train, ConvSettings{});
    constexpr int loss_step = G::op_count;
    auto reads = [](const graph::Op& op, int slot) {
        if (op.kind == OpKind::output) return false;
        if (op.kind == OpKind::add_act) return op.out == slot;
        return op.in[0] == slot || op.in[1] == slot || (op.kind == OpKind::norm_act && op.out == slot);
    };
    struct Life {
        int buffer, from, to;  // alive over walk steps [from, to] (to >= from: counting down)
    };
    std::vector<Life> values, gradients;
    std::vector<int> gradient_slot;
    for (int slot = 0; slot < G::slot_count; ++slot) {
        if (plan.value[slot] != -1) {
            int last = loss_step;
            for (int i = 0; i < G::op_count; ++i)
                if (reads(G::ops[i], slot)) {
                    last = i;
                    break;
                }
            values.push_back({plan.value[slot], last, loss_step});
        }
        if (plan.gradient[slot] != -1) {
            int written = loss_step;  // the heads' logits (read by output ops only)
            for (int i = G::op_count - 1; i >= 0; --i)
                if (G::ops[i].kind != OpKind::output && (G::ops[i].in[0] == slot || G::ops[i].in[1] == slot)) {
                    written = i;
                    break;
                }
            gradients.push_back({plan.gradient[slot], G::producer[slot], written});
            gradient_slot.push_back(slot);
        }
    }
    auto overlap = [](const Life& a, const Life& b) { return std::max(a.from, b.from) <= std::min(a.to, b.to); };
    for (const Life& v : values)
        for (const Life& g : gradients) {
            INFO("buffer " << v.buffer << ": value over steps " << v.from << ".." << v.to << ", gradient " << g.from << ".." << g.to);
            CHECK(!(v.buffer == g.buffer && overlap(v, g)));
        }
    for (std::size_t a = 0; a < gradients.size(); ++a)
        for (std::size_t b = a + 1; b < gradients.size(); ++b) {
            const Life &ga = gradients[a], &gb = gradients[b];
            if (ga.buffer != gb.buffer || !overlap(ga, gb)) continue;
            // Allowed: one step in common, where an in-place op turns one into the other.
            const int step = std::max(ga.from, gb.from);
            const bool handed_over = step == std::min(ga.to, gb.to) && step < G::op_count &&
                                     (G::ops[step].kind == OpKind::norm_act || G::ops[step].kind == OpKind::add_act) &&
                                     ((G::ops[step].in[0] == gradient_slot[a] && G::ops[step].out == gradient_slot[b]) ||
                                      (G::ops[step].in[0] == gradient_slot[b] && G::ops[step].out == gradient_slot[a]));
            INFO("buffer " << ga.buffer << ": gradients of slots " << gradient_slot[a] << " and " << gradient_slot[b]);
            CHECK(handed_over);
        }
}

constexpr UNetConfig brats2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512}, .norm = Norm::batch};
constexpr UNetConfig brats3d{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128, 256}, .norm = Norm::instance};

}  // namespace

TEST_CASE("training plan: gradients take the buffers of activations the walk is done with, never of live ones",
          "[model][memory]") {
    check_training_lifetimes<group2d>({2, 3, 1, 12, 20});
    check_training_lifetimes<strided3d>({1, 2, 6, 8, 10});
    check_training_lifetimes<batch2d>({2, 4, 1, 16, 24});
    check_training_lifetimes<resenc_ds2d>({2, 4, 1, 32, 48});
    check_training_lifetimes<ds3d>({1, 1, 16, 8, 16});
    check_training_lifetimes<brats2d>({8, 4, 1, 240, 240});
    check_training_lifetimes<brats3d>({1, 4, 128, 128, 128});
}

// The BraTS benchmark networks (bench_unet) at their real sizes: what a training step holds.
// Before the depth slabs and the gradient reuse: 2304 MiB (3D, 128^3, batch 1) and 1138 MiB (2D,
// 240^2, batch 8); before the cheap ops' outputs were regenerated and the slabs halved: 1320
// and 731 MiB (a portable build; native ones differ by a few MiB); now 1081 and 599.
TEST_CASE("training plan of the BraTS networks at real sizes", "[model][memory]") {
    constexpr std::size_t MiB = std::size_t(1) << 20;
    constexpr std::size_t bytes3d = UNet<brats3d>::workspace_bytes({1, 4, 128, 128, 128}, Mode::train);
    constexpr std::size_t bytes2d = UNet<brats2d>::workspace_bytes({8, 4, 1, 240, 240}, Mode::train);
    INFO("3D " << bytes3d / MiB << " MiB, 2D " << bytes2d / MiB << " MiB");
    CHECK(bytes3d <= 1090 * MiB);
    CHECK(bytes2d <= 600 * MiB);
}

TEST_CASE("a second backward after one forward throws: the gradients overwrote the activations", "[model][memory]") {
    UNet<batch2d> net(1);
    const Shape s{2, 4, 1, 16, 24};
    Tensor<float> x(s);
    Tensor<std::uint8_t> labels({s.n, 1, s.d, s.h, s.w});
    CHECK_THROWS_AS(net.backward(x, labels, DiceLoss{}), std::logic_error);  // no forward yet
    net.forward(x, Mode::train);
    const double first = net.backward(x, labels, DiceLoss{});
    CHECK_THROWS_WITH(net.backward(x, labels, DiceLoss{}), Catch::Contains("forward(x, Mode::train) first"));
    net.predict(x);
    CHECK_THROWS_AS(net.backward(x, labels, DiceLoss{}), std::logic_error);
    net.forward(x, Mode::train);
    CHECK(net.backward(x, labels, DiceLoss{}) == first);
}

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

#ifdef LIGHTUNET_TEST_DEPTH_SLABS
// lightunet_slab_tests: its staging bound must split the small networks' up-samplings.
TEST_CASE("the transposed up-sampling of a test network runs in groups of channels here", "[model][memory]") {
    const ConvProblem coarse{{1, 4, 6}, 1, 1, 1, 8, 4 * 4};  // 2D: 4 fine channels of 4 cells each
    CHECK(layers::UpTransposed<double, cpu>::group_channels(coarse, 2, 4) < 4);
    CHECK(layers::UpTransposed<float, cpu>::group_channels(coarse, 2, 4) < 4);
}
#endif

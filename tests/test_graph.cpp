// The op graph: the quantities derived from it equal the ones written out by hand before it
// existed (kept here as the reference), for the BraTS networks and every layer option; the new
// blocks add exactly the ops and parameters they should.
#include <catch2/catch.hpp>

#include <lightunet/graph/diagram.hpp>
#include <lightunet/lightunet.hpp>
#include <lightunet/train/checkpoint.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include "test_paths.hpp"

using namespace lightunet;

namespace {

// ---- The hand-written formulas of model/unet.hpp and config/unet_config.hpp before the graph.
constexpr std::size_t conv_params(int cin, int cout, int taps) { return std::size_t(cout) * cin * taps + cout; }

constexpr std::size_t handwritten_parameter_count(const UNetConfig& c) {
    std::size_t n = 0;
    const int taps = c.taps(), sub = c.sub_voxels();
    auto norm = [&](int ch) { return c.has_norm_params() ? std::size_t(2 * ch) : std::size_t(0); };
    for (int l = 0; l < c.depth(); ++l) {
        const int cin = l == 0 ? c.in_channels : c.widths[l - 1];
        if (l > 0 && c.down == Down::strided_conv) n += conv_params(cin, cin, sub);
        n += conv_params(cin, c.widths[l], taps) + norm(c.widths[l]);
        n += conv_params(c.widths[l], c.widths[l], taps) + norm(c.widths[l]);
    }
    for (int l = c.depth() - 2; l >= 0; --l) {
        const int below = c.widths[l + 1], w = c.widths[l];
        n += c.up == Up::transposed_conv ? conv_params(below, w, sub) : conv_params(below, w, 1);
        n += conv_params(2 * w, w, taps) + norm(w);
        n += conv_params(w, w, taps) + norm(w);
    }
    return n + conv_params(c.widths[0], c.classes, 1);
}

constexpr std::size_t handwritten_buffer_count(const UNetConfig& c) {
    std::size_t n = 0;
    if (c.norm == Norm::batch) {
        for (int l = 0; l < c.depth(); ++l) n += 4 * std::size_t(c.widths[l]);
        for (int l = 0; l < c.depth() - 1; ++l) n += 4 * std::size_t(c.widths[l]);
    }
    return n;
}

constexpr double handwritten_forward_flops(const UNetConfig& c, const Shape& s) {
    double f = 0;
    auto size = [&](int l) { return double(c.dims == 3 ? s.d >> l : 1) * (s.h >> l) * (s.w >> l); };
    auto conv = [&](int l, int cin, int cout, int taps) { f += 2.0 * s.n * size(l) * cin * cout * taps; };
    for (int l = 0; l < c.depth(); ++l) {
        const int cin = l == 0 ? c.in_channels : c.widths[l - 1];
        if (l > 0 && c.down == Down::strided_conv) conv(l, cin * c.sub_voxels(), cin, 1);
        conv(l, cin, c.widths[l], c.taps());
        conv(l, c.widths[l], c.widths[l], c.taps());
    }
    for (int l = c.depth() - 2; l >= 0; --l) {
        if (c.up == Up::transposed_conv) conv(l + 1, c.widths[l + 1], c.widths[l] * c.sub_voxels(), 1);
        else conv(l + 1, c.widths[l + 1], c.widths[l], 1);
        conv(l, 2 * c.widths[l], c.widths[l], c.taps());
        conv(l, c.widths[l], c.widths[l], c.taps());
    }
    conv(0, c.widths[0], c.classes, 1);
    return f;
}

// The names train/checkpoint.hpp wrote before the graph, in its order.
std::string handwritten_layout(const UNetConfig& c) {
    std::vector<train::TensorInfo> p, b;
    const bool three = c.dims == 3;
    auto k = [&](int e) { return three ? std::vector<int>{e, e, e} : std::vector<int>{e, e}; };
    auto conv = [&](const std::string& name, int cout, int cin, int kernel) {
        std::vector<int> s{cout, cin};
        for (int e : k(kernel)) s.push_back(e);
        p.push_back({name + ".weight", s});
        p.push_back({name + ".bias", {cout}});
    };
    auto norm = [&](const std::string& name, int ch) {
        if (c.has_norm_params()) p.push_back({name + ".weight", {ch}}), p.push_back({name + ".bias", {ch}});
        if (c.norm == Norm::batch) b.push_back({name + ".running_mean", {ch}}), b.push_back({name + ".running_var", {ch}});
    };
    auto block = [&](const std::string& pre, int cin, int w) {
        conv(pre + "conv1", w, cin, 3);
        norm(pre + "norm1", w);
        conv(pre + "conv2", w, w, 3);
        norm(pre + "norm2", w);
    };
    for (int l = 0; l < c.depth(); ++l) {
        const std::string pre = "encoder." + std::to_string(l) + ".";
        const int cin = l == 0 ? c.in_channels : c.widths[l - 1];
        if (l > 0 && c.down == Down::strided_conv) conv(pre + "down", cin, cin, 2);
        block(pre, cin, c.widths[l]);
    }
    for (int l = c.depth() - 2; l >= 0; --l) {
        const std::string pre = "decoder." + std::to_string(l) + ".";
        const int below = c.widths[l + 1], w = c.widths[l];
        if (c.up == Up::transposed_conv) {
            std::vector<int> s{below, w};
            for (int e : k(2)) s.push_back(e);
            p.push_back({pre + "up.weight", s});
            p.push_back({pre + "up.bias", {w}});
        } else {
            conv(pre + "up", w, below, 1);
        }
        block(pre, 2 * w, w);
    }
    conv("head", c.classes, c.widths[0], 1);
    return train::layout_string(p) + "|" + train::layout_string(b);
}

constexpr UNetConfig brats_2d{.dims = 2, .in_channels = 4, .classes = 3, .widths = {24, 48, 96, 192, 384}, .head = Head::sigmoid};
constexpr UNetConfig brats_3d{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128, 256}, .norm = Norm::instance,
                              .act = Act::leaky_relu};
constexpr UNetConfig strided_interp{.dims = 2, .in_channels = 2, .classes = 3, .widths = {8, 16, 32}, .norm = Norm::group,
                                    .down = Down::strided_conv, .up = Up::interpolate_conv, .groups = 4};
constexpr UNetConfig strided_3d{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 8, 16, 32}, .norm = Norm::none,
                                .down = Down::strided_conv, .head = Head::sigmoid};
constexpr UNetConfig interp_3d{.dims = 3, .in_channels = 3, .classes = 2, .widths = {6, 12}, .norm = Norm::batch,
                               .up = Up::interpolate_conv};

template <UNetConfig C>
constexpr bool derived_equals_handwritten() {
    constexpr Shape s{2, C.in_channels, C.dims == 3 ? 32 : 1, 64, 96};
    return UNet<C>::parameter_count == handwritten_parameter_count(C) && UNet<C>::buffer_count == handwritten_buffer_count(C) &&
           UNet<C>::forward_flops(s) == handwritten_forward_flops(C, s);
}
static_assert(derived_equals_handwritten<brats_2d>());
static_assert(derived_equals_handwritten<brats_3d>());
static_assert(derived_equals_handwritten<strided_interp>());
static_assert(derived_equals_handwritten<strided_3d>());
static_assert(derived_equals_handwritten<interp_3d>());

// ---- The new blocks.
constexpr UNetConfig resenc{.dims = 2, .in_channels = 4, .classes = 3, .widths = {8, 16, 32, 64}, .head = Head::sigmoid,
                            .encoder = Encoder::residual, .encoder_blocks = {1, 2, 3, 2}};
constexpr UNetConfig plain_twin{.dims = 2, .in_channels = 4, .classes = 3, .widths = {8, 16, 32, 64}, .head = Head::sigmoid};
constexpr UNetConfig supervised = [] {
    UNetConfig c = plain_twin;
    c.widths = {8, 16, 32, 64, 128};
    c.deep_supervision = true;
    return c;
}();

// A residual block at a level of width w adds to the plain pair of convolutions only its skip
// projection (a 1x1 convolution and a norm) where the channels change; every further block is
// two more convolutions and norms.
constexpr std::size_t residual_extra(const UNetConfig& c) {
    std::size_t n = 0;
    for (int l = 0; l < c.depth(); ++l) {
        const int cin = l == 0 ? c.in_channels : c.widths[l - 1], w = c.widths[l];
        if (cin != w) n += conv_params(cin, w, 1) + 2 * std::size_t(w);
        n += std::size_t(c.blocks(l) - 1) * 2 * (conv_params(w, w, c.taps()) + 2 * std::size_t(w));
    }
    return n;
}
static_assert(UNet<resenc>::parameter_count == UNet<plain_twin>::parameter_count + residual_extra(resenc));
// Deep supervision: one 1x1 head per level 1 .. depth-3 (nnU-Net gives the lowest decoder level
// weight 0, so it gets none).
static_assert(supervised.auxiliary_heads() == 2);
static_assert(UNet<supervised>::parameter_count ==
              handwritten_parameter_count(supervised) + conv_params(16, 3, 1) + conv_params(32, 3, 1));
static_assert(UNet<supervised>::Graph::head_count == 3);
// Inference FLOPs leave the auxiliary heads out.
static_assert(UNet<supervised>::forward_flops({1, 4, 1, 64, 64}) == handwritten_forward_flops(supervised, {1, 4, 1, 64, 64}));
static_assert(head_weight(supervised, 0) == 4.0 / 7 && head_weight(supervised, 1) == 2.0 / 7 && head_weight(supervised, 2) == 1.0 / 7);

template <class G>
int count(graph::OpKind kind) {
    int n = 0;
    for (const auto& op : G::ops) n += op.kind == kind;
    return n;
}

}  // namespace

TEST_CASE("graph: checkpoint names and shapes are the ones written before the graph", "[graph]") {
    for (const UNetConfig& c : {brats_2d, brats_3d, strided_interp, strided_3d, interp_3d}) {
        const auto [p, b] = train::parameter_layout(c);
        CHECK(train::layout_string(p) + "|" + train::layout_string(b) == handwritten_layout(c));
    }
}

TEST_CASE("graph: residual encoder blocks", "[graph]") {
    using G = UNet<resenc>::Graph;
    // Levels 0..3 with 1, 2, 3, 2 blocks; the first block of each level projects its skip.
    CHECK(count<G>(graph::OpKind::add_act) == 1 + 2 + 3 + 2);
    const auto [params, buffers] = train::parameter_layout(resenc);
    std::set<std::string> names;
    for (const auto& t : params) names.insert(t.name);
    CHECK(names.count("encoder.0.blocks.0.skip.conv.weight") == 1);
    CHECK(names.count("encoder.1.blocks.0.skip.norm.bias") == 1);
    CHECK(names.count("encoder.1.blocks.1.skip.conv.weight") == 0);  // 16 -> 16: identity skip
    CHECK(names.count("encoder.2.blocks.2.conv2.weight") == 1);
    CHECK(names.count("decoder.0.conv1.weight") == 1);  // the decoder stays plain
    CHECK(names.size() == params.size());
    // The projection's norm and the second norm of a block have no activation: the join applies it.
    for (const auto& op : G::ops) {
        if (op.kind != graph::OpKind::norm_act) continue;
        const std::string name = op.module.str();
        const bool before_join = name.ends_with("norm2") && name.starts_with("encoder") ? true : name.ends_with("skip.norm");
        CHECK((op.act.act == Act::identity) == before_join);
    }
    std::size_t total = 0;
    for (const auto& t : params) total += t.size();
    CHECK(total == UNet<resenc>::parameter_count);
}

// Training keeps no output of these ops: each runs again where read (model/unet.hpp), so the
// list must hold only ops that cost a fraction of a 3x3 convolution of their level.
TEST_CASE("graph: training regenerates the input convolution, pooling and up-sampling, nothing else", "[graph][memory]") {
    auto check = []<UNetConfig C>(int expected) {
        using G = typename UNet<C>::Graph;
        int regenerated = 0;
        for (const graph::Op& op : G::ops) {
            const bool input_conv = op.kind == graph::OpKind::conv && op.in[0] == G::input_slot && !op.has_input2() && op.kernel == 3;
            const bool cheap = input_conv || op.kind == graph::OpKind::max_pool || op.kind == graph::OpKind::up_transposed ||
                               op.kind == graph::OpKind::up_interpolate;
            INFO(op.module.str() << " kind " << int(op.kind));
            CHECK(op.regenerated == cheap);
            CHECK(!(op.regenerated && op.recomputed));
            regenerated += op.regenerated;
        }
        CHECK(regenerated == expected);
    };
    check.template operator()<brats_2d>(1 + 4 + 4);        // input conv, 4 pools, 4 transposed ups
    check.template operator()<brats_3d>(1 + 4 + 4);
    check.template operator()<strided_interp>(1 + 0 + 2);  // strided convolutions are kept
    check.template operator()<resenc>(1 + 3 + 3);          // the first block's conv1; projections kept
    check.template operator()<supervised>(1 + 4 + 4);
}

TEST_CASE("graph: deep-supervision heads are training-only and last in the parameter layout", "[graph]") {
    using G = UNet<supervised>::Graph;
    const auto [params, buffers] = train::parameter_layout(supervised);
    const auto [plain, plain_buffers] = train::parameter_layout(plain_twin);
    REQUIRE(params.size() > 4);
    CHECK(params[params.size() - 4].name == "auxiliary_heads.0.weight");
    CHECK(params[params.size() - 2].name == "auxiliary_heads.1.weight");
    CHECK(params[params.size() - 2].shape == std::vector<int>{3, 32, 1, 1});
    int training_only = 0;
    for (const auto& op : G::ops) training_only += op.training_only;
    CHECK(training_only == 4);  // two 1x1 convolutions and their sigmoids
    CHECK(G::slots[G::head_logits[1]].level == 1);
    CHECK(G::slots[G::head_logits[2]].level == 2);
}

TEST_CASE("graph: the BraTS 2D diagram in docs/design.md is the one the graph draws", "[graph][diagram]") {
    constexpr UNetConfig slice2d_regions{.dims = 2, .in_channels = 4, .classes = 3, .widths = {24, 48, 96, 192, 384},
                                         .norm = Norm::batch, .act = Act::relu, .head = Head::sigmoid};
    const std::string drawn = graph::mermaid<slice2d_regions>();
    if (std::getenv("LIGHTUNET_PRINT_DIAGRAM")) std::fputs(drawn.c_str(), stdout);
    std::ifstream in(lightunet_test::source_dir() / "docs/design.md");
    const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string begin = "<!-- diagram: brats 2d begin -->\n```mermaid\n", end = "```\n<!-- diagram: brats 2d end -->";
    const auto b = doc.find(begin), e = doc.find(end);
    REQUIRE(b != std::string::npos);
    REQUIRE(e != std::string::npos);
    CHECK(doc.substr(b + begin.size(), e - b - begin.size()) == drawn);
}

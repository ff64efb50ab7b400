// expect-compile
// The control for the compile-fail tests: the nearest valid neighbour of each invalid
// configuration, spelled with the same fields, must compile. So a failing sibling fails on its
// value, not on a misspelt field or a broken harness.
#include <lightunet/lightunet.hpp>

namespace lu = lightunet;

constexpr lu::UNetConfig dims_3{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 8}};
constexpr lu::UNetConfig two_levels{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}};
constexpr lu::UNetConfig one_class{
    .dims = 2, .in_channels = 1, .classes = 1, .widths = {4, 8}, .head = lu::Head::sigmoid};
constexpr lu::UNetConfig softmax_two{
    .dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8}, .head = lu::Head::softmax};
constexpr lu::UNetConfig group_norm{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8},
                                    .norm = lu::Norm::group, .groups = 2};
constexpr lu::UNetConfig three_levels{.dims = 2, .in_channels = 4, .classes = 2, .widths = {4, 8, 16}};
constexpr lu::UNetConfig leaky{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8},
                               .act = lu::Act::leaky_relu, .leaky_slope = 0.2};
constexpr lu::UNetConfig residual{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8},
                                  .encoder = lu::Encoder::residual, .encoder_blocks = {1, 2}};
constexpr lu::UNetConfig four_levels_supervised{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8, 16, 32},
                                                .deep_supervision = true};

int main() {
    lu::UNet<dims_3> a(1);
    lu::UNet<two_levels> b(1);
    lu::UNet<one_class> c(1);
    lu::UNet<softmax_two> d(1);
    lu::UNet<group_norm> e(1);
    lu::UNet<three_levels> f(1);
    lu::UNet<leaky> g(1);
    lu::UNet<residual> h(1);
    lu::UNet<four_levels_supervised> i(1);
    static_assert(decltype(a)::parameter_count > 0 && decltype(g)::parameter_count > 0);
    (void)b, (void)c, (void)d, (void)e, (void)f, (void)h, (void)i;
}

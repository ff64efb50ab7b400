#pragma once
// The one structural value that fixes a U-Net at compile time.
#include <array>
#include <cstddef>
#include <cstdint>

namespace lightunet {

enum class Norm { none, batch, instance, group };
enum class Act { relu, leaky_relu };
enum class Down { max_pool, strided_conv };
enum class Up { transposed_conv, interpolate_conv };
enum class Head { softmax, sigmoid };

inline constexpr int max_depth = 8;

// A structural type: usable as a template argument, so every field below is a compile-time
// fact of the network type. `widths` lists the channels per level; its first zero ends it.
struct UNetConfig {
    int dims = 2;
    int in_channels = 1;
    int classes = 2;
    std::array<int, max_depth> widths{};
    Norm norm = Norm::batch;
    Act act = Act::relu;
    Down down = Down::max_pool;
    Up up = Up::transposed_conv;
    Head head = Head::softmax;
    int groups = 8;             // group norm only
    double leaky_slope = 0.01;  // LeakyReLU only

    constexpr int depth() const {
        int d = 0;
        while (d < max_depth && widths[d] != 0) ++d;
        return d;
    }
    constexpr int width(int level) const { return widths[level]; }
    constexpr int kernel_depth() const { return dims == 3 ? 3 : 1; }  // 2D = 3D with depth 1
    constexpr int taps() const { return kernel_depth() * 9; }
    constexpr int down_factor_depth() const { return dims == 3 ? 2 : 1; }
    constexpr int sub_voxels() const { return dims == 3 ? 8 : 4; }  // voxels of a 2x(2x)2 cell
    constexpr bool has_norm_params() const { return norm != Norm::none; }
};

namespace detail {
constexpr bool widths_positive(const UNetConfig& c) {
    bool ended = false;
    for (int w : c.widths) {
        if (w < 0) return false;
        if (w == 0) ended = true;
        else if (ended) return false;  // a zero in the middle
    }
    return true;
}
constexpr bool widths_divisible_by_groups(const UNetConfig& c) {
    if (c.norm != Norm::group) return true;
    if (c.groups < 1) return false;
    for (int l = 0; l < c.depth(); ++l)
        if (c.widths[l] % c.groups != 0) return false;
    return true;
}
}  // namespace detail

// Plain-language checks, evaluated where the network type is instantiated.
template <UNetConfig C>
struct ValidConfig {
    static_assert(C.dims == 2 || C.dims == 3, "dims must be 2 or 3");
    static_assert(C.in_channels >= 1, "in_channels must be at least 1");
    static_assert(C.classes >= 1, "classes must be at least 1");
    static_assert(C.head != Head::softmax || C.classes >= 2, "a softmax head needs at least two classes");
    static_assert(detail::widths_positive(C), "widths must be positive (a zero may only end the list)");
    static_assert(C.depth() >= 2, "widths must give at least two levels");
    static_assert(detail::widths_divisible_by_groups(C), "group norm needs every width divisible by groups");
    static_assert(C.act != Act::leaky_relu || (C.leaky_slope >= 0.0 && C.leaky_slope < 1.0),
                  "leaky_slope must lie in [0, 1)");
    static constexpr bool value = true;
};

// Parameter counts in the canonical order of docs/design.md.
namespace detail {
constexpr std::size_t conv_params(int cin, int cout, int taps) {
    return std::size_t(cout) * cin * taps + cout;
}
}  // namespace detail

constexpr std::size_t parameter_count(const UNetConfig& c) {
    std::size_t n = 0;
    const int taps = c.taps();
    const int sub = c.sub_voxels();
    auto norm = [&](int ch) { return c.has_norm_params() ? std::size_t(2 * ch) : std::size_t(0); };
    for (int l = 0; l < c.depth(); ++l) {
        const int cin = l == 0 ? c.in_channels : c.widths[l - 1];
        if (l > 0 && c.down == Down::strided_conv) n += detail::conv_params(cin, cin, sub);
        n += detail::conv_params(cin, c.widths[l], taps) + norm(c.widths[l]);
        n += detail::conv_params(c.widths[l], c.widths[l], taps) + norm(c.widths[l]);
    }
    for (int l = c.depth() - 2; l >= 0; --l) {
        const int below = c.widths[l + 1], w = c.widths[l];
        n += c.up == Up::transposed_conv ? detail::conv_params(below, w, sub) : detail::conv_params(below, w, 1);
        n += detail::conv_params(2 * w, w, taps) + norm(w);
        n += detail::conv_params(w, w, taps) + norm(w);
    }
    n += detail::conv_params(c.widths[0], c.classes, 1);
    return n;
}

}  // namespace lightunet

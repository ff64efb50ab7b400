#pragma once
// The one structural value that fixes a U-Net at compile time.
#include <array>
#include <cstddef>
#include <cstdint>

namespace lightunet {

enum class Norm { none, batch, instance, group };
enum class Act { relu, leaky_relu, identity };  // identity: inside residual blocks, not a network's choice
enum class Down { max_pool, strided_conv };
enum class Up { transposed_conv, interpolate_conv };
enum class Head { softmax, sigmoid };
// plain: conv-norm-act twice per level. residual: nnU-Net's ResEnc blocks (conv-norm-act-conv-norm
// plus a skip, projected by a 1x1 conv and norm where the channels change, then act), several per
// level (`encoder_blocks`). The decoder is plain in both.
enum class Encoder { plain, residual };
// The operands of the convolutions. fp32: float throughout. bf16: inputs, weights and output
// gradients rounded to bfloat16 (8-bit mantissa), products summed in fp32, fp32 master weights
// and everything else fp32 (AVX512_BF16's vdpbf16ps where the CPU has it, the same rounding
// with fp32 multiply-adds elsewhere). A float model's choice; double models ignore it.
enum class Precision { fp32, bf16 };
inline const char* to_string(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

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
    Encoder encoder = Encoder::plain;
    std::array<int, max_depth> encoder_blocks{};  // residual blocks per level; 0 means 1
    // Training adds a 1x1 head (and loss term) on decoder levels 1 .. depth-3, weighted as nnU-Net
    // does (halving per level, normalised; nnU-Net's head on the lowest decoder level has weight 0,
    // so it is left out); inference runs the top head only.
    bool deep_supervision = false;
    Precision precision = Precision::fp32;  // of the convolutions' operands (see Precision)

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
    constexpr int blocks(int level) const { return encoder_blocks[level] > 0 ? encoder_blocks[level] : 1; }
    // Decoder levels with an auxiliary head: 1 .. depth-3 (level 0 has the main head).
    constexpr int auxiliary_heads() const { return deep_supervision ? depth() - 3 : 0; }
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
constexpr bool block_counts_valid(const UNetConfig& c) {
    for (int l = 0; l < max_depth; ++l) {
        if (c.encoder_blocks[l] < 0 || c.encoder_blocks[l] > 16) return false;
        if (l >= c.depth() && c.encoder_blocks[l] != 0) return false;
    }
    return true;
}
constexpr bool plain_has_one_block(const UNetConfig& c) {
    if (c.encoder != Encoder::plain) return true;
    for (int l = 0; l < c.depth(); ++l)
        if (c.blocks(l) != 1) return false;
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
    static_assert(C.act != Act::identity, "act must be relu or leaky_relu (identity is only used inside residual blocks)");
    static_assert(detail::block_counts_valid(C),
                  "encoder_blocks must lie in 0..16 (0 means 1) and be zero past the last level");
    static_assert(detail::plain_has_one_block(C), "encoder_blocks other than 1 need encoder = Encoder::residual");
    static_assert(!C.deep_supervision || C.depth() >= 4,
                  "deep supervision needs at least four levels (auxiliary heads go on decoder levels 1 .. depth-3)");
    static constexpr bool value = true;
};

}  // namespace lightunet

#pragma once
// The U-Net as data: one constexpr list of ops built from a UNetConfig. Everything else is
// derived from it by walking the list: parameter and buffer counts and offsets, PyTorch names and
// shapes (checkpoints, ONNX), FLOPs, initialisation, the memory plan, forward (the walk) and
// backward (the reverse walk). Adding a block means emitting its ops here and, for a new kind of
// op, one layer under layers/ (docs/design.md, "The op graph").
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "../backend/norm_problem.hpp"
#include "../config/unet_config.hpp"
#include "../tensor/shape.hpp"

namespace lightunet::graph {

enum class OpKind : std::uint8_t {
    conv,            // stride-1 'same' convolution (3x3(x3) or 1x1), bias; one or two inputs (concatenated)
    norm_act,        // normalisation then activation (identity inside residual blocks)
    max_pool,        // 2x(2x)2 max pooling
    strided_down,    // 2x(2x)2 stride-2 convolution (space-to-depth + 1x1)
    up_transposed,   // 2x(2x)2 stride-2 transposed convolution
    up_interpolate,  // 1x1 convolution at the coarse level, then nearest up-sampling
    add_act,         // residual join: act(in0 + in1)
    output,          // softmax over channels or sigmoid: logits -> probabilities (the loss's input)
};

inline constexpr int no_slot = -1;
inline constexpr std::size_t no_offset = ~std::size_t(0);

// A fixed-capacity name ("decoder.2.norm1"), so ops can live in constant expressions.
struct Name {
    std::array<char, 40> chars{};
    int length = 0;

    constexpr Name() = default;
    constexpr Name(const char* s) { add(s); }  // NOLINT: literal names read naturally
    constexpr Name& add(const char* s) {
        while (*s) push(*s++);
        return *this;
    }
    constexpr Name& add(int v) {
        char digits[12]{};
        int n = 0;
        do digits[n++] = char('0' + v % 10), v /= 10;
        while (v > 0);
        while (n > 0) push(digits[--n]);
        return *this;
    }
    constexpr Name with(const char* suffix) const {
        Name n = *this;
        return n.add(suffix);
    }
    constexpr std::string_view view() const { return {chars.data(), std::size_t(length)}; }
    std::string str() const { return std::string(view()); }
    constexpr bool operator==(const Name&) const = default;

private:
    constexpr void push(char c) {
        if (length + 1 >= int(chars.size())) throw "graph::Name: a module name is longer than 39 characters";
        chars[length++] = c;
    }
};

// A tensor of the graph: channels at a resolution level (extent = input extent / 2^level, depth
// too in 3D). Slot 0 is the network's input.
struct Slot {
    int level = 0;
    int channels = 0;
};

struct Op {
    OpKind kind{};
    int level = 0;                                // resolution level of the output
    std::array<int, 2> in{no_slot, no_slot};      // second input: concatenation (conv) or the sum's other term
    int out = no_slot;
    int cin = 0, cout = 0;                        // all input channels; output channels
    int kernel = 1;                               // edge of the kernel: 3, 2 (stride 2) or 1
    Activation act{};                             // norm_act, add_act
    std::size_t weight = no_offset, bias = no_offset;  // parameter offsets
    std::size_t gamma = no_offset, beta = no_offset;   // norm parameters (norm != none)
    std::size_t running = no_offset;                   // buffer offset: running mean, then running var
    int head = -1;                 // output, and the conv feeding it: 0 the top head, 1.. deep supervision
    bool training_only = false;    // deep-supervision heads: inference skips them
    bool recomputed = false;       // norm_act whose output training does not keep: rebuilt where read
    bool regenerated = false;      // cheap op (input convolution, pooling, up-sampling) whose output
                                   // training does not keep: the op runs again where it is read
    Name module;                   // the PyTorch module path, without ".weight"

    constexpr bool has_input2() const { return in[1] != no_slot; }
    constexpr bool is_conv_like() const {
        return kind == OpKind::conv || kind == OpKind::strided_down || kind == OpKind::up_transposed ||
               kind == OpKind::up_interpolate;
    }
};

// Builds the ops of a configuration into fixed-capacity arrays; UNetGraph<C> trims them to size.
struct GraphBuilder {
    static constexpr int capacity = 400;
    std::array<Op, capacity> ops{};
    std::array<Slot, capacity> slots{};
    int op_count = 0, slot_count = 0, heads = 0;
    std::size_t parameters = 0, buffers = 0;
    std::array<int, max_depth> head_logits{}, head_probs{};  // per head: its logits and probability slots

    constexpr int slot(int level, int channels) {
        if (slot_count >= capacity) throw "graph: more than 400 tensors";
        slots[slot_count] = {level, channels};
        return slot_count++;
    }
    constexpr Op& emit(Op op) {
        if (op_count >= capacity) throw "graph: more than 400 ops";
        ops[op_count] = op;
        return ops[op_count++];
    }
};

namespace detail {

constexpr int taps_of(const UNetConfig& c, int kernel) { return c.dims == 3 ? kernel * kernel * kernel : kernel * kernel; }

class Emitter {
public:
    constexpr Emitter(const UNetConfig& c, GraphBuilder& g) : c_(c), g_(g) {}

    // A convolution with bias; kernel 3 or 1 ('same', stride 1), 2 (stride 2 down).
    constexpr int conv(const Name& module, OpKind kind, int in0, int in1, int cout, int kernel, int level) {
        Op op{.kind = kind, .level = level, .in = {in0, in1}, .cout = cout, .kernel = kernel, .module = module};
        op.cin = channels(in0) + (in1 == no_slot ? 0 : channels(in1));
        op.weight = g_.parameters;
        op.bias = op.weight + std::size_t(op.cin) * cout * taps_of(c_, kernel);
        g_.parameters = op.bias + std::size_t(cout);
        op.out = g_.slot(level, cout);
        return g_.emit(op).out;
    }
    constexpr int norm_act(const Name& module, int in, Activation act) {
        const int ch = channels(in), level = g_.slots[in].level;
        Op op{.kind = OpKind::norm_act, .level = level, .in = {in, no_slot}, .cin = ch, .cout = ch, .act = act, .module = module};
        if (c_.has_norm_params()) {
            op.gamma = g_.parameters;
            op.beta = op.gamma + std::size_t(ch);
            g_.parameters += 2 * std::size_t(ch);
        }
        if (c_.norm == Norm::batch) {
            op.running = g_.buffers;
            g_.buffers += 2 * std::size_t(ch);
        }
        op.out = g_.slot(level, ch);
        return g_.emit(op).out;
    }
    constexpr int max_pool(int in, int level) {
        const int ch = channels(in);
        Op op{.kind = OpKind::max_pool, .level = level, .in = {in, no_slot}, .cin = ch, .cout = ch, .kernel = 2, .module = {}};
        op.out = g_.slot(level, ch);
        return g_.emit(op).out;
    }
    constexpr int up_transposed(const Name& module, int in, int cout, int level) {
        // PyTorch's ConvTranspose weight layout: [in][out][cells].
        Op op{.kind = OpKind::up_transposed, .level = level, .in = {in, no_slot}, .cin = channels(in), .cout = cout, .kernel = 2,
              .module = module};
        op.weight = g_.parameters;
        op.bias = op.weight + std::size_t(op.cin) * cout * taps_of(c_, 2);
        g_.parameters = op.bias + std::size_t(cout);
        op.out = g_.slot(level, cout);
        return g_.emit(op).out;
    }
    constexpr int add_act(int in0, int in1, Activation act) {
        const int ch = channels(in0), level = g_.slots[in0].level;
        Op op{.kind = OpKind::add_act, .level = level, .in = {in0, in1}, .cin = ch, .cout = ch, .act = act, .module = {}};
        op.out = g_.slot(level, ch);
        return g_.emit(op).out;
    }
    constexpr void head(const Name& module, int in, int index, bool training_only) {
        const int level = g_.slots[in].level;
        const int logits = conv(module, OpKind::conv, in, no_slot, c_.classes, 1, level);
        g_.ops[g_.op_count - 1].head = index;
        g_.ops[g_.op_count - 1].training_only = training_only;
        Op op{.kind = OpKind::output, .level = level, .in = {logits, no_slot}, .cin = c_.classes, .cout = c_.classes,
              .head = index, .training_only = training_only, .module = {}};
        op.out = g_.slot(level, c_.classes);
        g_.emit(op);
        g_.head_logits[index] = logits;
        g_.head_probs[index] = op.out;
        g_.heads = std::max(g_.heads, index + 1);
    }
    constexpr int channels(int slot) const { return g_.slots[slot].channels; }
    constexpr void mark_recomputed(int slot) {
        for (int i = 0; i < g_.op_count; ++i)
            if (g_.ops[i].out == slot) g_.ops[i].recomputed = true;
    }
    constexpr void mark_regenerated(int slot) {
        for (int i = 0; i < g_.op_count; ++i)
            if (g_.ops[i].out == slot) g_.ops[i].regenerated = true;
    }

private:
    const UNetConfig& c_;
    GraphBuilder& g_;
};

}  // namespace detail

// The ops of a configuration, in forward order. Parameter order (and so checkpoint layout) is
// emission order: per encoder level [down] block(s); per decoder level, top-down from the
// bottom, up then block; the head; deep-supervision heads last, so a plain configuration's
// layout is the one checkpoints have always had.
constexpr GraphBuilder build_graph(const UNetConfig& c) {
    GraphBuilder g;
    detail::Emitter e(c, g);
    const Activation act{c.act, c.act == Act::leaky_relu ? c.leaky_slope : 0.0};
    const Activation identity{Act::identity, 1.0};
    const int depth = c.depth();
    const int input = g.slot(0, c.in_channels);

    // Two 3x3 convolutions, each normalised and activated. Training keeps the convolutions'
    // outputs only: both activations are rebuilt from them when read (an element-wise pass)
    // rather than kept, the block's output (read by the next level and, much later, by the
    // decoder's skip) included. The convolution of the network's input (its few channels make it
    // the cheapest of the finest level) is not kept either: it runs again where read.
    auto plain_block = [&](const Name& prefix, int in0, int in1, int width, int level) {
        const int z1 = e.conv(prefix.with("conv1"), OpKind::conv, in0, in1, width, 3, level);
        if (in0 == input && in1 == no_slot) e.mark_regenerated(z1);
        const int y1 = e.norm_act(prefix.with("norm1"), z1, act);
        e.mark_recomputed(y1);
        const int z2 = e.conv(prefix.with("conv2"), OpKind::conv, y1, no_slot, width, 3, level);
        const int y2 = e.norm_act(prefix.with("norm2"), z2, act);
        e.mark_recomputed(y2);
        return y2;
    };
    auto residual_block = [&](const Name& prefix, int in, int width, int level) {
        const int z1 = e.conv(prefix.with("conv1"), OpKind::conv, in, no_slot, width, 3, level);
        if (in == input) e.mark_regenerated(z1);
        const int y1 = e.norm_act(prefix.with("norm1"), z1, act);
        e.mark_recomputed(y1);
        const int z2 = e.conv(prefix.with("conv2"), OpKind::conv, y1, no_slot, width, 3, level);
        const int y2 = e.norm_act(prefix.with("norm2"), z2, identity);
        int skip = in;
        if (e.channels(in) != width) {
            const int s = e.conv(prefix.with("skip.conv"), OpKind::conv, in, no_slot, width, 1, level);
            skip = e.norm_act(prefix.with("skip.norm"), s, identity);
        }
        return e.add_act(y2, skip, act);
    };

    std::array<int, max_depth> skips{};
    int x = input;
    for (int l = 0; l < depth; ++l) {
        const Name prefix = Name("encoder.").add(l).add(".");
        if (l > 0) {
            // Pooling is a pass over its input: training rebuilds it where read. A strided
            // convolution costs a convolution and is kept.
            if (c.down == Down::max_pool) {
                x = e.max_pool(x, l);
                e.mark_regenerated(x);
            } else {
                x = e.conv(prefix.with("down"), OpKind::strided_down, x, no_slot, e.channels(x), 2, l);
            }
        }
        if (c.encoder == Encoder::plain) {
            x = plain_block(prefix, x, no_slot, c.widths[l], l);
        } else {
            for (int b = 0; b < c.blocks(l); ++b) x = residual_block(prefix.with("blocks.").add(b).add("."), x, c.widths[l], l);
        }
        skips[l] = x;
    }
    std::array<int, max_depth> decoded{};
    for (int l = depth - 2; l >= 0; --l) {
        const Name prefix = Name("decoder.").add(l).add(".");
        const int w = c.widths[l];
        // Up-sampling computes one tap (transposed) or a 1x1 convolution (interpolation) per
        // output value, a fraction of the block's 3x3 convolutions: training runs it again where
        // its output is read instead of keeping a tensor of the finer level.
        const int up = c.up == Up::transposed_conv ? e.up_transposed(prefix.with("up"), x, w, l)
                                                   : e.conv(prefix.with("up"), OpKind::up_interpolate, x, no_slot, w, 1, l);
        e.mark_regenerated(up);
        x = plain_block(prefix, skips[l], up, w, l);
        decoded[l] = x;
    }
    e.head("head", x, 0, false);
    for (int l = 1; l <= c.auxiliary_heads(); ++l) e.head(Name("auxiliary_heads.").add(l - 1), decoded[l], l, true);
    return g;
}

// Derived quantities, usable in constant expressions for any configuration value.
constexpr std::size_t parameter_count(const UNetConfig& c) { return build_graph(c).parameters; }
constexpr std::size_t buffer_count(const UNetConfig& c) { return build_graph(c).buffers; }

// The graph of one configuration, trimmed to size.
template <UNetConfig C>
struct UNetGraph {
private:
    static constexpr GraphBuilder built = build_graph(C);

public:
    static constexpr int op_count = built.op_count;
    static constexpr int slot_count = built.slot_count;
    static constexpr int head_count = built.heads;
    static constexpr int input_slot = 0;
    static constexpr std::size_t parameter_count = built.parameters;
    static constexpr std::size_t buffer_count = built.buffers;

    static constexpr std::array<Op, op_count> ops = [] {
        std::array<Op, op_count> a{};
        std::copy_n(built.ops.begin(), op_count, a.begin());
        return a;
    }();
    static constexpr std::array<Slot, slot_count> slots = [] {
        std::array<Slot, slot_count> a{};
        std::copy_n(built.slots.begin(), slot_count, a.begin());
        return a;
    }();
    static constexpr std::array<int, head_count> head_logits = [] {
        std::array<int, head_count> a{};
        std::copy_n(built.head_logits.begin(), head_count, a.begin());
        return a;
    }();
    static constexpr std::array<int, head_count> head_probabilities = [] {
        std::array<int, head_count> a{};
        std::copy_n(built.head_probs.begin(), head_count, a.begin());
        return a;
    }();
    static constexpr int output_slot = head_probabilities[0];

    // The op writing each slot (-1: the input).
    static constexpr std::array<int, slot_count> producer = [] {
        std::array<int, slot_count> a{};
        a.fill(-1);
        for (int i = 0; i < op_count; ++i) a[ops[i].out] = i;
        return a;
    }();
    // The last op reading each slot in a pass (training: all ops; inference: without
    // training-only heads); -1 when nothing reads it.
    static constexpr int last_reader(int slot, bool training) {
        int last = -1;
        for (int i = 0; i < op_count; ++i) {
            if (!training && ops[i].training_only) continue;
            for (int k : ops[i].in)
                if (k == slot) last = i;
        }
        return last;
    }
    // In the reverse walk, op i's gradient for input k adds to the slot's gradient when an op
    // after i (in forward order) also reads that slot and so wrote it first.
    static constexpr bool accumulates(int i, int k) {
        const int slot = ops[i].in[k];
        for (int j = i + 1; j < op_count; ++j)
            for (int s : ops[j].in)
                if (s == slot) return true;
        if (k == 1 && ops[i].in[0] == slot) return true;  // both inputs the same slot
        return false;
    }
    // Elements per image of a slot at an input extent.
    static constexpr std::size_t slot_size(int slot, const Shape& s) {
        const int l = slots[slot].level;
        const std::size_t d = C.dims == 3 ? std::size_t(s.d >> l) : 1;
        return std::size_t(s.n) * slots[slot].channels * d * std::size_t(s.h >> l) * std::size_t(s.w >> l);
    }
};

}  // namespace lightunet::graph

namespace lightunet {
// Parameters of the network a configuration describes (UNet<C>::parameter_count as a function).
constexpr std::size_t parameter_count(const UNetConfig& c) { return graph::parameter_count(c); }
}  // namespace lightunet

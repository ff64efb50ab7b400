#pragma once
// Where every tensor of a pass lives, derived from the op graph at one input shape. The same
// constexpr function sizes the model's buffers and answers workspace_bytes, so they agree.
//
// Inference: a tensor takes a pooled buffer from its producing op until its last reader is done
// (best fit among free buffers, growing the largest if none fits; never the buffer an op reads
// from, as no op works in place). Training: every tensor the backward pass reads is kept until
// its last reader in the reverse walk, but inner activations (Op::recomputed) share one buffer
// and are recomputed, and the outputs of cheap ops (Op::regenerated) share another and are
// computed again; gradients take pooled buffers over the reverse walk (those of activations
// already dead among them), and a norm (or a residual join's first term) hands its output
// gradient's buffer on to its input.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

#include "../graph/unet_graph.hpp"
#include "../layers/conv.hpp"
#include "../layers/norm_act.hpp"
#include "../layers/resample.hpp"

namespace lightunet {

enum class Mode { train, eval };

template <UNetConfig C, class Backend, class T>
struct MemoryPlan {
    using G = graph::UNetGraph<C>;
    static constexpr int max_buffers = 2 * G::slot_count + 1;
    static constexpr int none = -1;

    std::array<int, G::slot_count> value{};     // pooled buffer holding a slot's value (none: input, output, recomputed, regenerated)
    std::array<int, G::slot_count> gradient{};  // pooled buffer holding its gradient (training; none: not needed)
    std::array<std::size_t, max_buffers> capacity{};
    int buffers = 0;
    std::size_t scratch = 0;     // the largest op scratch
    std::size_t recomputed = 0;  // the largest recomputed activation
    std::size_t regenerated = 0; // the largest regenerated output
    std::size_t norm_state = 0;  // all norms' statistics
    std::size_t prepared = 0;    // inference: every convolution's prepared weights
    std::size_t output = 0;      // the top head's probabilities
    std::size_t loss_sums = 0;   // doubles
    std::size_t label_bytes = 0; // down-sampled targets of deep-supervision heads

    constexpr std::size_t elements() const {
        std::size_t n = scratch + recomputed + regenerated + norm_state + prepared + output;
        for (int b = 0; b < buffers; ++b) n += capacity[b];
        return n;
    }
    constexpr std::size_t bytes() const { return elements() * sizeof(T) + loss_sums * sizeof(double) + label_bytes; }

    static constexpr MemoryPlan make(const Shape& s, Mode mode, ConvSettings settings) {
        MemoryPlan p;
        const bool training = mode == Mode::train;
        p.value.fill(none);
        p.gradient.fill(none);
        std::array<bool, max_buffers> busy{};
        auto acquire = [&](std::size_t size) {
            int best = none, largest = none;
            for (int b = 0; b < p.buffers; ++b) {
                if (busy[b]) continue;
                if (p.capacity[b] >= size && (best == none || p.capacity[b] < p.capacity[best])) best = b;
                if (largest == none || p.capacity[b] > p.capacity[largest]) largest = b;
            }
            const int pick = best != none ? best : largest != none ? largest : p.buffers++;
            p.capacity[pick] = std::max(p.capacity[pick], size);
            busy[pick] = true;
            return pick;
        };
        auto size = [&](int slot) { return G::slot_size(slot, s); };
        auto active = [&](const graph::Op& op) { return training || !op.training_only; };

        for (const graph::Op& op : G::ops) {
            if (!active(op)) continue;
            p.scratch = std::max(p.scratch, op_scratch(op, s, training, settings));
            if (op.is_conv_like())
                p.prepared += layers::Conv<T, Backend>::prepared_size(layers::conv_problem(op, s, C.dims, settings), training);
            if (op.kind == graph::OpKind::norm_act)
                p.norm_state += layers::NormAct<T, Backend>::state_size(C.norm, C.norm == Norm::group ? C.groups : 1,
                                                                        layers::level_shape(s, op.level, C.dims, op.cout));
        }
        p.output = size(G::output_slot);

        if (!training) {
            for (int i = 0; i < G::op_count; ++i) {
                const graph::Op& op = G::ops[i];
                if (!active(op)) continue;
                if (op.out != G::output_slot) p.value[op.out] = acquire(size(op.out));
                for (int k = 0; k < 2; ++k) {
                    const int in = op.in[k];
                    if (in == graph::no_slot || p.value[in] == none || (k == 1 && in == op.in[0])) continue;
                    if (G::last_reader(in, false) == i) busy[p.value[in]] = false;
                }
            }
            return p;
        }

        for (const graph::Op& op : G::ops) {
            if (op.out == G::output_slot) continue;
            if (op.recomputed) p.recomputed = std::max(p.recomputed, size(op.out));
            else if (op.regenerated) p.regenerated = std::max(p.regenerated, size(op.out));
            else p.value[op.out] = acquire(size(op.out));
        }
        p.loss_sums = 3 * std::size_t(s.n) * C.classes;
        const std::size_t label_channels = C.head == Head::softmax ? 1 : std::size_t(C.classes);
        for (int h = 1; h < G::head_count; ++h)
            p.label_bytes += G::slot_size(G::head_logits[h], s) / std::size_t(C.classes) * label_channels;

        // Gradients over the reverse walk. The loss writes every head's logits gradient before
        // the walk starts, so each holds its own buffer from there until its head's conv ran.
        // A value's buffer is free after its last reader in the walk (values no op of the walk
        // reads, such as the logits and the heads' probabilities, once the loss ran).
        std::array<int, G::slot_count> last_use{};
        last_use.fill(none);
        for (int i = 0; i < G::op_count; ++i)
            for (int slot = 0; slot < G::slot_count; ++slot)
                if (p.value[slot] != none && last_use[slot] == none && backward_reads(G::ops[i], slot)) last_use[slot] = i;
        for (int h = 0; h < G::head_count; ++h) p.gradient[G::head_logits[h]] = acquire(size(G::head_logits[h]));
        auto release_values_read_last_by = [&](int i) {
            for (int slot = 0; slot < G::slot_count; ++slot)
                if (p.value[slot] != none && last_use[slot] == i) busy[p.value[slot]] = false;
        };
        release_values_read_last_by(none);
        for (int i = G::op_count - 1; i >= 0; --i) {
            const graph::Op& op = G::ops[i];
            if (op.kind == graph::OpKind::output) continue;
            bool handed_on = false;
            for (int k = 0; k < 2; ++k) {
                const int in = op.in[k];
                if (in == graph::no_slot || in == G::input_slot || p.gradient[in] != none) continue;
                const bool alias = (op.kind == graph::OpKind::norm_act || (op.kind == graph::OpKind::add_act && k == 0)) &&
                                   !G::accumulates(i, k);
                if (alias) {
                    p.gradient[in] = p.gradient[op.out];
                    handed_on = true;
                } else {
                    p.gradient[in] = acquire(size(in));
                }
            }
            if (!handed_on) busy[p.gradient[op.out]] = false;
            release_values_read_last_by(i);
        }
        return p;
    }

    // Whether op's backward (UNet::run_backward) reads slot's value: an op its inputs, a norm
    // also its output (the activation's mask), a residual join its output only.
    static constexpr bool backward_reads(const graph::Op& op, int slot) {
        using graph::OpKind;
        switch (op.kind) {
            case OpKind::output: return false;
            case OpKind::add_act: return op.out == slot;
            case OpKind::norm_act: return op.in[0] == slot || op.out == slot;
            default: return op.in[0] == slot || op.in[1] == slot;
        }
    }

    static constexpr std::size_t op_scratch(const graph::Op& op, const Shape& s, bool training, ConvSettings a) {
        using graph::OpKind;
        switch (op.kind) {
            case OpKind::conv: return layers::Conv<T, Backend>::scratch_size(op, s, C.dims, training, a);
            case OpKind::strided_down: return layers::StridedDown<T, Backend>::scratch_size(op, s, C.dims, training, a);
            case OpKind::up_transposed: return layers::UpTransposed<T, Backend>::scratch_size(op, s, C.dims, training, a);
            case OpKind::up_interpolate: return layers::UpInterpolate<T, Backend>::scratch_size(op, s, C.dims, training, a);
            default: return 0;
        }
    }
};

}  // namespace lightunet

#pragma once
// Where every tensor of a pass lives, derived from the op graph at one input shape. The same
// constexpr function sizes the model's buffers and answers workspace_bytes, so they agree.
//
// Inference: a tensor takes a pooled buffer from its producing op until its last reader is done
// (best fit among free buffers, growing the largest if none fits; never the buffer an op reads
// from, as no op works in place). A batch norm folded into the convolution before it
// (folds_next_norm) is no op of its own: the convolution writes the norm's output.
//
// Training: a schedule of steps the model walks (forward ops, the loss, backward ops), with a
// pooled buffer for everything alive at each step. Every value the backward pass reads is kept
// until its last reader in the reverse walk, but inner activations (Op::recomputed: a norm's
// output, rebuilt from its input) and the outputs of cheap ops (Op::regenerated: run again) are
// not: each is built where an op reads it, in a buffer of its own that is freed once the next
// step does not read it too. A convolution's backward is two steps, the weight gradient and then
// the input gradients, so the input gradients can take the memory of inputs only the weight
// gradient read; gradients take pooled buffers over the reverse walk, and a norm (or a residual
// join's first term) hands its output gradient's buffer on to its input.
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

// One step of a training pass. forward: op's forward pass into `buffer`; rebuild: the same for
// a recomputed or regenerated value read again (a norm recomputes from its saved statistics);
// loss: the heads' loss writes their logits' gradients; backward: op's backward pass;
// backward_weights then backward_data: a convolution's backward, split.
enum class StepKind : std::uint8_t { forward, rebuild, loss, backward, backward_weights, backward_data };

struct Step {
    StepKind kind{};
    std::int16_t op = -1;
    std::int16_t buffer = -1;  // forward, rebuild: the pooled buffer of the output (-1: the top head's probabilities)
};

template <UNetConfig C, class Backend, class T>
struct MemoryPlan {
    using G = graph::UNetGraph<C>;
    static constexpr int max_buffers = 2 * G::slot_count + 1;
    static constexpr int max_steps = 12 * G::op_count + 1;
    static constexpr int none = -1;
    static_assert(max_buffers < (1 << 15) && max_steps < (1 << 15), "steps name ops and buffers in 16 bits");

    std::array<int, G::slot_count> value{};     // pooled buffer holding a slot's value (none: input, output; training: rebuilt values, placed per step)
    std::array<int, G::slot_count> gradient{};  // pooled buffer holding its gradient (training; none: not needed)
    std::array<std::size_t, max_buffers> capacity{};
    int buffers = 0;
    std::array<Step, max_steps> steps{};  // training
    int step_count = 0;
    int loss_step = 0;           // the index of the loss among the steps
    std::size_t scratch = 0;     // the largest op scratch
    std::size_t norm_state = 0;  // all norms' statistics
    std::size_t prepared = 0;    // inference: every convolution's prepared weights
    std::size_t output = 0;      // the top head's probabilities
    std::size_t loss_sums = 0;   // doubles
    std::size_t label_bytes = 0; // down-sampled targets of deep-supervision heads

    constexpr std::size_t elements() const {
        std::size_t n = scratch + norm_state + prepared + output;
        for (int b = 0; b < buffers; ++b) n += capacity[b];
        return n;
    }
    constexpr std::size_t bytes() const { return elements() * sizeof(T) + loss_sums * sizeof(double) + label_bytes; }

    // Whether inference folds the batch norm at op i + 1 into the convolution at op i (on
    // backends whose convolution store applies the activation): a plain convolution whose
    // output nothing else reads.
    static constexpr bool folds_next_norm(int i) {
        if (!Kernels<Backend>::conv_output_activation || C.norm != Norm::batch || i < 0 || i + 1 >= G::op_count) return false;
        const graph::Op &op = G::ops[i], &next = G::ops[i + 1];
        if (op.kind != graph::OpKind::conv || next.kind != graph::OpKind::norm_act || next.in[0] != op.out || next.training_only)
            return false;
        for (int j = 0; j < G::op_count; ++j)
            if (j != i + 1 && (G::ops[j].in[0] == op.out || G::ops[j].in[1] == op.out)) return false;
        return true;
    }
    static constexpr bool folded_into_previous(int i) { return folds_next_norm(i - 1); }

    // Values training builds again where they are read instead of keeping them.
    static constexpr bool rebuilt(int slot) {
        return slot != graph::no_slot && slot != G::input_slot && slot != G::output_slot &&
               (G::ops[G::producer[slot]].recomputed || G::ops[G::producer[slot]].regenerated);
    }

    static constexpr MemoryPlan make(const Shape& s, Mode mode, ConvSettings settings) {
        MemoryPlan p;
        const bool training = mode == Mode::train;
        p.value.fill(none);
        p.gradient.fill(none);
        std::array<bool, max_buffers> busy{};
        // Best fit among the free buffers, else the largest free one grown, else a new one. A
        // value kept for the rest of the pass (`lasting`) takes no buffer over twice its size,
        // where it would idle memory the finer levels need later: it grows a smaller one or
        // takes a new one instead.
        auto acquire = [&](std::size_t size, bool lasting = false) {
            int best = none, largest = none;
            for (int b = 0; b < p.buffers; ++b) {
                if (busy[b]) continue;
                if (p.capacity[b] >= size && (best == none || p.capacity[b] < p.capacity[best])) best = b;
                if ((!lasting || p.capacity[b] < size) && (largest == none || p.capacity[b] > p.capacity[largest])) largest = b;
            }
            if (lasting && best != none && p.capacity[best] > 2 * size) best = none;
            const int pick = best != none ? best : largest != none ? largest : p.buffers++;
            p.capacity[pick] = std::max(p.capacity[pick], size);
            busy[pick] = true;
            return pick;
        };
        auto size = [&](int slot) { return G::slot_size(slot, s); };
        auto active = [&](const graph::Op& op) { return training || !op.training_only; };

        for (int i = 0; i < G::op_count; ++i) {
            const graph::Op& op = G::ops[i];
            if (!active(op)) continue;
            p.scratch = std::max(p.scratch, op_scratch(op, s, training, settings));
            if (op.is_conv_like())
                p.prepared += layers::Conv<T, Backend>::prepared_size(layers::conv_problem(op, s, C.dims, settings), training,
                                                                      !training && folds_next_norm(i));
            if (op.kind == graph::OpKind::norm_act)
                p.norm_state += layers::NormAct<T, Backend>::state_size(C.norm, C.norm == Norm::group ? C.groups : 1,
                                                                        layers::level_shape(s, op.level, C.dims, op.cout));
        }
        p.output = size(G::output_slot);

        if (!training) {
            for (int i = 0; i < G::op_count; ++i) {
                const graph::Op& op = G::ops[i];
                if (!active(op) || folded_into_previous(i)) continue;
                const int out = folds_next_norm(i) ? G::ops[i + 1].out : op.out;
                if (out != G::output_slot) p.value[out] = acquire(size(out));
                for (int k = 0; k < 2; ++k) {
                    const int in = op.in[k];
                    if (in == graph::no_slot || p.value[in] == none || (k == 1 && in == op.in[0])) continue;
                    if (G::last_reader(in, false) == i) busy[p.value[in]] = false;
                }
            }
            return p;
        }

        p.loss_sums = 3 * std::size_t(s.n) * C.classes;
        const std::size_t label_channels = C.head == Head::softmax ? 1 : std::size_t(C.classes);
        for (int h = 1; h < G::head_count; ++h)
            p.label_bytes += G::slot_size(G::head_logits[h], s) / std::size_t(C.classes) * label_channels;

        auto push = [&](StepKind kind, int op, int buffer) {
            if (p.step_count >= max_steps) throw "MemoryPlan: more steps than planned for";
            p.steps[p.step_count++] = Step{kind, std::int16_t(op), std::int16_t(buffer)};
        };
        // Rebuilt values: where each is now (none: not built).
        std::array<int, G::slot_count> at{};
        at.fill(none);
        std::array<bool, G::slot_count> kept_alive{};
        auto release_rebuilt = [&](int slot) {
            busy[at[slot]] = false;
            at[slot] = none;
        };
        // Builds a rebuilt value the coming step reads (`reads`), its own rebuilt input first;
        // an input neither that step nor the one after it (`next_reads`) reads is freed once used.
        auto ensure = [&](auto& self, int slot, auto&& reads, auto&& next_reads) -> void {
            if (!rebuilt(slot) || at[slot] != none) return;
            const int producer = G::producer[slot];
            const int source = G::ops[producer].in[0];
            self(self, source, reads, next_reads);
            if (source != G::input_slot && !rebuilt(source) && !kept_alive[source])
                throw "MemoryPlan: a value is rebuilt from one the walk has freed";
            at[slot] = acquire(size(slot));
            push(StepKind::rebuild, producer, at[slot]);
            if (rebuilt(source) && !reads(source) && !next_reads(source)) release_rebuilt(source);
        };
        // After a step: the rebuilt values the next one (`reads`) does not read are freed.
        auto release_rebuilt_unless = [&](auto&& reads) {
            for (int slot = 0; slot < G::slot_count; ++slot)
                if (at[slot] != none && !reads(slot)) release_rebuilt(slot);
        };
        auto forward_reads = [](int i) {
            return [i](int slot) { return i < G::op_count && slot != graph::no_slot && (G::ops[i].in[0] == slot || G::ops[i].in[1] == slot); };
        };
        // The backward pass of op i (none: past the walk's end) reads slot.
        auto backward_reads_of = [](int i) {
            return [i](int slot) { return i >= 0 && slot != graph::no_slot && backward_reads(G::ops[i], slot); };
        };
        auto next_backward = [](int i) {
            int j = i - 1;
            while (j >= 0 && G::ops[j].kind == graph::OpKind::output) --j;
            return j;
        };

        for (int i = 0; i < G::op_count; ++i) {
            const graph::Op& op = G::ops[i];
            for (int in : op.in) ensure(ensure, in, forward_reads(i), forward_reads(i + 1));
            int buffer = none;
            if (op.out != G::output_slot) {
                buffer = acquire(size(op.out), !rebuilt(op.out));
                if (rebuilt(op.out)) at[op.out] = buffer;
                else p.value[op.out] = buffer, kept_alive[op.out] = true;
            }
            push(StepKind::forward, i, buffer);
            release_rebuilt_unless(forward_reads(i + 1));
        }

        // The loss reads the heads' probabilities and writes their logits' gradients; values
        // read by no backward op (the logits, then those probabilities) are freed around it.
        std::array<int, G::slot_count> last_use{};
        last_use.fill(none);
        for (int i = 0; i < G::op_count; ++i)
            for (int slot = 0; slot < G::slot_count; ++slot)
                if (p.value[slot] != none && last_use[slot] == none && backward_reads(G::ops[i], slot)) last_use[slot] = i;
        auto head_probabilities = [](int slot) {
            for (int h = 0; h < G::head_count; ++h)
                if (G::head_probabilities[h] == slot) return true;
            return false;
        };
        auto release_kept = [&](int slot) {
            busy[p.value[slot]] = false;
            kept_alive[slot] = false;
        };
        for (int slot = 0; slot < G::slot_count; ++slot)
            if (kept_alive[slot] && last_use[slot] == none && !head_probabilities(slot)) release_kept(slot);
        for (int h = 0; h < G::head_count; ++h) p.gradient[G::head_logits[h]] = acquire(size(G::head_logits[h]));
        p.loss_step = p.step_count;
        push(StepKind::loss, none, none);
        for (int slot = 0; slot < G::slot_count; ++slot)
            if (kept_alive[slot] && last_use[slot] == none) release_kept(slot);
        auto release_kept_read_last_by = [&](int i) {
            for (int slot = 0; slot < G::slot_count; ++slot)
                if (kept_alive[slot] && last_use[slot] == i) release_kept(slot);
        };

        for (int i = next_backward(G::op_count); i >= 0; i = next_backward(i)) {
            const graph::Op& op = G::ops[i];
            for (int slot : {op.in[0], op.in[1], op.out})
                if (backward_reads_of(i)(slot)) ensure(ensure, slot, backward_reads_of(i), backward_reads_of(next_backward(i)));
            const bool conv = op.kind == graph::OpKind::conv;
            if (conv) {
                push(StepKind::backward_weights, i, none);
                release_rebuilt_unless(backward_reads_of(next_backward(i)));
                release_kept_read_last_by(i);
            }
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
            push(conv ? StepKind::backward_data : StepKind::backward, i, none);
            if (!handed_on) busy[p.gradient[op.out]] = false;
            release_rebuilt_unless(backward_reads_of(next_backward(i)));
            release_kept_read_last_by(i);
        }
        return p;
    }

    // Whether op's backward (UNet::run_backward) reads slot's value: an op its inputs (a norm
    // its input only: the activation's mask comes from it), a residual join its output only.
    static constexpr bool backward_reads(const graph::Op& op, int slot) {
        using graph::OpKind;
        if (slot == graph::no_slot) return false;
        switch (op.kind) {
            case OpKind::output: return false;
            case OpKind::add_act: return op.out == slot;
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

#pragma once
// UNet<config, backend, scalar>: the network a UNetConfig describes. Its op graph
// (graph/unet_graph.hpp) is a compile-time list; forward walks it, backward walks it in reverse,
// and every op is a layer (layers/) that calls Kernels<Backend>. The model itself owns the
// parameters, the memory plan (model/memory_plan.hpp) and the loss over the heads.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "../backend/cpu/kernels.hpp"
#ifdef __CUDACC__
#include "../backend/cuda/kernels.cuh"  // UNet<config, cuda> when nvcc compiles the including file
#endif
#include "../config/unet_config.hpp"
#include "../graph/unet_graph.hpp"
#include "../layers/conv.hpp"
#include "../layers/join.hpp"
#include "../layers/norm_act.hpp"
#include "../layers/resample.hpp"
#include "../loss/dice.hpp"
#include "../loss/head_loss.hpp"
#include "../tensor/tensor.hpp"
#include "init.hpp"
#include "memory_plan.hpp"

namespace lightunet {

// nnU-Net's deep-supervision weights: 1, 1/2, 1/4, ... over the heads, normalised to sum 1.
constexpr double head_weight(const UNetConfig& c, int head) {
    const int heads = 1 + c.auxiliary_heads();
    double sum = 0;
    for (int h = 0; h < heads; ++h) sum += 1.0 / double(1 << h);
    return 1.0 / double(1 << head) / sum;
}

template <UNetConfig C, class Backend = cpu, class T = float>
class UNet {
    static_assert(ValidConfig<C>::value);
    static_assert(std::is_floating_point_v<T>, "the scalar type must be float or double");

public:
    using scalar = T;
    using backend = Backend;
    using Input = Tensor<T, Backend>;
    using Labels = Tensor<std::uint8_t, Backend>;
    using Graph = graph::UNetGraph<C>;
    static constexpr UNetConfig config = C;
    static constexpr int depth = C.depth();
    static constexpr std::size_t parameter_count = Graph::parameter_count;
    static constexpr std::size_t parameter_bytes = parameter_count * sizeof(T);
    static constexpr std::size_t buffer_count = Graph::buffer_count;
    // Spatial extents must be divisible by this (depth too in 3D).
    static constexpr int size_multiple = 1 << (depth - 1);

    explicit UNet(std::uint64_t seed) {
        params_.resize({1, 1, 1, 1, int(parameter_count)});
        grads_.resize({1, 1, 1, 1, int(parameter_count)});
        buffers_.resize({1, 1, 1, 1, int(std::max<std::size_t>(1, buffer_count))});
        for (int i = 0; i < Graph::op_count; ++i) layers_[i] = make_layer(Graph::ops[i]);
        set_conv_precision(C.precision);
        initialize(seed);
    }

    // Throws ShapeError naming the shape and what is wrong with it.
    static void check_input_shape(const Shape& s) {
        auto fail = [&](const std::string& why) { throw ShapeError("UNet: input shape " + s.str() + ": " + why); };
        if (s.n < 1) fail("batch size must be at least 1");
        if (s.c != C.in_channels) fail("expected " + std::to_string(C.in_channels) + " channels");
        if (C.dims == 2 && s.d != 1) fail("a 2D network needs depth extent 1");
        const int m = size_multiple;
        if (s.h < m || s.w < m || s.h % m || s.w % m || (C.dims == 3 && (s.d < m || s.d % m)))
            fail("spatial extents must be positive multiples of 2^(depth-1) = " + std::to_string(m));
    }

    // Bytes of activations, gradients and scratch a step at this input shape holds (parameters,
    // gradients and optimiser state not included).
    static constexpr std::size_t workspace_bytes(const Shape& s, Mode mode, ConvSettings settings = {ConvAlgorithm::automatic, C.precision}) {
        return MemoryPlan<C, Backend, T>::make(s, mode, settings).bytes();
    }
    static constexpr std::size_t workspace_bytes(const Shape& s, Mode mode, ConvAlgorithm algorithm) {
        return workspace_bytes(s, mode, ConvSettings{algorithm, C.precision});
    }
    // What the tensors planned so far hold (equals workspace_bytes after one pass in one mode).
    std::size_t planned_bytes() const {
        std::size_t elements = scratch_.capacity() + probs_.capacity();
        for (const auto& t : pool_) elements += t.capacity();
        for (const auto& layer : layers_) {
            if (const auto* na = std::get_if<NormAct>(&layer)) elements += na->state_capacity();
            if (const Conv* c = conv_of(layer)) elements += c->prepared_capacity();
        }
        std::size_t label_bytes = 0;
        for (const auto& t : labels_) label_bytes += t.capacity();
        return elements * sizeof(T) + loss_sums_.capacity() * sizeof(double) + label_bytes;
    }

    // Multiply-adds x 2 of every convolution of an inference pass (a training step does about
    // three times this: forward, data gradient, weight gradient; plus deep-supervision heads).
    static constexpr double forward_flops(const Shape& s) {
        double f = 0;
        for (const graph::Op& op : Graph::ops) {
            if (!op.is_conv_like() || op.training_only) continue;
            const int taps = op.kind == graph::OpKind::conv ? (C.dims == 3 ? op.kernel * op.kernel * op.kernel : op.kernel * op.kernel)
                                                            : op.kind == graph::OpKind::up_interpolate ? 1 : C.sub_voxels();
            // Stride-2 ops compute at the coarse level: the down op's output level, the up ops' input level.
            const int level = op.kind == graph::OpKind::up_transposed || op.kind == graph::OpKind::up_interpolate ? op.level + 1 : op.level;
            f += 2.0 * s.n * double(layers::level_extent(s, level, C.dims).size()) * op.cin * op.cout * taps;
        }
        return f;
    }

    // Probabilities [n][classes][d][h][w] of the top head. Mode::train uses batch statistics (and
    // updates the running ones) and runs the deep-supervision heads too; Mode::eval the running
    // statistics and the top head only.
    const Tensor<T, Backend>& forward(const Tensor<T, Backend>& x, Mode mode) {
        check_input_shape(x.shape());
        if (!Kernels<Backend>::all_finite(std::ptrdiff_t(x.size()), x.data()))
            throw std::invalid_argument("UNet::forward: the input holds NaN or Inf values");
        if (across_ && mode == Mode::train) across_->check(x.shape().n, "UNet::forward");
        plan(x.shape(), mode);
        activations_kept_ = false;
        run_forward(x, mode == Mode::train);
        activations_kept_ = mode == Mode::train;
        return probs_;
    }
    const Tensor<T, Backend>& predict(const Tensor<T, Backend>& x) { return forward(x, Mode::eval); }

    // After forward(x, Mode::train): the loss (summed over the heads with head_weight), with
    // gradients of every parameter in gradients() (overwritten) and, if given, of the input.
    // The gradients reuse the memory of the activations as the walk leaves them behind, so each
    // backward needs a training forward of its own (a second one throws std::logic_error).
    // Distributed (distribute()): the global batch's loss, and this share's part of the
    // gradients, which sum across the processes to the global batch's.
    double backward(const Tensor<T, Backend>& x, const Labels& labels, const DiceLoss& loss,
                    Tensor<T, Backend>* input_grad = nullptr) {
        using Loss = HeadLoss<T, Backend>;
        const Shape& s = planned_shape_;
        if (!activations_kept_)
            throw std::logic_error("UNet::backward: needs forward(x, Mode::train) first, once per backward (the backward pass "
                                   "overwrites the activations it has used with gradients)");
        Loss::check_targets(C.head, C.classes, labels, {s.n, C.head == Head::softmax ? 1 : C.classes, s.d, s.h, s.w}, "UNet::backward");
        grads_.fill(T(0));
        double value = 0;
        for (int h = 0; h < Graph::head_count; ++h) {
            const int logits = Graph::head_logits[h];
            if (h > 0) Loss::subsample(labels_[h - 1].shape(), C.down_factor_depth(), h == 1 ? labels.data() : labels_[h - 2].data(),
                                       labels_[h - 1].data());
            value += Loss::apply(C.head, slot_shape(logits), value_of(Graph::head_probabilities[h], x),
                                 h == 0 ? labels.data() : labels_[h - 1].data(), loss, head_weight(C, h), gradient(logits),
                                 loss_sums_.data(), across_);
        }
        if (input_grad) input_grad->resize(x.shape());
        activations_kept_ = false;
        run_backward(x, input_grad);
        return value;
    }

    // Forward, loss, backward, then `between(gradients)` (the gradient tensor, for a caller to
    // all-reduce, clip or log), then one optimiser update. Returns the loss before the update.
    // A non-finite loss throws before `between` runs and leaves the weights as they were.
    template <class Optimizer, class Between>
    double train_step(const Tensor<T, Backend>& x, const Labels& labels, const DiceLoss& loss, Optimizer& optimizer, Between&& between) {
        forward(x, Mode::train);
        const double value = backward(x, labels, loss);
        if (!std::isfinite(value)) throw std::runtime_error("UNet::train_step: the loss is " + std::to_string(value));
        between(grads_);
        update(optimizer);
        return value;
    }
    template <class Optimizer>
    double train_step(const Tensor<T, Backend>& x, const Labels& labels, const DiceLoss& loss, Optimizer& optimizer) {
        return train_step(x, labels, loss, optimizer, [](Tensor<T, Backend>&) {});
    }
    // The update half of a step: the optimiser applied to gradients() (after backward(), and
    // whatever the caller did to the gradients since).
    template <class Optimizer>
    void update(Optimizer& optimizer) {
        optimizer.step(params_, grads_);
        weights_changed();
    }

    // Data parallelism: training batches are this process's share of a global batch (`across`
    // says which; null: not distributed). Batch-norm statistics, the loss and its normalisation
    // then cover the global batch (the processes exchange partial sums through across->sum
    // inside forward and backward, so every process must run them in step), and the gradients
    // after backward() are this share's part: summed across processes they are the global
    // batch's. `across` must outlive its use; inference is unaffected.
    void distribute(CrossBatch* across) { across_ = across; }
    CrossBatch* distribution() const { return across_; }

    // Views of the backend's memory (host backends only; see the host copies below otherwise).
    // Inference keeps each convolution's weights prepared (transformed or packed, with an eval
    // batch norm folded in) while they do not change: every non-const access to the parameters
    // or buffers counts as a change, and so does weights_changed(), which a caller writing
    // through a view kept across predict() calls must call itself.
    std::span<T> parameters() requires(Backend::host_accessible) {
        weights_changed();
        return {params_.data(), parameter_count};
    }
    std::span<const T> parameters() const requires(Backend::host_accessible) { return {params_.data(), parameter_count}; }
    std::span<T> gradients() requires(Backend::host_accessible) { return {grads_.data(), parameter_count}; }
    std::span<T> buffers() requires(Backend::host_accessible) {
        weights_changed();
        return {buffers_.data(), buffer_count};
    }
    std::span<const T> buffers() const requires(Backend::host_accessible) { return {buffers_.data(), buffer_count}; }

    // Host copies in the layouts of docs/design.md, the same for every backend, so checkpoints
    // move between backends. Sizes must be parameter_count / buffer_count.
    void copy_parameters_to_host(std::span<T> out) const { to_host(out, params_, parameter_count, "copy_parameters_to_host"); }
    void copy_gradients_to_host(std::span<T> out) const { to_host(out, grads_, parameter_count, "copy_gradients_to_host"); }
    void copy_buffers_to_host(std::span<T> out) const { to_host(out, buffers_, buffer_count, "copy_buffers_to_host"); }
    void load_parameters_from_host(std::span<const T> in) {
        from_host(in, params_, parameter_count, "load_parameters_from_host");
        weights_changed();
    }
    void load_buffers_from_host(std::span<const T> in) {
        from_host(in, buffers_, buffer_count, "load_buffers_from_host");
        weights_changed();
    }
    // The raw tensors, for optimisers and checkpoints (the backend's memory).
    Tensor<T, Backend>& parameter_tensor() {
        weights_changed();
        return params_;
    }
    void weights_changed() { ++weights_version_; }
    // How often inference prepared convolution weights so far, over all layers (diagnostics).
    long weight_preparations() const {
        long n = 0;
        for (const auto& layer : layers_)
            if (const Conv* c = conv_of(layer)) n += c->preparations;
        return n;
    }
    Tensor<T, Backend>& gradient_tensor() { return grads_; }
    Tensor<T, Backend>& buffer_tensor() {
        weights_changed();
        return buffers_;
    }
    const Tensor<T, Backend>& probabilities() const { return probs_; }
    void set_threads(int n) { Kernels<Backend>::set_threads(n); }

    // The algorithm every convolution of the model runs (ConvAlgorithm::automatic unless set):
    // direct or winograd force one path through the whole network, for tests and benchmarks.
    // Workspace sizes depend on it, so the next pass plans its buffers again.
    void set_conv_algorithm(ConvAlgorithm algorithm) { set_conv_settings({algorithm, settings_.precision}); }
    ConvAlgorithm conv_algorithm() const { return settings_.algorithm; }
    // The precision of every convolution's operands (UNetConfig::precision unless set): bf16
    // rounds inputs, weights and output gradients to bfloat16 and sums in fp32 (see Precision);
    // the parameters, their gradients and the optimiser stay fp32, so a model's checkpoints serve
    // either precision. A float model on the CPU only (the CUDA backend refuses bf16).
    void set_conv_precision(Precision precision) { set_conv_settings({settings_.algorithm, precision}); }
    Precision conv_precision() const { return settings_.precision; }

private:
    void set_conv_settings(ConvSettings settings) {
        settings_ = settings;
        for (auto& layer : layers_)
            if (Conv* c = conv_of(layer)) {
                c->problem.algorithm = settings.algorithm;
                c->problem.precision = settings.precision;
            }
        planned_training_ = planned_eval_ = false;
    }

    static void to_host(std::span<T> out, const Tensor<T, Backend>& t, std::size_t count, const char* what) {
        if (out.size() != count)
            throw std::invalid_argument(std::string("UNet::") + what + ": " + std::to_string(out.size()) + " values given, " +
                                        std::to_string(count) + " expected");
        Backend::download(out.data(), t.data(), count);
    }
    static void from_host(std::span<const T> in, Tensor<T, Backend>& t, std::size_t count, const char* what) {
        if (in.size() != count)
            throw std::invalid_argument(std::string("UNet::") + what + ": " + std::to_string(in.size()) + " values given, " +
                                        std::to_string(count) + " expected");
        Backend::upload(t.data(), in.data(), count);
    }

    using Conv = layers::Conv<T, Backend>;
    using NormAct = layers::NormAct<T, Backend>;
    using MaxPool = layers::MaxPool<T, Backend>;
    using StridedDown = layers::StridedDown<T, Backend>;
    using UpTransposed = layers::UpTransposed<T, Backend>;
    using UpInterpolate = layers::UpInterpolate<T, Backend>;
    using AddAct = layers::AddAct<T, Backend>;
    using Output = layers::Output<T, Backend>;
    using Layer = std::variant<Conv, NormAct, MaxPool, StridedDown, UpTransposed, UpInterpolate, AddAct, Output>;
    using Plan = MemoryPlan<C, Backend, T>;

    // The graph promises what the schedule's rebuild steps rely on: a recomputed value is a
    // norm's output (recomputed from its input with the saved statistics), a regenerated one the
    // output of a cheap single-input op (run again on its input).
    static constexpr bool rebuilt_values_rebuildable() {
        for (const graph::Op& op : Graph::ops) {
            if (op.recomputed && (op.regenerated || op.kind != graph::OpKind::norm_act)) return false;
            if (!op.regenerated) continue;
            const bool cheap = op.kind == graph::OpKind::max_pool || op.kind == graph::OpKind::up_transposed ||
                               op.kind == graph::OpKind::up_interpolate || op.kind == graph::OpKind::conv;
            if (!cheap || op.has_input2() || op.head >= 0) return false;
        }
        return true;
    }
    static_assert(rebuilt_values_rebuildable(), "a recomputed value must be a norm's output, a regenerated one a cheap single-input op's");
    static constexpr bool norms_read_once() {
        for (int i = 0; i < Graph::op_count; ++i)
            if (Graph::ops[i].kind == graph::OpKind::norm_act && Graph::accumulates(i, 0)) return false;
        return true;
    }
    static_assert(norms_read_once(), "a norm's input must have no other reader (its backward works in place)");

    // The convolution a conv-like layer runs (null for the others).
    template <class L>
    static auto conv_of(L& layer) {
        using Found = std::conditional_t<std::is_const_v<L>, const Conv, Conv>;
        return std::visit(
            [](auto& l) -> Found* {
                using Kind = std::decay_t<decltype(l)>;
                if constexpr (std::is_same_v<Kind, Conv>) return &l;
                else if constexpr (std::is_same_v<Kind, StridedDown> || std::is_same_v<Kind, UpTransposed> ||
                                   std::is_same_v<Kind, UpInterpolate>)
                    return &l.conv;
                else return nullptr;
            },
            layer);
    }

    static Layer make_layer(const graph::Op& op) {
        using graph::OpKind;
        switch (op.kind) {
            case OpKind::conv: return Conv::from(op, C.dims);
            case OpKind::norm_act: return NormAct::from(op, C);
            case OpKind::max_pool: return MaxPool::from(op, C.dims);
            case OpKind::strided_down: return StridedDown::from(op, C.dims);
            case OpKind::up_transposed: return UpTransposed::from(op, C.dims);
            case OpKind::up_interpolate: return UpInterpolate::from(op, C.dims);
            case OpKind::add_act: return AddAct::from(op, C.dims);
            default: return Output::from(op, C);
        }
    }
    void set_first_input_channels() {
        for (int i = 0; i < Graph::op_count; ++i)
            if (auto* c = std::get_if<Conv>(&layers_[i]); c && Graph::ops[i].has_input2())
                c->cin0 = Graph::slots[Graph::ops[i].in[0]].channels;
    }

    // Weights drawn in parameter order: He-normal for every convolution's weight (fan-in: its
    // inputs x taps; the stride-2 ones: inputs x cells), zero biases, unit norm scales, and unit
    // running variances.
    void initialize(std::uint64_t seed) {
        set_first_input_channels();
        InitRng rng(seed);
        const double slope = C.act == Act::leaky_relu ? double(C.leaky_slope) : 0.0;
        const double gain = std::sqrt(2.0 / (1.0 + slope * slope));
        std::vector<T> host_params(parameter_count, T(0)), host_buffers(std::max<std::size_t>(1, buffer_count), T(0));
        for (const graph::Op& op : Graph::ops) {
            if (op.is_conv_like()) {
                const std::size_t count = op.bias - op.weight;
                const int fan_in = op.kind == graph::OpKind::up_transposed ? op.cin : int(count / std::size_t(op.cout));
                const double std_dev = gain / std::sqrt(double(fan_in));
                for (std::size_t i = 0; i < count; ++i) host_params[op.weight + i] = T(std_dev * rng.normal());
            } else if (op.kind == graph::OpKind::norm_act) {
                if (op.gamma != graph::no_offset) std::fill_n(host_params.data() + op.gamma, op.cout, T(1));
                if (op.running != graph::no_offset) std::fill_n(host_buffers.data() + op.running + op.cout, op.cout, T(1));
            }
        }
        Backend::upload(params_.data(), host_params.data(), parameter_count);
        Backend::upload(buffers_.data(), host_buffers.data(), buffers_.size());
    }

    // Sizes every buffer for this input shape; a repeated shape allocates nothing. Pooled
    // buffers only grow, so alternating training and inference allocates nothing either.
    void plan(const Shape& s, Mode mode) {
        const bool training = mode == Mode::train;
        if (s != planned_shape_) planned_training_ = planned_eval_ = false;
        if (training ? planned_training_ : planned_eval_) return;
        const Plan p = Plan::make(s, mode, settings_);
        auto vec = [](std::size_t n) { return Shape{1, 1, 1, 1, int(std::max<std::size_t>(n, 1))}; };
        auto grow = [&](auto& t, std::size_t n) {
            if (n > t.capacity()) t.resize(vec(n));
        };
        for (int b = 0; b < p.buffers; ++b) grow(pool_[b], p.capacity[b]);
        grow(scratch_, p.scratch);
        for (auto& layer : layers_) std::visit([&](auto& l) { l.plan(s); }, layer);
        probs_.resize(slot_shape_at(Graph::output_slot, s));
        if (training) {
            grow(loss_sums_, p.loss_sums);
            const int label_channels = C.head == Head::softmax ? 1 : C.classes;
            for (int h = 1; h < Graph::head_count; ++h) {
                const Shape logits = slot_shape_at(Graph::head_logits[h], s);
                labels_[h - 1].resize({s.n, label_channels, logits.d, logits.h, logits.w});
            }
        }
        (training ? training_plan_ : eval_plan_) = p;
        planned_shape_ = s;
        (training ? planned_training_ : planned_eval_) = true;
    }

    static constexpr Shape slot_shape_at(int slot, const Shape& s) {
        return layers::level_shape(s, Graph::slots[slot].level, C.dims, Graph::slots[slot].channels);
    }
    Shape slot_shape(int slot) const { return slot_shape_at(slot, planned_shape_); }

    // Where a slot's value lives now (value_at_: set by the pass's steps).
    T* value_of(int slot, const Tensor<T, Backend>& x) {
        if (slot == Graph::input_slot) return const_cast<T*>(x.data());  // read only: the input is never written
        if (slot == Graph::output_slot) return probs_.data();
        return value_at_[slot] == Plan::none ? nullptr : pool_[value_at_[slot]].data();
    }
    T* gradient(int slot) { return pool_[training_plan_.gradient[slot]].data(); }

    layers::Pass<T> pass() {
        return {planned_shape_.n, params_.data(), buffers_.data(), grads_.data(), scratch_.data(), training_, weights_version_,
                training_ ? across_ : nullptr};
    }

    void run_forward(const Tensor<T, Backend>& x, bool training) {
        if (training && C.norm == Norm::batch) weights_changed();  // the running statistics move
        training_ = training;
        const layers::Pass<T> p = pass();
        if (training) {
            value_at_ = training_plan_.value;
            for (int i = 0; i < training_plan_.loss_step; ++i) run_step(training_plan_.steps[i], x, p, nullptr);
            return;
        }
        value_at_ = eval_plan_.value;
        for (int i = 0; i < Graph::op_count; ++i) {
            const graph::Op& op = Graph::ops[i];
            if (op.training_only || Plan::folded_into_previous(i)) continue;
            const T* in0 = value_of(op.in[0], x);
            const T* in1 = op.has_input2() ? value_of(op.in[1], x) : nullptr;
            if constexpr (Kernels<Backend>::conv_output_activation)
                if (Plan::folds_next_norm(i)) {
                    const NormAct& norm = std::get<NormAct>(layers_[i + 1]);
                    std::get<Conv>(layers_[i]).forward_folded(p, in0, in1, norm.folded(p), value_of(Graph::ops[i + 1].out, x));
                    continue;
                }
            std::visit([&](auto& layer) { layer.forward(p, in0, in1, value_of(op.out, x)); }, layers_[i]);
        }
    }

    // The reverse walk: the training plan's steps after the loss. Each op turns its output's
    // gradient into its inputs' (added to what a later reader wrote, when the graph says so);
    // norms work in place.
    void run_backward(const Tensor<T, Backend>& x, Tensor<T, Backend>* input_grad) {
        const layers::Pass<T> p = pass();
        for (int i = training_plan_.loss_step + 1; i < training_plan_.step_count; ++i)
            run_step(training_plan_.steps[i], x, p, input_grad);
    }

    void run_step(const Step& step, const Tensor<T, Backend>& x, const layers::Pass<T>& p, Tensor<T, Backend>* input_grad) {
        if (step.kind == StepKind::loss) return;  // backward() ran it
        const int i = step.op;
        const graph::Op& op = Graph::ops[i];
        const T* in0 = value_of(op.in[0], x);
        const T* in1 = op.has_input2() ? value_of(op.in[1], x) : nullptr;
        auto sink = [&](int k) -> layers::GradSink<T> {
            const int slot = op.in[k];
            if (slot == graph::no_slot) return {};
            if (slot == Graph::input_slot) return {input_grad ? input_grad->data() : nullptr, Graph::accumulates(i, k)};
            return {gradient(slot), Graph::accumulates(i, k)};
        };
        switch (step.kind) {
            case StepKind::forward:
            case StepKind::rebuild: {
                T* out = step.buffer == Plan::none ? probs_.data() : pool_[step.buffer].data();
                if (step.kind == StepKind::rebuild && op.kind == graph::OpKind::norm_act)
                    std::get<NormAct>(layers_[i]).recompute(p, in0, out);
                else
                    std::visit([&](auto& layer) { layer.forward(p, in0, in1, out); }, layers_[i]);
                if (op.out != Graph::output_slot) value_at_[op.out] = step.buffer;
                return;
            }
            case StepKind::backward_weights: std::get<Conv>(layers_[i]).backward_weights(p, in0, in1, gradient(op.out)); return;
            case StepKind::backward_data: std::get<Conv>(layers_[i]).backward_data(p, gradient(op.out), sink(0), sink(1)); return;
            case StepKind::backward:
                std::visit(
                    [&](auto& layer) {
                        using L = std::decay_t<decltype(layer)>;
                        if constexpr (std::is_same_v<L, Conv>) throw std::logic_error("UNet: a convolution's backward runs as two steps");
                        else if constexpr (std::is_same_v<L, NormAct>) layer.backward(p, in0, gradient(op.out));
                        else if constexpr (std::is_same_v<L, AddAct>) layer.backward(p, value_of(op.out, x), gradient(op.out), sink(0), sink(1));
                        else if constexpr (std::is_same_v<L, Output>) {}
                        else layer.backward(p, in0, gradient(op.out), sink(0));
                    },
                    layers_[i]);
                return;
            case StepKind::loss: return;
        }
    }

    Tensor<T, Backend> params_, grads_, buffers_;
    std::array<Layer, Graph::op_count> layers_;
    std::array<Tensor<T, Backend>, Plan::max_buffers> pool_;
    Tensor<T, Backend> scratch_, probs_;
    Tensor<double, Backend> loss_sums_;
    std::array<Tensor<std::uint8_t, Backend>, std::max(1, Graph::head_count - 1)> labels_;  // down-sampled targets
    Plan training_plan_{}, eval_plan_{};
    ConvSettings settings_{};
    CrossBatch* across_ = nullptr;
    std::uint64_t weights_version_ = 0;
    Shape planned_shape_{};
    bool planned_training_ = false, planned_eval_ = false, training_ = false;
    bool activations_kept_ = false;  // a training forward's activations, not yet used by a backward
    std::array<int, Graph::slot_count> value_at_{};  // the pooled buffer holding each slot's value now
};

}  // namespace lightunet

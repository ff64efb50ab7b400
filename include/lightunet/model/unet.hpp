#pragma once
// UNet<config, backend, scalar>: the network a UNetConfig describes, as one flat type. Levels
// are arrays of identical layer structs built by constexpr loops over the configuration, not
// nested layer types, so the type is short and errors stay readable.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend/cpu/kernels.hpp"
#ifdef __CUDACC__
#include "../backend/cuda/kernels.cuh"  // UNet<config, cuda> when nvcc compiles the including file
#endif
#include "../config/unet_config.hpp"
#include "../layers/conv.hpp"
#include "../layers/norm_act.hpp"
#include "../loss/dice.hpp"
#include "../tensor/tensor.hpp"
#include "init.hpp"

namespace lightunet {

enum class Mode { train, eval };

template <UNetConfig C, class Backend = cpu, class T = float>
class UNet {
    static_assert(ValidConfig<C>::value);
    static_assert(std::is_floating_point_v<T>, "the scalar type must be float or double");

public:
    using scalar = T;
    using backend = Backend;
    using Input = Tensor<T, Backend>;
    using Labels = Tensor<std::uint8_t, Backend>;
    static constexpr UNetConfig config = C;
    static constexpr int depth = C.depth();
    static constexpr std::size_t parameter_count = lightunet::parameter_count(C);
    static constexpr std::size_t parameter_bytes = parameter_count * sizeof(T);
    static constexpr std::size_t buffer_count = [] {
        std::size_t n = 0;
        if (C.norm == Norm::batch) {
            for (int l = 0; l < depth; ++l) n += 4 * std::size_t(C.widths[l]);
            for (int l = 0; l < depth - 1; ++l) n += 4 * std::size_t(C.widths[l]);
        }
        return n;
    }();
    // Spatial extents must be divisible by this (depth too in 3D).
    static constexpr int size_multiple = 1 << (depth - 1);

    explicit UNet(std::uint64_t seed) {
        params_.resize({1, 1, 1, 1, int(parameter_count)});
        grads_.resize({1, 1, 1, 1, int(parameter_count)});
        buffers_.resize({1, 1, 1, 1, int(std::max<std::size_t>(1, buffer_count))});
        build_layers();
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
    static constexpr std::size_t workspace_bytes(const Shape& s, Mode mode, ConvAlgorithm algorithm = ConvAlgorithm::automatic) {
        const Plan p = make_plan(s, mode, algorithm);
        return p.tensors * sizeof(T) + p.loss_sums * sizeof(double);
    }
    // What the tensors planned so far hold (equals workspace_bytes after one pass in one mode).
    std::size_t planned_bytes() const {
        std::size_t elements = 0;
        auto add = [&](const Tensor<T, Backend>& t) { elements += t.capacity(); };
        for (const Block* b : block_list()) {
            for (const auto* t : {&b->z1, &b->z2, &b->y2}) add(*t);
            for (const NormAct* na : {&b->norm1, &b->norm2})
                for (const auto* t : {&na->mean, &na->invstd, &na->scratch}) add(*t);
        }
        for (const auto& d : down_) add(d.out);
        for (const auto& u : up_) add(u.out);
        for (const auto& g : grad_y_) add(g);
        for (const auto& g : grad_mid_) add(g);
        for (const auto& g : grad_down_) add(g);
        for (const auto* t : {&eval_conv_, &inner_act_, &logits_, &probs_, &grad_logits_, &workspace_, &resample_,
                              &transposed_, &transposed_grad_})
            add(*t);
        return elements * sizeof(T) + loss_sums_.capacity() * sizeof(double);
    }

    // Multiply-adds x 2 of every convolution in one forward pass (a training step does about
    // three times this: forward, data gradient, weight gradient).
    static constexpr double forward_flops(const Shape& s) {
        double f = 0;
        auto conv = [&](int l, int cin, int cout, int taps) {
            f += 2.0 * s.n * double(level_extent(s, l).size()) * cin * cout * taps;
        };
        for (int l = 0; l < depth; ++l) {
            const int cin = l == 0 ? C.in_channels : C.widths[l - 1];
            if (l > 0 && C.down == lightunet::Down::strided_conv) conv(l, cin * C.sub_voxels(), cin, 1);
            conv(l, cin, C.widths[l], C.taps());
            conv(l, C.widths[l], C.widths[l], C.taps());
        }
        for (int l = depth - 2; l >= 0; --l) {
            if (C.up == lightunet::Up::transposed_conv) conv(l + 1, C.widths[l + 1], C.widths[l] * C.sub_voxels(), 1);
            else conv(l + 1, C.widths[l + 1], C.widths[l], 1);
            conv(l, 2 * C.widths[l], C.widths[l], C.taps());
            conv(l, C.widths[l], C.widths[l], C.taps());
        }
        conv(0, C.widths[0], C.classes, 1);
        return f;
    }

    // Probabilities [n][classes][d][h][w]. Mode::train uses batch statistics (and updates the
    // running ones); Mode::eval the running statistics.
    const Tensor<T, Backend>& forward(const Tensor<T, Backend>& x, Mode mode) {
        check_input_shape(x.shape());
        if (!Kernels<Backend>::all_finite(std::ptrdiff_t(x.size()), x.data()))
            throw std::invalid_argument("UNet::forward: the input holds NaN or Inf values");
        plan(x.shape(), mode);
        run_forward(x, mode == Mode::train);
        return probs_;
    }
    const Tensor<T, Backend>& predict(const Tensor<T, Backend>& x) { return forward(x, Mode::eval); }

    // After forward(x, Mode::train): the loss, with gradients of every parameter in gradients()
    // (overwritten) and, if given, of the input.
    double backward(const Tensor<T, Backend>& x, const Labels& labels, const DiceLoss& loss,
                    Tensor<T, Backend>* input_grad = nullptr) {
        check_labels(labels);
        const Shape s = x.shape();
        grads_.fill(T(0));
        const double value = Kernels<Backend>::dice_loss(C.head, s.n, C.classes, std::ptrdiff_t(s.spatial()), probs_.data(),
                                                         labels.data(), loss, grad_logits_.data(), loss_sums_.data());
        if (input_grad) input_grad->resize(s);
        run_backward(x, input_grad);
        return value;
    }

    // Forward, loss, backward and one optimiser update. Returns the loss before the update.
    template <class Optimizer>
    double train_step(const Tensor<T, Backend>& x, const Labels& labels, const DiceLoss& loss, Optimizer& optimizer) {
        forward(x, Mode::train);
        const double value = backward(x, labels, loss);
        if (!std::isfinite(value)) throw std::runtime_error("UNet::train_step: the loss is " + std::to_string(value));
        optimizer.step(params_, grads_);
        return value;
    }

    // Views of the backend's memory (host backends only; see the host copies below otherwise).
    std::span<T> parameters() requires(Backend::host_accessible) { return {params_.data(), parameter_count}; }
    std::span<const T> parameters() const requires(Backend::host_accessible) { return {params_.data(), parameter_count}; }
    std::span<T> gradients() requires(Backend::host_accessible) { return {grads_.data(), parameter_count}; }
    std::span<T> buffers() requires(Backend::host_accessible) { return {buffers_.data(), buffer_count}; }
    std::span<const T> buffers() const requires(Backend::host_accessible) { return {buffers_.data(), buffer_count}; }

    // Host copies in the layouts of docs/design.md, the same for every backend, so checkpoints
    // move between backends. Sizes must be parameter_count / buffer_count.
    void copy_parameters_to_host(std::span<T> out) const { to_host(out, params_, parameter_count, "copy_parameters_to_host"); }
    void copy_gradients_to_host(std::span<T> out) const { to_host(out, grads_, parameter_count, "copy_gradients_to_host"); }
    void copy_buffers_to_host(std::span<T> out) const { to_host(out, buffers_, buffer_count, "copy_buffers_to_host"); }
    void load_parameters_from_host(std::span<const T> in) { from_host(in, params_, parameter_count, "load_parameters_from_host"); }
    void load_buffers_from_host(std::span<const T> in) { from_host(in, buffers_, buffer_count, "load_buffers_from_host"); }
    // The raw tensors, for optimisers and checkpoints (the backend's memory).
    Tensor<T, Backend>& parameter_tensor() { return params_; }
    Tensor<T, Backend>& gradient_tensor() { return grads_; }
    Tensor<T, Backend>& buffer_tensor() { return buffers_; }
    const Tensor<T, Backend>& probabilities() const { return probs_; }
    void set_threads(int n) { Kernels<Backend>::set_threads(n); }

    // The algorithm every convolution of the model runs (ConvAlgorithm::automatic unless set):
    // direct or winograd force one path through the whole network, for tests and benchmarks.
    // Workspace sizes depend on it, so the next pass plans its buffers again.
    void set_conv_algorithm(ConvAlgorithm algorithm) {
        for_each_conv([&](Conv& c) { c.problem.algorithm = algorithm; });
        planned_training_ = planned_eval_ = false;
    }
    ConvAlgorithm conv_algorithm() const { return head_.problem.algorithm; }

private:
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

    struct Block {
        Conv conv1, conv2;
        NormAct norm1, norm2;
        Tensor<T, Backend> z1, z2, y2;  // conv outputs and the block's output; y1 is recomputed
    };
    struct Down {
        Conv conv;  // strided convolution as a 1x1 over the space-to-depth input
        Tensor<T, Backend> out;
    };
    struct Up {
        Conv conv;  // transposed: 1x1 to (out * cells) channels; interpolate: 1x1 at the coarse level
        Tensor<T, Backend> out;
    };
    static constexpr Extent level_extent(const Shape& s, int l) {
        return {C.dims == 3 ? s.d >> l : 1, s.h >> l, s.w >> l};
    }
    template <class F>
    void for_each_conv(F&& f) {
        for (Block& b : enc_) f(b.conv1), f(b.conv2);
        for (Block& b : dec_) f(b.conv1), f(b.conv2);
        for (Down& d : down_) f(d.conv);
        for (Up& u : up_) f(u.conv);
        f(head_);
    }
    static constexpr std::size_t conv_scratch(const ConvProblem& p, bool training) {
        return training ? Kernels<Backend>::template conv_workspace_size<T>(p)
                        : Kernels<Backend>::template conv_forward_workspace_size<T>(p);
    }
    static constexpr ConvProblem conv3(Extent e, int cin, int cout, ConvAlgorithm a) {
        return {e, C.kernel_depth(), 3, 3, cin, cout, a};
    }
    static constexpr ConvProblem conv1(Extent e, int cin, int cout, ConvAlgorithm a) { return {e, 1, 1, 1, cin, cout, a}; }

    // Everything a forward (and, in training, backward) pass at one input shape holds besides
    // the parameters, in elements. plan() sizes the tensors from it, so it is exact.
    struct Plan {
        std::size_t scratch = 0, rearranged = 1, eval_size = 0, act_size = 0, transposed = 1;
        std::size_t tensors = 0;  // sum of every tensor below but the loss sums (doubles)
        std::size_t loss_sums = 0;
    };
    static constexpr std::size_t stat_count(Norm norm, int n, int channels) {
        switch (norm) {
            case Norm::batch: return std::size_t(channels);
            case Norm::instance: return std::size_t(n) * channels;
            case Norm::group: return std::size_t(n) * C.groups;
            default: return 1;
        }
    }
    static constexpr Plan make_plan(const Shape& s, Mode mode, ConvAlgorithm a) {
        Plan p;
        const bool training = mode == Mode::train;
        const std::size_t n = std::size_t(s.n);
        // Inference writes a decoder block's output over its skip tensor and stages up-sampling
        // and the head's logits in the shared buffers, so only encoder outputs stay allocated.
        auto block = [&](std::size_t out, Extent e, int cin, int w, bool decoder) {
            if (training || !decoder) p.tensors += out;  // y2
            if (training) p.tensors += 2 * out;  // z1, z2
            else p.eval_size = std::max(p.eval_size, out);
            p.act_size = std::max(p.act_size, out);
            p.tensors += 2 * (2 * stat_count(C.norm, s.n, w) + 2 * n * w);  // two norms: mean, invstd, scratch
            p.scratch = std::max({p.scratch, conv_scratch(conv3(e, cin, w, a), training), conv_scratch(conv3(e, w, w, a), training)});
        };
        for (int l = 0; l < depth; ++l) {
            const Extent e = level_extent(s, l);
            const int w = C.widths[l];
            const std::size_t out = n * w * e.size();
            block(out, e, l == 0 ? C.in_channels : C.widths[l - 1], w, false);
            if (l < depth - 1) {
                block(out, e, 2 * w, w, true);
                if (training) p.tensors += out;  // up-sampled (inference: in the inner-activation buffer)
                const Extent below = level_extent(s, l + 1);
                const ConvProblem up = C.up == lightunet::Up::transposed_conv ? conv1(below, C.widths[l + 1], w * C.sub_voxels(), a)
                                                                              : conv1(below, C.widths[l + 1], w, a);
                p.scratch = std::max(p.scratch, conv_scratch(up, training));
                p.transposed = std::max(p.transposed, up.weight_count());
                if (training) p.rearranged = std::max(p.rearranged, out);
                else p.eval_size = std::max(p.eval_size, out);
            }
            if (l > 0) {
                const int above = C.widths[l - 1];
                p.tensors += n * above * e.size();  // down-sampled
                if (C.down == lightunet::Down::strided_conv) {
                    p.scratch = std::max(p.scratch, conv_scratch(conv1(e, above * C.sub_voxels(), above, a), training));
                    const std::size_t rearranged = n * above * e.size() * C.sub_voxels();
                    if (training) p.rearranged = std::max(p.rearranged, 2 * rearranged);
                    else p.eval_size = std::max(p.eval_size, rearranged);
                }
            }
            if (training) p.tensors += 2 * out + (l > 0 ? n * C.widths[l - 1] * e.size() : 0);  // gradients
        }
        const std::size_t head = n * C.classes * level_extent(s, 0).size();
        p.scratch = std::max(p.scratch, conv_scratch(conv1(level_extent(s, 0), C.widths[0], C.classes, a), training));
        if (training) {
            p.tensors += 3 * head + p.transposed;  // logits, probabilities, their gradients; transposed weight gradient
            p.loss_sums = 3 * n * C.classes;
        }
        if (!training) {
            p.tensors += head;  // probabilities
            p.eval_size = std::max(p.eval_size, head);  // logits
            p.rearranged = 0;
        }
        p.tensors += p.transposed + p.scratch + p.rearranged + p.act_size + (training ? 0 : p.eval_size);
        return p;
    }

    void build_layers() {
        std::size_t offset = 0, running = 0;
        auto conv = [&](Conv& c, int cin, int cout, int taps_d, int taps_hw) {
            c.problem = {Extent{}, taps_d, taps_hw, taps_hw, cin, cout};
            c.weight = offset;
            c.bias = offset + c.problem.weight_count();
            offset += c.parameter_count();
        };
        auto norm = [&](NormAct& na, int ch) {
            na.norm = C.norm;
            na.channels = ch;
            na.groups = C.norm == Norm::group ? C.groups : 1;
            na.activation = {C.act, C.act == Act::leaky_relu ? C.leaky_slope : 0.0};
            if (C.norm != Norm::none) {
                na.gamma = offset;
                na.beta = offset + ch;
                offset += 2 * std::size_t(ch);
            }
            if (C.norm == Norm::batch) {
                na.running = running;
                running += 2 * std::size_t(ch);
            }
        };
        auto block = [&](Block& b, int cin, int w) {
            conv(b.conv1, cin, w, C.kernel_depth(), 3);
            norm(b.norm1, w);
            conv(b.conv2, w, w, C.kernel_depth(), 3);
            norm(b.norm2, w);
        };
        for (int l = 0; l < depth; ++l) {
            const int cin = l == 0 ? C.in_channels : C.widths[l - 1];
            if (l > 0 && C.down == lightunet::Down::strided_conv) {
                conv(down_[l - 1].conv, cin * C.sub_voxels(), cin, 1, 1);
            }
            block(enc_[l], cin, C.widths[l]);
        }
        for (int l = depth - 2; l >= 0; --l) {
            const int below = C.widths[l + 1], w = C.widths[l];
            if (C.up == lightunet::Up::transposed_conv) {
                // Parameters keep PyTorch's [in][out][cells] layout; the kernel runs on its transpose.
                Conv& c = up_[l].conv;
                c.problem = {Extent{}, 1, 1, 1, below, w * C.sub_voxels()};
                c.weight = offset;
                c.bias = offset + std::size_t(below) * w * C.sub_voxels();
                offset = c.bias + w;
            } else {
                conv(up_[l].conv, below, w, 1, 1);
            }
            block(dec_[l], 2 * w, w);
        }
        conv(head_, C.widths[0], C.classes, 1, 1);
        if (offset != parameter_count) throw std::logic_error("UNet: parameter layout does not match parameter_count");
        if (running != buffer_count)
            throw std::logic_error("UNet: buffer layout does not match buffer_count");
    }

    void initialize(std::uint64_t seed) {
        InitRng rng(seed);
        const double slope = C.act == Act::leaky_relu ? double(C.leaky_slope) : 0.0;
        const double gain = std::sqrt(2.0 / (1.0 + slope * slope));
        std::vector<T> host_params(parameter_count, T(0)), host_buffers(std::max<std::size_t>(1, buffer_count), T(0));
        T* p = host_params.data();
        auto conv = [&](const Conv& c, int fan_in) {
            const double std_dev = gain / std::sqrt(double(fan_in));
            for (std::size_t i = 0; i < c.problem.weight_count(); ++i) p[c.weight + i] = T(std_dev * rng.normal());
        };
        auto norm = [&]([[maybe_unused]] const NormAct& na) {
            if constexpr (C.norm != Norm::none)
                for (int c = 0; c < na.channels; ++c) p[na.gamma + c] = T(1);
        };
        auto block = [&](const Block& b) {
            conv(b.conv1, b.conv1.problem.cin * b.conv1.problem.taps());
            norm(b.norm1);
            conv(b.conv2, b.conv2.problem.cin * b.conv2.problem.taps());
            norm(b.norm2);
        };
        for (int l = 0; l < depth; ++l) {
            if (l > 0 && C.down == lightunet::Down::strided_conv) conv(down_[l - 1].conv, down_[l - 1].conv.problem.cin);
            block(enc_[l]);
        }
        for (int l = depth - 2; l >= 0; --l) {
            conv(up_[l].conv, up_[l].conv.problem.cin);
            block(dec_[l]);
        }
        conv(head_, C.widths[0]);
        if (C.norm == Norm::batch) {
            auto ones = [&](const NormAct& na) { std::fill_n(host_buffers.data() + na.running + na.channels, na.channels, T(1)); };
            for (int l = 0; l < depth; ++l) ones(enc_[l].norm1), ones(enc_[l].norm2);
            for (int l = 0; l < depth - 1; ++l) ones(dec_[l].norm1), ones(dec_[l].norm2);
        }
        Backend::upload(params_.data(), host_params.data(), parameter_count);
        Backend::upload(buffers_.data(), host_buffers.data(), buffers_.size());
    }

    // Sizes every buffer for this input shape; a repeated shape allocates nothing.
    void plan(const Shape& s, Mode mode) {
        const bool training = mode == Mode::train;
        if (s != planned_shape_) planned_training_ = planned_eval_ = false;
        if (training ? planned_training_ : planned_eval_) return;
        const Plan p = make_plan(s, mode, conv_algorithm());
        auto vec = [](std::size_t n) { return Shape{1, 1, 1, 1, int(n)}; };
        auto block_plan = [&](Block& b, const Shape& out, bool decoder) {
            if (training || !decoder) b.y2.resize(out);
            if (training)
                for (auto* t : {&b.z1, &b.z2}) t->resize(out);
            b.norm1.plan(out);
            b.norm2.plan(out);
            for (Conv* c : {&b.conv1, &b.conv2}) c->problem.extent = extent_of(out);
        };
        for (int l = 0; l < depth; ++l) {
            const Extent e = level_extent(s, l);
            const Shape out{s.n, C.widths[l], e.d, e.h, e.w};
            block_plan(enc_[l], out, false);
            if (l < depth - 1) {
                block_plan(dec_[l], out, true);
                if (training) up_[l].out.resize(out);
                up_[l].conv.problem.extent = level_extent(s, l + 1);
            }
            if (l > 0) {
                down_[l - 1].out.resize({s.n, C.widths[l - 1], e.d, e.h, e.w});
                down_[l - 1].conv.problem.extent = e;
            }
            if (training) {
                grad_y_[l].resize(out);
                grad_mid_[l].resize(out);
                if (l > 0) grad_down_[l - 1].resize({s.n, C.widths[l - 1], e.d, e.h, e.w});
            }
        }
        const Shape head_shape{s.n, C.classes, s.d, s.h, s.w};
        head_.problem.extent = extent_of(head_shape);
        probs_.resize(head_shape);
        if (training) {
            logits_.resize(head_shape);
            grad_logits_.resize(head_shape);
            loss_sums_.resize(vec(p.loss_sums));
            transposed_grad_.resize(vec(p.transposed));
        } else {
            eval_conv_.resize(vec(p.eval_size));
        }
        transposed_.resize(vec(p.transposed));
        workspace_.resize(vec(p.scratch));
        if (training) resample_.resize(vec(p.rearranged));
        inner_act_.resize(vec(p.act_size));
        planned_shape_ = s;
        (training ? planned_training_ : planned_eval_) = true;
    }

    std::array<const Block*, 2 * depth - 1> block_list() const {
        std::array<const Block*, 2 * depth - 1> list{};
        for (int l = 0; l < depth; ++l) list[l] = &enc_[l];
        for (int l = 0; l < depth - 1; ++l) list[depth + l] = &dec_[l];
        return list;
    }

    static ChannelSource<T> source(const Tensor<T, Backend>& t) {
        return {t.data(), t.shape().c, std::ptrdiff_t(t.shape().c * t.shape().spatial())};
    }
    static ChannelSink<T> sink(Tensor<T, Backend>& t, bool accumulate) {
        return {t.data(), t.shape().c, std::ptrdiff_t(t.shape().c * t.shape().spatial()), accumulate};
    }
    Cells cells(int coarse_level) const {
        return {level_extent(planned_shape_, coarse_level), C.down_factor_depth()};
    }

    // Training keeps every intermediate for the backward pass; inference runs the block
    // through two shared buffers and keeps only its output.
    void block_forward(Block& b, std::span<const ChannelSource<T>> in, bool training, const Shape& shape, T* out) {
        const int n = planned_shape_.n;
        T* z1 = training ? b.z1.data() : eval_conv_.data();
        T* y1 = inner_act_.data();
        T* z2 = training ? b.z2.data() : eval_conv_.data();
        b.conv1.forward(n, in, params_.data(), z1, workspace_.data());
        b.norm1.forward(shape, z1, y1, params_.data(), buffers_.data(), training);
        const ChannelSource<T> mid{y1, shape.c, std::ptrdiff_t(shape.c * shape.spatial())};
        b.conv2.forward(n, {&mid, 1}, params_.data(), z2, workspace_.data());
        b.norm2.forward(shape, z2, out, params_.data(), buffers_.data(), training);
    }

    // d loss / d y2 arrives in grad; mid is a free buffer of the same shape. No convolution runs
    // in place (ConvProblem's memory contract): norm2 turns grad into d z2 in place, conv2 writes
    // d y1 into mid, norm1 turns it into d z1 there, and conv1 reads mid and writes the sinks
    // (grad is free again by then and may be one of them).
    void block_backward(Block& b, std::span<const ChannelSource<T>> in, Tensor<T, Backend>& grad, Tensor<T, Backend>& mid,
                        std::span<const ChannelSink<T>> grad_in) {
        const int n = planned_shape_.n;
        const Shape& shape = b.y2.shape();
        b.norm2.backward(shape, b.z2.data(), b.y2.data(), grad.data(), params_.data(), grads_.data());
        T* y1 = inner_act_.data();
        b.norm1.recompute(shape, b.z1.data(), y1, params_.data(), buffers_.data());
        const ChannelSource<T> y1_source{y1, shape.c, std::ptrdiff_t(shape.c * shape.spatial())};
        const ChannelSink<T> mid_sink = sink(mid, false);
        b.conv2.backward(n, {&y1_source, 1}, params_.data(), grad.data(), {&mid_sink, 1}, grads_.data(), workspace_.data());
        b.norm1.backward(shape, b.z1.data(), y1, mid.data(), params_.data(), grads_.data());
        b.conv1.backward(n, in, params_.data(), mid.data(), grad_in, grads_.data(), workspace_.data());
    }

    void run_forward(const Tensor<T, Backend>& x, bool training) {
        using K = Kernels<Backend>;
        const int n = planned_shape_.n;
        for (int l = 0; l < depth; ++l) {
            if (l == 0) {
                const ChannelSource<T> in = source(x);
                block_forward(enc_[0], {&in, 1}, training, enc_[0].y2.shape(), enc_[0].y2.data());
                continue;
            }
            Down& d = down_[l - 1];
            const Tensor<T, Backend>& above = enc_[l - 1].y2;
            const std::ptrdiff_t planes = std::ptrdiff_t(n) * C.widths[l - 1];
            if constexpr (C.down == lightunet::Down::max_pool) {
                K::max_pool_forward(cells(l), planes, above.data(), d.out.data());
            } else {
                T* rearranged = training ? resample_.data() : eval_conv_.data();
                K::space_to_depth(cells(l), planes, above.data(), rearranged);
                const ChannelSource<T> in{rearranged, d.conv.problem.cin,
                                          std::ptrdiff_t(d.conv.problem.cin * d.conv.problem.extent.size())};
                d.conv.forward(n, {&in, 1}, params_.data(), d.out.data(), workspace_.data());
            }
            const ChannelSource<T> in = source(d.out);
            block_forward(enc_[l], {&in, 1}, training, enc_[l].y2.shape(), enc_[l].y2.data());
        }
        // Inference: up-sampled tensors live in the inner-activation buffer (read only by the
        // block's first convolution, before its first norm writes that buffer), and a decoder
        // block's output overwrites its skip tensor (read only by the same convolution).
        for (int l = depth - 2; l >= 0; --l) {
            const Shape& shape = enc_[l].y2.shape();
            const std::ptrdiff_t stride = std::ptrdiff_t(shape.c * shape.spatial());
            const T* below = l == depth - 2 ? enc_[depth - 1].y2.data() : training ? dec_[l + 1].y2.data() : enc_[l + 1].y2.data();
            T* up = training ? up_[l].out.data() : inner_act_.data();
            up_forward(l, below, up, training);
            const ChannelSource<T> in[2] = {source(enc_[l].y2), {up, shape.c, stride}};
            block_forward(dec_[l], in, training, shape, training ? dec_[l].y2.data() : enc_[l].y2.data());
        }
        const Shape& top_shape = enc_[0].y2.shape();
        const ChannelSource<T> top{training ? dec_[0].y2.data() : enc_[0].y2.data(), top_shape.c,
                                   std::ptrdiff_t(top_shape.c * top_shape.spatial())};
        T* logits = training ? logits_.data() : eval_conv_.data();
        head_.forward(n, {&top, 1}, params_.data(), logits, workspace_.data());
        if constexpr (C.head == Head::softmax)
            K::softmax_channels(n, C.classes, std::ptrdiff_t(planned_shape_.spatial()), static_cast<const T*>(logits), probs_.data());
        else
            K::sigmoid(std::ptrdiff_t(probs_.size()), static_cast<const T*>(logits), probs_.data());
    }

    // Writes the up-sampled `below` (level l + 1) into `out` (level l), staging the coarse
    // convolution's output in resample_ (training) or eval_conv_ (inference).
    void up_forward(int l, const T* below, T* out, bool training) {
        using K = Kernels<Backend>;
        Up& u = up_[l];
        const int n = planned_shape_.n;
        const ChannelSource<T> in{below, C.widths[l + 1], std::ptrdiff_t(C.widths[l + 1] * u.conv.problem.extent.size())};
        const std::ptrdiff_t planes = std::ptrdiff_t(n) * C.widths[l];
        T* staged = training ? resample_.data() : eval_conv_.data();
        if constexpr (C.up == lightunet::Up::transposed_conv) {
            K::transpose(u.conv.problem.cin, u.conv.problem.cout, params_.data() + u.conv.weight, transposed_.data());
            K::conv_forward(u.conv.problem, n, std::span<const ChannelSource<T>>(&in, 1), static_cast<const T*>(transposed_.data()),
                            static_cast<const T*>(nullptr), staged,
                            std::ptrdiff_t(u.conv.problem.cout * u.conv.problem.extent.size()), workspace_.data());
            K::depth_to_space(cells(l + 1), planes, C.widths[l], static_cast<const T*>(staged),
                              static_cast<const T*>(params_.data() + u.conv.bias), out, false);
        } else {
            u.conv.forward(n, {&in, 1}, params_.data(), staged, workspace_.data());
            K::upsample_nearest_forward(cells(l + 1), planes, static_cast<const T*>(staged), out);
        }
    }

    // d loss / d up_[l].out is in grad; writes d loss / d below into grad_below.
    void up_backward(int l, const Tensor<T, Backend>& below, const T* grad, T* grad_below) {
        using K = Kernels<Backend>;
        Up& u = up_[l];
        const int n = planned_shape_.n;
        const ChannelSource<T> in = source(below);
        const ChannelSink<T> out_sink{grad_below, below.shape().c, std::ptrdiff_t(below.shape().c * below.shape().spatial()), false};
        const std::ptrdiff_t planes = std::ptrdiff_t(n) * C.widths[l];
        const std::ptrdiff_t coarse = std::ptrdiff_t(u.conv.problem.extent.size());
        if constexpr (C.up == lightunet::Up::transposed_conv) {
            K::channel_sums(n, C.widths[l], std::ptrdiff_t(u.out.shape().spatial()), grad, grads_.data() + u.conv.bias);
            K::space_to_depth(cells(l + 1), planes, grad, resample_.data());
            K::transpose(u.conv.problem.cin, u.conv.problem.cout, params_.data() + u.conv.weight, transposed_.data());
            Backend::fill(transposed_grad_.data(), T(0), u.conv.problem.weight_count());
            K::conv_backward(u.conv.problem, n, std::span<const ChannelSource<T>>(&in, 1), static_cast<const T*>(transposed_.data()),
                             static_cast<const T*>(resample_.data()), std::ptrdiff_t(u.conv.problem.cout * coarse),
                             std::span<const ChannelSink<T>>(&out_sink, 1), transposed_grad_.data(), static_cast<T*>(nullptr),
                             workspace_.data());
            // d W[in][out] is the transpose of d W^T[out][in] (transposed_ is free again).
            K::transpose(u.conv.problem.cout, u.conv.problem.cin, static_cast<const T*>(transposed_grad_.data()), transposed_.data());
            K::add(std::ptrdiff_t(u.conv.problem.weight_count()), static_cast<const T*>(transposed_.data()), grads_.data() + u.conv.weight);
        } else {
            K::upsample_nearest_backward(cells(l + 1), planes, grad, resample_.data());
            u.conv.backward(n, {&in, 1}, params_.data(), resample_.data(), {&out_sink, 1}, grads_.data(), workspace_.data());
        }
    }

    // Per level, grad_y_ holds d loss / d (a block's output) and grad_mid_ a block's inner
    // gradients. A decoder block leaves d loss / d skip in grad_y_ (the encoder block's output
    // gradient, to which the level below adds its pooling gradient) and d loss / d up-sampled in
    // inner_act_ (free once the block's inner activation is no longer needed).
    void run_backward(const Tensor<T, Backend>& x, Tensor<T, Backend>* input_grad) {
        using K = Kernels<Backend>;
        const int n = planned_shape_.n;
        const ChannelSource<T> top = source(dec_[0].y2);
        const ChannelSink<T> top_sink = sink(grad_y_[0], false);
        head_.backward(n, {&top, 1}, params_.data(), grad_logits_.data(), {&top_sink, 1}, grads_.data(), workspace_.data());
        for (int l = 0; l <= depth - 2; ++l) {
            const ChannelSource<T> in[2] = {source(enc_[l].y2), source(up_[l].out)};
            const Shape& shape = grad_y_[l].shape();
            T* grad_up = inner_act_.data();
            const ChannelSink<T> sinks[2] = {sink(grad_y_[l], false),
                                             {grad_up, shape.c, std::ptrdiff_t(shape.c * shape.spatial()), false}};
            block_backward(dec_[l], in, grad_y_[l], grad_mid_[l], sinks);
            const Tensor<T, Backend>& below = l == depth - 2 ? enc_[depth - 1].y2 : dec_[l + 1].y2;
            up_backward(l, below, grad_up, grad_y_[l + 1].data());
        }
        for (int l = depth - 1; l >= 0; --l) {
            if (l == 0) {
                const ChannelSource<T> in = source(x);
                ChannelSink<T> s{};
                if (input_grad) s = sink(*input_grad, false);
                block_backward(enc_[0], {&in, 1}, grad_y_[0], grad_mid_[0], {&s, 1});
                continue;
            }
            Down& d = down_[l - 1];
            const ChannelSource<T> in = source(d.out);
            const ChannelSink<T> s = sink(grad_down_[l - 1], false);
            block_backward(enc_[l], {&in, 1}, grad_y_[l], grad_mid_[l], {&s, 1});
            // Route the down-sampled input's gradient back to the skip tensor above.
            const Tensor<T, Backend>& above = enc_[l - 1].y2;
            const std::ptrdiff_t planes = std::ptrdiff_t(n) * C.widths[l - 1];
            if constexpr (C.down == lightunet::Down::max_pool) {
                K::max_pool_backward(cells(l), planes, above.data(), static_cast<const T*>(grad_down_[l - 1].data()),
                                     grad_y_[l - 1].data(), true);
            } else {
                T* rearranged = resample_.data();
                T* rearranged_grad = resample_.data() + std::ptrdiff_t(planes) * d.conv.problem.extent.size() * C.sub_voxels();
                K::space_to_depth(cells(l), planes, above.data(), rearranged);
                const ChannelSource<T> rin{rearranged, d.conv.problem.cin, std::ptrdiff_t(d.conv.problem.cin * d.conv.problem.extent.size())};
                const ChannelSink<T> rs{rearranged_grad, d.conv.problem.cin, rin.image_stride, false};
                d.conv.backward(n, {&rin, 1}, params_.data(), grad_down_[l - 1].data(), {&rs, 1}, grads_.data(), workspace_.data());
                K::depth_to_space(cells(l), planes, C.widths[l - 1], static_cast<const T*>(rearranged_grad),
                                  static_cast<const T*>(nullptr), grad_y_[l - 1].data(), true);
            }
        }
    }

    void check_labels(const Labels& labels) const {
        const Shape& s = planned_shape_;
        const Shape expected{s.n, C.head == Head::softmax ? 1 : C.classes, s.d, s.h, s.w};
        if (labels.shape() != expected)
            throw ShapeError("UNet::backward: labels have shape " + labels.shape().str() + ", expected " + expected.str());
        const std::ptrdiff_t bad = Kernels<Backend>::first_invalid_label(C.head, C.classes, std::ptrdiff_t(labels.size()), labels.data());
        if (bad >= 0) {
            std::uint8_t value = 0;
            Backend::download(&value, labels.data() + bad, 1);
            throw std::invalid_argument("UNet::backward: label value " + std::to_string(int(value)) +
                                        " at index " + std::to_string(bad) +
                                        (C.head == Head::softmax ? " is not a class below " + std::to_string(C.classes)
                                                                 : std::string(" is not 0 or 1")));
        }
    }

    Tensor<T, Backend> params_, grads_, buffers_;
    std::array<Block, depth> enc_;
    std::array<Block, depth - 1> dec_;
    std::array<Down, depth - 1> down_;
    std::array<Up, depth - 1> up_;
    Conv head_;
    Tensor<T, Backend> eval_conv_;  // inference keeps only block outputs
    Tensor<T, Backend> inner_act_;  // a block's inner activation, shared by all blocks
    Tensor<T, Backend> logits_, probs_, grad_logits_, workspace_, resample_, transposed_, transposed_grad_;
    Tensor<double, Backend> loss_sums_;
    std::array<Tensor<T, Backend>, depth> grad_y_, grad_mid_;
    std::array<Tensor<T, Backend>, depth - 1> grad_down_;
    Shape planned_shape_{};
    bool planned_training_ = false, planned_eval_ = false;
};

}  // namespace lightunet

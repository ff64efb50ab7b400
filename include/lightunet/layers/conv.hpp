#pragma once
// A stride-1 'same' convolution with its parameters at fixed offsets of the model's buffer; one
// or two inputs (a decoder block's skip and up-sampled tensors, concatenated).
//
// Its plan: the problem (extent and algorithm) is fixed per input shape by plan(); inference
// runs on weights prepared once (Winograd-transformed or packed, Kernels::conv_prepare) and kept
// while the pass's weights_version stays the same, so a deployed model transforms nothing per
// call. Training prepares them in the workspace on every call: the weights change every step.
//
// Inference can fold the eval-mode batch norm that follows into the convolution (forward_folded):
// its scale into the weights, its shift into the bias, its activation into the output store, so
// the norm's pass over memory disappears.
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "../backend/kernels.hpp"
#include "../tensor/tensor.hpp"
#include "layer.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct Conv {
    ConvProblem problem;
    std::size_t weight = 0, bias = 0;  // offsets into the parameter buffer
    int level = 0, dims = 2;
    int cin0 = 0;  // channels of the first input (the rest come from the second)

    static Conv from(const graph::Op& op, int dims) {
        Conv c;
        c.problem = conv_problem(op, {}, dims, ConvSettings{});
        c.weight = op.weight;
        c.bias = op.bias;
        c.level = op.level;
        c.dims = dims;
        return c;
    }
    static constexpr std::size_t scratch_size(const ConvProblem& p, bool training) {
        return training ? Kernels<Backend>::template conv_workspace_size<T>(p)
                        : Kernels<Backend>::template conv_forward_prepared_workspace_size<T>(p);
    }
    // Elements of the prepared weights inference keeps (none in training); a folded norm's bias
    // and scale follow them.
    static constexpr std::size_t prepared_size(const ConvProblem& p, bool training, bool folded = false) {
        return training ? 0 : Kernels<Backend>::template conv_prepared_size<T>(p) + (folded ? 2 * std::size_t(p.cout) : 0);
    }
    void plan(const Shape& input) { problem.extent = level_extent(input, level, dims); }
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvSettings a) {
        return scratch_size(conv_problem(op, input, dims, a), training);
    }
    std::size_t parameter_count() const { return problem.weight_count() + problem.cout; }

    // The graph's ops: `in1` (may be null) holds the channels after cin0.
    void forward(const Pass<T>& p, const T* in0, const T* in1, T* out) {
        const ChannelSource<T> sources[2] = {source(in0, first_channels()), source(in1, problem.cin - first_channels())};
        const std::span<const ChannelSource<T>> input(sources, in1 ? 2 : 1);
        if (p.training) return forward(p.images, input, p.params, out, p.scratch);
        prepare(p.params + weight, p.weights_version);
        Kernels<Backend>::conv_forward_prepared(problem, p.images, input, static_cast<const T*>(prepared.data()), p.params + bias, out,
                                                std::ptrdiff_t(problem.cout * problem.extent.size()), p.scratch);
    }
    // Inference with the batch norm `norm` folded in: writes the norm's output (activated), never
    // the convolution's own. The pass's weights_version must change with the norm's statistics
    // too (UNet::weights_changed).
    void forward_folded(const Pass<T>& p, const T* in0, const T* in1, const FoldedNorm<T>& norm, T* out) {
        const ChannelSource<T> sources[2] = {source(in0, first_channels()), source(in1, problem.cin - first_channels())};
        const std::span<const ChannelSource<T>> input(sources, in1 ? 2 : 1);
        prepare_folded(p.params, norm, p.weights_version);
        const T* folded_bias = prepared.data() + Kernels<Backend>::template conv_prepared_size<T>(problem);
        Kernels<Backend>::conv_forward_prepared(problem, p.images, input, static_cast<const T*>(prepared.data()), folded_bias, out,
                                                std::ptrdiff_t(problem.cout * problem.extent.size()), p.scratch, norm.activation);
    }
    // Prepares the kernel `weights()` returns (this problem's, maybe rearranged by the caller)
    // unless the cache already holds it for this version and problem.
    template <class Weights>
    void prepare_from(Weights&& weights, std::uint64_t version, bool folded = false) {
        if (prepared_version == version && prepared_problem == problem && prepared_folded == folded) return;
        prepared.resize({1, 1, 1, 1, int(prepared_size(problem, false, folded))});
        Kernels<Backend>::conv_prepare(problem, static_cast<const T*>(weights()), prepared.data());
        prepared_version = version;
        prepared_problem = problem;
        prepared_folded = folded;
        ++preparations;
    }
    void prepare(const T* weights, std::uint64_t version) {
        prepare_from([weights] { return weights; }, version);
    }
    std::size_t prepared_capacity() const { return prepared.capacity(); }
    void backward(const Pass<T>& p, const T* in0, const T* in1, const T* grad_out, GradSink<T> g0, GradSink<T> g1) const {
        const ChannelSource<T> sources[2] = {source(in0, first_channels()), source(in1, problem.cin - first_channels())};
        const ChannelSink<T> sinks[2] = {sink(g0, first_channels()), sink(g1, problem.cin - first_channels())};
        const std::size_t count = in1 ? 2 : 1;
        backward(p.images, std::span<const ChannelSource<T>>(sources, count), p.params, grad_out,
                 std::span<const ChannelSink<T>>(sinks, count), p.grads, p.scratch);
    }
    // The graph's backward in two calls, so that the input gradients can take the memory of
    // inputs that only the weight gradient still read: the weight and bias gradients (read the
    // inputs), then the input gradients (read neither the inputs nor anything the first wrote).
    void backward_weights(const Pass<T>& p, const T* in0, const T* in1, const T* grad_out) const {
        const ChannelSource<T> sources[2] = {source(in0, first_channels()), source(in1, problem.cin - first_channels())};
        Kernels<Backend>::conv_backward(problem, p.images, std::span<const ChannelSource<T>>(sources, source_count()),
                                        p.params + weight, grad_out, std::ptrdiff_t(problem.cout * problem.extent.size()),
                                        std::span<const ChannelSink<T>>{}, p.grads + weight, p.grads + bias, p.scratch);
    }
    void backward_data(const Pass<T>& p, const T* grad_out, GradSink<T> g0, GradSink<T> g1) const {
        const ChannelSource<T> sources[2] = {source(nullptr, first_channels()), source(nullptr, problem.cin - first_channels())};
        const ChannelSink<T> sinks[2] = {sink(g0, first_channels()), sink(g1, problem.cin - first_channels())};
        Kernels<Backend>::conv_backward(problem, p.images, std::span<const ChannelSource<T>>(sources, source_count()),
                                        p.params + weight, grad_out, std::ptrdiff_t(problem.cout * problem.extent.size()),
                                        std::span<const ChannelSink<T>>(sinks, source_count()), static_cast<T*>(nullptr),
                                        static_cast<T*>(nullptr), p.scratch);
    }

    void forward(int images, std::span<const ChannelSource<T>> input, const T* params, T* output, T* workspace,
                 bool with_bias = true) const {
        Kernels<Backend>::conv_forward(problem, images, input, params + weight, with_bias ? params + bias : nullptr, output,
                                       std::ptrdiff_t(problem.cout * problem.extent.size()), workspace);
    }
    void backward(int images, std::span<const ChannelSource<T>> input, const T* params, const T* grad_output,
                  std::span<const ChannelSink<T>> grad_input, T* grads, T* workspace, bool with_bias = true) const {
        Kernels<Backend>::conv_backward(problem, images, input, params + weight, grad_output,
                                        std::ptrdiff_t(problem.cout * problem.extent.size()), grad_input, grads + weight,
                                        with_bias ? grads + bias : nullptr, workspace);
    }

    // Inference's prepared weights, valid for prepared_version and prepared_problem (and, with
    // prepared_folded, the folded norm's bias and scale after them).
    Tensor<T, Backend> prepared;
    std::uint64_t prepared_version = ~std::uint64_t(0);
    ConvProblem prepared_problem{};
    bool prepared_folded = false;
    long preparations = 0;  // how often the weights were prepared (tests)

private:
    // The fold (once per weights version): per output channel o, s = gamma / sqrt(var + eps)
    // scales the weights as they are prepared, and the bias becomes (b - mean) * s + beta. Both
    // follow the prepared weights: [prepared weights][bias][s]. Host code, through a staging
    // copy (kept: no allocation per fold) where the backend's memory is not the host's.
    void prepare_folded(const T* params, const FoldedNorm<T>& norm, std::uint64_t version) {
        if (prepared_version == version && prepared_problem == problem && prepared_folded) return;
        const int cout = problem.cout;
        prepared.resize({1, 1, 1, 1, int(prepared_size(problem, false, true))});
        T* folded = prepared.data() + Kernels<Backend>::template conv_prepared_size<T>(problem);  // bias, then s
        if constexpr (Backend::host_accessible) {
            fold(params + bias, norm, cout, folded);
        } else {
            fold_staging.resize(7 * std::size_t(cout));
            T* host = fold_staging.data();
            const T* from[5] = {params + bias, norm.gamma, norm.beta, norm.running_mean, norm.running_var};
            for (int k = 0; k < 5; ++k) Backend::download(host + k * cout, from[k], std::size_t(cout));
            fold(host, {host + cout, host + 2 * cout, host + 3 * cout, host + 4 * cout, norm.eps, norm.activation}, cout,
                 host + 5 * cout);
            Backend::upload(folded, host + 5 * cout, 2 * std::size_t(cout));
        }
        Kernels<Backend>::conv_prepare(problem, params + weight, prepared.data(), static_cast<const T*>(folded + cout));
        prepared_version = version;
        prepared_problem = problem;
        prepared_folded = true;
        ++preparations;
    }
    static void fold(const T* conv_bias, const FoldedNorm<T>& norm, int cout, T* out) {
        for (int o = 0; o < cout; ++o) {
            const double s = double(norm.gamma[o]) / std::sqrt(double(norm.running_var[o]) + norm.eps);
            out[o] = T((double(conv_bias[o]) - double(norm.running_mean[o])) * s + double(norm.beta[o]));
            out[cout + o] = T(s);
        }
    }
    std::vector<T> fold_staging;

    constexpr int first_channels() const { return cin0 > 0 ? cin0 : problem.cin; }
    constexpr std::size_t source_count() const { return cin0 > 0 ? 2 : 1; }
    ChannelSource<T> source(const T* data, int channels) const {
        return {data, channels, std::ptrdiff_t(channels) * std::ptrdiff_t(problem.extent.size())};
    }
    ChannelSink<T> sink(GradSink<T> g, int channels) const {
        return {g.data, channels, std::ptrdiff_t(channels) * std::ptrdiff_t(problem.extent.size()), g.accumulate};
    }
};

}  // namespace lightunet::layers

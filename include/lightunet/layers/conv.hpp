#pragma once
// A stride-1 'same' convolution with its parameters at fixed offsets of the model's buffer; one
// or two inputs (a decoder block's skip and up-sampled tensors, concatenated).
#include <span>

#include "../backend/kernels.hpp"
#include "layer.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct Conv {
    ConvProblem problem;
    std::size_t weight = 0, bias = 0;  // offsets into the parameter buffer
    int level = 0, dims = 2;
    int cin0 = 0;  // channels of the first input (the rest come from the second)

    static constexpr Conv from(const graph::Op& op, int dims) {
        Conv c;
        const int kd = dims == 3 ? op.kernel : 1;
        c.problem = {Extent{}, kd, op.kernel, op.kernel, op.cin, op.cout};
        c.weight = op.weight;
        c.bias = op.bias;
        c.level = op.level;
        c.dims = dims;
        return c;
    }
    static constexpr std::size_t scratch_size(const ConvProblem& p, bool training) {
        return training ? Kernels<Backend>::template conv_workspace_size<T>(p)
                        : Kernels<Backend>::template conv_forward_workspace_size<T>(p);
    }
    constexpr void plan(const Shape& input) { problem.extent = level_extent(input, level, dims); }
    constexpr std::size_t scratch_size(bool training) const { return scratch_size(problem, training); }
    constexpr std::size_t parameter_count() const { return problem.weight_count() + problem.cout; }

    // The graph's ops: `in1` (may be null) holds the channels after cin0.
    void forward(const Pass<T>& p, const T* in0, const T* in1, T* out) const {
        const ChannelSource<T> sources[2] = {source(in0, first_channels()), source(in1, problem.cin - first_channels())};
        forward(p.images, std::span<const ChannelSource<T>>(sources, in1 ? 2 : 1), p.params, out, p.scratch);
    }
    void backward(const Pass<T>& p, const T* in0, const T* in1, const T* grad_out, GradSink<T> g0, GradSink<T> g1) const {
        const ChannelSource<T> sources[2] = {source(in0, first_channels()), source(in1, problem.cin - first_channels())};
        const ChannelSink<T> sinks[2] = {sink(g0, first_channels()), sink(g1, problem.cin - first_channels())};
        const std::size_t count = in1 ? 2 : 1;
        backward(p.images, std::span<const ChannelSource<T>>(sources, count), p.params, grad_out,
                 std::span<const ChannelSink<T>>(sinks, count), p.grads, p.scratch);
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

private:
    constexpr int first_channels() const { return cin0 > 0 ? cin0 : problem.cin; }
    ChannelSource<T> source(const T* data, int channels) const {
        return {data, channels, std::ptrdiff_t(channels) * std::ptrdiff_t(problem.extent.size())};
    }
    ChannelSink<T> sink(GradSink<T> g, int channels) const {
        return {g.data, channels, std::ptrdiff_t(channels) * std::ptrdiff_t(problem.extent.size()), g.accumulate};
    }
};

}  // namespace lightunet::layers

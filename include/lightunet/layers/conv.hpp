#pragma once
// A stride-1 'same' convolution with its parameters at fixed offsets of the model's buffer.
#include <span>

#include "../backend/kernels.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct Conv {
    ConvProblem problem;
    std::size_t weight = 0, bias = 0;  // offsets into the parameter buffer

    constexpr std::size_t parameter_count() const { return problem.weight_count() + problem.cout; }
    std::size_t workspace_size() const { return Kernels<Backend>::template conv_workspace_size<T>(problem); }

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
};

}  // namespace lightunet::layers

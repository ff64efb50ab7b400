#pragma once
// The residual join: act(in0 + in1). Backward hands act'(out) * d out to both terms.
#include "../backend/kernels.hpp"
#include "layer.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct AddAct {
    int level = 0, dims = 2, channels = 0;
    Activation activation;
    std::ptrdiff_t count = 0;

    static constexpr AddAct from(const graph::Op& op, int dims) { return {op.level, dims, op.cout, op.act}; }
    constexpr void plan(const Shape& input) { count = std::ptrdiff_t(level_shape(input, level, dims, channels).size()); }
    void forward(const Pass<T>&, const T* a, const T* b, T* out) const {
        Kernels<Backend>::add_act_forward(count, a, b, T(activation.negative_slope()), out);
    }
    // grad_a may be grad_out itself.
    void backward(const Pass<T>&, const T* out, const T* grad_out, GradSink<T> grad_a, GradSink<T> grad_b) const {
        Kernels<Backend>::add_act_backward(count, out, grad_out, T(activation.negative_slope()), grad_a.data, grad_a.accumulate,
                                           grad_b.data, grad_b.accumulate);
    }
};

// The head's nonlinearity: softmax over channels or sigmoid. Its gradient is the loss's business
// (the loss kernel returns d loss / d logits from the probabilities).
template <class T, class Backend>
struct Output {
    Head head = Head::softmax;
    int level = 0, dims = 2, classes = 0;
    Shape shape{};

    static constexpr Output from(const graph::Op& op, const UNetConfig& c) { return {c.head, op.level, c.dims, op.cout}; }
    constexpr void plan(const Shape& input) { shape = level_shape(input, level, dims, classes); }
    void forward(const Pass<T>&, const T* logits, const T*, T* probs) const {
        if (head == Head::softmax)
            Kernels<Backend>::softmax_channels(shape.n, classes, std::ptrdiff_t(shape.spatial()), logits, probs);
        else
            Kernels<Backend>::sigmoid(std::ptrdiff_t(shape.size()), logits, probs);
    }
};

}  // namespace lightunet::layers

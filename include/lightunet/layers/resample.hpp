#pragma once
// The layers that change resolution by 2 per axis (depth too in 3D): max-pooling, the stride-2
// convolution down, and the two ways up. Each computes its stride-2 convolution as a 1x1 one
// over a space-to-depth rearrangement (backend/cpu/resample.hpp), staged in the op's scratch.
#include <algorithm>

#include "../backend/kernels.hpp"
#include "conv.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct MaxPool {
    int level = 0, dims = 2, channels = 0;
    Cells cells{};
    int images = 0;

    static constexpr MaxPool from(const graph::Op& op, int dims) { return {op.level, dims, op.cout}; }
    constexpr void plan(const Shape& input) {
        cells = {level_extent(input, level, dims), dims == 3 ? 2 : 1};
        images = input.n;
    }
    static constexpr std::size_t scratch_size(const graph::Op&, const Shape&, int, bool, ConvAlgorithm) { return 0; }
    void forward(const Pass<T>& p, const T* fine, const T*, T* coarse) const {
        Kernels<Backend>::max_pool_forward(cells, planes(p), fine, coarse);
    }
    void backward(const Pass<T>& p, const T* fine, const T* grad_coarse, GradSink<T> grad_fine) const {
        if (grad_fine.data) Kernels<Backend>::max_pool_backward(cells, planes(p), fine, grad_coarse, grad_fine.data, grad_fine.accumulate);
    }

private:
    std::ptrdiff_t planes(const Pass<T>& p) const { return std::ptrdiff_t(p.images) * channels; }
};

// Conv(kernel 2, stride 2): space-to-depth, then a 1x1 convolution with cin * cells inputs (the
// weight [out][in][cell] is PyTorch's [out][in][kd][kh][kw]).
template <class T, class Backend>
struct StridedDown {
    Conv<T, Backend> conv;
    Cells cells{};
    int channels = 0;  // of the fine input

    static StridedDown from(const graph::Op& op, int dims) {
        StridedDown d;
        d.conv = Conv<T, Backend>::from(op, dims);
        d.channels = op.cin;
        return d;
    }
    void plan(const Shape& input) {
        conv.plan(input);
        cells = {conv.problem.extent, conv.dims == 3 ? 2 : 1};
    }
    // Layout: [conv workspace][rearranged input][rearranged input gradient (training)].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvAlgorithm a) {
        const ConvProblem c = conv_problem(op, input, dims, a);
        const std::size_t rearranged = std::size_t(input.n) * c.cin * c.extent.size();
        return Conv<T, Backend>::scratch_size(c, training) + (training ? 2 : 1) * rearranged;
    }
    void forward(const Pass<T>& p, const T* fine, const T*, T* out) {
        T* rearranged = p.scratch + Conv<T, Backend>::scratch_size(conv.problem, p.training);
        Kernels<Backend>::space_to_depth(cells, std::ptrdiff_t(p.images) * channels, fine, rearranged);
        conv.forward(p, rearranged, nullptr, out);
    }
    void backward(const Pass<T>& p, const T* fine, const T* grad_out, GradSink<T> grad_fine) const {
        const std::size_t rearranged_size = std::size_t(p.images) * conv.problem.cin * conv.problem.extent.size();
        T* rearranged = p.scratch + Conv<T, Backend>::scratch_size(conv.problem, true);
        T* rearranged_grad = rearranged + rearranged_size;
        Kernels<Backend>::space_to_depth(cells, std::ptrdiff_t(p.images) * channels, fine, rearranged);
        conv.backward(p, rearranged, nullptr, grad_out, {grad_fine.data ? rearranged_grad : nullptr, false}, {});
        if (grad_fine.data)
            Kernels<Backend>::depth_to_space(cells, std::ptrdiff_t(p.images) * channels, channels, static_cast<const T*>(rearranged_grad),
                                             static_cast<const T*>(nullptr), grad_fine.data, grad_fine.accumulate);
    }
};

// ConvTranspose(kernel 2, stride 2): a 1x1 convolution at the coarse level to out * cells
// channels, then depth-to-space with the bias. Parameters keep PyTorch's [in][out][cell] layout;
// the kernel runs on its transpose.
template <class T, class Backend>
struct UpTransposed {
    Conv<T, Backend> conv;  // at the coarse level, on the transposed weights; offsets of the PyTorch-layout ones
    int channels = 0;       // of the fine output
    Cells cells{};

    static UpTransposed from(const graph::Op& op, int dims) {
        UpTransposed u;
        u.conv = Conv<T, Backend>::from(op, dims);
        u.conv.level = op.level + 1;
        u.channels = op.cout;
        return u;
    }
    void plan(const Shape& input) {
        conv.plan(input);
        cells = {conv.problem.extent, conv.dims == 3 ? 2 : 1};
    }
    // Layout: [conv workspace][transposed weights][staged coarse output | rearranged gradient]
    // [transposed weight gradient (training)].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvAlgorithm a) {
        const ConvProblem c = conv_problem(op, input, dims, a);
        return Conv<T, Backend>::scratch_size(c, training) + (training ? 2 : 1) * c.weight_count() +
               std::size_t(input.n) * c.cout * c.extent.size();
    }
    // Inference transposes and prepares the weights once per weights version.
    void forward(const Pass<T>& p, const T* below, const T*, T* out) {
        using K = Kernels<Backend>;
        const ConvProblem& problem = conv.problem;
        T* transposed = p.scratch + Conv<T, Backend>::scratch_size(problem, p.training);
        T* staged = transposed + problem.weight_count();
        const ChannelSource<T> in{below, problem.cin, std::ptrdiff_t(problem.cin * problem.extent.size())};
        const std::span<const ChannelSource<T>> input(&in, 1);
        const std::ptrdiff_t stride = std::ptrdiff_t(problem.cout * problem.extent.size());
        if (p.training) {
            K::transpose(problem.cin, problem.cout, p.params + conv.weight, transposed);
            K::conv_forward(problem, p.images, input, static_cast<const T*>(transposed), static_cast<const T*>(nullptr), staged, stride,
                            p.scratch);
        } else {
            conv.prepare_from(
                [&] {
                    K::transpose(problem.cin, problem.cout, p.params + conv.weight, transposed);
                    return transposed;
                },
                p.weights_version);
            K::conv_forward_prepared(problem, p.images, input, static_cast<const T*>(conv.prepared.data()), static_cast<const T*>(nullptr),
                                     staged, stride, p.scratch);
        }
        K::depth_to_space(cells, std::ptrdiff_t(p.images) * channels, channels, static_cast<const T*>(staged),
                          static_cast<const T*>(p.params + conv.bias), out, false);
    }
    void backward(const Pass<T>& p, const T* below, const T* grad_out, GradSink<T> grad_below) const {
        using K = Kernels<Backend>;
        const ConvProblem& problem = conv.problem;
        const std::size_t weight = conv.weight, bias = conv.bias;
        T* transposed = p.scratch + Conv<T, Backend>::scratch_size(problem, true);
        T* rearranged = transposed + problem.weight_count();
        T* transposed_grad = rearranged + std::size_t(p.images) * problem.cout * problem.extent.size();
        const ChannelSource<T> in{below, problem.cin, std::ptrdiff_t(problem.cin * problem.extent.size())};
        const ChannelSink<T> sink{grad_below.data, problem.cin, in.image_stride, grad_below.accumulate};
        K::channel_sums(p.images, channels, std::ptrdiff_t(cells.fine().size()), grad_out, p.grads + bias);
        K::space_to_depth(cells, std::ptrdiff_t(p.images) * channels, grad_out, rearranged);
        K::transpose(problem.cin, problem.cout, p.params + weight, transposed);
        Backend::fill(transposed_grad, T(0), problem.weight_count());
        K::conv_backward(problem, p.images, std::span<const ChannelSource<T>>(&in, 1), static_cast<const T*>(transposed),
                         static_cast<const T*>(rearranged), std::ptrdiff_t(problem.cout * problem.extent.size()),
                         std::span<const ChannelSink<T>>(&sink, 1), transposed_grad, static_cast<T*>(nullptr), p.scratch);
        // d W[in][out] is the transpose of d W^T[out][in] (the transposed weights are free again).
        K::transpose(problem.cout, problem.cin, static_cast<const T*>(transposed_grad), transposed);
        K::add(std::ptrdiff_t(problem.weight_count()), static_cast<const T*>(transposed), p.grads + weight);
    }

};

// Nearest up-sampling of a 1x1 convolution computed at the coarse level.
template <class T, class Backend>
struct UpInterpolate {
    Conv<T, Backend> conv;  // at the coarse level
    Cells cells{};
    int channels = 0;

    static UpInterpolate from(const graph::Op& op, int dims) {
        UpInterpolate u;
        u.conv = Conv<T, Backend>::from(op, dims);
        u.conv.level = op.level + 1;
        u.channels = op.cout;
        return u;
    }
    void plan(const Shape& input) {
        conv.plan(input);
        cells = {conv.problem.extent, conv.dims == 3 ? 2 : 1};
    }
    // Layout: [conv workspace][staged coarse output | its gradient].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvAlgorithm a) {
        const ConvProblem c = conv_problem(op, input, dims, a);
        return Conv<T, Backend>::scratch_size(c, training) + std::size_t(input.n) * c.cout * c.extent.size();
    }
    void forward(const Pass<T>& p, const T* below, const T*, T* out) {
        T* staged = p.scratch + Conv<T, Backend>::scratch_size(conv.problem, p.training);
        conv.forward(p, below, nullptr, staged);
        Kernels<Backend>::upsample_nearest_forward(cells, std::ptrdiff_t(p.images) * channels, static_cast<const T*>(staged), out);
    }
    void backward(const Pass<T>& p, const T* below, const T* grad_out, GradSink<T> grad_below) const {
        T* staged_grad = p.scratch + Conv<T, Backend>::scratch_size(conv.problem, true);
        Kernels<Backend>::upsample_nearest_backward(cells, std::ptrdiff_t(p.images) * channels, grad_out, staged_grad);
        conv.backward(p, below, nullptr, staged_grad, grad_below, {});
    }
};

}  // namespace lightunet::layers

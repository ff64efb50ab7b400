#pragma once
// The layers that change resolution by 2 per axis (depth too in 3D): max-pooling, the stride-2
// convolution down, and the two ways up. Each computes its stride-2 convolution as a 1x1 one
// over a space-to-depth rearrangement (backend/cpu/resample.hpp), staged in the op's scratch.
#include <algorithm>

#include "../backend/kernels.hpp"
#include "conv.hpp"

namespace lightunet::layers {

namespace detail {
constexpr int per_cell(int dims) { return dims == 3 ? 8 : 4; }
}

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

    static constexpr StridedDown from(const graph::Op& op, int dims) {
        StridedDown d;
        d.conv.problem = {Extent{}, 1, 1, 1, op.cin * detail::per_cell(dims), op.cout};
        d.conv.weight = op.weight;
        d.conv.bias = op.bias;
        d.conv.level = op.level;
        d.conv.dims = dims;
        d.channels = op.cin;
        return d;
    }
    constexpr void plan(const Shape& input) {
        conv.plan(input);
        cells = {conv.problem.extent, conv.dims == 3 ? 2 : 1};
    }
    // Layout: [conv workspace][rearranged input][rearranged input gradient (training)].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvAlgorithm a) {
        StridedDown d = from(op, dims);
        d.conv.problem.algorithm = a;
        d.plan(input);
        return d.scratch_size(training, input.n);
    }
    constexpr std::size_t scratch_size(bool training, int images) const {
        const std::size_t rearranged = std::size_t(images) * conv.problem.cin * conv.problem.extent.size();
        return Conv<T, Backend>::scratch_size(conv.problem, training) + (training ? 2 : 1) * rearranged;
    }
    void forward(const Pass<T>& p, const T* fine, const T*, T* out) const {
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
    ConvProblem problem;
    std::size_t weight = 0, bias = 0;
    int level = 0, dims = 2, channels = 0;  // channels: of the fine output
    Cells cells{};

    static constexpr UpTransposed from(const graph::Op& op, int dims) {
        UpTransposed u;
        u.problem = {Extent{}, 1, 1, 1, op.cin, op.cout * detail::per_cell(dims)};
        u.weight = op.weight;
        u.bias = op.bias;
        u.level = op.level;
        u.dims = dims;
        u.channels = op.cout;
        return u;
    }
    constexpr void plan(const Shape& input) {
        problem.extent = level_extent(input, level + 1, dims);
        cells = {problem.extent, dims == 3 ? 2 : 1};
    }
    // Layout: [conv workspace][transposed weights][staged coarse output | rearranged gradient]
    // [transposed weight gradient (training)].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvAlgorithm a) {
        UpTransposed u = from(op, dims);
        u.problem.algorithm = a;
        u.plan(input);
        return u.scratch_size(training, input.n);
    }
    constexpr std::size_t scratch_size(bool training, int images) const {
        return Conv<T, Backend>::scratch_size(problem, training) + (training ? 2 : 1) * problem.weight_count() + staged_size(images);
    }
    void forward(const Pass<T>& p, const T* below, const T*, T* out) const {
        using K = Kernels<Backend>;
        T* transposed = p.scratch + Conv<T, Backend>::scratch_size(problem, p.training);
        T* staged = transposed + problem.weight_count();
        K::transpose(problem.cin, problem.cout, p.params + weight, transposed);
        const ChannelSource<T> in{below, problem.cin, std::ptrdiff_t(problem.cin * problem.extent.size())};
        K::conv_forward(problem, p.images, std::span<const ChannelSource<T>>(&in, 1), static_cast<const T*>(transposed),
                        static_cast<const T*>(nullptr), staged, std::ptrdiff_t(problem.cout * problem.extent.size()), p.scratch);
        K::depth_to_space(cells, std::ptrdiff_t(p.images) * channels, channels, static_cast<const T*>(staged),
                          static_cast<const T*>(p.params + bias), out, false);
    }
    void backward(const Pass<T>& p, const T* below, const T* grad_out, GradSink<T> grad_below) const {
        using K = Kernels<Backend>;
        T* transposed = p.scratch + Conv<T, Backend>::scratch_size(problem, true);
        T* rearranged = transposed + problem.weight_count();
        T* transposed_grad = rearranged + staged_size(p.images);
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

private:
    constexpr std::size_t staged_size(int images) const { return std::size_t(images) * problem.cout * problem.extent.size(); }
};

// Nearest up-sampling of a 1x1 convolution computed at the coarse level.
template <class T, class Backend>
struct UpInterpolate {
    Conv<T, Backend> conv;  // at the coarse level
    Cells cells{};
    int channels = 0;

    static constexpr UpInterpolate from(const graph::Op& op, int dims) {
        UpInterpolate u;
        u.conv = Conv<T, Backend>::from(op, dims);
        u.conv.level = op.level + 1;
        u.channels = op.cout;
        return u;
    }
    constexpr void plan(const Shape& input) {
        conv.plan(input);
        cells = {conv.problem.extent, conv.dims == 3 ? 2 : 1};
    }
    // Layout: [conv workspace][staged coarse output | its gradient].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvAlgorithm a) {
        UpInterpolate u = from(op, dims);
        u.conv.problem.algorithm = a;
        u.plan(input);
        return u.scratch_size(training, input.n);
    }
    constexpr std::size_t scratch_size(bool training, int images) const {
        return Conv<T, Backend>::scratch_size(conv.problem, training) + std::size_t(images) * channels * conv.problem.extent.size();
    }
    void forward(const Pass<T>& p, const T* below, const T*, T* out) const {
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

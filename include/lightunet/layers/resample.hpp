#pragma once
// The layers that change resolution by 2 per axis (depth too in 3D): max-pooling, the stride-2
// convolution down, and the two ways up. Each computes its stride-2 convolution as a 1x1 one
// over a space-to-depth rearrangement (backend/cpu/resample.hpp), staged in the op's scratch.
#include <algorithm>

#include "../backend/kernels.hpp"
#include "conv.hpp"

// The most a transposed up-sampling stages of its coarse output in training (UpTransposed); as
// LIGHTUNET_CONV_SLAB_BYTES, the tests shrink it, and a program must use one value throughout.
#ifndef LIGHTUNET_STAGED_GROUP_BYTES
#define LIGHTUNET_STAGED_GROUP_BYTES (std::size_t(32) << 20)
#endif

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
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvSettings a) {
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
    // Training runs the coarse convolution for groups of fine output channels (their cells are
    // consecutive rows of the transposed weights), so only a group's coarse output or gradient
    // is staged: at 128^3 the whole one took 128 MiB. Inference stages it whole (its prepared
    // weights are packed for the whole problem).
    static constexpr std::size_t staged_group_bytes = LIGHTUNET_STAGED_GROUP_BYTES;
    static constexpr int group_channels(const ConvProblem& c, int images, int channels) {
        const std::size_t per_channel = sizeof(T) * std::size_t(images) * std::size_t(c.cout / channels) * c.extent.size();
        return int(std::clamp<std::size_t>(staged_group_bytes / per_channel, 1, std::size_t(channels)));
    }
    // The coarse convolution of fine channels [first, first + count).
    static constexpr ConvProblem group_problem(const ConvProblem& c, int channels, int count) {
        ConvProblem g = c;
        g.cout = c.cout / channels * count;
        return g;
    }
    // The training convolution's workspace: enough for a whole group and for the last, shorter one.
    static constexpr std::size_t group_workspace_size(const ConvProblem& c, int images, int channels) {
        const int group = group_channels(c, images, channels);
        const int last = channels - (channels - 1) / group * group;
        return std::max(Conv<T, Backend>::scratch_size(group_problem(c, channels, group), true),
                        Conv<T, Backend>::scratch_size(group_problem(c, channels, last), true));
    }
    // Layout: [conv workspace][transposed weights][staged coarse output | rearranged gradient]
    // [transposed weight gradient (training)].
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvSettings a) {
        const ConvProblem c = conv_problem(op, input, dims, a);
        if (!training) return Conv<T, Backend>::scratch_size(c, false) + c.weight_count() + std::size_t(input.n) * c.cout * c.extent.size();
        const ConvProblem g = group_problem(c, op.cout, group_channels(c, input.n, op.cout));
        return group_workspace_size(c, input.n, op.cout) + 2 * c.weight_count() + std::size_t(input.n) * g.cout * g.extent.size();
    }
    // Inference transposes and prepares the weights once per weights version.
    void forward(const Pass<T>& p, const T* below, const T*, T* out) {
        using K = Kernels<Backend>;
        const ConvProblem& problem = conv.problem;
        const ChannelSource<T> in{below, problem.cin, std::ptrdiff_t(problem.cin * problem.extent.size())};
        const std::span<const ChannelSource<T>> input(&in, 1);
        if (!p.training) {
            T* transposed = p.scratch + Conv<T, Backend>::scratch_size(problem, false);
            T* staged = transposed + problem.weight_count();
            conv.prepare_from(
                [&] {
                    K::transpose(problem.cin, problem.cout, p.params + conv.weight, transposed);
                    return transposed;
                },
                p.weights_version);
            K::conv_forward_prepared(problem, p.images, input, static_cast<const T*>(conv.prepared.data()), static_cast<const T*>(nullptr),
                                     staged, std::ptrdiff_t(problem.cout * problem.extent.size()), p.scratch);
            K::depth_to_space(cells, std::ptrdiff_t(p.images) * channels, channels, static_cast<const T*>(staged),
                              static_cast<const T*>(p.params + conv.bias), out, false);
            return;
        }
        T* transposed = p.scratch + group_workspace_size(problem, p.images, channels);
        T* staged = transposed + problem.weight_count();
        K::transpose(problem.cin, problem.cout, p.params + conv.weight, transposed);
        for_each_group(p.images, [&](const ConvProblem& g, int first, int count) {
            const std::ptrdiff_t stride = std::ptrdiff_t(g.cout * g.extent.size());
            K::conv_forward(g, p.images, input, static_cast<const T*>(transposed + std::size_t(first) * rows_per_channel() * g.cin),
                            static_cast<const T*>(nullptr), staged, stride, p.scratch);
            for (int n = 0; n < p.images; ++n)
                K::depth_to_space(cells, count, count, static_cast<const T*>(staged + n * stride),
                                  static_cast<const T*>(p.params + conv.bias + first), out + fine_offset(n, first), false);
        });
    }
    void backward(const Pass<T>& p, const T* below, const T* grad_out, GradSink<T> grad_below) const {
        using K = Kernels<Backend>;
        const ConvProblem& problem = conv.problem;
        const std::size_t weight = conv.weight, bias = conv.bias;
        const int group = group_channels(problem, p.images, channels);
        T* transposed = p.scratch + group_workspace_size(problem, p.images, channels);
        T* rearranged = transposed + problem.weight_count();
        T* transposed_grad = rearranged + std::size_t(p.images) * group_problem(problem, channels, group).cout * problem.extent.size();
        const ChannelSource<T> in{below, problem.cin, std::ptrdiff_t(problem.cin * problem.extent.size())};
        K::channel_sums(p.images, channels, std::ptrdiff_t(cells.fine().size()), grad_out, p.grads + bias);
        K::transpose(problem.cin, problem.cout, p.params + weight, transposed);
        Backend::fill(transposed_grad, T(0), problem.weight_count());
        for_each_group(p.images, [&](const ConvProblem& g, int first, int count) {
            const std::ptrdiff_t stride = std::ptrdiff_t(g.cout * g.extent.size());
            for (int n = 0; n < p.images; ++n) K::space_to_depth(cells, count, grad_out + fine_offset(n, first), rearranged + n * stride);
            // Every group adds its part of the input gradient to the first's.
            const ChannelSink<T> sink{grad_below.data, problem.cin, in.image_stride, grad_below.accumulate || first > 0};
            const std::size_t rows = std::size_t(first) * rows_per_channel() * g.cin;
            K::conv_backward(g, p.images, std::span<const ChannelSource<T>>(&in, 1), static_cast<const T*>(transposed + rows),
                             static_cast<const T*>(rearranged), stride, std::span<const ChannelSink<T>>(&sink, 1),
                             transposed_grad + rows, static_cast<T*>(nullptr), p.scratch);
        });
        // d W[in][out] is the transpose of d W^T[out][in] (the transposed weights are free again).
        K::transpose(problem.cout, problem.cin, static_cast<const T*>(transposed_grad), transposed);
        K::add(std::ptrdiff_t(problem.weight_count()), static_cast<const T*>(transposed), p.grads + weight);
    }

private:
    int rows_per_channel() const { return conv.problem.cout / channels; }  // the cells
    std::ptrdiff_t fine_offset(int image, int channel) const {
        return (std::ptrdiff_t(image) * channels + channel) * std::ptrdiff_t(cells.fine().size());
    }
    template <class F>
    void for_each_group(int images, F&& f) const {
        const int group = group_channels(conv.problem, images, channels);
        for (int first = 0; first < channels; first += group) {
            const int count = std::min(group, channels - first);
            f(group_problem(conv.problem, channels, count), first, count);
        }
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
    static constexpr std::size_t scratch_size(const graph::Op& op, const Shape& input, int dims, bool training, ConvSettings a) {
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

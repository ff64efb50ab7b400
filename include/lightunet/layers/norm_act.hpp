#pragma once
// Normalisation followed by the activation; keeps the statistics its backward needs. Its
// backward works in place: d out becomes d in in the same memory.
#include <algorithm>

#include "../backend/kernels.hpp"
#include "../backend/norm_problem.hpp"
#include "../tensor/tensor.hpp"
#include "layer.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct NormAct {
    Norm norm = Norm::none;
    int channels = 0, groups = 1, level = 0, dims = 2;
    Activation activation;
    std::size_t gamma = 0, beta = 0;  // parameter offsets (when norm != none)
    std::size_t running = 0;          // buffer offset of running mean, then running var (batch norm)
    Shape shape{};
    Tensor<T, Backend> mean, invstd, scratch;
    static constexpr double momentum = 0.1, eps = 1e-5;  // PyTorch's BatchNorm defaults

    static NormAct from(const graph::Op& op, const UNetConfig& c) {
        NormAct na;
        na.norm = c.norm;
        na.channels = op.cout;
        na.groups = c.norm == Norm::group ? c.groups : 1;
        na.level = op.level;
        na.dims = c.dims;
        na.activation = op.act;
        na.gamma = offset_or_zero(op.gamma);
        na.beta = offset_or_zero(op.beta);
        na.running = offset_or_zero(op.running);
        return na;
    }
    // Elements of the statistics a norm over `shape` keeps (mean, invstd, backward scratch).
    static constexpr std::size_t state_size(Norm norm, int groups, const Shape& s) {
        const NormGrouping g{norm, s.n, s.c, groups, std::ptrdiff_t(s.spatial())};
        return 2 * std::size_t(std::max(1, g.stat_count())) + 2 * std::size_t(s.n) * s.c;
    }
    NormGrouping grouping(const Shape& s) const { return {norm, s.n, channels, groups, std::ptrdiff_t(s.spatial())}; }

    void plan(const Shape& input) {
        shape = level_shape(input, level, dims, channels);
        const int stats = std::max(1, grouping(shape).stat_count());
        mean.resize({1, 1, 1, 1, stats});
        invstd.resize({1, 1, 1, 1, stats});
        scratch.resize({1, 1, 1, 2, shape.n * channels});
    }
    std::size_t state_capacity() const { return mean.capacity() + invstd.capacity() + scratch.capacity(); }

    void forward(const Pass<T>& p, const T* z, const T*, T* y) {
        run(z, y, p.params, p.buffers, p.training ? NormStats::batch : norm == Norm::batch ? NormStats::running : NormStats::batch,
            p.training ? p.across : nullptr);
    }
    // The eval-mode batch norm for the convolution before it to fold in (Conv::forward_folded).
    FoldedNorm<T> folded(const Pass<T>& p) const {
        return {p.params + gamma, p.params + beta, p.buffers + running, p.buffers + running + channels, eps, activation};
    }
    // Recomputes the training forward's y from z with the statistics it saved.
    void recompute(const Pass<T>& p, const T* z, T* y) { run(z, y, p.params, p.buffers, NormStats::saved); }
    // grad holds d y and becomes d z (the activation's derivative from z and the statistics:
    // y itself is not read).
    void backward(const Pass<T>& p, const T* z, T* grad) {
        Kernels<Backend>::norm_act_backward(grouping(shape), activation, z, grad, p.params + gamma, p.params + beta, mean.data(),
                                            invstd.data(), grad, p.grads + gamma, p.grads + beta, scratch.data(), p.across);
    }

private:
    void run(const T* z, T* y, T* params, T* buffers, NormStats from, CrossBatch* across = nullptr) {
        T* rm = norm == Norm::batch ? buffers + running : nullptr;
        T* rv = norm == Norm::batch ? buffers + running + channels : nullptr;
        Kernels<Backend>::norm_act_forward(grouping(shape), activation, z, params + gamma, params + beta, y, mean.data(),
                                           invstd.data(), rm, rv, from, across, momentum, eps);
    }
};

}  // namespace lightunet::layers

#pragma once
// Normalisation followed by the activation; keeps the statistics its backward needs.
#include "../backend/kernels.hpp"
#include "../backend/norm_problem.hpp"
#include "../tensor/tensor.hpp"

namespace lightunet::layers {

template <class T, class Backend>
struct NormAct {
    Norm norm = Norm::none;
    int channels = 0, groups = 1;
    Activation activation;
    std::size_t gamma = 0, beta = 0;  // parameter offsets (when norm != none)
    std::size_t running = 0;          // buffer offset of running mean, then running var (batch norm)
    Tensor<T, Backend> mean, invstd, scratch;

    NormGrouping grouping(const Shape& s) const { return {norm, s.n, channels, groups, std::ptrdiff_t(s.spatial())}; }

    void plan(const Shape& s) {
        const int stats = std::max(1, grouping(s).stat_count());
        mean.resize({1, 1, 1, 1, stats});
        invstd.resize({1, 1, 1, 1, stats});
        scratch.resize({1, 1, 1, 2, s.n * channels});
    }
    void forward(const Shape& s, const T* z, T* y, T* params, T* buffers, bool training) {
        run(s, z, y, params, buffers, training ? NormStats::batch : norm == Norm::batch ? NormStats::running : NormStats::batch);
    }
    // Recomputes the training forward's y from z with the statistics it saved.
    void recompute(const Shape& s, const T* z, T* y, T* params, T* buffers) { run(s, z, y, params, buffers, NormStats::saved); }
    void run(const Shape& s, const T* z, T* y, T* params, T* buffers, NormStats from) {
        T* rm = norm == Norm::batch ? buffers + running : nullptr;
        T* rv = norm == Norm::batch ? buffers + running + channels : nullptr;
        Kernels<Backend>::norm_act_forward(grouping(s), activation, z, params + gamma, params + beta, y, mean.data(),
                                           invstd.data(), rm, rv, from);
    }
    void backward(const Shape& s, const T* z, const T* y, T* grad, const T* params, T* grads) {
        Kernels<Backend>::norm_act_backward(grouping(s), activation, z, y, grad, params + gamma, mean.data(), invstd.data(),
                                            grad, grads + gamma, grads + beta, scratch.data());
    }
};

}  // namespace lightunet::layers

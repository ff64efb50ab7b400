#pragma once
// The CPU backend's kernel facade. A CUDA backend provides Kernels<cuda> with the same
// signatures over device pointers; layers only ever call Kernels<Backend>.
#include "../kernels.hpp"
#include "conv.hpp"
#include "join.hpp"
#include "loss.hpp"
#include "memory.hpp"
#include "norm.hpp"
#include "optim.hpp"
#include "resample.hpp"

namespace lightunet {

template <>
struct Kernels<cpu> {
    template <class T>
    static constexpr std::size_t conv_workspace_size(const ConvProblem& p) {
        return cpu_kernels::conv_workspace_size<T>(p);
    }
    template <class T>
    static constexpr std::size_t conv_forward_workspace_size(const ConvProblem& p) {
        return cpu_kernels::conv_forward_workspace_size<T>(p);
    }
    template <class T>
    static constexpr std::size_t conv_prepared_size(const ConvProblem& p) {
        return cpu_kernels::conv_prepared_size<T>(p);
    }
    template <class T>
    static constexpr std::size_t conv_forward_prepared_workspace_size(const ConvProblem& p) {
        return cpu_kernels::conv_forward_prepared_workspace_size<T>(p);
    }
    template <class... A>
    static void conv_prepare(A&&... a) { cpu_kernels::conv_prepare(std::forward<A>(a)...); }
    template <class... A>
    static void conv_forward_prepared(A&&... a) { cpu_kernels::conv_forward_prepared(std::forward<A>(a)...); }
    template <class... A>
    static void conv_forward(A&&... a) { cpu_kernels::conv_forward(std::forward<A>(a)...); }
    template <class... A>
    static void conv_backward(A&&... a) { cpu_kernels::conv_backward(std::forward<A>(a)...); }
    template <class... A>
    static void max_pool_forward(A&&... a) { cpu_kernels::max_pool_forward(std::forward<A>(a)...); }
    template <class... A>
    static void max_pool_backward(A&&... a) { cpu_kernels::max_pool_backward(std::forward<A>(a)...); }
    template <class... A>
    static void space_to_depth(A&&... a) { cpu_kernels::space_to_depth(std::forward<A>(a)...); }
    template <class... A>
    static void depth_to_space(A&&... a) { cpu_kernels::depth_to_space(std::forward<A>(a)...); }
    template <class... A>
    static void upsample_nearest_forward(A&&... a) { cpu_kernels::upsample_nearest_forward(std::forward<A>(a)...); }
    template <class... A>
    static void upsample_nearest_backward(A&&... a) { cpu_kernels::upsample_nearest_backward(std::forward<A>(a)...); }
    template <class... A>
    static void subsample_nearest(A&&... a) { cpu_kernels::subsample_nearest(std::forward<A>(a)...); }
    template <class... A>
    static void add_act_forward(A&&... a) { cpu_kernels::add_act_forward(std::forward<A>(a)...); }
    template <class... A>
    static void add_act_backward(A&&... a) { cpu_kernels::add_act_backward(std::forward<A>(a)...); }
    template <class... A>
    static void norm_act_forward(A&&... a) { cpu_kernels::norm_act_forward(std::forward<A>(a)...); }
    template <class... A>
    static void norm_act_backward(A&&... a) { cpu_kernels::norm_act_backward(std::forward<A>(a)...); }
    template <class... A>
    static void softmax_channels(A&&... a) { cpu_kernels::softmax_channels(std::forward<A>(a)...); }
    template <class... A>
    static void sigmoid(A&&... a) { cpu_kernels::sigmoid(std::forward<A>(a)...); }
    template <class... A>
    static double dice_loss(A&&... a) { return cpu_kernels::dice_loss(std::forward<A>(a)...); }
    template <class... A>
    static double squared_norm(A&&... a) { return cpu_kernels::squared_norm(std::forward<A>(a)...); }
    template <class... A>
    static void scale(A&&... a) { cpu_kernels::scale(std::forward<A>(a)...); }
    template <class... A>
    static void adam_update(A&&... a) { cpu_kernels::adam_update(std::forward<A>(a)...); }
    template <class... A>
    static void sgd_update(A&&... a) { cpu_kernels::sgd_update(std::forward<A>(a)...); }
    template <class T>
    static void transpose(int rows, int cols, const T* in, T* out) {  // out[c][r] = in[r][c]
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) out[std::ptrdiff_t(c) * rows + r] = in[std::ptrdiff_t(r) * cols + c];
    }
    template <class T>
    static void add(std::ptrdiff_t count, const T* in, T* inout) {
        for (std::ptrdiff_t i = 0; i < count; ++i) inout[i] += in[i];
    }
    // sums[c] += sum over images and voxels of x[n][c][:]
    template <class T>
    static void channel_sums(int images, int channels, std::ptrdiff_t plane, const T* x, T* sums) {
        cpu_kernels::parallel_for(channels, [&](std::ptrdiff_t c) {
            double s = 0;
            for (int n = 0; n < images; ++n) {
                const T* p = x + (std::ptrdiff_t(n) * channels + c) * plane;
#pragma omp simd reduction(+ : s)
                for (std::ptrdiff_t i = 0; i < plane; ++i) s += double(p[i]);
            }
            sums[c] += T(s);
        });
    }
    template <class T>
    static bool all_finite(std::ptrdiff_t count, const T* x) {
        bool ok = true;
        for (std::ptrdiff_t i = 0; i < count; ++i) ok &= std::isfinite(x[i]);
        return ok;
    }
    static std::ptrdiff_t first_invalid_label(Head head, int classes, std::ptrdiff_t count, const std::uint8_t* target) {
        return cpu_kernels::first_invalid_label(head, classes, count, target);
    }
    static void set_threads(int n) { cpu_kernels::set_thread_count(n); }
};

}  // namespace lightunet

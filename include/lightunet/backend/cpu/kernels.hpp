#pragma once
// The CPU backend's kernel facade. A CUDA backend provides Kernels<cuda> with the same
// signatures over device pointers; layers only ever call Kernels<Backend>.
//
// Header-only, the facade calls the kernels compiled for the including file's instruction set.
// Under LIGHTUNET_CPU_DISPATCH (set by linking lightunet::cpu_targets) it calls those of the
// target chosen at run time (cpu_targets.hpp) and sizes workspaces for every carried target.
#include <algorithm>
#include <type_traits>

#include "../kernels.hpp"
#include "conv.hpp"
#include "cpu_targets.hpp"
#include "join.hpp"
#include "loss.hpp"
#include "memory.hpp"
#include "norm.hpp"
#include "optim.hpp"
#include "resample.hpp"

namespace lightunet {

namespace cpu_kernels::detail {
// The scalar type of a kernel call: that of its first arithmetic pointer or channel span.
template <class A>
struct scalar_of {
    using type = void;
};
template <class T>
    requires std::is_arithmetic_v<std::remove_const_t<T>>
struct scalar_of<T*> {
    using type = std::remove_const_t<T>;
};
template <class C, std::size_t N>
struct scalar_of<std::span<C, N>> {
    using type = typename scalar_of<decltype(std::remove_const_t<C>::data)>::type;
};
template <class... A>
struct first_scalar {
    using type = void;
};
template <class A, class... Rest>
struct first_scalar<A, Rest...> {
    using own = typename scalar_of<std::remove_cvref_t<A>>::type;
    using type = std::conditional_t<std::is_void_v<own>, typename first_scalar<Rest...>::type, own>;
};
template <class... A>
using scalar_t = typename first_scalar<A...>::type;

// The largest of a size function over the carried targets' geometries.
template <class Size>
constexpr std::size_t largest(Size size) {
    std::size_t m = 0;
    for (const VectorGeometry& g : carried_geometries) m = std::max(m, size(g));
    return m;
}
}  // namespace cpu_kernels::detail

#ifdef LIGHTUNET_CPU_DISPATCH
#define LIGHTUNET_CPU_KERNEL(name, T) ::lightunet::cpu_kernels::selected_cpu_target().kernels<T>().name
#define LIGHTUNET_CPU_SIZE(name, T, p)                                                                    \
    ::lightunet::cpu_kernels::detail::largest([&](const ::lightunet::cpu_kernels::VectorGeometry& g) { \
        if (g == ::lightunet::cpu_kernels::sse4_2_geometry)                                             \
            return ::lightunet::cpu_kernels::name<T, ::lightunet::cpu_kernels::sse4_2_geometry>(p);     \
        if (g == ::lightunet::cpu_kernels::avx2_geometry)                                               \
            return ::lightunet::cpu_kernels::name<T, ::lightunet::cpu_kernels::avx2_geometry>(p);       \
        return ::lightunet::cpu_kernels::name<T, ::lightunet::cpu_kernels::avx512_geometry>(p);         \
    })
#else
#define LIGHTUNET_CPU_KERNEL(name, T) ::lightunet::cpu_kernels::name<T>
#define LIGHTUNET_CPU_SIZE(name, T, p) ::lightunet::cpu_kernels::name<T>(p)
#endif

template <>
struct Kernels<cpu> {
private:
#ifdef LIGHTUNET_CPU_DISPATCH
    static bool bf16_dot_runs() { return cpu_kernels::selected_cpu_target().bf16_dot_runs(); }
    static bool amx_runs() { return cpu_kernels::selected_cpu_target().amx_runs(); }
#else
    static bool bf16_dot_runs() { return cpu_kernels::bf16_dot_runs(); }
    static bool amx_runs() { return cpu_kernels::amx_runs(); }
#endif

public:
    // Which kernels run: the chosen target's name, or the compile target's xsimd architecture.
    static std::string target() {
#ifdef LIGHTUNET_CPU_DISPATCH
        const auto& t = cpu_kernels::selected_cpu_target();
        return std::string(t.name) + " (chosen at run time)";
#else
        return std::string(cpu_kernels::Arch::name()) + " (compiled in)";
#endif
    }

    // What Precision::bf16 convolutions run on in this process.
    static std::string bf16_kernels() {
        if (amx_runs()) return "AMX tiles (AMX-BF16: Fprop, Dgrad, Wgrad)";
        return bf16_dot_runs() ? "vdpbf16ps (AVX512_BF16)" : "fp32 multiply-adds on bf16-rounded operands (no AVX512_BF16 kernels here)";
    }
    // Whether Precision::bf16 has bf16 instructions here: without them it only rounds the
    // operands and runs slower than fp32, so there is nothing to gain from it.
    static bool bf16_instructions() { return amx_runs() || bf16_dot_runs(); }

    // conv_forward_prepared applies an activation as it stores the outputs, so inference folds
    // an eval batch norm into the convolution before it (layers::Conv::forward_folded).
    static constexpr bool conv_output_activation = true;

    template <class T>
    static constexpr std::size_t conv_workspace_size(const ConvProblem& p) {
        return LIGHTUNET_CPU_SIZE(conv_workspace_size, T, p);
    }
    template <class T>
    static constexpr std::size_t conv_prepared_size(const ConvProblem& p) {
        return LIGHTUNET_CPU_SIZE(conv_prepared_size, T, p);
    }
    template <class T>
    static constexpr std::size_t conv_forward_prepared_workspace_size(const ConvProblem& p) {
        return LIGHTUNET_CPU_SIZE(conv_forward_prepared_workspace_size, T, p);
    }
    // conv_forward alone (inference): the prepared weights, then the prepared forward's scratch.
    template <class T>
    static constexpr std::size_t conv_forward_workspace_size(const ConvProblem& p) {
        return conv_prepared_size<T>(p) + conv_forward_prepared_workspace_size<T>(p);
    }

    // The memory contract (conv_problem.hpp) is checked here, once for every target.
    template <class T>
    static void conv_prepare(const ConvProblem& p, const T* weight, T* prepared, const std::type_identity_t<T>* output_scale = nullptr) {
        LIGHTUNET_CPU_KERNEL(conv_prepare, T)(p, weight, prepared, output_scale);
    }
    template <class T>
    static void conv_forward_prepared(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input,
                                      const T* prepared, const std::type_identity_t<T>* bias, T* output,
                                      std::ptrdiff_t output_image_stride, T* workspace,
                                      const Activation& activation = {Act::identity}) {
        check_conv_forward_memory(p, images, input, static_cast<const T*>(output), output_image_stride);
        LIGHTUNET_CPU_KERNEL(conv_forward_prepared, T)(p, images, input, prepared, bias, output, output_image_stride, workspace,
                                                       activation);
    }
    template <class T>
    static void conv_forward(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* weight,
                             const std::type_identity_t<T>* bias, T* output, std::ptrdiff_t output_image_stride, T* workspace) {
        check_conv_forward_memory(p, images, input, static_cast<const T*>(output), output_image_stride);
        LIGHTUNET_CPU_KERNEL(conv_forward, T)(p, images, input, weight, bias, output, output_image_stride, workspace);
    }
    template <class T>
    static void conv_backward(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* weight,
                              const T* grad_output, std::ptrdiff_t grad_output_image_stride,
                              std::span<const ChannelSink<std::type_identity_t<T>>> grad_input, std::type_identity_t<T>* dweight,
                              std::type_identity_t<T>* dbias, T* workspace) {
        check_conv_backward_memory(p, images, input, grad_output, grad_output_image_stride, grad_input);
        LIGHTUNET_CPU_KERNEL(conv_backward, T)(p, images, input, weight, grad_output, grad_output_image_stride, grad_input,
                                               dweight, dbias, workspace);
    }
    // Kernels of other element types (labels subsampled for deep supervision: bytes) move
    // data without arithmetic: the baseline's copy serves every target.
#define LIGHTUNET_CPU_FORWARD(name)                                                 \
    template <class... A>                                                           \
    static auto name(A&&... a) {                                                    \
        using T = cpu_kernels::detail::scalar_t<A...>;                              \
        static_assert(!std::is_void_v<T>, #name ": no array passed");               \
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)        \
            return LIGHTUNET_CPU_KERNEL(name, T)(std::forward<A>(a)...);            \
        else                                                                        \
            return ::lightunet::cpu_kernels::name<T>(std::forward<A>(a)...);        \
    }
    LIGHTUNET_CPU_FORWARD(max_pool_forward)
    LIGHTUNET_CPU_FORWARD(max_pool_backward)
    LIGHTUNET_CPU_FORWARD(space_to_depth)
    LIGHTUNET_CPU_FORWARD(depth_to_space)
    LIGHTUNET_CPU_FORWARD(upsample_nearest_forward)
    LIGHTUNET_CPU_FORWARD(upsample_nearest_backward)
    LIGHTUNET_CPU_FORWARD(subsample_nearest)
    LIGHTUNET_CPU_FORWARD(add_act_forward)
    LIGHTUNET_CPU_FORWARD(add_act_backward)
    LIGHTUNET_CPU_FORWARD(softmax_channels)
    LIGHTUNET_CPU_FORWARD(sigmoid)
    LIGHTUNET_CPU_FORWARD(squared_norm)
    LIGHTUNET_CPU_FORWARD(scale)
    LIGHTUNET_CPU_FORWARD(adam_update)
    LIGHTUNET_CPU_FORWARD(sgd_update)
#undef LIGHTUNET_CPU_FORWARD
    template <class T>
    static void norm_act_forward(const NormGrouping& g, const Activation& a, const T* z, const std::type_identity_t<T>* gamma,
                                 const std::type_identity_t<T>* beta, T* y, std::type_identity_t<T>* mean,
                                 std::type_identity_t<T>* invstd, std::type_identity_t<T>* running_mean,
                                 std::type_identity_t<T>* running_var, NormStats stats_from, CrossBatch* across = nullptr,
                                 double momentum = 0.1, double eps = 1e-5) {
        LIGHTUNET_CPU_KERNEL(norm_act_forward, T)(g, a, z, gamma, beta, y, mean, invstd, running_mean, running_var, stats_from,
                                                  across, momentum, eps);
    }
    template <class T>
    static void norm_act_backward(const NormGrouping& g, const Activation& a, const T* z, const std::type_identity_t<T>* dy,
                                  const std::type_identity_t<T>* gamma, const std::type_identity_t<T>* beta,
                                  const std::type_identity_t<T>* mean, const std::type_identity_t<T>* invstd,
                                  std::type_identity_t<T>* dz, std::type_identity_t<T>* dgamma, std::type_identity_t<T>* dbeta,
                                  std::type_identity_t<T>* scratch, CrossBatch* across = nullptr) {
        LIGHTUNET_CPU_KERNEL(norm_act_backward, T)(g, a, z, dy, gamma, beta, mean, invstd, dz, dgamma, dbeta, scratch, across);
    }
    template <class T>
    static double dice_loss(Head head, int images, int channels, std::ptrdiff_t plane, const T* probs,
                            const std::uint8_t* target, const DiceLoss& o, std::type_identity_t<T>* grad_logits, double* sums,
                            CrossBatch* across = nullptr) {
        return LIGHTUNET_CPU_KERNEL(dice_loss, T)(head, images, channels, plane, probs, target, o, grad_logits, sums, across);
    }
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

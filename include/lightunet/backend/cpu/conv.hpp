#pragma once
// Stride-1 'same' convolution on the CPU over a batch: forward (Fprop), data gradient (Dgrad)
// and weight gradient (Wgrad). Direct kernels (conv_direct.hpp) serve every shape; 2D 3x3
// Fprop and Dgrad on large enough planes go through Winograd F(2x2, 3x3) (winograd.hpp).
#include "../norm_problem.hpp"
#include "conv_bf16.hpp"
#include "conv_direct.hpp"
#include "winograd.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

// ---------------------------------------------------------------------------------------------
// Whole operations over a batch

inline constexpr std::size_t output_group_bytes = std::size_t(32) << 20;

template <class T, VectorGeometry G = geometry>
constexpr int output_group_channels(const PaddedLayout& l, int channels) {
    const std::ptrdiff_t fit = std::ptrdiff_t(output_group_bytes / (sizeof(T) * std::size_t(l.stride)));
    const std::ptrdiff_t group = std::max<std::ptrdiff_t>(G.fprop_rows(), fit / G.fprop_rows() * G.fprop_rows());
    return int(std::min<std::ptrdiff_t>(group, round_up(channels, G.fprop_rows())));
}

// 3D convolutions run the direct kernels over slabs of output depth planes, so the workspace
// holds one slab's padded copies (with the halo planes the taps read), not the whole volume's:
// padding a 32-channel 128^3 volume alone took 274 MiB. Slabs are as deep as slab_bytes of the
// wider side's padded planes allow, and of equal depth but the last. 2D problems are one slab.
// LIGHTUNET_CONV_SLAB_BYTES changes the bound for a whole program (the tests run every 3D shape
// in slabs of a plane or two with a tiny one); every translation unit must see the same value.
// 16 MiB: the 3D BraTS training step holds 40 MiB less than with 32 at the same speed
// (docs/performance.md, "Memory": bench_unet built with each bound).
#ifndef LIGHTUNET_CONV_SLAB_BYTES
#define LIGHTUNET_CONV_SLAB_BYTES (std::size_t(16) << 20)
#endif
inline constexpr std::size_t slab_bytes = LIGHTUNET_CONV_SLAB_BYTES;

template <class T>
constexpr int slab_depth(const ConvProblem& p) {
    const PaddedLayout whole = padded_layout(p);
    const std::ptrdiff_t plane_bytes = std::ptrdiff_t(sizeof(T)) * whole.hp * whole.wp * std::max(p.cin, p.cout);
    const std::ptrdiff_t fit = std::max<std::ptrdiff_t>(1, std::ptrdiff_t(slab_bytes) / plane_bytes - 2 * whole.pd);
    const std::ptrdiff_t slabs = ceil_div(std::ptrdiff_t(p.extent.d), fit);
    return int(ceil_div(std::ptrdiff_t(p.extent.d), slabs));
}
// The padded layout of `depth` output planes; slab_layout(p, slab_depth(p)) is the largest, the
// one the workspace is sized for.
constexpr PaddedLayout slab_layout(const ConvProblem& p, int depth) {
    ConvProblem slab = p;
    slab.extent.d = depth;
    return padded_layout(slab);
}
template <class T>
constexpr PaddedLayout largest_slab_layout(const ConvProblem& p) {
    return slab_layout(p, slab_depth<T>(p));
}
// Calls f(first plane, depth) for each slab of the problem's volume.
template <class T, class F>
void for_each_slab(const ConvProblem& p, F&& f) {
    const int depth = slab_depth<T>(p);
    for (int first = 0; first < p.extent.d; first += depth) f(first, std::min(depth, p.extent.d - first));
}

// The problem's ConvAlgorithm picks the kernels; workspace sizes depend on the choice.
// `fast_enough`: automatic's speed threshold for this pass (Fprop/Dgrad or Wgrad).
// bf16 operands run the direct kernels only: Winograd's transforms would round values that are
// no longer the operands themselves.
template <class T>
constexpr bool choose_winograd(const ConvProblem& p, bool fast_enough) {
    if (uses_bf16<T>(p)) return false;
    switch (p.algorithm) {
        case ConvAlgorithm::direct: return false;
        case ConvAlgorithm::winograd: return winograd::computes<T>(p);
        default: return fast_enough;
    }
}
template <class T>
constexpr bool use_winograd(const ConvProblem& p) {
    return choose_winograd<T>(p, winograd::applies<T>(p));
}
template <class T>
constexpr bool use_winograd_weight_gradient(const ConvProblem& p) {
    return choose_winograd<T>(p, winograd::applies_to_weight_gradient<T>(p));
}

// The data gradient is the convolution of the output gradient with the mirrored kernel, input
// and output channels exchanged.
constexpr ConvProblem dgrad_problem(const ConvProblem& p) { return {p.extent, p.kd, p.kh, p.kw, p.cout, p.cin, p.algorithm, p.precision}; }

// The weights a forward pass runs on, prepared from the PyTorch-layout kernel: Winograd's
// transformed kernel U, or the direct kernel's packed rows. A layer whose weights do not change
// (inference) prepares them once (conv_prepare) and calls conv_forward_prepared; conv_forward
// prepares them into its workspace on every call.
template <class T, VectorGeometry G = geometry>
constexpr std::size_t conv_prepared_size(const ConvProblem& p) {
    if (use_winograd<T>(p)) return std::size_t(winograd::plan<T, G>(p).kernel_size()) + winograd::alignment_slack;
    const std::size_t fp32 = std::size_t(round_up(p.cout, G.fprop_rows())) * p.cin * p.taps();
    return uses_bf16<T>(p) ? std::max(fp32, packed_weights_bf16_size<T, G>(p.cout, p.cin, p.taps())) : fp32;
}

// Scratch (in elements of T) of conv_forward_prepared.
template <class T, VectorGeometry G = geometry>
constexpr std::size_t conv_forward_prepared_workspace_size(const ConvProblem& p) {
    if (use_winograd<T>(p)) {
        const winograd::Plan pl = winograd::plan<T, G>(p);
        return std::size_t(pl.input_size() + pl.output_size()) + winograd::alignment_slack;
    }
    const PaddedLayout l = largest_slab_layout<T>(p);
    const std::size_t out_group = std::size_t(output_group_channels<T, G>(l, std::max(p.cin, p.cout))) * l.stride;
    return std::size_t(p.cin) * l.stride + out_group;
}

// Scratch (in elements of T) that conv_forward needs alone (inference): the prepared weights,
// then what the prepared forward needs.
template <class T, VectorGeometry G = geometry>
constexpr std::size_t conv_forward_workspace_size(const ConvProblem& p) {
    return conv_prepared_size<T, G>(p) + conv_forward_prepared_workspace_size<T, G>(p);
}

// The direct data gradient's packed kernel (elements of T; bf16 pairs fit in the same).
template <class T, VectorGeometry G = geometry>
constexpr std::size_t dgrad_weights_size(const ConvProblem& p) {
    const std::size_t fp32 = std::size_t(round_up(p.cin, G.fprop_rows())) * p.cout * p.taps();
    return uses_bf16<T>(p) ? std::max(fp32, packed_weights_bf16_size<T, G>(p.cin, p.cout, p.taps())) : fp32;
}

// Scratch of conv_forward and conv_backward (training). Backward: the Dgrad kernel (packed or
// transformed), the Winograd weight gradient's dU when it applies, then space that each pass of
// an image uses in turn (Wgrad, then Dgrad).
template <class T, VectorGeometry G = geometry>
constexpr std::size_t conv_workspace_size(const ConvProblem& p) {
    const PaddedLayout l = largest_slab_layout<T>(p);
    const std::size_t in_pad = std::size_t(p.cin) * l.stride;
    const std::size_t out_group = std::size_t(output_group_channels<T, G>(l, std::max(p.cin, p.cout))) * l.stride;
    const std::size_t grad_pad = std::size_t(p.cout) * l.stride;
    const std::size_t partial = uses_bf16<T>(p) ? std::max(wgrad_scratch_size<T, G>(l, p.cin, p.cout), bf16_wgrad_scratch_size<G>(l, p.cin, p.cout))
                                                : wgrad_scratch_size<T, G>(l, p.cin, p.cout);
    const ConvProblem d = dgrad_problem(p);
    std::size_t kernels = 2 * winograd::alignment_slack, passes = 0;
    if (use_winograd_weight_gradient<T>(p)) {
        const winograd::Plan pl = winograd::plan<T, G>(p);
        kernels += std::size_t(pl.kernel_size());
        passes = std::size_t(pl.input_size() + pl.output_size());
    } else {
        passes = in_pad + grad_pad + partial;
    }
    if (use_winograd<T>(d)) {
        const winograd::Plan pl = winograd::plan<T, G>(d);
        kernels += std::size_t(pl.kernel_size());
        passes = std::max(passes, std::size_t(pl.input_size() + pl.output_size()));
    } else {
        kernels += dgrad_weights_size<T, G>(p);
        passes = std::max(passes, in_pad + grad_pad + out_group);
    }
    return std::max(conv_forward_workspace_size<T, G>(p), kernels + passes + winograd::alignment_slack);
}

// Channel c of image n among sources that split the channels between them.
template <class T>
const T* channel_plane(const ConvProblem& p, std::span<const ChannelSource<T>> sources, int n, int c) {
    return source_channel(sources, n, std::ptrdiff_t(p.extent.size()), c);
}

// `output_scale` (cout values, or null): output channel o's weights times output_scale[o] (a
// batch norm folded into the convolution), as if the weights had been scaled before.
template <class T>
void conv_prepare(const ConvProblem& p, const T* weight, T* prepared, const T* output_scale = nullptr) {
    if (use_winograd<T>(p)) {
        winograd::transform_kernel(
            winograd::plan<T>(p),
            [&](int o, int i, int k) {
                const T w = weight[(std::ptrdiff_t(o) * p.cin + i) * 9 + k];
                return output_scale ? w * output_scale[o] : w;
            },
            winograd::align(prepared));
        return;
    }
    if (uses_bf16<T>(p) && bf16_dot_runs()) {
        pack_weights_bf16(weight, p.cout, p.cin, p.taps(), false, reinterpret_cast<std::uint32_t*>(prepared), amx_runs(), output_scale);
        return;
    }
    pack_fprop_weights(weight, p.cout, p.cin * p.taps(), prepared, output_scale);
    if (uses_bf16<T>(p)) round_to_bf16(prepared, std::ptrdiff_t(round_up(p.cout, fprop_rows)) * p.cin * p.taps());
}

// The memory contract (conv_problem.hpp) is checked by Kernels<cpu>, before it calls these.

// `prepared` holds conv_prepare's output for this problem (the weights themselves are not read).
// `activation` is applied to every output as it is stored (after the bias).
template <class T>
void conv_forward_prepared(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* prepared,
                           const T* bias, T* output, std::ptrdiff_t output_image_stride, T* workspace,
                           const Activation& activation = {Act::identity}) {
    const T slope = T(activation.negative_slope());
    if (use_winograd<T>(p)) {
        const winograd::Plan pl = winograd::plan<T>(p);
        const T* u = winograd::align(prepared);
        T* scratch = winograd::align(workspace);
        for (int n = 0; n < images; ++n) {
            auto input_of = [&](int c) { return channel_plane(p, input, n, c); };
            auto output_of = [&](int oc) {
                return CompactChannel<T>{output + n * output_image_stride + oc * std::ptrdiff_t(p.extent.size()),
                                         bias ? bias[oc] : T(0), false, slope};
            };
            winograd::convolve_image(pl, u, input_of, output_of, scratch);
        }
        return;
    }
    const PaddedLayout largest = largest_slab_layout<T>(p);
    const T* packed = prepared;
    T* x_pad = workspace;
    T* y_pad = x_pad + std::size_t(p.cin) * largest.stride;
    // One group size for every slab: the workspace holds it at the largest slab's stride.
    const int group = output_group_channels<T>(largest, std::max(p.cin, p.cout));
    const std::ptrdiff_t plane = std::ptrdiff_t(p.extent.size());
    const bool bf16_dot = uses_bf16<T>(p) && bf16_dot_runs();
    for (int n = 0; n < images; ++n)
        for_each_slab<T>(p, [&](int first, int depth) {
            const PaddedLayout l = slab_layout(p, depth);
            const std::ptrdiff_t offset = std::ptrdiff_t(first) * p.extent.h * p.extent.w;
            const VolumeSlab slab = VolumeSlab::with_halo(first, p.extent.d);
            auto output_at = [&](int oc) {
                return CompactChannel<T>{output + n * output_image_stride + oc * plane + offset, bias ? bias[oc] : T(0), false,
                                         slope};
            };
            if constexpr (std::is_same_v<T, float>)
                if (bf16_dot) {
                    std::uint16_t* x2 = reinterpret_cast<std::uint16_t*>(x_pad);
                    pad_source_pairs(l, input, n, plane, slab, x2);
                    fprop_padded_bf16(l, p.cin, x2, reinterpret_cast<const std::uint32_t*>(packed), 0, p.cout, output_at);
                    return;
                }
            pad_sources(l, input, n, plane, slab, x_pad);
            if (uses_bf16<T>(p)) round_to_bf16(x_pad, std::ptrdiff_t(p.cin) * l.stride);
            for (int oc0 = 0; oc0 < p.cout; oc0 += group) {
                const int oc1 = std::min(p.cout, oc0 + group);
                if (fprop_padded(l, p.cin, x_pad, packed, oc0, oc1, y_pad, output_at)) continue;
                parallel_for(oc1 - oc0, [&](std::ptrdiff_t c) {
                    unpad_channel(l, y_pad + c * l.stride, output + n * output_image_stride + (oc0 + c) * plane + offset,
                                  bias ? bias[oc0 + c] : T(0), false, slope);
                });
            }
        });
}

template <class T>
void conv_forward(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* weight,
                  const T* bias, T* output, std::ptrdiff_t output_image_stride, T* workspace) {
    conv_prepare(p, weight, workspace);
    conv_forward_prepared(p, images, input, static_cast<const T*>(workspace), bias, output, output_image_stride,
                          workspace + conv_prepared_size<T>(p));
}

// Accumulates dweight and dbias (the caller zeroes them once per step) and writes or adds the
// input gradient into the sinks (which mirror the input sources); a null sink is skipped.
template <class T>
void conv_backward(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* weight,
                   const T* grad_output, std::ptrdiff_t grad_output_image_stride, std::span<const ChannelSink<T>> grad_input,
                   T* dweight, T* dbias, T* workspace) {
    const PaddedLayout largest = largest_slab_layout<T>(p);
    const ConvProblem d = dgrad_problem(p);
    const bool winograd_wgrad = dweight != nullptr && use_winograd_weight_gradient<T>(p);
    const bool winograd_dgrad = use_winograd<T>(d);
    const bool bf16_dot = uses_bf16<T>(p) && bf16_dot_runs();
    const winograd::Plan wgrad_plan = winograd_wgrad ? winograd::plan<T>(p) : winograd::Plan{};
    const winograd::Plan dgrad_plan = winograd_dgrad ? winograd::plan<T>(d) : winograd::Plan{};
    T* packed = winograd::align(workspace);
    T* du = winograd::align(packed + (winograd_dgrad ? std::size_t(dgrad_plan.kernel_size()) : dgrad_weights_size<T>(p)));
    T* x_pad = winograd::align(du + (winograd_wgrad ? wgrad_plan.kernel_size() : 0));
    T* g_pad = x_pad + std::size_t(p.cin) * largest.stride;
    T* dx_pad = g_pad + std::size_t(p.cout) * largest.stride;
    const int group = output_group_channels<T>(largest, std::max(p.cin, p.cout));
    const std::ptrdiff_t plane = std::ptrdiff_t(p.extent.size());
    bool need_input_grad = false;
    for (const auto& s : grad_input) need_input_grad |= s.data != nullptr;
    if (need_input_grad && winograd_dgrad)
        winograd::transform_kernel(
            dgrad_plan, [&](int o, int i, int k) { return weight[(std::ptrdiff_t(i) * p.cin + o) * 9 + (8 - k)]; }, packed);
    else if (need_input_grad && bf16_dot)
        pack_weights_bf16(weight, p.cout, p.cin, p.taps(), true, reinterpret_cast<std::uint32_t*>(packed));
    else if (need_input_grad) {
        pack_dgrad_weights(weight, p.cout, p.cin, p.taps(), packed);
        if (uses_bf16<T>(p)) round_to_bf16(packed, std::ptrdiff_t(round_up(p.cin, fprop_rows)) * p.cout * p.taps());
    }
    if (winograd_wgrad) std::fill(du, du + wgrad_plan.kernel_size(), T(0));
    const ChannelSource<T> grad_source{grad_output, p.cout, grad_output_image_stride};
    const std::span<const ChannelSource<T>> grad_sources(&grad_source, 1);
    for (int n = 0; n < images; ++n) {
        auto gradient_of = [&](int oc) { return grad_output + n * grad_output_image_stride + oc * plane; };
        if (dbias)
            parallel_for(p.cout, [&](std::ptrdiff_t oc) {
                const T* g = grad_output + n * grad_output_image_stride + oc * plane;
                // Vector lanes of partial sums: a sum in order waits on every add's latency.
                Batch<T> lanes_sum(T(0));
                std::ptrdiff_t i = 0;
                for (; i + lanes<T> <= plane; i += lanes<T>) {
                    prefetch_ahead(g + i, stream_prefetch_bytes);
                    lanes_sum += Batch<T>::load_unaligned(g + i);
                }
                T s = sum_lanes(lanes_sum);
                for (; i < plane; ++i) s += g[i];
                dbias[oc] += s;
            });
        if (winograd_wgrad) {
            auto input_of = [&](int c) { return channel_plane(p, input, n, c); };
            winograd::accumulate_kernel_gradient(wgrad_plan, input_of, gradient_of, du, x_pad);
        }
        if (winograd_dgrad && need_input_grad) {
            auto output_of = [&](int channel) {
                for (const auto& sink : grad_input) {
                    if (channel < sink.channels)
                        return CompactChannel<T>{sink.data ? sink.data + n * sink.image_stride + channel * plane : nullptr, T(0),
                                                 sink.accumulate};
                    channel -= sink.channels;
                }
                return CompactChannel<T>{nullptr, T(0), false};
            };
            winograd::convolve_image(dgrad_plan, packed, gradient_of, output_of, x_pad);
        }
        const bool direct_wgrad = dweight && !winograd_wgrad, direct_dgrad = need_input_grad && !winograd_dgrad;
        if (!direct_wgrad && !direct_dgrad) continue;
        for_each_slab<T>(p, [&](int first, int depth) {
            const PaddedLayout l = slab_layout(p, depth);
            const std::ptrdiff_t offset = std::ptrdiff_t(first) * p.extent.h * p.extent.w;
            // The weight gradient sums the slab's own output planes, so its output gradient has
            // zeros where the data gradient (a convolution of it) reads the neighbours' planes.
            const bool whole_volume = depth == p.extent.d;
            bool wgrad_done = false;
            // bf16: one read of the output gradient fills both passes' layouts, g_pad's halves (an
            // even cout fills them exactly). The weight gradient's then holds the halo planes the
            // data gradient reads too, outside the run it sums over.
            const bool one_gradient_padding = bf16_dot && direct_wgrad && direct_dgrad && p.cout % 2 == 0;
            std::uint16_t* const g2 = reinterpret_cast<std::uint16_t*>(g_pad) + (one_gradient_padding ? std::ptrdiff_t(p.cout) * l.stride : 0);
            if constexpr (std::is_same_v<T, float>)
                if (direct_wgrad && bf16_dot) {
                    std::uint16_t *x16 = reinterpret_cast<std::uint16_t*>(x_pad), *g16 = reinterpret_cast<std::uint16_t*>(g_pad);
                    pad_sources_bf16(l, input, n, plane, VolumeSlab::with_halo(first, p.extent.d), x16);
                    if (one_gradient_padding)
                        pad_source_pairs(l, grad_sources, n, plane, VolumeSlab::with_halo(first, p.extent.d), g2, g16);
                    else pad_sources_bf16(l, grad_sources, n, plane, VolumeSlab::alone(first, depth), g16);
                    wgrad_bf16(l, p.cin, p.cout, x16, g16, dweight, dx_pad);
                    wgrad_done = true;
                }
            if (direct_wgrad && !wgrad_done) {
                pad_sources(l, input, n, plane, VolumeSlab::with_halo(first, p.extent.d), x_pad);
                pad_sources(l, grad_sources, n, plane, VolumeSlab::alone(first, depth), g_pad);
                if (uses_bf16<T>(p)) {
                    round_to_bf16(x_pad, std::ptrdiff_t(p.cin) * l.stride);
                    round_to_bf16(g_pad, std::ptrdiff_t(p.cout) * l.stride);
                }
                wgrad_padded(l, p.cin, p.cout, x_pad, g_pad, dweight, dx_pad);
            }
            if (!direct_dgrad) return;
            auto output_of = [&](int channel) {
                for (const auto& sink : grad_input) {
                    if (channel < sink.channels)
                        return CompactChannel<T>{sink.data ? sink.data + n * sink.image_stride + channel * plane + offset : nullptr,
                                                 T(0), sink.accumulate};
                    channel -= sink.channels;
                }
                return CompactChannel<T>{nullptr, T(0), false};
            };
            if constexpr (std::is_same_v<T, float>)
                if (bf16_dot) {
                    if (!one_gradient_padding) pad_source_pairs(l, grad_sources, n, plane, VolumeSlab::with_halo(first, p.extent.d), g2);
                    fprop_padded_bf16(l, p.cout, g2, reinterpret_cast<const std::uint32_t*>(packed), 0, p.cin, output_of);
                    return;
                }
            if (!direct_wgrad || !whole_volume) {
                pad_sources(l, grad_sources, n, plane, VolumeSlab::with_halo(first, p.extent.d), g_pad);
                if (uses_bf16<T>(p)) round_to_bf16(g_pad, std::ptrdiff_t(p.cout) * l.stride);
            }
            for (int ci0 = 0; ci0 < p.cin; ci0 += group) {
                const int ci1 = std::min(p.cin, ci0 + group);
                if (fprop_padded(l, p.cout, g_pad, packed, ci0, ci1, dx_pad, output_of)) continue;
                parallel_for(ci1 - ci0, [&](std::ptrdiff_t c) {
                    int channel = ci0 + int(c);
                    for (const auto& sink : grad_input) {
                        if (channel < sink.channels) {
                            if (sink.data)
                                unpad_channel(l, dx_pad + c * l.stride,
                                              sink.data + n * sink.image_stride + channel * plane + offset, T(0),
                                              sink.accumulate);
                            return;
                        }
                        channel -= sink.channels;
                    }
                });
            }
        });
    }
    if (winograd_wgrad) winograd::add_kernel_gradient(wgrad_plan, du, dweight);
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

#pragma once
// Backend-neutral descriptions of the operations a layer asks a backend to run.
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include "../config/unet_config.hpp"
#include "../tensor/shape.hpp"

namespace lightunet {

// How a backend computes a convolution. automatic: the backend's choice by shape (CPU: Winograd
// F(2x2, 3x3) for float 2D 3x3 problems with enough channels and tiles, direct kernels
// elsewhere). direct: the direct kernels everywhere. winograd: Winograd for every problem it can
// compute (float, 2D, 3x3), whatever the speed thresholds say, direct for the rest; a backend
// without Winograd (CUDA) refuses it. direct and winograd exist so tests and benchmarks can
// force each path through a whole model.
enum class ConvAlgorithm { automatic, direct, winograd };

inline const char* to_string(ConvAlgorithm a) {
    switch (a) {
        case ConvAlgorithm::direct: return "direct";
        case ConvAlgorithm::winograd: return "winograd";
        default: return "automatic";
    }
}

// How a model runs its convolutions (UNet::set_conv_algorithm, set_conv_precision); the
// configuration's precision is its default.
struct ConvSettings {
    ConvAlgorithm algorithm = ConvAlgorithm::automatic;
    Precision precision = Precision::fp32;
};

// A stride-1 'same' convolution: kernel kd x kh x kw, padding k/2 on each axis, so the output
// extent equals the input extent. 3x3(x3) blocks, 1x1 heads and (after a space-to-depth
// rearrangement) the 2x2(x2) stride-2 down and up convolutions are all of this form.
//
// Memory contract of conv_forward and conv_backward on every backend: what a call writes (the
// output; the input-gradient sinks) must not overlap what it reads (the inputs; the output
// gradient), nor each other. Winograd reads each band's halo rows after the band above has
// written its outputs, and GPU kernels read and write all images at once, so no algorithm can
// honour aliasing without a hidden copy. The calls check it (check_conv_forward_memory,
// check_conv_backward_memory) and throw std::invalid_argument naming the two buffers.
struct ConvProblem {
    Extent extent;
    int kd = 1, kh = 1, kw = 1;
    int cin = 0, cout = 0;
    ConvAlgorithm algorithm = ConvAlgorithm::automatic;
    Precision precision = Precision::fp32;  // bf16: direct kernels only (no Winograd), float only
    constexpr int taps() const { return kd * kh * kw; }
    constexpr std::size_t weight_count() const { return std::size_t(cout) * cin * taps(); }
    constexpr double flops_per_image() const { return 2.0 * double(extent.size()) * cout * cin * taps(); }
    constexpr bool operator==(const ConvProblem&) const = default;
};

// The fine grid of a coarse extent: depth doubles only in 3D (fd = 2).
struct Cells {
    Extent coarse;
    int fd = 1;
    constexpr Extent fine() const { return {coarse.d * fd, coarse.h * 2, coarse.w * 2}; }
    constexpr int per_cell() const { return fd * 4; }
};

// Input channels of one image may come from two tensors (the U-Net's skip concatenation):
// channel c of image n lies at data + n * image_stride + c * plane.
template <class T>
struct ChannelSource {
    const T* data = nullptr;
    int channels = 0;
    std::ptrdiff_t image_stride = 0;
};

template <class T>
struct ChannelSink {
    T* data = nullptr;
    int channels = 0;
    std::ptrdiff_t image_stride = 0;
    bool accumulate = false;  // add into data instead of overwriting
};

namespace detail {

// The bytes a batch of `channels` planes per image spans: one run of `length` bytes per image,
// `stride` bytes apart (two sources or sinks may interleave their images in one tensor).
struct MemoryRange {
    std::uintptr_t begin = 0;
    std::size_t stride = 0, length = 0;
    int images = 0;
    const char* what = "";
    int index = 0;
    bool empty() const { return images == 0 || length == 0; }
    std::uintptr_t end() const { return begin + std::size_t(images - 1) * stride + length; }
};

template <class T>
MemoryRange memory_range(const T* data, int images, int channels, std::ptrdiff_t image_stride, std::size_t plane,
                         const char* what, int index = 0) {
    if (data == nullptr || images <= 0 || channels <= 0 || plane == 0) return {0, 0, 0, 0, what, index};
    return {reinterpret_cast<std::uintptr_t>(data), std::size_t(image_stride) * sizeof(T), std::size_t(channels) * plane * sizeof(T),
            images, what, index};
}

inline std::string describe(const MemoryRange& r) {
    std::string text = r.what;
    if (r.index >= 0) {
        text += ' ';
        text += std::to_string(r.index);
    }
    return text;
}

[[noreturn]] inline void throw_overlap(const char* call, const ConvProblem& p, const MemoryRange& written,
                                       const MemoryRange& other) {
    throw std::invalid_argument(std::string(call) + ": " + describe(written) + " overlaps " + describe(other) + " (" +
                                std::to_string(p.cin) + " -> " + std::to_string(p.cout) + " channels, plane " +
                                Shape{1, 1, p.extent.d, p.extent.h, p.extent.w}.str() +
                                "); a convolution never works in place: give its output its own memory");
}

inline bool overlap(const MemoryRange& a, const MemoryRange& b) {
    if (a.empty() || b.empty() || a.end() <= b.begin || b.end() <= a.begin) return false;
    // Runs are sorted by address: walk both lists in step.
    int i = 0, j = 0;
    while (i < a.images && j < b.images) {
        const std::uintptr_t a0 = a.begin + std::size_t(i) * a.stride, b0 = b.begin + std::size_t(j) * b.stride;
        if (a0 < b0 + b.length && b0 < a0 + a.length) return true;
        if (a0 + a.length <= b0 + b.length) ++i;
        else ++j;
    }
    return false;
}

template <class T>
MemoryRange source_range(const ChannelSource<T>& s, int images, std::size_t plane, int index) {
    return memory_range(s.data, images, s.channels, s.image_stride, plane, "input source", index);
}
template <class T>
MemoryRange sink_range(const ChannelSink<T>& s, int images, std::size_t plane, int index) {
    return memory_range(static_cast<const T*>(s.data), images, s.channels, s.image_stride, plane, "input-gradient sink", index);
}

}  // namespace detail

// Throws std::invalid_argument when the output overlaps an input source.
template <class T>
void check_conv_forward_memory(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* output,
                               std::ptrdiff_t output_image_stride) {
    const std::size_t plane = p.extent.size();
    const auto out = detail::memory_range(output, images, p.cout, output_image_stride, plane, "the output", -1);
    for (std::size_t i = 0; i < input.size(); ++i) {
        const auto in = detail::source_range(input[i], images, plane, int(i));
        if (detail::overlap(out, in)) detail::throw_overlap("conv_forward", p, out, in);
    }
}

// Throws std::invalid_argument when an input-gradient sink overlaps the output gradient, an
// input source or another sink.
template <class T>
void check_conv_backward_memory(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input,
                                const T* grad_output, std::ptrdiff_t grad_output_image_stride,
                                std::span<const ChannelSink<T>> grad_input) {
    const std::size_t plane = p.extent.size();
    const auto grad = detail::memory_range(grad_output, images, p.cout, grad_output_image_stride, plane, "the output gradient", -1);
    for (std::size_t i = 0; i < grad_input.size(); ++i) {
        const auto sink = detail::sink_range(grad_input[i], images, plane, int(i));
        if (detail::overlap(sink, grad)) detail::throw_overlap("conv_backward", p, sink, grad);
        for (std::size_t j = 0; j < input.size(); ++j) {
            const auto in = detail::source_range(input[j], images, plane, int(j));
            if (detail::overlap(sink, in)) detail::throw_overlap("conv_backward", p, sink, in);
        }
        for (std::size_t j = 0; j < i; ++j) {
            const auto other = detail::sink_range(grad_input[j], images, plane, int(j));
            if (detail::overlap(sink, other)) detail::throw_overlap("conv_backward", p, sink, other);
        }
    }
}

}  // namespace lightunet

#pragma once
// Backend-neutral descriptions of the operations a layer asks a backend to run.
#include <cstddef>

#include "../tensor/shape.hpp"

namespace lightunet {

// A stride-1 'same' convolution: kernel kd x kh x kw, padding k/2 on each axis, so the output
// extent equals the input extent. 3x3(x3) blocks, 1x1 heads and (after a space-to-depth
// rearrangement) the 2x2(x2) stride-2 down and up convolutions are all of this form.
struct ConvProblem {
    Extent extent;
    int kd = 1, kh = 1, kw = 1;
    int cin = 0, cout = 0;
    constexpr int taps() const { return kd * kh * kw; }
    constexpr std::size_t weight_count() const { return std::size_t(cout) * cin * taps(); }
    constexpr double flops_per_image() const { return 2.0 * double(extent.size()) * cout * cin * taps(); }
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

}  // namespace lightunet

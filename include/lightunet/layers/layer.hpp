#pragma once
// What every layer of the op graph receives: the pass's shared memory, and gradient sinks that
// either overwrite or add (a tensor read by several ops collects their gradients).
#include <cstddef>

#include "../graph/unet_graph.hpp"
#include "../tensor/shape.hpp"

namespace lightunet::layers {

template <class T>
struct Pass {
    int images = 0;
    T* params = nullptr;
    T* buffers = nullptr;
    T* grads = nullptr;
    T* scratch = nullptr;  // the op's scratch, scratch_size() elements
    bool training = false;
};

template <class T>
struct GradSink {
    T* data = nullptr;  // null: this gradient is not wanted
    bool accumulate = false;
};

// The extent of a resolution level (depth halves only in 3D).
constexpr Extent level_extent(const Shape& input, int level, int dims) {
    return {dims == 3 ? input.d >> level : 1, input.h >> level, input.w >> level};
}
constexpr Shape level_shape(const Shape& input, int level, int dims, int channels) {
    const Extent e = level_extent(input, level, dims);
    return {input.n, channels, e.d, e.h, e.w};
}

// A parameter offset as a pointer offset (absent parameters point at the buffer's start and
// are never read).
constexpr std::size_t offset_or_zero(std::size_t offset) { return offset == graph::no_offset ? 0 : offset; }

}  // namespace lightunet::layers

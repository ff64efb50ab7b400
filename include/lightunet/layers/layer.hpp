#pragma once
// What every layer of the op graph receives: the pass's shared memory, and gradient sinks that
// either overwrite or add (a tensor read by several ops collects their gradients).
#include <cstddef>
#include <cstdint>

#include "../backend/conv_problem.hpp"
#include "../backend/norm_problem.hpp"
#include "../dist/cross_batch.hpp"
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
    // Changes whenever the parameters or buffers (batch-norm statistics, which inference folds
    // into weights) may have changed; inference keeps each convolution's prepared weights while
    // it stays the same.
    std::uint64_t weights_version = 0;
    // Training on a share of a batch split across processes (null: the batch is all here).
    CrossBatch* across = nullptr;
};

// An eval-mode batch norm and its activation, as the convolution before it folds them in:
// y = act(gamma * (z - mean) / sqrt(var + eps) + beta) per output channel.
template <class T>
struct FoldedNorm {
    const T *gamma, *beta, *running_mean, *running_var;
    double eps;
    Activation activation;
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

// The convolution a conv-like op runs at an input shape: stride-2 ops as 1x1 convolutions at
// the coarse level (the down op's own level, the up ops' input level) over space-to-depth
// rearranged channels.
constexpr ConvProblem conv_problem(const graph::Op& op, const Shape& input, int dims, ConvSettings settings) {
    const ConvAlgorithm algorithm = settings.algorithm;
    const int cells = dims == 3 ? 8 : 4;
    ConvProblem p;
    switch (op.kind) {
        case graph::OpKind::strided_down:
            p = {level_extent(input, op.level, dims), 1, 1, 1, op.cin * cells, op.cout, algorithm};
            break;
        case graph::OpKind::up_transposed:
            p = {level_extent(input, op.level + 1, dims), 1, 1, 1, op.cin, op.cout * cells, algorithm};
            break;
        case graph::OpKind::up_interpolate:
            p = {level_extent(input, op.level + 1, dims), 1, 1, 1, op.cin, op.cout, algorithm};
            break;
        default:
            p = {level_extent(input, op.level, dims), dims == 3 ? op.kernel : 1, op.kernel, op.kernel, op.cin, op.cout, algorithm};
    }
    p.precision = settings.precision;
    return p;
}

// A parameter offset as a pointer offset (absent parameters point at the buffer's start and
// are never read).
constexpr std::size_t offset_or_zero(std::size_t offset) { return offset == graph::no_offset ? 0 : offset; }

}  // namespace lightunet::layers

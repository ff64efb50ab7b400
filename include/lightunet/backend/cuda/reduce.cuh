#pragma once
// Launch helpers and deterministic reductions: every sum is split into a fixed number of
// chunks that depends only on the problem, summed in double, and combined in a fixed order, so
// results do not change from run to run.
#include <algorithm>
#include <cstddef>

#include "memory.cuh"

namespace lightunet::cuda_kernels {

inline constexpr int block_threads = 256;

inline unsigned grid_for(std::ptrdiff_t count, int threads = block_threads) {
    const std::ptrdiff_t blocks = (count + threads - 1) / threads;
    return unsigned(std::clamp<std::ptrdiff_t>(blocks, 1, std::ptrdiff_t(1) << 20));
}

// Sum of v over the block, valid in thread 0.
template <int V>
__device__ inline void block_sum(double (&v)[V]) {
    __shared__ double partial[V][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int i = 0; i < V; ++i) {
        for (int o = 16; o > 0; o /= 2) v[i] += __shfl_down_sync(0xffffffffu, v[i], o);
    }
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0)
#pragma unroll
        for (int i = 0; i < V; ++i) partial[i][warp] = v[i];
    __syncthreads();
    if (warp == 0) {
        const int warps = (blockDim.x + 31) / 32;
#pragma unroll
        for (int i = 0; i < V; ++i) {
            v[i] = lane < warps ? partial[i][lane] : 0.0;
            for (int o = 16; o > 0; o /= 2) v[i] += __shfl_down_sync(0xffffffffu, v[i], o);
        }
    }
}

// Rows of `length` elements each; every row is cut into `chunks` equal pieces.
struct RowSplit {
    std::ptrdiff_t rows = 0, length = 0;
    int chunks = 1;
    static RowSplit of(std::ptrdiff_t rows, std::ptrdiff_t length) {
        RowSplit s{rows, length, 1};
        const std::ptrdiff_t wanted = (2048 + rows - 1) / std::max<std::ptrdiff_t>(rows, 1);
        s.chunks = int(std::clamp<std::ptrdiff_t>(std::min(wanted, (length + 2047) / 2048), 1, 256));
        return s;
    }
    std::size_t partial_count() const { return std::size_t(rows) * chunks; }
};

// partial[(row * chunks + chunk) * V + i] = sum of f(row, k)[i] over the chunk's k.
template <int V, class F>
__global__ void __launch_bounds__(block_threads) row_partials_kernel(F f, RowSplit s, double* partial) {
    const std::ptrdiff_t row = blockIdx.x / s.chunks;
    const int chunk = blockIdx.x % s.chunks;
    const std::ptrdiff_t per = (s.length + s.chunks - 1) / s.chunks;
    const std::ptrdiff_t begin = chunk * per, end = min(s.length, begin + per);
    double acc[V] = {};
    for (std::ptrdiff_t k = begin + threadIdx.x; k < end; k += blockDim.x) f(row, k, acc);
    block_sum<V>(acc);
    if (threadIdx.x == 0)
#pragma unroll
        for (int i = 0; i < V; ++i) partial[(row * s.chunks + chunk) * V + i] = acc[i];
}

// out[row * V + i] = sum over chunks of the partials, in chunk order.
template <int V>
__global__ void combine_chunks_kernel(RowSplit s, const double* partial, double* out) {
    const std::ptrdiff_t row = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (row >= s.rows) return;
    for (int i = 0; i < V; ++i) {
        double t = 0;
        for (int c = 0; c < s.chunks; ++c) t += partial[(row * s.chunks + c) * V + i];
        out[row * V + i] = t;
    }
}

// Per row sums of V values; `partial` holds s.partial_count() * V doubles, `out` rows * V.
template <int V, class F>
void row_sums(const F& f, const RowSplit& s, double* partial, double* out) {
    if (s.rows == 0) return;
    row_partials_kernel<V><<<unsigned(s.rows * s.chunks), block_threads, 0, cuda::stream()>>>(f, s, partial);
    LIGHTUNET_CUDA_LAUNCHED("row_partials_kernel");
    combine_chunks_kernel<V><<<grid_for(s.rows), block_threads, 0, cuda::stream()>>>(s, partial, out);
    LIGHTUNET_CUDA_LAUNCHED("combine_chunks_kernel");
}

template <class T>
struct ChannelSumTerm {
    const T* x;
    int channels;
    std::ptrdiff_t plane, image_stride;
    __device__ void operator()(std::ptrdiff_t c, std::ptrdiff_t k, double (&acc)[1]) const {
        const std::ptrdiff_t n = k / plane;
        acc[0] += double(x[n * image_stride + c * plane + (k - n * plane)]);
    }
};

template <class T>
__global__ void add_sums_kernel(int count, const double* s, T* sums) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) sums[i] += T(s[i]);
}

// sums[c] += sum over images and voxels of x[n * image_stride + c * plane + voxel].
template <class T>
void channel_sums(int images, int channels, std::ptrdiff_t plane, std::ptrdiff_t image_stride, const T* x, T* sums) {
    if (channels <= 0 || images <= 0) return;
    const RowSplit s = RowSplit::of(channels, std::ptrdiff_t(images) * plane);
    double* partial = static_cast<double*>(cuda::scratch((s.partial_count() + channels) * sizeof(double)));
    double* out = partial + s.partial_count();
    row_sums<1>(ChannelSumTerm<T>{x, channels, plane, image_stride}, s, partial, out);
    add_sums_kernel<<<grid_for(channels), block_threads, 0, cuda::stream()>>>(channels, static_cast<const double*>(out), sums);
    LIGHTUNET_CUDA_LAUNCHED("add_sums_kernel");
}

template <class T>
__global__ void fill_kernel(T* dst, T value, std::size_t count) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < count; i += std::size_t(gridDim.x) * blockDim.x)
        dst[i] = value;
}

}  // namespace lightunet::cuda_kernels

namespace lightunet {
template <class T>
void cuda::fill(T* dst, T value, std::size_t count) {
    if (!count) return;
    cuda_kernels::fill_kernel<<<std::min(cuda_kernels::grid_for(std::ptrdiff_t(count)), 4096u), cuda_kernels::block_threads, 0,
                                stream()>>>(dst, value, count);
    LIGHTUNET_CUDA_LAUNCHED("fill_kernel");
}
}  // namespace lightunet

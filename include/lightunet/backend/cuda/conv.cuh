#pragma once
// Stride-1 'same' convolution on the GPU as implicit GEMMs (no im2col buffer):
//   Fprop  out[m][col]  = sum_k A[m][k] B[k][col], A = weight [cout][cin * taps], B gathered
//          from the input sources: B[(ci, tap)][(n, voxel)] = x[n][ci][voxel + offset(tap)];
//   Dgrad  the same kernel with A = the weight repacked as [cin][cout * taps] with flipped taps
//          (kernels are centred, so offset(taps - 1 - t) = -offset(t)) over the output gradient;
//   Wgrad  dW[oc][(ci, tap)] = sum over (n, voxel) of dy[n][oc][voxel] x[n][ci][voxel + offset],
//          split over a fixed number of voxel-chunk slots, each slot's partial written to the
//          workspace and the slots summed in order (deterministic, no atomics).
// Tiles live in shared memory, double-buffered; every thread owns a register tile of outputs.
// fp32 FMA accumulation by default; with Precision::tf32 the Fprop/Dgrad inner products run on
// tensor cores (mma.sync m16n8k8, sm_80 and newer; elsewhere the fp32 path runs).
#include <algorithm>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>

#include "../conv_problem.hpp"
#include "reduce.cuh"

namespace lightunet::cuda_kernels {

enum class Precision { fp32, tf32 };

// Process-wide choice for Fprop and Dgrad (Wgrad always accumulates in fp32).
inline Precision& conv_precision() {
    static Precision p = Precision::fp32;
    return p;
}

template <class T>
struct Sources {
    const T* data[2] = {};
    int channels[2] = {};
    std::ptrdiff_t stride[2] = {};
};
template <class T>
struct Sinks {
    T* data[2] = {};
    int channels[2] = {};
    std::ptrdiff_t stride[2] = {};
    bool accumulate[2] = {};
};

struct Geometry {
    int d, h, w;
    std::ptrdiff_t plane;
};

inline constexpr int gemm_bn = 128, gemm_bk = 8;

template <int KD, int KH>
__device__ inline bool tap_offset(int tap, int z, int y, int x, const Geometry& g, std::ptrdiff_t& offset) {
    constexpr int kw = KH;
    const int dz = tap / (KH * kw) - KD / 2, dy = (tap / kw) % KH - KH / 2, dx = tap % kw - kw / 2;
    const int zz = z + dz, yy = y + dy, xx = x + dx;
    offset = (std::ptrdiff_t(zz) * g.h + yy) * g.w + xx;
    return zz >= 0 && zz < g.d && yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define LIGHTUNET_CUDA_HAS_TF32_MMA 1
inline constexpr bool tf32_mma_compiled = true;
#else
inline constexpr bool tf32_mma_compiled = false;  // sm < 80 (or the host pass): the fp32 path
#endif

__device__ inline unsigned to_tf32(float v) {
#ifdef LIGHTUNET_CUDA_HAS_TF32_MMA
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
#else
    return __float_as_uint(v);
#endif
}

// C[BM x 128] += A[BM x K] * B[K x 128] over columns col0.., rows m0..; 256 threads as 16 x 16,
// each TM x 8 outputs (columns tx * 4 + {0..3} and 64 + tx * 4 + {0..3}).
template <class T, int KD, int KH, int BM, bool TF32>
__global__ void __launch_bounds__(256) conv_gemm_kernel(const T* __restrict__ A, int M, int K, Sources<T> src, Sinks<T> dst,
                                                        const T* __restrict__ bias, std::ptrdiff_t N, Geometry g) {
    constexpr int TAPS = KD * KH * KH, BN = gemm_bn, BK = gemm_bk, TM = BM / 16;
    __shared__ T As[2][BK][BM];
    __shared__ T Bs[2][BK][BN];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * BM;
    const std::ptrdiff_t col0 = std::ptrdiff_t(blockIdx.x) * BN;

    // This thread's B column, fixed for the whole K loop.
    const int bcol = tid % BN, brow0 = tid / BN;  // rows brow0 + 2 j, j < 4
    const std::ptrdiff_t col = col0 + bcol;
    const bool col_ok = col < N;
    int bz = 0, by = 0, bx = 0;
    const T* base0 = nullptr;
    const T* base1 = nullptr;
    if (col_ok) {
        const std::ptrdiff_t n = col / g.plane, p = col % g.plane;
        bz = int(p / (std::ptrdiff_t(g.h) * g.w));
        by = int((p / g.w) % g.h);
        bx = int(p % g.w);
        base0 = src.data[0] + n * src.stride[0];
        if (src.data[1]) base1 = src.data[1] + n * src.stride[1];
    }
    auto load_b = [&](int k0, T (&r)[4]) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = k0 + brow0 + 2 * j;
            T v = T(0);
            if (col_ok && k < K) {
                const int ci = k / TAPS, tap = k % TAPS;
                std::ptrdiff_t off;
                if (tap_offset<KD, KH>(tap, bz, by, bx, g, off))
                    v = ci < src.channels[0] ? base0[ci * g.plane + off] : base1[(ci - src.channels[0]) * g.plane + off];
            }
            r[j] = v;
        }
    };
    constexpr int a_per_thread = BM * BK / 256;
    auto load_a = [&](int k0, T (&r)[a_per_thread]) {
#pragma unroll
        for (int j = 0; j < a_per_thread; ++j) {
            const int e = tid + j * 256, m = e / BK, k = k0 + e % BK;
            r[j] = (m0 + m < M && k < K) ? A[std::ptrdiff_t(m0 + m) * K + k] : T(0);
        }
    };
    auto store = [&](int buf, const T (&ra)[a_per_thread], const T (&rb)[4]) {
#pragma unroll
        for (int j = 0; j < a_per_thread; ++j) {
            const int e = tid + j * 256;
            As[buf][e % BK][e / BK] = ra[j];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) Bs[buf][brow0 + 2 * j][bcol] = rb[j];
    };

    T acc[TM][8] = {};
#ifdef LIGHTUNET_CUDA_HAS_TF32_MMA
    // Tensor-core layout: 8 warps as 2 (rows) x 4 (columns); a warp owns BM/2 rows x 32 columns
    // as (BM/32) x 4 tiles of m16n8.
    constexpr int WM = BM / 32 > 0 ? BM / 32 : 1;
    float cfrag[WM][4][4] = {};
    const int warp = tid / 32, lane = tid % 32, wr = warp / 4, wc = warp % 4;
    const int gid = lane / 4, tig = lane % 4;
#endif

    T ra[a_per_thread], rb[4];
    load_a(0, ra);
    load_b(0, rb);
    store(0, ra, rb);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += BK) {
        const bool more = k0 + BK < K;
        if (more) {
            load_a(k0 + BK, ra);
            load_b(k0 + BK, rb);
        }
        if constexpr (TF32 && tf32_mma_compiled) {
#ifdef LIGHTUNET_CUDA_HAS_TF32_MMA
#pragma unroll
            for (int i = 0; i < WM; ++i) {
                const int r = wr * (BM / 2) + i * 16;
                unsigned a[4];
                a[0] = to_tf32(As[buf][tig][r + gid]);
                a[1] = to_tf32(As[buf][tig][r + gid + 8]);
                a[2] = to_tf32(As[buf][tig + 4][r + gid]);
                a[3] = to_tf32(As[buf][tig + 4][r + gid + 8]);
#pragma unroll
                for (int jn = 0; jn < 4; ++jn) {
                    const int c = wc * 32 + jn * 8 + gid;
                    const unsigned b0 = to_tf32(Bs[buf][tig][c]), b1 = to_tf32(Bs[buf][tig + 4][c]);
                    float* d = cfrag[i][jn];
                    asm volatile(
                        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                        "{%0,%1,%2,%3};\n"
                        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
                }
            }
#endif
        } else {
#pragma unroll
            for (int k = 0; k < BK; ++k) {
                T a[TM], b[8];
#pragma unroll
                for (int i = 0; i < TM; ++i) a[i] = As[buf][k][ty * TM + i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = Bs[buf][k][tx * 4 + j], b[4 + j] = Bs[buf][k][64 + tx * 4 + j];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
            }
        }
        if (more) {
            store(buf ^ 1, ra, rb);
            __syncthreads();
            buf ^= 1;
        }
    }

    auto write = [&](int m, std::ptrdiff_t c, T v) {
        if (m >= M || c >= N) return;
        const int s = m < dst.channels[0] ? 0 : 1;
        T* out = dst.data[s];
        if (!out) return;
        const std::ptrdiff_t n = c / g.plane, p = c % g.plane;
        T* o = out + n * dst.stride[s] + std::ptrdiff_t(s == 0 ? m : m - dst.channels[0]) * g.plane + p;
        v += bias ? bias[m] : T(0);
        *o = dst.accumulate[s] ? *o + v : v;
    };
    if constexpr (TF32 && tf32_mma_compiled) {
#ifdef LIGHTUNET_CUDA_HAS_TF32_MMA
#pragma unroll
        for (int i = 0; i < WM; ++i)
#pragma unroll
            for (int jn = 0; jn < 4; ++jn) {
                const int r = m0 + wr * (BM / 2) + i * 16 + gid;
                const std::ptrdiff_t c = col0 + wc * 32 + jn * 8 + 2 * tig;
                write(r, c, T(cfrag[i][jn][0]));
                write(r, c + 1, T(cfrag[i][jn][1]));
                write(r + 8, c, T(cfrag[i][jn][2]));
                write(r + 8, c + 1, T(cfrag[i][jn][3]));
            }
#endif
    } else {
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
                write(m0 + ty * TM + i, col0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4), acc[i][j]);
    }
}

// Weight [cout][cin][taps] -> [cin][cout * taps] with taps reversed.
template <class T>
__global__ void pack_dgrad_kernel(const T* w, int cout, int cin, int taps, T* packed) {
    const std::ptrdiff_t total = std::ptrdiff_t(cout) * cin * taps;
    for (std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x; i < total; i += std::ptrdiff_t(gridDim.x) * blockDim.x) {
        const int t = int(i % taps), ci = int((i / taps) % cin), oc = int(i / (std::ptrdiff_t(taps) * cin));
        packed[(std::ptrdiff_t(ci) * cout + oc) * taps + (taps - 1 - t)] = w[i];
    }
}

// ---------------------------------------------------------------------------------------------
// Wgrad

inline constexpr int wgrad_bn = 64, wgrad_bk = 16, wgrad_chunk = 256;

// Voxel-chunk slots: enough blocks to fill a large GPU, a function of the problem only.
constexpr int wgrad_slots(const ConvProblem& p, int bm) {
    const std::ptrdiff_t tiles = ((p.cout + bm - 1) / bm) * ((std::ptrdiff_t(p.cin) * p.taps() + wgrad_bn - 1) / wgrad_bn);
    const std::ptrdiff_t chunks = (std::ptrdiff_t(p.extent.size()) + wgrad_chunk - 1) / wgrad_chunk;
    std::ptrdiff_t s = (1024 + tiles - 1) / tiles;
    s = s < 1 ? 1 : s > 128 ? 128 : s;
    return int(s < chunks ? s : chunks);
}
constexpr int wgrad_bm(const ConvProblem& p) { return p.cout <= 32 ? 32 : 64; }

// partial[slot][m][j] = sum over the slot's chunks of dy[n][m][v] x[n][ci][v + offset(tap)].
template <class T, int KD, int KH, int BM>
__global__ void __launch_bounds__(256) wgrad_kernel(const T* __restrict__ dy, std::ptrdiff_t dy_stride, int M, Sources<T> src,
                                                    int images, Geometry g, T* __restrict__ partial) {
    constexpr int TAPS = KD * KH * KH, BN = wgrad_bn, BK = wgrad_bk, TM = BM / 16;
    __shared__ T As[2][BK][BM];
    __shared__ T Bs[2][BK][BN];
    __shared__ int coords[2][BK][3];
    const int N = (src.channels[0] + src.channels[1]) * TAPS;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
    const int slot = blockIdx.z, slots = gridDim.z;
    const std::ptrdiff_t per_image = (g.plane + wgrad_chunk - 1) / wgrad_chunk;
    const std::ptrdiff_t chunks = per_image * images;

    const int bj = tid % BN, bk0 = tid / BN;  // B: rows bk0 + 4 j, j < 4
    const int jcol = j0 + bj;
    const bool j_ok = jcol < N;
    const int ci = j_ok ? jcol / TAPS : 0, tap = j_ok ? jcol % TAPS : 0;
    const int s_of_ci = ci < src.channels[0] ? 0 : 1;
    const int ci_local = s_of_ci == 0 ? ci : ci - src.channels[0];
    constexpr int a_per_thread = BM * BK / 256;

    T acc[TM][4] = {};
    T ra[a_per_thread], rb[4];
    for (std::ptrdiff_t chunk = slot; chunk < chunks; chunk += slots) {
        const std::ptrdiff_t n = chunk / per_image;
        const std::ptrdiff_t v0 = (chunk % per_image) * wgrad_chunk, v1 = min(g.plane, v0 + wgrad_chunk);
        const T* dyn = dy + n * dy_stride;
        const T* xn = j_ok ? src.data[s_of_ci] + n * src.stride[s_of_ci] + std::ptrdiff_t(ci_local) * g.plane : nullptr;
        auto set_coords = [&](int buf, std::ptrdiff_t k0) {
            if (tid < BK) {
                const std::ptrdiff_t v = k0 + tid;
                coords[buf][tid][0] = int(v / (std::ptrdiff_t(g.h) * g.w));
                coords[buf][tid][1] = int((v / g.w) % g.h);
                coords[buf][tid][2] = int(v % g.w);
            }
        };
        auto load_a = [&](std::ptrdiff_t k0) {
#pragma unroll
            for (int j = 0; j < a_per_thread; ++j) {
                const int e = tid + j * 256, m = e / BK;
                const std::ptrdiff_t v = k0 + e % BK;
                ra[j] = (m0 + m < M && v < v1) ? dyn[std::ptrdiff_t(m0 + m) * g.plane + v] : T(0);
            }
        };
        auto load_b = [&](int buf, std::ptrdiff_t k0) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int kk = bk0 + 4 * j;
                T val = T(0);
                if (j_ok && k0 + kk < v1) {
                    std::ptrdiff_t off;
                    if (tap_offset<KD, KH>(tap, coords[buf][kk][0], coords[buf][kk][1], coords[buf][kk][2], g, off)) val = xn[off];
                }
                rb[j] = val;
            }
        };
        auto store = [&](int buf) {
#pragma unroll
            for (int j = 0; j < a_per_thread; ++j) {
                const int e = tid + j * 256;
                As[buf][e % BK][e / BK] = ra[j];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) Bs[buf][bk0 + 4 * j][bj] = rb[j];
        };
        __syncthreads();  // the previous chunk is done with the shared tiles
        set_coords(0, v0);
        __syncthreads();
        load_a(v0);
        load_b(0, v0);
        store(0);
        if (v0 + BK < v1) set_coords(1, v0 + BK);
        __syncthreads();
        int buf = 0;
        for (std::ptrdiff_t k0 = v0; k0 < v1; k0 += BK) {
            const bool more = k0 + BK < v1;
            if (more) {
                load_a(k0 + BK);
                load_b(buf ^ 1, k0 + BK);
            }
#pragma unroll
            for (int k = 0; k < BK; ++k) {
                T a[TM], b[4];
#pragma unroll
                for (int i = 0; i < TM; ++i) a[i] = As[buf][k][ty * TM + i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = Bs[buf][k][tx * 4 + j];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
            }
            if (more) {
                store(buf ^ 1);
                __syncthreads();
                // coords[buf] is free now: fill it for the tile after next.
                if (k0 + 2 * BK < v1) set_coords(buf, k0 + 2 * BK);
                __syncthreads();
                buf ^= 1;
            }
        }
    }
    T* out = partial + std::ptrdiff_t(slot) * M * N;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + ty * TM + i, jj = j0 + tx * 4 + j;
            if (m < M && jj < N) out[std::ptrdiff_t(m) * N + jj] = acc[i][j];
        }
}

template <class T>
__global__ void sum_slots_kernel(const T* partial, int slots, std::ptrdiff_t count, T* dweight) {
    const std::ptrdiff_t i = blockIdx.x * std::ptrdiff_t(blockDim.x) + threadIdx.x;
    if (i >= count) return;
    T s = T(0);
    for (int k = 0; k < slots; ++k) s += partial[k * count + i];
    dweight[i] += s;
}

// ---------------------------------------------------------------------------------------------
// Host side

// Fprop needs no scratch (implicit GEMM straight from the sources).
template <class T>
constexpr std::size_t conv_forward_workspace_size(const ConvProblem&) {
    return 0;
}

// Backward: the repacked Dgrad weight, then the Wgrad slots' partial sums.
template <class T>
constexpr std::size_t conv_workspace_size(const ConvProblem& p) {
    const std::size_t weights = p.weight_count();
    return weights + std::size_t(wgrad_slots(p, wgrad_bm(p))) * weights;
}

template <class T>
Sources<T> sources_of(std::span<const ChannelSource<T>> input, const char* what) {
    if (input.size() < 1 || input.size() > 2) throw std::invalid_argument(std::string(what) + ": one or two input sources expected");
    Sources<T> s;
    for (std::size_t i = 0; i < input.size(); ++i) {
        s.data[i] = input[i].data;
        s.channels[i] = input[i].channels;
        s.stride[i] = input[i].image_stride;
    }
    return s;
}

inline Geometry geometry_of(const ConvProblem& p) { return {p.extent.d, p.extent.h, p.extent.w, std::ptrdiff_t(p.extent.size())}; }

template <class F>
void dispatch_kernel_shape(const ConvProblem& p, const char* what, F&& f) {
    if (p.kd == 1 && p.kh == 1 && p.kw == 1) f.template operator()<1, 1>();
    else if (p.kd == 1 && p.kh == 3 && p.kw == 3) f.template operator()<1, 3>();
    else if (p.kd == 3 && p.kh == 3 && p.kw == 3) f.template operator()<3, 3>();
    else throw std::invalid_argument(std::string(what) + ": kernel " + std::to_string(p.kd) + "x" + std::to_string(p.kh) + "x" +
                                     std::to_string(p.kw) + " is not 1x1x1, 1x3x3 or 3x3x3");
}

template <class T, int KD, int KH>
void launch_gemm(const T* A, int M, int K, const Sources<T>& src, const Sinks<T>& dst, const T* bias, std::ptrdiff_t N,
                 const Geometry& g) {
    const dim3 block(256);
    const bool tf32 = std::is_same_v<T, float> && conv_precision() == Precision::tf32;
    auto go = [&]<int BM>() {
        const dim3 grid(unsigned((N + gemm_bn - 1) / gemm_bn), unsigned((M + BM - 1) / BM));
        if (tf32)
            conv_gemm_kernel<T, KD, KH, BM, true><<<grid, block, 0, cuda::stream()>>>(A, M, K, src, dst, bias, N, g);
        else
            conv_gemm_kernel<T, KD, KH, BM, false><<<grid, block, 0, cuda::stream()>>>(A, M, K, src, dst, bias, N, g);
        LIGHTUNET_CUDA_LAUNCHED("conv_gemm_kernel");
    };
    if (M <= 32) go.template operator()<32>();
    else if (M <= 64) go.template operator()<64>();
    else go.template operator()<128>();
}

// Implicit GEMM is the only algorithm here: direct and automatic name it; Winograd is refused.
inline void check_algorithm(const ConvProblem& p, const char* call) {
    if (p.algorithm == ConvAlgorithm::winograd)
        throw std::invalid_argument(std::string(call) + ": the CUDA backend has no Winograd convolution; use ConvAlgorithm::automatic or direct");
    if (p.precision == lightunet::Precision::bf16)
        throw std::invalid_argument(std::string(call) + ": the CUDA backend has no bf16 convolution (Precision::bf16 is a CPU setting; "
                                                        "its reduced precision is TF32, set_tf32)");
}

template <class T>
void conv_forward(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* weight, const T* bias,
                  T* output, std::ptrdiff_t output_image_stride, T* /*workspace*/) {
    check_algorithm(p, "conv_forward");
    check_conv_forward_memory(p, images, input, static_cast<const T*>(output), output_image_stride);
    if (images <= 0 || p.cout == 0) return;
    const Sources<T> src = sources_of(input, "conv_forward");
    Sinks<T> dst;
    dst.data[0] = output;
    dst.channels[0] = p.cout;
    dst.stride[0] = output_image_stride;
    const Geometry g = geometry_of(p);
    dispatch_kernel_shape(p, "conv_forward", [&]<int KD, int KH>() {
        launch_gemm<T, KD, KH>(weight, p.cout, p.cin * p.taps(), src, dst, bias, std::ptrdiff_t(images) * g.plane, g);
    });
}

template <class T>
void conv_backward(const ConvProblem& p, int images, std::span<const ChannelSource<T>> input, const T* weight, const T* grad_output,
                   std::ptrdiff_t grad_output_image_stride, std::span<const ChannelSink<T>> grad_input, T* dweight, T* dbias,
                   T* workspace) {
    check_algorithm(p, "conv_backward");
    check_conv_backward_memory(p, images, input, grad_output, grad_output_image_stride, grad_input);
    if (images <= 0) return;
    const Sources<T> src = sources_of(input, "conv_backward");
    const Geometry g = geometry_of(p);
    const std::ptrdiff_t N = std::ptrdiff_t(images) * g.plane;
    if (dbias) channel_sums(images, p.cout, g.plane, grad_output_image_stride, grad_output, dbias);
    if (dweight) {
        const int bm = wgrad_bm(p), slots = wgrad_slots(p, bm);
        T* partial = workspace + p.weight_count();
        dispatch_kernel_shape(p, "conv_backward", [&]<int KD, int KH>() {
            const dim3 grid(unsigned((p.cin * p.taps() + wgrad_bn - 1) / wgrad_bn), unsigned((p.cout + bm - 1) / bm), unsigned(slots));
            if (bm == 32)
                wgrad_kernel<T, KD, KH, 32><<<grid, 256, 0, cuda::stream()>>>(grad_output, grad_output_image_stride, p.cout, src,
                                                                               images, g, partial);
            else
                wgrad_kernel<T, KD, KH, 64><<<grid, 256, 0, cuda::stream()>>>(grad_output, grad_output_image_stride, p.cout, src,
                                                                               images, g, partial);
            LIGHTUNET_CUDA_LAUNCHED("wgrad_kernel");
        });
        const std::ptrdiff_t count = std::ptrdiff_t(p.weight_count());
        sum_slots_kernel<<<grid_for(count), block_threads, 0, cuda::stream()>>>(partial, slots, count, dweight);
        LIGHTUNET_CUDA_LAUNCHED("sum_slots_kernel");
    }
    if (grad_input.size() > 2) throw std::invalid_argument("conv_backward: at most two input-gradient sinks");
    Sinks<T> dst;
    bool any = false;
    for (std::size_t i = 0; i < grad_input.size(); ++i) {
        dst.data[i] = grad_input[i].data;
        dst.channels[i] = grad_input[i].channels;
        dst.stride[i] = grad_input[i].image_stride;
        dst.accumulate[i] = grad_input[i].accumulate;
        any |= grad_input[i].data != nullptr;
    }
    if (!any) return;
    T* packed = workspace;
    pack_dgrad_kernel<<<grid_for(std::ptrdiff_t(p.weight_count())), block_threads, 0, cuda::stream()>>>(weight, p.cout, p.cin,
                                                                                                      p.taps(), packed);
    LIGHTUNET_CUDA_LAUNCHED("pack_dgrad_kernel");
    Sources<T> gs;
    gs.data[0] = grad_output;
    gs.channels[0] = p.cout;
    gs.stride[0] = grad_output_image_stride;
    dispatch_kernel_shape(p, "conv_backward", [&]<int KD, int KH>() {
        launch_gemm<T, KD, KH>(packed, p.cin, p.cout * p.taps(), gs, dst, static_cast<const T*>(nullptr), N, g);
    });
}

}  // namespace lightunet::cuda_kernels

#pragma once
// bfloat16 operands for the direct convolution (Precision::bf16): inputs, weights and output
// gradients rounded to bfloat16 (round to nearest even), products summed in fp32.
//
// Where the CPU has AVX512_BF16, Fprop and Dgrad run on vdpbf16ps, which multiplies pairs of
// bf16 values and adds both products to an fp32 lane: twice the multiply-adds of an fp32 FMA per
// instruction, and half the bytes per operand. Its reduction pairs are two input channels of one
// voxel, so the padded input is stored as channel pairs interleaved per voxel
// ([pair][q][2] bf16) and the weights as pairs of input channels ([block][pair][tap][R] of two
// bf16); a chunk's accumulators are the fp32 kernel's, and so is everything after them.
// Where the CPU also has AMX (Sapphire Rapids and later), Fprop and Dgrad run on tile
// multiply-adds instead (tdpbf16ps: 16 output channels x 16 voxels x 16 input pairs per
// instruction) on the same [pair][q][2] padding, whose rows of 16 voxels are exactly a tile's
// rows of pairs; the weights are packed as the tiles' rows ([16 outputs][k pairs] per tap).
// Elsewhere (and for Wgrad) the same rounded operands go through the fp32 kernels: a product of
// two bf16 values is exact in fp32, so both compute the same sums up to their order.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "conv_direct.hpp"

#if defined(__AVX512F__) && defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define LIGHTUNET_BF16_DOT_COMPILED 1
#else
#define LIGHTUNET_BF16_DOT_COMPILED 0
#endif
#if LIGHTUNET_BF16_DOT_COMPILED && defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LIGHTUNET_AMX_COMPILED 1
#else
#define LIGHTUNET_AMX_COMPILED 0
#endif

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

// The upper half of a float's bits, rounded to nearest even (NaN stays NaN).
inline std::uint16_t bf16_bits(float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return std::uint16_t(u >> 16);
}
inline float from_bf16_bits(std::uint16_t b) {
    const std::uint32_t u = std::uint32_t(b) << 16;
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}
inline float round_to_bf16(float v) { return from_bf16_bits(bf16_bits(v)); }

#if LIGHTUNET_BF16_DOT_COMPILED
// bf16_bits of 16 floats, in the low halves of 32-bit lanes: the same integer rounding, so the
// same bits (vcvtneps2bf16 would flush denormals to zero). GCC's vector arithmetic rather than
// shift intrinsics, whose _mm512_undefined operand GCC 12 reports as uninitialised.
using U32x16 = std::uint32_t __attribute__((vector_size(64)));
inline U32x16 bf16_bits16(__m512 v) {
    const U32x16 u = U32x16(_mm512_castps_si512(v));
    const U32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const U32x16 nan = U32x16((u & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
    return (nan & ((u >> 16) | 0x40u)) | (~nan & rounded);
}
// Lanes [x, x + 16) of a row of n values, as a mask (the last vector of a row is partial).
inline __mmask16 row_mask(std::ptrdiff_t x, std::ptrdiff_t n) {
    return n - x >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - x)) - 1u);
}
#endif

template <class T>
constexpr bool uses_bf16(const ConvProblem& p) {
    return std::is_same_v<T, float> && p.precision == Precision::bf16;
}

// Rounds n values to bf16 in place (the fp32 kernels' operands).
template <class T>
void round_to_bf16(T* data, std::ptrdiff_t n) {
    if constexpr (std::is_same_v<T, float>) {
        constexpr std::ptrdiff_t block = 1 << 14;
        parallel_for(ceil_div(n, block), [&](std::ptrdiff_t b) {
            const std::ptrdiff_t end = std::min(n, (b + 1) * block);
            for (std::ptrdiff_t i = b * block; i < end; ++i) data[i] = round_to_bf16(data[i]);
        });
    }
}

// Whether this process runs the vdpbf16ps kernels: compiled into this target (AVX-512 ones) and
// the CPU has AVX512_BF16. LIGHTUNET_CPU_BF16=0 turns them off (the fp32 kernels on rounded
// operands then run), for tests and benchmarks.
inline bool bf16_dot_runs() {
#if LIGHTUNET_BF16_DOT_COMPILED
    static const bool runs = [] {
        const char* env = std::getenv("LIGHTUNET_CPU_BF16");
        if (env && std::string(env) == "0") return false;
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") != 0;
    }();
    return runs;
#else
    return false;
#endif
}

// Whether Fprop and Dgrad run on AMX tiles: the vdpbf16ps kernels run, the CPU has AMX-TILE and
// AMX-BF16, and Linux lets this process use the tile data (asked once: arch_prctl). With
// LIGHTUNET_CPU_AMX=0 the vdpbf16ps kernels run instead, for tests and benchmarks.
inline bool amx_runs() {
#if LIGHTUNET_AMX_COMPILED
    static const bool runs = [] {
        const char* env = std::getenv("LIGHTUNET_CPU_AMX");
        if ((env && std::string(env) == "0") || !bf16_dot_runs()) return false;
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
        constexpr long request_permission = 0x1023, tile_data = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
        return tile && bf16 && syscall(SYS_arch_prctl, request_permission, tile_data) == 0;
    }();
    return runs;
#else
    return false;
#endif
}

// Input pairs per tile multiply-add: the largest divisor of the pair count up to 16, so that
// one tile shape serves every block (16 input channels of a BraTS net: 8 pairs; 48: 2 x 12).
constexpr int amx_pair_block(int pairs) {
    for (int k = pairs < 16 ? pairs : 16; k > 1; --k)
        if (pairs % k == 0) return k;
    return 1;
}
inline constexpr int amx_rows = 16;  // output channels per tile

// Elements of T the pair layouts need at most (they fit the fp32 layouts' sizes: asserted).
constexpr std::ptrdiff_t channel_pairs(int channels) { return (channels + 1) / 2; }

// Pads channel pairs of the sources into dst ([pair][padded q][2] bf16, a pair as one 32-bit
// word, its first channel in the low half); an odd last channel is paired with zeros. Each
// value is written once: rows' interiors converted 16 at a time, only the borders zeroed.
// With `plain`, the same values also go there as pad_sources_bf16 lays them out ([channel]
// [padded q]): the backward pass's output gradient in both layouts from one read of it.
template <class T>
void pad_source_pairs(const PaddedLayout& l, std::span<const ChannelSource<T>> sources, int image, std::ptrdiff_t channel_size,
                      const VolumeSlab& slab, std::uint16_t* dst, std::uint16_t* plain = nullptr) {
    const int channels = channel_count(sources);
    const std::ptrdiff_t w = l.extent.w;
    parallel_for(channel_pairs(channels), [&](std::ptrdiff_t pair) {
        const T* src[2] = {source_channel(sources, image, channel_size, 2 * pair),
                           source_channel(sources, image, channel_size, 2 * pair + 1)};
        std::uint32_t* out = reinterpret_cast<std::uint32_t*>(dst) + pair * l.stride;
        std::uint16_t* plain_out[2] = {plain ? plain + 2 * pair * l.stride : nullptr,
                                       plain && src[1] ? plain + (2 * pair + 1) * l.stride : nullptr};
        auto fill_plain = [&](std::ptrdiff_t from, std::ptrdiff_t to) {
            for (std::uint16_t* p : plain_out)
                if (p) std::fill(p + from, p + to, std::uint16_t(0));
        };
        auto word = [&](std::ptrdiff_t at) {
            return std::uint32_t(bf16_bits(float(src[0][at]))) | (src[1] ? std::uint32_t(bf16_bits(float(src[1][at]))) << 16 : 0u);
        };
        for_each_padded_row(l, slab, [&](std::ptrdiff_t r, std::ptrdiff_t at) {
            const std::ptrdiff_t row_begin = r * l.wp;
            std::uint32_t* row = out + row_begin;
            if (at < 0) {
                std::fill(row, row + l.wp, 0u);
                fill_plain(row_begin, row_begin + l.wp);
                return;
            }
            std::fill(row, row + l.pw, 0u);
            std::fill(row + l.pw + w, row + l.wp, 0u);
            fill_plain(row_begin, row_begin + l.pw);
            fill_plain(row_begin + l.pw + w, row_begin + l.wp);
            std::uint32_t* interior = row + l.pw;
            const std::ptrdiff_t plain_interior = row_begin + l.pw;
#if LIGHTUNET_BF16_DOT_COMPILED
            if constexpr (std::is_same_v<T, float>) {
                for (std::ptrdiff_t x = 0; x < w; x += 16) {
                    const __mmask16 m = row_mask(x, w);
                    prefetch_ahead(src[0] + at + x, stream_prefetch_bytes);
                    if (src[1]) prefetch_ahead(src[1] + at + x, stream_prefetch_bytes);
                    const U32x16 first = bf16_bits16(_mm512_maskz_loadu_ps(m, src[0] + at + x));
                    const U32x16 second = src[1] ? bf16_bits16(_mm512_maskz_loadu_ps(m, src[1] + at + x)) : U32x16{};
                    _mm512_mask_storeu_epi32(interior + x, m, __m512i(first | (second << 16)));
                    if (plain_out[0]) _mm512_mask_cvtepi32_storeu_epi16(plain_out[0] + plain_interior + x, m, __m512i(first));
                    if (plain_out[1]) _mm512_mask_cvtepi32_storeu_epi16(plain_out[1] + plain_interior + x, m, __m512i(second));
                }
                return;
            }
#endif
            prefetch_row_ahead(src[0] + at, w * std::ptrdiff_t(sizeof(T)));
            if (src[1]) prefetch_row_ahead(src[1] + at, w * std::ptrdiff_t(sizeof(T)));
            for (std::ptrdiff_t x = 0; x < w; ++x) {
                const std::uint32_t v = word(at + x);
                interior[x] = v;
                if (plain_out[0]) plain_out[0][plain_interior + x] = std::uint16_t(v);
                if (plain_out[1]) plain_out[1][plain_interior + x] = std::uint16_t(v >> 16);
            }
        });
        std::fill(out + l.plane, out + l.stride, 0u);
        fill_plain(l.plane, l.stride);
    });
}

// Pads channels of the sources into dst as bf16 ([channel][padded q], the fp32 layout's
// strides); each value written once, as pad_source_pairs.
template <class T>
void pad_sources_bf16(const PaddedLayout& l, std::span<const ChannelSource<T>> sources, int image, std::ptrdiff_t channel_size,
                      const VolumeSlab& slab, std::uint16_t* dst) {
    const std::ptrdiff_t w = l.extent.w;
    parallel_for(channel_count(sources), [&](std::ptrdiff_t c) {
        const T* src = source_channel(sources, image, channel_size, c);
        std::uint16_t* out = dst + c * l.stride;
        for_each_padded_row(l, slab, [&](std::ptrdiff_t r, std::ptrdiff_t at) {
            std::uint16_t* row = out + r * l.wp;
            if (at < 0) {
                std::fill(row, row + l.wp, std::uint16_t(0));
                return;
            }
            std::fill(row, row + l.pw, std::uint16_t(0));
            std::fill(row + l.pw + w, row + l.wp, std::uint16_t(0));
            std::uint16_t* interior = row + l.pw;
#if LIGHTUNET_BF16_DOT_COMPILED
            if constexpr (std::is_same_v<T, float>) {
                for (std::ptrdiff_t x = 0; x < w; x += 16) {
                    const __mmask16 m = row_mask(x, w);
                    prefetch_ahead(src + at + x, stream_prefetch_bytes);
                    _mm512_mask_cvtepi32_storeu_epi16(interior + x, m, __m512i(bf16_bits16(_mm512_maskz_loadu_ps(m, src + at + x))));
                }
                return;
            }
#endif
            prefetch_row_ahead(src + at, w * std::ptrdiff_t(sizeof(T)));
            for (std::ptrdiff_t x = 0; x < w; ++x) interior[x] = bf16_bits(float(src[at + x]));
        });
        std::fill(out + l.plane, out + l.stride, std::uint16_t(0));
    });
}

// Weights [cout][cin][taps] as [block of R outputs][input pair][tap][R] of two bf16 (the pair's
// first channel in the low half), zero past cout and cin. `dgrad`: the data gradient's kernel
// (outputs and inputs exchanged, taps mirrored), as pack_dgrad_weights.
// With `amx`, the tiles' layout: [block of 16 outputs][block of k pairs][tap][16][k] (k:
// amx_pair_block), each tap's block one tile of 16 rows. Fprop's output channel o times
// output_scale[o] if given (a folded batch norm), before the rounding.
template <class T>
void pack_weights_bf16(const T* weight, int cout, int cin, int taps, bool dgrad, std::uint32_t* packed, bool amx = amx_runs(),
                       const T* output_scale = nullptr) {
    if (dgrad && output_scale) throw std::logic_error("pack_weights_bf16: output scales are Fprop's");
    const int outs = dgrad ? cin : cout, ins = dgrad ? cout : cin;
    const std::ptrdiff_t pairs = channel_pairs(ins);
    // Output o's taps of input pair pr, as words, to to[t * step]; zeros past outs and ins. The
    // taps of one input channel lie contiguous in `weight` (Fprop forwards, Dgrad mirrored), so
    // the bounds and the direction are settled before the loop over them: tested per value, they
    // made the pack a large part of a call at the small levels (each call of a convolution that is
    // not prepared packs). bench/ab_kernels.sh, 2 threads, Zen 5: 2D 15^2 512 -> 512 bf16 Fprop
    // 4.49 -> 2.81 ms, Dgrad 5.89 -> 3.75 ms; 30^2 256 -> 256 2.46 -> 2.04 and 2.63 -> 2.14 ms.
    auto pair_taps = [&](int o, std::ptrdiff_t pr, std::uint32_t* to, std::ptrdiff_t step) {
        if (o >= outs) {
            for (int t = 0; t < taps; ++t) to[t * step] = 0;
            return;
        }
        // Input channel i's taps for output o: Fprop's weight[o][i][t], Dgrad's weight[i][o][taps - 1 - t].
        auto taps_of = [&](int i) {
            return dgrad ? weight + (std::ptrdiff_t(i) * cin + o) * taps : weight + (std::ptrdiff_t(o) * cin + i) * taps;
        };
        const int i0 = int(2 * pr), i1 = i0 + 1;
        const T* lo = taps_of(i0);
        const T* hi = i1 < ins ? taps_of(i1) : nullptr;
        const T scale = output_scale ? output_scale[o] : T(1);  // times 1 is exact
        for (int t = 0; t < taps; ++t) {
            const int from = dgrad ? taps - 1 - t : t;
            const std::uint32_t high = hi ? std::uint32_t(bf16_bits(float(hi[from] * scale))) << 16 : 0u;
            to[t * step] = std::uint32_t(bf16_bits(float(lo[from] * scale))) | high;
        }
    };
    if (amx) {
        // [block of k pairs][tap][16 rows][k]
        const int k = amx_pair_block(int(pairs));
        parallel_for(ceil_div(outs, amx_rows), [&](std::ptrdiff_t b) {
            std::uint32_t* dst = packed + b * pairs * taps * amx_rows;
            for (std::ptrdiff_t kb = 0; kb < pairs / k; ++kb)
                for (int r = 0; r < amx_rows; ++r)
                    for (int j = 0; j < k; ++j)
                        pair_taps(int(b) * amx_rows + r, kb * k + j, dst + kb * taps * amx_rows * k + r * k + j, amx_rows * k);
        });
        return;
    }
    // [input pair][tap][R], a pair's block written at a time.
    constexpr int R = fprop_rows;
    parallel_for(ceil_div(outs, R), [&](std::ptrdiff_t b) {
        std::uint32_t* dst = packed + b * pairs * taps * R;
        for (std::ptrdiff_t pr = 0; pr < pairs; ++pr)
            for (int r = 0; r < R; ++r) pair_taps(int(b) * R + r, pr, dst + pr * taps * R + r, R);
    });
}
template <class T, VectorGeometry G = geometry>
constexpr std::size_t packed_weights_bf16_size(int outs, int ins, int taps) {  // in uint32, either layout
    const int rows = G.fprop_rows() > amx_rows ? G.fprop_rows() : amx_rows;
    return std::size_t(round_up(outs, rows)) * std::size_t(channel_pairs(ins)) * std::size_t(taps);
}

#if LIGHTUNET_AMX_COMPILED
// The shapes of the 8 tile registers (ldtilecfg's 64-byte layout), loaded per thread.
struct alignas(64) AmxTileConfig {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t bytes_per_row[16] = {};
    std::uint8_t rows[16] = {};

    constexpr AmxTileConfig& shape(int tile, int tile_rows, int row_bytes) {
        rows[tile] = std::uint8_t(tile_rows);
        bytes_per_row[tile] = std::uint16_t(row_bytes);
        return *this;
    }
    // Fprop: accumulators 0-2 (16 outputs x 16 voxels, fp32), weights 3 (16 outputs x k pairs),
    // inputs 4-6 (k pairs x 16 voxels).
    static constexpr AmxTileConfig fprop(int k) {
        AmxTileConfig c;
        for (int t = 0; t < 3; ++t) c.shape(t, amx_rows, 64).shape(4 + t, k, 64);
        return c.shape(3, amx_rows, 4 * k);
    }
    // Wgrad: accumulators 0-5 (`channels` inputs x 16 outputs, fp32), inputs 6 (`channels` x
    // `pairs` voxel pairs), output gradient 7 (`pairs` voxel pairs x 16 outputs).
    static constexpr AmxTileConfig wgrad(int channels, int pairs) {
        AmxTileConfig c;
        for (int t = 0; t < 6; ++t) c.shape(t, channels, 64);
        return c.shape(6, channels, 4 * pairs).shape(7, pairs, 64);
    }
};
__attribute__((target("amx-tile"))) inline void amx_load_config(const AmxTileConfig& config) { _tile_loadconfig(&config); }
__attribute__((target("amx-tile"))) inline void amx_release() { _tile_release(); }

// One chunk of 3 x 16 voxels x 16 output channels into acc_out ([16][48] floats, overwritten),
// summed over every input pair and tap: x2 at the chunk's first voxel of pair 0.
__attribute__((target("amx-tile,amx-bf16"))) inline void fprop_chunk_amx(const std::uint16_t* x2, std::ptrdiff_t pair_stride,
                                                                          const std::ptrdiff_t* tap_offset, int taps, int pair_blocks,
                                                                          int k, const std::uint32_t* w, float* acc_out) {
    const long input_row_bytes = long(pair_stride) * 2, weight_row_bytes = 4L * k;
    asm volatile("" ::: "memory");  // the padding and weights are written before the tiles read them
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    for (int kb = 0; kb < pair_blocks; ++kb) {
        const std::uint16_t* xk = x2 + std::ptrdiff_t(kb) * k * pair_stride;
        const std::uint32_t* wk = w + std::ptrdiff_t(kb) * taps * amx_rows * k;
        for (int t = 0; t < taps; ++t) {
            const std::uint16_t* xp = xk + 2 * tap_offset[t];
            _tile_loadd(3, wk + std::ptrdiff_t(t) * amx_rows * k, weight_row_bytes);
            _tile_loadd(4, xp, input_row_bytes);
            _tile_loadd(5, xp + 32, input_row_bytes);
            _tile_loadd(6, xp + 64, input_row_bytes);
            _tile_dpbf16ps(0, 3, 4);
            _tile_dpbf16ps(1, 3, 5);
            _tile_dpbf16ps(2, 3, 6);
        }
    }
    _tile_stored(0, acc_out, 3 * 64);
    _tile_stored(1, acc_out + 16, 3 * 64);
    _tile_stored(2, acc_out + 32, 3 * 64);
    asm volatile("" ::: "memory");  // acc_out is read after
}
#endif

#if LIGHTUNET_BF16_DOT_COMPILED
// One chunk of V vectors of voxels x R output channels, summed over input pairs [cp_begin,
// cp_end) into acc_out (overwritten): x2 points at the chunk's first voxel of pair 0. No lambdas:
// code inlined into this function gets its AVX512_BF16 target, a lambda would not.
template <int R, int V>
__attribute__((target("avx512f,avx512bf16"))) inline void fprop_chunk_bf16(const std::uint16_t* x2, std::ptrdiff_t pair_stride,
                                                                          const std::ptrdiff_t* tap_offset, int taps, int row_taps,
                                                                          int cp_begin, int cp_end, const std::uint32_t* w,
                                                                          float* acc_out) {
    __m512 acc[R][V];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int cp = cp_begin; cp < cp_end; ++cp) {
        const std::uint16_t* xc = x2 + cp * pair_stride;
        const std::uint32_t* wc = w + std::ptrdiff_t(cp) * taps * R;
        // As fprop_chunk: the next chunk's input rows go towards the caches once per row of taps
        // (pair by pair, a 3D chunk reads 9 rows of every pair: more streams than the hardware
        // prefetchers follow).
        for (int t = 0, row_left = 0; t < taps; ++t, --row_left) {
            const std::uint16_t* xp = xc + 2 * tap_offset[t];
            if (row_left == 0) {
#pragma GCC unroll 4
                for (int v = 0; v <= V; ++v) __builtin_prefetch(xp + 32 * V + 32 * v, 0, 2);
                row_left = row_taps;
            }
            __m512bh xv[V];
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) xv[v] = (__m512bh)_mm512_loadu_si512(xp + 32 * v);
            const std::uint32_t* wt = wc + t * R;
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                const __m512bh wr = (__m512bh)_mm512_set1_epi32(int(wt[r]));
#pragma GCC unroll 4
                for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xv[v], wr);
            }
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) _mm512_storeu_ps(acc_out + (r * V + v) * 16, acc[r][v]);
}
#endif

// Whether wgrad_bf16 runs wgrad_lanes_bf16 (voxels in the lanes) rather than the blocked kernel:
// below two whole blocks of 16 output channels, where the blocked kernel leaves lanes empty
// (cout 17..31) or has few items for the threads (cout <= 16 and few input channels). Measured
// on the Zen 5 host (2 threads, conv_backward without a data gradient, medians): 3D 128^3
// 4 -> 16 45 -> 34 ms; 2D 176 x 144 b9 4 -> 24 3.8 -> 3.0 ms, 24 -> 24 8.2 -> 7.9 ms; 3D 128^3
// 16 -> 16 and 32 -> 16 and 2D 48 -> 24 the same within the noise; at cout 32 the blocked kernel
// is faster (2D 240^2 32 -> 32: 2.9 against 3.4 ms).
constexpr bool wgrad_in_lanes(int cout) { return cout < 32; }

// The weight gradient on vdpbf16ps, vectorised over output channels as wgrad_by_channels:
// lanes are 16 output channels, and a pair of voxels is the instruction's reduction pair. The
// output gradient goes into blocks [block][voxel pair][16 channels][2] (zeros past the run and
// cout); input values are broadcast as the bf16 pair (q + offset, q + 1 + offset), one 32-bit
// load from the plain bf16 padding. Scratch: bf16_wgrad_scratch_size.
template <VectorGeometry G = geometry>
constexpr std::size_t bf16_wgrad_scratch_size(const PaddedLayout& l, int cin, int cout) {  // in floats
    const std::size_t blocks = std::size_t(ceil_div(cout, 16));
    const std::size_t pairs = std::size_t(ceil_div(l.run_length, std::ptrdiff_t(2)));
    const std::size_t blocked = blocks * pairs * 16 + blocks * 16 * std::size_t(cin) * std::size_t(l.taps);
    const std::size_t lanes = wgrad_in_lanes(cout) ? std::size_t(cout) * std::size_t(cin) * std::size_t(l.taps) * 16 : 0;  // running totals
    return std::max(blocked, lanes) + 32;
}

#if LIGHTUNET_BF16_DOT_COMPILED
// Voxel pairs [pair_begin, pair_end) of R blocks x P columns, in short sums of 256 pairs (from a
// multiple of 256) added to the running totals in dw_at (zero at the first pass): a run walked in
// several passes gives the sums of one pass over it, bit for bit. Null dw_at: a column past the
// matrix, computed and dropped.
inline constexpr std::ptrdiff_t wgrad_short_sum = 256;
template <int R, int P>
__attribute__((target("avx512f,avx512bf16"))) inline void wgrad_tile_bf16(const std::uint16_t* const* x_at, const std::uint16_t* const* g_at,
                                                                         std::ptrdiff_t pair_begin, std::ptrdiff_t pair_end,
                                                                         float* const* dw_at) {
    constexpr std::ptrdiff_t tile = wgrad_short_sum;
    __m512 total[R][P];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
        for (int p = 0; p < P; ++p) total[r][p] = dw_at[r * P + p] ? _mm512_load_ps(dw_at[r * P + p]) : _mm512_setzero_ps();
    for (std::ptrdiff_t p0 = pair_begin; p0 < pair_end; p0 += tile) {
        const std::ptrdiff_t p1 = std::min(pair_end, p0 + tile);
        __m512 acc[R][P];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
            for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
        for (std::ptrdiff_t qp = p0; qp < p1; ++qp) {
            __m512bh g[R];
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) g[r] = (__m512bh)_mm512_load_si512(g_at[r] + qp * 32);
#pragma GCC unroll 32
            for (int p = 0; p < P; ++p) {
                std::uint32_t pair;
                std::memcpy(&pair, x_at[p] + 2 * qp, sizeof pair);
                const __m512bh x = (__m512bh)_mm512_set1_epi32(int(pair));
#pragma GCC unroll 4
                for (int r = 0; r < R; ++r) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], g[r], x);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
            for (int p = 0; p < P; ++p) total[r][p] = _mm512_add_ps(total[r][p], acc[r][p]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
        for (int p = 0; p < P; ++p)
            if (dw_at[r * P + p]) _mm512_store_ps(dw_at[r * P + p], total[r][p]);
}

// One chunk of 32 voxels at v into acc (lanes past the mask m read as zeros).
template <int R, int P>
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline void wgrad_lanes_chunk(__m512 (&acc)[R][P], const std::uint16_t* const* x_at,
                                                                                                   const std::uint16_t* const* g_at, std::ptrdiff_t v,
                                                                                                   __mmask32 m) {
    __m512bh g[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) g[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, g_at[r] + v);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
        const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(m, x_at[p] + v);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], g[r], x);
    }
}
// The weight gradient with voxels in the lanes: dw[o][k] sums g[o][q] * x_k[q] over the run,
// lane i of an instruction taking voxels 2i and 2i + 1 of a chunk of 32, both operands loaded
// straight from the plain bf16 paddings (no blocked copy of the output gradient). R output
// channels x P columns (input channel x tap): R + P loads per R x P multiply-adds, where the
// blocked kernel above loads one broadcast per multiply-add when cout is 16. Voxels [begin, end)
// of the run (begin a multiple of wgrad_lane_pass, end a pass later or the run's end): each lane
// sums the pass and adds it to its lane of the running totals in totals_at (16 floats an output,
// overwritten at the first pass), so the sums do not depend on which thread walks which pass;
// the caller adds the lanes when the run is done (sum_lanes). With the lanes added every pass of
// 4,096 voxels the 3D 128^3 16 -> 16 weight gradient took 90.0 ms, now 78.4 (Zen 5, 2 threads,
// bench/ab_kernels.sh dee81fe). Null totals_at: a column past the matrix, computed and dropped.
inline constexpr std::ptrdiff_t wgrad_lane_pass = 16384;  // voxels
template <int R, int P>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void wgrad_lanes_bf16(const std::uint16_t* const* x_at, const std::uint16_t* const* g_at,
                                                                                     std::ptrdiff_t begin, std::ptrdiff_t end,
                                                                                     float* const* totals_at) {
    __m512 acc[R][P];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
    // The rows of 8 chunks ahead: a thread's items share these rows from L2, where the hardware
    // prefetchers (10 streams an item, the item changing each pass) fall behind (about 5 % on
    // the 3D 128^3 32 -> 16 convolution, Zen 5).
    constexpr std::ptrdiff_t ahead = 256;
    std::ptrdiff_t v = begin;
    for (; v + 32 <= end; v += 32) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(g_at[r] + v + ahead), _MM_HINT_T0);
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) _mm_prefetch(reinterpret_cast<const char*>(x_at[p] + v + ahead), _MM_HINT_T0);
        wgrad_lanes_chunk<R, P>(acc, x_at, g_at, v, ~__mmask32(0));
    }
    if (v < end) wgrad_lanes_chunk<R, P>(acc, x_at, g_at, v, __mmask32((1u << (end - v)) - 1u));
    const bool first = begin == 0;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p)
            if (float* to = totals_at[r * P + p]) _mm512_store_ps(to, first ? acc[r][p] : _mm512_add_ps(_mm512_load_ps(to), acc[r][p]));
}

// A 16 x 16 block of 32-bit words transposed in registers: rows[i][j] <- rows[j][i]. Stage S
// swaps element (i, j | S) with (i | S, j) for i, j without bit S: a two-source permute of rows
// i and i | S each (vpermt2d). GCC's vector shuffles rather than unpack intrinsics, whose
// _mm512_undefined operand GCC 12 reports as uninitialised.
template <int S>
inline void exchange_bit(U32x16& low, U32x16& high) {
    U32x16 take_low, take_high;  // indices 0..15 pick from low, 16..31 from high
    for (unsigned j = 0; j < 16; ++j) {
        take_low[j] = (j & S) == 0 ? j : 16 + j - S;
        take_high[j] = (j & S) == 0 ? j + S : 16 + j;
    }
    const U32x16 l = __builtin_shuffle(low, high, take_low), h = __builtin_shuffle(low, high, take_high);
    low = l;
    high = h;
}
template <int S>
inline void exchange_stage(U32x16 rows[16]) {
    for (int i = 0; i < 16; ++i)
        if ((i & S) == 0) exchange_bit<S>(rows[i], rows[i | S]);
}
inline void transpose_16x16(U32x16 rows[16]) {
    exchange_stage<8>(rows);
    exchange_stage<4>(rows);
    exchange_stage<2>(rows);
    exchange_stage<1>(rows);
}

// wgrad_bf16's blocking of the output gradient: block b of 16 channels as, for each voxel pair p
// of the run, the 16 channels' pairs (2p, 2p + 1) as 32-bit words (the first voxel in the low
// half; an odd run's last voxel paired with zero; zeros past cout) at out[p * 16 + j]. g points
// at the run's first voxel of channel 0, a channel `stride` values after the previous one.
// Sixteen pairs of a whole block at a time through transpose_16x16; the rest word by word.
inline void block_gradient_pairs(const std::uint16_t* g, std::ptrdiff_t stride, std::ptrdiff_t run_length, int cout, int b,
                                 std::uint32_t* out) {
    constexpr int L = 16;
    const std::ptrdiff_t pairs = ceil_div(run_length, std::ptrdiff_t(2)), whole = run_length / 2;
    const std::uint16_t* in[L];
    for (int j = 0; j < L; ++j) in[j] = b * L + j < cout ? g + std::ptrdiff_t(b * L + j) * stride : nullptr;
    std::ptrdiff_t p = 0;
    if (b * L + L <= cout) {
        for (; p + L <= whole; p += L) {
            U32x16 rows[L];
            for (int j = 0; j < L; ++j) std::memcpy(&rows[j], in[j] + 2 * p, sizeof rows[j]);
            transpose_16x16(rows);
            for (int i = 0; i < L; ++i) std::memcpy(out + (p + i) * L, &rows[i], sizeof rows[i]);
        }
    }
    for (; p < pairs; ++p) {
        std::uint32_t* word = out + p * L;
        for (int j = 0; j < L; ++j) {
            std::uint32_t w = 0;
            if (in[j] && p < whole) std::memcpy(&w, in[j] + 2 * p, sizeof w);
            else if (in[j]) w = in[j][2 * p];  // the run's odd last voxel, paired with zero
            word[j] = w;
        }
    }
}

// dweight[o][k] += blocked[k * 16 + o % 16] for the channels o of block b: wgrad_bf16's sums,
// laid out [k][16 channels], back to [cout][k] (k = input channel x tap), each value added once.
inline void add_blocked_weight_gradient(const float* blocked, int k_count, int cout, int b, float* dweight) {
    constexpr int L = 16;
    const int channels = std::min(L, cout - b * L);
    int k = 0;
    if (channels == L) {
        using F32x16 = float __attribute__((vector_size(64)));
        for (; k + L <= k_count; k += L) {
            U32x16 rows[L];
            for (int i = 0; i < L; ++i) std::memcpy(&rows[i], blocked + std::ptrdiff_t(k + i) * L, sizeof rows[i]);
            transpose_16x16(rows);
            for (int j = 0; j < L; ++j) {
                float* to = dweight + std::ptrdiff_t(b * L + j) * k_count + k;
                F32x16 sum;
                std::memcpy(&sum, to, sizeof sum);
                sum += F32x16(rows[j]);  // the bits, reinterpreted (GCC vector casts do not convert)
                std::memcpy(to, &sum, sizeof sum);
            }
        }
    }
    for (int j = 0; j < channels; ++j) {
        float* to = dweight + std::ptrdiff_t(b * L + j) * k_count;
        for (int kk = k; kk < k_count; ++kk) to[kk] += blocked[std::ptrdiff_t(kk) * L + j];
    }
}
#endif

#if LIGHTUNET_AMX_COMPILED
// The AMX weight gradient of one block of 16 output channels, one block of `channels` input
// channels and taps [t0, t0 + taps_here) (at most 6): C[ci][oc] of a tap sums, over voxel pairs,
// x rows (the plain padding at the tap's offset: a tile row is 32 voxels of one input channel)
// times the output gradient's blocked pairs ([voxel pair][16 outputs] words, block_gradient_pairs).
// Short sums of 256 pairs, as wgrad_tile_bf16, are added into dw ([k][16] for the block; row
// ci * taps + t). The last pairs (fewer than 16) take a tile shape of their own.
// Tile numbers are part of the instructions (the intrinsics paste them): one line per tile.
__attribute__((target("amx-tile,amx-bf16"))) inline void wgrad_amx_step(const std::uint16_t* const* x_at, long x_row_bytes,
                                                                       std::ptrdiff_t voxel, int taps_here) {
#define LIGHTUNET_AMX_WGRAD_STEP(j)                                  \
    if (j < taps_here) {                                             \
        _tile_loadd(6, x_at[j] + voxel, x_row_bytes);                \
        _tile_dpbf16ps(j, 6, 7);                                     \
    }
    LIGHTUNET_AMX_WGRAD_STEP(0)
    LIGHTUNET_AMX_WGRAD_STEP(1)
    LIGHTUNET_AMX_WGRAD_STEP(2)
    LIGHTUNET_AMX_WGRAD_STEP(3)
    LIGHTUNET_AMX_WGRAD_STEP(4)
    LIGHTUNET_AMX_WGRAD_STEP(5)
#undef LIGHTUNET_AMX_WGRAD_STEP
}
__attribute__((target("amx-tile,avx512f"))) inline void wgrad_amx_flush(float* const* dw_at, std::ptrdiff_t dw_row, int channels,
                                                                       int taps_here) {
    alignas(64) float sums[6][16][16];
#define LIGHTUNET_AMX_WGRAD_STORE(j)   \
    if (j < taps_here) {               \
        _tile_stored(j, sums[j], 64);  \
        _tile_zero(j);                 \
    }
    LIGHTUNET_AMX_WGRAD_STORE(0)
    LIGHTUNET_AMX_WGRAD_STORE(1)
    LIGHTUNET_AMX_WGRAD_STORE(2)
    LIGHTUNET_AMX_WGRAD_STORE(3)
    LIGHTUNET_AMX_WGRAD_STORE(4)
    LIGHTUNET_AMX_WGRAD_STORE(5)
#undef LIGHTUNET_AMX_WGRAD_STORE
    asm volatile("" ::: "memory");  // the tiles wrote sums
    for (int j = 0; j < taps_here; ++j)
        for (int r = 0; r < channels; ++r) {
            float* to = dw_at[j] + r * dw_row;
            _mm512_storeu_ps(to, _mm512_add_ps(_mm512_loadu_ps(to), _mm512_load_ps(sums[j][r])));
        }
}
__attribute__((target("amx-tile,amx-bf16,avx512f"))) inline void wgrad_block_amx(const std::uint16_t* const* x_at, long x_row_bytes,
                                                                                const std::uint32_t* g_pairs, std::ptrdiff_t pairs,
                                                                                float* const* dw_at, std::ptrdiff_t dw_row, int channels,
                                                                                int taps_here) {
    constexpr std::ptrdiff_t short_sum = 256;  // voxel pairs
    const std::ptrdiff_t whole = pairs / 16 * 16;
    const AmxTileConfig full = AmxTileConfig::wgrad(channels, 16);
    amx_load_config(full);  // zeroes the accumulators
    asm volatile("" ::: "memory");
    for (std::ptrdiff_t p0 = 0; p0 < whole; p0 += short_sum) {
        for (std::ptrdiff_t p = p0; p < std::min(whole, p0 + short_sum); p += 16) {
            _tile_loadd(7, g_pairs + p * 16, 64);
            wgrad_amx_step(x_at, x_row_bytes, 2 * p, taps_here);
        }
        wgrad_amx_flush(dw_at, dw_row, channels, taps_here);
    }
    if (const int rest = int(pairs - whole); rest > 0) {
        const AmxTileConfig last = AmxTileConfig::wgrad(channels, rest);
        amx_load_config(last);
        _tile_loadd(7, g_pairs + whole * 16, 64);
        wgrad_amx_step(x_at, x_row_bytes, 2 * whole, taps_here);
        wgrad_amx_flush(dw_at, dw_row, channels, taps_here);
    }
    amx_release();
}
#endif

// dweight[oc][ci * taps + t] += sum over the slab's run of g[oc][q] * x[ci][q + offset(t)], from
// the plain bf16 paddings x16 (halo planes of data) and g16 (zeros outside the slab's interior).
// `amx`: on tiles (wgrad_block_amx), the same blocked output gradient and sums.
inline void wgrad_bf16(const PaddedLayout& l, int cin, int cout, const std::uint16_t* x16, const std::uint16_t* g16, float* dweight,
                       float* scratch, bool amx = amx_runs()) {
#if LIGHTUNET_BF16_DOT_COMPILED
    constexpr int L = 16;
    const int k_count = cin * l.taps;
    float* const aligned_scratch = scratch + (16 - (reinterpret_cast<std::uintptr_t>(scratch) / 4) % 16) % 16;
    // Each thread takes a range of items and walks the run (`length` voxels or pairs) in passes,
    // all its items per pass: a pass's output gradient comes from memory once per thread and from
    // L2 for the thread's other items, instead of once per item (a 128^3 volume's 16-channel
    // block is 66 MiB, read by 18 items).
    auto walk = [&](std::ptrdiff_t items, std::ptrdiff_t length, std::ptrdiff_t pass, auto&& item_run) {
        parallel_ranges(items, [&](std::ptrdiff_t begin, std::ptrdiff_t end) {
            for (std::ptrdiff_t p0 = 0; p0 < length; p0 += pass)
                for (std::ptrdiff_t item = begin; item < end; ++item) item_run(item, p0, std::min(length, p0 + pass));
        });
    };
    if (!amx && wgrad_in_lanes(cout)) {
        // Items: R x P tiles, those of one group of columns next to each other (they share the
        // input's rows).
        float* const totals = aligned_scratch;  // [cout][k_count][16 lanes]
        constexpr int R = 4, P = 6;
        const int row_items = int(ceil_div(cout, R)), column_items = int(ceil_div(k_count, P));
        walk(std::ptrdiff_t(row_items) * column_items, l.run_length, wgrad_lane_pass, [&](std::ptrdiff_t item, std::ptrdiff_t v0, std::ptrdiff_t v1) {
            const int o0 = int(item % row_items) * R, k0 = int(item / row_items) * P;
            const std::uint16_t* x_at[P];
            const std::uint16_t* g_at[R];
            float* totals_at[R * P];
            for (int p = 0; p < P; ++p) {
                const int k = std::min(k0 + p, k_count - 1);
                x_at[p] = x16 + (k / l.taps) * l.stride + l.tap_offset[k % l.taps] + l.run_begin;
            }
            for (int r = 0; r < R; ++r) {
                g_at[r] = g16 + std::ptrdiff_t(std::min(o0 + r, cout - 1)) * l.stride + l.run_begin;
                for (int p = 0; p < P; ++p)
                    totals_at[r * P + p] = o0 + r < cout && k0 + p < k_count ? totals + (std::ptrdiff_t(o0 + r) * k_count + k0 + p) * L : nullptr;
            }
            wgrad_lanes_bf16<R, P>(x_at, g_at, v0, v1, totals_at);
        });
        parallel_for(cout, [&](std::ptrdiff_t o) {
            for (int k = 0; k < k_count; ++k) dweight[o * k_count + k] += sum_lanes(totals + (o * k_count + k) * L);
        });
        return;
    }
    const int blocks = int(ceil_div(cout, L));
    const std::ptrdiff_t pairs = ceil_div(l.run_length, std::ptrdiff_t(2));
    std::uint16_t* g_blk = reinterpret_cast<std::uint16_t*>(aligned_scratch);
    float* dw_blk = reinterpret_cast<float*>(g_blk + std::ptrdiff_t(blocks) * pairs * 32);
    parallel_for(blocks, [&](std::ptrdiff_t b) {
        block_gradient_pairs(g16 + l.run_begin, l.stride, l.run_length, cout, int(b), reinterpret_cast<std::uint32_t*>(g_blk) + b * pairs * L);
        std::fill(dw_blk + b * k_count * L, dw_blk + (b + 1) * k_count * L, 0.0f);
    });
#if LIGHTUNET_AMX_COMPILED
    if (amx) {
        // Work items: a block of outputs x a block of 16 inputs x a group of taps, the groups as
        // large as leave 4 items per thread (the grouping does not change any sum).
        const int channel_blocks = int(ceil_div(cin, L));
        int group = 6;
        while (group > 1 && std::ptrdiff_t(blocks) * channel_blocks * ceil_div(l.taps, group) < 4 * thread_count()) group /= 2;
        const int groups = int(ceil_div(l.taps, group));
        parallel_for(std::ptrdiff_t(blocks) * channel_blocks * groups, [&](std::ptrdiff_t item) {
            const int b = int(item / (channel_blocks * groups)), cb = int(item / groups % channel_blocks), t0 = int(item % groups) * group;
            const int channels = std::min(L, cin - cb * L), taps_here = std::min(group, l.taps - t0);
            const std::uint16_t* x_at[6];
            float* dw_at[6];
            for (int j = 0; j < taps_here; ++j) {
                x_at[j] = x16 + std::ptrdiff_t(cb * L) * l.stride + l.run_begin + l.tap_offset[t0 + j];
                dw_at[j] = dw_blk + (std::ptrdiff_t(b) * k_count + std::ptrdiff_t(cb * L) * l.taps + t0 + j) * L;
            }
            wgrad_block_amx(x_at, long(l.stride) * 2, reinterpret_cast<const std::uint32_t*>(g_blk) + b * pairs * L, pairs, dw_at,
                            std::ptrdiff_t(l.taps) * L, channels, taps_here);
        });
        parallel_for(blocks, [&](std::ptrdiff_t b) { add_blocked_weight_gradient(dw_blk + b * k_count * L, k_count, cout, int(b), dweight); });
        return;
    }
#endif
    constexpr int R = 2, P = 12;
    auto run = [&](auto rows, int b0, int k0, std::ptrdiff_t pair_begin, std::ptrdiff_t pair_end) {
        constexpr int RR = decltype(rows)::value, PP = R * P / RR;
        const std::uint16_t* x_at[PP];
        float* dw_at[RR * PP];
        const std::uint16_t* g_at[RR];
        for (int p = 0; p < PP; ++p) {
            const int k = std::min(k0 + p, k_count - 1);
            x_at[p] = x16 + (k / l.taps) * l.stride + l.tap_offset[k % l.taps] + l.run_begin;
        }
        for (int r = 0; r < RR; ++r) {
            g_at[r] = g_blk + std::ptrdiff_t(std::min(b0 + r, blocks - 1)) * pairs * 32;
            for (int p = 0; p < PP; ++p)
                dw_at[r * PP + p] = b0 + r < blocks && k0 + p < k_count ? dw_blk + (std::ptrdiff_t(b0 + r) * k_count + k0 + p) * L : nullptr;
        }
        wgrad_tile_bf16<RR, PP>(x_at, g_at, pair_begin, pair_end, dw_at);
    };
    constexpr std::ptrdiff_t pass = 8 * wgrad_short_sum;  // pairs
    if (blocks >= R) {
        const int row_items = int(ceil_div(blocks, R)), pair_items = int(ceil_div(k_count, P));
        walk(std::ptrdiff_t(row_items) * pair_items, pairs, pass, [&](std::ptrdiff_t item, std::ptrdiff_t p0, std::ptrdiff_t p1) {
            run(std::integral_constant<int, R>{}, int(item / pair_items) * R, int(item % pair_items) * P, p0, p1);
        });
    } else {  // one block of output channels: the registers go to more pairs
        walk(ceil_div(k_count, R * P), pairs, pass, [&](std::ptrdiff_t item, std::ptrdiff_t p0, std::ptrdiff_t p1) {
            run(std::integral_constant<int, 1>{}, 0, int(item) * R * P, p0, p1);
        });
    }
    parallel_for(blocks, [&](std::ptrdiff_t b) { add_blocked_weight_gradient(dw_blk + b * k_count * L, k_count, cout, int(b), dweight); });
#else
    (void)l, (void)cin, (void)cout, (void)x16, (void)g16, (void)dweight, (void)scratch, (void)amx;
    throw std::logic_error("wgrad_bf16: not compiled for this target");
#endif
}

#if LIGHTUNET_BF16_DOT_COMPILED
// The bf16 Fprop's work: items of 8 chunks of V x 16 voxels by a block of R output channels.
// chunk_into(w, q, acc) sums the chunk at padded voxel q into acc ([R][V][16] floats) from the
// block's packed weights w; the direct kernel's output path writes them. `in_item(f)` runs an
// item's chunks (f), on the thread that runs the item.
template <int R, int V, class OutputOf, class ChunkInto, class InItem>
void fprop_bf16_items(const PaddedLayout& l, int pairs, const std::uint32_t* packed, int oc_begin, int oc_end, OutputOf& output_of,
                      ChunkInto chunk_into, InItem in_item) {
    constexpr int L = lanes<float>;
    static_assert(L == 16, "the bf16 kernels' vectors are AVX-512's");
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(V) * L;
    const std::ptrdiff_t chunks = ceil_div(l.run_length, chunk);
    constexpr std::ptrdiff_t tile_chunks = 8;
    const std::ptrdiff_t tiles = ceil_div(chunks, tile_chunks);
    const int blocks = int(ceil_div(oc_end - oc_begin, R));
    parallel_for(tiles * blocks, [&](std::ptrdiff_t item) {
        const std::ptrdiff_t tile = item / blocks;
        const int oc0 = oc_begin + int(item % blocks) * R;
        const int rows = std::min(R, oc_end - oc0);
        const std::uint32_t* w = packed + std::ptrdiff_t(oc0 / R) * pairs * l.taps * R;
        const std::ptrdiff_t c_end = std::min(chunks, (tile + 1) * tile_chunks);
        CompactRows<float, R> compact{};
        for (int r = 0; r < rows; ++r) compact.set(r, output_of(oc0 + r));
        in_item([&] {
            // Inside the lambda: GCC 12 stops with an internal compiler error when the lambda
            // captures this array (its size depends on R and V) by reference.
            alignas(64) float acc[R * V * L];
            for (std::ptrdiff_t c = tile * tile_chunks; c < c_end; ++c) {
                const std::ptrdiff_t q = l.run_begin + c * chunk;
                chunk_into(w, q, acc);
                store_compact_chunk<float, R>(acc, chunk, chunk, rows, compact, l, q);
            }
        });
    });
}
#endif

// fprop_padded on bf16 channel pairs (pad_source_pairs) and pack_weights_bf16's weights. Every
// input pair goes into a chunk's accumulators at once, so the outputs are always written
// straight through output_of. `amx`: the tile kernel, on weights packed for it (oc_begin a
// multiple of 16).
template <class OutputOf>
void fprop_padded_bf16(const PaddedLayout& l, int cin, const std::uint16_t* x2, const std::uint32_t* packed, int oc_begin,
                       int oc_end, OutputOf&& output_of, bool amx = amx_runs()) {
#if LIGHTUNET_BF16_DOT_COMPILED
    const int pairs = int(channel_pairs(cin));
    const std::ptrdiff_t pair_stride = 2 * l.stride;
#if LIGHTUNET_AMX_COMPILED
    if (amx) {
        if (oc_begin % amx_rows != 0) throw std::logic_error("fprop_padded_bf16: AMX output blocks start at multiples of 16");
        const int k = amx_pair_block(pairs);
        const AmxTileConfig config = AmxTileConfig::fprop(k);
        fprop_bf16_items<amx_rows, 3>(
            l, pairs, packed, oc_begin, oc_end, output_of,
            [&](const std::uint32_t* w, std::ptrdiff_t q, float* acc) {
                fprop_chunk_amx(x2 + 2 * q, pair_stride, l.tap_offset.data(), l.taps, pairs / k, k, w, acc);
            },
            [&](auto&& chunks) {
                amx_load_config(config);  // the tile state is per thread
                chunks();
                amx_release();
            });
        return;
    }
#endif
    constexpr int R = fprop_rows, V = fprop_vectors;
    fprop_bf16_items<R, V>(
        l, pairs, packed, oc_begin, oc_end, output_of,
        [&](const std::uint32_t* w, std::ptrdiff_t q, float* acc) {
            fprop_chunk_bf16<R, V>(x2 + 2 * q, pair_stride, l.tap_offset.data(), l.taps, l.row_taps(), 0, pairs, w, acc);
        },
        [](auto&& chunks) { chunks(); });
#else
    (void)l, (void)cin, (void)x2, (void)packed, (void)oc_begin, (void)oc_end, (void)output_of, (void)amx;
    throw std::logic_error("fprop_padded_bf16: not compiled for this target");
#endif
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

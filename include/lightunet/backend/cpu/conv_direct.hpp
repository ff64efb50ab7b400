#pragma once
// Direct stride-1 'same' convolution on the CPU: the padded layout, the micro-kernels and the
// per-image drivers of forward (Fprop), data gradient (Dgrad) and weight gradient (Wgrad), for
// 2D and 3D through one code path. conv.hpp runs whole operations over a batch.
//
// Each input channel is copied into a zero-bordered plane and flattened. In that layout an
// output voxel q reads input q + offset(tap) for a fixed list of offsets, so a convolution
// is a sum of shifted, contiguous vector runs: the kernels stream long runs of lanes, never
// test borders, and the same micro-kernel serves 3x3, 3x3x3 and 1x1. Outputs are computed on
// the padded grid too (the few border positions are discarded when copied out).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <span>

#include "../../detail/static_for.hpp"
#include "../conv_problem.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

using detail::ceil_div;
using detail::round_up;
using detail::static_for;

// Register tiles (geometry.hpp says what they are).
inline constexpr int fprop_rows = geometry.fprop_rows();
inline constexpr int fprop_vectors = VectorGeometry::fprop_vectors;
inline constexpr int wgrad_rows = geometry.wgrad_rows();
inline constexpr int wgrad_pairs = geometry.wgrad_pairs();
inline constexpr std::ptrdiff_t max_chunk = 256;  // >= fprop_vectors * lanes for any T

struct PaddedLayout {
    Extent extent;
    int pd = 0, ph = 0, pw = 0;
    std::ptrdiff_t dp = 0, hp = 0, wp = 0;
    std::ptrdiff_t plane = 0;       // padded voxels per channel
    std::ptrdiff_t stride = 0;      // distance between channels: plane + read slack
    std::ptrdiff_t run_begin = 0;   // first interior voxel
    std::ptrdiff_t run_length = 0;  // through the last interior voxel
    std::array<std::ptrdiff_t, 27> tap_offset{};
    int taps = 0;

    // Taps along a row (the kernel's width): the kernels prefetch once per row of taps.
    constexpr int row_taps() const { return 2 * pw + 1; }
};

constexpr PaddedLayout padded_layout(const ConvProblem& p) {
    PaddedLayout l;
    l.extent = p.extent;
    l.pd = p.kd / 2;
    l.ph = p.kh / 2;
    l.pw = p.kw / 2;
    l.dp = p.extent.d + 2 * l.pd;
    l.hp = p.extent.h + 2 * l.ph;
    l.wp = p.extent.w + 2 * l.pw;
    l.plane = l.dp * l.hp * l.wp;
    const std::ptrdiff_t max_offset = l.pd * l.hp * l.wp + l.ph * l.wp + l.pw;
    l.run_begin = max_offset;
    const std::ptrdiff_t last =
        (l.pd + p.extent.d - 1) * l.hp * l.wp + (l.ph + p.extent.h - 1) * l.wp + (l.pw + p.extent.w - 1);
    l.run_length = last - l.run_begin + 1;
    l.stride = round_up(l.plane + max_offset + max_chunk, 16);
    l.taps = p.taps();
    int t = 0;
    for (int z = 0; z < p.kd; ++z)
        for (int y = 0; y < p.kh; ++y)
            for (int x = 0; x < p.kw; ++x)
                l.tap_offset[t++] = (z - l.pd) * l.hp * l.wp + (y - l.ph) * l.wp + (x - l.pw);
    return l;
}

// ---------------------------------------------------------------------------------------------
// Layout conversions

// Which planes of a volume a padded layout holds. 3D convolutions run over slabs of output depth
// planes (conv.hpp), so the workspace holds one slab's padded copy, not the whole volume's: the
// slab's first interior plane is the volume's plane `first`; volume planes outside
// [begin, end) are copied as zeros (the volume's border, or all but the slab's own planes where
// a kernel must not see its neighbours, as the weight gradient's output gradient).
struct VolumeSlab {
    int first = 0, begin = 0, end = 0;
    static constexpr VolumeSlab whole(int depth) { return {0, 0, depth}; }
    static constexpr VolumeSlab with_halo(int first, int depth) { return {first, 0, depth}; }
    static constexpr VolumeSlab alone(int first, int slab_depth) { return {first, first, first + slab_depth}; }
};

// Calls row(padded_row, source_at) for every row of a padded slab (padded_row counts rows of
// l.wp voxels; source_at is the offset of the row's first voxel in a volume channel, or -1 for a
// row of zeros). Every padding of a slab, fp32 or bf16, walks it.
template <class Row>
void for_each_padded_row(const PaddedLayout& l, const VolumeSlab& slab, Row&& row) {
    const std::ptrdiff_t h = l.extent.h, w = l.extent.w;
    for (std::ptrdiff_t z = 0; z < l.dp; ++z)
        for (std::ptrdiff_t y = 0; y < l.hp; ++y) {
            const std::ptrdiff_t plane = slab.first + z - l.pd;
            const bool inner = plane >= slab.begin && plane < slab.end && y >= l.ph && y < l.ph + h;
            row(z * l.hp + y, inner ? (plane * h + (y - l.ph)) * w : std::ptrdiff_t(-1));
        }
}

// `src`: a channel of the volume (l.extent's rows and columns; depth planes per `slab`).
template <class T>
void pad_channel(const PaddedLayout& l, const T* src, T* dst, const VolumeSlab& slab) {
    const std::ptrdiff_t w = l.extent.w;
    for_each_padded_row(l, slab, [&](std::ptrdiff_t r, std::ptrdiff_t at) {
        T* row = dst + r * l.wp;
        if (at < 0) {
            std::fill(row, row + l.wp, T(0));
            return;
        }
        std::fill(row, row + l.pw, T(0));
        prefetch_row_ahead(src + at, w * std::ptrdiff_t(sizeof(T)));
        std::memcpy(row + l.pw, src + at, sizeof(T) * w);
        std::fill(row + l.pw + w, row + l.wp, T(0));
    });
    std::fill(dst + l.plane, dst + l.stride, T(0));
}

// Copies the interior of a padded channel out, adding `bias`, accumulating, or overwriting
// after the activation of negative slope `slope` (1: none).
template <class T>
void unpad_channel(const PaddedLayout& l, const T* src, T* dst, T bias, bool accumulate, T slope = T(1)) {
    const auto [d, h, w] = l.extent;
    for (int z = 0; z < d; ++z)
        for (int y = 0; y < h; ++y) {
            const T* in = src + ((z + l.pd) * l.hp + (y + l.ph)) * l.wp + l.pw;
            T* out = dst + (std::ptrdiff_t(z) * h + y) * w;
            if (accumulate)
                for (int x = 0; x < w; ++x) out[x] += in[x] + bias;
            else
                for (int x = 0; x < w; ++x) out[x] = activate(in[x] + bias, slope);
        }
}

// Channel c of image `image` among sources that split the channels between them (null past
// them); `channel_size`: voxels of one channel of the sources' volume.
template <class T>
const T* source_channel(std::span<const ChannelSource<T>> sources, int image, std::ptrdiff_t channel_size, std::ptrdiff_t c) {
    for (const auto& s : sources) {
        if (c < s.channels) return s.data + image * s.image_stride + c * channel_size;
        c -= s.channels;
    }
    return nullptr;
}
template <class T>
int channel_count(std::span<const ChannelSource<T>> sources) {
    int channels = 0;
    for (const auto& s : sources) channels += s.channels;
    return channels;
}

template <class T>
void pad_sources(const PaddedLayout& l, std::span<const ChannelSource<T>> sources, int image, std::ptrdiff_t channel_size,
                 const VolumeSlab& slab, T* dst) {
    parallel_for(channel_count(sources), [&](std::ptrdiff_t c) {
        pad_channel(l, source_channel(sources, image, channel_size, c), dst + c * l.stride, slab);
    });
}

// Weights [cout][k] (k = cin * taps + tap) as blocks of R output channels: [block][k][R],
// zero rows past cout, so the micro-kernel reads R consecutive broadcasts per (k); each output
// channel's times output_scale[oc] if given (a folded batch norm).
template <class T>
void pack_fprop_weights(const T* weight, int cout, int k_count, T* packed, const T* output_scale = nullptr) {
    constexpr int R = fprop_rows;
    const int blocks = int(ceil_div(cout, R));
    parallel_for(blocks, [&](std::ptrdiff_t b) {
        T* dst = packed + b * std::ptrdiff_t(k_count) * R;
        for (int k = 0; k < k_count; ++k)
            for (int r = 0; r < R; ++r) {
                const std::ptrdiff_t oc = b * R + r;
                const T scale = oc < cout && output_scale ? output_scale[oc] : T(1);  // times 1 is exact
                dst[std::ptrdiff_t(k) * R + r] = oc < cout ? weight[oc * k_count + k] * scale : T(0);
            }
    });
}

// The data gradient is a convolution of the output gradient with the kernel mirrored in space
// and input/output channels exchanged: W'[ci][oc][t] = W[oc][ci][taps - 1 - t].
template <class T>
void pack_dgrad_weights(const T* weight, int cout, int cin, int taps, T* packed) {
    constexpr int R = fprop_rows;
    const int blocks = int(ceil_div(cin, R));
    const int k_count = cout * taps;
    parallel_for(blocks, [&](std::ptrdiff_t b) {
        T* dst = packed + b * std::ptrdiff_t(k_count) * R;
        for (int oc = 0; oc < cout; ++oc)
            for (int t = 0; t < taps; ++t)
                for (int r = 0; r < R; ++r) {
                    const std::ptrdiff_t ci = b * R + r;
                    dst[(std::ptrdiff_t(oc) * taps + t) * R + r] =
                        ci < cin ? weight[(std::ptrdiff_t(oc) * cin + ci) * taps + (taps - 1 - t)] : T(0);
                }
    });
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels

// Where an output channel goes: its unpadded plane ([d][h][w]; null: not written), the bias
// added, whether it adds to what is there, and the activation applied after the bias (by its
// negative slope; 1, the identity, leaves every value's bits as they are) where it overwrites:
// inference runs an eval batch norm folded into the weights and bias, its activation here
// (UNet's folded convolutions). One store path for all: the activation's max costs nothing
// measurable beside the store.
template <class T>
struct CompactChannel {
    T* base;
    T bias;
    bool accumulate;
    T slope = T(1);
};

// Where a block of R output channels goes when written straight to unpadded tensors.
template <class T, int R>
struct CompactRows {
    T* base[R];
    T bias[R];
    bool accumulate[R];
    T slope[R];  // the stores read it only where they overwrite
    void set(int r, const CompactChannel<T>& c) {
        base[r] = c.base;
        bias[r] = c.bias;
        accumulate[r] = c.accumulate;
        slope[r] = c.slope;
    }
};

// Adds bias (and the output already there, when accumulating; else applies the row's
// activation) to n values of each of `rows` rows of src (row r at src + r * src_stride) and
// writes them to the outputs from voxel `at` on: one run of voxels along a row of the unpadded
// planes.
template <class T, int R>
inline void store_compact_run(const T* src, std::ptrdiff_t src_stride, std::ptrdiff_t n, int rows, const CompactRows<T, R>& c,
                              std::ptrdiff_t at) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    const std::ptrdiff_t whole = n / L * L;
    for (int r = 0; r < rows; ++r) {
        if (!c.base[r]) continue;
        T* out = c.base[r] + at;
        const T* s = src + r * src_stride;
        const T bias = c.bias[r], slope = c.slope[r];
        const B b(bias);
        if (c.accumulate[r]) {
            for (std::ptrdiff_t i = 0; i < whole; i += L) (B::load_unaligned(out + i) + (B::load_unaligned(s + i) + b)).store_unaligned(out + i);
            for (std::ptrdiff_t i = whole; i < n; ++i) out[i] = out[i] + (s[i] + bias);
        } else {
            const B vslope(slope);
            for (std::ptrdiff_t i = 0; i < whole; i += L) activate(B::load_unaligned(s + i) + b, vslope).store_unaligned(out + i);
            for (std::ptrdiff_t i = whole; i < n; ++i) out[i] = activate(s[i] + bias, slope);
        }
    }
}

// Writes the interior voxels among n padded positions from q on (rows of src as in
// store_compact_run): the positions are cut into runs along the padded rows and each run's
// interior part is written as one run. A chunk that crosses a border (most do where a padded
// row is not a multiple of the chunk) costs a few runs, not a voxel-by-voxel copy.
template <class T, int R>
inline void store_compact_chunk(const T* src, std::ptrdiff_t src_stride, std::ptrdiff_t n, int rows, const CompactRows<T, R>& c,
                                const PaddedLayout& l, std::ptrdiff_t q) {
    const std::ptrdiff_t d = l.extent.d, h = l.extent.h, wd = l.extent.w;
    const std::ptrdiff_t slab = l.hp * l.wp;
    std::ptrdiff_t z = q / slab, rem = q - z * slab, yy = rem / l.wp, xx = rem - yy * l.wp;
    for (std::ptrdiff_t i = 0; i < n;) {
        const std::ptrdiff_t run = std::min(n - i, l.wp - xx);  // to the end of this padded row
        if (z >= l.pd && z < l.pd + d && yy >= l.ph && yy < l.ph + h) {
            const std::ptrdiff_t x0 = std::max<std::ptrdiff_t>(xx, l.pw), x1 = std::min(xx + run, l.pw + wd);
            if (x0 < x1)
                store_compact_run<T, R>(src + i + (x0 - xx), src_stride, x1 - x0, rows, c,
                                        ((z - l.pd) * h + (yy - l.ph)) * wd + (x0 - l.pw));
        }
        i += run;
        xx += run;
        if (xx == l.wp) {
            xx = 0;
            if (++yy == l.hp) yy = 0, ++z;
        }
    }
}

// Writes a chunk's accumulators: padded rows (y, y_stride), or, with `compact`, the chunk's
// interior voxels straight into the unpadded planes, adding bias and accumulating as asked.
template <class T, int R, int V>
inline void store_fprop_chunk(const Batch<T> (&acc)[R][V], T* y, std::ptrdiff_t y_stride, int rows, const CompactRows<T, R>* compact,
                              const PaddedLayout* l, std::ptrdiff_t q) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    if (!compact) {
        static_for<R>([&](auto r) {
            if (r < rows) static_for<V>([&](auto v) { acc[r][v].store_unaligned(y + r * y_stride + v * L); });
        });
        return;
    }
    const auto [d, h, wd] = l->extent;
    const std::ptrdiff_t slab = l->hp * l->wp;
    std::ptrdiff_t z = q / slab, rem = q - z * slab, yy = rem / l->wp, xx = rem - yy * l->wp;
    const bool inner_row = z >= l->pd && z < l->pd + d && yy >= l->ph && yy < l->ph + h;
    if (inner_row && xx >= l->pw && xx + V * L <= l->pw + wd) {
        const std::ptrdiff_t at = ((z - l->pd) * h + (yy - l->ph)) * wd + (xx - l->pw);
        static_for<R>([&](auto r) {
            if (r >= rows || !compact->base[r]) return;
            const B b(compact->bias[r]), slope(compact->slope[r]);
            T* out = compact->base[r] + at;
            static_for<V>([&](auto v) {
                B val = acc[r][v] + b;
                if (compact->accumulate[r]) val += B::load_unaligned(out + v * L);
                else val = activate(val, slope);
                val.store_unaligned(out + v * L);
            });
        });
        return;
    }
    alignas(64) T tmp[R][V * L];
    static_for<R>([&](auto r) {
        if (r < rows) static_for<V>([&](auto v) { acc[r][v].store_aligned(&tmp[r][v * L]); });
    });
    store_compact_chunk<T, R>(&tmp[0][0], V * L, V * L, rows, *compact, *l, q);
}

// Output channel block x one chunk of the padded run. Writes either padded rows (y, y_stride),
// or, with `compact`, the chunk's interior voxels straight into the unpadded planes, adding
// bias and accumulating as asked.
template <class T, int R, int V>
inline void fprop_chunk(const T* x, std::ptrdiff_t x_stride, const std::ptrdiff_t* tap_offset, int taps, int ci_begin,
                        int ci_end, const T* w, T* y, std::ptrdiff_t y_stride, int rows, bool first, int row_taps,
                        const CompactRows<T, R>* compact = nullptr, const PaddedLayout* l = nullptr,
                        std::ptrdiff_t q = 0) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    B acc[R][V];
    static_for<R>([&](auto r) {
        static_for<V>([&](auto v) {
            acc[r][v] = (first || r >= rows) ? B(T(0)) : B::load_unaligned(y + r * y_stride + v * L);
        });
    });
    for (int ci = ci_begin; ci < ci_end; ++ci) {
        const T* xc = x + ci * x_stride;
        const T* wc = w + std::ptrdiff_t(ci) * taps * R;
        // The next chunk's input rows go towards L2 while this chunk computes, once per row of
        // taps. A countdown, not t % row_taps: the division cost as much as the tap's FMAs.
        for (int t = 0, row_left = 0; t < taps; ++t, --row_left) {
            const T* xp = xc + tap_offset[t];
            if (row_left == 0) {
                static_for<V + 1>([&](auto v) { __builtin_prefetch(xp + V * L + v * L, 0, 2); });
                row_left = row_taps;
            }
            B xv[V];
            static_for<V>([&](auto v) { xv[v] = B::load_unaligned(xp + v * L); });
            const T* wt = wc + t * R;
            static_for<R>([&](auto r) {
                const B wr(wt[r]);
                static_for<V>([&](auto v) { acc[r][v] = xsimd::fma(wr, xv[v], acc[r][v]); });
            });
        }
    }
    store_fprop_chunk<T, R, V>(acc, y, y_stride, rows, compact, l, q);
}

// sums[i] = sum of rows[i]'s lanes, for L rows, through xsimd's transposing reduction haddp.
// xsimd 8.1's AVX-512 float haddp returns the sums in a permuted lane order, so the order is
// probed once (it is a fixed shuffle network) and undone while storing.
// GCC 12 also warns, falsely, that the AVX-512 intrinsics behind haddp read an uninitialised
// value (_mm512_undefined in its own headers).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // a GCC-only warning, which clang would warn is unknown
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
template <class T>
inline const std::array<int, lanes<T>>& haddp_lane_order() {
    static const std::array<int, lanes<T>> order = [] {
        constexpr int L = lanes<T>;
        Batch<T> rows[L];
        alignas(64) T probe[L];
        for (int i = 0; i < L; ++i) {
            for (int j = 0; j < L; ++j) probe[j] = j == 0 ? T(i + 1) : T(0);
            rows[i] = Batch<T>::load_aligned(probe);
        }
        xsimd::haddp(rows).store_aligned(probe);
        std::array<int, L> o{};
        for (int j = 0; j < L; ++j) o[j] = int(probe[j]) - 1;
        return o;
    }();
    return order;
}

template <class T>
inline void reduce_lanes(const Batch<T>* rows, T* sums) {
    constexpr int L = lanes<T>;
    alignas(64) T out[L];
    xsimd::haddp(rows).store_aligned(out);
    const auto& order = haddp_lane_order<T>();
    for (int j = 0; j < L; ++j) sums[order[j]] = out[j];
}
#pragma GCC diagnostic pop

// Keeps a loaded vector in a register: without this GCC folds the load into each of the R FMAs
// that use it, tripling the loads of the weight-gradient loop.
template <class B>
inline B in_register(B v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    auto reg = static_cast<typename B::register_type>(v);
#ifdef __AVX512F__
    asm("" : "+v"(reg));  // any of the 32 vector registers
#else
    asm("" : "+x"(reg));
#endif
    return B(reg);
#else
    return v;
#endif
}

// Accumulates one tile of voxels into R x P vector accumulators kept in `partial` between tiles
// (so each tile adds lanes, and the horizontal sums happen once, after the last tile).
template <class T, int R, int P>
inline void wgrad_tile(const T* const* g_rows, const T* const* x_pairs, std::ptrdiff_t q_begin, std::ptrdiff_t q_end,
                       T* partial, bool first, T* sums) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    B acc[R][P];
    static_for<R>([&](auto r) {
        static_for<P>([&](auto p) { acc[r][p] = first ? B(T(0)) : B::load_aligned(partial + (r * P + p) * L); });
    });
    constexpr std::ptrdiff_t ahead = 8 * L;
    for (std::ptrdiff_t q = q_begin; q < q_end; q += L) {
        static_for<R>([&](auto r) { __builtin_prefetch(g_rows[r] + q + ahead, 0, 3); });
        static_for<P / 3>([&](auto p) { __builtin_prefetch(x_pairs[3 * p] + q + ahead, 0, 3); });
        B g[R];
        static_for<R>([&](auto r) { g[r] = B::load_unaligned(g_rows[r] + q); });
        static_for<P>([&](auto p) {
            const B xv = in_register(B::load_unaligned(x_pairs[p] + q));
            static_for<R>([&](auto r) { acc[r][p] = xsimd::fma(g[r], xv, acc[r][p]); });
        });
    }
    if (!sums) {
        static_for<R>([&](auto r) { static_for<P>([&](auto p) { acc[r][p].store_aligned(partial + (r * P + p) * L); }); });
        return;
    }
    // Last tile: horizontal sums, L accumulators at a time through a transposing reduction.
    constexpr int N = R * P, groups = (N + L - 1) / L;
    B flat[groups * L];
    static_for<R>([&](auto r) { static_for<P>([&](auto p) { flat[r * P + p] = acc[r][p]; }); });
    for (int i = N; i < groups * L; ++i) flat[i] = B(T(0));
    for (int g = 0; g < groups; ++g) reduce_lanes(flat + g * L, sums + g * L);
}

// dw_blk[block][k][lane] += sum over the padded run of g_blk[block][q][lane] * x_pad[k / taps][q +
// offset(k % taps)], for R blocks of L output channels from block b0 and P (input channel, tap)
// pairs from k0 (clamped to the counts): each input value is broadcast, each accumulator is a
// vector of weight gradients, summed per tile of voxels (short sums) and the tiles added up.
template <class T, int R, int P>
inline void wgrad_blocked_tile(const PaddedLayout& l, int blocks, int k_count, const T* x_pad, const T* g_blk, int b0, int k0,
                               T* dw_blk) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    constexpr std::ptrdiff_t tile = 512;
    const T* x_at[P];
    for (int p = 0; p < P; ++p) {
        const int k = std::min(k0 + p, k_count - 1);
        x_at[p] = x_pad + (k / l.taps) * l.stride + l.tap_offset[k % l.taps] + l.run_begin;
    }
    const T* g_at[R];
    for (int r = 0; r < R; ++r) g_at[r] = g_blk + std::ptrdiff_t(std::min(b0 + r, blocks - 1)) * l.run_length * L;
    B total[R][P];
    static_for<R>([&](auto r) { static_for<P>([&](auto p) { total[r][p] = B(T(0)); }); });
    for (std::ptrdiff_t q0 = 0; q0 < l.run_length; q0 += tile) {
        const std::ptrdiff_t q1 = std::min(l.run_length, q0 + tile);
        B acc[R][P];
        static_for<R>([&](auto r) { static_for<P>([&](auto p) { acc[r][p] = B(T(0)); }); });
        for (std::ptrdiff_t q = q0; q < q1; ++q) {
            B g[R];
            static_for<R>([&](auto r) { g[r] = B::load_aligned(g_at[r] + q * L); });
            static_for<P>([&](auto p) {
                const B x(x_at[p][q]);
                static_for<R>([&](auto r) { acc[r][p] = xsimd::fma(g[r], x, acc[r][p]); });
            });
        }
        static_for<R>([&](auto r) { static_for<P>([&](auto p) { total[r][p] += acc[r][p]; }); });
    }
    for (int r = 0; r < R && b0 + r < blocks; ++r)
        for (int p = 0; p < P && k0 + p < k_count; ++p) {
            T* at = dw_blk + (std::ptrdiff_t(b0 + r) * k_count + k0 + p) * L;
            (B::load_aligned(at) + total[r][p]).store_aligned(at);
        }
}

// ---------------------------------------------------------------------------------------------
// Drivers over one image

// Convolution of x_pad (cin channels) with the packed weights of output channels
// [oc_begin, oc_end); oc_begin is a multiple of fprop_rows. When every input channel fits one
// pass, writes the unpadded outputs directly through output_of(oc) -> CompactChannel and
// returns true; otherwise writes padded y_pad channels [0, oc_end - oc_begin), returns false,
// and the caller copies their interiors out.
template <class T, class OutputOf>
bool fprop_padded(const PaddedLayout& l, int cin, const T* x_pad, const T* packed_weight, int oc_begin, int oc_end,
                  T* y_pad, OutputOf&& output_of) {
    constexpr int R = fprop_rows, V = fprop_vectors, L = lanes<T>;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(V) * L;
    static_assert(chunk <= max_chunk);
    const std::ptrdiff_t chunks = ceil_div(l.run_length, chunk);
    constexpr std::ptrdiff_t tile_chunks = 8;
    const std::ptrdiff_t tiles = ceil_div(chunks, tile_chunks);
    const int blocks = int(ceil_div(oc_end - oc_begin, R));
    const std::ptrdiff_t k_count = std::ptrdiff_t(cin) * l.taps;
    // Input channels per pass, so the tile's input rows stay in the core's L2 across blocks.
    const std::ptrdiff_t footprint = std::ptrdiff_t(sizeof(T)) * (2 * l.pd + 1) * (tile_chunks * chunk + 2 * l.wp + 2);
    const int ci_step = int(std::clamp<std::ptrdiff_t>((256 << 10) / footprint, 1, cin));
    const bool direct = ci_step >= cin;
    parallel_for(tiles * blocks, [&](std::ptrdiff_t item) {
        const std::ptrdiff_t tile = item / blocks;
        const int block = int(item % blocks);
        const int oc0 = oc_begin + block * R;
        const int rows = std::min(R, oc_end - oc0);
        const T* w = packed_weight + std::ptrdiff_t(oc0 / R) * k_count * R;
        T* y = y_pad + std::ptrdiff_t(oc0 - oc_begin) * l.stride;
        const std::ptrdiff_t c_end = std::min(chunks, (tile + 1) * tile_chunks);
        CompactRows<T, R> compact{};
        if (direct)
            for (int r = 0; r < rows; ++r) compact.set(r, output_of(oc0 + r));
        for (int ci = 0; ci < cin; ci += ci_step) {
            const int ci_end = std::min(cin, ci + ci_step);
            for (std::ptrdiff_t c = tile * tile_chunks; c < c_end; ++c) {
                const std::ptrdiff_t q = l.run_begin + c * chunk;
                fprop_chunk<T, R, V>(x_pad + q, l.stride, l.tap_offset.data(), l.taps, ci, ci_end, w, y + q, l.stride,
                                     rows, ci == 0, l.row_taps(), direct ? &compact : nullptr, &l, q);
            }
        }
    });
    return direct;
}

// dweight[oc][ci * taps + t] += sum over interior q of g_pad[oc][q] * x_pad[ci][q + offset(t)].
// g_pad is zero outside the interior, so the padded run may be summed whole. The output gradient
// is first copied into blocks of L channels ([block][q][lane], aligned), so the kernel reads one
// aligned vector per L output channels and broadcasts input values (wgrad_blocked_tile); work
// items are (R blocks, P pairs), each summed by one thread whatever the thread count.
// Vectorising over output channels needs two blocks of them for its register tile and enough
// work items for the threads; otherwise the voxels are the vector dimension (wgrad_by_voxels).
template <class T, VectorGeometry G = geometry>
constexpr bool wgrad_over_channels(int cin, int cout, int taps) {
    const int blocks = int(ceil_div(cout, G.lanes(sizeof(T))));
    const int items = int(ceil_div(blocks, G.blocked_wgrad_rows)) * int(ceil_div(cin * taps, G.blocked_wgrad_pairs()));
    return blocks >= G.blocked_wgrad_rows && items >= 8;
}

template <class T, VectorGeometry G = geometry>
constexpr std::size_t wgrad_scratch_size(const PaddedLayout& l, int cin, int cout) {
    const std::size_t lanes_t = std::size_t(G.lanes(sizeof(T)));
    if (!wgrad_over_channels<T, G>(cin, cout, l.taps))
        return std::size_t(ceil_div(cout, G.wgrad_rows())) * ceil_div(cin * l.taps, G.wgrad_pairs()) * G.wgrad_rows() *
                   G.wgrad_pairs() * lanes_t + lanes_t;
    const std::size_t blocks = std::size_t(ceil_div(cout, int(lanes_t)));
    return blocks * lanes_t * (std::size_t(l.run_length) + std::size_t(cin) * std::size_t(l.taps)) + lanes_t;
}

template <class T>
void wgrad_by_channels(const PaddedLayout& l, int cin, int cout, const T* x_pad, const T* g_pad, T* dweight, T* scratch) {
    constexpr int L = lanes<T>;
    constexpr int R = VectorGeometry::blocked_wgrad_rows, P = geometry.blocked_wgrad_pairs();
    const int k_count = cin * l.taps, blocks = int(ceil_div(cout, L));
    T* g_blk = scratch + (L - (reinterpret_cast<std::uintptr_t>(scratch) / sizeof(T)) % L) % L;
    T* dw_blk = g_blk + std::ptrdiff_t(blocks) * l.run_length * L;
    parallel_for(blocks, [&](std::ptrdiff_t b) {
        T* out = g_blk + b * l.run_length * L;
        for (int j = 0; j < L; ++j) {
            const int o = int(b) * L + j;
            const T* in = o < cout ? g_pad + std::ptrdiff_t(o) * l.stride + l.run_begin : nullptr;
            for (std::ptrdiff_t q = 0; q < l.run_length; ++q) out[q * L + j] = in ? in[q] : T(0);
        }
        std::fill(dw_blk + b * k_count * L, dw_blk + (b + 1) * k_count * L, T(0));
    });
    if (blocks >= R) {
        const int row_items = int(ceil_div(blocks, R)), pair_items = int(ceil_div(k_count, P));
        parallel_for(std::ptrdiff_t(row_items) * pair_items, [&](std::ptrdiff_t item) {
            wgrad_blocked_tile<T, R, P>(l, blocks, k_count, x_pad, g_blk, int(item / pair_items) * R, int(item % pair_items) * P,
                                        dw_blk);
        });
    } else {  // one block of output channels: the registers go to more pairs
        const int pair_items = int(ceil_div(k_count, R * P));
        parallel_for(pair_items, [&](std::ptrdiff_t item) {
            wgrad_blocked_tile<T, 1, R * P>(l, blocks, k_count, x_pad, g_blk, 0, int(item) * R * P, dw_blk);
        });
    }
    parallel_for(cout, [&](std::ptrdiff_t o) {
        const T* from = dw_blk + (o / L) * k_count * L + o % L;
        T* to = dweight + o * k_count;
        for (int k = 0; k < k_count; ++k) to[k] += from[std::ptrdiff_t(k) * L];
    });
}

// The weight gradient vectorised over voxels (for one block of output channels or few work items):
// g_pad is zero outside the interior, so the padded run may be summed whole. Work items are
// (block of R output channels, block of P (channel, tap) pairs); tiles of voxels keep the rows
// an item reads in cache, and items are ordered so neighbours share the larger of the two.
template <class T, VectorGeometry G = geometry>
constexpr std::size_t wgrad_partial_size(int cin, int cout, int taps) {
    return std::size_t(ceil_div(cout, G.wgrad_rows())) * ceil_div(cin * taps, G.wgrad_pairs()) * G.wgrad_rows() *
           G.wgrad_pairs() * G.lanes(sizeof(T));
}

template <class T>
void wgrad_by_voxels(const PaddedLayout& l, int cin, int cout, const T* x_pad, const T* g_pad, T* dweight, T* partial) {
    constexpr int R = wgrad_rows, P = wgrad_pairs, L = lanes<T>;
    const int k_count = cin * l.taps;
    const int row_blocks = int(ceil_div(cout, R));
    const int pair_blocks = int(ceil_div(k_count, P));
    const std::ptrdiff_t run_end = l.run_begin + round_up(l.run_length, L);
    const std::ptrdiff_t tile = std::max<std::ptrdiff_t>(512, round_up((384 << 10) / (sizeof(T) * (cin + cout)), L));
    // Items run as (group of G row blocks, pair block, row block in group): a pair's input rows
    // are read once per group and reused from L1 by the group's row blocks, whose output-gradient
    // rows stay in L2.
    constexpr int G = 8;
    const int row_groups = int(ceil_div(row_blocks, G));
    const std::ptrdiff_t items = std::ptrdiff_t(row_groups) * pair_blocks * G;
    parallel_ranges(items, [&](std::ptrdiff_t item_begin, std::ptrdiff_t item_end) {
        for (std::ptrdiff_t q0 = l.run_begin; q0 < run_end; q0 += tile) {
            const std::ptrdiff_t q1 = std::min(run_end, q0 + tile);
            const bool first = q0 == l.run_begin, last = q1 == run_end;
            for (std::ptrdiff_t item = item_begin; item < item_end; ++item) {
                const int rb = int(item / (std::ptrdiff_t(pair_blocks) * G)) * G + int(item % G);
                const int pb = int(item / G % pair_blocks);
                if (rb >= row_blocks) continue;
                const T* g_rows[R];
                const T* x_pairs[P];
                for (int r = 0; r < R; ++r) g_rows[r] = g_pad + std::min(rb * R + r, cout - 1) * l.stride;
                for (int p = 0; p < P; ++p) {
                    const int k = std::min(pb * P + p, k_count - 1);
                    x_pairs[p] = x_pad + (k / l.taps) * l.stride + l.tap_offset[k % l.taps];
                }
                T* acc = partial + (std::ptrdiff_t(rb) * pair_blocks + pb) * R * P * L;
                T sums[round_up(R * P, L)];
                wgrad_tile<T, R, P>(g_rows, x_pairs, q0, q1, acc, first, last ? sums : nullptr);
                if (!last) continue;
                for (int r = 0; r < R && rb * R + r < cout; ++r)
                    for (int p = 0; p < P && pb * P + p < k_count; ++p)
                        dweight[std::ptrdiff_t(rb * R + r) * k_count + pb * P + p] += sums[r * P + p];
            }
        }
    });
}

template <class T>
void wgrad_padded(const PaddedLayout& l, int cin, int cout, const T* x_pad, const T* g_pad, T* dweight, T* scratch) {
    if (wgrad_over_channels<T>(cin, cout, l.taps)) return wgrad_by_channels(l, cin, cout, x_pad, g_pad, dweight, scratch);
    constexpr int L = lanes<T>;
    T* partial = scratch + (L - (reinterpret_cast<std::uintptr_t>(scratch) / sizeof(T)) % L) % L;
    wgrad_by_voxels(l, cin, cout, x_pad, g_pad, dweight, partial);
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

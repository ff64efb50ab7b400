#pragma once
// Winograd F(2x2, 3x3) (Lavin & Gray, 2016) for stride-1 'same' 3x3 convolutions of 2D planes.
//
// Each 2x2 block of outputs ("tile") is computed from the 4x4 input window around it: the window
// is transformed (V = B^T d B), multiplied position by position with the transformed kernel
// (U = G g G^T) and summed over input channels, and transformed back (Y = A^T M A). The sum over
// channels is 16 independent matrix products M_e = U_e V_e (one per position e of the 4x4 tile),
// run by the direct convolution's micro-kernel as a 1x1 convolution over tiles: 16 products
// per 4 outputs replace 36, 2.25x fewer multiply-adds, for a few adds per tile and channel.
//
// The plane is processed in bands of tile rows, sized so that one position's transformed band
// (V_e, all input channels) stays in L2 while every block of output channels reads it.
// Arithmetic order does not depend on the thread count. float only: double (the gradient
// tests' type) keeps the direct kernels, whose rounding is closer to the textbook sum.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "conv_direct.hpp"

// GCC 12 flags _mm512_undefined_ps/_pd (the self-initialised pass-through operand of the
// AVX-512 permutes behind xsimd::swizzle) as (maybe) uninitialised once inlined here; fixed in
// GCC 13.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define LIGHTUNET_WINOGRAD_DIAGNOSTICS_PUSHED
#endif

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET::winograd {

inline constexpr int positions = 16;  // of a transformed 4x4 tile
// One position's transformed band, all input channels: kept in the core's L2 (512 KiB and up).
inline constexpr std::ptrdiff_t band_bytes = std::ptrdiff_t(128) << 10;
// Below these the direct kernels win or tie (bench_conv winograd_vs_direct, Zen 3 AVX2 host): few
// input channels leave the products too short to pay for the transforms (240^2, 4 -> 32: 0.76x;
// 8 -> 32: 1.00-1.15x forward, 0.72x backward); on small planes the kernel transform, paid once
// per call, is a large share of the work.
inline constexpr int min_input_channels = 16;
inline constexpr std::ptrdiff_t min_tiles = 64;  // a 15x15 plane

// What F(2x2, 3x3) can compute at all: float 2D 3x3 'same' convolutions.
template <class T>
constexpr bool computes(const ConvProblem& p) {
    return std::is_same_v<T, float> && p.extent.d == 1 && p.kd == 1 && p.kh == 3 && p.kw == 3 && p.cin >= 1 && p.cout >= 1;
}

// Where it is faster than the direct kernels (ConvAlgorithm::automatic).
template <class T>
constexpr bool applies(const ConvProblem& p) {
    const std::ptrdiff_t tiles = std::ptrdiff_t(ceil_div(p.extent.h, 2)) * ceil_div(p.extent.w, 2);
    return computes<T>(p) && p.cin >= min_input_channels && tiles >= min_tiles;
}

// The weight gradient: the direct kernel, vectorised over output channels (conv_direct.hpp),
// beat this one on every 2D shape of both BraTS networks (bench_wgrad, AVX-512, 2 threads: 240^2
// 32 -> 32 5.1 against 9.6 ms, 120^2 64 -> 64 3.5 / 6.1, 60^2 128 -> 128 3.0 / 4.75, 30^2
// 256 -> 256 3.1 / 6.4), so the automatic choice never takes it; ConvAlgorithm::winograd does.
template <class T>
constexpr bool applies_to_weight_gradient(const ConvProblem&) {
    return false;
}

struct Plan {
    int h = 0, w = 0;
    int tile_rows = 0, tile_cols = 0;
    int row_stride = 0;              // tiles per row of tiles, padded to whole vectors
    int band_rows = 0;               // tile rows per band
    std::ptrdiff_t band_stride = 0;  // tiles per band, padded to whole micro-kernel chunks
    int cin = 0, cout = 0, cout_padded = 0;
    // Distances between the 16 positions in U, V and M. One cache line more than the data: the
    // transforms touch all 16 positions at once, and power-of-two distances (U of 512 x 512
    // channels: 1 MiB) would put them all in one set of the 8-way L1 and L2.
    constexpr std::ptrdiff_t kernel_stride() const { return std::ptrdiff_t(cout_padded) * cin + skew; }
    constexpr std::ptrdiff_t input_stride() const { return std::ptrdiff_t(cin) * band_stride + skew; }
    constexpr std::ptrdiff_t output_stride() const { return std::ptrdiff_t(cout_padded) * band_stride + skew; }
    constexpr std::ptrdiff_t kernel_size() const { return positions * kernel_stride(); }
    constexpr std::ptrdiff_t input_size() const { return positions * input_stride(); }
    constexpr std::ptrdiff_t output_size() const { return positions * output_stride(); }
    std::ptrdiff_t skew = 0;  // elements in 64 bytes
};

template <class T, VectorGeometry G = geometry>
constexpr Plan plan(const ConvProblem& p) {
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(G.fprop_vectors) * G.lanes(sizeof(T));
    Plan pl;
    pl.h = p.extent.h;
    pl.w = p.extent.w;
    pl.tile_rows = int(ceil_div(pl.h, 2));
    pl.tile_cols = int(ceil_div(pl.w, 2));
    pl.cin = p.cin;
    pl.cout = p.cout;
    pl.cout_padded = int(round_up(p.cout, G.fprop_rows()));
    pl.skew = std::ptrdiff_t(64 / sizeof(T));
    pl.row_stride = int(round_up(pl.tile_cols, G.lanes(sizeof(T))));
    auto stride_for = [&](std::ptrdiff_t rows) { return round_up(rows * pl.row_stride, chunk); };
    std::ptrdiff_t rows = 1;
    while (rows < pl.tile_rows && std::ptrdiff_t(sizeof(T)) * pl.cin * stride_for(rows + 1) <= band_bytes) ++rows;
    const std::ptrdiff_t bands = ceil_div(pl.tile_rows, rows);
    pl.band_rows = int(ceil_div(pl.tile_rows, bands));  // even bands
    pl.band_stride = stride_for(pl.band_rows);
    return pl;
}

// The transformed kernel and the bands start on a cache line (64 bytes) of the workspace.
inline constexpr std::size_t alignment_slack = 64;  // elements: enough for any T
template <class T>
T* align(T* p) {
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    return p + (round_up(address, std::uintptr_t(64)) - address) / sizeof(T);
}

// Scratch (elements of T): transformed kernel, input band and output band, each aligned.
template <class T, VectorGeometry G = geometry>
constexpr std::size_t workspace_size(const ConvProblem& p) {
    const Plan pl = plan<T, G>(p);
    return std::size_t(pl.kernel_size() + pl.input_size() + pl.output_size()) + 2 * alignment_slack;
}

// U = G g G^T for every (output, input) channel pair, stored per position as the micro-kernel
// reads weights: [position][block of R outputs][input][R] (positions kernel_stride() apart),
// zero rows past cout. tap(o, i, k) is the kernel's value at k = 3 * ky + kx.
template <class T, class Tap>
void transform_kernel(const Plan& pl, Tap&& tap, T* u) {
    constexpr int R = fprop_rows;
    const int blocks = pl.cout_padded / R;
    parallel_for(blocks, [&](std::ptrdiff_t block) {
        for (int i = 0; i < pl.cin; ++i) {
            T tile[positions][R];  // this input channel's U for the block's R outputs
            for (int r = 0; r < R; ++r) {
                const int o = int(block) * R + r;
                T g[3][3] = {};
                if (o < pl.cout)
                    for (int k = 0; k < 9; ++k) g[k / 3][k % 3] = tap(o, i, k);
                T t[4][3];  // G g
                for (int c = 0; c < 3; ++c) {
                    t[0][c] = g[0][c];
                    t[1][c] = T(0.5) * (g[0][c] + g[1][c] + g[2][c]);
                    t[2][c] = T(0.5) * (g[0][c] - g[1][c] + g[2][c]);
                    t[3][c] = g[2][c];
                }
                for (int a = 0; a < 4; ++a) {  // (G g) G^T
                    tile[a * 4 + 0][r] = t[a][0];
                    tile[a * 4 + 1][r] = T(0.5) * (t[a][0] + t[a][1] + t[a][2]);
                    tile[a * 4 + 2][r] = T(0.5) * (t[a][0] - t[a][1] + t[a][2]);
                    tile[a * 4 + 3][r] = t[a][2];
                }
            }
            T* dst = u + (block * pl.cin + i) * R;
            for (int e = 0; e < positions; ++e) std::copy_n(tile[e], R, dst + e * pl.kernel_stride());
        }
    });
}

// Index generators for xsimd's compile-time lane shuffles.
template <bool odd_first>
struct SplitEvenOdd {  // evens then odds (or odds then evens)
    static constexpr unsigned get(unsigned i, unsigned n) { return (i < n / 2) == !odd_first ? 2 * (i % (n / 2)) : 2 * (i % (n / 2)) + 1; }
};
struct LowHalf {
    static constexpr bool get(unsigned i, unsigned n) { return i < n / 2; }
};
template <bool high_first>
struct Spread {  // lane i takes lane i / 2 of its half (low half first, or high half first) in even lanes
    static constexpr unsigned get(unsigned i, unsigned n) { return ((i % 2 == 0) != high_first) ? i / 2 : n / 2 + i / 2; }
};
struct EvenLane {
    static constexpr bool get(unsigned i, unsigned) { return i % 2 == 0; }
};

// Splits 2L consecutive values into their even and odd positions.
template <class T>
inline void deinterleave(const Batch<T>& first, const Batch<T>& second, Batch<T>& even, Batch<T>& odd) {
    using Index = xsimd::batch<xsimd::as_unsigned_integer_t<T>, Arch>;
    constexpr auto evens_first = xsimd::make_batch_constant<Index, SplitEvenOdd<false>>();
    constexpr auto odds_first = xsimd::make_batch_constant<Index, SplitEvenOdd<true>>();
    constexpr auto low = xsimd::make_batch_bool_constant<Batch<T>, LowHalf>();
    even = xsimd::select(low, xsimd::swizzle(first, evens_first), xsimd::swizzle(second, odds_first));
    odd = xsimd::select(low, xsimd::swizzle(first, odds_first), xsimd::swizzle(second, evens_first));
}

// The inverse: 2L consecutive values from their even and odd positions.
template <class T>
inline void interleave(const Batch<T>& even, const Batch<T>& odd, Batch<T>& first, Batch<T>& second) {
    using Index = xsimd::batch<xsimd::as_unsigned_integer_t<T>, Arch>;
    constexpr auto low_in_even = xsimd::make_batch_constant<Index, Spread<false>>();
    constexpr auto low_in_odd = xsimd::make_batch_constant<Index, Spread<true>>();
    constexpr auto even_lanes = xsimd::make_batch_bool_constant<Batch<T>, EvenLane>();
    first = xsimd::select(even_lanes, xsimd::swizzle(even, low_in_even), xsimd::swizzle(odd, low_in_odd));
    second = xsimd::select(even_lanes, xsimd::swizzle(even, low_in_odd), xsimd::swizzle(odd, low_in_even));
}

// Where tile t of a band lies in V for one position: panels of `chunk` tiles, each holding every
// input channel's run of the panel's tiles, so the products read V front to back.
template <class T>
constexpr std::ptrdiff_t panel_offset(std::ptrdiff_t t, int channels, int channel) {
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(fprop_vectors) * lanes<T>;
    return (t / chunk) * channels * chunk + std::ptrdiff_t(channel) * chunk + t % chunk;
}

// V = B^T d B for the tiles of rows [row_begin, row_end) of input channel `channel` (plane null:
// zeros), into the band's panels v (position e at v + e * position_stride).
template <class T>
void transform_input(const Plan& pl, const T* plane, int channel, int row_begin, int row_end, T* v,
                     std::ptrdiff_t position_stride) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(fprop_vectors) * L;
    constexpr int block = 128;  // tiles per pass over a row of tiles
    // The window of tile j spans columns 2j-1 .. 2j+2: split into even and odd columns, its four
    // columns are even[j], odd[j], even[j+1], odd[j+1], so lanes hold consecutive tiles.
    alignas(64) T even[4][block + 2 * L], odd[4][block + 2 * L];
    const std::ptrdiff_t tiles = std::ptrdiff_t(row_end - row_begin) * pl.row_stride;
    if (tiles % chunk != 0)  // the last panel's tail is multiplied too: zeros, not stale values
        for (int e = 0; e < positions; ++e)
            for (std::ptrdiff_t t = tiles; t < round_up(tiles, chunk); ++t)
                v[e * position_stride + panel_offset<T>(t, pl.cin, channel)] = T(0);
    for (int i = row_begin; i < row_end; ++i) {
        const std::ptrdiff_t row_tile = std::ptrdiff_t(i - row_begin) * pl.row_stride;
        for (int j0 = 0; j0 < pl.tile_cols; j0 += block) {
            const int n = std::min(block, pl.tile_cols - j0);
            const int filled = int(round_up(n, L)) + L;  // read up to round_up(n, L)
            const int x0 = 2 * j0 - 1;  // column of even[.][0]
            for (int r = 0; r < 4; ++r) {
                const int y = 2 * i - 1 + r;
                const T* row = (plane != nullptr && y >= 0 && y < pl.h) ? plane + std::ptrdiff_t(y) * pl.w : nullptr;
                int k = 0;
                if (row != nullptr) {
                    // Whole vectors where columns x0 + 2k .. x0 + 2k + 2L - 1 lie inside the row.
                    if (x0 < 0) {
                        even[r][0] = T(0);
                        odd[r][0] = row[0];
                        k = 1;
                    }
                    // Lanes past n take real columns too: they only feed tiles a later pass
                    // or row overwrites, or the row's padding tiles.
                    for (; k < filled && x0 + 2 * (k + L) <= pl.w; k += L) {
                        B e, o;
                        deinterleave(B::load_unaligned(row + x0 + 2 * k), B::load_unaligned(row + x0 + 2 * k + L), e, o);
                        e.store_unaligned(&even[r][k]);
                        o.store_unaligned(&odd[r][k]);
                    }
                }
                // The rest: columns inside the row that tiles up to n read (k <= n), then zeros.
                // Bounds first, then loops without branches (a branch per value took a tenth of
                // the transform). Past the first column, x0 + 2k >= 1.
                const int even_end = row != nullptr ? std::max(k, std::min({filled, n + 1, (pl.w + 1 - x0) / 2})) : k;
                const int odd_end = row != nullptr ? std::max(k, std::min({filled, n + 1, (pl.w - x0) / 2})) : k;
                for (int m = k; m < even_end; ++m) even[r][m] = row[x0 + 2 * m];
                for (int m = even_end; m < filled; ++m) even[r][m] = T(0);
                for (int m = k; m < odd_end; ++m) odd[r][m] = row[x0 + 2 * m + 1];
                for (int m = odd_end; m < filled; ++m) odd[r][m] = T(0);
            }
            for (int k = 0; k < n; k += L) {
                B d[4][4];
                for (int r = 0; r < 4; ++r) {
                    d[r][0] = B::load_unaligned(&even[r][k]);
                    d[r][1] = B::load_unaligned(&odd[r][k]);
                    d[r][2] = B::load_unaligned(&even[r][k + 1]);
                    d[r][3] = B::load_unaligned(&odd[r][k + 1]);
                }
                B t[4][4];
                for (int c = 0; c < 4; ++c) {
                    t[0][c] = d[0][c] - d[2][c];
                    t[1][c] = d[1][c] + d[2][c];
                    t[2][c] = d[2][c] - d[1][c];
                    t[3][c] = d[1][c] - d[3][c];
                }
                // L tiles from a multiple of L: inside one panel.
                T* at = v + panel_offset<T>(row_tile + j0 + k, pl.cin, channel);
                for (int a = 0; a < 4; ++a) {
                    (t[a][0] - t[a][2]).store_unaligned(at + (a * 4 + 0) * position_stride);
                    (t[a][1] + t[a][2]).store_unaligned(at + (a * 4 + 1) * position_stride);
                    (t[a][2] - t[a][1]).store_unaligned(at + (a * 4 + 2) * position_stride);
                    (t[a][1] - t[a][3]).store_unaligned(at + (a * 4 + 3) * position_stride);
                }
            }
        }
    }
}

// Y = A^T M A for the tiles of rows [row_begin, row_end) of one output channel, plus bias,
// added into its plane or written there after the channel's activation.
template <class T>
void transform_output(const Plan& pl, const T* m, std::ptrdiff_t position_stride, int row_begin, int row_end,
                      const CompactChannel<T>& out) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    alignas(64) T y[2][2][L];
    const B bias(out.bias), slope(out.accumulate ? T(1) : out.slope);
    for (int i = row_begin; i < row_end; ++i) {
        const T* row = m + std::ptrdiff_t(i - row_begin) * pl.row_stride;
        const int rows_out = std::min(2, pl.h - 2 * i);
        for (int k = 0; k < pl.tile_cols; k += L) {
            B s[2][4];
            for (int b = 0; b < 4; ++b) {
                const B m0 = B::load_aligned(row + k + (0 * 4 + b) * position_stride);
                const B m1 = B::load_aligned(row + k + (1 * 4 + b) * position_stride);
                const B m2 = B::load_aligned(row + k + (2 * 4 + b) * position_stride);
                const B m3 = B::load_aligned(row + k + (3 * 4 + b) * position_stride);
                s[0][b] = m0 + m1 + m2;
                s[1][b] = m1 - m2 - m3;
            }
            for (int a = 0; a < rows_out; ++a) {
                const B left = activate(s[a][0] + s[a][1] + s[a][2] + bias, slope);   // output columns 2j
                const B right = activate(s[a][1] - s[a][2] - s[a][3] + bias, slope);  // 2j + 1
                T* dst = out.base + std::ptrdiff_t(2 * i + a) * pl.w + 2 * k;
                if (2 * (k + L) <= pl.w) {
                    B first, second;
                    interleave(left, right, first, second);
                    if (out.accumulate) {
                        first += B::load_unaligned(dst);
                        second += B::load_unaligned(dst + L);
                    }
                    first.store_unaligned(dst);
                    second.store_unaligned(dst + L);
                    continue;
                }
                left.store_aligned(y[a][0]);
                right.store_aligned(y[a][1]);
                const int columns = pl.w - 2 * k;
                for (int x = 0; x < columns; ++x) dst[x] = out.accumulate ? dst[x] + y[a][x & 1][x >> 1] : y[a][x & 1][x >> 1];
            }
        }
    }
}

// M = U V for one position and one block of R output channels over one panel of tiles: the
// direct kernel's register tile, reading the panel front to back.
template <class T, int R, int V>
inline void multiply_panel(const T* panel, const T* u, int channels, T* m, std::ptrdiff_t m_stride) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(V) * L;
    B acc[R][V];
    static_for<R>([&](auto r) { static_for<V>([&](auto v) { acc[r][v] = B(T(0)); }); });
    for (int c = 0; c < channels; ++c) {
        const T* x = panel + c * chunk;
        B xv[V];
        static_for<V>([&](auto v) { xv[v] = B::load_aligned(x + v * L); });
        const T* w = u + c * R;
        static_for<R>([&](auto r) {
            const B wr(w[r]);
            static_for<V>([&](auto v) { acc[r][v] = xsimd::fma(wr, xv[v], acc[r][v]); });
        });
    }
    static_for<R>([&](auto r) { static_for<V>([&](auto v) { acc[r][v].store_aligned(m + r * m_stride + v * L); }); });
}

// One image: input channel c's plane is input_of(c) (null reads as zeros); output channel o
// goes to output_of(o) -> CompactChannel (null base: skipped). u holds transform_kernel's
// result; scratch holds input_size() + output_size() elements; both aligned (align).
template <class T, class InputOf, class OutputOf>
void convolve_image(const Plan& pl, const T* u, InputOf&& input_of, OutputOf&& output_of, T* scratch) {
    constexpr int R = fprop_rows, V = fprop_vectors;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(V) * lanes<T>;
    const int blocks = pl.cout_padded / R;
    const std::ptrdiff_t v_stride = pl.input_stride(), m_stride = pl.output_stride();
    T* v = scratch;
    T* m = scratch + pl.input_size();
    for (int row0 = 0; row0 < pl.tile_rows; row0 += pl.band_rows) {
        const int row1 = std::min(pl.tile_rows, row0 + pl.band_rows);
        const std::ptrdiff_t panels = ceil_div(std::ptrdiff_t(row1 - row0) * pl.row_stride, chunk);
        parallel_for(pl.cin, [&](std::ptrdiff_t c) { transform_input(pl, input_of(int(c)), int(c), row0, row1, v, v_stride); });
        // Items of the same position run back to back on one thread: its V_e stays in L2.
        parallel_for(std::ptrdiff_t(positions) * blocks, [&](std::ptrdiff_t item) {
            const std::ptrdiff_t e = item / blocks, block = item % blocks;
            const T* ue = u + e * pl.kernel_stride() + block * pl.cin * R;
            const T* ve = v + e * v_stride;
            T* me = m + e * m_stride + block * R * pl.band_stride;
            for (std::ptrdiff_t c = 0; c < panels; ++c)
                multiply_panel<T, R, V>(ve + c * pl.cin * chunk, ue, pl.cin, me + c * chunk, pl.band_stride);
        });
        parallel_for(pl.cout, [&](std::ptrdiff_t o) {
            const CompactChannel<T> out = output_of(int(o));
            if (out.base != nullptr) transform_output(pl, m + o * pl.band_stride, m_stride, row0, row1, out);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient. With M = U V per position and Y = A^T M A: dM = A dY A^T per tile,
// dU_e = sum over tiles of dM_e V_e^T (a product that sums over tiles), and dg = G^T dU G.

// dM = A dY A^T for the tiles of rows [row_begin, row_end) of output-gradient channel `channel`,
// into panels like V's (channels = cout_padded); outputs past the plane count as zeros.
template <class T>
void transform_output_gradient(const Plan& pl, const T* plane, int channel, int row_begin, int row_end, T* dm,
                               std::ptrdiff_t position_stride) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(fprop_vectors) * L;
    constexpr int block = 128;
    alignas(64) T even[2][block + L], odd[2][block + L];  // columns 2j and 2j + 1 of rows 2i, 2i + 1
    const std::ptrdiff_t tiles = std::ptrdiff_t(row_end - row_begin) * pl.row_stride;
    for (int e = 0; e < positions; ++e)
        for (std::ptrdiff_t t = tiles; t < round_up(tiles, chunk); ++t)
            dm[e * position_stride + panel_offset<T>(t, pl.cout_padded, channel)] = T(0);
    for (int i = row_begin; i < row_end; ++i) {
        const std::ptrdiff_t row_tile = std::ptrdiff_t(i - row_begin) * pl.row_stride;
        for (int j0 = 0; j0 < pl.tile_cols; j0 += block) {
            const int n = int(round_up(std::min(block, pl.tile_cols - j0), L));  // zeros up to the row's padding
            for (int r = 0; r < 2; ++r) {
                const int y = 2 * i + r;
                const T* row = y < pl.h ? plane + std::ptrdiff_t(y) * pl.w : nullptr;
                int k = 0;
                if (row != nullptr)
                    for (; k + L <= n && 2 * (j0 + k + L) <= pl.w; k += L) {
                        B e, o;
                        deinterleave(B::load_unaligned(row + 2 * (j0 + k)), B::load_unaligned(row + 2 * (j0 + k) + L), e, o);
                        e.store_aligned(&even[r][k]);
                        o.store_aligned(&odd[r][k]);
                    }
                for (; k < n; ++k) {
                    const int x = 2 * (j0 + k);
                    even[r][k] = (row != nullptr && x < pl.w) ? row[x] : T(0);
                    odd[r][k] = (row != nullptr && x + 1 < pl.w) ? row[x + 1] : T(0);
                }
            }
            for (int k = 0; k < n; k += L) {
                const B y00 = B::load_aligned(&even[0][k]), y01 = B::load_aligned(&odd[0][k]);
                const B y10 = B::load_aligned(&even[1][k]), y11 = B::load_aligned(&odd[1][k]);
                // Rows of A dY: dY0, dY0 + dY1, dY0 - dY1, -dY1 (per column q).
                const B rows[4][2] = {{y00, y01}, {y00 + y10, y01 + y11}, {y00 - y10, y01 - y11}, {-y10, -y11}};
                T* at = dm + panel_offset<T>(row_tile + j0 + k, pl.cout_padded, channel);
                for (int a = 0; a < 4; ++a) {
                    rows[a][0].store_aligned(at + (a * 4 + 0) * position_stride);
                    (rows[a][0] + rows[a][1]).store_aligned(at + (a * 4 + 1) * position_stride);
                    (rows[a][0] - rows[a][1]).store_aligned(at + (a * 4 + 2) * position_stride);
                    (-rows[a][1]).store_aligned(at + (a * 4 + 3) * position_stride);
                }
            }
        }
    }
}

// du[o * cin + i] += sum over the band's tiles of dM_e[o][t] V_e[i][t] for RW outputs from o0
// and PW inputs from i0 (clamped to the channel counts): vector accumulators over tiles, summed
// across lanes once per band.
template <class T, int RW, int PW>
inline void multiply_gradient_panels(const Plan& pl, const T* dm, const T* v, std::ptrdiff_t panels, int o0, int i0, T* du) {
    using B = Batch<T>;
    constexpr int L = lanes<T>;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(fprop_vectors) * L;
    const int rows = std::min(RW, pl.cout - o0), cols = std::min(PW, pl.cin - i0);
    std::ptrdiff_t g_at[RW], x_at[PW];
    for (int r = 0; r < RW; ++r) g_at[r] = std::ptrdiff_t(std::min(o0 + r, pl.cout - 1)) * chunk;
    for (int c = 0; c < PW; ++c) x_at[c] = std::ptrdiff_t(std::min(i0 + c, pl.cin - 1)) * chunk;
    B acc[RW][PW];
    static_for<RW>([&](auto r) { static_for<PW>([&](auto c) { acc[r][c] = B(T(0)); }); });
    for (std::ptrdiff_t panel = 0; panel < panels; ++panel) {
        const T* g = dm + panel * pl.cout_padded * chunk;
        const T* x = v + panel * pl.cin * chunk;
        for (int q = 0; q < fprop_vectors * L; q += L) {
            B gv[RW];
            static_for<RW>([&](auto r) { gv[r] = in_register(B::load_aligned(g + g_at[r] + q)); });
            static_for<PW>([&](auto c) {
                const B xv = B::load_aligned(x + x_at[c] + q);
                static_for<RW>([&](auto r) { acc[r][c] = xsimd::fma(gv[r], xv, acc[r][c]); });
            });
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) du[std::ptrdiff_t(o0 + r) * pl.cin + i0 + c] += xsimd::hadd(acc[r][c]);
}

// Adds one image's dU (du[e * kernel_stride() + o * cin + i]) given its input planes (input_of)
// and output-gradient planes (gradient_of); scratch holds input_size() + output_size().
template <class T, class InputOf, class GradientOf>
void accumulate_kernel_gradient(const Plan& pl, InputOf&& input_of, GradientOf&& gradient_of, T* du, T* scratch) {
    constexpr int RW = wgrad_rows, PW = wgrad_pairs;
    constexpr std::ptrdiff_t chunk = std::ptrdiff_t(fprop_vectors) * lanes<T>;
    const std::ptrdiff_t v_stride = pl.input_stride(), m_stride = pl.output_stride();
    T* v = scratch;
    T* dm = scratch + pl.input_size();
    const int row_blocks = int(ceil_div(pl.cout, RW)), col_blocks = int(ceil_div(pl.cin, PW));
    for (int row0 = 0; row0 < pl.tile_rows; row0 += pl.band_rows) {
        const int row1 = std::min(pl.tile_rows, row0 + pl.band_rows);
        const std::ptrdiff_t panels = ceil_div(std::ptrdiff_t(row1 - row0) * pl.row_stride, chunk);
        parallel_for(pl.cin, [&](std::ptrdiff_t c) { transform_input(pl, input_of(int(c)), int(c), row0, row1, v, v_stride); });
        parallel_for(pl.cout, [&](std::ptrdiff_t o) {
            transform_output_gradient(pl, gradient_of(int(o)), int(o), row0, row1, dm, m_stride);
        });
        parallel_for(std::ptrdiff_t(positions) * row_blocks * col_blocks, [&](std::ptrdiff_t item) {
            const std::ptrdiff_t e = item / (row_blocks * col_blocks), rest = item % (row_blocks * col_blocks);
            const int o0 = int(rest / col_blocks) * RW, i0 = int(rest % col_blocks) * PW;
            multiply_gradient_panels<T, RW, PW>(pl, dm + e * m_stride, v + e * v_stride, panels, o0, i0,
                                                du + e * pl.kernel_stride());
        });
    }
}

// dweight[o][i][k] += (G^T dU G)[k] over the 16 positions of du (as accumulate_kernel_gradient).
template <class T>
void add_kernel_gradient(const Plan& pl, const T* du, T* dweight) {
    parallel_for(pl.cout, [&](std::ptrdiff_t o) {
        for (int i = 0; i < pl.cin; ++i) {
            T d[4][4];
            for (int e = 0; e < positions; ++e) d[e / 4][e % 4] = du[e * pl.kernel_stride() + o * pl.cin + i];
            T s[3][4];  // G^T dU
            for (int b = 0; b < 4; ++b) {
                s[0][b] = d[0][b] + T(0.5) * (d[1][b] + d[2][b]);
                s[1][b] = T(0.5) * (d[1][b] - d[2][b]);
                s[2][b] = T(0.5) * (d[1][b] + d[2][b]) + d[3][b];
            }
            T* dst = dweight + (o * pl.cin + i) * 9;
            for (int k = 0; k < 3; ++k) {  // (G^T dU) G
                dst[k * 3 + 0] += s[k][0] + T(0.5) * (s[k][1] + s[k][2]);
                dst[k * 3 + 1] += T(0.5) * (s[k][1] - s[k][2]);
                dst[k * 3 + 2] += T(0.5) * (s[k][1] + s[k][2]) + s[k][3];
            }
        }
    });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET::winograd

#ifdef LIGHTUNET_WINOGRAD_DIAGNOSTICS_PUSHED
#pragma GCC diagnostic pop
#undef LIGHTUNET_WINOGRAD_DIAGNOSTICS_PUSHED
#endif

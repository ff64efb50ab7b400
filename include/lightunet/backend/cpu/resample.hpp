#pragma once
// Changes of resolution by 2 per axis (depth too in 3D): max-pooling, nearest up-sampling, and
// the space-to-depth rearrangements that turn 2x2(x2) stride-2 convolutions into 1x1 ones.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../conv_problem.hpp"
#include "parallel.hpp"
#include "simd.hpp"

// GCC 12 flags _mm512_undefined_ps/_pd (the self-initialised pass-through operand of the
// AVX-512 permutes behind xsimd::swizzle) as (maybe) uninitialised once inlined here, as in
// winograd.hpp; fixed in GCC 13.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define LIGHTUNET_RESAMPLE_DIAGNOSTICS_PUSHED
#endif

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

using lightunet::Cells;

// Visits every row of coarse voxels of every plane: f(plane, o, fine, n) with o the index of the
// row's first voxel and fine[k] the fine index of that voxel's cell voxel k, in the order
// (a_d, a_h, a_w) row-major, as a PyTorch kernel [kd][kh][kw]; n is the voxels per cell (4 in
// 2D, 8 in 3D) as a std::integral_constant, so that the loops over a cell unroll. Voxel x of the
// row (x < coarse.w) has its cell voxel k at fine[k] + 2 * x.
template <class F>
void for_each_cell_row(const Cells& g, std::ptrdiff_t planes, F&& f) {
    const Extent fine = g.fine();
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size()), fine_size = std::ptrdiff_t(fine.size());
    auto walk = [&](auto n) {
        constexpr int N = decltype(n)::value;
        parallel_for(planes, [&](std::ptrdiff_t plane) {
            std::ptrdiff_t first[N];
            for (int z = 0; z < g.coarse.d; ++z)
                for (int y = 0; y < g.coarse.h; ++y) {
                    for (int k = 0; k < N; ++k) {
                        const int a = k / 4, b = (k / 2) % 2, c = k % 2;
                        first[k] = plane * fine_size + ((std::ptrdiff_t(z) * g.fd + a) * fine.h + (2 * y + b)) * fine.w + c;
                    }
                    f(plane, plane * coarse_size + (std::ptrdiff_t(z) * g.coarse.h + y) * g.coarse.w,
                      static_cast<const std::ptrdiff_t*>(first), n);
                }
        });
    };
    if (g.fd == 1) walk(std::integral_constant<int, 4>{});
    else walk(std::integral_constant<int, 8>{});
}

// Every coarse voxel of a row from x_begin on, one at a time: f(o, cell, n) (cell[k]: the fine
// index of its cell voxel k). The vector kernels below finish their rows with it.
template <class F, int N>
void for_each_cell_from(std::ptrdiff_t x_begin, std::ptrdiff_t width, std::ptrdiff_t o, const std::ptrdiff_t* fine,
                        std::integral_constant<int, N> n, F&& f) {
    std::ptrdiff_t cell[N];
    for (int k = 0; k < N; ++k) cell[k] = fine[k] + 2 * x_begin;
    for (std::ptrdiff_t x = x_begin; x < width; ++x) {
        f(o + x, static_cast<const std::ptrdiff_t*>(cell), n);
        for (int k = 0; k < N; ++k) cell[k] += 2;
    }
}

// Visits every coarse voxel of every plane: f(plane, o, cell, n), as for_each_cell_row.
template <class F>
void for_each_cell(const Cells& g, std::ptrdiff_t planes, F&& f) {
    for_each_cell_row(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* fine, auto n) {
        for_each_cell_from(0, g.coarse.w, o, fine, n, [&](std::ptrdiff_t at, const std::ptrdiff_t* cell, auto m) { f(plane, at, cell, m); });
    });
}

// The vector kernels: a batch holds L voxels of a fine row, the even lanes a cell's first
// column (a_w = 0) and the odd lanes its second, so L coarse voxels of a row are two batches per
// fine row. The cell's values meet in each lane pair through lane swaps, and coarse rows go to
// fine ones (and back) through lane permutations: no strided loads or stores.
template <class T>
struct CellLanes {
    using B = Batch<T>;
    static constexpr int L = lanes<T>;
    using Index = xsimd::batch<std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>, Arch>;
    struct Swap {
        static constexpr std::size_t get(std::size_t i, std::size_t) { return i ^ 1u; }
    };
    template <std::size_t Half>
    struct Spread {  // lane i <- coarse lane Half * L / 2 + i / 2
        static constexpr std::size_t get(std::size_t i, std::size_t n) { return Half * n / 2 + i / 2; }
    };
    template <std::size_t Column>
    struct Gather {  // lane i <- fine lane (2i + Column) mod L
        static constexpr std::size_t get(std::size_t i, std::size_t n) { return (2 * i + Column) % n; }
    };
    struct Even {
        static constexpr bool get(std::size_t i, std::size_t) { return i % 2 == 0; }
    };
    struct LowHalf {
        static constexpr bool get(std::size_t i, std::size_t n) { return i < n / 2; }
    };
    static B swap_pairs(const B& v) { return xsimd::swizzle(v, xsimd::make_batch_constant<Index, Swap>()); }
    // Fine lanes of coarse lanes [half * L / 2, (half + 1) * L / 2), each twice (half: 0 or 1).
    static B spread(const B& coarse, int half) {
        return half == 0 ? xsimd::swizzle(coarse, xsimd::make_batch_constant<Index, Spread<0>>())
                         : xsimd::swizzle(coarse, xsimd::make_batch_constant<Index, Spread<1>>());
    }
    // Column `Column` of the L cells that two fine batches hold, as L coarse lanes.
    template <std::size_t Column>
    static B gather(const B& first, const B& second) {
        return xsimd::select(xsimd::make_batch_bool_constant<B, LowHalf>(), xsimd::swizzle(first, xsimd::make_batch_constant<Index, Gather<Column>>()),
                             xsimd::swizzle(second, xsimd::make_batch_constant<Index, Gather<Column>>()));
    }
    static auto even() { return xsimd::make_batch_bool_constant<B, Even>(); }
    // A fine row's batch u as two: every lane's cell's first column (a_w = 0) and its second.
    static void columns(const B& u, B& first, B& second) {
        const B s = swap_pairs(u);
        first = xsimd::select(even(), u, s);
        second = xsimd::select(even(), s, u);
    }
};

template <class T>
void max_pool_forward(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    using Lanes = CellLanes<T>;
    using B = typename Lanes::B;
    constexpr int L = Lanes::L;
    auto cell_max = [&](std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        T m = fine[cell[0]];
        for (int k = 1; k < n; ++k) m = fine[cell[k]] > m ? fine[cell[k]] : m;
        coarse[o] = m;
    };
    for_each_cell_row(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* row, auto n) {
        constexpr int N = decltype(n)::value;
        std::ptrdiff_t x = 0;
        for (; x + L <= g.coarse.w; x += L) {
            B half_max[2];
            for (int half = 0; half < 2; ++half) {
                B v[N];
                for (int k = 0; k < N; k += 2) prefetch_ahead(fine + row[k] + 2 * x + half * L, stream_prefetch_bytes);
                for (int k = 0; k < N; k += 2) Lanes::columns(B::load_unaligned(fine + row[k] + 2 * x + half * L), v[k], v[k + 1]);
                B m = v[0];
                for (int k = 1; k < N; ++k) m = xsimd::select(v[k] > m, v[k], m);
                half_max[half] = m;
            }
            Lanes::template gather<0>(half_max[0], half_max[1]).store_unaligned(coarse + o + x);
        }
        for_each_cell_from(x, g.coarse.w, o, row, n, cell_max);
    });
}

// The gradient goes to the first voxel holding the maximum (PyTorch's choice on ties), or is
// added to what fine_grad holds when accumulate is set. The maximum is found without branches:
// which voxel wins is data, and mispredicted jumps cost more than the selects.
template <class T>
void max_pool_backward(const Cells& g, std::ptrdiff_t planes, const T* fine, const T* coarse_grad, T* fine_grad,
                       bool accumulate) {
    using Lanes = CellLanes<T>;
    using B = typename Lanes::B;
    constexpr int L = Lanes::L;
    auto cell_grad = [&](std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        int arg = 0;
        T best = fine[cell[0]];
        for (int k = 1; k < n; ++k) {
            const T v = fine[cell[k]];
            const bool greater = v > best;
            best = greater ? v : best;
            arg = greater ? k : arg;
        }
        for (int k = 0; k < n; ++k) {
            const T v = k == arg ? coarse_grad[o] : T(0);
            fine_grad[cell[k]] = accumulate ? fine_grad[cell[k]] + v : v;
        }
    };
    for_each_cell_row(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* row, auto n) {
        constexpr int N = decltype(n)::value;
        std::ptrdiff_t x = 0;
        for (; x + L <= g.coarse.w; x += L) {
            const B grad = B::load_unaligned(coarse_grad + o + x);
            for (int half = 0; half < 2; ++half) {
                const std::ptrdiff_t at = 2 * x + half * L;
                B v[N];
                for (int k = 0; k < N; k += 2) prefetch_ahead(fine + row[k] + at, stream_prefetch_bytes);
                for (int k = 0; k < N; k += 2) Lanes::columns(B::load_unaligned(fine + row[k] + at), v[k], v[k + 1]);
                B best = v[0], arg(T(0));  // as the scalar kernel, in each lane pair
                for (int k = 1; k < N; ++k) {
                    const auto greater = v[k] > best;
                    best = xsimd::select(greater, v[k], best);
                    arg = xsimd::select(greater, B(T(k)), arg);
                }
                const B up = Lanes::spread(grad, half);
                for (int k = 0; k < N; k += 2) {
                    const B own = xsimd::select(Lanes::even(), B(T(k)), B(T(k + 1)));
                    T* out = fine_grad + row[k] + at;
                    const B value = xsimd::select(arg == own, up, B(T(0)));
                    (accumulate ? B::load_unaligned(out) + value : value).store_unaligned(out);
                }
            }
        }
        for_each_cell_from(x, g.coarse.w, o, row, n, cell_grad);
    });
}

// fine [images][C][fine] -> coarse [images][C * per_cell][coarse], channel c * per_cell + k.
template <class T>
void space_to_depth(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    using Lanes = CellLanes<T>;
    using B = typename Lanes::B;
    constexpr int L = Lanes::L;
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size());
    for_each_cell_row(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* row, auto n) {
        constexpr int N = decltype(n)::value;
        const std::ptrdiff_t base = o + plane * (N - 1) * coarse_size;  // plane p's block starts at p * n * coarse
        std::ptrdiff_t x = 0;
        for (; x + L <= g.coarse.w; x += L)
            for (int k = 0; k < N; k += 2) {
                prefetch_ahead(fine + row[k] + 2 * x, stream_prefetch_bytes);
                prefetch_ahead(fine + row[k] + 2 * x + L, stream_prefetch_bytes);
                const B first = B::load_unaligned(fine + row[k] + 2 * x), second = B::load_unaligned(fine + row[k] + 2 * x + L);
                Lanes::template gather<0>(first, second).store_unaligned(coarse + base + k * coarse_size + x);
                Lanes::template gather<1>(first, second).store_unaligned(coarse + base + (k + 1) * coarse_size + x);
            }
        for_each_cell_from(x, g.coarse.w, o, row, n, [&](std::ptrdiff_t at, const std::ptrdiff_t* cell, auto) {
            for (int k = 0; k < N; ++k) coarse[base + (at - o) + k * coarse_size] = fine[cell[k]];
        });
    });
}

// The inverse, adding bias[plane % channels] (may be null), overwriting or accumulating.
template <class T>
void depth_to_space(const Cells& g, std::ptrdiff_t planes, int channels, const T* coarse, const T* bias, T* fine,
                    bool accumulate) {
    using Lanes = CellLanes<T>;
    using B = typename Lanes::B;
    constexpr int L = Lanes::L;
    const std::ptrdiff_t coarse_size = std::ptrdiff_t(g.coarse.size());
    for_each_cell_row(g, planes, [&](std::ptrdiff_t plane, std::ptrdiff_t o, const std::ptrdiff_t* row, auto n) {
        constexpr int N = decltype(n)::value;
        const std::ptrdiff_t base = o + plane * (N - 1) * coarse_size;
        const T b = bias ? bias[plane % channels] : T(0);
        std::ptrdiff_t x = 0;
        for (; x + L <= g.coarse.w; x += L)
            for (int k = 0; k < N; k += 2) {
                prefetch_ahead(coarse + base + k * coarse_size + x, stream_prefetch_bytes);
                prefetch_ahead(coarse + base + (k + 1) * coarse_size + x, stream_prefetch_bytes);
                const B first = B::load_unaligned(coarse + base + k * coarse_size + x);
                const B second = B::load_unaligned(coarse + base + (k + 1) * coarse_size + x);
                for (int half = 0; half < 2; ++half) {
                    T* out = fine + row[k] + 2 * x + half * L;
                    const B v = xsimd::select(Lanes::even(), Lanes::spread(first, half), Lanes::spread(second, half));
                    const B value = v + B(b);
                    (accumulate ? B::load_unaligned(out) + value : value).store_unaligned(out);
                }
            }
        for_each_cell_from(x, g.coarse.w, o, row, n, [&](std::ptrdiff_t at, const std::ptrdiff_t* cell, auto) {
            for (int k = 0; k < N; ++k) {
                const T v = coarse[base + (at - o) + k * coarse_size] + b;
                fine[cell[k]] = accumulate ? fine[cell[k]] + v : v;
            }
        });
    });
}

template <class T>
void upsample_nearest_forward(const Cells& g, std::ptrdiff_t planes, const T* coarse, T* fine) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        for (int k = 0; k < n; ++k) fine[cell[k]] = coarse[o];
    });
}

template <class T>
void upsample_nearest_backward(const Cells& g, std::ptrdiff_t planes, const T* fine_grad, T* coarse_grad) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto n) {
        T s = 0;
        for (int k = 0; k < n; ++k) s += fine_grad[cell[k]];
        coarse_grad[o] = s;
    });
}

// Nearest down-sampling (the first voxel of each cell), as PyTorch's interpolate(scale 1/2,
// 'nearest'): label maps for deep supervision.
template <class T>
void subsample_nearest(const Cells& g, std::ptrdiff_t planes, const T* fine, T* coarse) {
    for_each_cell(g, planes, [&](std::ptrdiff_t, std::ptrdiff_t o, const std::ptrdiff_t* cell, auto) { coarse[o] = fine[cell[0]]; });
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

#ifdef LIGHTUNET_RESAMPLE_DIAGNOSTICS_PUSHED
#pragma GCC diagnostic pop
#undef LIGHTUNET_RESAMPLE_DIAGNOSTICS_PUSHED
#endif

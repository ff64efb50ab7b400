// A prototype of the next weight-gradient kernel, measured against the library's on the shapes
// of both BraTS networks (docs/performance.md, "Convolutions against the peak and oneDNN"): not
// used by the library yet. The library's direct Wgrad vectorises over voxels (3 output-gradient
// rows and 9 input rows at shifted tap offsets per 27 FMAs, unaligned, lanes reduced at the
// end); this one vectorises over output channels: the output gradient copied once into blocks of
// L channels ([block][voxel][L], aligned), each input value broadcast, accumulators = blocks of
// the weight gradient, summed per tile of voxels and added up tile by tile. Counters:
// library_ms (automatic algorithm: Winograd on large 2D planes), prototype_ms (the blocking copy
// included), both in GFLOP/s, and the largest difference relative to the largest gradient.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include <lightunet/backend/cpu/kernels.hpp>

#include "bench_main.hpp"

using namespace lightunet;

namespace {

namespace ck = cpu_kernels;
using B = ck::Batch<float>;
constexpr int L = ck::lanes<float>;
template <class T>
using aligned_vector = std::vector<T, xsimd::aligned_allocator<T, 64>>;

// dw_blk[block][k][lane] += sum over the run of g_blk[block][q][lane] * x_pad[k / taps][q + offset(k % taps)]
template <int R, int P>
void wgrad_by_output_channels(const ck::PaddedLayout& l, int cin, int cout, const float* x_pad, const float* g_blk,
                              float* dw_blk) {
    const int k_count = cin * l.taps, blocks = (cout + L - 1) / L;
    const int row_items = (blocks + R - 1) / R, pair_items = (k_count + P - 1) / P;
    constexpr std::ptrdiff_t tile = 512;
    ck::parallel_for(std::ptrdiff_t(row_items) * pair_items, [&](std::ptrdiff_t item) {
        const int rb = int(item / pair_items), pb = int(item % pair_items);
        const float* x_at[P];
        for (int p = 0; p < P; ++p) {
            const int k = std::min(pb * P + p, k_count - 1);
            x_at[p] = x_pad + (k / l.taps) * l.stride + l.tap_offset[k % l.taps] + l.run_begin;
        }
        const float* g_at[R];
        for (int r = 0; r < R; ++r) g_at[r] = g_blk + std::ptrdiff_t(std::min(rb * R + r, blocks - 1)) * l.run_length * L;
        B total[R][P];
        detail::static_for<R>([&](auto r) { detail::static_for<P>([&](auto p) { total[r][p] = B(0.f); }); });
        for (std::ptrdiff_t q0 = 0; q0 < l.run_length; q0 += tile) {
            const std::ptrdiff_t q1 = std::min(l.run_length, q0 + tile);
            B acc[R][P];
            detail::static_for<R>([&](auto r) { detail::static_for<P>([&](auto p) { acc[r][p] = B(0.f); }); });
            for (std::ptrdiff_t q = q0; q < q1; ++q) {
                B g[R];
                detail::static_for<R>([&](auto r) { g[r] = B::load_aligned(g_at[r] + q * L); });
                detail::static_for<P>([&](auto p) {
                    const B x(x_at[p][q]);
                    detail::static_for<R>([&](auto r) { acc[r][p] = xsimd::fma(g[r], x, acc[r][p]); });
                });
            }
            detail::static_for<R>([&](auto r) { detail::static_for<P>([&](auto p) { total[r][p] += acc[r][p]; }); });
        }
        for (int r = 0; r < R && rb * R + r < blocks; ++r)
            for (int p = 0; p < P && pb * P + p < k_count; ++p) {
                float* at = dw_blk + (std::ptrdiff_t(rb * R + r) * k_count + pb * P + p) * L;
                (B::load_aligned(at) + total[r][p]).store_aligned(at);
            }
    });
}

void wgrad_prototype(benchmark::State& state) {
    const int dims = int(state.range(0)), size = int(state.range(1)), cin = int(state.range(2)), cout = int(state.range(3));
    const ConvProblem p = dims == 3 ? ConvProblem{{size, size, size}, 3, 3, 3, cin, cout} : ConvProblem{{1, size, size}, 1, 3, 3, cin, cout};
    const std::size_t S = p.extent.size();
    std::vector<float> x(cin * S), g(cout * S);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i % 10007));
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::cos(0.11f * float(i % 10009));
    std::vector<float> w(p.weight_count(), 0.01f), dw(w.size()), db(cout), ws(Kernels<cpu>::conv_workspace_size<float>(p));
    const ChannelSource<float> src{x.data(), cin, std::ptrdiff_t(x.size())}, grad{g.data(), cout, std::ptrdiff_t(g.size())};
    const ChannelSink<float> no_input_gradient{nullptr, cin, std::ptrdiff_t(x.size()), false};
    const ck::PaddedLayout l = ck::padded_layout(p);
    const int blocks = (cout + L - 1) / L, k_count = cin * l.taps;
    aligned_vector<float> x_pad(std::size_t(cin) * l.stride), g_pad(std::size_t(cout) * l.stride);
    aligned_vector<float> g_blk(std::size_t(blocks) * l.run_length * L), dw_blk(std::size_t(blocks) * k_count * L);
    std::vector<float> dw_prototype(w.size());
    auto library = [&] {
        std::fill(dw.begin(), dw.end(), 0.f);
        Kernels<cpu>::conv_backward<float>(p, 1, {&src, 1}, w.data(), g.data(), 0, {&no_input_gradient, 1}, dw.data(), db.data(),
                                           ws.data());
    };
    auto prototype = [&] {
        ck::pad_sources(l, std::span<const ChannelSource<float>>(&src, 1), 0, x_pad.data());
        ck::pad_sources(l, std::span<const ChannelSource<float>>(&grad, 1), 0, g_pad.data());
        ck::parallel_for(blocks, [&](std::ptrdiff_t b) {
            for (std::ptrdiff_t q = 0; q < l.run_length; ++q)
                for (int j = 0; j < L; ++j) {
                    const int o = int(b) * L + j;
                    g_blk[std::size_t((b * l.run_length + q) * L + j)] = o < cout ? g_pad[std::size_t(o) * l.stride + l.run_begin + q] : 0.f;
                }
        });
        std::fill(dw_blk.begin(), dw_blk.end(), 0.f);
        constexpr int P = ck::wide_register_file ? 12 : 6;
        if (blocks >= 2) wgrad_by_output_channels<2, P>(l, cin, cout, x_pad.data(), g_blk.data(), dw_blk.data());
        else wgrad_by_output_channels<1, 2 * P>(l, cin, cout, x_pad.data(), g_blk.data(), dw_blk.data());
        for (int o = 0; o < cout; ++o)
            for (int k = 0; k < k_count; ++k) dw_prototype[std::size_t(o) * k_count + k] = dw_blk[(std::size_t(o / L) * k_count + k) * L + o % L];
    };
    using clock = std::chrono::steady_clock;
    double library_s = 0, prototype_s = 0;
    for (auto _ : state) {
        auto t0 = clock::now();
        library();
        auto t1 = clock::now();
        prototype();
        auto t2 = clock::now();
        library_s += std::chrono::duration<double>(t1 - t0).count();
        prototype_s += std::chrono::duration<double>(t2 - t1).count();
    }
    double largest = 0, worst = 0;
    for (std::size_t i = 0; i < dw.size(); ++i) {
        largest = std::max(largest, double(std::abs(dw[i])));
        worst = std::max(worst, double(std::abs(dw[i] - dw_prototype[i])));
    }
    const double calls = double(state.iterations()), flops = p.flops_per_image();
    state.counters["library_ms"] = 1e3 * library_s / calls;
    state.counters["prototype_ms"] = 1e3 * prototype_s / calls;
    state.counters["library_GFLOPs"] = flops * calls / library_s * 1e-9;
    state.counters["prototype_GFLOPs"] = flops * calls / prototype_s * 1e-9;
    state.counters["max_rel_diff"] = worst / largest;
    state.SetLabel(Kernels<cpu>::target());
}

// The 3x3(x3) convolutions of both networks (as bench_conv's network_shapes).
void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dims", "size", "cin", "cout"});
    const int widths_2d[] = {32, 64, 128, 256, 512}, widths_3d[] = {16, 32, 64, 128, 256};
    for (int dims : {2, 3}) {
        const int* widths = dims == 2 ? widths_2d : widths_3d;
        const int top = dims == 2 ? 240 : 128;
        for (int level = 0; level < 5; ++level) {
            const int size = top >> level, width = widths[level];
            b->Args({dims, size, level == 0 ? 4 : widths[level - 1], width});
            b->Args({dims, size, width, width});
            if (level < 4) b->Args({dims, size, 2 * width, width});
        }
    }
    b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

}  // namespace

BENCHMARK(wgrad_prototype)->Apply(shapes);
LIGHTUNET_BENCHMARK_MAIN()

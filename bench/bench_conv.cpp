// Per-operation convolution throughput, reported as GFLOP/s (counter "GFLOPs").
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <vector>

#include <lightunet/backend/cpu/kernels.hpp>

#include "bench_main.hpp"

using namespace lightunet;

namespace {

// Argument "algo": 0 automatic (Winograd where it applies), 1 direct kernels only. GFLOPs counts
// the direct convolution's multiply-adds either way, so the two compare as times do.
ConvProblem problem_from(const benchmark::State& state) {
    const int dims = int(state.range(0)), size = int(state.range(1)), cin = int(state.range(2)), cout = int(state.range(3));
    const int k = int(state.range(4));
    const ConvAlgorithm a = state.range(5) == 0 ? ConvAlgorithm::automatic : ConvAlgorithm::direct;
    return dims == 3 ? ConvProblem{{size, size, size}, k, k, k, cin, cout, a} : ConvProblem{{1, size, size}, 1, k, k, cin, cout, a};
}

ConvProblem with_algorithm(ConvProblem p, ConvAlgorithm a) {
    p.algorithm = a;
    return p;
}

void conv_forward(benchmark::State& state) {
    const ConvProblem p = problem_from(state);
    std::vector<float> x(p.cin * p.extent.size(), 0.5f), y(p.cout * p.extent.size()), w(p.weight_count(), 0.01f), b(p.cout);
    std::vector<float> ws(Kernels<cpu>::conv_workspace_size<float>(p));
    const ChannelSource<float> src{x.data(), p.cin, std::ptrdiff_t(x.size())};
    for (auto _ : state) {
        Kernels<cpu>::conv_forward<float>(p, 1, {&src, 1}, w.data(), b.data(), y.data(), 0, ws.data());
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GFLOPs"] = benchmark::Counter(p.flops_per_image() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void conv_backward(benchmark::State& state) {
    const ConvProblem p = problem_from(state);
    std::vector<float> x(p.cin * p.extent.size(), 0.5f), g(p.cout * p.extent.size(), 0.1f), dx(x.size());
    std::vector<float> w(p.weight_count(), 0.01f), dw(w.size()), db(p.cout);
    std::vector<float> ws(Kernels<cpu>::conv_workspace_size<float>(p));
    const ChannelSource<float> src{x.data(), p.cin, std::ptrdiff_t(x.size())};
    const ChannelSink<float> sink{dx.data(), p.cin, std::ptrdiff_t(x.size()), false};
    for (auto _ : state) {
        Kernels<cpu>::conv_backward<float>(p, 1, {&src, 1}, w.data(), g.data(), 0, {&sink, 1}, dw.data(), db.data(), ws.data());
        benchmark::DoNotOptimize(dx.data());
    }
    state.counters["GFLOPs"] = benchmark::Counter(2 * p.flops_per_image() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Winograd (automatic) and the direct kernels alternately within each iteration: the shared
// host's speed drifts between two modes for seconds at a time, so two benchmarks run one after
// the other can disagree by 30 % on identical code. Counters: mean milliseconds per call of
// each and direct / Winograd.
void winograd_vs_direct(benchmark::State& state) {
    const ConvProblem p = with_algorithm(problem_from(state), ConvAlgorithm::automatic);
    const bool backward = state.range(5) == 1;
    std::vector<float> x(p.cin * p.extent.size(), 0.5f), y(p.cout * p.extent.size()), w(p.weight_count(), 0.01f), b(p.cout);
    std::vector<float> g(y.size(), 0.1f), dx(x.size()), dw(w.size()), db(p.cout);
    std::vector<float> ws(std::max(Kernels<cpu>::conv_workspace_size<float>(with_algorithm(p, ConvAlgorithm::direct)),
                                   Kernels<cpu>::conv_workspace_size<float>(p)));
    const ChannelSource<float> src{x.data(), p.cin, std::ptrdiff_t(x.size())};
    const ChannelSink<float> sink{dx.data(), p.cin, std::ptrdiff_t(x.size()), false};
    auto seconds = [&](ConvAlgorithm algorithm) {
        const ConvProblem q = with_algorithm(p, algorithm);
        const auto start = std::chrono::steady_clock::now();
        if (backward)
            Kernels<cpu>::conv_backward<float>(q, 1, {&src, 1}, w.data(), g.data(), 0, {&sink, 1}, dw.data(), db.data(), ws.data());
        else
            Kernels<cpu>::conv_forward<float>(q, 1, {&src, 1}, w.data(), b.data(), y.data(), 0, ws.data());
        benchmark::DoNotOptimize(backward ? dx.data() : y.data());
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    double winograd = 0, direct = 0;
    for (auto _ : state) {
        winograd += seconds(ConvAlgorithm::automatic);
        direct += seconds(ConvAlgorithm::direct);
    }
    const double calls = double(state.iterations());
    state.counters["winograd_ms"] = 1e3 * winograd / calls;
    state.counters["direct_ms"] = 1e3 * direct / calls;
    state.counters["direct_over_winograd"] = direct / winograd;
}

// The machine's FP32 FMA peak in this run, for "% of peak": independent accumulator chains per
// thread, enough to fill two FMA pipes of latency <= 6, and few enough that the chains and the
// two constants stay in registers (16 with AVX2: 16 chains spilled and halved the figure).
void fma_peak(benchmark::State& state) {
    using B = cpu_kernels::Batch<float>;
    constexpr int chains = cpu_kernels::wide_register_file ? 24 : 12;
    constexpr long steps = 1 << 22;
    for (auto _ : state) {
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
            B acc[chains];
            for (int i = 0; i < chains; ++i) acc[i] = B(float(i));
            const B m(0.999999f), c(1e-7f);
            for (long k = 0; k < steps; ++k)
                detail::static_for<chains>([&](auto i) { acc[i] = xsimd::fma(acc[i], m, c); });
            for (int i = 0; i < chains; ++i) total += xsimd::hadd(acc[i]);
        }
        benchmark::DoNotOptimize(total);
    }
    const double flops = double(steps) * chains * B::size * 2 * cpu_kernels::thread_count();
    state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// dims, spatial size, cin, cout, kernel, algorithm (2D 3x3 shapes: both, back to back)
void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dims", "size", "cin", "cout", "k", "algo"});
    for (const auto& [size, cin, cout] : {std::array{240, 4, 32}, std::array{240, 32, 32}, std::array{240, 64, 32},
                                          std::array{120, 64, 64}, std::array{120, 128, 64}, std::array{60, 128, 128},
                                          std::array{60, 256, 128}, std::array{30, 256, 256}, std::array{15, 512, 512}})
        for (int algo : {0, 1}) b->Args({2, size, cin, cout, 3, algo});
    b->Args({2, 240, 32, 4, 1, 0});
    b->Args({3, 128, 16, 16, 3, 0})->Args({3, 128, 32, 16, 3, 0})->Args({3, 64, 32, 32, 3, 0})->Args({3, 16, 128, 128, 3, 0});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// 2D U-Net shapes; the last argument: 0 forward, 1 backward (data + weight gradient).
void winograd_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dims", "size", "cin", "cout", "k", "backward"});
    for (int backward : {0, 1})
        for (const auto& [size, cin, cout] : {std::array{240, 8, 32}, std::array{240, 32, 32}, std::array{240, 64, 32},
                                              std::array{120, 64, 64}, std::array{120, 128, 64}, std::array{60, 128, 128},
                                              std::array{60, 256, 128}, std::array{30, 256, 256}, std::array{30, 512, 256},
                                              std::array{15, 512, 512}})
            b->Args({2, size, cin, cout, 3, backward});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(fma_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(conv_forward)->Apply(shapes);
BENCHMARK(conv_backward)->Apply(shapes);
BENCHMARK(winograd_vs_direct)->Apply(winograd_shapes);
LIGHTUNET_BENCHMARK_MAIN()

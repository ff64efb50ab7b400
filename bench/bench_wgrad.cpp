// The weight gradient alone (conv_backward without an input gradient) on every 3x3 convolution
// of both BraTS networks (docs/performance.md, "Convolutions against the peak and oneDNN"): the
// direct kernel (vectorised over output channels) and, for 2D, Winograd F(2x2, 3x3), alternately
// within each iteration (the shared host drifts), and the direct kernel with bf16 operands
// (vdpbf16ps or AMX tiles where the CPU has them). Counters: milliseconds and GFLOP/s of each
// (the direct convolution's multiply-adds x 2), and which one the automatic choice takes.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include <lightunet/backend/cpu/kernels.hpp>

#include "bench_main.hpp"
#include "network_shapes.hpp"

using namespace lightunet;

namespace {

void wgrad(benchmark::State& state) {
    const int dims = int(state.range(0)), size = int(state.range(1)), cin = int(state.range(2)), cout = int(state.range(3));
    auto problem = [&](ConvAlgorithm a) {
        return dims == 3 ? ConvProblem{{size, size, size}, 3, 3, 3, cin, cout, a} : ConvProblem{{1, size, size}, 1, 3, 3, cin, cout, a};
    };
    const ConvProblem direct = problem(ConvAlgorithm::direct), winograd = problem(ConvAlgorithm::winograd);
    ConvProblem bf16 = direct;
    bf16.precision = Precision::bf16;
    const bool has_winograd = cpu_kernels::use_winograd_weight_gradient<float>(winograd);
    const std::size_t S = direct.extent.size();
    std::vector<float> x(cin * S), g(cout * S), w(direct.weight_count(), 0.01f), dw(w.size()), db(cout);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i % 10007));
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::cos(0.11f * float(i % 10009));
    std::vector<float> ws(std::max({Kernels<cpu>::conv_workspace_size<float>(direct), Kernels<cpu>::conv_workspace_size<float>(winograd),
                                    Kernels<cpu>::conv_workspace_size<float>(bf16)}));
    const ChannelSource<float> src{x.data(), cin, std::ptrdiff_t(x.size())};
    const ChannelSink<float> no_input_gradient{nullptr, cin, std::ptrdiff_t(x.size()), false};
    auto run = [&](const ConvProblem& p) {
        Kernels<cpu>::conv_backward<float>(p, 1, {&src, 1}, w.data(), g.data(), 0, {&no_input_gradient, 1}, dw.data(), db.data(),
                                           ws.data());
    };
    using clock = std::chrono::steady_clock;
    double direct_s = 0, winograd_s = 0, bf16_s = 0;
    for (auto _ : state) {
        const auto t0 = clock::now();
        run(direct);
        const auto t1 = clock::now();
        if (has_winograd) run(winograd);
        const auto t2 = clock::now();
        run(bf16);
        const auto t3 = clock::now();
        direct_s += std::chrono::duration<double>(t1 - t0).count();
        winograd_s += std::chrono::duration<double>(t2 - t1).count();
        bf16_s += std::chrono::duration<double>(t3 - t2).count();
    }
    const double calls = double(state.iterations()), flops = direct.flops_per_image();
    state.counters["direct_ms"] = 1e3 * direct_s / calls;
    state.counters["direct_GFLOPs"] = flops * calls / direct_s * 1e-9;
    state.counters["bf16_ms"] = 1e3 * bf16_s / calls;
    state.counters["bf16_GFLOPs"] = flops * calls / bf16_s * 1e-9;
    if (has_winograd) {
        state.counters["winograd_ms"] = 1e3 * winograd_s / calls;
        state.counters["winograd_GFLOPs"] = flops * calls / winograd_s * 1e-9;
    }
    state.SetLabel(Kernels<cpu>::target());
}

// The 3x3(x3) convolutions of both networks (network_shapes.hpp).
void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dims", "size", "cin", "cout"});
    for_each_network_convolution([&](int dims, int size, int cin, int cout, int k) {
        if (k == 3) b->Args({dims, size, cin, cout});
    });
    b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

}  // namespace

BENCHMARK(wgrad)->Apply(shapes);
LIGHTUNET_BENCHMARK_MAIN()

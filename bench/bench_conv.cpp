// Per-operation convolution throughput, reported as GFLOP/s (counter "GFLOPs"); with oneDNN
// (Debian libdnnl-dev) found at configure time, vs_onednn times every convolution of the two
// BraTS networks in each of its three passes against oneDNN's on the same shapes.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstdint>
#include <vector>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <lightunet/backend/cpu/kernels.hpp>
#ifdef LIGHTUNET_BENCH_ONEDNN
#include <unordered_map>

#include <dnnl.hpp>
#endif

#include "bench_main.hpp"
#include "network_shapes.hpp"

using namespace lightunet;

namespace {

// Argument "algo": 0 automatic (Winograd where it applies), 1 direct kernels only, 2 bf16
// operands (direct; the kernels Kernels<cpu>::bf16_kernels() names: AMX tiles, vdpbf16ps or
// fp32 on rounded operands). GFLOPs counts the direct convolution's multiply-adds in every case,
// so they compare as times do.
ConvProblem problem_from(const benchmark::State& state) {
    const int dims = int(state.range(0)), size = int(state.range(1)), cin = int(state.range(2)), cout = int(state.range(3));
    const int k = int(state.range(4));
    const ConvAlgorithm a = state.range(5) == 0 ? ConvAlgorithm::automatic : ConvAlgorithm::direct;
    ConvProblem p = dims == 3 ? ConvProblem{{size, size, size}, k, k, k, cin, cout, a} : ConvProblem{{1, size, size}, 1, k, k, cin, cout, a};
    if (state.range(5) == 2) p.precision = Precision::bf16;
    return p;
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

#ifndef LIGHTUNET_CPU_DISPATCH
// A peak in this run: `chains` independent accumulators per thread, each `step`ped 2^22 times
// (`flops` per step of one chain), started from `start(i)` and summed by `sum` so that nothing is
// optimised away.
template <int chains, class Start, class Step, class Sum>
void chain_peak(benchmark::State& state, double flops, Start start, Step step, Sum sum) {
    constexpr long steps = 1 << 22;
    for (auto _ : state) {
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
            decltype(start(0)) acc[chains];
            for (int i = 0; i < chains; ++i) acc[i] = start(i);
            for (long k = 0; k < steps; ++k) detail::static_for<chains>([&](auto i) { acc[i] = step(acc[i]); });
            for (int i = 0; i < chains; ++i) total += sum(acc[i]);
        }
        benchmark::DoNotOptimize(total);
    }
    state.counters["GFLOPs"] = benchmark::Counter(double(steps) * chains * flops * cpu_kernels::thread_count() * 1e-9,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

// The machine's FP32 FMA peak, for "% of peak": enough chains to fill two FMA pipes of latency
// <= 6, and few enough that the chains and the two constants stay in registers (16 with AVX2: 16
// chains spilled and halved the figure).
void fma_peak(benchmark::State& state) {
    using B = cpu_kernels::Batch<float>;
    const B m(0.999999f), c(1e-7f);
    chain_peak<cpu_kernels::wide_register_file ? 24 : 12>(
        state, 2.0 * B::size, [](int i) { return B(float(i)); }, [&](const B& a) { return xsimd::fma(a, m, c); },
        [](const B& a) { return xsimd::hadd(a); });
}
#endif

#if defined(__AVX512BF16__) && !defined(LIGHTUNET_CPU_DISPATCH)
// The peak of the bf16 convolutions' instruction, vdpbf16ps (16 lanes, each adding two bf16
// products to an fp32 sum: 64 flops), in the fma_peak's terms. Whether bf16 pays on a host is
// this against fma_peak: at the FMA's instruction rate it doubles the flops; on the Intel Xeon of
// 2026-12-05 (AVX512_BF16, AMX-BF16) it ran at half the FMA's flops, and the bf16 training steps
// were slower than fp32 there.
void bf16_dot_peak(benchmark::State& state) {
    const __m512bh one = (__m512bh)_mm512_set1_epi16(0x3f80), tiny = (__m512bh)_mm512_set1_epi16(0x3380);  // 1.0, 2^-24
    chain_peak<24>(
        state, 64.0, [](int i) { return _mm512_set1_ps(float(i)); }, [&](__m512 a) { return _mm512_dpbf16_ps(a, one, tiny); },
        [](__m512 a) {
            alignas(64) float lanes[16];
            _mm512_store_ps(lanes, a);
            float s = 0;
            for (float v : lanes) s += v;
            return s;
        });
}
#endif

#if LIGHTUNET_AMX_COMPILED && !defined(LIGHTUNET_CPU_DISPATCH)
// The peak of AMX's tdpbf16ps (16 x 16 fp32 sums of 32 bf16 products each: 16384 flops), four
// independent accumulator tiles per thread on register-resident operands, in the same terms.
__attribute__((target("amx-tile,amx-bf16"))) void amx_chains(long steps) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (long k = 0; k < steps; ++k) {
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 5, 6);
    }
}
void amx_peak(benchmark::State& state) {
    if (!cpu_kernels::amx_runs()) {
        state.SkipWithError("no AMX tiles here (or LIGHTUNET_CPU_AMX=0)");
        return;
    }
    constexpr long steps = 1 << 16;
    cpu_kernels::AmxTileConfig config;  // every tile 16 rows of 64 bytes
    for (int tile = 0; tile < 8; ++tile) config.shape(tile, 16, 64);
    for (auto _ : state) {
#pragma omp parallel
        {
            cpu_kernels::amx_load_config(config);
            amx_chains(steps);
            cpu_kernels::amx_release();
        }
    }
    state.counters["GFLOPs"] = benchmark::Counter(double(steps) * 4 * 16384 * cpu_kernels::thread_count() * 1e-9,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}
#endif

// dims, spatial size, cin, cout, kernel, algorithm (2D 3x3 shapes: both, back to back)
void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dims", "size", "cin", "cout", "k", "algo"});
    for (const auto& [size, cin, cout] : {std::array{240, 4, 32}, std::array{240, 32, 32}, std::array{240, 64, 32},
                                          std::array{120, 64, 64}, std::array{120, 128, 64}, std::array{60, 128, 128},
                                          std::array{60, 256, 128}, std::array{30, 256, 256}, std::array{15, 512, 512}})
        for (int algo : {0, 1, 2}) b->Args({2, size, cin, cout, 3, algo});
    b->Args({2, 240, 32, 4, 1, 0});
    for (int algo : {0, 2})
        b->Args({3, 128, 16, 16, 3, algo})->Args({3, 128, 32, 16, 3, algo})->Args({3, 64, 32, 32, 3, algo})->Args({3, 16, 128, 128, 3, algo});
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


#ifdef LIGHTUNET_BENCH_ONEDNN
// One convolution in oneDNN: forward, backward data and backward weights, each in the layouts
// oneDNN prefers (format `any`: blocked, e.g. nChw16c) and the algorithm it picks
// (convolution_auto), with the reorders a framework would do once left out: oneDNN at its best.
// With p.precision bf16 the operands oneDNN multiplies (source, weights, output gradient) are
// bf16 already and what it produces (output, input and weight gradients) is fp32, as ours: ours
// rounds its fp32 operands to bf16 inside the call, oneDNN is handed them rounded.
class OneDnnConvolution {
public:
    explicit OneDnnConvolution(const ConvProblem& p) {
        using namespace dnnl;
        using dt = memory::data_type;
        const dt operand = p.precision == Precision::bf16 ? dt::bf16 : dt::f32;
        const bool volume = p.kd > 1 || p.extent.d > 1;
        const memory::dim d = p.extent.d, h = p.extent.h, w = p.extent.w;
        auto dims = [&](memory::dim channels) {
            return volume ? memory::dims{1, channels, d, h, w} : memory::dims{1, channels, h, w};
        };
        const memory::dims weights = volume ? memory::dims{p.cout, p.cin, p.kd, p.kh, p.kw} : memory::dims{p.cout, p.cin, p.kh, p.kw};
        const memory::dims strides = volume ? memory::dims{1, 1, 1} : memory::dims{1, 1};
        const memory::dims padding = volume ? memory::dims{p.kd / 2, p.kh / 2, p.kw / 2} : memory::dims{p.kh / 2, p.kw / 2};
        auto any = [](const memory::dims& x, dt type) { return memory::desc(x, type, memory::format_tag::any); };
        const memory::desc bias({p.cout}, dt::f32, memory::format_tag::a);
        const auto forward_pd = convolution_forward::primitive_desc(
            convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_auto, any(dims(p.cin), operand),
                                      any(weights, operand), bias, any(dims(p.cout), dt::f32), strides, padding, padding),
            engine_);
        const auto data_pd = convolution_backward_data::primitive_desc(
            convolution_backward_data::desc(algorithm::convolution_auto, any(dims(p.cin), dt::f32), any(weights, operand),
                                            any(dims(p.cout), operand), strides, padding, padding),
            engine_, forward_pd);
        const auto weights_pd = convolution_backward_weights::primitive_desc(
            convolution_backward_weights::desc(algorithm::convolution_auto, any(dims(p.cin), operand), any(weights, dt::f32), bias,
                                               any(dims(p.cout), operand), strides, padding, padding),
            engine_, forward_pd);
        implementation_ = std::string(forward_pd.impl_info_str()) + " / " + data_pd.impl_info_str() + " / " + weights_pd.impl_info_str();
        forward_ = convolution_forward(forward_pd);
        data_ = convolution_backward_data(data_pd);
        weights_ = convolution_backward_weights(weights_pd);
        forward_args_ = {{DNNL_ARG_SRC, filled(forward_pd.src_desc(), 0.5f)}, {DNNL_ARG_WEIGHTS, filled(forward_pd.weights_desc(), 0.01f)},
                         {DNNL_ARG_BIAS, filled(bias, 0.0f)}, {DNNL_ARG_DST, filled(forward_pd.dst_desc(), 0.0f)}};
        data_args_ = {{DNNL_ARG_DIFF_DST, filled(data_pd.diff_dst_desc(), 0.1f)}, {DNNL_ARG_WEIGHTS, filled(data_pd.weights_desc(), 0.01f)},
                      {DNNL_ARG_DIFF_SRC, filled(data_pd.diff_src_desc(), 0.0f)}};
        weights_args_ = {{DNNL_ARG_SRC, filled(weights_pd.src_desc(), 0.5f)}, {DNNL_ARG_DIFF_DST, filled(weights_pd.diff_dst_desc(), 0.1f)},
                         {DNNL_ARG_DIFF_WEIGHTS, filled(weights_pd.diff_weights_desc(), 0.0f)},
                         {DNNL_ARG_DIFF_BIAS, filled(bias, 0.0f)}};
    }
    void forward() { run(forward_, forward_args_); }
    void backward_data() { run(data_, data_args_); }
    void backward_weights() { run(weights_, weights_args_); }
    const std::string& implementation() const { return implementation_; }

private:
    dnnl::memory filled(const dnnl::memory::desc& desc, float value) {
        dnnl::memory m(desc, engine_);
        if (desc.data_type() == dnnl::memory::data_type::bf16) {
            std::uint16_t* data = static_cast<std::uint16_t*>(m.get_data_handle());
            std::fill(data, data + desc.get_size() / sizeof(std::uint16_t), std::uint16_t(std::bit_cast<std::uint32_t>(value) >> 16));
        } else {
            float* data = static_cast<float*>(m.get_data_handle());
            std::fill(data, data + desc.get_size() / sizeof(float), value);
        }
        return m;
    }
    void run(dnnl::primitive& primitive, const std::unordered_map<int, dnnl::memory>& args) {
        primitive.execute(stream_, args);
        stream_.wait();
    }
    dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream_{engine_};
    dnnl::primitive forward_, data_, weights_;
    std::unordered_map<int, dnnl::memory> forward_args_, data_args_, weights_args_;
    std::string implementation_;
};

// Each pass of ours and oneDNN's in turn within every iteration (the shared host's speed drifts
// for seconds at a time). Counters per pass (fwd, dgrad, wgrad): GFLOP/s of each side (the direct
// convolution's multiply-adds, whatever the algorithm) and ours / oneDNN's time; the label names
// oneDNN's implementations and the target our kernels ran.
void vs_onednn(benchmark::State& state) {
    const ConvProblem p = problem_from(state);
    std::vector<float> x(p.cin * p.extent.size(), 0.5f), y(p.cout * p.extent.size()), g(y.size(), 0.1f), dx(x.size());
    std::vector<float> w(p.weight_count(), 0.01f), b(p.cout), dw(w.size()), db(p.cout);
    std::vector<float> ws(Kernels<cpu>::conv_workspace_size<float>(p));
    const ChannelSource<float> src{x.data(), p.cin, std::ptrdiff_t(x.size())};
    const ChannelSink<float> sink{dx.data(), p.cin, std::ptrdiff_t(x.size()), false};
    const ChannelSink<float> no_sink{nullptr, p.cin, std::ptrdiff_t(x.size()), false};
    OneDnnConvolution onednn(p);
    using clock = std::chrono::steady_clock;
    double ours[3] = {}, theirs[3] = {};
    auto timed = [](double& total, auto&& f) {
        const auto t0 = clock::now();
        f();
        total += std::chrono::duration<double>(clock::now() - t0).count();
    };
    for (auto _ : state) {
        timed(ours[0], [&] { Kernels<cpu>::conv_forward<float>(p, 1, {&src, 1}, w.data(), b.data(), y.data(), 0, ws.data()); });
        timed(theirs[0], [&] { onednn.forward(); });
        timed(ours[1], [&] {
            Kernels<cpu>::conv_backward<float>(p, 1, {&src, 1}, w.data(), g.data(), 0, {&sink, 1}, nullptr, nullptr, ws.data());
        });
        timed(theirs[1], [&] { onednn.backward_data(); });
        timed(ours[2], [&] {
            Kernels<cpu>::conv_backward<float>(p, 1, {&src, 1}, w.data(), g.data(), 0, {&no_sink, 1}, dw.data(), db.data(), ws.data());
        });
        timed(theirs[2], [&] { onednn.backward_weights(); });
        benchmark::DoNotOptimize(dx.data());
    }
    const double calls = double(state.iterations()), flops = p.flops_per_image();
    const char* pass[3] = {"fwd", "dgrad", "wgrad"};
    for (int i = 0; i < 3; ++i) {
        state.counters[std::string(pass[i]) + "_ours_GFLOPs"] = flops * calls / ours[i] * 1e-9;
        state.counters[std::string(pass[i]) + "_onednn_GFLOPs"] = flops * calls / theirs[i] * 1e-9;
        state.counters[std::string(pass[i]) + "_ours_over_onednn"] = ours[i] / theirs[i];
    }
    state.SetLabel(Kernels<cpu>::target() + (p.precision == Precision::bf16 ? ", " + Kernels<cpu>::bf16_kernels() : std::string()) +
                   "; oneDNN " + onednn.implementation());
}

// Every convolution of both networks (network_shapes.hpp): automatic algorithm (algo 0), and bf16
// operands on both sides (algo 2; where this CPU has bf16 dot products).
void network_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dims", "size", "cin", "cout", "k", "algo"});
    for_each_network_convolution([&](int dims, int size, int cin, int cout, int k) { b->Args({dims, size, cin, cout, k, 0}); });
    if (Kernels<cpu>::bf16_instructions())
        for_each_network_convolution([&](int dims, int size, int cin, int cout, int k) { b->Args({dims, size, cin, cout, k, 2}); });
    b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
}
#endif

}  // namespace

#ifndef LIGHTUNET_CPU_DISPATCH  // a portable build's own code is baseline x86-64: no peak to show
BENCHMARK(fma_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif
#if defined(__AVX512BF16__) && !defined(LIGHTUNET_CPU_DISPATCH)
BENCHMARK(bf16_dot_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif
#if LIGHTUNET_AMX_COMPILED && !defined(LIGHTUNET_CPU_DISPATCH)
BENCHMARK(amx_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif
BENCHMARK(conv_forward)->Apply(shapes);
BENCHMARK(conv_backward)->Apply(shapes);
BENCHMARK(winograd_vs_direct)->Apply(winograd_shapes);
#ifdef LIGHTUNET_BENCH_ONEDNN
BENCHMARK(vs_onednn)->Apply(network_shapes);
#endif
LIGHTUNET_BENCHMARK_MAIN()

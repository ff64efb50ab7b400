// Whole-network inference and training step for the BraTS reference workloads of
// docs/performance.md. Run one workload per process (--benchmark_filter) to read its peak RSS.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <lightunet/lightunet.hpp>

#include "bench_main.hpp"

using namespace lightunet;

namespace {

constexpr UNetConfig brats2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512},
                             .norm = Norm::batch, .act = Act::relu};
constexpr UNetConfig brats3d{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128, 256},
                             .norm = Norm::instance, .act = Act::relu};

double peak_rss_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) / 1024.0;
}

template <UNetConfig C>
void fill_input(Tensor<float>& x, Tensor<std::uint8_t>& labels) {
    InitRng rng(3);
    for (auto& v : x) v = float(rng.normal());
    for (auto& v : labels) v = std::uint8_t(rng.next() % C.classes);
}

// reprepare: the weights count as changed before every pass, so each convolution prepares
// (transforms or packs) its weights again, as inference did before it kept them.
template <UNetConfig C>
void inference(benchmark::State& state, Shape shape, bool reprepare = false, Precision precision = Precision::fp32) {
    auto net = std::make_unique<UNet<C>>(1);
    net->set_conv_precision(precision);
    Tensor<float> x(shape);
    Tensor<std::uint8_t> labels({shape.n, 1, shape.d, shape.h, shape.w});
    fill_input<C>(x, labels);
    net->predict(x);  // plans the workspace
    for (auto _ : state) {
        if (reprepare) net->weights_changed();
        benchmark::DoNotOptimize(net->predict(x).data());
    }
    state.counters["workspace_MiB"] = double(net->planned_bytes()) / (1 << 20);
    state.counters["peak_RSS_MiB"] = peak_rss_mib();
    state.counters["GFLOPs"] = benchmark::Counter(UNet<C>::forward_flops(shape) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <UNetConfig C>
void training_step(benchmark::State& state, Shape shape, Precision precision = Precision::fp32) {
    auto net = std::make_unique<UNet<C>>(1);
    net->set_conv_precision(precision);
    Tensor<float> x(shape);
    Tensor<std::uint8_t> labels({shape.n, 1, shape.d, shape.h, shape.w});
    fill_input<C>(x, labels);
    Adam<> adam(1e-4);
    net->train_step(x, labels, DiceLoss{}, adam);
    for (auto _ : state) benchmark::DoNotOptimize(net->train_step(x, labels, DiceLoss{}, adam));
    state.counters["peak_RSS_MiB"] = peak_rss_mib();
    // Forward, data gradient (none for the first convolution's input) and weight gradient.
    state.counters["GFLOPs"] = benchmark::Counter(3 * UNet<C>::forward_flops(shape) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void inference_2d(benchmark::State& s) { inference<brats2d>(s, {1, 4, 1, 240, 240}); }
void inference_2d_reprepare(benchmark::State& s) { inference<brats2d>(s, {1, 4, 1, 240, 240}, true); }
void training_step_2d(benchmark::State& s) { training_step<brats2d>(s, {8, 4, 1, 240, 240}); }
void inference_3d(benchmark::State& s) { inference<brats3d>(s, {1, 4, 128, 128, 128}); }
void training_step_3d(benchmark::State& s) { training_step<brats3d>(s, {1, 4, 128, 128, 128}); }
// Precision::bf16 convolutions (bf16_kernels in the context says which kernels ran them).
void inference_2d_bf16(benchmark::State& s) { inference<brats2d>(s, {1, 4, 1, 240, 240}, false, Precision::bf16); }
void training_step_2d_bf16(benchmark::State& s) { training_step<brats2d>(s, {8, 4, 1, 240, 240}, Precision::bf16); }
void inference_3d_bf16(benchmark::State& s) { inference<brats3d>(s, {1, 4, 128, 128, 128}, false, Precision::bf16); }
void training_step_3d_bf16(benchmark::State& s) { training_step<brats3d>(s, {1, 4, 128, 128, 128}, Precision::bf16); }

}  // namespace

// 2D: 240x240 slice, batch 1 (inference) and 8 (training). 3D: 128^3 patch, batch 1.
BENCHMARK(inference_2d)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);
BENCHMARK(inference_2d_reprepare)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);
BENCHMARK(training_step_2d)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(inference_3d)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(training_step_3d)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(inference_2d_bf16)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);
BENCHMARK(training_step_2d_bf16)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(inference_3d_bf16)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(training_step_3d_bf16)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
LIGHTUNET_BENCHMARK_MAIN()

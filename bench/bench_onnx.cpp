// lightunet inference of the BraTS program's networks (examples/brats/models.hpp: the 2D slice
// network, regions head, and the 3D patch network), against ONNX Runtime running the same
// weights exported with lightunet::export_onnx (bench/bench_onnx.sh runs both sides).
//
//   bench_onnx --export DIR    writes DIR/brats_2d.onnx, brats_3d.onnx (fixed shapes, seeded
//                              weights) and their inputs DIR/brats_{2d,3d}.input.f32, then exits
//   bench_onnx [--threads 2] [Google Benchmark flags]   times UNet::predict on the same inputs
// Shapes: 2D 1x4x240x240, 3D 1x4x128x128x128 (LIGHTUNET_BENCH_3D=96 or 64 for a smaller cube).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <lightunet/io/onnx_export.hpp>
#include <lightunet/lightunet.hpp>

#include "../examples/brats/models.hpp"

using namespace lightunet;

namespace {

int threads = 2;

int cube() {
    const char* e = std::getenv("LIGHTUNET_BENCH_3D");
    return e && *e ? std::atoi(e) : 128;
}
Shape shape_2d() { return {1, 4, 1, 240, 240}; }
Shape shape_3d() { return {1, 4, cube(), cube(), cube()}; }

// The same seeded weights and input on both sides (seed 1 as bench_unet; biases zero, norms unit:
// the weights do not change the time of either side).
Tensor<float> input(const Shape& s) {
    Tensor<float> x(s);
    InitRng rng(3);
    for (auto& v : x) v = float(rng.normal());
    return x;
}

template <UNetConfig C>
void export_one(const std::filesystem::path& dir, const std::string& name, const Shape& s) {
    auto model = std::make_unique<UNet<C>>(1);
    OnnxOptions o;
    o.input_shape = s;
    export_onnx(*model, dir / (name + ".onnx"), o);
    const Tensor<float> x = input(s);
    std::ofstream f(dir / (name + ".input.f32"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(x.data()), std::streamsize(x.size() * sizeof(float)));
    if (!f) throw std::runtime_error((dir / (name + ".input.f32")).string() + ": cannot write");
    std::printf("%s %s\n", (dir / (name + ".onnx")).c_str(), s.str().c_str());
}

template <UNetConfig C>
void inference(benchmark::State& state, Shape shape) {
    auto net = std::make_unique<UNet<C>>(1);
    net->set_threads(threads);
    const Tensor<float> x = input(shape);
    net->predict(x);  // plans the workspace
    for (auto _ : state) benchmark::DoNotOptimize(net->predict(x).data());
    state.counters["GFLOPs"] = benchmark::Counter(UNet<C>::forward_flops(shape) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::string(xsimd::default_arch::name()) + ", " + std::to_string(threads) + " threads");
}

void brats_2d_240(benchmark::State& s) { inference<brats::slice2d_regions>(s, shape_2d()); }
void brats_3d(benchmark::State& s) { inference<brats::patch3d_regions>(s, shape_3d()); }

}  // namespace

BENCHMARK(brats_2d_240)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);
BENCHMARK(brats_3d)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

int main(int argc, char** argv) {
    std::vector<char*> rest{argv[0]};
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--export") && i + 1 < argc) {
            const std::filesystem::path dir = argv[++i];
            std::filesystem::create_directories(dir);
            export_one<brats::slice2d_regions>(dir, "brats_2d", shape_2d());
            export_one<brats::patch3d_regions>(dir, "brats_3d", shape_3d());
            return 0;
        }
        if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
        else rest.push_back(argv[i]);
    }
    int n = int(rest.size());
    benchmark::Initialize(&n, rest.data());
    if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

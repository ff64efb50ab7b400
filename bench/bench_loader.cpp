// PatchLoader throughput for the BraTS training configurations, from a MemorySource of
// synthetic 240 x 240 x 155 cases (z-scored inside the brain, as the store holds them):
// 2D = batches of 8 axial 240 x 240 slices, 3D = batches of one 128^3 patch; full augmentation,
// a third of the patches centred on tumour. A training step must never wait on the loader: on
// this project's 2-core machine a 2D step of batch 8 takes ~3-6 s and a 3D step ~8 s.
//   workers:N  background threads (0: the batch is prepared inside next(), i.e. the cost one
//              core pays per batch)
//   items_per_second = patches per second delivered to the consumer.
#include <benchmark/benchmark.h>

#include <lightunet/data/loader.hpp>
#include <lightunet/data/memory_source.hpp>
#include <lightunet/data/synthetic.hpp>

using namespace lightunet;
using namespace lightunet::data;

namespace {

const MemorySource& brats_cases() {
    static const MemorySource source(synthetic_cases(SyntheticConfig::brats(), 1000, 4), {.normalize = true});
    return source;
}

void loader_throughput(benchmark::State& state, Extent patch, int batch) {
    LoaderConfig config;
    config.patch = patch;
    config.batch = batch;
    config.workers = int(state.range(0));
    config.queue_depth = 4;
    config.batches_per_epoch = 1000;
    PatchLoader loader(brats_cases(), config);
    Batch b;
    loader.next(b);  // first batch: thread start-up and buffer allocation
    for (auto _ : state) {
        loader.next(b);
        benchmark::DoNotOptimize(b.images.data());
    }
    state.SetItemsProcessed(state.iterations() * batch);
}

void BM_loader_2d_batch8_240x240(benchmark::State& state) { loader_throughput(state, {1, 240, 240}, 8); }
void BM_loader_3d_batch1_128cubed(benchmark::State& state) { loader_throughput(state, {128, 128, 128}, 1); }

void BM_synthetic_case_240x240x155(benchmark::State& state) {
    std::uint64_t seed = 0;
    for (auto _ : state) benchmark::DoNotOptimize(generate_synthetic_case(SyntheticConfig::brats(), seed++).brats.images.data());
    state.SetItemsProcessed(state.iterations());
}

}  // namespace

// Past the queue's depth the consumer waits for the workers, so the rate is their steady state.
BENCHMARK(BM_loader_2d_batch8_240x240)->Arg(0)->Arg(2)->MinTime(2.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_loader_3d_batch1_128cubed)->Arg(0)->Arg(2)->MinTime(2.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_synthetic_case_240x240x155)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();

// Whole-program speed of the BraTS program's 2D recipe (brats train --model 2d --patch 160x192
// --batch 8 --threads 2): a training step fed by the real loader from a store on disk, against
// the same step on a batch already in memory (what bench_unet measures). The difference is what
// the program adds around the convolutions: reading the store (HDF5, one process-wide lock,
// chunks decompressed), sampling and augmentation, and the loader thread's share of the 2 cores.
//
// Store: $LIGHTUNET_BENCH_STORE (an existing store), else the cases of $LIGHTUNET_BENCH_CASES
// (default ../shared/data/brats2018, the 8 real BraTS 2018 cases) converted once into
// $TMPDIR/lightunet_bench_program/store.h5, else 8 synthetic 240 x 240 x 155 cases written there.
//   step_fed/workers:W  loader.next() + train_step, W loader threads (the program's default: 1)
//   step_in_memory      train_step on one batch drawn before timing
//   loader_alone/workers:W  loader.next() alone: batches per second the loader delivers
//   loader_alone_3d     the 3D program's loader (128^3 patches, batch 2) on the same store
// Counters: ms_waiting = time per step spent inside loader.next(); cpu_percent = process CPU
// time over wall time (200 = both cores busy); faults_per_step = minor page faults per step (memory
// touched for the first time: an allocation-free step has none); switches_per_step = context switches
// per step, all threads (a thread sleeping at a barrier and woken again).
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <lightunet/data/loader.hpp>
#include <lightunet/data/synthetic.hpp>
#include <lightunet/io/store.hpp>
#include <lightunet/model/unet.hpp>
#include <lightunet/optim/optimizers.hpp>

#include "bench_main.hpp"

#include "../examples/brats/models.hpp"

using namespace lightunet;
namespace fs = std::filesystem;

namespace {

constexpr UNetConfig net = brats::slice2d_regions;
using Model = UNet<net>;
constexpr int threads = 2, batch = 8;
constexpr Extent patch{1, 160, 192};

fs::path bench_dir() {
    const char* tmp = std::getenv("TMPDIR");
    return fs::path(tmp && *tmp ? tmp : "/tmp") / "lightunet_bench_program";
}

// The store every benchmark reads, made once per process (and reused across processes).
const io::StoreSource& store() {
    static const std::unique_ptr<io::StoreSource> source = [] {
        if (const char* given = std::getenv("LIGHTUNET_BENCH_STORE"); given && *given) {
            std::fprintf(stderr, "bench_program: store %s\n", given);
            return std::make_unique<io::StoreSource>(fs::path(given));
        }
        io::ConvertOptions options;
        std::string name = "store";
        // LIGHTUNET_BENCH_CHUNK=x,y,z[,gzip]: the store's layout (default: the program's).
        if (const char* chunk = std::getenv("LIGHTUNET_BENCH_CHUNK"); chunk && *chunk) {
            int gzip = options.store.gzip_level;
            if (std::sscanf(chunk, "%d,%d,%d,%d", &options.store.chunk[0], &options.store.chunk[1], &options.store.chunk[2], &gzip) < 3)
                throw std::invalid_argument(std::string("LIGHTUNET_BENCH_CHUNK=") + chunk + ": expected x,y,z[,gzip]");
            options.store.gzip_level = gzip;
            name += std::string("_") + chunk;
        }
        fs::create_directories(bench_dir());
        const fs::path file = bench_dir() / (name + ".h5");
        const char* cases_env = std::getenv("LIGHTUNET_BENCH_CASES");
        const fs::path cases = cases_env && *cases_env ? fs::path(cases_env) : fs::path("../shared/data/brats2018");
        if (fs::is_directory(cases)) {
            if (!io::store_reuse_problem(file, cases, options).empty()) io::convert_to_store(cases, file, options);
            std::fprintf(stderr, "bench_program: store %s of %s\n", file.c_str(), fs::absolute(cases).c_str());
        } else if (!fs::exists(file)) {
            io::StoreWriter writer(file, options.store);
            for (std::uint64_t seed = 0; seed < 8; ++seed)
                writer.add(data::generate_synthetic_case(data::SyntheticConfig::brats(), seed).brats, data::Edition::brats2017_2021, {});
            writer.finish();
            std::fprintf(stderr, "bench_program: store %s of 8 synthetic cases (%s not found)\n", file.c_str(), cases.c_str());
        }
        return std::make_unique<io::StoreSource>(file);
    }();
    return *source;
}

data::LoaderConfig loader_config(int workers) {
    data::LoaderConfig c;
    c.patch = patch;
    c.batch = batch;
    c.foreground_fraction = 0.33;
    c.labels = data::LabelFormat::regions;
    c.batches_per_epoch = 1000000;
    c.workers = workers;
    c.queue_depth = 2;
    c.seed = 1;
    return c;
}

// The loss brats train uses with regions: Dice over the batch + BCE, background included.
DiceLoss program_loss() {
    DiceLoss loss;
    loss.ce_weight = 1.0;
    loss.include_background = true;
    loss.batch_dice = true;
    return loss;
}

// The process's CPU time, minor page faults (memory touched for the first time: a step that
// allocates nothing takes none) and context switches of all threads (a thread sleeping at a
// barrier or lock, or preempted, and woken again), from one getrusage.
struct Usage {
    double cpu_seconds = 0, faults = 0, switches = 0;
    static Usage now() {
        rusage u{};
        getrusage(RUSAGE_SELF, &u);
        return {double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec),
                double(u.ru_minflt), double(u.ru_nvcsw + u.ru_nivcsw)};
    }
};

using Clock = std::chrono::steady_clock;

// Usage and wall time from construction to report().
struct Meter {
    Usage start = Usage::now();
    Clock::time_point t0 = Clock::now();

    void report(benchmark::State& state, double waiting, bool count_flops = true) const {
        const Usage end = Usage::now();
        const double steps = double(state.iterations());
        const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
        state.counters["cpu_percent"] = 100.0 * (end.cpu_seconds - start.cpu_seconds) / wall;
        state.counters["faults_per_step"] = (end.faults - start.faults) / steps;
        state.counters["switches_per_step"] = (end.switches - start.switches) / steps;
        if (!count_flops) return;
        state.counters["ms_waiting"] = 1e3 * waiting / steps;
        state.counters["GFLOPs"] = benchmark::Counter(3.0 * double(Model::forward_flops(Shape{batch, 4, 1, patch.h, patch.w})) * steps,
                                                      benchmark::Counter::kIsRate);
    }
};

void step_fed(benchmark::State& state) {
    Kernels<cpu>::set_threads(threads);
    data::PatchLoader loader(store(), loader_config(int(state.range(0))));
    Model model(1);
    Adam<float> opt(1e-3);
    const DiceLoss loss = program_loss();
    data::Batch b;
    for (int warm = 0; warm < 2; ++warm) {  // planning and buffers
        loader.next(b);
        model.train_step(b.images, b.labels, loss, opt);
    }
    double waiting = 0;
    const Meter meter;
    for (auto _ : state) {
        const auto w0 = Clock::now();
        loader.next(b);
        waiting += std::chrono::duration<double>(Clock::now() - w0).count();
        benchmark::DoNotOptimize(model.train_step(b.images, b.labels, loss, opt));
    }
    meter.report(state, waiting);
}

void step_in_memory(benchmark::State& state) {
    Kernels<cpu>::set_threads(threads);
    data::Batch b;
    {
        data::PatchLoader loader(store(), loader_config(0));
        loader.next(b);
    }
    Model model(1);
    Adam<float> opt(1e-3);
    const DiceLoss loss = program_loss();
    for (int warm = 0; warm < 2; ++warm) model.train_step(b.images, b.labels, loss, opt);
    const Meter meter;
    for (auto _ : state) benchmark::DoNotOptimize(model.train_step(b.images, b.labels, loss, opt));
    meter.report(state, 0);
}

// loader.next() alone, batches of c.batch patches.
void time_loader(benchmark::State& state, const data::LoaderConfig& c) {
    data::PatchLoader loader(store(), c);
    data::Batch b;
    loader.next(b);
    const Meter meter;
    for (auto _ : state) {
        loader.next(b);
        benchmark::DoNotOptimize(b.images.data());
    }
    meter.report(state, 0, false);
    state.SetItemsProcessed(state.iterations() * c.batch);
}

void loader_alone(benchmark::State& state) { time_loader(state, loader_config(int(state.range(0)))); }

// The 3D program's loader on the same store (patch 128^3, batch 2): what a store layout chosen
// for 2D slices costs 3D patches.
void loader_alone_3d(benchmark::State& state) {
    data::LoaderConfig c = loader_config(0);
    c.patch = Extent{128, 128, 128};
    c.batch = 2;
    time_loader(state, c);
}

}  // namespace

BENCHMARK(step_fed)->ArgName("workers")->Arg(1)->Arg(0)->Arg(2)->MinTime(10.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(step_in_memory)->MinTime(10.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(loader_alone)->ArgName("workers")->Arg(0)->Arg(1)->MinTime(3.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(loader_alone_3d)->MinTime(3.0)->UseRealTime()->Unit(benchmark::kMillisecond);

LIGHTUNET_BENCHMARK_MAIN()

// Every HDF5 call of ours, the store's and the checkpoints', holds io's one lock, so a libhdf5
// built without thread-safety (HDF5's default; Debian 12's is built thread-safe) is never
// entered from two threads. The first test checks that checkpoint I/O waits for that lock; the
// second does what a training run does when a time-based autosave lands while the loader's
// threads read the store: loader workers and two more reader threads read the store nonstop
// while the main thread saves, reads and loads checkpoints, and every batch, region and
// checkpoint must come back exactly as when read alone.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <thread>

#include "lightunet/data/loader.hpp"
#include "lightunet/io/store.hpp"
#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/train/checkpoint.hpp"
#include "../data/io_test_support.hpp"

using namespace lightunet;
using namespace lightunet::train;

namespace {
constexpr UNetConfig tiny{.dims = 2, .in_channels = 4, .classes = 4, .widths = {8, 16}};
using Net = UNet<tiny>;
}  // namespace

TEST_CASE("Checkpoint I/O waits for io's HDF5 lock", "[checkpoint][threads]") {
    test::ScratchDir dir("hdf5-lock");
    const std::string path = (dir / "c.h5").string();
    Net net(1);
    Adam<float> opt(1e-3);
    TrainState state;
    save_checkpoint(path, net, opt, state);
    const std::vector<std::pair<const char*, std::function<void()>>> operations{
        {"save_checkpoint", [&] { save_checkpoint(path, net, opt, state); }},
        {"load_checkpoint", [&] {
             Net other(2);
             Adam<float> other_opt(1e-3);
             TrainState other_state;
             load_checkpoint(path, other, other_opt, other_state);
         }},
        {"read_checkpoint_info", [&] { (void)read_checkpoint_info(path); }}};
    for (const auto& [name, operation] : operations) {
        INFO(name);
        std::atomic<bool> done{false};
        std::thread worker;
        {
            io::detail::H5Lock held;  // as a loader thread inside a store read
            worker = std::thread([&, op = operation] {
                op();
                done = true;
            });
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            CHECK_FALSE(done.load());  // it waits, even though it alone would take ~1 ms
        }
        worker.join();
        CHECK(done.load());
    }
}

TEST_CASE("Checkpoints saved and loaded while loader threads read the store", "[checkpoint][threads]") {
    test::ScratchDir dir("hdf5-threads");
    {
        io::StoreOptions options;
        options.chunk = {8, 8, 4};
        io::StoreWriter writer(dir / "store.h5", options);
        for (std::uint32_t c = 0; c < 3; ++c)
            writer.add(test::make_test_case("case_" + std::to_string(c), {40, 36, 20}, 100 + c), data::Edition::brats2017_2021, {});
        writer.finish();
    }
    const io::StoreSource store(dir / "store.h5");
    data::LoaderConfig config;
    config.patch = {1, 32, 32};
    config.batch = 2;
    config.batches_per_epoch = 1u << 20;
    config.seed = 7;
    config.queue_depth = 2;

    // What the loader gives with no other thread about: the reference.
    const int iterations = std::getenv("LIGHTUNET_RACE_ITERATIONS") ? std::atoi(std::getenv("LIGHTUNET_RACE_ITERATIONS")) : 40;
    std::vector<data::Batch> expected(static_cast<std::size_t>(iterations));
    {
        data::LoaderConfig alone = config;
        alone.workers = 0;
        data::PatchLoader loader(store, alone);
        for (auto& batch : expected) loader.next(batch);
    }
    data::Box region;
    region.begin = {3, 2, 1};
    region.end = {37, 30, 17};
    const std::size_t region_voxels = region.extent().voxels();
    std::vector<float> region_images(4 * region_voxels);
    std::vector<std::uint8_t> region_labels(region_voxels);
    store.read(1, region, region_images.data(), region_labels.data());

    std::atomic<bool> stop{false};
    std::atomic<long> reads{0}, wrong_reads{0};
    auto reader = [&] {
        std::vector<float> images(region_images.size());
        std::vector<std::uint8_t> labels(region_labels.size());
        while (!stop.load()) {
            store.read(1, region, images.data(), labels.data());
            wrong_reads += images != region_images || labels != region_labels;
            ++reads;
        }
    };
    std::thread first(reader), second(reader);

    config.workers = 2;
    data::PatchLoader loader(store, config);
    Net net(1), loaded(2);
    Adam<float> opt(1e-3), loaded_opt(1e-3);
    TrainState state, loaded_state;
    long wrong_batches = 0, wrong_checkpoints = 0;
    data::Batch batch;
    for (int i = 0; i < iterations; ++i) {
        state.global_step = i;
        net.parameters()[0] = float(i);
        const std::string path = (dir / ("c" + std::to_string(i % 2) + ".h5")).string();
        save_checkpoint(path, net, opt, state);
        wrong_checkpoints += read_checkpoint_info(path).state.global_step != i;
        load_checkpoint(path, loaded, loaded_opt, loaded_state);
        wrong_checkpoints += loaded.parameters()[0] != float(i) || loaded_state.global_step != i;
        loader.next(batch);
        const data::Batch& want = expected[std::size_t(i)];
        wrong_batches += !std::equal(batch.images.data(), batch.images.data() + batch.images.size(), want.images.data()) ||
                         !std::equal(batch.labels.data(), batch.labels.data() + batch.labels.size(), want.labels.data());
    }
    stop = true;
    first.join();
    second.join();
    INFO(iterations << " save + read + load rounds against " << reads.load() << " concurrent region reads");
    CHECK(wrong_checkpoints == 0);
    CHECK(wrong_batches == 0);
    CHECK(wrong_reads == 0);
    CHECK(reads.load() > 0);
    // LIGHTUNET_RACE_ITERATIONS=400 for the reliability table of docs/reliability.md.
    std::printf("%d checkpoint save + read + load rounds and %d loader batches (2 workers) against %ld concurrent store reads: "
                "%ld wrong checkpoints, %ld wrong batches, %ld wrong reads\n",
                iterations, iterations, reads.load(), wrong_checkpoints, wrong_batches, wrong_reads.load());
}

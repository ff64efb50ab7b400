// A full disk while checkpointing: the save fails with a message that says so and names the
// file, the previous checkpoint stays intact and loadable, no temporary file is left, and a
// training run stops with that error instead of going on without checkpoints. Runs on a small
// private tmpfs (tests/small_filesystem.hpp); reported as skipped where none can be mounted.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>

#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/train/checkpoint.hpp"
#include "lightunet/train/trainer.hpp"
#include "../small_filesystem.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::train;
namespace fs = std::filesystem;

namespace {
constexpr UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}};
using Net = UNet<tiny>;

std::vector<std::string> folder_entries(const fs::path& folder) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

// "" when the newest checkpoint in `folder` is the one of step `step` with weights all `step`.
std::string expect_intact(const CheckpointManager& manager, long step) {
    const auto latest = manager.latest();
    if (!latest || *latest != manager.path_for(step)) return "the newest loadable checkpoint is not the one of step " + std::to_string(step);
    Net loaded(99);
    Adam<float> opt(1e-3);
    TrainState state;
    load_checkpoint(*latest, loaded, opt, state);
    const auto p = loaded.parameters();
    if (state.global_step != step || !std::all_of(p.begin(), p.end(), [&](float v) { return v == float(step); }))
        return "the checkpoint of step " + std::to_string(step) + " does not hold its weights";
    return "";
}
}  // namespace

TEST_CASE("A full disk keeps the previous checkpoint and stops training with a clear message", "[checkpoint][disk_full]") {
    test::ScratchDir dir("disk_full");
    const auto run = test::run_on_small_tmpfs(dir.file("fs"), 4u << 20, [](const fs::path& root) -> std::string {
        Net net(1);
        net.set_threads(1);  // a forked child: no OpenMP pool of the parent
        Adam<float> opt(1e-3);
        const fs::path folder = root / "checkpoints";
        CheckpointManager manager(folder.string(), 3);
        TrainState state;
        state.global_step = 1;
        std::fill(net.parameters().begin(), net.parameters().end(), 1.0f);
        manager.save(net, opt, state);

        test::fill_filesystem(root / "filler");
        state.global_step = 2;
        std::fill(net.parameters().begin(), net.parameters().end(), 2.0f);
        try {
            manager.save(net, opt, state);
            return "a save on a full disk reported success";
        } catch (const CheckpointError& e) {
            const std::string message = e.what();
            if (message.find("No space left on device") == std::string::npos || message.find(manager.path_for(2)) == std::string::npos)
                return "the error does not say the disk is full and name the file: " + message;
        }
        if (folder_entries(folder) != std::vector<std::string>{"checkpoint-000000001.h5"})
            return "the failed save left files behind in " + folder.string();
        if (auto problem = expect_intact(manager, 1); !problem.empty()) return problem;

        // Training: the first autosave fails; fit stops with that error, the old checkpoint kept.
        TrainerOptions o;
        o.out = nullptr;
        o.show_progress = false;
        o.handle_signals = false;
        o.epochs = 1;
        o.checkpoint_dir = folder.string();
        o.autosave_seconds = 1e-9;
        Trainer<Net, Adam<float>> trainer(net, opt, o);
        const BatchProvider<Net> batches{[](long) { return 3L; }, [](long epoch, long index, Net::Input& x, Net::Labels& y) {
                                             test::make_blobs(5, epoch * 1000 + index, 2, 32, x, y);
                                         }};
        try {
            trainer.fit(batches);
            return "training went on while no checkpoint could be saved";
        } catch (const CheckpointError& e) {
            if (std::string(e.what()).find("No space left on device") == std::string::npos)
                return std::string("training stopped with an unclear message: ") + e.what();
        }
        if (folder_entries(folder) != std::vector<std::string>{"checkpoint-000000001.h5"})
            return "the failed autosave left files behind in " + folder.string();
        if (auto problem = expect_intact(manager, 1); !problem.empty()) return problem;

        // Space again: saving works again.
        fs::remove(root / "filler");
        std::fill(net.parameters().begin(), net.parameters().end(), 2.0f);
        manager.save(net, opt, state);
        return expect_intact(manager, 2);
    });
    if (!run.available) {
        std::cout << "SKIPPED: no private tmpfs here (" << run.reason << ")" << std::endl;
        return;
    }
    INFO(run.failure);
    CHECK(run.failure.empty());
}

// The Trainer over a process group (threads of a ThreadGroup here; tests/mpi runs brats under
// mpirun): the ranks' run follows the single-process run on the global batch, rank 0 alone
// writes, and a resume on every rank from rank 0's checkpoint continues the run exactly.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "../dist_test_support.hpp"
#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/train/trainer.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::train;
using lightunet::test::ScratchDir;
using lightunet::test::ThreadGroup;

namespace {

constexpr UNetConfig split_net{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16, 32}, .norm = Norm::batch};
using SplitNet = UNet<split_net>;
using SplitOpt = Sgd<float>;
constexpr int global_batch = 4, side = 32;

// Rank `rank` of `ranks`: its images of global batch (epoch, index); ranks = 1: all of it.
BatchProvider<SplitNet> share_of_batches(int rank, int ranks, long batches, std::uint64_t seed) {
    return {[batches](long) { return batches; },
            [=](long epoch, long index, Tensor<float>& x, Tensor<std::uint8_t>& y) {
                Tensor<float> gx;
                Tensor<std::uint8_t> gy;
                test::make_blobs(seed, epoch * 1000 + index, global_batch, side, gx, gy);
                const int local = global_batch / ranks;
                x.resize({local, 1, 1, side, side});
                y.resize({local, 1, 1, side, side});
                std::copy_n(gx.data() + std::size_t(rank) * x.size(), x.size(), x.data());
                std::copy_n(gy.data() + std::size_t(rank) * y.size(), y.size(), y.data());
            }};
}
// Validation: three batches of two images, the same on every rank (the trainer splits them).
BatchProvider<SplitNet> validation_batches() {
    return {[](long) { return 3L; },
            [](long, long index, Tensor<float>& x, Tensor<std::uint8_t>& y) { test::make_blobs(99, index, 2, side, x, y); }};
}

TrainerOptions options(const std::string& dir, long epochs, dist::Collective* group) {
    TrainerOptions o;
    o.epochs = epochs;
    o.lr = 1e-2;
    o.loss = DiceLoss{.include_background = true, .batch_dice = true, .smooth = 1e-5, .ce_weight = 1.0};
    o.checkpoint_dir = dir;
    o.show_progress = false;
    o.handle_signals = false;
    o.autosave_seconds = 0;
    o.out = nullptr;
    o.metrics_csv = dir + "/metrics.csv";
    o.collective = group;
    return o;
}

struct RankRun {
    std::vector<float> weights;
    std::vector<EpochRecord> history;
};

// Trains `ranks` replicas in a ThreadGroup for `epochs` (resuming from their checkpoints first
// when `resume`), each from the same seed.
std::vector<RankRun> train_split(int ranks, const std::string& dir, long epochs, bool resume) {
    std::vector<RankRun> runs(static_cast<std::size_t>(ranks));
    ThreadGroup group(ranks);
    group.run([&](int r, dist::Collective& c) {
        SplitNet net(5);
        SplitOpt opt(1e-2, 0.9, true);
        Trainer<SplitNet, SplitOpt> trainer(net, opt, options(dir, epochs, &c));
        if (resume) REQUIRE(trainer.resume_latest());
        const auto val = validation_batches();
        REQUIRE(trainer.fit(share_of_batches(r, ranks, 3, 21), &val).completed);
        const auto p = net.parameters();
        runs[std::size_t(r)] = {{p.begin(), p.end()}, trainer.history()};
    });
    return runs;
}

double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0, m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::abs(a[i] - b[i]))), m = std::max(m, double(std::abs(a[i])));
    return d / m;
}

}  // namespace

TEST_CASE("Training over a group of ranks follows one process on the global batch", "[trainer][distributed]") {
    ScratchDir single_dir("single"), split_dir("split");
    SplitNet net(5);
    SplitOpt opt(1e-2, 0.9, true);
    Trainer<SplitNet, SplitOpt> single(net, opt, options(single_dir.str(), 2, nullptr));
    const auto val = validation_batches();
    REQUIRE(single.fit(share_of_batches(0, 1, 3, 21), &val).completed);
    const auto p = net.parameters();
    const std::vector<float> single_weights(p.begin(), p.end());

    const auto runs = train_split(2, split_dir.str(), 2, false);
    for (const RankRun& run : runs) {
        // Summation order differs (see tests/test_distributed.cpp): float rounding, passed on
        // linearly by SGD over 6 steps.
        CHECK(relative_difference(single_weights, run.weights) < 1e-5);
        REQUIRE(run.history.size() == 2);
        for (std::size_t e = 0; e < 2; ++e) {
            CHECK(run.history[e].train_loss == Approx(single.history()[e].train_loss).epsilon(1e-5));
            CHECK(run.history[e].val_loss == Approx(single.history()[e].val_loss).epsilon(1e-5));
            for (int r = 0; r < kRegions; ++r) CHECK(run.history[e].dice[r] == Approx(single.history()[e].dice[r]).epsilon(1e-4));
        }
    }
    // The ranks agree with each other exactly: the same sums reach every rank.
    CHECK(runs[0].weights == runs[1].weights);
    // Rank 0 wrote the checkpoints and metrics, once: two epochs, two rolling checkpoints + best.
    CHECK(std::filesystem::exists(split_dir.file("metrics.csv")));
    CheckpointManager written(split_dir.str());
    CHECK(written.rolling().size() == 2);
}

TEST_CASE("Every rank resumes from rank 0's checkpoint and continues the run exactly", "[trainer][distributed][checkpoint]") {
    ScratchDir whole_dir("whole"), parts_dir("parts");
    const auto whole = train_split(2, whole_dir.str(), 2, false);
    train_split(2, parts_dir.str(), 1, false);
    const auto resumed = train_split(2, parts_dir.str(), 2, true);
    for (int r = 0; r < 2; ++r) {
        CHECK(resumed[std::size_t(r)].weights == whole[std::size_t(r)].weights);
        CHECK(resumed[std::size_t(r)].history.size() == 2);
    }
}

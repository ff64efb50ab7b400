// The Trainer, checkpoints and the sliding window with a model on the GPU (what `brats train
// --device cuda` runs): batches uploaded from host tensors, validation read back, checkpoints and
// rollback states through host copies. The same paths run without a GPU on a host-memory stand-in
// (tests/train/test_trainer_staged.cpp, bit for bit); here the GPU's fp32 results are held to the
// CPU's within the network tolerance of test_cuda_model.cu.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <lightunet/eval/sliding_window.hpp>
#include <lightunet/model/unet.hpp>
#include <lightunet/optim/optimizers.hpp>
#include <lightunet/train/checkpoint.hpp>
#include <lightunet/train/trainer.hpp>

#include "../train/train_test_support.hpp"
#include "cuda_test_support.cuh"

using namespace lightunet;
using namespace lightunet::testing;

namespace {

constexpr UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16, 32}};

template <class Model>
train::BatchProvider<Model> provider(std::uint64_t seed, long per_epoch) {
    return {[per_epoch](long) { return per_epoch; },
            [seed](long e, long k, Tensor<float>& x, Tensor<std::uint8_t>& y) { test::make_blobs(seed, e * 1000 + k, 4, 32, x, y); }};
}

train::TrainerOptions options(const std::string& checkpoints) {
    train::TrainerOptions o;
    o.out = nullptr;
    o.show_progress = false;
    o.handle_signals = false;
    o.autosave_seconds = 0;
    o.epochs = 3;
    o.lr = 1e-2;
    o.checkpoint_dir = checkpoints;
    return o;
}

std::vector<float> parameters_of(const UNet<tiny, cuda>& net) {
    std::vector<float> p(UNet<tiny, cuda>::parameter_count);
    net.copy_parameters_to_host(p);
    return p;
}

}  // namespace

std::vector<float> values(const Tensor<float>& t) { return {t.begin(), t.end()}; }

TEST_CASE("The Trainer trains a CUDA model as it trains the CPU model; checkpoints are the same files", "[cuda][trainer]") {
    test::ScratchDir dir("cuda_trainer");
    using GpuNet = UNet<tiny, cuda>;
    using CpuNet = UNet<tiny, cpu>;
    GpuNet gpu(5);
    Adam<float, cuda> gpu_opt(1e-2);
    auto gpu_options = options(dir.file("gpu"));
    std::vector<long> allocations;  // device allocations at the end of each epoch
    gpu_options.on_epoch = [&](const train::EpochRecord&) { allocations.push_back(cuda::device_allocations()); };
    train::Trainer<GpuNet, Adam<float, cuda>> gpu_trainer(gpu, gpu_opt, gpu_options);
    const auto gpu_validation = provider<GpuNet>(77, 2);
    REQUIRE(gpu_trainer.fit(provider<GpuNet>(1, 8), &gpu_validation).completed);

    CpuNet cpu(5);
    Adam<float> cpu_opt(1e-2);
    train::Trainer<CpuNet, Adam<float>> cpu_trainer(cpu, cpu_opt, options(dir.file("cpu")));
    const auto cpu_validation = provider<CpuNet>(77, 2);
    REQUIRE(cpu_trainer.fit(provider<CpuNet>(1, 8), &cpu_validation).completed);

    const auto &g = gpu_trainer.history(), &c = cpu_trainer.history();
    REQUIRE(g.size() == 3);
    REQUIRE(c.size() == 3);
    for (std::size_t e = 0; e < 3; ++e) {
        INFO("epoch " << e + 1 << ": train loss GPU " << g[e].train_loss << " CPU " << c[e].train_loss << ", validation loss GPU "
                      << g[e].val_loss << " CPU " << c[e].val_loss << ", mean Dice GPU " << g[e].mean_dice() << " CPU " << c[e].mean_dice());
        std::printf("cuda.trainer epoch %zu: train loss GPU %.6f CPU %.6f, validation loss GPU %.6f CPU %.6f, mean Dice GPU %.4f CPU %.4f\n",
                    e + 1, g[e].train_loss, c[e].train_loss, g[e].val_loss, c[e].val_loss, g[e].mean_dice(), c[e].mean_dice());
        CHECK(std::abs(g[e].train_loss - c[e].train_loss) < 1e-2 * c[e].train_loss);
        CHECK(std::abs(g[e].val_loss - c[e].val_loss) < 2e-2 * c[e].val_loss);
    }
    CHECK(g.back().train_loss < 0.8 * g.front().train_loss);  // it learns
    CHECK(allocations.size() == 3);
    CHECK(allocations[2] == allocations[1]);  // a trained shape allocates nothing more

    // The GPU run's last checkpoint in a CPU model: the GPU's weights bit for bit, its predictions
    // within the fp32 network tolerance.
    train::TrainState state;
    CpuNet from_gpu(0);
    Adam<float> opt(1e-3);
    train::load_checkpoint(*train::CheckpointManager(dir.file("gpu")).latest(), from_gpu, opt, state);
    const std::vector<float> gpu_weights = parameters_of(gpu);
    CHECK(std::vector<float>(from_gpu.parameters().begin(), from_gpu.parameters().end()) == gpu_weights);
    CHECK(state.global_step == 24);
    Tensor<float> x;
    Tensor<std::uint8_t> y;
    test::make_blobs(123, 0, 4, 32, x, y);
    Tensor<float, cuda> gx;
    copy_from_host(gx, x);
    const auto on_gpu = to_host(gpu.predict(gx));
    const double prediction_error = relative_error(values(on_gpu), values(from_gpu.predict(x)));
    std::printf("cuda.trainer: GPU-trained weights, GPU vs CPU probabilities: relative error %.3g\n", prediction_error);
    CHECK(prediction_error < 1e-4);

    // The CPU run's checkpoint resumed on the GPU: its weights exactly, then one more epoch.
    GpuNet resumed(9);
    Adam<float, cuda> resumed_opt(1e-2);
    auto more = options(dir.file("cpu"));
    more.epochs = 4;
    train::Trainer<GpuNet, Adam<float, cuda>> resumed_trainer(resumed, resumed_opt, more);
    REQUIRE(resumed_trainer.resume_latest());
    CHECK(parameters_of(resumed) == std::vector<float>(cpu.parameters().begin(), cpu.parameters().end()));
    CHECK(to_host(resumed_opt.m).size() == CpuNet::parameter_count);
    REQUIRE(resumed_trainer.fit(provider<GpuNet>(1, 8), &gpu_validation).completed);
    CHECK(resumed_trainer.history().size() == 4);
    CHECK(resumed_trainer.state().global_step == 32);

    // The sliding window on the GPU model and on its CPU copy.
    eval::SlidingWindowOptions so;
    so.patch = {1, 32, 32};
    so.mirror = true;
    const Extent volume{2, 41, 37};
    std::vector<float> images(volume.size());
    for (std::size_t i = 0; i < images.size(); ++i) images[i] = float(std::sin(0.37 * double(i)));
    std::vector<float> a(2 * volume.size()), b(2 * volume.size());
    eval::SlidingWindowPredictor<GpuNet>(gpu, so).predict(images.data(), volume, a.data());
    eval::SlidingWindowPredictor<CpuNet>(from_gpu, so).predict(images.data(), volume, b.data());
    const double window_error = relative_error(a, b);
    std::printf("cuda.trainer: sliding window GPU vs CPU: relative error %.3g\n", window_error);
    CHECK(window_error < 1e-4);
}

TEST_CASE("The watchdog rolls a CUDA model back to its last good weights", "[cuda][trainer][watchdog]") {
    test::ScratchDir dir("cuda_trainer");
    using GpuNet = UNet<tiny, cuda>;
    GpuNet net(4);
    Adam<float, cuda> opt(1e-3);
    auto o = options("");
    o.epochs = 1;
    o.use_watchdog = true;
    o.good_state_every = 5;
    o.watchdog.poll_seconds = 0.05;
    o.watchdog.watch_gpu = false;
    o.watchdog.temperature_files = {dir.file("no_such_sensor")};
    o.watchdog.energy_files = {dir.file("no_such_energy")};
    o.watchdog.log = [](const std::string&) {};
    std::vector<float> at_step5;
    bool checked = false;
    o.before_step = [&](long step) {
        if (step == 5) at_step5 = parameters_of(net);
        if (step == 7) {  // a bit flip in device memory
            auto p = parameters_of(net);
            p[10] = std::numeric_limits<float>::quiet_NaN();
            net.load_parameters_from_host(p);
        }
        if (step == 8) checked = parameters_of(net) == at_step5;
    };
    train::Trainer<GpuNet, Adam<float, cuda>> t(net, opt, o);
    const auto r = t.fit(provider<GpuNet>(2, 10));
    CHECK(r.completed);
    CHECK(r.rollbacks == 1);
    CHECK(checked);
    for (float v : parameters_of(net)) REQUIRE(std::isfinite(v));
}

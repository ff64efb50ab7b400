// The trainer, checkpoints, the rollback state and the sliding window on a model in "device"
// memory, without a GPU: staged_cpu is a backend whose memory host code must not touch
// (host_accessible = false, so every access goes through upload / download, which it counts)
// but whose kernels are the CPU's. Every staging path of a CUDA model thus runs here, and must
// give the CPU model's results bit for bit.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "lightunet/eval/sliding_window.hpp"
#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/train/checkpoint.hpp"
#include "lightunet/train/trainer.hpp"
#include "train_test_support.hpp"

namespace lightunet {
struct staged_cpu : cpu {
    static constexpr bool host_accessible = false;
    inline static std::atomic<long> uploads{0}, downloads{0};
    static void synchronize() {}
    template <class T>
    static void upload(T* dst, const T* host, std::size_t count) {
        ++uploads;
        cpu::copy(dst, host, count);
    }
    template <class T>
    static void download(T* host, const T* src, std::size_t count) {
        ++downloads;
        cpu::copy(host, src, count);
    }
};
template <>
struct Kernels<staged_cpu> : Kernels<cpu> {};
}  // namespace lightunet

using namespace lightunet;
using namespace lightunet::train;

namespace {
constexpr UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}};
using HostNet = UNet<tiny>;
using DeviceNet = UNet<tiny, staged_cpu>;
static_assert(runs_on_host<HostNet> && !runs_on_host<DeviceNet>);

template <class Model>
BatchProvider<Model> blobs(std::uint64_t seed, long per_epoch) {
    return {[per_epoch](long) { return per_epoch; },
            [seed](long epoch, long index, typename BatchProvider<Model>::Images& x, typename BatchProvider<Model>::Labels& y) {
                test::make_blobs(seed, epoch * 100000 + index, 2, 32, x, y);
            }};
}

TrainerOptions quiet_options() {
    TrainerOptions o;
    o.out = nullptr;
    o.show_progress = false;
    o.autosave_seconds = 0;
    o.handle_signals = false;
    o.epochs = 2;
    o.lr = 5e-3;
    return o;
}

std::vector<float> host_parameters_of(const DeviceNet& net) {
    std::vector<float> p(DeviceNet::parameter_count);
    net.copy_parameters_to_host(p);
    return p;
}
std::vector<float> host_parameters_of(const HostNet& net) { return {net.parameters().begin(), net.parameters().end()}; }

template <class Model>
struct Run {
    Model net{7};
    Adam<float, typename Model::backend> opt{1e-3};
    std::vector<EpochRecord> history;
    std::vector<float> parameters;

    FitResult fit(TrainerOptions o, const std::string& resume_from = "") {
        Trainer<Model, Adam<float, typename Model::backend>> t(net, opt, o);
        if (!resume_from.empty()) t.resume(resume_from);
        const auto val = blobs<Model>(99, 2);
        const FitResult r = t.fit(blobs<Model>(3, 4), &val);
        history = t.history();
        parameters = host_parameters_of(net);
        return r;
    }
};

void check_same_history(const std::vector<EpochRecord>& a, const std::vector<EpochRecord>& b) {
    REQUIRE(a.size() == b.size());
    for (std::size_t e = 0; e < a.size(); ++e) {
        CHECK(a[e].train_loss == b[e].train_loss);
        CHECK(a[e].val_loss == b[e].val_loss);
        for (int r = 0; r < kRegions; ++r) CHECK((a[e].dice[r] == b[e].dice[r] || (std::isnan(a[e].dice[r]) && std::isnan(b[e].dice[r]))));
    }
}
}  // namespace

TEST_CASE("A model in device memory trains through the Trainer as the host model does, bit for bit", "[trainer][staging]") {
    test::ScratchDir dir("staged");
    Run<HostNet> host;
    Run<DeviceNet> device;
    TrainerOptions o = quiet_options();
    o.checkpoint_dir = dir.file("host");
    host.fit(o);
    const long uploads = staged_cpu::uploads, downloads = staged_cpu::downloads;
    o.checkpoint_dir = dir.file("device");
    device.fit(o);
    // Every training batch's images and labels went up, and the validation images (their Dice is
    // counted on the host), and at each validation every folded convolution's bias and scale
    // (inference folds the batch norms into the convolutions, and an epoch changed the weights);
    // validation probabilities and checkpoints came down.
    int folded = 0;
    for (int i = 0; i < DeviceNet::Graph::op_count; ++i) folded += MemoryPlan<tiny, staged_cpu, float>::folds_next_norm(i);
    CHECK(folded == 6);  // both convolutions of each of the three blocks
    CHECK(staged_cpu::uploads - uploads == 2 * (2 * 4 + 2) + 2 * folded);
    CHECK(staged_cpu::downloads - downloads >= 2 * 2);
    check_same_history(host.history, device.history);
    CHECK(std::isfinite(host.history.back().val_loss));
    CHECK(host.history.back().val_loss < host.history.front().val_loss);  // a run that learns, not a constant
    CHECK(host.parameters == device.parameters);

    SECTION("its checkpoints are the host model's files") {
        // The device run's last checkpoint into a host model, and the host run's into a device model.
        CheckpointManager host_files(dir.file("host")), device_files(dir.file("device"));
        HostNet from_device(0);
        Adam<float> host_opt(1e-3);
        TrainState s1, s2;
        load_checkpoint(*device_files.latest(), from_device, host_opt, s1);
        CHECK(host_parameters_of(from_device) == host.parameters);
        DeviceNet from_host(0);
        Adam<float, staged_cpu> device_opt(1e-3);
        load_checkpoint(*host_files.latest(), from_host, device_opt, s2);
        CHECK(host_parameters_of(from_host) == host.parameters);
        CHECK(s1.global_step == s2.global_step);
        CHECK(to_host(device_opt.m).size() == HostNet::parameter_count);
        const auto m = to_host(device_opt.m);
        CHECK(std::equal(m.begin(), m.end(), host.opt.m.begin()));
    }
    SECTION("a run stopped on the host resumes on the device with the same result") {
        Run<HostNet> first;
        TrainerOptions stop = quiet_options();
        stop.checkpoint_dir = dir.file("switch");
        stop.stop_after_steps = 5;  // in the second epoch
        const FitResult r = first.fit(stop);
        REQUIRE(!r.completed);
        Run<DeviceNet> second;
        TrainerOptions go_on = quiet_options();
        go_on.checkpoint_dir = dir.file("switch");
        second.fit(go_on, r.last_checkpoint);
        CHECK(second.parameters == host.parameters);
        check_same_history(second.history, host.history);
    }
}

TEST_CASE("The watchdog rolls a device model back through host copies", "[trainer][staging][watchdog]") {
    test::ScratchDir dir("staged_nan");
    DeviceNet net(4);
    Adam<float, staged_cpu> opt(1e-3);
    TrainerOptions o = quiet_options();
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
        if (step == 5) at_step5 = host_parameters_of(net);
        if (step == 7) {  // a bit flip in device memory
            auto p = host_parameters_of(net);
            p[10] = std::numeric_limits<float>::quiet_NaN();
            net.load_parameters_from_host(p);
        }
        if (step == 8) checked = host_parameters_of(net) == at_step5;
    };
    Trainer t(net, opt, o);
    const auto r = t.fit(blobs<DeviceNet>(2, 10));
    CHECK(r.completed);
    CHECK(r.rollbacks == 1);
    CHECK(checked);
    for (float v : host_parameters_of(net)) REQUIRE(std::isfinite(v));
}

TEST_CASE("The sliding window predicts with a device model as with the host model", "[staging][sliding_window]") {
    HostNet host(11);
    DeviceNet device(11);
    eval::SlidingWindowOptions so;
    so.patch = {1, 32, 32};
    so.mirror = true;
    const Extent volume{3, 45, 38};
    std::vector<float> images(volume.size());
    for (std::size_t i = 0; i < images.size(); ++i) images[i] = float(std::sin(0.37 * double(i)));
    std::vector<float> a(2 * volume.size()), b(2 * volume.size());
    eval::SlidingWindowPredictor<HostNet>(host, so).predict(images.data(), volume, a.data());
    const long downloads = staged_cpu::downloads;
    eval::SlidingWindowPredictor<DeviceNet>(device, so).predict(images.data(), volume, b.data());
    CHECK(staged_cpu::downloads > downloads);
    CHECK(a == b);
}

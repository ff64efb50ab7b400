#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <thread>

#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/optim/schedule.hpp"
#include "lightunet/train/trainer.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::train;
using namespace lightunet::eval;       // DiceCounts, region_counts
using namespace lightunet::telemetry;  // Watchdog, its options and sensors

namespace {
constexpr UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}};
using Net = UNet<tiny>;

BatchProvider<Net> blobs(std::uint64_t seed, long per_epoch, int batch = 4) {
    return {[per_epoch](long) { return per_epoch; },
            [seed, batch](long epoch, long index, Net::Input& x, Net::Labels& y) {
                test::make_blobs(seed, epoch * 100000 + index, batch, 32, x, y);
            }};
}

// Collects log lines written to a FILE*.
struct Captured {
    std::FILE* f = std::tmpfile();
    ~Captured() { std::fclose(f); }
    std::string text() const {
        std::rewind(f);
        std::string s;
        for (int c; (c = std::fgetc(f)) != EOF;) s += char(c);
        return s;
    }
};

TrainerOptions quiet_options(std::FILE* out) {
    TrainerOptions o;
    o.out = out;
    o.show_progress = false;
    o.autosave_seconds = 0;
    o.handle_signals = false;
    return o;
}

bool all_finite(std::span<const float> v) {
    return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}
}  // namespace

TEST_CASE("Training reduces the loss on tiny synthetic blobs", "[trainer]") {
    test::ScratchDir dir("trainer_fit");
    Net net(1);
    net.set_threads(1);  // the machine may be shared: no spinning OpenMP barriers here
    Adam<float> opt(3e-3);
    Captured log;
    TrainerOptions o = quiet_options(log.f);
    o.epochs = 4;
    o.lr = 1e-2;
    o.metrics_csv = dir.file("m.csv");
    o.metrics_json = dir.file("m.json");
    o.curves_png = dir.file("c.png");
    Trainer trainer(net, opt, o);
    const auto val = blobs(999, 2);
    const auto before = trainer.validate(val, 0);
    const auto r = trainer.fit(blobs(1, 12), &val);
    CHECK(r.completed);
    CHECK(r.global_step == 48);
    const auto& h = trainer.history();
    REQUIRE(h.size() == 4);
    CHECK(h.back().train_loss < 0.7 * h.front().train_loss);
    CHECK(h.back().val_loss < 0.7 * before.first);
    CHECK(h.back().dice[0] > 0.8);  // whole tumour = the blob
    CHECK(h.back().dice[0] > before.second[0]);
    const std::string text = log.text();
    // 6,562 parameters by hand: encoder 696 + 3,552, decoder 520 + 1,176 + 600, head 18.
    CHECK(model_summary<Net>() == "6,562 parameters, 0.03 MB of float32 weights");
    CHECK(text.find("[INFO] Model: 6,562 parameters") != std::string::npos);
    CHECK(text.find("[INFO] Epoch 4 | Train Loss ") != std::string::npos);
    CHECK(std::filesystem::exists(dir.file("c.png")));
    std::ifstream csv(dir.file("m.csv"));
    int lines = 0;
    for (std::string l; std::getline(csv, l);) ++lines;
    CHECK(lines == 5);
}

TEST_CASE("The validation loss equals the training loss on the same probabilities", "[trainer]") {
    Net net(2);
    Net::Input x;
    Net::Labels y;
    test::make_blobs(5, 0, 3, 16, x, y);
    for (DiceLoss l : {DiceLoss{}, DiceLoss{.include_background = false, .batch_dice = true, .ce_weight = 1.0}}) {
        const auto& p = net.forward(x, Mode::train);
        const double ours = evaluation_loss(Head::softmax, 3, 2, p.shape().spatial(), p.data(), y.data(), l);
        CHECK(ours == Approx(net.backward(x, y, l)).epsilon(1e-6));
    }
}

TEST_CASE("Validation Dice of a sigmoid (region) head pools every sample's voxels", "[trainer]") {
    constexpr UNetConfig regions{.dims = 2, .in_channels = 1, .classes = 3, .widths = {4, 8}, .head = Head::sigmoid};
    using RNet = UNet<regions>;
    RNet net(8);
    net.set_threads(1);
    // Region masks from blobs: WT = the blob, TC = its left half, ET = the even rows of TC.
    auto fill = [](long, long index, RNet::Input& x, RNet::Labels& y) {
        Net::Labels blob;
        test::make_blobs(3, index, 2, 16, x, blob);
        y.resize({2, 3, 1, 16, 16});
        for (int b = 0; b < 2; ++b)
            for (int i = 0; i < 16; ++i)
                for (int j = 0; j < 16; ++j) {
                    const bool in = blob.at(b, 0, 0, i, j) != 0;
                    y.at(b, 0, 0, i, j) = in;
                    y.at(b, 1, 0, i, j) = in && j < 8;
                    y.at(b, 2, 0, i, j) = in && j < 8 && i % 2 == 0;
                }
    };
    const BatchProvider<RNet> val{[](long) { return 2L; }, fill};
    Sgd<float> opt(1e-2);
    Captured log;
    Trainer t(net, opt, quiet_options(log.f));
    const auto [loss, dice] = t.validate(val, 0);
    // By hand: every batch's eval probabilities -> nested labels, against the nested truth.
    std::array<DiceCounts, 3> counts{};
    RNet::Input x;
    RNet::Labels y;
    double loss_sum = 0;
    for (long k = 0; k < 2; ++k) {
        fill(0, k, x, y);
        const auto& p = net.predict(x);
        loss_sum += 2 * evaluation_loss(Head::sigmoid, 2, 3, 256, p.data(), y.data(), DiceLoss{});
        for (int b = 0; b < 2; ++b) {
            std::vector<std::uint8_t> pl(256), tl(256);
            for (int i = 0; i < 256; ++i) {
                const float* pb = p.data() + b * 3 * 256;
                const std::uint8_t* yb = y.data() + b * 3 * 256;
                pl[i] = pb[512 + i] > 0.5f ? 3 : pb[256 + i] > 0.5f ? 1 : pb[i] > 0.5f ? 2 : 0;
                tl[i] = yb[512 + i] ? 3 : yb[256 + i] ? 1 : yb[i] ? 2 : 0;
            }
            const auto c = region_counts(pl, tl);
            for (int r = 0; r < 3; ++r) counts[r].add(c[r]);
        }
    }
    CHECK(loss == Approx(loss_sum / 4));
    for (int r = 0; r < 3; ++r) CHECK(dice[r] == Approx(counts[r].dice()));
    INFO(counts[0].truth << " " << counts[1].truth << " " << counts[2].truth);
    CHECK(counts[2].truth > 0);
}

TEST_CASE("Resume gives weights bit-identical to an uninterrupted run", "[trainer]") {
    test::ScratchDir dir("trainer_resume");
    auto options = [&](std::FILE* out) {
        TrainerOptions o = quiet_options(out);
        o.epochs = 2;
        o.lr = 5e-3;
        o.schedule = [](double base, long step) { return PolyLR{20, 0.9}(base, step); };
        o.loss.ce_weight = 0.5;
        return o;
    };
    Captured log;
    const auto train = blobs(7, 10, 2);
    const auto val = blobs(8, 1, 2);
    // Uninterrupted.
    Net a(11);
    a.set_threads(2);
    Adam<float> oa(5e-3);
    Trainer ta(a, oa, options(log.f));
    REQUIRE(ta.fit(train, &val).completed);
    // Interrupted after 13 steps (mid epoch 2), then resumed into fresh objects.
    {
        Net b(11);
        Adam<float> ob(5e-3);
        TrainerOptions o = options(log.f);
        o.checkpoint_dir = dir.str();
        o.stop_after_steps = 13;
        o.save_rng = [] { return RngStates{{"loader", {42, 43}}}; };
        Trainer tb(b, ob, o);
        const auto r = tb.fit(train, &val);
        CHECK_FALSE(r.completed);
        CHECK(r.global_step == 13);
        CHECK_FALSE(std::memcmp(a.parameters().data(), b.parameters().data(), Net::parameter_bytes) == 0);
    }
    Net c(12345);  // other initial weights: the checkpoint must overwrite them
    Adam<float> oc(5e-3);
    TrainerOptions o = options(log.f);
    o.checkpoint_dir = dir.str();
    RngStates restored;
    o.restore_rng = [&](const RngStates& s) { restored = s; };
    Trainer tc(c, oc, o);
    REQUIRE(tc.resume_latest());
    CHECK(tc.state().global_step == 13);
    CHECK(tc.state().epoch == 1);
    CHECK(tc.state().step == 3);
    CHECK(restored == RngStates{{"loader", {42, 43}}});
    REQUIRE(tc.fit(train, &val).completed);
    CHECK(std::memcmp(a.parameters().data(), c.parameters().data(), Net::parameter_bytes) == 0);
    CHECK(std::memcmp(a.buffers().data(), c.buffers().data(), Net::buffer_count * sizeof(float)) == 0);
    CHECK(std::memcmp(oa.m.data(), oc.m.data(), Net::parameter_bytes) == 0);
    REQUIRE(tc.history().size() == 2);
    for (int e = 0; e < 2; ++e) {
        CHECK(tc.history()[e].train_loss == ta.history()[e].train_loss);
        CHECK(tc.history()[e].val_loss == ta.history()[e].val_loss);
    }
}

TEST_CASE("A time budget ends the run on time, with the rate following the clock", "[trainer][budget]") {
    // Written for any machine speed (sanitizers, a loaded CI host): steps of at least 20 ms, and
    // every check relative to the time the steps actually took.
    test::ScratchDir dir("trainer_budget");
    Net net(5);
    net.set_threads(1);
    Adam<float> opt(1e-3);
    Captured log;
    TrainerOptions o = quiet_options(log.f);
    o.epochs = std::numeric_limits<long>::max();
    o.lr = 1e-2;
    o.checkpoint_dir = dir.str();
    o.save_every_epoch = false;  // the budget's end still writes the last checkpoint
    o.time_budget_seconds = 2.5;
    const PolyLR poly{1000000, 0.9};
    o.time_schedule = [poly](double base, double fraction) { return poly(base, long(fraction * 1e6)); };
    std::vector<double> rates, fractions;  // per step: the rate given, our clock's fraction of the budget
    auto t0 = std::chrono::steady_clock::now();
    o.before_step = [&](long) {
        rates.push_back(opt.lr);
        fractions.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.time_budget_seconds);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    };
    Trainer trainer(net, opt, o);
    const auto val = blobs(99, 1, 2);
    t0 = std::chrono::steady_clock::now();
    const auto r = trainer.fit(blobs(1, 5, 2), &val);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(r.completed);
    CHECK(r.out_of_time);
    CHECK_FALSE(r.interrupted);
    // On time: the trainer's own clock within the budget, and the whole fit (validation and
    // checkpoints included) within it plus scheduling noise; most of the budget used.
    CHECK(trainer.state().elapsed_seconds <= o.time_budget_seconds + 0.25);  // + the last checkpoints
    CHECK(trainer.state().elapsed_seconds >= 0.75 * o.time_budget_seconds);
    CHECK(wall <= o.time_budget_seconds + 0.5);
    // Epochs of 5 steps, each validated; the last one possibly cut short.
    const auto& h = trainer.history();
    REQUIRE(h.size() >= 2);
    CHECK(r.global_step <= long(h.size()) * 5);
    CHECK(r.global_step == long(rates.size()));
    for (const auto& e : h) CHECK(std::isfinite(e.val_loss));
    // The rate is the schedule at the fraction of the budget spent: the trainer's clock starts a
    // little after ours, so its fraction lies in [ours - 0.04, ours].
    REQUIRE(rates.size() >= 5);
    CHECK(rates.front() > 0.95 * o.lr);
    for (std::size_t i = 0; i < rates.size(); ++i) {
        CHECK(rates[i] >= poly(o.lr, long(std::min(1.0, fractions[i]) * 1e6)) * (1 - 1e-9));
        CHECK(rates[i] <= poly(o.lr, long(std::max(0.0, fractions[i] - 0.04) * 1e6)) * (1 + 1e-9));
    }
    CHECK(fractions.back() > 0.6);
    CHECK(std::is_sorted(rates.rbegin(), rates.rend()));
    // The last and best checkpoints are written.
    CheckpointManager mgr(dir.str(), 3);
    REQUIRE(mgr.latest());
    CHECK(read_checkpoint_info(*mgr.latest()).state.global_step == r.global_step);
    CHECK(std::filesystem::exists(mgr.best_path()));
    CHECK(log.text().find("min spent, " + std::to_string(r.global_step) + " steps") != std::string::npos);

    // Resumed with the budget spent, the run has nothing left to do.
    Net again(6);
    Adam<float> opt_again(1e-3);
    TrainerOptions resumed = o;
    resumed.before_step = [](long) { FAIL("a step after the budget was spent"); };
    Trainer later(again, opt_again, resumed);
    REQUIRE(later.resume_latest());
    const auto r2 = later.fit(blobs(1, 5, 2), &val);
    CHECK(r2.out_of_time);
    CHECK(r2.global_step == r.global_step);
}

TEST_CASE("Signals and autosave write checkpoints at step boundaries", "[trainer]") {
    test::ScratchDir dir("trainer_signal");
    Net net(3);
    Adam<float> opt(1e-3);
    Captured log;
    TrainerOptions o = quiet_options(log.f);
    o.epochs = 3;
    o.checkpoint_dir = dir.str();
    o.keep_last = 2;
    o.autosave_seconds = 1e-9;  // every step
    o.handle_signals = true;
    o.before_step = [](long step) {
        if (step == 6) ::raise(SIGTERM);
    };
    struct sigaction before {};
    sigaction(SIGTERM, nullptr, &before);
    Trainer t(net, opt, o);
    const auto r = t.fit(blobs(1, 5, 2));
    CHECK(r.interrupted);
    CHECK(r.global_step == 7);  // the step in flight finishes, then the trainer stops
    CheckpointManager mgr(dir.str(), 2);
    CHECK(mgr.rolling().size() == 2);
    REQUIRE(mgr.latest() == mgr.path_for(7));
    CHECK(read_checkpoint_info(*mgr.latest()).state.step == 2);
    CHECK(log.text().find("Stopping on SIGTERM") != std::string::npos);
    struct sigaction now {};
    sigaction(SIGTERM, nullptr, &now);
    CHECK(now.sa_handler == before.sa_handler);  // the previous handler is back
}

TEST_CASE("A stop during validation saves the epoch's steps and validates on resume", "[trainer]") {
    test::ScratchDir dir("trainer_stop_validation");
    const auto train = blobs(1, 3, 2);
    const auto val = blobs(999, 4, 2);
    Captured log;
    TrainerOptions o = quiet_options(log.f);
    o.epochs = 2;
    o.checkpoint_dir = dir.str();

    Net reference_net(5);
    Adam<float> reference_opt(1e-3);
    Trainer reference(reference_net, reference_opt, o);
    REQUIRE(reference.fit(train, &val).completed);

    Net net(5);
    Adam<float> opt(1e-3);
    Trainer<Net, Adam<float>>* self = nullptr;
    long validation_batches = 0;
    const BatchProvider<Net> stopping_val{val.batches, [&](long epoch, long index, Net::Input& x, Net::Labels& y) {
                                              ++validation_batches;
                                              if (epoch == 0 && index == 1) self->request_stop();
                                              val.fill(epoch, index, x, y);
                                          }};
    Trainer<Net, Adam<float>> stopped(net, opt, o);
    self = &stopped;
    const auto r = stopped.fit(train, &stopping_val);
    CHECK(r.interrupted);
    CHECK(validation_batches == 2);  // given up after the batch in flight, not all 4
    CHECK(stopped.history().empty());
    const TrainState saved = read_checkpoint_info(r.last_checkpoint).state;
    CHECK(saved.epoch == 0);
    CHECK(saved.step == 3);  // every step of the epoch done, its validation not
    CHECK(saved.history.empty());

    Net resumed_net(77);
    Adam<float> resumed_opt(1e-3);
    Trainer<Net, Adam<float>> resumed(resumed_net, resumed_opt, o);
    resumed.resume(r.last_checkpoint);
    REQUIRE(resumed.fit(train, &val).completed);
    REQUIRE(resumed.history().size() == 2);
    for (std::size_t e = 0; e < 2; ++e) {
        CHECK(resumed.history()[e].val_loss == reference.history()[e].val_loss);
        CHECK(resumed.history()[e].dice == reference.history()[e].dice);
    }
    CHECK(std::equal(resumed_net.parameters().begin(), resumed_net.parameters().end(), reference_net.parameters().begin()));
}

TEST_CASE("A second SIGINT ends a stopping run at once", "[trainer]") {
    test::ScratchDir dir("trainer_second_sigint");
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        Net net(3);
        net.set_threads(1);  // libgomp's pool of the parent does not survive fork()
        Adam<float> opt(1e-3);
        TrainerOptions o = quiet_options(nullptr);
        o.epochs = 1;
        o.checkpoint_dir = dir.str();
        o.handle_signals = true;
        o.before_step = [](long step) {
            if (step == 2) {
                ::raise(SIGINT);  // the first: a clean stop after this step
                ::raise(SIGINT);  // the second: now
            }
        };
        Trainer t(net, opt, o);
        t.fit(blobs(1, 5, 2));
        ::_exit(0);  // reached only if the second SIGINT was swallowed
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGINT);
}

TEST_CASE("Watchdog rolls back to the last good state on an injected NaN", "[trainer][watchdog]") {
    test::ScratchDir dir("trainer_nan");
    Net net(4);
    Adam<float> opt(1e-3);
    Captured log;
    TrainerOptions o = quiet_options(log.f);
    o.epochs = 2;
    o.lr = 5e-3;
    o.use_watchdog = true;
    o.good_state_every = 5;
    o.watchdog.poll_seconds = 0.05;
    o.watchdog.temperature_files = {dir.file("no_such_sensor")};
    o.watchdog.energy_files = {dir.file("no_such_energy")};
    std::vector<float> at_step5;
    bool checked = false;
    o.before_step = [&](long step) {
        if (step == 5) at_step5.assign(net.parameters().begin(), net.parameters().end());
        if (step == 7) net.parameters()[10] = std::numeric_limits<float>::quiet_NaN();  // a bit flip
        if (step == 8) {
            // Rolled back to the state kept after step 5 (the good state is refreshed every 5).
            checked = std::equal(at_step5.begin(), at_step5.end(), net.parameters().begin());
        }
    };
    Trainer t(net, opt, o);
    const auto r = t.fit(blobs(2, 10, 2));
    CHECK(r.completed);
    CHECK(r.rollbacks == 1);
    CHECK(checked);
    CHECK(t.state().lr_scale == 0.5);
    CHECK(all_finite(net.parameters()));
    CHECK(t.history()[0].rollbacks == 1);
    const std::string text = log.text();
    CHECK(text.find("non-finite loss at step 8") != std::string::npos);
    CHECK(text.find("rolled back to the state of step 5") != std::string::npos);
    // The missing sensor is reported once, however many polls.
    std::size_t count = 0;
    for (std::size_t p = 0; (p = text.find("cannot read " + dir.file("no_such_sensor"), p)) != std::string::npos; ++p) ++count;
    CHECK(count == 1);
}

TEST_CASE("Watchdog rolls back and pauses on a fake over-temperature sensor", "[trainer][watchdog]") {
    test::ScratchDir dir("trainer_hot");
    const std::string sensor = dir.file("temp1_input");
    std::ofstream(sensor) << "45000\n";
    Net net(5);
    Adam<float> opt(1e-3);
    Captured log;
    TrainerOptions o = quiet_options(log.f);
    o.epochs = 1;
    o.use_watchdog = true;
    o.watchdog.poll_seconds = 0.02;
    o.watchdog.temperature_files = {sensor};
    o.watchdog.max_temperature = 90;
    o.watchdog.resume_temperature = 70;
    o.watchdog.halve_lr = false;
    std::thread cooler;
    std::atomic<bool> heated{false};
    o.before_step = [&](long step) {
        if (step == 3) {
            std::ofstream(sensor) << "97000\n";
            heated = true;
            cooler = std::thread([&] {
                std::this_thread::sleep_for(std::chrono::milliseconds(400));
                std::ofstream(sensor) << "60000\n";
            });
            std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a poll sees it
        }
    };
    Trainer t(net, opt, o);
    const auto start = std::chrono::steady_clock::now();
    const auto r = t.fit(blobs(3, 8, 2));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    cooler.join();
    CHECK(heated);
    CHECK(r.completed);
    CHECK(r.rollbacks == 1);
    CHECK(seconds > 0.35);  // paused until the sensor cooled
    CHECK(t.state().lr_scale == 1.0);
    const std::string text = log.text();
    CHECK(text.find("temperature 97.0 C over the limit 90.0 C") != std::string::npos);
    CHECK(text.find("over temperature at step") != std::string::npos);
    CHECK(text.find("resumed after") != std::string::npos);
}

TEST_CASE("Watchdog sensors: power from RAPL deltas, RSS, exploding loss, unreadable files said once", "[watchdog]") {
    test::ScratchDir dir("watchdog_unit");
    std::ofstream(dir.file("energy_uj")) << "1000000\n";
    std::ofstream(dir.file("max_energy_range_uj")) << "10000000\n";
    std::ofstream(dir.file("status")) << "Name:\tx\nVmRSS:\t  204800 kB\n";
    std::ofstream(dir.file("t1")) << "51000\n";
    std::ofstream(dir.file("t2")) << "63500\n";
    std::vector<std::string> lines;
    std::mutex m;
    WatchdogOptions o;
    o.temperature_files = {dir.file("t1"), dir.file("t2"), dir.file("t3_missing")};
    o.energy_files = {dir.file("energy_uj")};
    o.proc_status = dir.file("status");
    o.warmup_losses = 5;
    o.explode_factor = 4;
    o.log = [&](const std::string& s) {
        std::lock_guard lock(m);
        lines.push_back(s);
    };
    Watchdog w(o);
    w.poll();
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::ofstream(dir.file("energy_uj")) << "500000\n";  // wrapped: +9.5 J
    w.poll();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const Telemetry t = w.telemetry();
    CHECK(t.temperature == Approx(63.5));
    CHECK(t.rss_mb == Approx(200.0));
    CHECK(t.power_watts == Approx(9.5 / dt).epsilon(0.1));
    CHECK(t.polls == 2);
    CHECK(std::count_if(lines.begin(), lines.end(), [](const std::string& s) { return s.find("t3_missing") != std::string::npos; }) == 1);
    // Losses: five sane ones warm up, then 4x the median trips.
    for (double l : {0.5, 0.4, 0.6, 0.5, 0.45}) CHECK(w.check_loss(l) == Anomaly::none);
    CHECK(w.check_loss(1.9) == Anomaly::none);
    CHECK(w.check_loss(2.1) == Anomaly::exploding_loss);
    CHECK(w.check_loss(std::numeric_limits<double>::infinity()) == Anomaly::non_finite_loss);
    CHECK_FALSE(w.take_event());
    // Over-temperature: one event per excursion.
    std::ofstream(dir.file("t1")) << "99000\n";
    w.poll();
    w.poll();
    const auto ev = w.take_event();
    REQUIRE(ev);
    CHECK(ev->kind == Anomaly::over_temperature);
    CHECK_FALSE(w.take_event());
}

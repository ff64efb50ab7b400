// The watchdog's GPU telemetry through NVML loaded at run time, tested without a GPU: the tests
// load a fake NVML library (fake_nvml.cpp, built next to this binary) through the same dlopen
// path, with scripted temperatures, power, clocks, throttle bits and failures.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/telemetry/watchdog.hpp"
#include "lightunet/train/trainer.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::telemetry;

namespace {

std::string fake_nvml() {
    return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "liblightunet_fake_nvml.so").string();
}

// Watchdog options reading only the fake GPU (CPU sensors pointed at nothing), its log kept.
struct GpuWatch {
    test::ScratchDir dir{"gpu_watch"};
    std::vector<std::string> log;
    std::mutex log_mutex;
    WatchdogOptions options(const std::string& script) {
        std::ofstream(dir.file("script")) << script;
        ::setenv("LIGHTUNET_FAKE_NVML_SCRIPT", dir.file("script").c_str(), 1);
        WatchdogOptions o;
        o.temperature_files = {dir.file("no_cpu_sensor")};
        o.energy_files = {dir.file("no_rapl")};
        o.nvml_library = fake_nvml();
        o.poll_seconds = 0.01;
        o.log = [this](const std::string& m) {
            std::lock_guard lock(log_mutex);
            log.push_back(m);
        };
        return o;
    }
    int said(const std::string& part) {
        std::lock_guard lock(log_mutex);
        int n = 0;
        for (const auto& m : log) n += m.find(part) != std::string::npos;
        return n;
    }
};

}  // namespace

TEST_CASE("GPU telemetry comes from NVML loaded at run time", "[watchdog][gpu]") {
    REQUIRE(std::filesystem::exists(fake_nvml()));
    GpuWatch g;
    Watchdog w(g.options("71 150500 250000 1800 2048 0\n66 140000 250000 1750 2050 40\n"));
    w.poll();
    GpuTelemetry t = w.telemetry().gpu;
    CHECK(t.temperature == 71);
    CHECK(t.power_watts == Approx(150.5));
    CHECK(t.power_limit_watts == 250);
    CHECK(t.sm_clock_mhz == 1800);
    CHECK(t.memory_used_mb == 2048);
    CHECK(t.throttle_known);
    CHECK(t.throttle_reasons == 0);
    CHECK(w.summary().find("GPU 71 C | GPU 150.5 W | SM 1800 MHz") != std::string::npos);
    w.poll();
    t = w.telemetry().gpu;
    CHECK(t.temperature == 66);
    CHECK(t.throttle_reasons == throttle_hw_thermal);
    CHECK(w.summary().find("thermally throttled") != std::string::npos);
    CHECK(g.said("GPU") == 0);  // nothing failed
}

TEST_CASE("The GPU a CUDA run uses is found in NVML by its PCI bus id", "[watchdog][gpu]") {
    GpuWatch g;
    WatchdogOptions o = g.options("64 1 1 1 1 0\n");
    SECTION("the bus id of the CUDA device") {
        o.gpu_pci_bus_id = "00000000:3B:00.0";
        o.gpu_index = 5;  // NVML's numbering is not used then
        Watchdog w(o);
        w.poll();
        CHECK(w.telemetry().gpu.temperature == 64);
        CHECK(g.said("GPU") == 0);
    }
    SECTION("a bus id NVML does not know: said, and the GPU is not watched") {
        o.gpu_pci_bus_id = "00000000:FF:00.0";
        Watchdog w(o);
        w.poll();
        CHECK(std::isnan(w.telemetry().gpu.temperature));
        CHECK(g.said("no GPU telemetry (nvmlDeviceGetHandleByPciBusId_v2(00000000:FF:00.0): Not Found (6))") == 1);
    }
    SECTION("by index, an index NVML does not have") {
        o.gpu_index = 3;
        Watchdog w(o);
        CHECK(g.said("no GPU telemetry (GPU 3 asked for, NVML sees 1)") == 1);
    }
}

TEST_CASE("Without NVML, or with NVML failing, the GPU is left out and said so once", "[watchdog][gpu]") {
    GpuWatch g;
    SECTION("no library: CPU-only machines run unchanged") {
        WatchdogOptions o = g.options("70 1 1 1 1 0\n");
        o.nvml_library = g.dir.file("libnvidia-ml-absent.so.1");
        Watchdog w(o);
        w.poll();
        w.poll();
        CHECK(std::isnan(w.telemetry().gpu.temperature));
        CHECK(g.said("no GPU telemetry (cannot load " + o.nvml_library) == 1);
    }
    SECTION("nvmlInit_v2 fails: NVML's own error text") {
        Watchdog w(g.options("init_fails\n"));
        w.poll();
        CHECK(std::isnan(w.telemetry().gpu.temperature));
        CHECK(g.said("nvmlInit_v2: Driver Not Loaded (9)") == 1);
    }
    SECTION("one sensor not supported: reported once, the others read") {
        Watchdog w(g.options("70 - 250000 1500 100 0\n72 - 250000 1500 100 0\n"));
        w.poll();
        w.poll();
        const GpuTelemetry t = w.telemetry().gpu;
        CHECK(t.temperature == 72);
        CHECK(std::isnan(t.power_watts));
        CHECK(t.sm_clock_mhz == 1500);
        CHECK(g.said("nvmlDeviceGetPowerUsage failed: Not Supported (3)") == 1);
    }
    SECTION("watch_gpu off: NVML is not even loaded") {
        WatchdogOptions o = g.options("init_fails\n");
        o.watch_gpu = false;
        Watchdog w(o);
        w.poll();
        CHECK(g.said("GPU") == 0);
    }
}

TEST_CASE("A hot GPU raises one over-temperature event per excursion and the pause waits for it", "[watchdog][gpu]") {
    GpuWatch g;
    WatchdogOptions o = g.options("80 1 1 1 1 0\n95 1 1 1 1 0\n93 1 1 1 1 0\n78 1 1 1 1 0\n74 1 1 1 1 0\n96 1 1 1 1 0\n");
    o.max_gpu_temperature = 90;
    o.resume_gpu_temperature = 75;
    Watchdog w(o);
    w.poll();  // 80
    CHECK_FALSE(w.take_event());
    w.poll();  // 95
    const auto hot = w.take_event();
    REQUIRE(hot);
    CHECK(hot->kind == Anomaly::over_temperature);
    CHECK(hot->detail == "GPU temperature 95.0 C over the limit 90.0 C");
    w.poll();  // 93: the same excursion
    CHECK_FALSE(w.take_event());
    // The pause polls by itself (no thread): 78 is not cool enough, 74 is.
    w.wait_until_cool();
    CHECK(w.telemetry().gpu.temperature == 74);
    w.poll();  // 96: a new excursion
    const auto again = w.take_event();
    REQUIRE(again);
    CHECK(again->kind == Anomaly::over_temperature);
}

TEST_CASE("Sustained thermal throttling with slow steps raises a thermal-throttling event", "[watchdog][gpu]") {
    GpuWatch g;
    const std::string throttled = "84 1 1 1200 1 40\n";
    WatchdogOptions o = g.options("80 1 1 1900 1 0\n" + throttled + throttled + throttled + throttled + "70 1 1 1900 1 0\n" + throttled);
    o.throttle_polls = 3;
    o.throttle_slowdown = 1.5;
    Watchdog w(o);
    for (int i = 0; i < 10; ++i) w.note_step_seconds(0.1);
    for (int i = 0; i < 4; ++i) w.poll();  // not throttled, then three throttled polls, steps at speed
    CHECK_FALSE(w.take_event());
    w.note_step_seconds(0.25);  // slow: 2.5 x the median
    w.poll();                   // the fourth throttled poll
    const auto e = w.take_event();
    REQUIRE(e);
    CHECK(e->kind == Anomaly::thermal_throttling);
    CHECK(e->detail.find("reasons 0x40, SM 1200 MHz, 84.0 C") != std::string::npos);
    w.poll();  // throttling ends: re-armed
    w.note_step_seconds(0.3);
    w.poll();  // one throttled poll is not sustained
    CHECK_FALSE(w.take_event());
}

TEST_CASE("The trainer answers GPU thermal throttling with a pause, not a rollback", "[trainer][watchdog][gpu]") {
    constexpr UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}};
    using Net = UNet<tiny>;
    GpuWatch g;
    std::string script;
    for (int i = 0; i < 400; ++i) script += "85 1 1 1100 1 40\n";  // throttled throughout
    train::TrainerOptions o;
    o.epochs = 1;
    o.show_progress = false;
    o.handle_signals = false;
    o.autosave_seconds = 0;
    o.use_watchdog = true;
    o.watchdog = g.options(script);
    o.watchdog.max_gpu_temperature = 95;
    o.watchdog.max_pause_seconds = 0.2;  // it never cools: the pause gives up
    o.watchdog.throttle_polls = 2;
    // Steps slow down after the 8th (the GPU "throttles").
    o.before_step = [](long step) {
        if (step >= 8) std::this_thread::sleep_for(std::chrono::milliseconds(60));
    };
    std::FILE* log = std::tmpfile();
    o.out = log;
    o.metrics_csv = g.dir.file("metrics.csv");
    Net net(1);
    Adam<float> opt(1e-3);
    train::Trainer<Net, Adam<float>> trainer(net, opt, o);
    const train::BatchProvider<Net> batches{[](long) { return 14L; }, [](long, long k, Tensor<float>& x, Tensor<std::uint8_t>& y) {
                                                test::make_blobs(3, k, 2, 16, x, y);
                                            }};
    const auto result = trainer.fit(batches);
    CHECK(result.completed);
    CHECK(result.rollbacks == 0);
    std::rewind(log);
    std::string text;
    for (char buf[512]; std::fgets(buf, sizeof buf, log);) text += buf;
    std::fclose(log);
    INFO(text);
    CHECK(text.find("GPU clocks thermally throttled") != std::string::npos);
    CHECK(text.find("pausing until the CPU is below") != std::string::npos);
    CHECK(text.find("resumed after") != std::string::npos);
    CHECK(text.find("rolled back") == std::string::npos);
    // The epoch's telemetry is logged: GPU 85 C, 1 mW of a 1 mW limit, SM 1100 MHz, 1 MiB, throttle bits 0x40.
    std::ifstream csv(o.metrics_csv);
    std::string header, row;
    std::getline(csv, header), std::getline(csv, row);
    const std::string gpu_columns = ",85,0.001,0.001,1100,1,64";
    REQUIRE(row.size() > gpu_columns.size());
    CHECK(row.substr(row.size() - gpu_columns.size()) == gpu_columns);
}

#pragma once
// Watchdog: a telemetry thread for training on unreliable hardware.
//
// Every `poll_seconds` it reads the CPU temperature (the hottest of /sys/class/hwmon/*/temp*_input
// and /sys/class/thermal/thermal_zone*/temp, millidegrees C), package power from RAPL
// (/sys/class/powercap/intel-rapl:N/energy_uj, the energy delta over the poll interval, with
// counter wrap-around), the process's resident memory (VmRSS in /proc/self/status) and the
// latest training loss. Every path is configurable, so tests point it at fake sensor files.
// A sensor that cannot be read is reported once through the log and then left out.
//
// The GPU (when NVML loads: telemetry/nvml.hpp, no GPU and no driver is fine) adds its
// temperature, power draw and limit, SM clock, memory used and clock-throttle reasons. Its
// temperature obeys the same rule as the CPU's (max_gpu_temperature / resume_gpu_temperature);
// sustained thermal throttling (a thermal throttle bit in throttle_polls consecutive polls while
// the training steps run throttle_slowdown x slower than their running median) raises a
// thermal_throttling event, which the trainer answers with a cool-down pause, not a rollback:
// slow steps are still correct steps.
//
// Anomalies: a NaN / Inf loss and a loss above explode_factor x the running median of the last
// sane losses are detected synchronously in check_loss() (the training thread calls it after
// every step); a temperature above max_temperature is detected by the thread and handed over
// through take_event(), which the training thread calls at step boundaries. The trainer rolls
// back to its last good state (optionally halving the LR) and, with pause_when_hot, waits in
// wait_until_cool() until the temperature is below resume_temperature. Each over-temperature
// excursion raises one event; it re-arms once the temperature is back below resume_temperature.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "nvml.hpp"

namespace lightunet::telemetry {

struct WatchdogOptions {
    double poll_seconds = 5.0;
    // Sensors. Empty lists: discovered under the roots.
    std::vector<std::string> temperature_files;  // millidegrees C
    std::vector<std::string> energy_files;       // microjoules (RAPL energy_uj)
    std::string hwmon_root = "/sys/class/hwmon";
    std::string thermal_root = "/sys/class/thermal";
    std::string powercap_root = "/sys/class/powercap";
    std::string proc_status = "/proc/self/status";
    // Thresholds and reactions.
    double max_temperature = 95.0;     // degrees C
    double resume_temperature = 80.0;  // a pause ends below this
    double explode_factor = 10.0;      // loss above factor x running median: anomaly
    int median_window = 50;            // sane losses the median is taken over
    int warmup_losses = 10;            // no explosion check before this many sane losses
    bool halve_lr = true;              // on every rollback
    bool pause_when_hot = true;
    double max_pause_seconds = 900.0;
    // GPU (NVML, loaded at run time).
    bool watch_gpu = true;
    std::string nvml_library = "libnvidia-ml.so.1";
    unsigned gpu_index = 0;      // in NVML's order (PCI bus order)
    std::string gpu_pci_bus_id;  // when set, the GPU watched (cuda::use_device's pci_bus_id), not gpu_index
    double max_gpu_temperature = 90.0;
    double resume_gpu_temperature = 75.0;
    int throttle_polls = 3;          // consecutive polls with a thermal throttle bit
    double throttle_slowdown = 1.5;  // ... while the last step is this many times the median step
    int step_window = 20;            // steps the median step time is taken over
    std::function<void(const std::string&)> log;  // default: "[WATCHDOG] ..." on stderr
};

enum class Anomaly { none, non_finite_loss, exploding_loss, over_temperature, thermal_throttling };

inline const char* anomaly_name(Anomaly a) {
    switch (a) {
        case Anomaly::non_finite_loss: return "non-finite loss";
        case Anomaly::exploding_loss: return "exploding loss";
        case Anomaly::over_temperature: return "over temperature";
        case Anomaly::thermal_throttling: return "thermal throttling";
        default: return "none";
    }
}

struct Telemetry {
    double temperature = std::numeric_limits<double>::quiet_NaN();  // degrees C, hottest sensor
    double power_watts = std::numeric_limits<double>::quiet_NaN();  // RAPL packages
    double rss_mb = std::numeric_limits<double>::quiet_NaN();
    double loss = std::numeric_limits<double>::quiet_NaN();
    GpuTelemetry gpu;
    long polls = 0;
};

struct WatchdogEvent {
    Anomaly kind = Anomaly::none;
    std::string detail;
};

class Watchdog {
public:
    explicit Watchdog(WatchdogOptions options) : opt_(std::move(options)) {
        if (!opt_.log) opt_.log = [](const std::string& m) { std::fprintf(stderr, "[WATCHDOG] %s\n", m.c_str()); };
        if (opt_.median_window < 1) opt_.median_window = 1;
        window_.assign(std::size_t(opt_.median_window), 0.0);
        scratch_.assign(std::size_t(opt_.median_window), 0.0);
        steps_.assign(std::size_t(std::max(3, opt_.step_window)), 0.0);
        step_scratch_.assign(steps_.size(), 0.0);
        discover();
    }
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;
    ~Watchdog() { stop(); }

    void start() {
        if (thread_.joinable()) return;
        stopping_ = false;
        thread_ = std::thread([this] { run(); });
    }
    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    // Training thread, after every step: the loss's verdict. Sane losses enter the median window.
    Anomaly check_loss(double loss) {
        latest_loss_.store(loss, std::memory_order_relaxed);
        if (!std::isfinite(loss)) return Anomaly::non_finite_loss;
        if (count_ >= std::size_t(opt_.warmup_losses)) {
            const std::size_t n = std::min<std::size_t>(count_, window_.size());
            std::copy_n(window_.begin(), n, scratch_.begin());
            std::nth_element(scratch_.begin(), scratch_.begin() + std::ptrdiff_t(n / 2), scratch_.begin() + std::ptrdiff_t(n));
            const double median = scratch_[n / 2];
            if (loss > opt_.explode_factor * median && loss > 0) {
                last_median_ = median;
                return Anomaly::exploding_loss;
            }
        }
        window_[count_ % window_.size()] = loss;
        ++count_;
        return Anomaly::none;
    }
    double last_median() const { return last_median_; }

    // Training thread, after every step: its wall time, for the throttling rule.
    void note_step_seconds(double seconds) {
        steps_[step_count_ % steps_.size()] = seconds;
        ++step_count_;
        const std::size_t n = std::min(step_count_, steps_.size());
        if (n < 3) return;
        std::copy_n(steps_.begin(), n, step_scratch_.begin());
        std::nth_element(step_scratch_.begin(), step_scratch_.begin() + std::ptrdiff_t(n / 2), step_scratch_.begin() + std::ptrdiff_t(n));
        slow_steps_.store(seconds > opt_.throttle_slowdown * step_scratch_[n / 2], std::memory_order_relaxed);
    }

    // Training thread, at step boundaries: an anomaly the telemetry thread found, if any.
    std::optional<WatchdogEvent> take_event() {
        if (!pending_.load(std::memory_order_acquire)) return std::nullopt;
        std::lock_guard lock(mutex_);
        pending_.store(false, std::memory_order_release);
        return pending_event_;
    }

    // Blocks until the hottest CPU sensor reads below resume_temperature, the GPU below
    // resume_gpu_temperature and without a thermal throttle bit (polled by the thread, or here
    // when it is not running), the pause limit passes, or `stop()` returns true. Returns the
    // seconds waited.
    double wait_until_cool(const std::function<bool()>& stop = {}) {
        const auto t0 = std::chrono::steady_clock::now();
        auto waited = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
        while (true) {
            if (!thread_.joinable()) poll();
            {
                std::unique_lock lock(mutex_);
                if (cool(telemetry_)) break;
                if ((stop && stop()) || waited() >= opt_.max_pause_seconds) break;
                cv_.wait_for(lock, std::chrono::duration<double>(std::min(opt_.poll_seconds, 0.5)));
            }
        }
        return waited();
    }

    // One round of sensor reads (the thread calls this; tests may too).
    void poll() {
        Telemetry t;
        t.temperature = read_temperature();
        t.power_watts = read_power();
        t.rss_mb = read_rss_mb();
        if (nvml_) t.gpu = nvml_->read([this](const std::string& call, const std::string& error) {
            once(call, "GPU: " + call + " failed: " + error + "; carrying on without it");
        });
        t.loss = latest_loss_.load(std::memory_order_relaxed);
        throttled_polls_ = t.gpu.throttle_known && (t.gpu.throttle_reasons & throttle_thermal) ? throttled_polls_ + 1 : 0;
        std::string event;
        {
            std::lock_guard lock(mutex_);
            t.polls = telemetry_.polls + 1;
            telemetry_ = t;
            char buf[200];
            if (armed_ && (t.temperature > opt_.max_temperature || t.gpu.temperature > opt_.max_gpu_temperature)) {
                armed_ = false;
                if (t.temperature > opt_.max_temperature)
                    std::snprintf(buf, sizeof buf, "temperature %.1f C over the limit %.1f C", t.temperature, opt_.max_temperature);
                else
                    std::snprintf(buf, sizeof buf, "GPU temperature %.1f C over the limit %.1f C", t.gpu.temperature, opt_.max_gpu_temperature);
                pending_event_ = {Anomaly::over_temperature, buf};
                pending_.store(true, std::memory_order_release);
                event = buf;
            } else if (throttle_armed_ && throttled_polls_ >= opt_.throttle_polls && slow_steps_.load(std::memory_order_relaxed)) {
                throttle_armed_ = false;
                std::snprintf(buf, sizeof buf, "GPU clocks thermally throttled for %d polls (reasons 0x%llx, SM %.0f MHz, %.1f C) and steps slowed down",
                              throttled_polls_, t.gpu.throttle_reasons, t.gpu.sm_clock_mhz, t.gpu.temperature);
                pending_event_ = {Anomaly::thermal_throttling, buf};
                pending_.store(true, std::memory_order_release);
                event = buf;
            }
            if (cool(t)) armed_ = true;
            if (throttled_polls_ == 0) throttle_armed_ = true;
        }
        cv_.notify_all();
        if (!event.empty()) opt_.log(event);
    }

    Telemetry telemetry() const {
        std::lock_guard lock(mutex_);
        return telemetry_;
    }
    const WatchdogOptions& options() const { return opt_; }
    const std::vector<std::string>& temperature_files() const { return temp_files_; }
    const std::vector<std::string>& energy_files() const { return energy_files_; }

    // "temp 61.0 C | power 35.2 W | rss 812 MB | loss 0.231" (unknown parts left out).
    std::string summary() const {
        const Telemetry t = telemetry();
        std::string s;
        char buf[64];
        auto add = [&](const char* fmt, double v) {
            if (std::isnan(v)) return;
            std::snprintf(buf, sizeof buf, fmt, v);
            s += (s.empty() ? "" : " | ") + std::string(buf);
        };
        add("temp %.1f C", t.temperature);
        add("power %.1f W", t.power_watts);
        add("rss %.0f MB", t.rss_mb);
        add("loss %.4g", t.loss);
        add("GPU %.0f C", t.gpu.temperature);
        add("GPU %.1f W", t.gpu.power_watts);
        add("SM %.0f MHz", t.gpu.sm_clock_mhz);
        if (t.gpu.throttle_known && (t.gpu.throttle_reasons & throttle_thermal)) s += " | thermally throttled";
        return s;
    }

private:
    void run() {
        std::unique_lock lock(mutex_);
        while (!stopping_) {
            lock.unlock();
            poll();
            lock.lock();
            cv_.wait_for(lock, std::chrono::duration<double>(opt_.poll_seconds), [&] { return stopping_; });
        }
    }

    void discover() {
        namespace fs = std::filesystem;
        temp_files_ = opt_.temperature_files;
        energy_files_ = opt_.energy_files;
        std::error_code ec;
        if (temp_files_.empty()) {
            for (const auto& dir : fs::directory_iterator(opt_.hwmon_root, ec))
                for (const auto& f : fs::directory_iterator(dir.path(), ec)) {
                    const std::string n = f.path().filename().string();
                    if (n.rfind("temp", 0) == 0 && n.size() > 10 && n.substr(n.size() - 6) == "_input") temp_files_.push_back(f.path().string());
                }
            for (const auto& dir : fs::directory_iterator(opt_.thermal_root, ec))
                if (dir.path().filename().string().rfind("thermal_zone", 0) == 0) temp_files_.push_back((dir.path() / "temp").string());
            std::sort(temp_files_.begin(), temp_files_.end());
        }
        if (energy_files_.empty()) {
            // Package domains only (intel-rapl:N, not the sub-domains intel-rapl:N:M).
            for (const auto& dir : fs::directory_iterator(opt_.powercap_root, ec)) {
                const std::string n = dir.path().filename().string();
                if (n.rfind("intel-rapl:", 0) == 0 && std::count(n.begin(), n.end(), ':') == 1)
                    energy_files_.push_back((dir.path() / "energy_uj").string());
            }
            std::sort(energy_files_.begin(), energy_files_.end());
        }
        if (opt_.watch_gpu) {
            nvml_ = std::make_unique<Nvml>(opt_.nvml_library, opt_.gpu_index, opt_.gpu_pci_bus_id);
            if (!nvml_->available()) {
                once("gpu", "no GPU telemetry (" + nvml_->why() + "); the GPU is not watched");
                nvml_.reset();
            }
        }
        if (temp_files_.empty()) once("temperature", "no temperature sensor found; temperature is not watched");
        if (energy_files_.empty()) once("power", "no RAPL energy counter found; power is not reported");
        last_energy_.assign(energy_files_.size(), -1.0);
    }

    // Below both resume temperatures (an unreadable one counts as cool) and not thermally throttled.
    bool cool(const Telemetry& t) const {
        return !(t.temperature >= opt_.resume_temperature) && !(t.gpu.temperature >= opt_.resume_gpu_temperature) &&
               !(t.gpu.throttle_known && (t.gpu.throttle_reasons & throttle_thermal));
    }

    void once(const std::string& key, const std::string& message) {
        if (said_.insert(key).second) opt_.log(message);
    }

    std::optional<double> read_number(const std::string& path) {
        std::ifstream f(path);
        double v = 0;
        if (f >> v) return v;
        once(path, "cannot read " + path + "; carrying on without it");
        return std::nullopt;
    }

    double read_temperature() {
        double hottest = std::numeric_limits<double>::quiet_NaN();
        for (const auto& path : temp_files_)
            if (const auto v = read_number(path)) hottest = std::isnan(hottest) ? *v / 1000.0 : std::max(hottest, *v / 1000.0);
        return hottest;
    }

    double read_power() {
        const auto now = std::chrono::steady_clock::now();
        double watts = 0;
        bool any = false;
        for (std::size_t i = 0; i < energy_files_.size(); ++i) {
            const auto v = read_number(energy_files_[i]);
            if (!v) continue;
            if (last_energy_[i] >= 0) {
                double delta = *v - last_energy_[i];
                if (delta < 0) {  // wrapped
                    const std::string range = energy_files_[i].substr(0, energy_files_[i].rfind('/')) + "/max_energy_range_uj";
                    std::ifstream f(range);
                    double max = 0;
                    delta = (f >> max) ? delta + max : 0.0;
                }
                const double dt = std::chrono::duration<double>(now - last_energy_time_).count();
                if (dt > 0) watts += delta * 1e-6 / dt, any = true;
            }
            last_energy_[i] = *v;
        }
        last_energy_time_ = now;
        return any ? watts : std::numeric_limits<double>::quiet_NaN();
    }

    double read_rss_mb() {
        std::ifstream f(opt_.proc_status);
        std::string line;
        while (std::getline(f, line))
            if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
        once(opt_.proc_status, "cannot read VmRSS from " + opt_.proc_status + "; memory is not reported");
        return std::numeric_limits<double>::quiet_NaN();
    }

    WatchdogOptions opt_;
    std::vector<std::string> temp_files_, energy_files_;
    std::vector<double> last_energy_;
    std::unique_ptr<Nvml> nvml_;
    int throttled_polls_ = 0;  // poll thread only
    std::chrono::steady_clock::time_point last_energy_time_{};
    std::set<std::string> said_;  // poll thread (and constructor) only
    // Loss statistics: training thread only.
    std::vector<double> window_, scratch_;
    std::size_t count_ = 0;
    double last_median_ = 0;
    std::vector<double> steps_, step_scratch_;
    std::size_t step_count_ = 0;
    std::atomic<bool> slow_steps_{false};
    std::atomic<double> latest_loss_{std::numeric_limits<double>::quiet_NaN()};
    // Shared under mutex_.
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    Telemetry telemetry_;
    WatchdogEvent pending_event_;
    std::atomic<bool> pending_{false};
    bool armed_ = true, throttle_armed_ = true, stopping_ = false;
    std::thread thread_;
};

}  // namespace lightunet::telemetry

#pragma once
// Progress reporting for training: a tqdm-like bar
//   Epoch 3/10: 42%|████▏     | 540/1287 [01:02<01:26, 8.6it/s, loss=0.231]
// redrawn in place with \r on a terminal (throttled), plain periodic lines otherwise; the
// per-epoch summary line; the metrics history as CSV, JSON and a loss-curve PNG.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../eval/metrics.hpp"
#include "../io/png.hpp"

namespace lightunet::train {

using eval::kRegions;  // an epoch's Dice is kept per BraTS region (WT, TC, ET)

// One finished epoch. val_loss and dice are NaN when there was no validation.
// The watchdog's telemetry logged per epoch (its last poll at the epoch's end), as columns of
// metrics.csv / metrics.json and of the checkpoints' history; NaN where unknown (no sensor, no
// GPU, no watchdog). gpu_throttle_reasons holds NVML's clock-throttle bits.
inline constexpr std::array<const char*, 9> telemetry_columns{"cpu_temp_c",        "cpu_power_w", "rss_mb",
                                                              "gpu_temp_c",        "gpu_power_w", "gpu_power_limit_w",
                                                              "gpu_sm_clock_mhz",  "gpu_memory_mb", "gpu_throttle_reasons"};
inline constexpr std::size_t telemetry_count = telemetry_columns.size();

struct EpochRecord {
    long epoch = 0;  // 1-based
    double train_loss = std::numeric_limits<double>::quiet_NaN();
    double val_loss = std::numeric_limits<double>::quiet_NaN();
    std::array<double, kRegions> dice{std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN(),
                                      std::numeric_limits<double>::quiet_NaN()};
    double lr = 0;        // learning rate at the epoch's last step
    double seconds = 0;   // wall time of the epoch (training and validation)
    long rollbacks = 0;   // watchdog rollbacks during the epoch
    std::array<double, telemetry_count> telemetry = unknown_telemetry();
    double mean_dice() const { return (dice[0] + dice[1] + dice[2]) / 3.0; }
    static constexpr std::array<double, telemetry_count> unknown_telemetry() {
        std::array<double, telemetry_count> t{};
        t.fill(std::numeric_limits<double>::quiet_NaN());
        return t;
    }
};

// "01:02" below an hour, "1:02:03" above (as tqdm).
inline std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const long s = long(seconds);
    char buf[32];
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
    return buf;
}

// The bar line for `done` of `total` after `elapsed` seconds; loss NaN leaves the postfix out.
// `initial`: items already done when the clock started (a resumed epoch), left out of the rate.
inline std::string format_progress(const std::string& desc, long done, long total, double elapsed, double loss,
                                   int bar_width = 10, long initial = 0) {
    static constexpr const char* partial[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    const double frac = total > 0 ? std::clamp(double(done) / double(total), 0.0, 1.0) : 0.0;
    std::string line = desc.empty() ? "" : desc + ": ";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.0f%%|", 100.0 * frac);
    line += buf;
    const long eighths = long(frac * bar_width * 8);
    const long full = eighths / 8;
    int cells = 0;
    for (; cells < full; ++cells) line += "█";
    if (cells < bar_width && eighths % 8) line += partial[eighths % 8], ++cells;
    line.append(std::size_t(bar_width - cells), ' ');
    const double rate =
        elapsed > 0 && done > initial ? double(done - initial) / elapsed : std::numeric_limits<double>::quiet_NaN();
    const double remaining = std::isfinite(rate) ? double(total - done) / rate : std::numeric_limits<double>::quiet_NaN();
    std::string rate_s;
    if (!std::isfinite(rate)) rate_s = "?it/s";
    else if (rate >= 100) std::snprintf(buf, sizeof buf, "%.0fit/s", rate), rate_s = buf;
    else if (rate >= 1) std::snprintf(buf, sizeof buf, "%.1fit/s", rate), rate_s = buf;
    else std::snprintf(buf, sizeof buf, "%.2fs/it", 1.0 / rate), rate_s = buf;
    line += "| " + std::to_string(done) + "/" + std::to_string(total) + " [" + format_duration(elapsed) + "<" +
            format_duration(remaining) + ", " + rate_s;
    if (!std::isnan(loss)) {
        std::snprintf(buf, sizeof buf, ", loss=%.3g", loss);
        line += buf;
    }
    return line + "]";
}

// `[INFO] Epoch 3 | Train Loss 0.2310 | Val Loss 0.2500 | Dice WT/TC/ET 0.81/0.70/0.65`;
// the validation parts are left out when there was no validation.
inline std::string format_epoch_line(const EpochRecord& r) {
    char buf[256];
    int n = std::snprintf(buf, sizeof buf, "[INFO] Epoch %ld | Train Loss %.4f", r.epoch, r.train_loss);
    if (!std::isnan(r.val_loss))
        n += std::snprintf(buf + n, sizeof buf - n, " | Val Loss %.4f | Dice WT/TC/ET %.2f/%.2f/%.2f", r.val_loss, r.dice[0],
                           r.dice[1], r.dice[2]);
    if (r.rollbacks) std::snprintf(buf + n, sizeof buf - n, " | %ld rollback(s)", r.rollbacks);
    return buf;
}

struct ProgressOptions {
    std::optional<bool> terminal;   // default: isatty(out)
    double redraw_seconds = 0.1;    // terminal: at most this often
    double line_seconds = 30.0;     // not a terminal: one plain line this often
    int bar_width = 10;
};

class ProgressBar {
public:
    using Clock = std::chrono::steady_clock;

    // `initial`: items already done (a resumed epoch); they count in the bar, not in the rate.
    ProgressBar(std::string desc, long total, std::FILE* out = stderr, ProgressOptions options = {}, long initial = 0)
        : desc_(std::move(desc)), total_(total), done_(initial), initial_(initial), out_(out), opt_(options), start_(Clock::now()) {
        tty_ = opt_.terminal.value_or(out_ && isatty(fileno(out_)));
        last_ = start_ - std::chrono::hours(1);
    }
    ProgressBar(const ProgressBar&) = delete;
    ProgressBar& operator=(const ProgressBar&) = delete;
    ~ProgressBar() { close(); }

    // Throttled; `loss` NaN shows no loss.
    void update(long done, double loss = std::numeric_limits<double>::quiet_NaN()) {
        done_ = done, loss_ = loss;
        const auto now = Clock::now();
        const double since = std::chrono::duration<double>(now - last_).count();
        if (since < (tty_ ? opt_.redraw_seconds : opt_.line_seconds) && done < total_) return;
        last_ = now;
        draw(false);
    }
    void close() {
        if (closed_ || !out_) return;
        closed_ = true;
        draw(true);
    }
    double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

private:
    void draw(bool final) {
        if (!out_) return;
        const std::string line = format_progress(desc_, done_, total_, elapsed(), loss_, opt_.bar_width, initial_);
        if (tty_) std::fprintf(out_, "\r%s%s", line.c_str(), final ? "\n" : "");
        else if (!final || done_ != printed_) std::fprintf(out_, "%s\n", line.c_str());
        printed_ = done_;
        std::fflush(out_);
    }

    std::string desc_;
    long total_, done_ = 0, initial_ = 0, printed_ = -1;
    double loss_ = std::numeric_limits<double>::quiet_NaN();
    std::FILE* out_;
    ProgressOptions opt_;
    Clock::time_point start_, last_;
    bool tty_ = false, closed_ = false;
};

// CSV: epoch,train_loss,val_loss,dice_WT,dice_TC,dice_ET,lr,seconds,rollbacks, then the
// telemetry columns (NaN as "nan"; unknown telemetry as an empty field).
inline void write_history_csv(const std::string& path, const std::vector<EpochRecord>& history) {
    std::ofstream f(path);
    if (!f) throw std::runtime_error("write_history_csv: cannot open " + path + " for writing");
    f << "epoch,train_loss,val_loss,dice_WT,dice_TC,dice_ET,lr,seconds,rollbacks";
    for (const char* column : telemetry_columns) f << ',' << column;
    f << '\n';
    char buf[256];
    for (const auto& r : history) {
        std::snprintf(buf, sizeof buf, "%ld,%.6f,%.6f,%.6f,%.6f,%.6f,%.6g,%.3f,%ld", r.epoch, r.train_loss, r.val_loss,
                      r.dice[0], r.dice[1], r.dice[2], r.lr, r.seconds, r.rollbacks);
        f << buf;
        for (double v : r.telemetry) {
            f << ',';
            if (std::isfinite(v)) std::snprintf(buf, sizeof buf, "%.6g", v), f << buf;
        }
        f << '\n';
    }
    if (!f) throw std::runtime_error("write_history_csv: writing " + path + " failed");
}

// JSON: {"epochs": [{"epoch": 1, "train_loss": ..., "dice": {"WT": ..}, ...}]}; NaN as null.
inline void write_history_json(const std::string& path, const std::vector<EpochRecord>& history) {
    std::ofstream f(path);
    if (!f) throw std::runtime_error("write_history_json: cannot open " + path + " for writing");
    auto num = [](double v) {
        if (!std::isfinite(v)) return std::string("null");
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.9g", v);
        return std::string(buf);
    };
    f << "{\"epochs\": [";
    for (std::size_t i = 0; i < history.size(); ++i) {
        const auto& r = history[i];
        f << (i ? ",\n  " : "\n  ") << "{\"epoch\": " << r.epoch << ", \"train_loss\": " << num(r.train_loss)
          << ", \"val_loss\": " << num(r.val_loss) << ", \"dice\": {\"WT\": " << num(r.dice[0]) << ", \"TC\": " << num(r.dice[1])
          << ", \"ET\": " << num(r.dice[2]) << "}, \"lr\": " << num(r.lr) << ", \"seconds\": " << num(r.seconds)
          << ", \"rollbacks\": " << r.rollbacks << ", \"telemetry\": {";
        for (std::size_t k = 0; k < telemetry_count; ++k)
            f << (k ? ", " : "") << '"' << telemetry_columns[k] << "\": " << num(r.telemetry[k]);
        f << "}}";
    }
    f << (history.empty() ? "]}\n" : "\n]}\n");
    if (!f) throw std::runtime_error("write_history_json: writing " + path + " failed");
}

// Two panels: train / validation loss, and validation Dice WT/TC/ET, per epoch; a third with the
// temperatures (CPU, GPU) and the GPU's power draw when any epoch has them.
inline void write_history_png(const std::string& path, const std::vector<EpochRecord>& history) {
    std::vector<io::PlotSeries> heat{{"CPU C", {}, {127, 127, 127}}, {"GPU C", {}, {214, 39, 40}}, {"GPU W", {}, {23, 190, 207}}};
    bool any_heat = false;
    for (const auto& r : history) {
        const double values[3] = {r.telemetry[0], r.telemetry[3], r.telemetry[4]};
        for (int k = 0; k < 3; ++k) heat[k].values.push_back(values[k]), any_heat |= std::isfinite(values[k]);
    }
    io::Canvas canvas(any_heat ? 1440 : 960, 380);
    if (any_heat) io::plot_series(canvas, 960, 0, 480, 380, "TEMPERATURE AND GPU POWER", heat);
    std::vector<io::PlotSeries> loss{{"train loss", {}, {31, 119, 180}}, {"val loss", {}, {255, 127, 14}}};
    std::vector<io::PlotSeries> dice{{"WT", {}, {44, 160, 44}}, {"TC", {}, {214, 39, 40}}, {"ET", {}, {148, 103, 189}}};
    for (const auto& r : history) {
        loss[0].values.push_back(r.train_loss);
        loss[1].values.push_back(r.val_loss);
        for (int k = 0; k < kRegions; ++k) dice[k].values.push_back(r.dice[k]);
    }
    io::plot_series(canvas, 0, 0, 480, 380, "LOSS", loss);
    io::plot_series(canvas, 480, 0, 480, 380, "VALIDATION DICE", dice, 0.0, 1.0);
    canvas.write(path);
}

}  // namespace lightunet::train

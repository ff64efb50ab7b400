#pragma once
// Trainer: the epoch loop. Given a model, an optimiser, a learning-rate schedule, loss options
// and batch providers, it runs epochs with a progress bar, validation (loss and Dice WT/TC/ET
// pooled over all validation voxels), metrics history (CSV / JSON / PNG), checkpoints (per
// epoch, every `autosave_seconds`, and on SIGINT / SIGTERM, which stop the run cleanly at the
// next step boundary), and the watchdog (rollback to the last good state on a NaN / exploding
// loss or over-temperature).
//
// Determinism and resume: a BatchProvider must give batch `index` of `epoch` as a pure function
// of (epoch, index) (and its own seed), and the trainer asks for them in order. A checkpoint
// records (epoch, step, global_step), weights, buffers, optimiser moments and step count, the
// partial epoch loss and the caller's named RNG states, so resume() followed by fit() gives
// final weights bit-identical to an uninterrupted run with the same seed and thread count.
// Watchdog rollbacks change the trajectory (by design); runs without anomalies are unaffected.
//
// Any backend: a model in device memory (UNet<C, cuda>) gets its batches uploaded from the
// providers' host tensors, validation reads its probabilities back, and checkpoints and the
// rollback state pass through host copies, so they are the same files as a CPU model's.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../dist/collective.hpp"
#include "../dist/gradients.hpp"
#include "../eval/metrics.hpp"
#include "../loss/dice.hpp"
#include "../model/staging.hpp"
#include "../model/unet.hpp"
#include "../telemetry/watchdog.hpp"
#include "checkpoint.hpp"
#include "progress.hpp"

namespace lightunet::train {

// Batches by position: `batches(epoch)` is the epoch's length, `fill(epoch, index, x, y)`
// writes batch `index` into host tensors (inputs [n][in_channels][d][h][w], labels as
// UNet::backward takes them), which the trainer hands a device model through Staging.
template <class Model>
struct BatchProvider {
    using Images = Tensor<typename Model::scalar, cpu>;  // Model::Input for a CPU model
    using Labels = Tensor<std::uint8_t, cpu>;            // Model::Labels for a CPU model
    std::function<long(long epoch)> batches;
    std::function<void(long epoch, long index, Images& x, Labels& y)> fill;
};

struct TrainerOptions {
    long epochs = 10;
    double lr = 1e-3;                                        // base learning rate
    std::function<double(double base, long step)> schedule;  // e.g. PolyLR{total}; empty: constant
    DiceLoss loss{};
    // Checkpoints: none when checkpoint_dir is empty.
    std::string checkpoint_dir;
    int keep_last = 3;
    bool save_every_epoch = true;
    double autosave_seconds = 300.0;  // 0: off
    bool handle_signals = true;       // SIGINT / SIGTERM: checkpoint and return at the next step boundary
    // Output.
    bool show_progress = true;
    std::FILE* out = stderr;
    ProgressOptions progress{};
    std::string metrics_csv, metrics_json, curves_png;  // rewritten after every epoch when set
    // Watchdog.
    bool use_watchdog = false;
    telemetry::WatchdogOptions watchdog{};
    long good_state_every = 10;  // steps between refreshes of the rollback state (sane loss only)
    // Stop (with a checkpoint) once this many optimiser steps are done in total; < 0: never.
    long stop_after_steps = -1;
    // A wall-clock budget in seconds (0: none), counted over the whole run across resumes. Epochs
    // (of the provider's length, each validated and checkpointed as usual) then run until the
    // budget is spent, `epochs` only capping them; the rate follows the clock through
    // time_schedule(base, fraction of the budget spent), reaching its end when the budget does;
    // and the last epoch is cut short so that its validation and checkpoints (last and best) are
    // written within the budget. A clock-driven run is not bit-reproducible: where the steps stop
    // and the rate each step gets depend on the machine's speed.
    double time_budget_seconds = 0;
    std::function<double(double base, double fraction)> time_schedule;  // empty: `schedule` by step
    // Caller state carried through checkpoints (loader / augmentation RNGs, ...).
    std::function<RngStates()> save_rng;
    std::function<void(const RngStates&)> restore_rng;
    // Data parallelism: every process of `collective` runs fit() with the same options, its
    // providers giving its share of each global batch (e.g. LoaderConfig::first_item). The
    // trainer distributes the model over the group (UNet::distribute), sums the gradients between
    // backward and the update, agrees at every step boundary on stopping, the time budget (rank
    // 0's clock), autosaves and watchdog events, splits the validation batches over the ranks and
    // sums their scores, and lets rank 0 alone write checkpoints, metrics and logs (every rank
    // reads the same checkpoint on resume). Null, or a group of one: a single process.
    dist::Collective* collective = nullptr;
    // Hooks: before every training step (fault injection, custom logging); after every epoch.
    std::function<void(long global_step)> before_step;
    std::function<void(const EpochRecord&)> on_epoch;
};

struct FitResult {
    bool completed = false;    // every epoch ran, or the time budget was spent
    bool out_of_time = false;  // the time budget ended the run
    bool interrupted = false;  // stopped by a signal or request_stop()
    long global_step = 0;
    long rollbacks = 0;
    std::string last_checkpoint;
};

// Soft Dice (+ cross-entropy) of probabilities against labels, exactly as the training loss
// (docs/design.md), without gradients: the validation loss.
template <class T>
double evaluation_loss(Head head, int images, int classes, std::size_t plane, const T* probs, const std::uint8_t* labels,
                       const DiceLoss& o) {
    const bool softmax = head == Head::softmax;
    auto truth = [&](int n, int c, std::size_t k) {
        return softmax ? double(labels[std::size_t(n) * plane + k] == c) : double(labels[(std::size_t(n) * classes + c) * plane + k] != 0);
    };
    const int first = softmax && !o.include_background ? 1 : 0;
    const int groups = o.batch_dice ? 1 : images;
    double loss = 0;
    for (int g = 0; g < groups; ++g)
        for (int c = first; c < classes; ++c) {
            double I = 0, P = 0, G = 0;
            for (int n = 0; n < images; ++n) {
                if (!o.batch_dice && n != g) continue;
                const T* p = probs + (std::size_t(n) * classes + c) * plane;
                for (std::size_t k = 0; k < plane; ++k) {
                    const double t = truth(n, c, k);
                    I += double(p[k]) * t, P += double(p[k]), G += t;
                }
            }
            loss += (1.0 - (2 * I + o.smooth) / (P + G + o.smooth)) / (double(classes - first) * groups);
        }
    if (o.ce_weight > 0) {
        double ce = 0;
        for (int n = 0; n < images; ++n)
            for (std::size_t k = 0; k < plane; ++k) {
                if (softmax) {
                    const int t = labels[std::size_t(n) * plane + k];
                    ce -= std::log(std::max(double(probs[(std::size_t(n) * classes + t) * plane + k]), 1e-12));
                } else {
                    for (int c = 0; c < classes; ++c) {
                        const double p = std::clamp(double(probs[(std::size_t(n) * classes + c) * plane + k]), 1e-12, 1.0 - 1e-12);
                        ce -= truth(n, c, k) > 0 ? std::log(p) : std::log(1.0 - p);
                    }
                }
            }
        loss += o.ce_weight * ce / (double(images) * double(plane) * (softmax ? 1 : classes));
    }
    return loss;
}

// "7,765,124 parameters, 31.06 MB of float32 weights"
template <class Model>
std::string model_summary() {
    // Thousands separators by copying (GCC 12 misreports string::insert here, -Wrestrict).
    const std::string digits = std::to_string(Model::parameter_count);
    std::string n;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) n += ',';
        n += digits[i];
    }
    char buf[96];
    std::snprintf(buf, sizeof buf, " parameters, %.2f MB of %s weights", double(Model::parameter_bytes) / 1e6,
                  detail::scalar_name<typename Model::scalar>());
    return n + buf;
}

namespace detail {
inline std::atomic<int> g_stop_signal{0};
// The first SIGINT / SIGTERM asks for a clean stop (checkpoint at the next step boundary, or as
// soon as a validation batch is done); a second one ends the process at once, as if no handler
// were there: checkpoints are written atomically, so the last one is intact either way.
extern "C" inline void trainer_signal_handler(int signum) {
    if (g_stop_signal.exchange(signum) != 0) {
        ::signal(signum, SIG_DFL);
        ::raise(signum);
        return;
    }
    static constexpr char note[] = "\n[INFO] Stopping at the next step with a checkpoint; a second Ctrl-C (or signal) quits at once\n";
    [[maybe_unused]] const auto written = ::write(STDERR_FILENO, note, sizeof note - 1);  // async-signal-safe
}

// Installs SIGINT / SIGTERM handlers that set a flag; restores the previous ones on exit.
class SignalGuard {
public:
    explicit SignalGuard(bool enable) : enabled_(enable) {
        if (!enabled_) return;
        g_stop_signal.store(0);
        struct sigaction sa {};
        sa.sa_handler = trainer_signal_handler;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int_);
        sigaction(SIGTERM, &sa, &old_term_);
    }
    ~SignalGuard() {
        if (!enabled_) return;
        sigaction(SIGINT, &old_int_, nullptr);
        sigaction(SIGTERM, &old_term_, nullptr);
    }
    SignalGuard(const SignalGuard&) = delete;
    SignalGuard& operator=(const SignalGuard&) = delete;

private:
    bool enabled_;
    struct sigaction old_int_ {}, old_term_ {};
};
}  // namespace detail

template <class Model, class Optimizer>
class Trainer {
public:
    using Images = typename BatchProvider<Model>::Images;
    using Labels = typename BatchProvider<Model>::Labels;
    using T = typename Model::scalar;

    Trainer(Model& model, Optimizer& optimizer, TrainerOptions options)
        : model_(model), opt_(optimizer), o_(std::move(options)) {
        if (!root()) {  // rank 0 speaks and writes for the group
            o_.out = nullptr;
            o_.show_progress = false;
            o_.metrics_csv.clear(), o_.metrics_json.clear(), o_.curves_png.clear();
        }
        if (!o_.checkpoint_dir.empty() && root()) manager_ = std::make_unique<CheckpointManager>(o_.checkpoint_dir, o_.keep_last);
        if (o_.good_state_every < 1) o_.good_state_every = 1;
    }

    // Loads a checkpoint (weights, optimiser, progress, RNG states via restore_rng).
    void resume(const std::string& path) {
        load_checkpoint(path, model_, opt_, state_);
        if (o_.restore_rng) o_.restore_rng(state_.rng);
        info("Resumed from " + path + " at epoch " + std::to_string(state_.epoch + 1) + ", step " + std::to_string(state_.step) +
             " (global step " + std::to_string(state_.global_step) + ")");
    }
    // Resumes from the newest readable rolling checkpoint in checkpoint_dir; false if none.
    // Distributed: the one rank 0 finds, on every rank.
    bool resume_latest() {
        std::string latest;
        if (manager_)
            if (const auto found = manager_->latest()) latest = *found;
        if (distributed()) latest = o_.collective->broadcast(latest, 0);
        if (latest.empty()) return false;
        resume(latest);
        return true;
    }

    void request_stop() { stop_requested_.store(true); }
    const TrainState& state() const { return state_; }
    const std::vector<EpochRecord>& history() const { return state_.history; }
    telemetry::Watchdog* watchdog() { return watchdog_.get(); }

    // Saves a rolling checkpoint now (and best.h5 when `best`); returns its path ("" without a folder).
    std::string save(bool best = false) {
        if (!manager_) return "";
        if (o_.save_rng) state_.rng = o_.save_rng();
        const auto t0 = std::chrono::steady_clock::now();
        const std::string path = best ? manager_->save_best(model_, opt_, state_) : manager_->save(model_, opt_, state_);
        last_save_ = std::chrono::steady_clock::now();
        last_save_seconds_ = std::chrono::duration<double>(last_save_ - t0).count();
        return path;
    }
    double last_save_seconds() const { return last_save_seconds_; }

    FitResult fit(const BatchProvider<Model>& train, const BatchProvider<Model>* validation = nullptr) {
        if (!train.batches || !train.fill) throw std::invalid_argument("Trainer::fit: the training provider needs batches and fill");
        detail::SignalGuard signals(o_.handle_signals);
        info("Model: " + model_summary<Model>());
        if (o_.use_watchdog) {
            telemetry::WatchdogOptions w = o_.watchdog;
            if (!w.log) w.log = [this](const std::string& m) { log_line("[WATCHDOG] " + m); };
            watchdog_ = std::make_unique<telemetry::Watchdog>(std::move(w));
            watchdog_->start();
        }
        keep_good_state();
        FitResult result;
        last_save_ = std::chrono::steady_clock::now();
        auto finish = [&](bool completed, bool interrupted) {
            if (watchdog_) watchdog_->stop();
            result.completed = completed;
            result.interrupted = interrupted;
            result.global_step = state_.global_step;
            return result;
        };
        const bool budgeted = o_.time_budget_seconds > 0;
        if (budgeted) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "Time budget %.2f min (%.2f spent): epochs until then, the last one cut short for its validation and checkpoints",
                          o_.time_budget_seconds / 60, state_.elapsed_seconds / 60);
            info(buf);
        }
        for (; state_.epoch < o_.epochs; ) {
            const long epoch = state_.epoch;
            const long n = train.batches(epoch);
            const long val_batches = validation ? validation->batches(epoch) : 0;
            const auto epoch_start = std::chrono::steady_clock::now();
            const double seconds_before = state_.epoch_seconds;
            auto epoch_seconds = [&] {
                return seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
            };
            auto spent = [&] { return state_.elapsed_seconds + epoch_seconds(); };
            // An epoch starts only with time for a step and its closing work.
            if (budgeted && state_.step == 0 && at_boundary(spent(), val_batches).out_of_time) {
                result.out_of_time = true;
                // The last epoch ended whole: its state is the last checkpoint (already written
                // when every epoch is saved).
                if (manager_ && !o_.save_every_epoch && state_.global_step > 0) result.last_checkpoint = save();
                break;
            }
            std::optional<ProgressBar> bar;
            if (o_.show_progress && o_.out)
                bar.emplace("Epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o_.epochs), n, o_.out, o_.progress,
                            state_.step);
            // A stop request: a checkpoint of where training stands (mid-epoch, or with the
            // epoch's steps done and its validation still to run), then return.
            auto stop = [&] {
                state_.epoch_seconds = epoch_seconds();
                if (bar) bar->close();
                result.last_checkpoint = save();
                info(std::string("Stopping on ") + (stop_reason() ? stop_reason() : "another rank's stop request") +
                     (result.last_checkpoint.empty() ? "" : "; saved " + result.last_checkpoint));
                return finish(false, true);
            };
            for (long k = state_.step; k < n; ++k) {
                // Step boundary: stop requests first.
                const Boundary boundary = at_boundary(spent(), val_batches);
                if (boundary.stop) return stop();
                if (boundary.out_of_time) {
                    result.out_of_time = true;
                    char buf[128];
                    std::snprintf(buf, sizeof buf, "Time budget: epoch %ld ends after %ld of %ld steps", epoch + 1, k, n);
                    info(buf);
                    break;
                }
                if (o_.stop_after_steps >= 0 && state_.global_step >= o_.stop_after_steps) {
                    state_.epoch_seconds = epoch_seconds();
                    if (bar) bar->close();
                    result.last_checkpoint = save();
                    return finish(false, false);
                }
                const auto step_start = std::chrono::steady_clock::now();
                train.fill(epoch, k, x_, y_);
                const double rate = budgeted && o_.time_schedule ? o_.time_schedule(o_.lr, boundary.budget_fraction)
                                    : o_.schedule                ? o_.schedule(o_.lr, state_.global_step)
                                                                 : o_.lr;
                opt_.lr = rate * state_.lr_scale;
                if (o_.before_step) o_.before_step(state_.global_step);
                const double loss = step();
                const double step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
                step_seconds_ = step_seconds_ > 0 ? 0.8 * step_seconds_ + 0.2 * step_seconds : step_seconds;
                if (watchdog_) watchdog_->note_step_seconds(step_seconds);
                ++state_.global_step;
                state_.step = k + 1;
                Anomaly anomaly = watchdog_ ? watchdog_->check_loss(loss) : Anomaly::none;
                std::string detail;
                if (anomaly == Anomaly::exploding_loss) {
                    char buf[128];
                    std::snprintf(buf, sizeof buf, "loss %.4g is over %.3g x the running median %.4g", loss,
                                  o_.watchdog.explode_factor, watchdog_->last_median());
                    detail = buf;
                } else if (anomaly == Anomaly::non_finite_loss) {
                    detail = "loss is " + std::to_string(loss);
                } else if (watchdog_) {
                    if (auto ev = watchdog_->take_event()) anomaly = ev->kind, detail = ev->detail;
                }
                const bool autosave_due = o_.autosave_seconds > 0 && manager_ &&
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save_).count() >= o_.autosave_seconds;
                // The loss is the global batch's on every rank, so its anomalies agree already; a
                // sensor's event and rank 0's autosave clock are made everyone's.
                const auto [agreed_anomaly, agreed_autosave] = agree<2>({double(anomaly), double(autosave_due)});
                if (Anomaly(int(agreed_anomaly)) != anomaly) anomaly = Anomaly(int(agreed_anomaly)), detail = "reported by another rank";
                if (anomaly == Anomaly::none || anomaly == Anomaly::over_temperature || anomaly == Anomaly::thermal_throttling) {
                    if (std::isfinite(loss)) state_.epoch_loss_sum += loss, ++state_.epoch_loss_count;
                }
                if (anomaly == Anomaly::thermal_throttling) {
                    pause_to_cool(detail);  // slow steps are still right: nothing to roll back
                } else if (anomaly != Anomaly::none) {
                    rollback(anomaly, detail);
                    ++result.rollbacks;
                    ++state_.epoch_rollbacks;
                } else if (state_.global_step % o_.good_state_every == 0) {
                    keep_good_state();
                }
                if (bar) bar->update(k + 1, state_.epoch_loss_count ? state_.epoch_loss_sum / double(state_.epoch_loss_count) : loss);
                if (agreed_autosave > 0) {
                    state_.epoch_seconds = epoch_seconds();
                    result.last_checkpoint = save();
                }
            }
            if (bar) bar->close();
            EpochRecord rec;
            rec.epoch = epoch + 1;
            rec.train_loss = state_.epoch_loss_count ? state_.epoch_loss_sum / double(state_.epoch_loss_count)
                                                     : std::numeric_limits<double>::quiet_NaN();
            rec.lr = opt_.lr;
            rec.rollbacks = state_.epoch_rollbacks;
            if (watchdog_) {
                const telemetry::Telemetry t = watchdog_->telemetry();
                const double throttle = t.gpu.throttle_known ? double(t.gpu.throttle_reasons) : std::numeric_limits<double>::quiet_NaN();
                rec.telemetry = {t.temperature,         t.power_watts,      t.rss_mb,
                                 t.gpu.temperature,     t.gpu.power_watts,  t.gpu.power_limit_watts,
                                 t.gpu.sm_clock_mhz,    t.gpu.memory_used_mb, throttle};
            }
            if (validation) {
                const auto validation_start = std::chrono::steady_clock::now();
                const auto scores = validate_unless_stopped(*validation, epoch);
                if (!scores) return stop();
                validation_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - validation_start).count();
                rec.val_loss = scores->first;
                rec.dice = scores->second;
            }
            rec.seconds = epoch_seconds();
            state_.elapsed_seconds += rec.seconds;
            const auto epoch_end = std::chrono::steady_clock::now();
            state_.history.push_back(rec);
            state_.epoch = epoch + 1;
            state_.step = 0;
            state_.epoch_loss_sum = 0;
            state_.epoch_loss_count = 0;
            state_.epoch_rollbacks = 0;
            state_.epoch_seconds = 0;
            log_line(format_epoch_line(rec));
            if (!o_.metrics_csv.empty()) write_history_csv(o_.metrics_csv, state_.history);
            if (!o_.metrics_json.empty()) write_history_json(o_.metrics_json, state_.history);
            if (!o_.curves_png.empty()) write_history_png(o_.curves_png, state_.history);
            const bool better = validation && std::isfinite(rec.mean_dice()) && rec.mean_dice() > state_.best_dice;
            if (better) state_.best_dice = rec.mean_dice();
            if (manager_ && (o_.save_every_epoch || result.out_of_time)) result.last_checkpoint = save();
            if (manager_ && better) save(true);
            if (o_.on_epoch) o_.on_epoch(rec);
            // The epoch's closing work (metrics, pictures, checkpoints) counts as run time too.
            state_.elapsed_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_end).count();
            if (result.out_of_time) break;
        }
        if (budgeted) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "Time budget: %.2f of %.2f min spent, %ld steps", state_.elapsed_seconds / 60,
                          o_.time_budget_seconds / 60, state_.global_step);
            info(buf);
        }
        return finish(true, false);
    }

    // Validation loss (mean over samples) and Dice WT/TC/ET pooled over every validation voxel.
    std::pair<double, std::array<double, kRegions>> validate(const BatchProvider<Model>& val, long epoch) {
        return *validate_unless_stopped(val, epoch, false);
    }

private:
    using Scores = std::pair<double, std::array<double, kRegions>>;
    using Anomaly = telemetry::Anomaly;

    // "SIGINT", "SIGTERM" or "request" while a stop is pending, else null.
    const char* stop_reason() const {
        if (const int sig = detail::g_stop_signal.load(); o_.handle_signals && sig) return sig == SIGINT ? "SIGINT" : "SIGTERM";
        return stop_requested_.load() ? "request" : nullptr;
    }

    // validate(), given up between two batches when a stop is pending (validation of a large
    // set takes minutes; the checkpoint then holds the epoch's steps done and no scores).
    // Distributed: each rank validates every size()-th batch from its rank on and the scores are
    // summed; a stop request then waits for the next step boundary, where the ranks agree on it.
    std::optional<Scores> validate_unless_stopped(const BatchProvider<Model>& val, long epoch, bool interruptible = true) {
        constexpr UNetConfig C = Model::config;
        std::array<eval::DiceCounts, kRegions> counts{};
        double loss_sum = 0;
        long samples = 0;
        const long n = val.batches(epoch);
        const long first = distributed() ? o_.collective->rank() : 0, stride = distributed() ? o_.collective->size() : 1;
        for (long k = first; k < n; k += stride) {
            if (interruptible && !distributed() && stop_reason() != nullptr) return std::nullopt;
            val.fill(epoch, k, vx_, vy_);
            const Images& probs = staging_.to_host(model_.forward(staging_.images(vx_), Mode::eval));
            const Shape s = probs.shape();
            const std::size_t plane = s.spatial();
            loss_sum += evaluation_loss(C.head, s.n, C.classes, plane, probs.data(), vy_.data(), o_.loss) * s.n;
            samples += s.n;
            pred_.resize(plane);
            truth_.resize(plane);
            for (int b = 0; b < s.n; ++b) {
                eval::probabilities_to_labels(C.head, C.classes, probs.data() + std::size_t(b) * C.classes * plane, plane, pred_.data());
                if (C.head == Head::sigmoid) eval::region_masks_to_labels(vy_.data() + std::size_t(b) * C.classes * plane, plane, truth_.data());
                else std::copy_n(vy_.data() + std::size_t(b) * plane, plane, truth_.data());
                const auto c = eval::region_counts(pred_, truth_);
                for (int r = 0; r < kRegions; ++r) counts[r].add(c[r]);
            }
        }
        if (distributed()) {
            std::array<double, 3 * kRegions + 2> totals{loss_sum, double(samples)};
            for (int r = 0; r < kRegions; ++r)
                totals[2 + 3 * r] = double(counts[r].intersection), totals[3 + 3 * r] = double(counts[r].predicted),
                                 totals[4 + 3 * r] = double(counts[r].truth);
            o_.collective->sum(std::span<double>(totals));  // counts stay exact below 2^53 voxels
            loss_sum = totals[0], samples = long(totals[1]);
            for (int r = 0; r < kRegions; ++r)
                counts[r] = {std::uint64_t(totals[2 + 3 * r]), std::uint64_t(totals[3 + 3 * r]), std::uint64_t(totals[4 + 3 * r])};
        }
        std::array<double, kRegions> dice{};
        for (int r = 0; r < kRegions; ++r) dice[r] = counts[r].dice();
        return Scores{samples ? loss_sum / double(samples) : std::numeric_limits<double>::quiet_NaN(), dice};
    }

    // One optimiser step; a non-finite loss (the model refuses to step on it) comes back as NaN
    // when the watchdog is on, and is rethrown otherwise.
    double step() {
        try {
            if (distributed()) {
                if (model_.distribution() != &cross_ || cross_.total_images != x_.shape().n * o_.collective->size()) {
                    cross_ = o_.collective->cross_batch(x_.shape().n);
                    model_.distribute(&cross_);
                }
                return model_.train_step(staging_.images(x_), staging_.labels(y_), o_.loss, opt_,
                                         [this](Tensor<T, typename Model::backend>& g) {
                                             dist::sum_across(*o_.collective, g, Model::parameter_count, gradient_staging_);
                                         });
            }
            return model_.train_step(staging_.images(x_), staging_.labels(y_), o_.loss, opt_);
        } catch (const std::runtime_error& e) {
            if (!watchdog_ || std::string(e.what()).rfind("UNet::train_step: the loss is", 0) != 0) throw;
            return std::numeric_limits<double>::quiet_NaN();
        }
    }

    bool distributed() const { return o_.collective && o_.collective->size() > 1; }
    bool root() const { return !o_.collective || o_.collective->rank() == 0; }

    // Every rank's values, the largest of each (one small collective); as they are in one process.
    template <std::size_t N>
    std::array<double, N> agree(std::array<double, N> values) {
        if (distributed()) o_.collective->max(std::span<double>(values));
        return values;
    }

    // What the ranks decide together at a step boundary: a stop (any rank's request), and the
    // time budget by rank 0's clock (whether a step still fits, and the fraction spent, which the
    // rate follows).
    struct Boundary {
        bool stop = false, out_of_time = false;
        double budget_fraction = 0;
    };
    Boundary at_boundary(double spent, long val_batches) {
        std::array<double, 3> v{stop_reason() != nullptr ? 1.0 : 0.0, 0.0, 0.0};
        if (root() && o_.time_budget_seconds > 0) {
            v[1] = budget_allows_step(spent, val_batches) ? 0.0 : 1.0;
            v[2] = std::min(1.0, spent / o_.time_budget_seconds);
        }
        v = agree<3>(v);
        return {v[0] > 0, v[1] > 0, v[2]};
    }

    // Whether one more step, then validation and two checkpoints (last and best), fit in the time
    // budget, from the times measured so far, with 10 % to spare on the closing work. Before any
    // measurement (a fresh or resumed fit): a step as the run's mean so far, a validation batch as
    // half a step, a checkpoint as a step.
    bool budget_allows_step(double spent, long val_batches) const {
        const double step = step_seconds_ > 0 ? step_seconds_
                            : state_.global_step > 0 ? state_.elapsed_seconds / double(state_.global_step)
                                                     : 0.0;
        const double validation = validation_seconds_ >= 0 ? validation_seconds_ : 0.5 * step * double(val_batches);
        const double checkpoints = 2 * (last_save_seconds_ > 0 ? last_save_seconds_ : step);
        return spent + step + 1.1 * (validation + checkpoints) < o_.time_budget_seconds;
    }

    // The rollback weights live in host memory (a device model's copied out); the optimiser's
    // copy stays in its own backend's memory.
    void keep_good_state() {
        good_params_.resize(Model::parameter_count);
        good_buffers_.resize(Model::buffer_count);
        model_.copy_parameters_to_host(good_params_);
        model_.copy_buffers_to_host(good_buffers_);
        good_opt_ = opt_;
        good_step_ = state_.global_step;
    }

    void rollback(Anomaly anomaly, const std::string& detail) {
        model_.load_parameters_from_host(good_params_);
        model_.load_buffers_from_host(good_buffers_);
        opt_ = *good_opt_;
        std::string msg = std::string(telemetry::anomaly_name(anomaly)) + " at step " + std::to_string(state_.global_step) + " (" + detail +
                          "): rolled back to the state of step " + std::to_string(good_step_);
        if (watchdog_ && watchdog_->options().halve_lr) {
            state_.lr_scale *= 0.5;
            char buf[64];
            std::snprintf(buf, sizeof buf, "; learning-rate scale now %.4g", state_.lr_scale);
            msg += buf;
        }
        log_line("[WATCHDOG] " + msg);
        if (anomaly == Anomaly::over_temperature) pause_to_cool();
    }

    // With pause_when_hot: waits until the CPU and GPU are below their resume temperatures and
    // the GPU is not thermally throttled (or the pause limit passes, or a stop is requested).
    void pause_to_cool(const std::string& why = "") {
        if (!watchdog_ || !watchdog_->options().pause_when_hot) return;
        const auto& w = watchdog_->options();
        char buf[256];
        std::snprintf(buf, sizeof buf, "[WATCHDOG] %s%spausing until the CPU is below %.0f C and the GPU below %.0f C, not throttled",
                      why.c_str(), why.empty() ? "" : ": ", w.resume_temperature, w.resume_gpu_temperature);
        log_line(buf);
        const double waited = watchdog_->wait_until_cool([this] { return stop_reason() != nullptr; });
        std::snprintf(buf, sizeof buf, "[WATCHDOG] resumed after %.1f s (%s)", waited, watchdog_->summary().c_str());
        log_line(buf);
    }

    void info(const std::string& m) { log_line("[INFO] " + m); }
    void log_line(const std::string& m) {
        if (!o_.out) return;
        std::fprintf(o_.out, "%s\n", m.c_str());
        std::fflush(o_.out);
    }

    Model& model_;
    Optimizer& opt_;
    TrainerOptions o_;
    TrainState state_;
    std::unique_ptr<CheckpointManager> manager_;
    std::unique_ptr<telemetry::Watchdog> watchdog_;
    Images x_, vx_;  // host batches; staging_ uploads them for a device model
    Labels y_, vy_;
    Staging<Model> staging_;
    std::vector<std::uint8_t> pred_, truth_;
    std::vector<T> good_params_, good_buffers_;
    std::optional<Optimizer> good_opt_;
    CrossBatch cross_;
    std::vector<T> gradient_staging_;  // device models without CUDA-aware MPI
    long good_step_ = 0;
    std::atomic<bool> stop_requested_{false};
    std::chrono::steady_clock::time_point last_save_{};
    double last_save_seconds_ = 0;
    double step_seconds_ = 0;         // moving average of a step (batch + update)
    double validation_seconds_ = -1;  // the last validation's time; < 0: none yet
};

}  // namespace lightunet::train

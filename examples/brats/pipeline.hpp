#pragma once
// `train` and `predict` for one compiled configuration on one backend. main.cpp picks the
// configuration and the device; model_2d.cpp, model_3d.cpp, ... instantiate these templates for
// the CPU and model_*_cuda.cu for CUDA (one translation unit each, so they compile in parallel).
#include <chrono>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <lightunet/data/loader.hpp>
#include <lightunet/eval/metrics.hpp>
#include <lightunet/eval/sliding_window.hpp>
#include <lightunet/io/png.hpp>
#include <lightunet/model/unet.hpp>
#include <lightunet/optim/optimizers.hpp>
#include <lightunet/optim/schedule.hpp>
#include <lightunet/train/checkpoint.hpp>
#include <lightunet/train/loader_provider.hpp>
#include <lightunet/train/trainer.hpp>
#ifdef LIGHTUNET_BRATS_ONNX
#include <lightunet/io/onnx_export.hpp>
#endif

#include "common.hpp"
#include "plan.hpp"

namespace brats {

using lightunet::Extent;

// One per translation unit (model_2d.cpp, model_3d.cpp): picks the head from run.labels.
int train_2d(const brats_cli::Options& o, const RunInfo& run);
int train_3d(const brats_cli::Options& o, const RunInfo& run);
int predict_2d(const brats_cli::Options& o, const RunInfo& run);
int predict_3d(const brats_cli::Options& o, const RunInfo& run);
int train_2d_resenc(const brats_cli::Options& o, const RunInfo& run);
int train_3d_resenc(const brats_cli::Options& o, const RunInfo& run);
int predict_2d_resenc(const brats_cli::Options& o, const RunInfo& run);
int predict_3d_resenc(const brats_cli::Options& o, const RunInfo& run);
int export_2d(const brats_cli::Options& o, const RunInfo& run);
int export_3d(const brats_cli::Options& o, const RunInfo& run);
int export_2d_resenc(const brats_cli::Options& o, const RunInfo& run);
int export_3d_resenc(const brats_cli::Options& o, const RunInfo& run);
// Pipeline::training_step_seconds of the run's network on the CPU (--plan times fp32 against bf16).
double training_step_seconds_2d(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision, int timed);
double training_step_seconds_3d(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision, int timed);
double training_step_seconds_2d_resenc(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision, int timed);
double training_step_seconds_3d_resenc(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision, int timed);
// --device cuda (model_*_cuda.cu, built when nvcc was found: LIGHTUNET_BRATS_CUDA).
int train_2d_cuda(const brats_cli::Options& o, const RunInfo& run);
int train_3d_cuda(const brats_cli::Options& o, const RunInfo& run);
int predict_2d_cuda(const brats_cli::Options& o, const RunInfo& run);
int predict_3d_cuda(const brats_cli::Options& o, const RunInfo& run);
int train_2d_resenc_cuda(const brats_cli::Options& o, const RunInfo& run);
int train_3d_resenc_cuda(const brats_cli::Options& o, const RunInfo& run);
int predict_2d_resenc_cuda(const brats_cli::Options& o, const RunInfo& run);
int predict_3d_resenc_cuda(const brats_cli::Options& o, const RunInfo& run);
// Makes --device's GPU the backend's (cuda_device.cu); returns its PCI bus id for the watchdog.
std::string use_cuda_device(int index);

// Which kernels run (a portable build chooses them for this CPU at start, LIGHTUNET_CPU_TARGET
// overrides; a bad value fails here, before any work), so that every log names its ISA.
inline void report_cpu_kernels(int threads) {
    std::fprintf(stderr, "[INFO] CPU kernels: %s, %d threads\n", lightunet::Kernels<lightunet::cpu>::target().c_str(), threads);
}
// --precision: the convolutions' operands, said in the log with the kernels that run them
// (main.cpp has checked that the device has them: bf16 on the CPU, tf32 on CUDA).
template <class Model>
void set_precision(const brats_cli::Options& o, Model& model) {
    const std::string precision = o.str("precision");
    if constexpr (lightunet::runs_on_host<Model>) {
        const bool bf16 = precision == "bf16";
        model.set_conv_precision(bf16 ? lightunet::Precision::bf16 : lightunet::Precision::fp32);
        if (bf16)
            std::fprintf(stderr, "[INFO] Convolutions: bf16 operands, fp32 sums: %s\n",
                         lightunet::Kernels<lightunet::cpu>::bf16_kernels().c_str());
    } else {
        lightunet::Kernels<typename Model::backend>::set_tf32(precision == "tf32");
        const int cc = Model::backend::compute_capability();
        if (precision == "tf32" && cc >= 80)
            std::fprintf(stderr, "[INFO] Convolutions: TF32 tensor cores for Fprop and Dgrad, fp32 sums\n");
        else if (precision == "tf32")  // the kernels compiled for this GPU's architecture have no TF32 path
            std::fprintf(stderr, "[WARN] --precision tf32: compute capability %d.%d has no TF32 tensor cores (8.0 and newer); "
                                 "the fp32 kernels run\n", cc / 10, cc % 10);
    }
}

// The GPU of --device for a CUDA model (said in the log, with the versions); its PCI bus id, or
// "" on the CPU.
template <class Backend>
std::string use_device(const brats_cli::Options& o) {
    if constexpr (std::is_same_v<Backend, lightunet::cpu>) return "";
    else return use_cuda_device(device_option(o).index);
}

template <lightunet::UNetConfig C, class Backend = lightunet::cpu>
struct Pipeline {
    using Model = lightunet::UNet<C, Backend>;
    using Images = lightunet::Tensor<float>;  // host batches: the trainer uploads them for a GPU model
    using Labels = lightunet::Tensor<std::uint8_t>;
    static constexpr bool regions = C.head == lightunet::Head::sigmoid;

    template <class Optimizer>
    static int train(const brats_cli::Options& o, const RunInfo& run, Optimizer optimizer);
    static int predict(const brats_cli::Options& o, const RunInfo& run);
    static int export_onnx(const brats_cli::Options& o, const RunInfo& run);
    // Seconds of a training step of this network at the run's patch and --batch (per rank),
    // --threads, convolutions in `precision`: the fastest of `timed` steps after one that plans
    // the buffers, on synthetic images (a step's time does not depend on the values).
    static double training_step_seconds(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision,
                                        int timed);

private:
    // The loss --loss and --sample-dice ask for, with this head's classes.
    static lightunet::DiceLoss training_loss(const brats_cli::Options& o) {
        lightunet::DiceLoss loss;
        loss.ce_weight = o.str("loss") == "dice_ce" ? 1.0 : 0.0;
        loss.include_background = regions;  // softmax: Dice over the tumour classes only
        // Batch Dice by default: a per-sample Dice of a tumour-free slice gives (almost) no
        // gradient against false positives there, and most slices are tumour-free.
        loss.batch_dice = !o.flag_set("sample-dice");
        return loss;
    }
    // Loads --checkpoint (default: default_checkpoint(run)) into the model; returns its path.
    static fs::path load(const brats_cli::Options& o, const RunInfo& run, Model& model);
    static void load_weights(const fs::path& checkpoint, const RunInfo& run, Model& model);
    // The validation cases predicted whole by the model as it stands, as predict would.
    static ValidationPredictions predict_validation(const data::CaseSource& cases, Model& model, Extent patch);
    // Of the candidates, the weights that predict the validation cases best, then the
    // post-processing chosen on their predictions; validation.csv, postprocess.cfg (which names
    // the checkpoint predict takes) and overlays of the first `pictures` cases.
    static void score_validation(const data::CaseSource& cases, std::vector<ValidationPredictions> candidates, int pictures,
                                 const fs::path& out);
};

template <lightunet::UNetConfig C, class Backend>
fs::path Pipeline<C, Backend>::load(const brats_cli::Options& o, const RunInfo& run, Model& model) {
    const fs::path run_dir = o.str("run");
    const fs::path checkpoint = o.given("checkpoint") ? fs::path(o.str("checkpoint")) : default_checkpoint(run_dir);
    load_weights(checkpoint, run, model);
    return checkpoint;
}

template <lightunet::UNetConfig C, class Backend>
void Pipeline<C, Backend>::load_weights(const fs::path& checkpoint, const RunInfo& run, Model& model) {
    namespace train = lightunet::train;
    train::TrainState state;
    if (run.optimizer == "sgd") {
        lightunet::Sgd<float, Backend> optimizer;
        train::load_checkpoint(checkpoint.string(), model, optimizer, state);
    } else {
        lightunet::Adam<float, Backend> optimizer;
        train::load_checkpoint(checkpoint.string(), model, optimizer, state);
    }
    std::fprintf(stderr, "[INFO] Loaded %s (epoch %ld, step %ld)\n", checkpoint.c_str(), state.epoch, state.global_step);
}

template <lightunet::UNetConfig C, class Backend>
ValidationPredictions Pipeline<C, Backend>::predict_validation(const data::CaseSource& cases, Model& model, Extent patch) {
    namespace eval = lightunet::eval;
    eval::SlidingWindowOptions so;
    so.patch = patch;
    eval::SlidingWindowPredictor<Model> predictor(model, so);
    ValidationPredictions v;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const data::Case c = cases.load(i);
        v.labels.push_back(eval::predict_case(predictor, c));
        v.metrics.push_back(eval::evaluate_case(c, v.labels.back()));
        v.truths.push_back(c.labels);
        v.grids.push_back(eval::case_grid(c));
    }
    return v;
}

template <lightunet::UNetConfig C, class Backend>
void Pipeline<C, Backend>::score_validation(const data::CaseSource& cases, std::vector<ValidationPredictions> candidates, int pictures,
                                            const fs::path& out) {
    namespace eval = lightunet::eval;
    std::size_t chosen_index = 0;
    for (std::size_t k = 0; k < candidates.size(); ++k) {
        const ValidationPredictions& v = candidates[k];
        const eval::CaseMetrics m = eval::mean_metrics(v.metrics);
        std::fprintf(stderr, "[INFO] Validation cases predicted whole with %s (%.1f s): mean Dice WT %.3f TC %.3f ET %.3f, HD95 %.1f / %.1f / %.1f mm\n",
                     v.checkpoint.c_str(), v.seconds, m.dice[0], m.dice[1], m.dice[2], m.hd95[0], m.hd95[1], m.hd95[2]);
        if (v.mean_dice() > candidates[chosen_index].mean_dice()) chosen_index = k;
    }
    ValidationPredictions& v = candidates[chosen_index];
    if (candidates.size() > 1)
        std::fprintf(stderr, "[INFO] predict takes %s: the higher mean Dice over the regions on the validation cases (%.3f)\n",
                     v.checkpoint.c_str(), v.mean_dice());
    std::vector<eval::ValidationCase> validation;
    for (std::size_t i = 0; i < v.labels.size(); ++i) validation.push_back({v.labels[i], v.truths[i], v.grids[i]});
    const eval::PostProcessingChoice choice = eval::choose_postprocessing(validation);
    // The table and the pictures hold what `predict` would give: the predictions after the choice.
    for (std::size_t i = 0; i < v.labels.size(); ++i)
        if (eval::postprocess(choice.chosen, v.labels[i], v.grids[i]).changed())
            v.metrics[i] = eval::evaluate_case(v.metrics[i].id, v.labels[i], v.truths[i], v.grids[i]);
    const eval::CaseMetrics mean = eval::mean_metrics(v.metrics);
    eval::write_metrics_csv((out / "validation.csv").string(), v.metrics);
    write_postprocessing(out / "postprocess.cfg", choice, v.checkpoint);
    std::fprintf(stderr, "[INFO] Validation cases (%zu, %s, after post-processing): mean Dice WT %.3f TC %.3f ET %.3f, HD95 %.1f / %.1f / %.1f mm -> %s\n",
                 cases.size(), v.checkpoint.c_str(), mean.dice[0], mean.dice[1], mean.dice[2], mean.hd95[0], mean.hd95[1],
                 mean.hd95[2], (out / "validation.csv").c_str());
    if (choice.chosen.removes_components())
        std::fprintf(stderr, "[INFO] Post-processing: tumour components under %g of the case's largest become background (mean Dice of the validation cases %.3f -> %.3f)\n",
                     choice.chosen.min_component_fraction, choice.dice_without, choice.dice_after_components);
    else
        std::fprintf(stderr, "[INFO] Post-processing: every tumour component kept (no fraction raised the validation cases' mean Dice %.3f)\n",
                     choice.dice_without);
    if (choice.chosen.min_enhancing_mm3 > 0)
        std::fprintf(stderr, "[INFO] Post-processing: enhancing tumour under %.0f mm^3 becomes necrosis (mean ET Dice of the validation cases %.3f -> %.3f) -> %s\n",
                     choice.chosen.min_enhancing_mm3, choice.et_dice_without, choice.et_dice_with, (out / "postprocess.cfg").c_str());
    else
        std::fprintf(stderr, "[INFO] Post-processing: enhancing tumour kept whatever its volume (no threshold raised the validation cases' mean ET Dice %.3f) -> %s\n",
                     choice.et_dice_without, (out / "postprocess.cfg").c_str());
    if (pictures > 0) fs::create_directories(out / "pictures");
    for (std::size_t i = 0; i < cases.size() && int(i) < pictures; ++i) {
        const data::Case c = cases.load(i);
        const fs::path png = out / "pictures" / (c.id + ".png");
        lightunet::io::write_case_overlay(png.string(), c, v.labels[i], 3, 2);
        std::fprintf(stderr, "[INFO] Wrote %s\n", png.c_str());
    }
}

// The run's network with the checkpoint's weights as an ONNX model: input [batch, 4, (D,) H, W]
// at the run's patch, or symbolic N, (D,) H, W; output the head's probabilities.
template <lightunet::UNetConfig C, class Backend>
int Pipeline<C, Backend>::export_onnx(const brats_cli::Options& o, const RunInfo& run) {
    const fs::path out = o.str("out");
    const bool symbolic = o.flag_set("symbolic");
    [[maybe_unused]] const int batch = int(o.integer("batch", 1, 4096));
    if (symbolic && o.given("batch"))
        throw brats_cli::UsageError("--batch fixes the input shape; with --symbolic the batch is a dimension N of any size");
    if (o.flag_set("fold-batch-norm") && C.norm != lightunet::Norm::batch)
        throw brats_cli::UsageError("--fold-batch-norm: the " + run.model + " network has no batch norm to fold");
#ifdef LIGHTUNET_BRATS_ONNX
    Model model(0);
    const fs::path checkpoint = load(o, run, model);
    lightunet::OnnxOptions options;
    if (!symbolic) options.input_shape = lightunet::Shape{batch, C.in_channels, run.patch[0], run.patch[1], run.patch[2]};
    if (o.flag_set("fold-batch-norm")) options.batch_norm = lightunet::OnnxBatchNorm::fold;
    options.graph_name = "brats_" + run.model + "_" + run.labels + (run.arch == "resenc" ? "_resenc" : "");
    if (out.has_parent_path()) fs::create_directories(out.parent_path());
    lightunet::export_onnx(model, out, options);
    std::string shape = symbolic ? std::string(C.dims == 3 ? "N x 4 x D x H x W" : "N x 4 x H x W")
                                 : std::to_string(batch) + " x 4 x " + run.patch_option();
    std::fprintf(stderr, "[INFO] Wrote %s (%s, ONNX opset %d; input 'input' %s, output 'probabilities' %s of %d %s)\n",
                 out.c_str(), checkpoint.filename().c_str(), lightunet::onnx_opset, shape.c_str(),
                 regions ? "sigmoid" : "softmax", C.classes, regions ? "regions WT/TC/ET" : "classes");
    return 0;
#else
    (void)run;
    throw std::runtime_error(out.string() + ": this brats was built without the ONNX export (libonnx-dev and libprotobuf-dev "
                             "were not found when it was configured; install them and build again)");
#endif
}

template <lightunet::UNetConfig C, class Backend>
double Pipeline<C, Backend>::training_step_seconds(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision,
                                                   int timed) {
    const int threads = int(o.integer("threads", 1, 256));
    lightunet::Kernels<lightunet::cpu>::set_threads(threads);
    const int ranks = process_group() ? process_group()->size() : 1;
    const lightunet::Shape shape{int(o.integer("batch", 1, 4096)) / ranks, C.in_channels, run.patch[0], run.patch[1], run.patch[2]};
    Images x(shape);
    Labels y({shape.n, regions ? 3 : 1, shape.d, shape.h, shape.w});
    lightunet::InitRng rng(3);
    for (auto& v : x) v = float(rng.normal());
    for (auto& v : y) v = std::uint8_t(rng.next() % (regions ? 2 : C.classes));
    auto model = std::make_unique<Model>(1);
    model->set_threads(threads);
    model->set_conv_precision(precision);
    lightunet::Adam<float, Backend> adam(1e-4);
    const lightunet::DiceLoss loss = training_loss(o);
    model->train_step(x, y, loss, adam);
    double fastest = std::numeric_limits<double>::infinity();
    for (int i = 0; i < timed; ++i) {
        const auto start = std::chrono::steady_clock::now();
        model->train_step(x, y, loss, adam);
        fastest = std::min(fastest, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return fastest;
}

template <lightunet::UNetConfig C, class Backend>
template <class Optimizer>
int Pipeline<C, Backend>::train(const brats_cli::Options& o, const RunInfo& run, Optimizer optimizer) {
    namespace train = lightunet::train;
    namespace eval = lightunet::eval;
    const int threads = int(o.integer("threads", 1, 256));
    lightunet::Kernels<lightunet::cpu>::set_threads(threads);
    report_cpu_kernels(threads);
    const std::string gpu_bus_id = use_device<Backend>(o);  // no GPU: an error before anything is written
    const fs::path out = o.str("out");
    fs::create_directories(out);
    const std::uint64_t seed = std::uint64_t(o.integer("seed", 0));
    // Data parallel under mpirun: each rank draws its share of every global batch, rank 0 speaks.
    lightunet::dist::Collective* const group = process_group();
    const int rank = group ? group->rank() : 0, ranks = group ? group->size() : 1;

    const std::unique_ptr<io::StoreSource> store = open_training_data_in_rank_order(o);
    const Split split = split_cases(*store, o.real("val-split", 0.0, 0.9), o.str("val-cases"), seed);
    SubsetSource train_cases(*store, split.train), val_cases(*store, split.validation);
    std::fprintf(stderr, "[INFO] %zu training cases, %zu validation cases\n", train_cases.size(), val_cases.size());

    const Extent patch{run.patch[0], run.patch[1], run.patch[2]};
    data::LoaderConfig lc;
    lc.patch = patch;
    lc.batch = int(o.integer("batch", 1, 4096)) / ranks;  // main.cpp checked that the ranks divide it
    lc.first_item = rank * lc.batch;
    if (group)
        std::fprintf(stderr, "[INFO] Data parallel: %d ranks x %d images per step (global batch %d), %d threads each\n", ranks,
                     lc.batch, lc.batch * ranks, threads);
    lc.foreground_fraction = o.real("foreground", 0.0, 1.0);
    lc.labels = regions ? data::LabelFormat::regions : data::LabelFormat::classes;
    lc.batches_per_epoch = std::size_t(o.integer("steps-per-epoch", 1));
    lc.workers = int(o.integer("workers", 0, 64));
    lc.seed = seed;
    if (o.flag_set("no-augment")) lc.augmentation = data::Augmentation::none();
    train::LoaderProvider train_loader(train_cases, lc);
    if (!train_loader.left_out().empty()) {
        std::fprintf(stderr, "[WARN] %zu of %zu training cases are left out: 3D patches never span a missing slice\n",
                     train_loader.left_out().size(), train_cases.size());
        for (std::size_t i = 0; i < train_loader.left_out().size() && i < 10; ++i)
            std::fprintf(stderr, "  - %s\n", train_loader.left_out()[i].second.c_str());
    }

    // Validation: a fixed set of un-augmented patches drawn once (the same every epoch).
    std::vector<Images> val_x;
    std::vector<Labels> val_y;
    if (val_cases.size() > 0) {
        data::LoaderConfig vc = lc;
        vc.batch = lc.batch * ranks;  // the same batches on every rank: the trainer splits them
        vc.first_item = 0;
        vc.augmentation = data::Augmentation::none();
        vc.seed = seed + 1;
        vc.workers = 0;
        vc.foreground_fraction = 0.5;
        vc.batches_per_epoch = std::size_t(o.integer("val-batches", 1));
        data::PatchLoader loader(val_cases, vc);
        data::Batch b;
        for (std::size_t i = 0; i < vc.batches_per_epoch; ++i) {
            loader.next(b);
            val_x.push_back(b.images);
            val_y.push_back(b.labels);
        }
    }
    train::BatchProvider<Model> validation{[&](long) { return long(val_x.size()); },
                                           [&](long, long i, Images& x, Labels& y) {
                                               x = val_x[std::size_t(i)];
                                               y = val_y[std::size_t(i)];
                                           }};

    Model model(seed);
    model.set_threads(threads);
    set_precision(o, model);
    // --minutes: epochs until the budget is spent (--epochs, if given, caps them) and the schedule
    // over the clock: evaluated at a step of `ticks` in proportion to the time spent.
    const bool budgeted = o.given("minutes") && o.real("minutes", 0.0) > 0;
    constexpr long ticks = 1'000'000;
    const long epochs = budgeted && !o.given("epochs") ? std::numeric_limits<long>::max() : o.integer("epochs", 1);
    const long total_steps = budgeted ? ticks : epochs * long(lc.batches_per_epoch);
    train::TrainerOptions to;
    to.epochs = epochs;
    to.lr = o.real("lr", 0.0, 10.0);
    const std::string schedule = o.str("schedule");
    if (schedule == "poly") to.schedule = lightunet::PolyLR{total_steps};
    else if (schedule == "cosine") to.schedule = lightunet::CosineLR{total_steps};
    else if (schedule == "step") to.schedule = lightunet::StepLR{std::max(1L, total_steps / 3)};
    if (budgeted) {
        to.time_budget_seconds = 60 * o.real("minutes", 0.0);
        if (to.schedule)
            to.time_schedule = [by_step = to.schedule](double base, double fraction) { return by_step(base, long(fraction * double(ticks))); };
    }
    to.loss = training_loss(o);
    to.checkpoint_dir = (out / "checkpoints").string();
    to.keep_last = int(o.integer("keep", 1, 1000));
    to.autosave_seconds = o.real("autosave", 0.0);
    to.metrics_csv = (out / "metrics.csv").string();
    to.metrics_json = (out / "metrics.json").string();
    to.curves_png = (out / "curves.png").string();
    to.use_watchdog = !o.flag_set("no-watchdog");
    to.watchdog.poll_seconds = o.real("watchdog-seconds", 0.1);
    to.watchdog.max_temperature = o.real("max-temp", 0.0);
    to.watchdog.gpu_pci_bus_id = gpu_bus_id;  // NVML numbers GPUs otherwise than CUDA
    if (o.flag_set("no-progress")) to.show_progress = false;
    to.save_rng = [seed] { return train::RngStates{{"loader_seed", {seed}}}; };
    to.restore_rng = [seed](const train::RngStates& s) {
        auto it = s.find("loader_seed");
        if (it == s.end() || it->second.size() != 1 || it->second[0] != seed)
            throw std::runtime_error("--resume: the checkpoint was trained with another --seed");
    };
    if (o.given("stop-after-steps")) to.stop_after_steps = o.integer("stop-after-steps", 1);
    to.collective = group;
    optimizer.clip_norm = o.real("clip", 0.0);
    train::Trainer<Model, Optimizer> trainer(model, optimizer, to);
    if (o.given("resume")) {
        const std::string from = o.str("resume");
        if (from == "latest") {
            if (!trainer.resume_latest()) std::fprintf(stderr, "[INFO] No checkpoint in %s yet: starting afresh\n", to.checkpoint_dir.c_str());
        } else {
            trainer.resume(from);
        }
    }
    // The data opened, the checkpoint (if any) matched: this run is accepted.
    if (rank == 0) run.write(out / "run.cfg");
    const auto result = trainer.fit(train_loader.provider<Model>(), val_x.empty() ? nullptr : &validation);
    if (result.interrupted) {
        std::fprintf(stderr, "[INFO] Interrupted; resume with --resume latest (last checkpoint %s)\n", result.last_checkpoint.c_str());
        return 130;
    }
    if (!result.completed) {
        std::fprintf(stderr, "[INFO] Stopped after %ld steps as asked; continue with --resume latest (last checkpoint %s)\n",
                     result.global_step, result.last_checkpoint.c_str());
        return 0;
    }

    if (rank != 0) return 0;
    // The weights the schedule ended with, kept as final.h5 beside best.h5 (the best epoch by a
    // few validation patches, a noisy pick with one or two validation cases): both predict the
    // validation cases whole, and postprocess.cfg names the better one for predict.
    if (val_cases.size() > 0) {
        const fs::path checkpoints = to.checkpoint_dir;
        train::save_checkpoint((checkpoints / kFinalCheckpoint).string(), model, optimizer, trainer.state());
        std::vector<ValidationPredictions> candidates;
        auto predict_with = [&](const char* checkpoint) {
            const auto t0 = std::chrono::steady_clock::now();
            candidates.push_back(predict_validation(val_cases, model, patch));
            candidates.back().checkpoint = checkpoint;
            candidates.back().seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        };
        predict_with(kFinalCheckpoint);
        std::error_code error;
        if (fs::exists(checkpoints / kBestCheckpoint, error)) {
            load_weights(checkpoints / kBestCheckpoint, run, model);
            predict_with(kBestCheckpoint);
        }
        score_validation(val_cases, std::move(candidates), int(o.integer("pictures", 0, 1000)), out);
    }
    std::fprintf(stderr, "[INFO] Done: %ld steps; checkpoints in %s, metrics in %s\n", result.global_step,
                 to.checkpoint_dir.c_str(), to.metrics_csv.c_str());
    return 0;
}

template <lightunet::UNetConfig C, class Backend>
int Pipeline<C, Backend>::predict(const brats_cli::Options& o, const RunInfo& run) {
    namespace train = lightunet::train;
    namespace eval = lightunet::eval;
    const int threads = int(o.integer("threads", 1, 256));
    lightunet::Kernels<lightunet::cpu>::set_threads(threads);
    report_cpu_kernels(threads);
    use_device<Backend>(o);
    Model model(0);
    model.set_threads(threads);
    set_precision(o, model);
    load(o, run, model);

    eval::SlidingWindowOptions so;
    so.patch = Extent{run.patch[0], run.patch[1], run.patch[2]};
    so.overlap = o.real("overlap", 0.0, 0.95);
    if (o.flag_set("tta") && o.flag_set("no-tta")) throw brats_cli::UsageError("--tta and --no-tta contradict each other");
    so.mirror = o.flag_set("tta") || (!o.flag_set("no-tta") && plan_asks_for_tta(o.str("run")));
    if (so.mirror && !o.flag_set("tta")) std::fprintf(stderr, "[INFO] Mirror test-time augmentation: the run's plan (--no-tta: off)\n");
    eval::SlidingWindowPredictor<Model> predictor(model, so);
    const eval::PostProcessing post = postprocessing_for(o);
    const fs::path out = o.str("out");
    fs::create_directories(out);
    const int pictures = int(o.integer("pictures", 0, 100000));
    int done = 0;
    double total_seconds = 0;
    // Predicts one prepared case, reports its latency and draws it while pictures are due.
    auto segment = [&](const data::Case& prepared) {
        const auto t0 = std::chrono::steady_clock::now();
        auto labels = eval::predict_case(predictor, prepared);
        const eval::Grid grid = eval::case_grid(prepared);
        const eval::PostProcessed changed = eval::postprocess(post, labels, grid);
        if (changed.components.components > 0)
            std::fprintf(stderr, "[INFO] %s: post-processing: %zu small tumour components (%zu voxels) became background, %zu kept\n",
                         prepared.id.c_str(), changed.components.components, changed.components.voxels, changed.components.kept);
        if (changed.enhancing_relabelled > 0)
            std::fprintf(stderr, "[INFO] %s: post-processing: its enhancing tumour (%zu voxels, %.0f mm^3) became necrosis\n",
                         prepared.id.c_str(), changed.enhancing_relabelled, double(changed.enhancing_relabelled) * grid.voxel_mm3());
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        total_seconds += seconds;
        if (done < pictures) lightunet::io::write_case_overlay((out / (prepared.id + ".png")).string(), prepared, labels, 3, 2);
        ++done;
        return std::pair{std::move(labels), seconds};
    };
    const fs::path input = o.str("data");
    const PredictInputs inputs = inputs_to_predict(input);
    for (const io::CaseFiles& files : inputs.nifti) {
        const data::Case prepared = io::prepare_for_prediction(io::read_case(files));
        const auto [labels, seconds] = segment(prepared);
        const fs::path written = io::write_prediction(out, prepared, labels, files.naming);
        std::fprintf(stderr, "[INFO] %s: %.2f s (brain crop %dx%dx%d) -> %s\n", prepared.id.c_str(), seconds, prepared.extent.x,
                     prepared.extent.y, prepared.extent.z, written.c_str());
    }
    // Kaggle slices: every volume is assembled (absent slices as background, which the brain
    // crop then skips), and each input slice gets a mask file of the same name, in the Kaggle
    // mask layout, plus a metadata CSV of the predictions.
    // The declared channel order is judged per volume: a volume against it is a warning with its
    // evidence, only a set of volumes against it stops (io::ChannelOrderTally).
    std::vector<io::KaggleSliceRecord> records;
    io::KaggleVolumeOptions read;
    read.missing = io::MissingSlices::fill_background;
    read.read.verify_channel_order = !o.flag_set("no-channel-check");
    io::ChannelOrderTally channel_order(read.read.channels, input.string());
    for (const auto& [volume, slices] : inputs.kaggle_volumes) {
        const io::KaggleVolume v = io::read_kaggle_volume(input, volume, slices, read);
        if (read.read.verify_channel_order)
            if (const std::string warning = channel_order.add(v.case_data.id, v.channel_check); !warning.empty())
                std::fprintf(stderr, "[WARN] %s\n", warning.c_str());
        const std::vector<float> background = io::kaggle_slice_background(v.case_data);
        const data::Case prepared = io::prepare_for_prediction(v.case_data, &background);
        const auto [labels, seconds] = segment(prepared);
        const data::VolumeExtent e = v.case_data.extent;
        const std::vector<std::uint8_t> full = io::uncrop_labels(prepared, labels, e);
        const std::size_t plane = std::size_t(e.x) * e.y;
        for (const auto& [slice, file] : slices)
            records.push_back(io::write_kaggle_mask(out, volume, slice, full.data() + std::size_t(slice) * plane, e.x, e.y));
        std::fprintf(stderr, "[INFO] %s: %zu slices, %.2f s (brain crop %dx%dx%d) -> %s/volume_%d_slice_*.h5\n",
                     prepared.id.c_str(), slices.size(), seconds, prepared.extent.x, prepared.extent.y, prepared.extent.z,
                     out.c_str(), volume);
    }
    if (!records.empty()) io::write_kaggle_metadata(out / "meta_data.csv", records);
    if (!inputs.kaggle_volumes.empty() && read.read.verify_channel_order)
        std::fprintf(stderr, "[INFO] Channel order checked per volume: %s\n", channel_order.votes().c_str());
    std::fprintf(stderr, "[INFO] Predicted %d %s, %.2f s per %s on %d threads\n", done, inputs.nifti.empty() ? "volumes" : "cases",
                 done ? total_seconds / done : 0.0, inputs.nifti.empty() ? "volume" : "case", threads);
    return 0;
}

// The optimiser chosen on the command line (a type of its own: the trainer is compiled for it).
template <lightunet::UNetConfig C, class Backend = lightunet::cpu>
int train_with_optimizer(const brats_cli::Options& o, const RunInfo& run) {
    const double lr = o.real("lr", 0.0, 10.0), wd = o.real("weight-decay", 0.0, 1.0);
    if (run.optimizer == "sgd") return Pipeline<C, Backend>::train(o, run, lightunet::Sgd<float, Backend>(lr, 0.99, true, wd));
    return Pipeline<C, Backend>::train(o, run, lightunet::Adam<float, Backend>(lr, wd, run.optimizer == "adamw"));
}

}  // namespace brats

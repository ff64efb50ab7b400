// brats: generate a synthetic BraTS set, convert cases into a store, train a 2D slice or 3D
// patch U-Net, predict whole cases into NIfTI, and evaluate Dice / HD95 per region.
//   brats <command> --help   for each command's options
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include <lightunet/data/synthetic.hpp>
#include <lightunet/eval/metrics.hpp>
#ifdef LIGHTUNET_BRATS_MPI
#include <lightunet/dist/mpi.hpp>
#endif

#include "common.hpp"
#include "pipeline.hpp"

namespace brats {

constexpr const char* kUsage =
    "usage: brats <command> [options]\n"
    "\n"
    "commands:\n"
    "  synth     write synthetic BraTS-like cases (NIfTI, either naming, or Kaggle HDF5 slices)\n"
    "  convert   turn a folder of cases into a preprocessed HDF5 store\n"
    "  train     train the 2D slice or 3D patch U-Net (checkpoints, metrics, pictures)\n"
    "  predict   segment whole cases into NIfTI in their original geometry\n"
    "  evaluate  Dice and HD95 per region (WT, TC, ET) of predictions against ground truth\n"
    "  export    write a run's checkpoint as an ONNX model for ONNX Runtime (docs/onnx.md)\n"
    "\n"
    "`brats <command> --help` lists a command's options and exit statuses.\n"
    "\n"
    "exit status: 0 done, 1 failed (bad data, I/O; the message names the file), 2 usage error\n"
    "(the message names the option); train: 130 interrupted with a checkpoint; evaluate: 4 below\n"
    "--min-wt-dice.\n";

// The statuses a command exits with, for its --help.
std::string exit_statuses(const std::string& command) {
    std::string text =
        "\nexit status:\n"
        "  0    done\n"
        "  1    failed: unreadable or invalid data, I/O error (the message names the file and value)\n"
        "  2    usage error: unknown, missing or malformed option (the message names it)\n";
    if (command == "convert") text += "       (0 also when --skip-bad left cases out: they are listed, and kept in the store's skipped_cases)\n";
    if (command == "train")
        text +=
            "       (2 also when --out holds a run and --resume is missing, or --resume differs from the run's options)\n"
            "       (0 also when --stop-after-steps stopped the run with a checkpoint)\n"
            "  130  stopped by Ctrl-C / SIGTERM with a checkpoint (continue with --resume latest); a second Ctrl-C\n"
            "       quits at once (status 130 from the shell), the last checkpoint intact\n";
    if (command == "evaluate") text += "  4    the mean whole-tumour Dice is below --min-wt-dice\n";
    return text;
}

int synth_command(const brats_cli::Options& o) {
    const fs::path out = o.str("out");
    const long cases = o.integer("cases", 1, 100000);
    const std::uint64_t seed = std::uint64_t(o.integer("seed", 0));
    data::SyntheticConfig config;
    const auto e = o.extents("extent");
    if (e.size() != 3) throw brats_cli::UsageError("--extent needs three extents XxYxZ, not '" + o.str("extent") + "'");
    config.extent = {e[0], e[1], e[2]};
    const std::string layout = o.str("layout");
    const std::string prefix = o.str("prefix");
    std::vector<io::KaggleSliceRecord> records;
    for (long i = 0; i < cases; ++i) {
        data::Case c = data::synthetic_case(config, seed + std::uint64_t(i));
        char id[64];
        if (layout == "nifti2023") std::snprintf(id, sizeof id, "%s-%05ld-000", prefix.c_str(), i + 1);
        else std::snprintf(id, sizeof id, "%s_%03ld", prefix.c_str(), i + 1);
        c.id = id;
        if (layout == "kaggle") {
            const auto r = io::write_kaggle_volume(out, c, int(i + 1));
            records.insert(records.end(), r.begin(), r.end());
        } else {
            io::WriteOptions w;
            w.image_type = io::VoxelType::int16;
            io::write_case(out / c.id, c, layout == "nifti2023" ? io::Naming::brats2023 : io::Naming::brats2018, w);
        }
        std::fprintf(stderr, "\r[INFO] synth %ld/%ld %s", i + 1, cases, c.id.c_str());
    }
    if (layout == "kaggle") io::write_kaggle_metadata(out / "meta_data.csv", records);
    std::fprintf(stderr, "\n[INFO] Wrote %ld cases (%dx%dx%d, %s) into %s\n", cases, e[0], e[1], e[2], layout.c_str(), out.c_str());
    return 0;
}

int convert_command(const brats_cli::Options& o) {
    io::ConvertOptions options;
    options.skip_bad_cases = o.flag_set("skip-bad");
    options.kaggle.read.verify_channel_order = !o.flag_set("no-channel-check");
    options.progress = [](const std::string& id, std::size_t done, std::size_t total) {
        std::fprintf(stderr, "\r[INFO] %zu/%zu %-40s", done, total, id.c_str());
    };
    options.warning = brats::print_conversion_warning;
    const io::ConvertReport report = io::convert_to_store(o.str("data"), o.str("out"), options);
    std::fprintf(stderr, "\n[INFO] Converted %zu cases into %s (%zu skipped)\n", report.converted.size(), o.str("out").c_str(),
                 report.skipped.size());
    // Skipping is what --skip-bad asked for: warned about, not a failure.
    for (const auto& [what, why] : report.skipped) std::fprintf(stderr, "[WARN] skipped %s: %s\n", what.c_str(), why.c_str());
    brats::print_conversion_summary(report);
    return 0;
}

// Reads a segmentation file as canonical classes (the file's edition from its naming).
std::vector<std::uint8_t> read_segmentation(const io::CaseFiles& files, const fs::path& path, data::VolumeExtent& extent,
                                            std::array<float, 3>& spacing) {
    const io::NiftiVolume v = io::read_nifti(path);
    extent = v.extent;
    spacing = v.geometry.spacing;
    return data::LabelMap::for_edition(files.edition()).apply(v.values.data(), v.values.size(), path.string());
}

void print_metrics(const lightunet::eval::CaseMetrics& m) {
    std::printf("%-28s Dice WT/TC/ET %.3f/%.3f/%.3f  HD95 %.1f/%.1f/%.1f mm\n", m.id.c_str(), m.dice[0], m.dice[1], m.dice[2],
                m.hd95[0], m.hd95[1], m.hd95[2]);
}

// Kaggle slices: per volume, the slices the truth folder holds, each against the prediction of
// the same name, stacked at their slice positions (1 mm apart, as BraTS's grid; slices between
// them count as empty in both) so that HD95 measures distances in 3D.
std::vector<lightunet::eval::CaseMetrics> evaluate_kaggle(const fs::path& pred_dir, const fs::path& truth_dir, bool allow_missing) {
    namespace eval = lightunet::eval;
    std::vector<eval::CaseMetrics> rows;
    for (const auto& [volume, slices] : io::group_kaggle_slices(truth_dir)) {
        const int first = slices.begin()->first, depth = slices.rbegin()->first - first + 1;
        std::vector<std::uint8_t> truth, pred;
        int width = 0, height = 0, found = 0;
        for (const auto& [slice, truth_file] : slices) {
            const fs::path pred_file = pred_dir / truth_file.filename();
            if (!fs::exists(pred_file)) {
                if (allow_missing) continue;
                throw std::runtime_error(pred_dir.string() + ": no prediction " + truth_file.filename().string() + " for " +
                                         truth_file.string());
            }
            const io::KaggleMask t = io::read_kaggle_mask(truth_file), p = io::read_kaggle_mask(pred_file);
            if (p.width != t.width || p.height != t.height)
                throw std::runtime_error(pred_file.string() + ": mask is " + std::to_string(p.width) + "x" + std::to_string(p.height) +
                                         ", the ground truth's is " + std::to_string(t.width) + "x" + std::to_string(t.height));
            if (truth.empty()) {
                width = t.width;
                height = t.height;
                truth.assign(std::size_t(width) * height * depth, 0);
                pred.assign(truth.size(), 0);
            } else if (t.width != width || t.height != height) {
                throw std::runtime_error(truth_file.string() + ": slice is " + std::to_string(t.width) + "x" + std::to_string(t.height) +
                                         ", other slices of volume " + std::to_string(volume) + " are " + std::to_string(width) +
                                         "x" + std::to_string(height));
            }
            const std::size_t offset = std::size_t(slice - first) * t.labels.size();
            std::copy(t.labels.begin(), t.labels.end(), truth.begin() + std::ptrdiff_t(offset));
            std::copy(p.labels.begin(), p.labels.end(), pred.begin() + std::ptrdiff_t(offset));
            ++found;
        }
        if (found == 0) {
            std::fprintf(stderr, "[WARN] no prediction for volume %d in %s\n", volume, pred_dir.c_str());
            continue;
        }
        rows.push_back(eval::evaluate_case("volume_" + std::to_string(volume), pred, truth, eval::Grid{width, height, depth, {1.0, 1.0, 1.0}}));
        print_metrics(rows.back());
    }
    return rows;
}

std::vector<lightunet::eval::CaseMetrics> evaluate_nifti(const fs::path& pred_dir, const fs::path& truth_dir, bool allow_missing) {
    namespace eval = lightunet::eval;
    std::vector<eval::CaseMetrics> rows;
    for (const io::CaseFiles& truth : io::find_cases(truth_dir)) {
        if (truth.labels.empty()) continue;
        const std::string suffix = io::modality_suffixes(truth.naming)[io::kSegmentationSlot];
        fs::path pred;
        for (const char* ext : {".nii.gz", ".nii"})
            if (fs::exists(pred_dir / (truth.id + suffix + ext))) pred = pred_dir / (truth.id + suffix + ext);
        if (pred.empty()) {
            if (allow_missing) {
                std::fprintf(stderr, "[WARN] no prediction for %s in %s\n", truth.id.c_str(), pred_dir.c_str());
                continue;
            }
            throw std::runtime_error(pred_dir.string() + ": no prediction " + truth.id + suffix + ".nii[.gz] for " + truth.labels.string());
        }
        data::VolumeExtent te, pe;
        std::array<float, 3> spacing{}, pspacing{};
        const auto t = read_segmentation(truth, truth.labels, te, spacing);
        const auto p = read_segmentation(truth, pred, pe, pspacing);
        if (te != pe)
            throw std::runtime_error(pred.string() + ": extent " + std::to_string(pe.x) + "x" + std::to_string(pe.y) + "x" +
                                     std::to_string(pe.z) + " differs from the ground truth's " + std::to_string(te.x) + "x" +
                                     std::to_string(te.y) + "x" + std::to_string(te.z));
        const eval::Grid grid{te.x, te.y, te.z, {double(spacing[0]), double(spacing[1]), double(spacing[2])}};
        rows.push_back(eval::evaluate_case(truth.id, p, t, grid));
        print_metrics(rows.back());
    }
    return rows;
}

int evaluate_command(const brats_cli::Options& o) {
    namespace eval = lightunet::eval;
    const fs::path pred_dir = o.str("pred"), truth_dir = o.str("truth");
    const bool allow_missing = o.flag_set("allow-missing");
    const std::vector<eval::CaseMetrics> rows = holds_kaggle_slices(truth_dir) ? evaluate_kaggle(pred_dir, truth_dir, allow_missing)
                                                                                : evaluate_nifti(pred_dir, truth_dir, allow_missing);
    if (rows.empty()) throw std::runtime_error(truth_dir.string() + ": no labelled cases to evaluate");
    const auto mean = eval::mean_metrics(rows);
    std::printf("%-28s Dice WT/TC/ET %.3f/%.3f/%.3f  HD95 %.1f/%.1f/%.1f mm  (%zu cases)\n", "mean", mean.dice[0], mean.dice[1],
                mean.dice[2], mean.hd95[0], mean.hd95[1], mean.hd95[2], rows.size());
    // Beside the predictions it scores unless told otherwise: never into whatever folder the
    // command happened to run in.
    const std::string out = o.given("out") ? o.str("out") : (pred_dir / "metrics.csv").string();
    eval::write_metrics_csv(out, rows);
    std::fprintf(stderr, "[INFO] Wrote %s\n", out.c_str());
    if (o.given("min-wt-dice") && mean.dice[0] < o.real("min-wt-dice", 0.0, 1.0)) {
        std::fprintf(stderr, "[ERROR] mean whole-tumour Dice %.3f is below --min-wt-dice %s\n", mean.dice[0], o.str("min-wt-dice").c_str());
        return 4;
    }
    return 0;
}

// The options that shape a training run besides model, labels, optimizer and patch: the data a
// step sees, the loss, the optimiser and the schedule. run.cfg records them; --resume must
// repeat them. (Threads, workers, checkpoint cadence, pictures and the watchdog do not change
// what is learnt, and --data may move.)
const std::vector<std::string> shaping_values = {"epochs", "minutes", "steps-per-epoch", "batch", "lr", "schedule", "weight-decay",
                                                 "clip", "loss", "foreground", "val-split", "val-cases", "val-batches",
                                                 "seed"};
const std::vector<std::string> shaping_flags = {"sample-dice", "no-augment", "plan"};

RunInfo run_info_for_training(const brats_cli::Options& o) {
    RunInfo run;
    for (const auto& name : shaping_values) run.settings[name] = o.str(name);
    for (const auto& name : shaping_flags) run.settings[name] = o.flag_set(name) ? "on" : "off";
    run.model = o.str("model");
    run.labels = o.str("labels");
    run.optimizer = o.str("optimizer");
    run.arch = o.str("arch");
    run.deep_supervision = o.flag_set("deep-supervision");
    if (o.given("minutes")) o.real("minutes", 0.0, 1e7);  // a usage error now, not after the data is read
    const auto p = o.extents("patch");
    if (run.model == "2d") {
        if (p.size() != 2) throw brats_cli::UsageError("--patch for the 2D model is HxW, not '" + o.str("patch") + "'");
        run.patch = {1, p[0], p[1]};
    } else {
        if (p.size() != 3) throw brats_cli::UsageError("--patch for the 3D model is DxHxW, not '" + o.str("patch") + "'");
        run.patch = p;
    }
    for (std::size_t a = run.model == "2d" ? 1 : 0; a < 3; ++a)
        if (run.patch[a] % 16)
            throw brats_cli::UsageError("--patch extents must be multiples of 16 (4 poolings), not '" + o.str("patch") + "'");
    return run;
}

brats_cli::Options options_for(const std::string& command) {
    using brats_cli::Options;
    if (command == "synth")
        return Options("synth", "Write synthetic BraTS-like cases: a brain with CSF, grey and white matter, a tumour with "
                                "necrosis, enhancing rim and edema, four modalities, bias field and noise.")
            .required("out", "output folder")
            .value("cases", "20", "number of cases")
            .value("seed", "1", "seed of the first case (case i uses seed + i)")
            .value("extent", "96x96x64", "voxels XxYxZ (240x240x155 is BraTS's grid)")
            .value("layout", "nifti2018", "file layout", {"nifti2018", "nifti2023", "kaggle"})
            .value("prefix", "Synth", "case id prefix");
    if (command == "convert")
        return Options("convert", "Convert a folder of NIfTI cases (BraTS 2018-2021 or 2023+ naming) or Kaggle HDF5 slices "
                                  "into a preprocessed store (docs/store.md). A Kaggle volume missing slices is stored with "
                                  "the slices it has.")
            .required("data", "input folder")
            .required("out", "store file to write (.h5)")
            .flag("skip-bad", "skip unreadable cases and list them instead of stopping")
            .flag("no-channel-check", "Kaggle slices: do not judge the declared channel order against the intensities");
    if (command == "train")
        return Options("train", "Train a U-Net; writes checkpoints/, metrics.csv, metrics.json, curves.png, pictures/, "
                                "validation.csv (the validation cases predicted whole), postprocess.cfg and run.cfg into --out.")
            .required("data", "store file, or folder of cases (converted into <out>/store.h5)")
            .required("out", "output folder")
            .value("model", "2d", "network", {"2d", "3d"})
            .value("labels", "regions", "targets: overlapping regions WT/TC/ET (sigmoid) or classes (softmax)",
                   {"regions", "classes"})
            .value("arch", "plain", "encoder: plain (two convolutions per level) or resenc (nnU-Net's residual blocks)",
                   {"plain", "resenc"})
            .flag("deep-supervision", "auxiliary heads on the coarser decoder levels while training (nnU-Net's weights)")
            .flag("plan", "plan --patch, --batch, --foreground, --labels and --loss from the data's fingerprint, and on the CPU "
                          "--precision from a few timed steps, where not given (said at the start, kept in "
                          "<out>/plan.cfg; predict then mirrors by default)")
            .value("patch", "96x96", "2D: slice HxW; 3D: patch DxHxW (multiples of 16)")
            .value("epochs", "10", "epochs")
            .value("minutes", "", "wall-clock budget: epochs until it is spent (--epochs, if given, caps them), the "
                                  "schedule over the clock, the last epoch cut short for its validation and checkpoints")
            .value("steps-per-epoch", "50", "batches per epoch")
            .value("batch", "8", "batch size")
            .value("lr", "0.001", "base learning rate")
            .value("schedule", "poly", "learning-rate schedule", {"poly", "cosine", "step", "constant"})
            .value("optimizer", "adam", "optimiser", {"adam", "adamw", "sgd"})
            .value("weight-decay", "0", "weight decay (AdamW: decoupled)")
            .value("clip", "12", "gradient-norm clipping (0: off)")
            .value("loss", "dice_ce", "loss: soft Dice, or Dice + cross-entropy", {"dice", "dice_ce"})
            .flag("sample-dice", "Dice per sample instead of over the batch")
            .value("foreground", "0.33", "fraction of patches centred on tumour")
            .value("val-split", "0.2", "fraction of cases held out for validation")
            .value("val-cases", "", "comma-separated validation case ids (overrides --val-split)")
            .value("val-batches", "8", "validation batches (drawn once, un-augmented)")
            .value("seed", "1", "seed of the weights, the split and the loader")
            .value("threads", "2", "compute threads")
            .value("device", "cpu", "where the network runs: cpu, cuda (the first GPU) or cuda:N; checkpoints are the same "
                                    "files on either")
            .value("precision", "fp32", "convolution operands: fp32; bf16 on the CPU (rounded to bfloat16 and summed in fp32; "
                                        "fp32 weights and checkpoints; fast where the CPU has AVX512_BF16); tf32 on CUDA "
                                        "(tensor cores)", {"fp32", "bf16", "tf32"})
            .value("workers", "1", "loader threads")
            .value("keep", "3", "rolling checkpoints kept")
            .value("autosave", "300", "seconds between time-based checkpoints (0: off)")
            .value("resume", "", "checkpoint to resume from, or 'latest'; the options that shape the run must be the run's own")
            .value("stop-after-steps", "", "stop with a checkpoint once this many steps are done in all (continue with --resume latest)")
            .value("mpi-timeout", "1800", "under mpirun: seconds a rank waits for the others in a collective before it ends the job")
            .value("pictures", "3", "validation cases drawn as overlays at the end (all are predicted whole then, with the best "
                                    "weights: validation.csv, and the post-processing chosen on them: postprocess.cfg)")
            .value("watchdog-seconds", "5", "watchdog poll interval")
            .value("max-temp", "95", "watchdog CPU temperature limit (degrees C)")
            .flag("no-watchdog", "no telemetry watchdog")
            .flag("no-augment", "no augmentation")
            .flag("no-progress", "no progress bar")
            .flag("skip-bad", "skip unreadable cases when converting");
    if (command == "predict")
        return Options("predict", "Segment every case under --data, cropped to the brain. NIfTI cases: writes "
                                  "<id>_seg.nii.gz (or <id>-seg.nii.gz) in the input's geometry and label convention. Kaggle "
                                  "slices: writes volume_<v>_slice_<s>.h5 per input slice with a 'mask' dataset in the "
                                  "Kaggle layout (X, Y, 3) uint8, and meta_data.csv.")
            .required("run", "training output folder (run.cfg, checkpoints/)")
            .required("data", "folder of NIfTI cases, or of Kaggle volume_<v>_slice_<s>.h5 slices")
            .required("out", "output folder")
            .value("checkpoint", "", "checkpoint file [the one the run chose on its validation cases (postprocess.cfg), else <run>/checkpoints/best.h5]")
            .value("overlap", "0.5", "sliding-window overlap")
            .value("threads", "2", "compute threads")
            .value("device", "cpu", "where the network runs: cpu, cuda (the first GPU) or cuda:N")
            .value("precision", "fp32", "convolution operands: fp32; bf16 on the CPU (rounded to bfloat16 and summed in "
                                        "fp32); tf32 on CUDA (tensor cores) [a run trained with --plan: its planned precision, "
                                        "where the CPU has bf16 instructions]", {"fp32", "bf16", "tf32"})
            .value("pictures", "3", "cases drawn as overlay PNGs")
            .value("min-et-volume", "", "post-processing: a case's enhancing tumour under this volume (mm^3) becomes necrosis "
                                        "(0: off); default: what train chose on its validation cases (<run>/postprocess.cfg)")
            .value("min-component-fraction", "", "post-processing: tumour components (26-connected) under this fraction of a "
                                                 "case's largest become background (1: the largest alone; 0: off); default: what "
                                                 "train chose on its validation cases (<run>/postprocess.cfg)")
            .flag("tta", "mirror test-time augmentation (the default for a run trained with --plan)")
            .flag("no-tta", "no mirror test-time augmentation, even for a run trained with --plan")
            .flag("no-channel-check", "Kaggle slices: do not judge the declared channel order against the intensities (it is "
                                      "judged per volume; only a set that contradicts it stops the run)");
    if (command == "evaluate")
        return Options("evaluate", "Dice and HD95 (mm) per region. Empty truth and empty prediction: Dice 1, HD95 0; one empty, "
                                   "the other not: Dice 0, HD95 = the volume's diagonal in mm.")
            .required("pred", "folder of predicted segmentations (NIfTI, or Kaggle slice masks)")
            .required("truth", "folder of labelled cases (NIfTI, or Kaggle slices: scored per volume on 1 mm slices)")
            .value("out", "", "CSV to write (default: metrics.csv in the --pred folder)")
            .value("min-wt-dice", "", "exit with status 4 when the mean whole-tumour Dice is lower")
            .flag("allow-missing", "skip cases without a prediction instead of stopping");
    if (command == "export")
        return Options("export", "Write a run's checkpoint as an ONNX model (opset 17, eval-mode norms, the top head): input "
                                 "'input' [N, 4, (D,) H, W] float32, the modalities prepared as predict prepares a case (brain "
                                 "crop, per-modality z-score); output 'probabilities' [N, classes, (D,) H, W] (sigmoid regions "
                                 "WT/TC/ET, or softmax classes). Checked with the ONNX checker before it is written "
                                 "(docs/onnx.md).")
            .required("run", "training output folder (run.cfg, checkpoints/)")
            .required("out", "ONNX file to write (.onnx)")
            .value("checkpoint", "", "checkpoint file [the one the run chose on its validation cases (postprocess.cfg), else <run>/checkpoints/best.h5]")
            .flag("symbolic", "symbolic batch and extents N, (D,) H, W (multiples of 16) instead of the run's patch")
            .value("batch", "1", "batch size of the fixed input shape (not with --symbolic)")
            .flag("fold-batch-norm", "fold the 2D network's batch norms into the convolutions before them");
    throw brats_cli::UsageError("unknown command '" + command + "'");
}

// Data-parallel training: the process group when an MPI launcher started several processes.
std::unique_ptr<lightunet::dist::Collective> g_group;
int g_console = STDERR_FILENO;  // where a rank's fatal error goes (ranks other than 0 log to a file)

// Joins the job's process group (MPI) when several processes were launched; ranks other than 0
// then write their log to <out>/logs/rank-N.log.
void join_process_group(const brats_cli::Options& o) {
    const int processes = lightunet::dist::launched_processes();
    if (processes < 2) return;
#ifdef LIGHTUNET_BRATS_MPI
    g_group = std::make_unique<lightunet::dist::MpiCollective>(o.real("mpi-timeout", 1.0));
    process_group() = g_group.get();
#else
    throw std::runtime_error("an MPI launcher started " + std::to_string(processes) +
                             " processes, but this brats was built without MPI, so each would train alone into the "
                             "same --out (install libopenmpi-dev and build again)");
#endif
    const long batch = o.integer("batch", 1, 4096);
    if (batch % processes != 0)
        throw brats_cli::UsageError("--batch " + std::to_string(batch) + " is the global batch: it must split evenly over the " +
                                    std::to_string(processes) + " ranks");
    if (g_group->rank() != 0) {
        const fs::path logs = fs::path(o.str("out")) / "logs";
        fs::create_directories(logs);
        const std::string log = (logs / ("rank-" + std::to_string(g_group->rank()) + ".log")).string();
        g_console = ::dup(STDERR_FILENO);
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || ::dup2(fd, STDERR_FILENO) < 0) throw std::runtime_error(log + ": cannot write this rank's log");
        ::close(fd);
    }
}

// Rank 0's share of the run spent in collectives: the gradient sums, the batch-norm and loss
// exchanges, and waiting there for slower ranks.
void report_traffic([[maybe_unused]] double run_seconds) {
#ifdef LIGHTUNET_BRATS_MPI
    const auto* mpi = dynamic_cast<const lightunet::dist::MpiCollective*>(g_group.get());
    if (!mpi || mpi->rank() != 0) return;
    const auto& t = mpi->traffic();
    std::fprintf(stderr, "[INFO] MPI: %d ranks; rank 0 spent %.3f of %.1f s in %ld collectives (%.1f %%), %.2f GB sent\n", mpi->size(),
                 t.seconds, run_seconds, t.calls, run_seconds > 0 ? 100 * t.seconds / run_seconds : 0.0, t.bytes / 1e9);
#endif
}

// --device cuda: the CUDA pipelines (model_*_cuda.cu), or an error naming why there are none.
#ifdef LIGHTUNET_BRATS_CUDA
int train_on_cuda(const brats_cli::Options& o, const RunInfo& run) {
    if (run.arch == "resenc") return run.model == "2d" ? train_2d_resenc_cuda(o, run) : train_3d_resenc_cuda(o, run);
    return run.model == "2d" ? train_2d_cuda(o, run) : train_3d_cuda(o, run);
}
int predict_on_cuda(const brats_cli::Options& o, const RunInfo& run) {
    if (run.arch == "resenc") return run.model == "2d" ? predict_2d_resenc_cuda(o, run) : predict_3d_resenc_cuda(o, run);
    return run.model == "2d" ? predict_2d_cuda(o, run) : predict_3d_cuda(o, run);
}
#else
[[noreturn]] int built_without_cuda(const brats_cli::Options& o, const RunInfo&) {
    throw std::runtime_error("--device " + o.str("device") + ": this brats was built without CUDA (no nvcc was found when it "
                             "was configured; docs/cuda.md says how to build it with CUDA)");
}
int (*const train_on_cuda)(const brats_cli::Options&, const RunInfo&) = built_without_cuda;
int (*const predict_on_cuda)(const brats_cli::Options&, const RunInfo&) = built_without_cuda;
#endif

// --device, checked against --precision (bf16 is the CPU's, tf32 CUDA's).
Device checked_device(const brats_cli::Options& o) {
    const Device device = device_option(o);
    check_precision_for(device, o);
    return device;
}

// --plan: the store opened (a folder converted, by rank 0 first under mpirun) and fingerprinted,
// the plan applied to the options not given.
std::optional<TrainingPlan> plan_from_data(brats_cli::Options& o) {
    if (!o.flag_set("plan")) return std::nullopt;
    TrainingPlan plan = plan_training(io::fingerprint(*open_training_data_in_rank_order(o)), o.str("model"));
    apply_plan(plan, o, !g_group || g_group->rank() == 0);
    return plan;
}

// --plan on the CPU, --precision not given: timed training steps of the planned network in fp32
// and bf16 choose it (plan.hpp). A resumed run keeps the precision its plan.cfg recorded. Every
// rank times its own steps and the slowest rank's times decide: a data-parallel step waits for it.
void plan_precision(TrainingPlan& plan, brats_cli::Options& o, const RunInfo& run) {
    const bool speak = !g_group || g_group->rank() == 0;
    if (o.given("precision")) return;
    using lightunet::Precision;
    TrainingPlan::Setting setting;
    const bool resumes_plan = o.given("resume") && fs::exists(fs::path(o.str("out")) / "plan.cfg");
    const std::string recorded = resumes_plan ? planned_value(o.str("out"), "precision") : "";
    if (resumes_plan) {
        // A plan.cfg without it predates the planned precision: that run trained in fp32.
        setting = {"precision", recorded.empty() ? "fp32" : recorded,
                   recorded.empty() ? "as the run being resumed trained (its plan predates the planned precision)"
                                    : "as the run being resumed planned it"};
    } else if (!lightunet::Kernels<lightunet::cpu>::bf16_instructions()) {
        setting = {"precision", "fp32", "this CPU has no bf16 instructions (AVX512_BF16, AMX): bf16 would only round the operands"};
    } else {
        if (speak)
            std::fprintf(stderr, "[PLAN] Timing a training step in fp32 and in bf16 (%s)...\n",
                         lightunet::Kernels<lightunet::cpu>::bf16_kernels().c_str());
        const auto step_seconds = run.arch == "resenc" ? (run.model == "2d" ? training_step_seconds_2d_resenc : training_step_seconds_3d_resenc)
                                                       : (run.model == "2d" ? training_step_seconds_2d : training_step_seconds_3d);
        constexpr int timed_steps = 2;
        double fp32 = step_seconds(o, run, Precision::fp32, timed_steps), bf16 = step_seconds(o, run, Precision::bf16, timed_steps);
        if (g_group) {
            fp32 = g_group->max(fp32);
            bf16 = g_group->max(bf16);
        }
        setting = precision_setting(fp32, bf16);
    }
    apply_setting(setting, o, speak);
    plan.settings.push_back(setting);
}

// predict on the CPU, --precision not given: the precision the run's plan chose for training
// (plan.cfg), where this CPU has bf16 instructions. The run validated in it: its checkpoint and
// post-processing were chosen on bf16 predictions.
void plan_predict_precision(brats_cli::Options& o) {
    if (o.given("precision")) return;
    const fs::path plan_file = fs::path(o.str("run")) / "plan.cfg";
    if (planned_value(o.str("run"), "precision") != "bf16") return;
    if (!lightunet::Kernels<lightunet::cpu>::bf16_instructions()) {
        std::fprintf(stderr, "[INFO] Convolutions in fp32: %s trained in bf16, but this CPU has no bf16 instructions (AVX512_BF16, AMX)\n",
                     plan_file.c_str());
        return;
    }
    o.set_default("precision", "bf16");
    std::fprintf(stderr, "[INFO] --precision bf16: as %s trained (--precision fp32 predicts in fp32)\n", plan_file.c_str());
}

int dispatch(const std::string& command, brats_cli::Options& o) {
    if (command == "synth") return synth_command(o);
    if (command == "convert") return convert_command(o);
    if (command == "evaluate") return evaluate_command(o);
    if (command == "train") {
        join_process_group(o);
        std::optional<TrainingPlan> plan = plan_from_data(o);
        const RunInfo run = run_info_for_training(o);
        // An existing run is continued only with --resume and its own options; run.cfg is
        // (re)written by the pipeline once the data and the checkpoint are accepted.
        const fs::path recorded_file = fs::path(o.str("out")) / "run.cfg";
        if (fs::exists(recorded_file)) {
            if (!o.given("resume"))
                throw brats_cli::UsageError("--out " + o.str("out") + " already holds a run (" + recorded_file.string() +
                                            "): continue it with --resume latest, or train into a new --out");
            std::vector<std::string> unrecorded;
            const auto differences = resume_differences(RunInfo::read(recorded_file), run, unrecorded);
            if (!differences.empty()) {
                throw brats_cli::UsageError("--resume: " + brats_cli::join(differences) + " differ from the run in " + o.str("out") + " (" +
                                            recorded_file.string() + "); resume with the run's options, or train into a new --out");
            }
            if (!unrecorded.empty())
                std::fprintf(stderr, "[WARN] %s predates recorded training options: %s not checked\n", recorded_file.c_str(),
                             brats_cli::join(unrecorded).c_str());
        }
        const Device device = checked_device(o);
        if (plan && !device.cuda) plan_precision(*plan, o, run);
        if (plan && (!g_group || g_group->rank() == 0)) {
            fs::create_directories(o.str("out"));
            write_plan(fs::path(o.str("out")) / "plan.cfg", *plan, o);
        }
        // Every rank has checked the run folder before rank 0 writes run.cfg into it.
        if (g_group) g_group->max(0.0);
        const auto start = std::chrono::steady_clock::now();
        const int status = device.cuda            ? train_on_cuda(o, run)
                           : run.arch == "resenc" ? (run.model == "2d" ? train_2d_resenc(o, run) : train_3d_resenc(o, run))
                                                  : (run.model == "2d" ? train_2d(o, run) : train_3d(o, run));
        report_traffic(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        return status;
    }
    const RunInfo run = RunInfo::read(fs::path(o.str("run")) / "run.cfg");
    if (command == "export") {
        if (run.arch == "resenc") return run.model == "2d" ? export_2d_resenc(o, run) : export_3d_resenc(o, run);
        return run.model == "2d" ? export_2d(o, run) : export_3d(o, run);
    }
    if (checked_device(o).cuda) return predict_on_cuda(o, run);
    plan_predict_precision(o);
    if (run.arch == "resenc") return run.model == "2d" ? predict_2d_resenc(o, run) : predict_3d_resenc(o, run);
    return run.model == "2d" ? predict_2d(o, run) : predict_3d(o, run);
}

// A rank that fails ends the whole job (the others would wait for it in their next collective),
// saying so on the console even when its log goes to a file.
void end_job_if_distributed(const std::string& message, int status) {
    if (!g_group || g_group->size() < 2) return;
    if (g_console != STDERR_FILENO) dprintf(g_console, "[MPI] rank %d: %s\n", g_group->rank(), message.c_str());
    g_group->abort(message, status);
}

}  // namespace brats

int main(int argc, char** argv) {
    // The loader's and watchdog's threads share the cores with the compute threads, and libgomp's
    // default spin-waiting at barriers then burns the time those threads need (measured: a 2D
    // step 2.5x slower on a busy 2-core machine). libgomp reads its environment when it loads,
    // so set the policy and start again, unless the user chose one.
    if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("LIGHTUNET_NO_REEXEC")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        setenv("LIGHTUNET_NO_REEXEC", "1", 1);
        execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default
    }
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
        std::fputs(brats::kUsage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const std::string command = argv[1];
    std::optional<brats_cli::Options> options;
    try {
        options.emplace(brats::options_for(command));
        if (!options->parse(argc, argv, 2)) {
            std::fputs((options->help() + brats::exit_statuses(command)).c_str(), stdout);
            return 0;
        }
        return brats::dispatch(command, *options);
    } catch (const brats_cli::UsageError& e) {
        std::fprintf(stderr, "brats %s: %s\n\n%s", command.c_str(), e.what(), options ? options->help().c_str() : brats::kUsage);
        brats::end_job_if_distributed(std::string("brats ") + command + ": " + e.what(), 2);
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "brats %s: error: %s\n", command.c_str(), e.what());
        brats::end_job_if_distributed(std::string("brats ") + command + ": error: " + e.what(), 1);
        return 1;
    }
}

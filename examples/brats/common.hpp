#pragma once
// What every BraTS command shares: where the cases come from, the training/validation split,
// and the run description (run.cfg) that `predict` reads back.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <lightunet/data/case.hpp>
#include <lightunet/data/labels.hpp>
#include <lightunet/data/random.hpp>
#include <lightunet/data/source.hpp>
#include <lightunet/io/kaggle_h5.hpp>
#include <lightunet/io/nifti.hpp>
#include <lightunet/dist/collective.hpp>
#include <lightunet/eval/postprocess.hpp>
#include <lightunet/io/store.hpp>

#include "cli.hpp"

namespace brats {

namespace fs = std::filesystem;
namespace data = lightunet::data;
namespace io = lightunet::io;

// The process group of a data-parallel `brats train` started by mpirun (main.cpp sets it); null
// in a single process.
inline lightunet::dist::Collective*& process_group() {
    static lightunet::dist::Collective* group = nullptr;
    return group;
}

// A view of some cases of another source (the training or validation part of a split).
class SubsetSource final : public data::CaseSource {
public:
    SubsetSource(const data::CaseSource& all, std::vector<std::size_t> indices) : all_(all), indices_(std::move(indices)) {}
    std::size_t size() const override { return indices_.size(); }
    std::string id(std::size_t i) const override { return all_.id(indices_.at(i)); }
    data::VolumeExtent extent(std::size_t i) const override { return all_.extent(indices_.at(i)); }
    bool has_labels(std::size_t i) const override { return all_.has_labels(indices_.at(i)); }
    std::vector<data::SliceRange> present_slices(std::size_t i) const override { return all_.present_slices(indices_.at(i)); }
    std::vector<std::array<int, 3>> foreground(std::size_t i) const override { return all_.foreground(indices_.at(i)); }
    std::optional<std::array<int, 3>> foreground_voxel(std::size_t i, std::uint64_t draw) const override {
        return all_.foreground_voxel(indices_.at(i), draw);
    }
    void read(std::size_t i, const data::Box& box, float* images, std::uint8_t* labels) const override {
        all_.read(indices_.at(i), box, images, labels);
    }
    data::Case load(std::size_t i) const override { return all_.load(indices_.at(i)); }

private:
    const data::CaseSource& all_;
    std::vector<std::size_t> indices_;
};

inline void print_conversion_warning(const std::string& text) {
    std::fprintf(stderr, "\n[WARN] %s\n", text.c_str());
}

// What a conversion of Kaggle slices found: partial volumes and the channel-order votes.
inline void print_conversion_summary(const io::ConvertReport& report) {
    if (!report.partial.empty()) {
        std::fprintf(stderr, "[INFO] %zu of %zu volumes hold only some slices; stored with the slices they have (2D training "
                             "samples only those, 3D patches only runs of contiguous slices):\n",
                     report.partial.size(), report.converted.size());
        for (std::size_t i = 0; i < report.partial.size() && i < 10; ++i) std::fprintf(stderr, "  - %s\n", report.partial[i].c_str());
        if (report.partial.size() > 10) std::fprintf(stderr, "  - ... (%zu more)\n", report.partial.size() - 10);
    }
    if (!report.channel_votes.empty())
        std::fprintf(stderr, "[INFO] Channel order checked per volume: %s%s\n", report.channel_votes.c_str(),
                     report.warnings.empty() ? "" : " (the volumes against it are warned about above)");
}

// --data is a store file, or a folder of NIfTI cases / Kaggle slices that is converted into
// `<run>/store.h5` first (streaming, so a large dataset is never held in memory). A store left
// there by an earlier start of the run is reused while the folder is unchanged (same files,
// sizes and modification times, same conversion settings).
inline std::unique_ptr<io::StoreSource> open_training_data(const fs::path& data_path, const fs::path& run_dir, bool skip_bad) {
    if (fs::is_regular_file(data_path)) return std::make_unique<io::StoreSource>(data_path);
    if (!fs::is_directory(data_path)) throw std::runtime_error(data_path.string() + ": no such file or folder");
    const fs::path store = run_dir / "store.h5";
    io::ConvertOptions options;
    options.skip_bad_cases = skip_bad;
    const std::string problem = io::store_reuse_problem(store, data_path, options);
    if (problem.empty()) {
        std::fprintf(stderr, "[INFO] Reusing %s: %s is unchanged since it was converted\n", store.c_str(), data_path.c_str());
        return std::make_unique<io::StoreSource>(store);
    }
    if (fs::exists(store)) std::fprintf(stderr, "[INFO] Converting %s again: %s\n", data_path.c_str(), problem.c_str());
    options.progress = [](const std::string& id, std::size_t done, std::size_t total) {
        std::fprintf(stderr, "\r[INFO] Converting %zu/%zu %-40s", done, total, id.c_str());
        if (done == total) std::fprintf(stderr, "\n");
    };
    options.warning = print_conversion_warning;
    std::fprintf(stderr, "[INFO] Converting %s into %s\n", data_path.c_str(), store.c_str());
    const io::ConvertReport report = io::convert_to_store(data_path, store, options);
    std::fprintf(stderr, "[INFO] Store: %zu cases", report.converted.size());
    if (!report.skipped.empty()) {
        std::fprintf(stderr, ", %zu skipped:\n", report.skipped.size());
        for (const auto& [what, why] : report.skipped) std::fprintf(stderr, "  - %s: %s\n", what.c_str(), why.c_str());
    } else {
        std::fprintf(stderr, "\n");
    }
    print_conversion_summary(report);
    return std::make_unique<io::StoreSource>(store);
}

// The training data of `train` (--data, --out, --skip-bad): a folder of cases is converted once,
// into --out, by rank 0 before the other ranks of an mpirun job open the store.
inline std::unique_ptr<io::StoreSource> open_training_data_in_rank_order(const brats_cli::Options& o) {
    lightunet::dist::Collective* const group = process_group();
    const int rank = group ? group->rank() : 0;
    std::unique_ptr<io::StoreSource> store;
    if (rank == 0) {
        fs::create_directories(o.str("out"));
        store = open_training_data(o.str("data"), o.str("out"), o.flag_set("skip-bad"));
    }
    if (group) group->max(0.0);
    if (rank != 0) store = open_training_data(o.str("data"), o.str("out"), o.flag_set("skip-bad"));
    return store;
}

struct Split {
    std::vector<std::size_t> train, validation;
};

// --val-cases id,id,... names the validation cases; otherwise a seeded shuffle puts
// round(fraction * n) labelled cases (at least one when there are two or more) aside.
inline Split split_cases(const data::CaseSource& all, double fraction, const std::string& val_cases, std::uint64_t seed) {
    std::vector<std::size_t> labelled;
    for (std::size_t i = 0; i < all.size(); ++i)
        if (all.has_labels(i)) labelled.push_back(i);
    if (labelled.empty()) throw std::runtime_error("no labelled cases to train on");
    Split split;
    if (!val_cases.empty()) {
        std::map<std::string, bool> wanted;
        std::stringstream list(val_cases);
        for (std::string id; std::getline(list, id, ',');)
            if (!id.empty()) wanted[id] = false;
        for (std::size_t i : labelled) {
            auto it = wanted.find(all.id(i));
            if (it != wanted.end()) {
                it->second = true;
                split.validation.push_back(i);
            } else {
                split.train.push_back(i);
            }
        }
        for (const auto& [id, found] : wanted)
            if (!found) throw brats_cli::UsageError("--val-cases: no labelled case '" + id + "' in the data");
    } else {
        std::vector<std::size_t> order = labelled;
        data::SplitMix64 rng(seed ^ 0x5eed5a1173ull);
        for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[std::size_t(rng.below(i))]);
        std::size_t n_val = std::size_t(std::lround(fraction * double(order.size())));
        if (fraction > 0 && n_val == 0 && order.size() >= 2) n_val = 1;
        n_val = std::min(n_val, order.size() - 1);
        split.validation.assign(order.begin(), order.begin() + std::ptrdiff_t(n_val));
        split.train.assign(order.begin() + std::ptrdiff_t(n_val), order.end());
        std::sort(split.validation.begin(), split.validation.end());
        std::sort(split.train.begin(), split.train.end());
    }
    if (split.train.empty()) throw std::runtime_error("every labelled case is in the validation set: nothing left to train on");
    return split;
}

// The files a run keeps (run.cfg, postprocess.cfg, plan.cfg) are written to <file>.tmp and
// renamed over `file`, so a failed write keeps the old one; `what` names the file in the error.
inline void write_run_file(const fs::path& file, const std::string& text, const std::string& what) {
    const fs::path temporary = file.string() + ".tmp";
    {
        std::ofstream f(temporary);
        f << text;
        f.flush();
        if (!f) throw std::runtime_error(temporary.string() + ": cannot write " + what);
    }
    fs::rename(temporary, file);
}

// Their key=value lines (other lines skipped; a later key wins).
inline std::map<std::string, std::string> read_key_values(std::istream& in) {
    std::map<std::string, std::string> kv;
    for (std::string line; std::getline(in, line);)
        if (const auto eq = line.find('='); eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
    return kv;
}

// The run description: which compiled model a checkpoint belongs to and how it was trained.
// run.cfg: the network `predict` rebuilds (model, labels, optimizer, patch) and every other
// option that shapes a training run (train.<option>=<value>), which `--resume` must repeat.
struct RunInfo {
    std::string model = "2d", labels = "regions", optimizer = "adam";
    std::string arch = "plain";      // plain | resenc (absent from runs that predate it: plain)
    bool deep_supervision = false;   // absent from runs that predate it: off
    std::vector<int> patch;  // D, H, W
    std::map<std::string, std::string> settings;  // option name -> value as given (flags: on/off)

    // Appends rather than `"x" + to_string(...)`, which GCC 12 misreports (-Wrestrict, PR 105651).
    std::string patch_text(std::size_t first = 0) const {  // DxHxW, as run.cfg keeps it
        std::string t;
        for (std::size_t i = first; i < patch.size(); ++i) {
            if (i > first) t.append("x");
            t.append(std::to_string(patch[i]));
        }
        return t;
    }
    std::string patch_option() const {  // as --patch takes it: HxW for the 2D model
        return patch_text(model == "2d" && patch.size() == 3 ? 1 : 0);
    }
    void write(const fs::path& file) const {
        std::ostringstream f;
        f << "model=" << model << "\nlabels=" << labels << "\noptimizer=" << optimizer << "\npatch=" << patch_text() << "\n";
        f << "arch=" << arch << "\ndeep_supervision=" << (deep_supervision ? "on" : "off") << "\n";
        for (const auto& [name, value] : settings) f << "train." << name << "=" << value << "\n";
        write_run_file(file, f.str(), "the run description");
    }
    static RunInfo read(const fs::path& file) {
        std::ifstream f(file);
        if (!f) throw std::runtime_error(file.string() + ": missing run description (is this a training output folder?)");
        RunInfo r;
        r.patch.clear();
        std::map<std::string, std::string> kv = read_key_values(f);
        for (const char* key : {"model", "labels", "optimizer", "patch"})
            if (!kv.count(key)) throw std::runtime_error(file.string() + ": no '" + key + "' entry");
        r.model = kv["model"];
        r.labels = kv["labels"];
        r.optimizer = kv["optimizer"];
        std::string p = kv["patch"];
        std::replace(p.begin(), p.end(), 'x', ' ');
        std::istringstream in(p);
        for (int v; in >> v;) r.patch.push_back(v);
        if (r.patch.size() != 3) throw std::runtime_error(file.string() + ": patch must be DxHxW, not '" + kv["patch"] + "'");
        if ((r.model != "2d" && r.model != "3d") || (r.labels != "regions" && r.labels != "classes"))
            throw std::runtime_error(file.string() + ": unknown model '" + r.model + "' or labels '" + r.labels + "'");
        if (kv.count("arch")) r.arch = kv["arch"];
        if (r.arch != "plain" && r.arch != "resenc") throw std::runtime_error(file.string() + ": unknown arch '" + r.arch + "'");
        if (kv.count("deep_supervision")) {
            if (kv["deep_supervision"] != "on" && kv["deep_supervision"] != "off")
                throw std::runtime_error(file.string() + ": deep_supervision must be on or off, not '" + kv["deep_supervision"] + "'");
            r.deep_supervision = kv["deep_supervision"] == "on";
        }
        for (const auto& [key, value] : kv)
            if (key.rfind("train.", 0) == 0) r.settings[key.substr(6)] = value;
        return r;
    }
};

// postprocess.cfg: the post-processing `train` chose on its validation cases with the best
// weights, which `predict` applies unless --min-component-fraction or --min-et-volume say otherwise.
inline void write_postprocessing(const fs::path& file, const lightunet::eval::PostProcessingChoice& choice,
                                 const std::string& checkpoint) {
    std::ostringstream f;
    f << "min_component_fraction=" << choice.chosen.min_component_fraction << "\nmin_enhancing_mm3=" << choice.chosen.min_enhancing_mm3
      << "\nvalidation_cases=" << choice.cases << "\ncheckpoint=" << checkpoint << "\ndice_without=" << choice.dice_without
      << "\ndice_after_components=" << choice.dice_after_components << "\net_dice_without=" << choice.et_dice_without
      << "\net_dice_with=" << choice.et_dice_with << "\n";
    for (const auto& s : choice.component_scores)
        f << "tried_components." << s.min_component_fraction << "=" << s.mean_dice << " (" << s.cases_changed << " cases changed)\n";
    for (const auto& s : choice.scores)
        f << "tried." << s.min_enhancing_mm3 << "=" << s.mean_et_dice << " (" << s.cases_changed << " cases changed)\n";
    write_run_file(file, f.str(), "the post-processing choice");
}

struct RecordedPostProcessing {
    lightunet::eval::PostProcessing chosen;
    std::string validation_cases, checkpoint;
};

// A number of postprocess.cfg in [0, most]; `absent` where a run older than the key has none.
inline double recorded_number(const fs::path& file, std::map<std::string, std::string>& kv, const std::string& key, double most,
                              std::optional<double> absent, const char* what) {
    if (absent && kv.find(key) == kv.end()) return *absent;
    const std::string value = kv[key];
    char* end = nullptr;
    const double number = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !(number >= 0) || number > most)
        throw std::runtime_error(file.string() + ": " + key + " must be " + what + ", not '" + value + "'");
    return number;
}

// The choice in `file`; nothing when the run has none (no validation cases, or a run older than
// the choice); an error naming the file when it is there but unreadable.
inline std::optional<RecordedPostProcessing> read_postprocessing(const fs::path& file) {
    std::error_code error;
    if (!fs::exists(file, error)) return std::nullopt;
    std::ifstream f(file);
    if (!f) throw std::runtime_error(file.string() + ": cannot read the post-processing choice");
    std::map<std::string, std::string> kv = read_key_values(f);
    RecordedPostProcessing r;
    r.chosen.min_enhancing_mm3 = recorded_number(file, kv, "min_enhancing_mm3", 1e9, std::nullopt, "a volume in mm^3");
    r.chosen.min_component_fraction = recorded_number(file, kv, "min_component_fraction", 1, 0.0, "a fraction in [0, 1]");
    r.validation_cases = kv["validation_cases"];
    r.checkpoint = kv["checkpoint"];
    return r;
}

// The checkpoints a finished run offers predict: the best epoch by its validation patches, and
// the weights the schedule ended with.
inline constexpr const char* kBestCheckpoint = "best.h5";
inline constexpr const char* kFinalCheckpoint = "final.h5";

// predict's (and export's) weights without --checkpoint: the one the run chose on its validation
// cases predicted whole (postprocess.cfg), else best.h5 (a run without validation cases, or
// older than the choice).
inline fs::path default_checkpoint(const fs::path& run_dir) {
    const fs::path checkpoints = run_dir / "checkpoints";
    const auto recorded = read_postprocessing(run_dir / "postprocess.cfg");
    if (recorded && (recorded->checkpoint == kBestCheckpoint || recorded->checkpoint == kFinalCheckpoint)) {
        std::error_code error;
        if (fs::exists(checkpoints / recorded->checkpoint, error)) return checkpoints / recorded->checkpoint;
        std::fprintf(stderr, "[WARN] %s names %s, which is gone: taking %s\n", (run_dir / "postprocess.cfg").c_str(),
                     (checkpoints / recorded->checkpoint).c_str(), kBestCheckpoint);
    }
    return checkpoints / kBestCheckpoint;
}

// One set of weights' whole-case predictions of the validation cases, with what the end-of-run
// choices need: the truths on their grids, and Dice and HD95 per case.
struct ValidationPredictions {
    std::string checkpoint;  // file name under <run>/checkpoints
    double seconds = 0;
    std::vector<std::vector<std::uint8_t>> labels, truths;
    std::vector<lightunet::eval::Grid> grids;
    std::vector<lightunet::eval::CaseMetrics> metrics;
    // The mean over cases and the three regions.
    double mean_dice() const {
        const lightunet::eval::CaseMetrics m = lightunet::eval::mean_metrics(metrics);
        return (m.dice[0] + m.dice[1] + m.dice[2]) / 3;
    }
};

// predict's post-processing: the run's postprocess.cfg (none without one), each rule replaced by
// --min-component-fraction or --min-et-volume when given (0: off); said in the log.
inline lightunet::eval::PostProcessing postprocessing_for(const brats_cli::Options& o) {
    const fs::path file = fs::path(o.str("run")) / "postprocess.cfg";
    const auto recorded = read_postprocessing(file);
    lightunet::eval::PostProcessing p = recorded ? recorded->chosen : lightunet::eval::PostProcessing{};
    const bool fraction_given = o.given("min-component-fraction"), volume_given = o.given("min-et-volume");
    if (fraction_given) p.min_component_fraction = o.real("min-component-fraction", 0.0, 1.0);
    if (volume_given) p.min_enhancing_mm3 = o.real("min-et-volume", 0.0, 1e9);
    const std::string from = recorded ? file.string() + ", chosen on " + recorded->validation_cases + " validation cases with " + recorded->checkpoint
                                      : file.string() + " is absent";
    auto said = [&](bool given, const char* option) { return given ? std::string(option) : from; };
    if (p.removes_components())
        std::fprintf(stderr, "[INFO] Post-processing (%s): tumour components under %g of the case's largest become background\n",
                     said(fraction_given, "--min-component-fraction").c_str(), p.min_component_fraction);
    else
        std::fprintf(stderr, "[INFO] Post-processing (%s): every tumour component kept\n", said(fraction_given, "--min-component-fraction").c_str());
    if (p.min_enhancing_mm3 > 0)
        std::fprintf(stderr, "[INFO] Post-processing (%s): enhancing tumour under %g mm^3 becomes necrosis\n",
                     said(volume_given, "--min-et-volume").c_str(), p.min_enhancing_mm3);
    else
        std::fprintf(stderr, "[INFO] Post-processing (%s): enhancing tumour kept whatever its volume\n", said(volume_given, "--min-et-volume").c_str());
    return p;
}

// Two option values mean the same when their texts are equal or both are the same number
// (--lr 0.001 and --lr 1e-3).
inline bool same_setting(const std::string& a, const std::string& b) {
    if (a == b) return true;
    char* end_a = nullptr;
    char* end_b = nullptr;
    const double x = std::strtod(a.c_str(), &end_a), y = std::strtod(b.c_str(), &end_b);
    return !a.empty() && !b.empty() && *end_a == '\0' && *end_b == '\0' && x == y;
}

// `--resume` continues a run only with the options it was started with: another --epochs
// silently changes the learning-rate schedule, another --patch or --model the network. Returns
// the differences ("--epochs 4 (the run has 3)"), empty when there are none; options an older
// run.cfg does not record are listed in `unrecorded`.
inline std::vector<std::string> resume_differences(const RunInfo& recorded, const RunInfo& now,
                                                   std::vector<std::string>& unrecorded) {
    std::vector<std::string> differences;
    auto differ = [&](const std::string& name, const std::string& given, const std::string& was) {
        differences.push_back("--" + name + " " + (given.empty() ? "''" : given) + " (the run has " +
                              (was.empty() ? "''" : was) + ")");
    };
    if (recorded.model != now.model) differ("model", now.model, recorded.model);
    if (recorded.labels != now.labels) differ("labels", now.labels, recorded.labels);
    if (recorded.optimizer != now.optimizer) differ("optimizer", now.optimizer, recorded.optimizer);
    if (recorded.arch != now.arch) differ("arch", now.arch, recorded.arch);
    if (recorded.deep_supervision != now.deep_supervision)
        differences.push_back(std::string(now.deep_supervision ? "--deep-supervision" : "no --deep-supervision") + " (the run has it " +
                              (recorded.deep_supervision ? "on" : "off") + ")");
    if (recorded.patch != now.patch) differ("patch", now.patch_option(), recorded.patch_option());
    for (const auto& [name, value] : now.settings) {
        const auto it = recorded.settings.find(name);
        if (it == recorded.settings.end()) unrecorded.push_back("--" + name);
        else if (!same_setting(value, it->second)) differ(name, value, it->second);
    }
    return differences;
}

// What `predict` reads: NIfTI cases (a folder with one case, or a folder of case folders /
// files, either naming), or the volumes of a folder of Kaggle slices.
struct PredictInputs {
    std::vector<io::CaseFiles> nifti;
    std::map<int, std::map<int, fs::path>> kaggle_volumes;  // volume -> slice -> file
};

inline bool holds_kaggle_slices(const fs::path& folder) {
    std::error_code error;
    if (!fs::is_directory(folder, error)) return false;
    for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
        const std::string name = entry.path().filename().string();
        if (entry.path().extension() == ".h5" && name.rfind("volume_", 0) == 0 && name.find("_slice_") != std::string::npos) return true;
    }
    return false;
}

inline PredictInputs inputs_to_predict(const fs::path& input) {
    PredictInputs inputs;
    if (holds_kaggle_slices(input)) {
        inputs.kaggle_volumes = io::group_kaggle_slices(input);
        return inputs;
    }
    inputs.nifti = io::find_cases(input);
    if (inputs.nifti.empty()) throw std::runtime_error(input.string() + ": no NIfTI cases and no Kaggle volume_<v>_slice_<s>.h5 files");
    return inputs;
}

// --device of train and predict: "cpu", "cuda" (the first GPU) or "cuda:N" (as the CUDA runtime
// numbers them, after CUDA_VISIBLE_DEVICES).
struct Device {
    bool cuda = false;
    int index = 0;
    std::string name() const { return cuda ? "cuda:" + std::to_string(index) : "cpu"; }
};
inline Device device_option(const brats_cli::Options& o) {
    const std::string v = o.str("device");
    if (v == "cpu") return {};
    if (v == "cuda") return {true, 0};
    if (v.rfind("cuda:", 0) == 0 && v.size() > 5 && v.size() <= 8 &&
        std::all_of(v.begin() + 5, v.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return {true, std::stoi(v.substr(5))};
    throw brats_cli::UsageError("--device must be cpu, cuda or cuda:N (N = 0, 1, ...), not '" + v + "'");
}
// The operand precisions each device has: bf16 on the CPU (AVX512_BF16), TF32 tensor cores on CUDA.
inline void check_precision_for(const Device& device, const brats_cli::Options& o) {
    const std::string p = o.str("precision");
    if (device.cuda && p == "bf16")
        throw brats_cli::UsageError("--precision bf16 runs on the CPU; with --device " + device.name() + " use fp32 or tf32");
    if (!device.cuda && p == "tf32")
        throw brats_cli::UsageError("--precision tf32 needs --device cuda (TF32 tensor cores); the CPU has fp32 and bf16");
}

}  // namespace brats

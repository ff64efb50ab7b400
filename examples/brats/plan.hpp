#pragma once
// `brats train --plan`: settings planned from the store's fingerprint (io/fingerprint.hpp), for
// the options a user did not give. The rules, and why:
// - 2D patch: the median brain crop in-plane (y x), rounded up to multiples of 16 (four
//   poolings), within 64..256: one window sees a whole median slice, so a slice is never cut
//   where the network has no context. BraTS's median crop (about 136 x 170) gives 144 x 176.
// - 2D batch: 8 at 160 x 192 pixels (the PyTorch reference's), scaled by the patch area, 2..16:
//   a step costs about the same whatever the patch.
// - 3D patch: the median crop (z y x) rounded up to multiples of 16 within 32..160, the longest
//   axis cut by 16 until it holds at most 128^3 voxels (nnU-Net's BraTS patch; a 2-core step of
//   it takes seconds), batch 2.
// - Foreground oversampling: a third of the patches centred on tumour (nnU-Net's), half when the
//   median whole tumour covers less than 3 % of a brain crop (small tumours are otherwise rarely
//   in a patch).
// - Loss and targets: the BraTS regions (WT, TC, ET; sigmoid) with Dice + BCE, the evaluation's
//   own regions.
// - Precision (on the CPU): a few training steps of the planned network timed in fp32 and in
//   bf16; bf16 when it is at least 1.15x faster (AMX tiles: about 2.4x; AVX512_BF16 on Zen 4/5:
//   about 1.4x; a CPU without bf16 instructions only rounds the operands, so it is not timed).
//   The budget then buys that many more steps; bf16 training reaches fp32's Dice (test_model).
// - Prediction: mirror test-time augmentation (recorded in the run; predict uses it unless
//   --no-tta), and the enhancing-tumour post-processing train chooses on its validation cases.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <lightunet/io/fingerprint.hpp>

#include "cli.hpp"
#include "common.hpp"

namespace brats {

struct TrainingPlan {
    struct Setting {
        std::string option, value, reason;
    };
    io::DatasetFingerprint fingerprint;
    std::vector<Setting> settings;  // in the order they are said
    bool mirror_tta = true;
};

inline int multiple_of_16_within(double v, int low, int high) {
    const int up = int((v + 15) / 16) * 16;
    return std::clamp(up, low, high);
}

inline TrainingPlan plan_training(const io::DatasetFingerprint& f, const std::string& model) {
    TrainingPlan plan;
    plan.fingerprint = f;
    if (f.cases == 0) throw std::runtime_error("--plan: the store holds no cases to plan from");
    const auto& m = f.median_extent;  // x y z
    auto text = [](std::vector<int> e) {
        std::string t;
        for (std::size_t i = 0; i < e.size(); ++i) {  // appends: GCC 12 misreports "x" + to_string (PR 105651)
            if (i) t.append("x");
            t.append(std::to_string(e[i]));
        }
        return t;
    };
    if (model == "2d") {
        const int h = multiple_of_16_within(m[1], 64, 256), w = multiple_of_16_within(m[0], 64, 256);
        const int batch = std::clamp(int(8.0 * 160 * 192 / (double(h) * w)), 2, 16);
        plan.settings.push_back({"patch", text({h, w}), "the median brain crop in-plane (" + std::to_string(m[1]) + " x " +
                                                            std::to_string(m[0]) + ") rounded up to multiples of 16"});
        plan.settings.push_back({"batch", std::to_string(batch), "8 at 160 x 192, scaled by the patch area"});
    } else {
        std::array<int, 3> p{multiple_of_16_within(m[2], 32, 160), multiple_of_16_within(m[1], 32, 160),
                             multiple_of_16_within(m[0], 32, 160)};  // z y x
        while (long(p[0]) * p[1] * p[2] > 128L * 128 * 128) {
            int& longest = *std::max_element(p.begin(), p.end());
            longest -= 16;
        }
        plan.settings.push_back({"patch", text({p[0], p[1], p[2]}), "the median brain crop (" + std::to_string(m[2]) + " x " +
                                                                          std::to_string(m[1]) + " x " + std::to_string(m[0]) +
                                                                          ") in multiples of 16, at most 128^3 voxels"});
        plan.settings.push_back({"batch", "2", "nnU-Net's 3D batch"});
    }
    const bool small_tumours = f.labelled > 0 && f.median_tumour_fraction < 0.03;
    char share[64];
    std::snprintf(share, sizeof share, "%.2f %%", 100 * f.median_tumour_fraction);
    plan.settings.push_back({"foreground", small_tumours ? "0.5" : "0.33",
                             std::string("the median whole tumour covers ") + share + " of a brain crop" +
                                 (small_tumours ? " (under 3 %: half the patches on tumour)" : " (a third of the patches on tumour)")});
    plan.settings.push_back({"labels", "regions", "the BraTS regions WT, TC, ET, as they are scored"});
    plan.settings.push_back({"loss", "dice_ce", "Dice for the class imbalance, plus cross-entropy for calibrated voxels"});
    return plan;
}

// bf16 is planned when its training step is at least this much faster than fp32's: a smaller
// gain is within the noise of timing a few steps, and bf16 rounds the convolutions' operands.
inline constexpr double bf16_speedup_to_plan = 1.15;

// --precision from the measured seconds of a training step in each precision.
inline TrainingPlan::Setting precision_setting(double fp32_seconds, double bf16_seconds) {
    if (!(fp32_seconds > 0) || !(bf16_seconds > 0))
        throw std::invalid_argument("precision_setting: step times must be positive, not " + std::to_string(fp32_seconds) +
                                    " s (fp32) and " + std::to_string(bf16_seconds) + " s (bf16)");
    const double speedup = fp32_seconds / bf16_seconds;
    const bool bf16 = speedup >= bf16_speedup_to_plan;
    char reason[200];
    std::snprintf(reason, sizeof reason, "a training step took %.3f s in fp32 and %.3f s in bf16 here (%.2fx; bf16 from %.2fx)",
                  fp32_seconds, bf16_seconds, speedup, bf16_speedup_to_plan);
    return {"precision", bf16 ? "bf16" : "fp32", reason};
}

// `text`'s lines, each after `prefix`.
inline std::string prefixed_lines(const std::string& text, const std::string& prefix) {
    std::string out;
    for (std::size_t begin = 0; begin < text.size();) {
        const std::size_t end = std::min(text.find('\n', begin), text.size());
        out.append(prefix).append(text, begin, end - begin).append("\n");
        begin = end + 1;
    }
    return out;
}

// One planned setting, where the user did not give the option; says what it did when `speak`.
inline void apply_setting(const TrainingPlan::Setting& s, brats_cli::Options& o, bool speak) {
    const bool given = o.given(s.option);
    if (!given) o.set_default(s.option, s.value);
    if (!speak) return;
    if (given)
        std::fprintf(stderr, "[PLAN] --%s %s as given (the plan: %s, %s)\n", s.option.c_str(), o.str(s.option).c_str(),
                     s.value.c_str(), s.reason.c_str());
    else
        std::fprintf(stderr, "[PLAN] --%s %s: %s\n", s.option.c_str(), s.value.c_str(), s.reason.c_str());
}

// Applies the plan to the options the user did not give; says what it did when `speak` (rank 0).
inline void apply_plan(const TrainingPlan& plan, brats_cli::Options& o, bool speak) {
    if (speak)
        std::fprintf(stderr, "[PLAN] Fingerprint of the training data:\n%s",
                     prefixed_lines(io::describe(plan.fingerprint), "[PLAN]   ").c_str());
    for (const auto& s : plan.settings) apply_setting(s, o, speak);
    if (speak)
        std::fprintf(stderr, "[PLAN] predict: mirror test-time augmentation (--no-tta turns it off), and the enhancing-tumour "
                             "post-processing chosen on the validation cases\n");
}

// <run>/plan.cfg: the fingerprint and the settings as applied (what predict reads back: tta).
inline void write_plan(const fs::path& file, const TrainingPlan& plan, const brats_cli::Options& o) {
    std::string text = prefixed_lines(io::describe(plan.fingerprint), "# ");
    for (const auto& s : plan.settings)
        text += "train." + s.option + "=" + o.str(s.option) + (o.given(s.option) ? "  # given; planned " + s.value : "") + "\n";
    text += std::string("predict.tta=") + (plan.mirror_tta ? "on" : "off") + "\n";
    write_run_file(file, text, "the plan");
}

// The value <run>/plan.cfg records under `key` ("" when none, or no plan), without the note
// write_plan puts after a given value ("64x64  # given; planned 144x176").
inline std::string recorded_in_plan(const fs::path& run_dir, const std::string& key) {
    std::ifstream f(run_dir / "plan.cfg");
    const auto recorded = read_key_values(f);
    const auto it = recorded.find(key);
    return it == recorded.end() ? "" : it->second.substr(0, it->second.find(' '));
}
// The value recorded for a training option.
inline std::string planned_value(const fs::path& run_dir, const std::string& option) {
    return recorded_in_plan(run_dir, "train." + option);
}

// Whether <run>/plan.cfg asks predict for mirror test-time augmentation (no plan: no).
inline bool plan_asks_for_tta(const fs::path& run_dir) { return recorded_in_plan(run_dir, "predict.tta") == "on"; }

}  // namespace brats

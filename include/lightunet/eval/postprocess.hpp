#pragma once
// BraTS post-processing of canonical labels, chosen on validation cases.
//
// Enhancing tumour (ET) is the region a network over-calls most in gliomas without any: a few
// hundred false voxels turn that case's ET Dice from 1 into 0, while BraTS scores an empty
// prediction of an empty truth as 1. So, as the BraTS entries of nnU-Net do, a case whose
// predicted ET is smaller than a volume threshold gets none: those voxels become necrosis
// (class 1), which keeps the tumour core and the whole tumour as they were. The threshold is the
// one that gives the highest mean ET Dice on the validation cases (0, i.e. off, when none helps).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "metrics.hpp"

namespace lightunet::eval {

struct PostProcessing {
    double min_enhancing_mm3 = 0;  // predicted ET below this volume becomes necrosis (0: off)
    bool active() const { return min_enhancing_mm3 > 0; }
    // Whether a case predicted with `enhancing` ET voxels of `voxel_mm3` loses them: the one rule
    // that postprocess, the choice and the validation table share.
    bool removes_enhancing(std::uint64_t enhancing, double voxel_mm3) const {
        return enhancing > 0 && double(enhancing) * voxel_mm3 < min_enhancing_mm3;
    }
};

// Applies `p` to one case's canonical labels in place (`voxel_mm3`: data::Geometry::voxel_mm3);
// returns the number of voxels relabelled.
inline std::size_t postprocess(const PostProcessing& p, std::span<std::uint8_t> labels, double voxel_mm3) {
    if (!(voxel_mm3 > 0)) throw std::invalid_argument("postprocess: voxel volume " + std::to_string(voxel_mm3) + " mm^3");
    if (!p.active()) return 0;
    const auto enhancing = std::size_t(std::count(labels.begin(), labels.end(), std::uint8_t(3)));
    if (!p.removes_enhancing(enhancing, voxel_mm3)) return 0;
    std::replace(labels.begin(), labels.end(), std::uint8_t(3), std::uint8_t(1));
    return enhancing;
}

// What the choice needs of one validation case: its ET counts, and the volume of a voxel.
struct EnhancingCounts {
    DiceCounts counts;
    double voxel_mm3 = 1;
};

inline EnhancingCounts enhancing_counts(std::span<const std::uint8_t> prediction, std::span<const std::uint8_t> truth,
                                        double voxel_mm3) {
    return {region_counts(prediction, truth)[2], voxel_mm3};
}

// The thresholds tried (mm^3; BraTS data is 1 mm isotropic, so also voxels).
inline constexpr std::array<double, 10> kEnhancingThresholdsMm3{0, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000};

struct ThresholdScore {
    double min_enhancing_mm3 = 0;
    double mean_et_dice = 0;
    std::size_t cases_changed = 0;  // cases whose ET this threshold removes
};

struct PostProcessingChoice {
    PostProcessing chosen;
    std::vector<ThresholdScore> scores;  // one per threshold tried, in the order given
    std::size_t cases = 0;
    double et_dice_without = 0, et_dice_with = 0;  // mean ET Dice without post-processing and with the choice
};

// The threshold of `candidates` with the highest mean ET Dice over `cases`; of equal scores the
// smallest (the least change), so an empty validation set or one it cannot improve chooses 0.
inline PostProcessingChoice choose_postprocessing(std::span<const EnhancingCounts> cases,
                                                  std::span<const double> candidates = kEnhancingThresholdsMm3) {
    PostProcessingChoice choice;
    choice.cases = cases.size();
    for (const double threshold : candidates) {
        if (!(threshold >= 0)) throw std::invalid_argument("choose_postprocessing: threshold " + std::to_string(threshold) + " mm^3");
        ThresholdScore score{threshold, 0, 0};
        for (const EnhancingCounts& c : cases) {
            DiceCounts counts = c.counts;
            if (PostProcessing{threshold}.removes_enhancing(counts.predicted, c.voxel_mm3)) {
                counts.predicted = counts.intersection = 0;
                ++score.cases_changed;
            }
            score.mean_et_dice += counts.dice();
        }
        if (!cases.empty()) score.mean_et_dice /= double(cases.size());
        choice.scores.push_back(score);
    }
    double best = -1, chosen_threshold = 0;
    for (const ThresholdScore& s : choice.scores) {
        if (s.mean_et_dice > best || (s.mean_et_dice == best && s.min_enhancing_mm3 < chosen_threshold)) {
            best = s.mean_et_dice;
            chosen_threshold = s.min_enhancing_mm3;
        }
    }
    choice.chosen.min_enhancing_mm3 = best < 0 ? 0 : chosen_threshold;
    for (const EnhancingCounts& c : cases) choice.et_dice_without += c.counts.dice() / double(cases.size());
    choice.et_dice_with = best < 0 ? choice.et_dice_without : best;
    return choice;
}

}  // namespace lightunet::eval

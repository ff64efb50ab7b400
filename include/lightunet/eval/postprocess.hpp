#pragma once
// BraTS post-processing of canonical labels, chosen on validation cases.
//
// Two rules, both as nnU-Net's BraTS entries use them, each chosen only when it raises the
// validation cases' Dice:
// - Tumour components. A network trained on slices or patches marks blobs far from the tumour
//   (artefacts that look like edema on FLAIR): they cost WT Dice and set HD95. The tumour voxels
//   (any tumour class) are split into 26-connected components, and a component smaller than a
//   fraction of the case's largest becomes background (fraction 1: the largest alone; equal
//   largest ones are all kept). As nnU-Net decides its largest-component rule: a fraction is
//   taken only when it raises the validation cases' mean Dice over WT, TC and ET and lowers no
//   region's; of the fractions with the best score, the largest (the validation cases could not
//   tell them apart, and each removes what the smaller ones do and more).
// - Enhancing tumour (ET) is the region a network over-calls most in gliomas without any: a few
//   hundred false voxels turn that case's ET Dice from 1 into 0, while BraTS scores an empty
//   prediction of an empty truth as 1. So a case whose predicted ET (after the components) is
//   smaller than a volume threshold gets none: those voxels become necrosis (class 1), which keeps
//   the tumour core and the whole tumour as they were. Chosen by the mean ET Dice; of equal
//   scores the smallest threshold (the least change).
// Each rule is off (0) unless it helps.
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
    double min_enhancing_mm3 = 0;       // predicted ET below this volume becomes necrosis (0: off)
    double min_component_fraction = 0;  // tumour components below this fraction of the largest go (0: off)
    bool active() const { return min_enhancing_mm3 > 0 || removes_components(); }
    bool removes_components() const { return min_component_fraction > 0; }
    // Whether a case predicted with `enhancing` ET voxels of `voxel_mm3` loses them: the one rule
    // that postprocess, the choice and the validation table share.
    bool removes_enhancing(std::uint64_t enhancing, double voxel_mm3) const {
        return enhancing > 0 && double(enhancing) * voxel_mm3 < min_enhancing_mm3;
    }
};

struct ComponentsRemoved {
    std::size_t components = 0, voxels = 0;  // tumour components that became background, and their voxels
    std::size_t kept = 0;                    // components left
};

// The tumour components (labels 1..3, 26-connected) of labels on `grid`: each tumour voxel's
// component and each component's size. The choice labels a case once and tries every fraction
// on the result.
struct TumourComponents {
    static constexpr std::uint32_t none = ~std::uint32_t(0);  // background
    std::vector<std::uint32_t> of_voxel;
    std::vector<std::size_t> sizes;

    TumourComponents(std::span<const std::uint8_t> labels, const Grid& grid) : of_voxel(labels.size(), none) {
        if (labels.size() != grid.voxels())
            throw std::invalid_argument("tumour components: " + std::to_string(labels.size()) + " labels on a grid of " +
                                        std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z));
        std::vector<std::size_t> stack;
        const std::ptrdiff_t nx = grid.x, ny = grid.y, nz = grid.z;
        for (std::size_t seed = 0; seed < labels.size(); ++seed) {
            if (labels[seed] == 0 || of_voxel[seed] != none) continue;
            const auto id = std::uint32_t(sizes.size());
            std::size_t size = 0;
            of_voxel[seed] = id;
            stack.assign(1, seed);
            while (!stack.empty()) {
                const std::size_t at = stack.back();
                stack.pop_back();
                ++size;
                const std::ptrdiff_t x = std::ptrdiff_t(at) % nx, y = std::ptrdiff_t(at) / nx % ny, z = std::ptrdiff_t(at) / (nx * ny);
                for (std::ptrdiff_t c = std::max<std::ptrdiff_t>(z - 1, 0); c <= std::min(z + 1, nz - 1); ++c)
                    for (std::ptrdiff_t b = std::max<std::ptrdiff_t>(y - 1, 0); b <= std::min(y + 1, ny - 1); ++b)
                        for (std::ptrdiff_t a = std::max<std::ptrdiff_t>(x - 1, 0); a <= std::min(x + 1, nx - 1); ++a) {
                            const auto next = std::size_t((c * ny + b) * nx + a);
                            if (labels[next] != 0 && of_voxel[next] == none) {
                                of_voxel[next] = id;
                                stack.push_back(next);
                            }
                        }
            }
            sizes.push_back(size);
        }
    }

    // The components under `fraction` of the largest become background in `labels` (the labels
    // these components were found in, or a copy); what went.
    ComponentsRemoved remove_small(std::span<std::uint8_t> labels, double fraction) const {
        if (!(fraction >= 0 && fraction <= 1))
            throw std::invalid_argument("remove_small_components: fraction " + std::to_string(fraction) + " is not in [0, 1]");
        if (labels.size() != of_voxel.size())
            throw std::invalid_argument("remove_small_components: " + std::to_string(labels.size()) +
                                        " labels, but the components were found in " + std::to_string(of_voxel.size()));
        ComponentsRemoved removed;
        if (fraction == 0 || sizes.empty()) {
            removed.kept = sizes.size();
            return removed;
        }
        const double smallest_kept = fraction * double(*std::max_element(sizes.begin(), sizes.end()));
        std::vector<char> goes(sizes.size());
        for (std::size_t k = 0; k < sizes.size(); ++k) {
            goes[k] = double(sizes[k]) < smallest_kept;
            if (goes[k]) ++removed.components, removed.voxels += sizes[k];
        }
        removed.kept = sizes.size() - removed.components;
        if (removed.components > 0)
            for (std::size_t i = 0; i < labels.size(); ++i)
                if (of_voxel[i] != none && goes[of_voxel[i]]) labels[i] = 0;
        return removed;
    }
};

// The tumour components of labels on `grid` smaller than `fraction` of the largest become
// background, in place. fraction 0 removes nothing; 1 keeps the largest (and any of its size).
inline ComponentsRemoved remove_small_components(std::span<std::uint8_t> labels, const Grid& grid, double fraction) {
    return TumourComponents(labels, grid).remove_small(labels, fraction);
}

struct PostProcessed {
    ComponentsRemoved components;
    std::size_t enhancing_relabelled = 0;  // ET voxels that became necrosis
    bool changed() const { return components.voxels > 0 || enhancing_relabelled > 0; }
};

// Applies `p` to one case's canonical labels on `grid` in place: the components first, then the
// enhancing-tumour volume of what is left.
inline PostProcessed postprocess(const PostProcessing& p, std::span<std::uint8_t> labels, const Grid& grid) {
    const double voxel_mm3 = grid.voxel_mm3();
    if (!(voxel_mm3 > 0)) throw std::invalid_argument("postprocess: voxel volume " + std::to_string(voxel_mm3) + " mm^3");
    PostProcessed done;
    if (p.removes_components()) done.components = remove_small_components(labels, grid, p.min_component_fraction);
    if (p.min_enhancing_mm3 > 0) {
        const auto enhancing = std::size_t(std::count(labels.begin(), labels.end(), std::uint8_t(3)));
        if (p.removes_enhancing(enhancing, voxel_mm3)) {
            std::replace(labels.begin(), labels.end(), std::uint8_t(3), std::uint8_t(1));
            done.enhancing_relabelled = enhancing;
        }
    }
    return done;
}

// What the threshold's choice needs of one validation case: its ET counts, and the volume of a voxel.
struct EnhancingCounts {
    DiceCounts counts;
    double voxel_mm3 = 1;
};

inline EnhancingCounts enhancing_counts(std::span<const std::uint8_t> prediction, std::span<const std::uint8_t> truth,
                                        double voxel_mm3) {
    return {region_counts(prediction, truth)[2], voxel_mm3};
}

// The values tried. Thresholds in mm^3 (BraTS data is 1 mm isotropic, so also voxels); fractions
// of the largest component (1: the largest alone).
inline constexpr std::array<double, 10> kEnhancingThresholdsMm3{0, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000};
inline constexpr std::array<double, 8> kComponentFractions{0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1};

struct ThresholdScore {
    double min_enhancing_mm3 = 0;
    double mean_et_dice = 0;
    std::size_t cases_changed = 0;  // cases whose ET this threshold removes
};

struct ComponentScore {
    double min_component_fraction = 0;
    double mean_dice = 0;                   // over the cases and WT, TC, ET
    std::array<double, kRegions> region_dice{};  // over the cases, per region
    std::size_t cases_changed = 0;          // cases that lose a component
};

struct PostProcessingChoice {
    PostProcessing chosen;
    std::vector<ComponentScore> component_scores;  // one per fraction tried, in the order given
    std::vector<ThresholdScore> scores;            // one per threshold tried (after the chosen components)
    std::size_t cases = 0;
    double dice_without = 0, dice_after_components = 0;  // mean Dice over the regions without and with the components' choice
    double et_dice_without = 0, et_dice_with = 0;        // mean ET Dice before the threshold and with the choice
};

// The threshold of `candidates` with the highest mean ET Dice over `cases`; of equal scores the
// smallest (the least change), so an empty validation set or one it cannot improve chooses 0.
// Sets chosen.min_enhancing_mm3, scores and the ET means of `choice`.
inline void choose_enhancing_threshold(std::span<const EnhancingCounts> cases, std::span<const double> candidates,
                                       PostProcessingChoice& choice) {
    choice.scores.clear();
    for (const double threshold : candidates) {
        if (!(threshold >= 0)) throw std::invalid_argument("choose_enhancing_threshold: threshold " + std::to_string(threshold) + " mm^3");
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
    choice.chosen.min_enhancing_mm3 = cases.empty() || best < 0 ? 0 : chosen_threshold;
    choice.et_dice_without = 0;
    for (const EnhancingCounts& c : cases) choice.et_dice_without += c.counts.dice() / double(cases.size());
    choice.et_dice_with = cases.empty() || best < 0 ? choice.et_dice_without : best;
}

inline PostProcessingChoice choose_enhancing_threshold(std::span<const EnhancingCounts> cases,
                                                       std::span<const double> candidates = kEnhancingThresholdsMm3) {
    PostProcessingChoice choice;
    choice.cases = cases.size();
    choose_enhancing_threshold(cases, candidates, choice);
    return choice;
}

// One validation case as the choice sees it: the prediction and the truth on its grid.
struct ValidationCase {
    std::span<const std::uint8_t> prediction, truth;
    Grid grid;
};

namespace detail {
inline std::array<double, kRegions> region_dice(std::span<const std::uint8_t> prediction, std::span<const std::uint8_t> truth) {
    const auto counts = region_counts(prediction, truth);
    return {counts[0].dice(), counts[1].dice(), counts[2].dice()};
}
}  // namespace detail

// Both rules chosen on `cases`: the component fraction (as the header says), then the enhancing
// threshold on the predictions as that fraction leaves them. `fractions` starts with 0 (off).
inline PostProcessingChoice choose_postprocessing(std::span<const ValidationCase> cases,
                                                  std::span<const double> fractions = kComponentFractions,
                                                  std::span<const double> thresholds = kEnhancingThresholdsMm3) {
    if (fractions.empty() || fractions.front() != 0)
        throw std::invalid_argument("choose_postprocessing: the component fractions must start with 0 (off), the baseline");
    PostProcessingChoice choice;
    choice.cases = cases.size();
    for (std::size_t i = 0; i < cases.size(); ++i)
        if (cases[i].prediction.size() != cases[i].grid.voxels() || cases[i].truth.size() != cases[i].grid.voxels())
            throw std::invalid_argument("choose_postprocessing: validation case " + std::to_string(i) + " has " +
                                        std::to_string(cases[i].prediction.size()) + " predicted and " +
                                        std::to_string(cases[i].truth.size()) + " true labels on a grid of " +
                                        std::to_string(cases[i].grid.voxels()) + " voxels");
    std::vector<TumourComponents> components;
    for (const ValidationCase& c : cases) components.emplace_back(c.prediction, c.grid);
    std::vector<std::uint8_t> labels;
    for (const double fraction : fractions) {
        ComponentScore score{fraction, 0, {}, 0};
        for (std::size_t i = 0; i < cases.size(); ++i) {
            const ValidationCase& c = cases[i];
            labels.assign(c.prediction.begin(), c.prediction.end());
            if (components[i].remove_small(labels, fraction).voxels > 0) ++score.cases_changed;
            const auto dice = detail::region_dice(labels, c.truth);
            for (int r = 0; r < kRegions; ++r) score.region_dice[std::size_t(r)] += dice[std::size_t(r)] / double(cases.size());
        }
        for (const double d : score.region_dice) score.mean_dice += d / kRegions;
        choice.component_scores.push_back(score);
    }
    const ComponentScore& off = choice.component_scores.front();
    const ComponentScore* chosen = &off;
    for (const ComponentScore& s : choice.component_scores) {
        bool no_region_worse = true;
        for (int r = 0; r < kRegions; ++r) no_region_worse = no_region_worse && s.region_dice[std::size_t(r)] >= off.region_dice[std::size_t(r)];
        if (!no_region_worse || !(s.mean_dice > off.mean_dice)) continue;
        if (s.mean_dice > chosen->mean_dice || (s.mean_dice == chosen->mean_dice && s.min_component_fraction > chosen->min_component_fraction))
            chosen = &s;
    }
    choice.chosen.min_component_fraction = chosen->min_component_fraction;
    choice.dice_without = off.mean_dice;
    choice.dice_after_components = chosen->mean_dice;
    std::vector<EnhancingCounts> enhancing;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        labels.assign(cases[i].prediction.begin(), cases[i].prediction.end());
        components[i].remove_small(labels, choice.chosen.min_component_fraction);
        enhancing.push_back(enhancing_counts(labels, cases[i].truth, cases[i].grid.voxel_mm3()));
    }
    choose_enhancing_threshold(enhancing, thresholds, choice);
    return choice;
}

}  // namespace lightunet::eval

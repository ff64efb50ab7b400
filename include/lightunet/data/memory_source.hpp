#pragma once
// MemorySource: a CaseSource over cases held in memory (synthetic data, tests, small sets).
//
// Contract:
// - The constructor checks every case (image and label sizes against the extent, labels within
//   the canonical classes 0..3, finite images) and throws std::invalid_argument naming the case.
// - foreground(i) lists, per tumour class present, up to `foreground_per_class` voxels spread
//   evenly over that class (all of them when fewer), so a loader drawing uniformly from the
//   list picks rare classes (enhancing rims) about as often as edema, as nnU-Net does.
// - read() is const and safe from several threads; boxes may extend outside the case (zeros,
//   background labels there).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "case.hpp"
#include "source.hpp"

namespace lightunet::data {

// Z-scores each modality over the brain (voxels where any modality is non-zero), leaving the
// background exactly 0: the same normalisation the preprocessed store applies. A modality that
// is constant over the brain becomes 0 there (its standard deviation is not divided by).
inline void normalize_brain(Case& c) {
    const std::size_t volume = c.extent.voxels();
    if (c.images.size() != volume * kModalityCount)
        throw std::invalid_argument("normalize_brain: case '" + c.id + "' has " + std::to_string(c.images.size()) +
                                    " image values, expected " + std::to_string(volume * kModalityCount));
    std::vector<std::uint8_t> brain(volume, 0);
    std::size_t brain_voxels = 0;
    for (int m = 0; m < kModalityCount; ++m) {
        const float* image = c.image(m);
        for (std::size_t v = 0; v < volume; ++v) brain[v] |= image[v] != 0.0f;
    }
    for (std::uint8_t b : brain) brain_voxels += b;
    if (brain_voxels == 0) return;
    for (int m = 0; m < kModalityCount; ++m) {
        float* image = c.image(m);
        double sum = 0, sum_sq = 0;
        for (std::size_t v = 0; v < volume; ++v)
            if (brain[v]) {
                sum += image[v];
                sum_sq += double(image[v]) * image[v];
            }
        const double mean = sum / double(brain_voxels);
        const double variance = std::max(0.0, sum_sq / double(brain_voxels) - mean * mean);
        const double inv_std = variance > 0 ? 1.0 / std::sqrt(variance) : 0.0;
        for (std::size_t v = 0; v < volume; ++v) image[v] = brain[v] ? float((image[v] - mean) * inv_std) : 0.0f;
    }
}

struct MemorySourceOptions {
    std::size_t foreground_per_class = 4096;
    bool normalize = false;  // apply normalize_brain to each case on construction
};

class MemorySource final : public CaseSource {
public:
    explicit MemorySource(std::vector<Case> cases, MemorySourceOptions options = {}) : cases_(std::move(cases)) {
        if (options.foreground_per_class == 0)
            throw std::invalid_argument("MemorySource: foreground_per_class must be positive");
        foreground_.resize(cases_.size());
        for (std::size_t i = 0; i < cases_.size(); ++i) {
            Case& c = cases_[i];
            check(c);
            if (options.normalize) normalize_brain(c);
            foreground_[i] = sample_foreground(c, options.foreground_per_class);
        }
    }

    std::size_t size() const override { return cases_.size(); }
    std::string id(std::size_t index) const override { return at(index).id; }
    VolumeExtent extent(std::size_t index) const override { return at(index).extent; }
    bool has_labels(std::size_t index) const override { return at(index).has_labels(); }
    std::vector<SliceRange> present_slices(std::size_t index) const override { return at(index).present_slices; }
    std::vector<std::array<int, 3>> foreground(std::size_t index) const override {
        at(index);
        return foreground_[index];
    }
    std::optional<std::array<int, 3>> foreground_voxel(std::size_t index, std::uint64_t draw) const override {
        at(index);
        const auto& list = foreground_[index];
        if (list.empty()) return std::nullopt;
        return list[pick(draw, list.size())];
    }

    void read(std::size_t index, const Box& box, float* images, std::uint8_t* labels) const override {
        const Case& c = at(index);
        const VolumeExtent be = box.extent();
        if (be.x <= 0 || be.y <= 0 || be.z <= 0)
            throw std::invalid_argument("MemorySource::read: case '" + c.id + "': empty box " + std::to_string(be.x) +
                                        "x" + std::to_string(be.y) + "x" + std::to_string(be.z));
        const VolumeExtent e = c.extent;
        const std::size_t box_volume = be.voxels();
        // The x-run of each row that lies inside the case; the rest is padding.
        const int x_lo = std::clamp(box.begin[0], 0, e.x), x_hi = std::clamp(box.end[0], 0, e.x);
        const int run = std::max(0, x_hi - x_lo), pad_before = std::max(0, std::min(x_lo, box.end[0]) - box.begin[0]);
        for (int bz = 0; bz < be.z; ++bz) {
            const int z = box.begin[2] + bz;
            for (int by = 0; by < be.y; ++by) {
                const int y = box.begin[1] + by;
                const std::size_t out_row = (std::size_t(bz) * be.y + by) * be.x;
                const bool inside = z >= 0 && z < e.z && y >= 0 && y < e.y && run > 0;
                const std::size_t in_row = inside ? (std::size_t(z) * e.y + y) * e.x + x_lo : 0;
                for (int m = 0; m < kModalityCount; ++m) {
                    float* out = images + std::size_t(m) * box_volume + out_row;
                    if (!inside) {
                        std::fill(out, out + be.x, 0.0f);
                        continue;
                    }
                    std::fill(out, out + pad_before, 0.0f);
                    std::memcpy(out + pad_before, c.image(m) + in_row, std::size_t(run) * sizeof(float));
                    std::fill(out + pad_before + run, out + be.x, 0.0f);
                }
                if (!labels) continue;
                std::uint8_t* out = labels + out_row;
                if (!inside || !c.has_labels()) {
                    std::fill(out, out + be.x, std::uint8_t(0));
                    continue;
                }
                std::fill(out, out + pad_before, std::uint8_t(0));
                std::memcpy(out + pad_before, c.labels.data() + in_row, std::size_t(run));
                std::fill(out + pad_before + run, out + be.x, std::uint8_t(0));
            }
        }
    }

    Case load(std::size_t index) const override { return at(index); }

    const Case& at(std::size_t index) const {
        if (index >= cases_.size())
            throw std::out_of_range("MemorySource: case index " + std::to_string(index) + " is out of range (" +
                                    std::to_string(cases_.size()) + " cases)");
        return cases_[index];
    }

private:
    static void check(const Case& c) {
        const std::size_t volume = c.extent.voxels();
        if (c.extent.x <= 0 || c.extent.y <= 0 || c.extent.z <= 0)
            throw std::invalid_argument("MemorySource: case '" + c.id + "' has an empty extent");
        if (c.images.size() != volume * kModalityCount)
            throw std::invalid_argument("MemorySource: case '" + c.id + "' has " + std::to_string(c.images.size()) +
                                        " image values, expected " + std::to_string(volume * kModalityCount));
        if (c.has_labels() && c.labels.size() != volume)
            throw std::invalid_argument("MemorySource: case '" + c.id + "' has " + std::to_string(c.labels.size()) +
                                        " labels, expected " + std::to_string(volume));
        if (const std::string problem = slice_runs_problem(c.present_slices, c.extent.z); !problem.empty())
            throw std::invalid_argument("MemorySource: case '" + c.id + "': present_slices: " + problem);
        for (std::size_t v = 0; v < c.labels.size(); ++v)
            if (c.labels[v] >= kClassCount)
                throw std::invalid_argument("MemorySource: case '" + c.id + "' has label " + std::to_string(int(c.labels[v])) +
                                            " at voxel " + std::to_string(v) + ", canonical classes are 0.." +
                                            std::to_string(kClassCount - 1));
        for (std::size_t v = 0; v < c.images.size(); ++v)
            if (!std::isfinite(c.images[v]))
                throw std::invalid_argument("MemorySource: case '" + c.id + "' has a non-finite image value in " +
                                            kModalityNames[v / volume] + " at voxel " + std::to_string(v % volume));
    }

    static std::vector<std::array<int, 3>> sample_foreground(const Case& c, std::size_t per_class) {
        std::vector<std::array<int, 3>> picked;
        if (!c.has_labels()) return picked;
        std::array<std::size_t, kClassCount> counts{};
        for (std::uint8_t l : c.labels) ++counts[l];
        for (int cls = 1; cls < kClassCount; ++cls) {
            const std::size_t count = counts[std::size_t(cls)], take = std::min(count, per_class);
            // The k-th pick is the floor(k * count / take)-th voxel of the class: evenly spread.
            std::size_t seen = 0, next_pick = 0, k = 0;
            for (std::size_t v = 0; v < c.labels.size() && k < take; ++v) {
                if (c.labels[v] != cls) continue;
                if (seen == next_pick) {
                    const int x = int(v % std::size_t(c.extent.x));
                    const int y = int(v / std::size_t(c.extent.x) % std::size_t(c.extent.y));
                    const int z = int(v / (std::size_t(c.extent.x) * c.extent.y));
                    picked.push_back({x, y, z});
                    ++k;
                    next_pick = k * count / take;
                }
                ++seen;
            }
        }
        return picked;
    }

    std::vector<Case> cases_;
    std::vector<std::vector<std::array<int, 3>>> foreground_;
};

}  // namespace lightunet::data

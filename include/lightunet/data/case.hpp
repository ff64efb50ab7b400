#pragma once
// One BraTS case in memory, in lightunet's canonical conventions. Every reader produces it,
// every writer and the loader consume it.
//
// Conventions (readers convert to them, writers convert back; nothing else guesses):
// - Voxel order: x fastest, then y, then z, exactly as NIfTI stores it. A volume of extent
//   {x, y, z} maps onto a tensor [C][D=z][H=y][W=x]; a 2D slice is one z (axial).
// - Channels: kModalityCount images in the order t1, t1ce, t2, flair (BraTS 2023+ names:
//   t1n, t1c, t2w, t2f).
// - Labels: canonical classes 0 background, 1 necrotic / non-enhancing core (NCR/NETC),
//   2 edema (ED/SNFH), 3 enhancing tumour (ET). A LabelMap converts an edition's raw values.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lightunet::data {

inline constexpr int kModalityCount = 4;
enum class Modality { t1 = 0, t1ce = 1, t2 = 2, flair = 3 };
inline constexpr std::array<const char*, kModalityCount> kModalityNames{"t1", "t1ce", "t2", "flair"};

inline constexpr int kClassCount = 4;  // canonical classes, background included
enum class Region { whole_tumour = 0, tumour_core = 1, enhancing = 2 };
inline constexpr int kRegionCount = 3;
inline constexpr std::array<const char*, kRegionCount> kRegionNames{"WT", "TC", "ET"};

struct VolumeExtent {
    int x = 0, y = 0, z = 0;
    std::size_t voxels() const { return std::size_t(x) * y * z; }
    bool operator==(const VolumeExtent&) const = default;
};

// Where a case sits in its original scanner space, enough to write a prediction back.
struct Geometry {
    VolumeExtent extent;                 // original extent (before any crop)
    std::array<float, 3> spacing{1, 1, 1};  // mm
    double voxel_mm3() const { return double(spacing[0]) * double(spacing[1]) * double(spacing[2]); }
    int qform_code = 0, sform_code = 0;
    std::array<std::array<double, 4>, 3> sform{};  // rows of the voxel -> world affine
    std::array<float, 4> quatern{};               // quatern_b, c, d, qfac
    std::array<float, 3> qoffset{};
};

// Half-open voxel box [begin, end) in the original extent.
struct CropBox {
    std::array<int, 3> begin{0, 0, 0};
    std::array<int, 3> end{0, 0, 0};
    VolumeExtent extent() const { return {end[0] - begin[0], end[1] - begin[1], end[2] - begin[2]}; }
};

// Half-open run [begin, end) of axial slices (z).
struct SliceRange {
    int begin = 0, end = 0;
    int size() const { return end - begin; }
    bool operator==(const SliceRange&) const = default;
};

struct Case {
    std::string id;
    VolumeExtent extent;         // of the arrays below (after a crop, if any)
    std::vector<float> images;   // [kModalityCount][z][y][x]
    std::vector<std::uint8_t> labels;  // [z][y][x] canonical classes; empty when unlabelled
    Geometry geometry;
    CropBox crop;                // where `extent` lies in geometry.extent
    // The runs of slices (z of `extent`, ascending, disjoint) that hold data, when only some do
    // (a folder of Kaggle slices that keeps part of a volume): the other slices are zero images
    // and background labels, not anatomy. Empty: every slice holds data.
    std::vector<SliceRange> present_slices;
    bool has_labels() const { return !labels.empty(); }
    float* image(int modality) { return images.data() + std::size_t(modality) * extent.voxels(); }
    const float* image(int modality) const { return images.data() + std::size_t(modality) * extent.voxels(); }
};

// The runs of consecutive values in `slices` (ascending, no repeats).
inline std::vector<SliceRange> slice_runs(const std::vector<int>& slices) {
    std::vector<SliceRange> runs;
    for (const int z : slices) {
        if (!runs.empty() && runs.back().end == z) ++runs.back().end;
        else runs.push_back({z, z + 1});
    }
    return runs;
}

// Why `runs` cannot be the present slices of a case `depth` slices deep ("" when they can):
// each run non-empty and inside [0, depth), ascending, disjoint and not touching.
inline std::string slice_runs_problem(const std::vector<SliceRange>& runs, int depth) {
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const SliceRange& r = runs[i];
        const std::string run = "slice run [" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ")";
        if (r.begin < 0 || r.end > depth || r.begin >= r.end) return run + " is empty or outside the " + std::to_string(depth) + " slices";
        if (i > 0 && r.begin <= runs[i - 1].end) return run + " does not follow the run before it with a gap";
    }
    return {};
}

// The parts of `runs` inside the slices [begin, end), renumbered from `begin` (a crop along z).
inline std::vector<SliceRange> crop_slice_runs(const std::vector<SliceRange>& runs, int begin, int end) {
    std::vector<SliceRange> cropped;
    for (const SliceRange& r : runs)
        if (std::max(r.begin, begin) < std::min(r.end, end)) cropped.push_back({std::max(r.begin, begin) - begin, std::min(r.end, end) - begin});
    return cropped;
}

// "3-5, 9, 12-14" (inclusive slice numbers), for messages.
inline std::string describe_slice_runs(const std::vector<SliceRange>& runs) {
    std::string text;
    for (const SliceRange& r : runs) {
        if (!text.empty()) text += ", ";
        text += std::to_string(r.begin);
        if (r.size() > 1) {
            text += '-';
            text += std::to_string(r.end - 1);
        }
    }
    return text;
}

}  // namespace lightunet::data

#pragma once
// CaseSource: random access to a set of cases, region by region, so a loader can cut patches
// without holding a dataset in memory. The preprocessed HDF5 store reads only the chunks a
// region touches; an in-memory source (synthetic data, tests) copies from its vectors.
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "case.hpp"

namespace lightunet::data {

// Half-open box [begin, end) in a case's stored (cropped) voxel grid, x/y/z.
struct Box {
    std::array<int, 3> begin{0, 0, 0};
    std::array<int, 3> end{0, 0, 0};
    VolumeExtent extent() const { return {end[0] - begin[0], end[1] - begin[1], end[2] - begin[2]}; }
};

// Index in [0, size) of a uniform 64-bit draw: the high half of draw * size (no modulo bias).
inline std::size_t pick(std::uint64_t draw, std::size_t size) {
    return std::size_t((unsigned __int128)draw * size >> 64);
}

class CaseSource {
public:
    virtual ~CaseSource() = default;
    virtual std::size_t size() const = 0;
    virtual std::string id(std::size_t index) const = 0;
    virtual VolumeExtent extent(std::size_t index) const = 0;
    virtual bool has_labels(std::size_t index) const = 0;
    // For a case assembled from part of a volume's slices (Case::present_slices): the runs of
    // axial slices (z, ascending, disjoint) that hold data; the other slices read as zero images
    // and background labels. Empty for a whole volume.
    virtual std::vector<SliceRange> present_slices(std::size_t /*index*/) const { return {}; }
    // Voxels (x, y, z) of the case holding each canonical tumour class 1..3 (for foreground
    // oversampling); may be a subsample, never empty for a class the case contains.
    virtual std::vector<std::array<int, 3>> foreground(std::size_t index) const = 0;
    // The voxel foreground(index)[draw * size >> 64] (uniform over the list for a uniform
    // 64-bit draw), or nothing when the list is empty. The loader calls this once per
    // oversampled patch, so sources override it to pick the voxel without building the list.
    virtual std::optional<std::array<int, 3>> foreground_voxel(std::size_t index, std::uint64_t draw) const {
        const std::vector<std::array<int, 3>> list = foreground(index);
        if (list.empty()) return std::nullopt;
        return list[pick(draw, list.size())];
    }
    // Copies the region into images [kModalityCount][z][y][x] and labels [z][y][x] (labels may
    // be null). Parts of the box outside the case are zero (images) and background (labels).
    // Safe to call from several threads at once.
    virtual void read(std::size_t index, const Box& box, float* images, std::uint8_t* labels) const = 0;
    // The whole case, for evaluation and writing predictions back.
    virtual Case load(std::size_t index) const = 0;
};

}  // namespace lightunet::data

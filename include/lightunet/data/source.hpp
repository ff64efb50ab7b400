#pragma once
// CaseSource: random access to a set of cases, region by region, so a loader can cut patches
// without holding a dataset in memory. The preprocessed HDF5 store reads only the chunks a
// region touches; an in-memory source (synthetic data, tests) copies from its vectors.
#include <array>
#include <cstddef>
#include <cstdint>
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

class CaseSource {
public:
    virtual ~CaseSource() = default;
    virtual std::size_t size() const = 0;
    virtual std::string id(std::size_t index) const = 0;
    virtual VolumeExtent extent(std::size_t index) const = 0;
    virtual bool has_labels(std::size_t index) const = 0;
    // Voxels (x, y, z) of the case holding each canonical tumour class 1..3 (for foreground
    // oversampling); may be a subsample, never empty for a class the case contains.
    virtual std::vector<std::array<int, 3>> foreground(std::size_t index) const = 0;
    // Copies the region into images [kModalityCount][z][y][x] and labels [z][y][x] (labels may
    // be null). Parts of the box outside the case are zero (images) and background (labels).
    // Safe to call from several threads at once.
    virtual void read(std::size_t index, const Box& box, float* images, std::uint8_t* labels) const = 0;
    // The whole case, for evaluation and writing predictions back.
    virtual Case load(std::size_t index) const = 0;
};

}  // namespace lightunet::data

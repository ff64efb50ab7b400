#pragma once
// A store's fingerprint, as nnU-Net plans from one: the brain-crop extents and voxel spacing the
// network will see, how rare each tumour class is, and how large the enhancing tumour gets.
// Read from the store's per-case attributes only (no image is read), so it costs milliseconds.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../data/case.hpp"
#include "store.hpp"

namespace lightunet::io {

struct DatasetFingerprint {
    std::size_t cases = 0, labelled = 0;
    std::array<int, 3> median_extent{}, min_extent{}, max_extent{};  // brain crops, x y z (voxels)
    std::array<double, 3> median_spacing{};                          // mm, x y z
    // Share of the labelled cases' brain-crop voxels per canonical class (0 background,
    // 1 necrotic core, 2 edema, 3 enhancing).
    std::array<double, data::kClassCount> class_fraction{};
    double median_tumour_fraction = 0;     // whole tumour / brain crop, median over labelled cases
    std::size_t cases_without_enhancing = 0;  // labelled cases with no enhancing voxel
    double median_enhancing_mm3 = 0, smallest_enhancing_mm3 = 0;  // over cases with some
};

namespace detail {
template <class T>
T median_of(std::vector<T> values) {
    if (values.empty()) return T{};
    const std::size_t middle = values.size() / 2;
    std::nth_element(values.begin(), values.begin() + std::ptrdiff_t(middle), values.end());
    return values[middle];  // the upper median for an even count: a crop that fits half the cases at least
}
}  // namespace detail

inline DatasetFingerprint fingerprint(const StoreSource& store) {
    DatasetFingerprint f;
    f.cases = store.size();
    std::array<std::vector<int>, 3> extents;
    std::array<std::vector<double>, 3> spacings;
    std::vector<double> tumour_fraction, enhancing_mm3;
    std::array<std::int64_t, data::kClassCount> class_voxels{};
    std::int64_t labelled_voxels = 0;
    for (std::size_t i = 0; i < store.size(); ++i) {
        const StoredCaseInfo& info = store.info(i);
        const int e[3] = {info.extent.x, info.extent.y, info.extent.z};
        for (int a = 0; a < 3; ++a) {
            extents[a].push_back(e[a]);
            spacings[a].push_back(double(info.geometry.spacing[a]));
        }
        if (!info.has_labels) continue;
        ++f.labelled;
        const std::int64_t voxels = std::int64_t(info.extent.voxels());
        labelled_voxels += voxels;
        for (int k = 0; k < data::kClassCount; ++k) class_voxels[k] += info.class_voxels[k];
        const std::int64_t tumour = info.class_voxels[1] + info.class_voxels[2] + info.class_voxels[3];
        tumour_fraction.push_back(voxels > 0 ? double(tumour) / double(voxels) : 0.0);
        if (info.class_voxels[3] == 0) ++f.cases_without_enhancing;
        else enhancing_mm3.push_back(double(info.class_voxels[3]) * info.geometry.voxel_mm3());
    }
    for (int a = 0; a < 3; ++a) {
        if (extents[a].empty()) break;
        f.median_extent[a] = detail::median_of(extents[a]);
        f.min_extent[a] = *std::min_element(extents[a].begin(), extents[a].end());
        f.max_extent[a] = *std::max_element(extents[a].begin(), extents[a].end());
        f.median_spacing[a] = detail::median_of(spacings[a]);
    }
    for (int k = 0; k < data::kClassCount; ++k)
        f.class_fraction[k] = labelled_voxels > 0 ? double(class_voxels[k]) / double(labelled_voxels) : 0.0;
    f.median_tumour_fraction = detail::median_of(tumour_fraction);
    f.median_enhancing_mm3 = detail::median_of(enhancing_mm3);
    f.smallest_enhancing_mm3 = enhancing_mm3.empty() ? 0.0 : *std::min_element(enhancing_mm3.begin(), enhancing_mm3.end());
    return f;
}

// Lines for a log or a file, "key: value".
inline std::string describe(const DatasetFingerprint& f) {
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "cases: %zu (%zu labelled)\n"
                  "brain crop x y z: median %d x %d x %d, smallest %d x %d x %d, largest %d x %d x %d voxels\n"
                  "spacing: median %.3g x %.3g x %.3g mm\n"
                  "classes (share of labelled brain-crop voxels): necrotic core %.3f %%, edema %.3f %%, enhancing %.3f %%\n"
                  "whole tumour: median %.2f %% of a brain crop\n"
                  "enhancing tumour: absent in %zu cases; median %.0f mm^3, smallest %.0f mm^3 where present\n",
                  f.cases, f.labelled, f.median_extent[0], f.median_extent[1], f.median_extent[2], f.min_extent[0],
                  f.min_extent[1], f.min_extent[2], f.max_extent[0], f.max_extent[1], f.max_extent[2], f.median_spacing[0],
                  f.median_spacing[1], f.median_spacing[2], 100 * f.class_fraction[1], 100 * f.class_fraction[2],
                  100 * f.class_fraction[3], 100 * f.median_tumour_fraction, f.cases_without_enhancing, f.median_enhancing_mm3,
                  f.smallest_enhancing_mm3);
    return buf;
}

}  // namespace lightunet::io

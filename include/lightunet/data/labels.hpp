#pragma once
// Label conventions: BraTS editions, the raw -> canonical LabelMap, tumour regions, and the one
// error type of the data layer.
//
// Canonical classes (case.hpp): 0 background, 1 NCR/NETC, 2 ED/SNFH, 3 ET.
//   BraTS 2017-2021 raw labels: 0, 1 (NCR/NET), 2 (ED), 4 (ET); 3 is unused.
//   BraTS 2023+     raw labels: 0, 1 (NETC), 2 (SNFH), 3 (ET); 2024 post-treatment data adds
//                   4 = resection cavity, which has no canonical class and is rejected unless
//                   the user maps it (e.g. to background) on purpose.
// Regions over canonical classes: WT = {1,2,3}, TC = {1,3}, ET = {3}.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "case.hpp"

namespace lightunet::data {

// Every reader, writer and converter of the data layer reports bad input with this type; the
// message names the file (or dataset) and what is wrong with it.
class DataError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class Edition {
    brats2017_2021,  // raw 0/1/2/4, files <case>_{t1,t1ce,t2,flair,seg}.nii[.gz]
    brats2023,       // raw 0/1/2/3, files <case>-{t1n,t1c,t2w,t2f,seg}.nii.gz (GLI, SSA, MEN, ...)
};

inline const char* edition_name(Edition edition) {
    return edition == Edition::brats2017_2021 ? "brats2017-2021" : "brats2023";
}

inline Edition edition_from_name(const std::string& name) {
    if (name == "brats2017-2021") return Edition::brats2017_2021;
    if (name == "brats2023") return Edition::brats2023;
    throw DataError("unknown BraTS edition name '" + name + "' (expected brats2017-2021 or brats2023)");
}

// Raw label value -> canonical class. Raw values are 0..255 (BraTS files store uint8 or int16
// labels in that range); any value not in the map, inside or outside that range, is an error
// when a volume is converted, never coerced.
class LabelMap {
public:
    static constexpr int kMaxRawValue = 255;

    LabelMap() { to_class_.fill(kUnmapped); }

    static LabelMap for_edition(Edition edition) {
        LabelMap map;
        map.set(0, 0).set(1, 1).set(2, 2);
        map.set(edition == Edition::brats2017_2021 ? 4 : 3, 3);
        return map;
    }

    // Maps `raw` to canonical class `canonical` (0..kClassCount-1); replaces an earlier entry.
    LabelMap& set(int raw, int canonical) {
        if (raw < 0 || raw > kMaxRawValue)
            throw std::invalid_argument("LabelMap: raw label " + std::to_string(raw) + " outside 0.." +
                                        std::to_string(kMaxRawValue));
        if (canonical < 0 || canonical >= kClassCount)
            throw std::invalid_argument("LabelMap: canonical class " + std::to_string(canonical) +
                                        " outside 0.." + std::to_string(kClassCount - 1));
        to_class_[std::size_t(raw)] = std::int16_t(canonical);
        return *this;
    }
    LabelMap& erase(int raw) {
        if (raw >= 0 && raw <= kMaxRawValue) to_class_[std::size_t(raw)] = kUnmapped;
        return *this;
    }

    std::optional<int> to_class(long long raw) const {
        if (raw < 0 || raw > kMaxRawValue || to_class_[std::size_t(raw)] == kUnmapped) return std::nullopt;
        return to_class_[std::size_t(raw)];
    }
    // The raw value a writer stores for `canonical`: the smallest raw value mapped to it.
    int raw_value(int canonical) const {
        for (int raw = 0; raw <= kMaxRawValue; ++raw)
            if (to_class_[std::size_t(raw)] == canonical) return raw;
        throw DataError("LabelMap " + describe() + " has no raw value for canonical class " +
                        std::to_string(canonical));
    }
    std::vector<int> raw_values() const {
        std::vector<int> values;
        for (int raw = 0; raw <= kMaxRawValue; ++raw)
            if (to_class_[std::size_t(raw)] != kUnmapped) values.push_back(raw);
        return values;
    }
    std::string describe() const {
        std::ostringstream text;
        text << '{';
        bool first = true;
        for (int raw : raw_values()) {
            text << (first ? "" : ", ") << raw << "->" << to_class_[std::size_t(raw)];
            first = false;
        }
        text << '}';
        return text.str();
    }

    // Converts raw label values (any arithmetic type) to canonical classes. Values that are not
    // integers or not in the map raise DataError naming `source` (a file), each offending value
    // and how many voxels carry it.
    template <class Raw>
    std::vector<std::uint8_t> apply(const Raw* raw, std::size_t count, const std::string& source) const {
        std::vector<std::uint8_t> classes(count);
        std::array<std::size_t, kMaxRawValue + 1> unknown_counts{};
        std::size_t non_integer = 0, out_of_range = 0;
        double first_bad = 0;
        for (std::size_t i = 0; i < count; ++i) {
            const double value = double(raw[i]);
            const long long integral = std::isfinite(value) ? (long long)std::llround(value) : -1;
            if (!std::isfinite(value) || double(integral) != value) {
                if (non_integer++ == 0) first_bad = value;
                continue;
            }
            if (integral < 0 || integral > kMaxRawValue) {
                if (out_of_range++ == 0 && non_integer == 0) first_bad = value;
                continue;
            }
            const std::int16_t mapped = to_class_[std::size_t(integral)];
            if (mapped == kUnmapped) {
                ++unknown_counts[std::size_t(integral)];
                continue;
            }
            classes[i] = std::uint8_t(mapped);
        }
        std::ostringstream problems;
        for (int raw_value = 0; raw_value <= kMaxRawValue; ++raw_value)
            if (unknown_counts[std::size_t(raw_value)] != 0)
                problems << " value " << raw_value << " (" << unknown_counts[std::size_t(raw_value)] << " voxels);";
        if (non_integer != 0) problems << ' ' << non_integer << " non-integer values (first " << first_bad << ");";
        if (out_of_range != 0) problems << ' ' << out_of_range << " values outside 0.." << kMaxRawValue << ';';
        if (!problems.str().empty())
            throw DataError(source + ": unexpected label" + problems.str() + " the label map is " + describe());
        return classes;
    }

private:
    static constexpr std::int16_t kUnmapped = -1;
    std::array<std::int16_t, kMaxRawValue + 1> to_class_{};
};

// Canonical classes back to an edition's (or a map's) raw values, for writing predictions.
inline std::vector<std::uint8_t> to_raw_labels(const std::vector<std::uint8_t>& classes, const LabelMap& map) {
    std::array<std::uint8_t, 256> raw_of{};
    for (int c = 0; c < kClassCount; ++c) raw_of[std::size_t(c)] = std::uint8_t(map.raw_value(c));
    std::vector<std::uint8_t> raw(classes.size());
    for (std::size_t i = 0; i < classes.size(); ++i) {
        if (classes[i] >= kClassCount)
            throw DataError("to_raw_labels: canonical class " + std::to_string(int(classes[i])) + " at voxel " +
                            std::to_string(i) + " is not a class 0.." + std::to_string(kClassCount - 1));
        raw[i] = raw_of[classes[i]];
    }
    return raw;
}

inline std::vector<std::uint8_t> to_raw_labels(const std::vector<std::uint8_t>& classes, Edition edition) {
    return to_raw_labels(classes, LabelMap::for_edition(edition));
}

// Which canonical classes each region holds, as a bit set over classes.
inline constexpr std::array<std::uint8_t, kRegionCount> kRegionClassBits{
    0b1110,  // WT: 1, 2, 3
    0b1010,  // TC: 1, 3
    0b1000,  // ET: 3
};

constexpr bool in_region(std::uint8_t canonical_class, Region region) {
    return canonical_class < 8 && ((kRegionClassBits[std::size_t(region)] >> canonical_class) & 1u) != 0;
}

// 0/1 mask of `region` over canonical labels.
inline std::vector<std::uint8_t> region_mask(const std::vector<std::uint8_t>& classes, Region region) {
    std::vector<std::uint8_t> mask(classes.size());
    for (std::size_t i = 0; i < classes.size(); ++i) mask[i] = in_region(classes[i], region) ? 1 : 0;
    return mask;
}

// The three region masks [WT, TC, ET][voxel], the usual BraTS training target.
inline std::vector<std::uint8_t> region_masks(const std::vector<std::uint8_t>& classes) {
    std::vector<std::uint8_t> masks(classes.size() * kRegionCount);
    for (int r = 0; r < kRegionCount; ++r)
        for (std::size_t i = 0; i < classes.size(); ++i)
            masks[std::size_t(r) * classes.size() + i] = in_region(classes[i], Region(r)) ? 1 : 0;
    return masks;
}

// Canonical classes back from region masks (ET wins over TC over WT, as BraTS nests them).
inline std::vector<std::uint8_t> classes_from_regions(const std::uint8_t* whole_tumour, const std::uint8_t* tumour_core,
                                                      const std::uint8_t* enhancing, std::size_t count) {
    std::vector<std::uint8_t> classes(count);
    for (std::size_t i = 0; i < count; ++i)
        classes[i] = enhancing[i] ? 3 : tumour_core[i] ? 1 : whole_tumour[i] ? 2 : 0;
    return classes;
}

}  // namespace lightunet::data

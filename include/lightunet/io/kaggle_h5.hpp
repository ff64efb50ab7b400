#pragma once
// The Kaggle "BraTS2020 training data" HDF5 slices: `volume_<v>_slice_<s>.h5`, each with
//   image (X, Y, 4) float64, channels [FLAIR, T1, T1ce, T2], each channel of each slice z-scored
//         over all X*Y pixels (background included, population std), chunks (60,60,1), gzip 9;
//   mask  (X, Y, 3) uint8 {0,1}, channels [NCR/NET (label 1), ED (label 2), ET (label 4)],
//         mutually exclusive, chunks (60,60,2), gzip 9;
// no attributes; image[i][j][c] = vol[x=i][y=j][z=s] of the NIfTI volume as stored, so readers
// transpose into lightunet's x-fastest order. Plus a metadata CSV:
//   slice_path,target,volume,slice,label0_pxl_cnt,label1_pxl_cnt,label2_pxl_cnt,background_ratio
// (target = 1 when the slice holds any tumour pixel; labelK_pxl_cnt = pixels of mask channel K;
// background_ratio = fraction of pixels in no mask channel — our reading of the set, whose
// documentation does not define it).
//
// Channel order: the order is declared (default the measured one above) and checked against
// the intensities, because many public notebooks declare it wrongly: T2 shows the most bright
// CSF, enhancing tumour stands out from edema most on T1ce, edema is brightest on FLAIR. A
// declared order the data contradicts raises; too few pixels of a kind means that check is
// not made (ChannelOrderCheck says which were).
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "../data/case.hpp"
#include "../data/labels.hpp"
#include "hdf5_support.hpp"

namespace lightunet::io {

namespace fs = std::filesystem;

struct KaggleChannels {
    // Which modality each stored image channel holds.
    std::array<data::Modality, data::kModalityCount> image{data::Modality::flair, data::Modality::t1,
                                                           data::Modality::t1ce, data::Modality::t2};
    // Which canonical class each stored mask channel marks (1 NCR, 2 ED, 3 ET).
    std::array<int, 3> mask_classes{1, 2, 3};
};

struct KaggleReadOptions {
    KaggleChannels channels;
    bool verify_channel_order = true;
};

// One slice in lightunet's order: images [kModalityCount][y][x] in canonical modality order
// (t1, t1ce, t2, flair), labels [y][x] canonical classes.
struct KaggleSlice {
    fs::path path;
    int width = 0, height = 0;  // x, y extents
    std::vector<float> images;
    std::vector<std::uint8_t> labels;
};

// One intensity test of a declared channel order: which stored channel shows the statistic
// most, against the one the declared order says.
struct ChannelOrderTest {
    const char* name = "";     // what the statistic is
    bool made = false;         // enough pixels of the kinds it compares
    bool agrees = true;        // (when made) the largest value is on the expected channel
    std::size_t observed = 0;  // stored channel with the largest value
    std::size_t expected = 0;  // stored channel the declared order expects
    std::array<double, 4> values{};  // per stored channel
};

// Which intensity checks the data allowed, and what they found.
struct ChannelOrderCheck {
    std::array<ChannelOrderTest, 3> tests{};  // T2 (CSF), T1ce (enhancing minus edema), FLAIR (edema)
    bool checked_t2() const { return tests[0].made; }
    bool checked_t1ce() const { return tests[1].made; }
    bool checked_flair() const { return tests[2].made; }
};

namespace detail {

inline std::string modality_label(data::Modality modality) {
    static const std::array<const char*, 4> names{"T1", "T1ce", "T2", "FLAIR"};
    return names[std::size_t(modality)];
}

inline std::string declared_order_text(const KaggleChannels& channels) {
    std::string text = "[";
    for (std::size_t c = 0; c < channels.image.size(); ++c) text += (c ? ", " : "") + modality_label(channels.image[c]);
    return text + "]";
}

// Pools intensity statistics of stored channels over slices (each z-scored on its own, as the
// Kaggle files are) and checks them against a declared order.
class ChannelOrderEvidence {
public:
    // `channels` [4][count] in stored channel order, `classes` [count] canonical (0..3).
    void add_slice(const float* channels, const std::uint8_t* classes, std::size_t count) {
        if (count == 0) return;
        std::array<double, 4> mean{}, stdev{};
        std::array<float, 4> minimum{};
        for (std::size_t c = 0; c < 4; ++c) {
            const float* v = channels + c * count;
            double sum = 0, squares = 0;
            float low = v[0];
            for (std::size_t i = 0; i < count; ++i) {
                sum += v[i];
                squares += double(v[i]) * v[i];
                low = std::min(low, v[i]);
            }
            mean[c] = sum / double(count);
            stdev[c] = std::sqrt(std::max(0.0, squares / double(count) - mean[c] * mean[c]));
            minimum[c] = low;
        }
        // Brain: a pixel where some channel is above its slice minimum (the background value).
        std::vector<std::uint8_t> brain(count, 0);
        std::size_t brain_count = 0;
        std::array<double, 4> brain_sum{}, brain_squares{};
        for (std::size_t i = 0; i < count; ++i) {
            for (std::size_t c = 0; c < 4; ++c)
                if (channels[c * count + i] > minimum[c]) brain[i] = 1;
            if (!brain[i] || classes[i] != 0) continue;
            ++brain_count;
            for (std::size_t c = 0; c < 4; ++c) {
                const double z = normalised(channels[c * count + i], mean[c], stdev[c]);
                brain_sum[c] += z;
                brain_squares[c] += z * z;
            }
        }
        if (brain_count >= 500) {
            for (std::size_t c = 0; c < 4; ++c) {
                const double brain_mean = brain_sum[c] / double(brain_count);
                const double brain_std = std::sqrt(std::max(0.0, brain_squares[c] / double(brain_count) - brain_mean * brain_mean));
                const double threshold = brain_mean + 2 * brain_std;
                for (std::size_t i = 0; i < count; ++i)
                    if (brain[i] && classes[i] == 0 && normalised(channels[c * count + i], mean[c], stdev[c]) > threshold)
                        ++bright_tail_[c];
            }
            healthy_brain_ += brain_count;
        }
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint8_t k = classes[i];
            if (k == 0 || k > 3) continue;
            ++class_count_[k];
            for (std::size_t c = 0; c < 4; ++c) class_sum_[k][c] += normalised(channels[c * count + i], mean[c], stdev[c]);
        }
    }

    // The tests the pooled pixels allow, judged against `channels`.
    ChannelOrderCheck judge(const KaggleChannels& channels) const {
        ChannelOrderCheck result;
        auto stored_channel_of = [&](data::Modality modality) {
            return std::size_t(std::find(channels.image.begin(), channels.image.end(), modality) - channels.image.begin());
        };
        for (std::size_t t = 0; t < result.tests.size(); ++t) result.tests[t].name = kTestNames[t];
        auto judged = [&](std::size_t index, data::Modality expected, const std::array<double, 4>& values) {
            ChannelOrderTest& test = result.tests[index];
            test.made = true;
            test.values = values;
            test.observed = std::size_t(std::max_element(values.begin(), values.end()) - values.begin());
            test.expected = stored_channel_of(expected);
            test.agrees = test.observed == test.expected;
        };
        // T2: CSF makes the largest share of very bright healthy-brain pixels.
        if (healthy_brain_ >= 2000) {
            std::array<double, 4> share{};
            for (std::size_t c = 0; c < 4; ++c) share[c] = double(bright_tail_[c]) / double(healthy_brain_);
            judged(0, data::Modality::t2, share);
        }
        const auto class_mean = [&](int k, std::size_t c) { return class_sum_[std::size_t(k)][c] / double(class_count_[std::size_t(k)]); };
        constexpr int ed = 2, et = 3;  // canonical classes: the slice labels are already mapped
        // T1ce: enhancing tumour minus edema.
        if (class_count_[std::size_t(et)] >= 20 && class_count_[std::size_t(ed)] >= 50) {
            std::array<double, 4> contrast{};
            for (std::size_t c = 0; c < 4; ++c) contrast[c] = class_mean(et, c) - class_mean(ed, c);
            judged(1, data::Modality::t1ce, contrast);
        }
        // FLAIR: edema is brightest on it.
        if (class_count_[std::size_t(ed)] >= 50) {
            std::array<double, 4> edema{};
            for (std::size_t c = 0; c < 4; ++c) edema[c] = class_mean(ed, c);
            judged(2, data::Modality::flair, edema);
        }
        return result;
    }

    // Raises DataError naming `source` when the data contradicts `channels` (one slice read on
    // its own; sets of volumes are judged by ChannelOrderTally).
    ChannelOrderCheck verify(const KaggleChannels& channels, const std::string& source) const {
        const ChannelOrderCheck result = judge(channels);
        for (const ChannelOrderTest& test : result.tests)
            if (test.made && !test.agrees)
                throw data::DataError(source + ": declared channel order " + declared_order_text(channels) +
                                      " contradicts the intensities: " + describe(test, channels));
        return result;
    }

    // "the mean intensity in edema is largest on stored channel 3 (declared T2), expected on
    // FLAIR (per channel: ...)"
    static std::string describe(const ChannelOrderTest& test, const KaggleChannels& channels) {
        std::ostringstream text;
        text << test.name << " is largest on stored channel " << test.observed << " (declared "
             << modality_label(channels.image[test.observed]) << "), expected on " << modality_label(channels.image[test.expected])
             << " (per channel:";
        for (double v : test.values) text << ' ' << v;
        text << ')';
        return text.str();
    }

    static constexpr std::array<const char*, 3> kTestNames{"the share of bright healthy-brain pixels (CSF)",
                                                          "enhancing tumour minus edema", "the mean intensity in edema"};

private:
    static double normalised(float v, double mean, double stdev) { return stdev > 0 ? (v - mean) / stdev : 0.0; }

    std::array<std::size_t, 4> bright_tail_{};
    std::size_t healthy_brain_ = 0;
    std::array<std::size_t, 4> class_count_{};
    std::array<std::array<double, 4>, 4> class_sum_{};
};

inline void validate_channels(const KaggleChannels& channels) {
    std::array<int, 4> seen{};
    for (data::Modality m : channels.image) ++seen[std::size_t(m)];
    if (std::any_of(seen.begin(), seen.end(), [](int n) { return n != 1; }))
        throw std::invalid_argument("KaggleChannels: image channels must name each modality once");
    std::array<int, 4> classes_seen{};
    for (int k : channels.mask_classes) {
        if (k < 1 || k > 3) throw std::invalid_argument("KaggleChannels: mask classes must be 1..3");
        ++classes_seen[std::size_t(k)];
    }
    if (classes_seen[1] != 1 || classes_seen[2] != 1 || classes_seen[3] != 1)
        throw std::invalid_argument("KaggleChannels: mask channels must name classes 1, 2, 3 once each");
}

// mask (X, Y, 3) {0,1} in the file's channel order -> canonical labels [y][x]; raises for values
// other than 0/1 and for pixels in more than one channel.
inline std::vector<std::uint8_t> decode_mask(const std::vector<std::uint8_t>& mask, int width, int height,
                                             const KaggleChannels& channels, const std::string& name) {
    std::vector<std::uint8_t> labels(std::size_t(width) * height, 0);
    std::size_t bad_mask = 0, overlapping = 0;
    for (int x = 0; x < width; ++x)
        for (int y = 0; y < height; ++y) {
            const std::size_t stored = std::size_t(x) * height + y;
            int set = 0;
            for (std::size_t k = 0; k < 3; ++k) {
                const std::uint8_t m = mask[stored * 3 + k];
                if (m > 1) ++bad_mask;
                if (m == 1) {
                    ++set;
                    labels[std::size_t(y) * width + x] = std::uint8_t(channels.mask_classes[k]);
                }
            }
            if (set > 1) ++overlapping;
        }
    if (bad_mask != 0) throw data::DataError(name + ": dataset 'mask' holds " + std::to_string(bad_mask) + " values other than 0/1");
    if (overlapping != 0)
        throw data::DataError(name + ": dataset 'mask' marks " + std::to_string(overlapping) +
                              " pixels in more than one channel (channels must be mutually exclusive)");
    return labels;
}

// Canonical labels [y][x] -> mask (X, Y, 3) in the file's channel order; counts the pixels of
// each mask channel. A label above 3 raises, naming `context`.
inline std::vector<std::uint8_t> encode_mask(const std::uint8_t* labels, int width, int height, const KaggleChannels& channels,
                                             std::array<long long, 3>& channel_pixels, const std::string& context) {
    std::array<int, 4> class_channel{-1, -1, -1, -1};
    for (std::size_t k = 0; k < 3; ++k) class_channel[std::size_t(channels.mask_classes[k])] = int(k);
    std::vector<std::uint8_t> mask(std::size_t(width) * height * 3, 0);
    channel_pixels = {};
    for (int x = 0; x < width; ++x)
        for (int y = 0; y < height; ++y) {
            const std::uint8_t k = labels[std::size_t(y) * width + x];
            if (k == 0) continue;
            if (k > 3) throw data::DataError(context + ": label " + std::to_string(k) + " at (" + std::to_string(x) + ", " +
                                             std::to_string(y) + "), canonical labels are 0..3");
            const int channel = class_channel[k];
            mask[(std::size_t(x) * height + y) * 3 + std::size_t(channel)] = 1;
            ++channel_pixels[std::size_t(channel)];
        }
    return mask;
}

// Opens and checks the 'mask' dataset: (X, Y, 3) integers, X and Y as `expected` when given.
inline H5Handle open_mask_dataset(hid_t file, const std::string& name, std::vector<hsize_t>& dims,
                                  const std::vector<hsize_t>* expected_xy = nullptr) {
    H5Handle mask_set = open_dataset(file, "mask", name);
    dims = dataset_dims(mask_set.get(), name + ": mask");
    const StoredType mask_type = dataset_type(mask_set.get(), name + ": mask");
    const bool shape_ok = expected_xy ? dims.size() == 3 && dims[0] == (*expected_xy)[0] && dims[1] == (*expected_xy)[1] && dims[2] == 3
                                      : dims.size() == 3 && dims[2] == 3 && dims[0] >= 1 && dims[1] >= 1 && dims[0] <= 4096 &&
                                            dims[1] <= 4096;
    if (!shape_ok)
        throw data::DataError(name + ": dataset 'mask' has shape " + dims_text(dims) + ", expected (" +
                              (expected_xy ? std::to_string((*expected_xy)[0]) + ", " + std::to_string((*expected_xy)[1]) : "X, Y") +
                              ", 3)");
    if (mask_type.type_class != H5T_INTEGER)
        throw data::DataError(name + ": dataset 'mask' is " + mask_type.describe() + ", expected uint8");
    return mask_set;
}

// Stored channels [4][y][x] (file channel order) and canonical labels of one slice file.
struct StoredSlice {
    int width = 0, height = 0;
    std::vector<float> channels;
    std::vector<std::uint8_t> classes;
};

inline StoredSlice read_stored_slice(const fs::path& path, const KaggleChannels& channels) {
    const std::string name = path.string();
    StoredSlice slice;
    std::vector<double> image;
    std::vector<std::uint8_t> mask;
    {
        H5Lock lock;
        H5Handle file = open_hdf5_read(path);
        H5Handle image_set = open_dataset(file.get(), "image", name);
        const std::vector<hsize_t> image_dims = dataset_dims(image_set.get(), name + ": image");
        const StoredType image_type = dataset_type(image_set.get(), name + ": image");
        if (image_dims.size() != 3 || image_dims[2] != 4 || image_dims[0] < 1 || image_dims[1] < 1 ||
            image_dims[0] > 4096 || image_dims[1] > 4096)
            throw data::DataError(name + ": dataset 'image' has shape " + dims_text(image_dims) + ", expected (X, Y, 4)");
        if (image_type.type_class != H5T_FLOAT)
            throw data::DataError(name + ": dataset 'image' is " + image_type.describe() + ", expected float64");
        std::vector<hsize_t> mask_dims;
        H5Handle mask_set = open_mask_dataset(file.get(), name, mask_dims, &image_dims);
        slice.width = int(image_dims[0]);
        slice.height = int(image_dims[1]);
        image.resize(std::size_t(slice.width) * slice.height * 4);
        mask.resize(std::size_t(slice.width) * slice.height * 3);
        read_whole(image_set.get(), image, name + ": image");
        read_whole(mask_set.get(), mask, name + ": mask");
    }
    const std::size_t pixels = std::size_t(slice.width) * slice.height;
    slice.channels.resize(pixels * 4);
    std::size_t nonfinite = 0;
    for (int x = 0; x < slice.width; ++x)
        for (int y = 0; y < slice.height; ++y) {
            const std::size_t stored = std::size_t(x) * slice.height + y;  // [i=x][j=y][c]
            const std::size_t ours = std::size_t(y) * slice.width + x;
            for (std::size_t c = 0; c < 4; ++c) {
                const double v = image[stored * 4 + c];
                if (!std::isfinite(v)) ++nonfinite;
                slice.channels[c * pixels + ours] = float(v);
            }
        }
    if (nonfinite != 0) throw data::DataError(name + ": dataset 'image' holds " + std::to_string(nonfinite) + " NaN/Inf values");
    slice.classes = decode_mask(mask, slice.width, slice.height, channels, name);
    return slice;
}

inline void to_canonical_channels(const std::vector<float>& stored, const KaggleChannels& channels, std::size_t pixels,
                                  float* canonical) {
    for (std::size_t c = 0; c < 4; ++c)
        std::copy(stored.begin() + std::ptrdiff_t(c * pixels), stored.begin() + std::ptrdiff_t((c + 1) * pixels),
                  canonical + std::size_t(channels.image[c]) * pixels);
}

}  // namespace detail

// Reads one slice file. Raises DataError naming the file for a missing dataset, wrong shape or
// type, NaN/Inf, mask values other than 0/1, overlapping mask channels, or (with
// verify_channel_order) a declared channel order the intensities contradict.
inline KaggleSlice read_kaggle_slice(const fs::path& path, const KaggleReadOptions& options = {}) {
    detail::validate_channels(options.channels);
    detail::StoredSlice stored = detail::read_stored_slice(path, options.channels);
    const std::size_t pixels = std::size_t(stored.width) * stored.height;
    if (options.verify_channel_order) {
        detail::ChannelOrderEvidence evidence;
        evidence.add_slice(stored.channels.data(), stored.classes.data(), pixels);
        evidence.verify(options.channels, path.string());
    }
    KaggleSlice slice;
    slice.path = path;
    slice.width = stored.width;
    slice.height = stored.height;
    slice.images.resize(pixels * 4);
    detail::to_canonical_channels(stored.channels, options.channels, pixels, slice.images.data());
    slice.labels = std::move(stored.classes);
    return slice;
}

// A segmentation of one slice: the 'mask' dataset of a Kaggle slice file, or of a prediction
// that write_kaggle_mask wrote (which has no 'image').
struct KaggleMask {
    fs::path path;
    int width = 0, height = 0;          // x, y extents
    std::vector<std::uint8_t> labels;   // [y][x] canonical classes
};

// Reads only the 'mask' dataset of `path`, with the checks read_kaggle_slice makes of it.
inline KaggleMask read_kaggle_mask(const fs::path& path, const KaggleChannels& channels = {}) {
    detail::validate_channels(channels);
    const std::string name = path.string();
    KaggleMask result;
    result.path = path;
    std::vector<std::uint8_t> mask;
    {
        detail::H5Lock lock;
        detail::H5Handle file = detail::open_hdf5_read(path);
        std::vector<hsize_t> dims;
        detail::H5Handle mask_set = detail::open_mask_dataset(file.get(), name, dims);
        result.width = int(dims[0]);
        result.height = int(dims[1]);
        mask.resize(std::size_t(result.width) * result.height * 3);
        detail::read_whole(mask_set.get(), mask, name + ": mask");
    }
    result.labels = detail::decode_mask(mask, result.width, result.height, channels, name);
    return result;
}

// ---------------------------------------------------------------------------------------------
// Metadata CSV

struct KaggleSliceRecord {
    std::string slice_path;
    int target = 0;
    int volume = 0;
    int slice = 0;
    std::array<long long, 3> label_pixel_counts{};
    double background_ratio = 1.0;
};

inline constexpr const char* kKaggleCsvHeader =
    "slice_path,target,volume,slice,label0_pxl_cnt,label1_pxl_cnt,label2_pxl_cnt,background_ratio";

inline std::vector<KaggleSliceRecord> read_kaggle_metadata(const fs::path& csv) {
    std::ifstream in(csv);
    if (!in) throw data::DataError(csv.string() + ": cannot open");
    std::string line;
    if (!std::getline(in, line)) throw data::DataError(csv.string() + ": empty file, expected the header " + kKaggleCsvHeader);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line != kKaggleCsvHeader) throw data::DataError(csv.string() + ":1: header '" + line + "', expected " + kKaggleCsvHeader);
    std::vector<KaggleSliceRecord> records;
    for (int number = 2; std::getline(in, line); ++number) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        std::vector<std::string> fields;
        std::stringstream stream(line);
        for (std::string field; std::getline(stream, field, ',');) fields.push_back(field);
        const std::string where = csv.string() + ":" + std::to_string(number);
        if (fields.size() != 8) throw data::DataError(where + ": " + std::to_string(fields.size()) + " fields, expected 8");
        auto integer = [&](std::size_t i) {
            long long value = 0;
            const std::string& f = fields[i];
            double as_double = 0;
            const auto [end, error] = std::from_chars(f.data(), f.data() + f.size(), value);
            if (error == std::errc() && end == f.data() + f.size()) return value;
            // Some exports write counts as floats ("12.0").
            const auto [end2, error2] = std::from_chars(f.data(), f.data() + f.size(), as_double);
            if (error2 == std::errc() && end2 == f.data() + f.size() && std::nearbyint(as_double) == as_double)
                return (long long)as_double;
            throw data::DataError(where + ": field " + std::to_string(i + 1) + " '" + f + "' is not an integer");
        };
        KaggleSliceRecord record;
        record.slice_path = fields[0];
        record.target = int(integer(1));
        record.volume = int(integer(2));
        record.slice = int(integer(3));
        for (std::size_t k = 0; k < 3; ++k) record.label_pixel_counts[k] = integer(4 + k);
        const std::string& ratio = fields[7];
        const auto [end, error] = std::from_chars(ratio.data(), ratio.data() + ratio.size(), record.background_ratio);
        if (error != std::errc() || end != ratio.data() + ratio.size() || !(record.background_ratio >= 0 && record.background_ratio <= 1))
            throw data::DataError(where + ": background_ratio '" + ratio + "' is not a number in [0, 1]");
        if (record.target != 0 && record.target != 1) throw data::DataError(where + ": target " + std::to_string(record.target) + " is not 0 or 1");
        records.push_back(std::move(record));
    }
    return records;
}

inline void write_kaggle_metadata(const fs::path& csv, const std::vector<KaggleSliceRecord>& records) {
    std::ofstream out(csv, std::ios::trunc);
    if (!out) throw data::DataError(csv.string() + ": cannot create");
    out << kKaggleCsvHeader << '\n';
    char ratio[32];
    for (const KaggleSliceRecord& r : records) {
        std::snprintf(ratio, sizeof(ratio), "%.17g", r.background_ratio);
        out << r.slice_path << ',' << r.target << ',' << r.volume << ',' << r.slice << ',' << r.label_pixel_counts[0] << ','
            << r.label_pixel_counts[1] << ',' << r.label_pixel_counts[2] << ',' << ratio << '\n';
    }
    if (!out.flush()) throw data::DataError(csv.string() + ": write failed");
}

// ---------------------------------------------------------------------------------------------
// Volumes

// `volume_<v>_slice_<s>.h5` files of a folder, by volume then slice. Other files are ignored.
inline std::map<int, std::map<int, fs::path>> group_kaggle_slices(const fs::path& folder) {
    std::error_code error;
    if (!fs::is_directory(folder, error)) throw data::DataError(folder.string() + ": not a folder");
    static const std::regex pattern(R"(volume_(\d+)_slice_(\d+)\.h5)");
    std::map<int, std::map<int, fs::path>> volumes;
    for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
        const std::string file_name = entry.path().filename().string();
        std::smatch match;
        if (!std::regex_match(file_name, match, pattern)) continue;
        volumes[std::stoi(match[1].str())][std::stoi(match[2].str())] = entry.path();
    }
    if (error) throw data::DataError(folder.string() + ": cannot list (" + error.message() + ")");
    if (volumes.empty()) throw data::DataError(folder.string() + ": no volume_<v>_slice_<s>.h5 files");
    return volumes;
}

enum class MissingSlices {
    raise,            // a volume must hold slices 0..depth-1 (default)
    fill_background,  // missing slices become zero images and background labels, and are listed
};

struct KaggleVolumeOptions {
    KaggleReadOptions read;
    int depth = 155;  // slices per volume in the Kaggle set
    MissingSlices missing = MissingSlices::raise;
};

struct KaggleVolume {
    data::Case case_data;             // id "volume_<v>", extent {X, Y, depth}, canonical channels;
                                      // present_slices set when some are missing
    std::vector<int> missing_slices;  // filled with background (only with fill_background)
    ChannelOrderCheck channel_check;  // the volume's own verdict (judged, never raised here)
};

// Reads every slice of volume `volume` in `folder` into one case. Slices outside 0..depth-1 and
// differing slice shapes raise; missing slices raise unless options.missing is fill_background
// (then they are listed in the result and the case's present_slices name the others). With
// verify_channel_order the declared order is judged on all the volume's slices pooled, and the
// verdict returned: one volume's intensities do not decide for a set (ChannelOrderTally does).
// `slices` is one volume's entry of group_kaggle_slices (slice -> file): callers that read many
// volumes list the folder once.
inline KaggleVolume read_kaggle_volume(const fs::path& folder, int volume, const std::map<int, fs::path>& slices,
                                       const KaggleVolumeOptions& options = {}) {
    detail::validate_channels(options.read.channels);
    const std::string context = (folder / ("volume_" + std::to_string(volume) + "_slice_*.h5")).string();
    if (slices.empty()) throw data::DataError(context + ": no slices of volume " + std::to_string(volume));
    if (slices.rbegin()->first >= options.depth)
        throw data::DataError(slices.rbegin()->second.string() + ": slice " + std::to_string(slices.rbegin()->first) +
                              " beyond the volume depth " + std::to_string(options.depth));
    KaggleVolume result;
    for (int s = 0; s < options.depth; ++s)
        if (!slices.count(s)) result.missing_slices.push_back(s);
    if (!result.missing_slices.empty() && options.missing == MissingSlices::raise) {
        std::string list;
        for (std::size_t i = 0; i < result.missing_slices.size() && i < 20; ++i) list += (i ? "," : "") + std::to_string(result.missing_slices[i]);
        if (result.missing_slices.size() > 20) list += ",...";
        throw data::DataError(context + ": " + std::to_string(result.missing_slices.size()) + " of " + std::to_string(options.depth) +
                              " slices missing (" + list + ")");
    }
    data::Case& c = result.case_data;
    c.id = "volume_" + std::to_string(volume);
    detail::ChannelOrderEvidence evidence;
    for (const auto& [s, path] : slices) {
        detail::StoredSlice stored = detail::read_stored_slice(path, options.read.channels);
        if (c.extent.voxels() == 0) {
            c.extent = {stored.width, stored.height, options.depth};
            c.images.assign(std::size_t(data::kModalityCount) * c.extent.voxels(), 0.0f);
            c.labels.assign(c.extent.voxels(), 0);
        } else if (stored.width != c.extent.x || stored.height != c.extent.y) {
            throw data::DataError(path.string() + ": slice is " + std::to_string(stored.width) + "x" + std::to_string(stored.height) +
                                  ", other slices of the volume are " + std::to_string(c.extent.x) + "x" + std::to_string(c.extent.y));
        }
        const std::size_t pixels = std::size_t(stored.width) * stored.height;
        if (options.read.verify_channel_order) evidence.add_slice(stored.channels.data(), stored.classes.data(), pixels);
        for (std::size_t channel = 0; channel < 4; ++channel)
            std::copy_n(stored.channels.begin() + std::ptrdiff_t(channel * pixels), pixels,
                        c.image(int(options.read.channels.image[channel])) + std::size_t(s) * pixels);
        std::copy(stored.classes.begin(), stored.classes.end(), c.labels.begin() + std::ptrdiff_t(std::size_t(s) * pixels));
    }
    if (options.read.verify_channel_order) result.channel_check = evidence.judge(options.read.channels);
    if (!result.missing_slices.empty()) {
        std::vector<int> present;
        for (const auto& entry : slices) present.push_back(entry.first);
        c.present_slices = data::slice_runs(present);
    }
    c.geometry.extent = c.extent;  // the slices carry no geometry: 1 mm, orientation unknown (codes 0)
    c.crop.begin = {0, 0, 0};
    c.crop.end = {c.extent.x, c.extent.y, c.extent.z};
    return result;
}

inline KaggleVolume read_kaggle_volume(const fs::path& folder, int volume, const KaggleVolumeOptions& options = {}) {
    const auto volumes = group_kaggle_slices(folder);
    const auto found = volumes.find(volume);
    return read_kaggle_volume(folder, volume, found == volumes.end() ? std::map<int, fs::path>{} : found->second, options);
}

// A set of volumes whose intensities contradict the declared channel order.
struct ChannelOrderError : data::DataError {
    using data::DataError::DataError;
};

// Judges a declared channel order over a set of volumes, a vote per volume and test, so that no
// single volume (a slice or two with unusual contrast) ends a run over a whole set: a volume
// whose intensities contradict the declared order is a warning with its evidence; the set
// contradicts it when some test, made on at least kMinVolumes volumes, went against it on more
// than two thirds of them, and then add() raises (a wrong declared order is contradicted by
// nearly every volume the test can judge).
class ChannelOrderTally {
public:
    static constexpr int kMinVolumes = 3;

    ChannelOrderTally(KaggleChannels declared, std::string set_name) : declared_(declared), set_name_(std::move(set_name)) {
        detail::validate_channels(declared_);
    }

    // Counts one volume's verdict. Returns a warning naming the volume and its evidence when the
    // volume contradicts the declared order (empty otherwise); raises ChannelOrderError naming the set,
    // the votes and the evidence once the set contradicts it.
    std::string add(const std::string& volume, const ChannelOrderCheck& check) {
        std::string warning;
        for (std::size_t t = 0; t < check.tests.size(); ++t) {
            const ChannelOrderTest& test = check.tests[t];
            if (!test.made) continue;
            ++made_[t];
            if (test.agrees) continue;
            ++against_[t];
            const std::string evidence = detail::ChannelOrderEvidence::describe(test, declared_);
            if (examples_[t].size() < 3) examples_[t].push_back(volume + ": " + evidence);
            warning += (warning.empty() ? "" : "; ") + evidence;
        }
        for (std::size_t t = 0; t < check.tests.size(); ++t)
            if (made_[t] >= kMinVolumes && 3 * against_[t] > 2 * made_[t]) {
                std::string text = set_name_ + ": declared channel order " + detail::declared_order_text(declared_) +
                                   " contradicts the intensities of " + std::to_string(against_[t]) + " of " +
                                   std::to_string(made_[t]) + " volumes judged by " + check.tests[t].name + " (";
                for (std::size_t e = 0; e < examples_[t].size(); ++e) text += (e ? "; " : "") + examples_[t][e];
                throw ChannelOrderError(text + "): the files store the modalities in another order");
            }
        if (warning.empty()) return {};
        ++doubtful_;
        return volume + ": the intensities of this volume contradict the declared channel order " +
               detail::declared_order_text(declared_) + ": " + warning + "; the set as a whole does not (" + votes() + ")";
    }

    // "CSF test: 22 of 22 volumes agree, ..." for the end of a run.
    std::string votes() const {
        static constexpr std::array<const char*, 3> short_names{"T2/CSF", "T1ce/enhancing", "FLAIR/edema"};
        std::string text;
        for (std::size_t t = 0; t < made_.size(); ++t)
            text += (t ? ", " : "") + std::string(short_names[t]) + " test " + std::to_string(made_[t] - against_[t]) + " of " +
                    std::to_string(made_[t]) + " volumes agree";
        return text;
    }
    // Volumes whose own intensities contradicted the declared order (each was a warning).
    int doubtful_volumes() const { return doubtful_; }

private:
    KaggleChannels declared_;
    std::string set_name_;
    std::array<int, 3> made_{}, against_{};
    int doubtful_ = 0;
    std::array<std::vector<std::string>, 3> examples_;
};

// ---------------------------------------------------------------------------------------------
// Writer

namespace detail {

// z-score of one channel of one slice over all its pixels, population std; a constant channel
// (std 0, e.g. an all-background slice) is only centred.
inline void zscore_slice(const float* in, std::size_t count, double* out, std::size_t stride) {
    double sum = 0, squares = 0;
    for (std::size_t i = 0; i < count; ++i) sum += in[i];
    const double mean = sum / double(count);
    for (std::size_t i = 0; i < count; ++i) squares += (in[i] - mean) * (in[i] - mean);
    const double stdev = std::sqrt(squares / double(count));
    for (std::size_t i = 0; i < count; ++i) out[i * stride] = stdev > 0 ? (in[i] - mean) / stdev : in[i] - mean;
}

}  // namespace detail

struct KaggleWriteOptions {
    KaggleChannels channels;          // stored order, default the Kaggle set's
    std::string slice_path_prefix;    // CSV slice_path = prefix + file name (empty: the full path)
};

namespace detail {

inline void write_mask_dataset(hid_t file, const std::vector<std::uint8_t>& mask, int width, int height, const std::string& name) {
    const hsize_t cx = hsize_t(std::min(width, 60)), cy = hsize_t(std::min(height, 60));
    write_dataset(file, "mask", {hsize_t(width), hsize_t(height), 3}, {cx, cy, 2}, H5T_STD_U8LE, mask.data(), false, 9, name);
}

inline KaggleSliceRecord slice_record(const fs::path& file, const KaggleWriteOptions& options, int volume, int slice,
                                      const std::array<long long, 3>& channel_pixels, std::size_t pixels) {
    KaggleSliceRecord record;
    const long long labelled = channel_pixels[0] + channel_pixels[1] + channel_pixels[2];
    record.slice_path = options.slice_path_prefix.empty() ? file.string() : options.slice_path_prefix + file.filename().string();
    record.target = labelled > 0 ? 1 : 0;
    record.volume = volume;
    record.slice = slice;
    record.label_pixel_counts = channel_pixels;
    record.background_ratio = double(pixels - std::size_t(labelled)) / double(pixels);
    return record;
}

inline fs::path kaggle_slice_file(const fs::path& folder, int volume, int slice) {
    return folder / ("volume_" + std::to_string(volume) + "_slice_" + std::to_string(slice) + ".h5");
}

inline void create_folder(const fs::path& folder) {
    std::error_code error;
    fs::create_directories(folder, error);
    if (error) throw data::DataError(folder.string() + ": cannot create folder (" + error.message() + ")");
}

}  // namespace detail

// Writes `source` (canonical channels, canonical labels; an unlabelled case gets empty masks)
// as `volume_<volume>_slice_<z>.h5` for every z, in the Kaggle layout exactly: dataset shapes,
// float64/uint8, chunks (60,60,1)/(60,60,2) (smaller when the slice is), gzip 9, no attributes,
// per-slice per-channel z-score over all pixels. Returns the CSV records in slice order.
inline std::vector<KaggleSliceRecord> write_kaggle_volume(const fs::path& folder, const data::Case& source, int volume,
                                                          const KaggleWriteOptions& options = {}) {
    detail::validate_channels(options.channels);
    const data::VolumeExtent e = source.extent;
    if (source.images.size() != std::size_t(data::kModalityCount) * e.voxels() || e.voxels() == 0)
        throw data::DataError(folder.string() + ": case " + source.id + " has no images of its extent");
    detail::create_folder(folder);
    const std::size_t pixels = std::size_t(e.x) * e.y;
    std::vector<KaggleSliceRecord> records;
    std::vector<double> image(pixels * 4);
    std::vector<float> plane(pixels);
    const std::vector<std::uint8_t> no_labels(source.has_labels() ? 0 : pixels, 0);
    for (int z = 0; z < e.z; ++z) {
        // [i=x][j=y][c]: the transpose of our x-fastest planes.
        for (std::size_t c = 0; c < 4; ++c) {
            const float* channel = source.image(int(options.channels.image[c])) + std::size_t(z) * pixels;
            for (int x = 0; x < e.x; ++x)
                for (int y = 0; y < e.y; ++y) plane[std::size_t(x) * e.y + y] = channel[std::size_t(y) * e.x + x];
            detail::zscore_slice(plane.data(), pixels, image.data() + c, 4);
        }
        const fs::path file = detail::kaggle_slice_file(folder, volume, z);
        const std::string name = file.string();
        std::array<long long, 3> channel_pixels{};
        const std::uint8_t* labels = source.has_labels() ? source.labels.data() + std::size_t(z) * pixels : no_labels.data();
        const std::vector<std::uint8_t> mask = detail::encode_mask(labels, e.x, e.y, options.channels, channel_pixels,
                                                                   folder.string() + ": case " + source.id + " slice " + std::to_string(z));
        {
            detail::H5Lock lock;
            detail::H5Handle h5 = detail::create_hdf5(file);
            const hsize_t cx = hsize_t(std::min(e.x, 60)), cy = hsize_t(std::min(e.y, 60));
            detail::write_dataset(h5.get(), "image", {hsize_t(e.x), hsize_t(e.y), 4}, {cx, cy, 1}, H5T_IEEE_F64LE, image.data(),
                                  false, 9, name);
            detail::write_mask_dataset(h5.get(), mask, e.x, e.y, name);
            detail::check_hdf5(H5Fflush(h5.get(), H5F_SCOPE_LOCAL), name + ": flush");
        }
        records.push_back(detail::slice_record(file, options, volume, z, channel_pixels, pixels));
    }
    return records;
}

// Writes one slice's segmentation (canonical labels [y][x]) as `volume_<volume>_slice_<slice>.h5`
// in `folder` with the single dataset 'mask' exactly as the Kaggle set stores it: (X, Y, 3)
// uint8 {0,1} in options.channels' order, chunks (60,60,2), gzip 9. Code that reads the set's
// masks reads these predictions unchanged; read_kaggle_mask reads them back. Returns the CSV
// record (write_kaggle_metadata writes a metadata CSV of the predictions).
inline KaggleSliceRecord write_kaggle_mask(const fs::path& folder, int volume, int slice, const std::uint8_t* labels, int width,
                                           int height, const KaggleWriteOptions& options = {}) {
    detail::validate_channels(options.channels);
    if (width < 1 || height < 1)
        throw data::DataError(folder.string() + ": volume " + std::to_string(volume) + " slice " + std::to_string(slice) +
                              " has an empty extent " + std::to_string(width) + "x" + std::to_string(height));
    detail::create_folder(folder);
    const fs::path file = detail::kaggle_slice_file(folder, volume, slice);
    const std::string name = file.string();
    std::array<long long, 3> channel_pixels{};
    const std::vector<std::uint8_t> mask = detail::encode_mask(labels, width, height, options.channels, channel_pixels, name);
    {
        detail::H5Lock lock;
        detail::H5Handle h5 = detail::create_hdf5(file);
        detail::write_mask_dataset(h5.get(), mask, width, height, name);
        detail::check_hdf5(H5Fflush(h5.get(), H5F_SCOPE_LOCAL), name + ": flush");
    }
    return detail::slice_record(file, options, volume, slice, channel_pixels, std::size_t(width) * height);
}

}  // namespace lightunet::io

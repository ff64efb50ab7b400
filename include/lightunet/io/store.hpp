#pragma once
// lightunet's preprocessed store: one HDF5 file holding many cases, each z-scored inside the
// brain, cropped to the brain's bounding box and chunked so that a patch reads only the chunks
// it touches. Schema: docs/store.md (readable with h5py).
//
//   convert_to_store(folder, file)   NIfTI case folders (either naming) or Kaggle slice folders
//   StoreWriter                      add data::Case objects yourself (synthetic data, tests)
//   StoreSource : data::CaseSource   random access by region, thread-safe
//   prepare_for_prediction           the same preprocessing for a case to segment (crop to the
//                                    brain, z-score), uncrop_labels to put its labels back
//
// The file is written under `<file>.partial` and renamed when complete, so a crash never
// leaves a store that looks finished.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../data/case.hpp"
#include "../data/labels.hpp"
#include "../data/source.hpp"
#include "hdf5_support.hpp"
#include "kaggle_h5.hpp"
#include "nifti.hpp"
#include "source_manifest.hpp"

namespace lightunet::io {

namespace fs = std::filesystem;

inline constexpr const char* kStoreFormat = "lightunet-store";
inline constexpr int kStoreVersion = 1;

struct StoreOptions {
    std::array<int, 3> chunk{32, 32, 8};  // x, y, z voxels per chunk (clipped to the case)
    int gzip_level = 4;
    bool shuffle = true;                  // byte shuffle before gzip: float32 compresses ~2x better
    int margin = 0;                       // voxels kept around the brain's bounding box
    std::size_t max_foreground_per_class = 20000;  // larger lists are subsampled evenly
};

// What the store keeps per case besides the arrays.
struct StoredCaseInfo {
    std::string id;
    data::VolumeExtent extent;  // stored (cropped)
    data::Geometry geometry;    // original
    data::CropBox crop;
    data::Edition edition = data::Edition::brats2017_2021;
    std::vector<std::string> source_files;
    std::array<float, data::kModalityCount> brain_mean{}, brain_std{};  // of the source intensities
    std::array<std::int64_t, data::kClassCount> class_voxels{};
    bool has_labels = false;
    // Runs of stored slices that hold data, when the source volume had only some (Kaggle
    // slice folders), even if one run spans the crop; empty: a whole volume. Stored as the
    // attribute `present_slices`.
    std::vector<data::SliceRange> present_slices;
};

namespace detail {

// Brain: voxels where some modality differs from its background value (0 in NIfTI; for the
// Kaggle slices, whose background is a per-slice constant, `background` gives one per slice and
// modality: [modality][z]).
inline std::vector<std::uint8_t> brain_mask(const data::Case& c, const std::vector<float>* slice_background) {
    const data::VolumeExtent e = c.extent;
    const std::size_t plane = std::size_t(e.x) * e.y;
    std::vector<std::uint8_t> mask(e.voxels(), 0);
    for (int m = 0; m < data::kModalityCount; ++m) {
        const float* v = c.image(m);
        for (int z = 0; z < e.z; ++z) {
            const float background = slice_background ? (*slice_background)[std::size_t(m) * e.z + z] : 0.0f;
            for (std::size_t i = std::size_t(z) * plane; i < std::size_t(z + 1) * plane; ++i)
                if (v[i] != background) mask[i] = 1;
        }
    }
    return mask;
}

}  // namespace detail

// The background of a volume of Kaggle slices, per modality and slice ([modality][z]): each
// slice was z-scored over all its pixels, so its background is a per-slice constant, the
// slice's minimum. The brain is what differs from it (preprocess_case's `slice_background`).
inline std::vector<float> kaggle_slice_background(const data::Case& c) {
    std::vector<float> background(std::size_t(data::kModalityCount) * c.extent.z);
    const std::size_t plane = std::size_t(c.extent.x) * c.extent.y;
    for (int m = 0; m < data::kModalityCount; ++m)
        for (int z = 0; z < c.extent.z; ++z) {
            const float* s = c.image(m) + std::size_t(z) * plane;
            background[std::size_t(m) * c.extent.z + z] = *std::min_element(s, s + plane);
        }
    return background;
}

// Crops `c` to the bounding box of its brain and its labelled voxels (labels may lie outside
// the brain mask in real data: they are kept) plus `margin`, z-scores each modality over the
// brain voxels (population std; a constant modality is only centred) and zeroes the rest.
// Returns the case in stored form and fills `info` (crop, statistics, class counts).
inline data::Case preprocess_case(const data::Case& c, int margin, StoredCaseInfo& info,
                                  const std::vector<float>* slice_background = nullptr) {
    const data::VolumeExtent e = c.extent;
    const std::vector<std::uint8_t> brain = detail::brain_mask(c, slice_background);
    std::array<int, 3> low{e.x, e.y, e.z}, high{-1, -1, -1};
    std::size_t brain_voxels = 0;
    for (int z = 0; z < e.z; ++z)
        for (int y = 0; y < e.y; ++y)
            for (int x = 0; x < e.x; ++x) {
                const std::size_t i = (std::size_t(z) * e.y + y) * e.x + x;
                const bool inside = brain[i] || (c.has_labels() && c.labels[i] != 0);
                brain_voxels += brain[i];
                if (!inside) continue;
                low = {std::min(low[0], x), std::min(low[1], y), std::min(low[2], z)};
                high = {std::max(high[0], x), std::max(high[1], y), std::max(high[2], z)};
            }
    if (brain_voxels == 0) throw data::DataError(c.id + ": no brain voxels (every modality is background everywhere)");
    const std::array<int, 3> limits{e.x, e.y, e.z};
    data::CropBox local;
    for (std::size_t d = 0; d < 3; ++d) {
        local.begin[d] = std::max(0, low[d] - margin);
        local.end[d] = std::min(limits[d], high[d] + 1 + margin);
    }
    data::Case out;
    out.id = c.id;
    out.geometry = c.geometry;
    if (out.geometry.extent.voxels() == 0) out.geometry.extent = e;
    // The crop is relative to the original extent: compose with the input's own crop.
    const data::CropBox& input_crop = c.crop.extent().voxels() == 0 ? data::CropBox{{0, 0, 0}, {e.x, e.y, e.z}} : c.crop;
    for (std::size_t d = 0; d < 3; ++d) {
        out.crop.begin[d] = input_crop.begin[d] + local.begin[d];
        out.crop.end[d] = input_crop.begin[d] + local.end[d];
    }
    out.extent = local.extent();
    if (!c.present_slices.empty()) {
        if (const std::string problem = data::slice_runs_problem(c.present_slices, e.z); !problem.empty())
            throw data::DataError(c.id + ": present slices: " + problem);
        // Kept even when one run spans the crop: beyond it the volume is unknown, not background.
        out.present_slices = data::crop_slice_runs(c.present_slices, local.begin[2], local.end[2]);
    }
    out.images.assign(std::size_t(data::kModalityCount) * out.extent.voxels(), 0.0f);
    if (c.has_labels()) out.labels.assign(out.extent.voxels(), 0);
    for (int m = 0; m < data::kModalityCount; ++m) {
        const float* v = c.image(m);
        double sum = 0;
        for (std::size_t i = 0; i < e.voxels(); ++i)
            if (brain[i]) sum += v[i];
        const double mean = sum / double(brain_voxels);
        double squares = 0;
        for (std::size_t i = 0; i < e.voxels(); ++i)
            if (brain[i]) squares += (v[i] - mean) * (v[i] - mean);
        const double stdev = std::sqrt(squares / double(brain_voxels));
        info.brain_mean[std::size_t(m)] = float(mean);
        info.brain_std[std::size_t(m)] = float(stdev);
        float* target = out.image(m);
        for (int z = 0; z < out.extent.z; ++z)
            for (int y = 0; y < out.extent.y; ++y)
                for (int x = 0; x < out.extent.x; ++x) {
                    const std::size_t i = (std::size_t(z + local.begin[2]) * e.y + (y + local.begin[1])) * e.x + (x + local.begin[0]);
                    const std::size_t o = (std::size_t(z) * out.extent.y + y) * out.extent.x + x;
                    target[o] = brain[i] ? float(stdev > 0 ? (v[i] - mean) / stdev : v[i] - mean) : 0.0f;
                    if (m == 0 && c.has_labels()) out.labels[o] = c.labels[i];
                }
    }
    info.id = out.id;
    info.extent = out.extent;
    info.geometry = out.geometry;
    info.crop = out.crop;
    info.has_labels = out.has_labels();
    info.present_slices = out.present_slices;
    info.class_voxels = {};
    for (std::uint8_t k : out.labels) {
        if (k >= data::kClassCount) throw data::DataError(c.id + ": label " + std::to_string(int(k)) + " is not a canonical class");
        ++info.class_voxels[k];
    }
    return out;
}

// The store's preprocessing for a case to predict: crop to the bounding box of the brain and
// z-score each modality inside it, so the network sees what it was trained on and no window is
// spent on empty background. Unlike the store, the labels (kept for the pictures, cropped
// alike) do not widen the crop: they are not known at prediction time.
inline data::Case prepare_for_prediction(data::Case c, const std::vector<float>* slice_background = nullptr) {
    std::vector<std::uint8_t> truth = std::move(c.labels);
    c.labels.clear();
    StoredCaseInfo info;
    data::Case prepared = preprocess_case(c, 0, info, slice_background);
    if (!truth.empty()) {
        const data::VolumeExtent full = c.extent, crop = prepared.extent;
        const std::array<int, 3> input_begin = c.crop.extent().voxels() == 0 ? std::array<int, 3>{0, 0, 0} : c.crop.begin;
        prepared.labels.resize(crop.voxels());
        for (int z = 0; z < crop.z; ++z)
            for (int y = 0; y < crop.y; ++y) {
                const std::size_t from = (std::size_t(prepared.crop.begin[2] - input_begin[2] + z) * full.y +
                                          std::size_t(prepared.crop.begin[1] - input_begin[1] + y)) * full.x +
                                         std::size_t(prepared.crop.begin[0] - input_begin[0]);
                std::copy_n(truth.begin() + std::ptrdiff_t(from), crop.x,
                            prepared.labels.begin() + std::ptrdiff_t((std::size_t(z) * crop.y + y) * crop.x));
            }
    }
    return prepared;
}

// Labels of a prepared (cropped) case placed back into the extent `full` of the uncropped case
// it was prepared from (background outside the crop). NIfTI output needs none of this:
// write_prediction places a cropped case into its geometry itself.
inline std::vector<std::uint8_t> uncrop_labels(const data::Case& prepared, const std::vector<std::uint8_t>& labels,
                                               data::VolumeExtent full) {
    const data::VolumeExtent crop = prepared.extent;
    if (labels.size() != crop.voxels())
        throw std::invalid_argument("uncrop_labels: case " + prepared.id + " has " + std::to_string(crop.voxels()) +
                                    " voxels, the labels " + std::to_string(labels.size()));
    if (prepared.crop.extent() != crop)
        throw std::invalid_argument("uncrop_labels: case " + prepared.id + "'s crop box does not match its extent");
    const std::array<int, 3> limits{full.x, full.y, full.z};
    for (std::size_t d = 0; d < 3; ++d)
        if (prepared.crop.begin[d] < 0 || prepared.crop.end[d] > limits[d])
            throw std::invalid_argument("uncrop_labels: case " + prepared.id + "'s crop does not lie in the extent " +
                                        std::to_string(full.x) + "x" + std::to_string(full.y) + "x" + std::to_string(full.z));
    std::vector<std::uint8_t> out(full.voxels(), 0);
    for (int z = 0; z < crop.z; ++z)
        for (int y = 0; y < crop.y; ++y)
            std::copy_n(labels.begin() + std::ptrdiff_t((std::size_t(z) * crop.y + y) * crop.x), crop.x,
                        out.begin() + std::ptrdiff_t((std::size_t(prepared.crop.begin[2] + z) * full.y +
                                                      std::size_t(prepared.crop.begin[1] + y)) * full.x +
                                                     std::size_t(prepared.crop.begin[0])));
    return out;
}

// Writes cases into a new store file. Not thread-safe (one writer).
class StoreWriter {
public:
    StoreWriter(fs::path file, StoreOptions options = {})
        : file_(std::move(file)), partial_(file_.string() + ".partial"), options_(options) {
        for (int d = 0; d < 3; ++d)
            if (options_.chunk[std::size_t(d)] < 1) throw std::invalid_argument("StoreOptions: chunk sizes must be positive");
        H5Lock lock;
        std::error_code ignored;
        fs::remove(partial_, ignored);
        h5_ = create_hdf5_checked();
        cases_ = H5Handle(H5Gcreate2(h5_.get(), "cases", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
                          partial_.string() + ": cannot create group 'cases'");
    }
    StoreWriter(const StoreWriter&) = delete;
    StoreWriter& operator=(const StoreWriter&) = delete;
    ~StoreWriter() {
        if (!finished_) {
            std::error_code ignored;
            // Truncated first: after a failed write (a full disk), closing must flush libhdf5's
            // metadata somewhere, or libhdf5 1.10 keeps the half-closed file and crashes in its
            // exit handler (H5F__close_cb). The partial store is discarded anyway.
            fs::resize_file(partial_, 0, ignored);
            {
                H5Lock lock;
                cases_.reset();
                h5_.reset();
            }
            fs::remove(partial_, ignored);
        }
    }

    // Adds a case as it is in memory (uncropped or cropped; crop/geometry say where it lies).
    // `slice_background` ([modality][z]) only for inputs whose background is not 0.
    void add(const data::Case& c, data::Edition edition, const std::vector<std::string>& source_files,
             const std::vector<float>* slice_background = nullptr) {
        if (c.id.empty() || c.id.find('/') != std::string::npos || c.id == "." || c.id == "..")
            throw data::DataError(partial_.string() + ": case id '" + c.id + "' cannot name an HDF5 group");
        if (c.images.size() != std::size_t(data::kModalityCount) * c.extent.voxels() || c.extent.voxels() == 0)
            throw data::DataError(c.id + ": images do not match the extent");
        if (c.has_labels() && c.labels.size() != c.extent.voxels()) throw data::DataError(c.id + ": labels do not match the extent");
        StoredCaseInfo info;
        const data::Case stored = preprocess_case(c, options_.margin, info, slice_background);
        info.edition = edition;
        info.source_files = source_files;
        write_case(stored, info);
    }

    // Keeps the manifest of the folder the cases came from (source_manifest.hpp), so a later run
    // can tell whether the store still matches the folder.
    void record_source_manifest(const std::string& manifest) {
        detail::H5Lock lock;
        detail::write_dataset(h5_.get(), "source_manifest", {hsize_t(manifest.size())}, {}, H5T_STD_U8LE,
                              reinterpret_cast<const std::uint8_t*>(manifest.data()), false, 0, partial_.string());
    }

    // Records the cases left out (id or path, and why) and makes the file final.
    void finish(const std::vector<std::string>& skipped = {}) {
        using namespace detail;
        const std::string context = partial_.string();
        {
            H5Lock lock;
            write_string_attribute(h5_.get(), "format", {kStoreFormat}, context, true);
            write_attribute<std::int32_t>(h5_.get(), "version", {kStoreVersion}, context);
            write_attribute<std::int32_t>(h5_.get(), "case_count", {std::int32_t(case_count_)}, context);
            write_attribute<std::int32_t>(h5_.get(), "chunk_xyz", {options_.chunk[0], options_.chunk[1], options_.chunk[2]}, context);
            write_string_attribute(h5_.get(), "skipped_cases", skipped, context);
            check_hdf5(H5Fflush(h5_.get(), H5F_SCOPE_GLOBAL), context + ": flush");
            cases_.reset();
            h5_.reset();
        }
        std::error_code error;
        fs::rename(partial_, file_, error);
        if (error) throw data::DataError(file_.string() + ": cannot move the finished store into place (" + error.message() + ")");
        finished_ = true;
    }

    std::size_t size() const { return case_count_; }

private:
    using H5Handle = detail::H5Handle;
    using H5Lock = detail::H5Lock;

    H5Handle create_hdf5_checked() { return detail::create_hdf5(partial_); }

    std::vector<hsize_t> chunk_for(const data::VolumeExtent& e) const {
        return {hsize_t(std::min(options_.chunk[2], e.z)), hsize_t(std::min(options_.chunk[1], e.y)),
                hsize_t(std::min(options_.chunk[0], e.x))};
    }

    void write_case(const data::Case& c, const StoredCaseInfo& info) {
        using namespace detail;
        const std::string context = partial_.string() + ": /cases/" + c.id;
        // Foreground lists per class, evenly subsampled: the loader's oversampling needs spread,
        // not every voxel.
        std::array<std::vector<std::int32_t>, data::kClassCount> foreground;
        for (int k = 1; k < data::kClassCount; ++k) {
            const std::size_t count = std::size_t(info.class_voxels[std::size_t(k)]);
            const std::size_t stride = std::max<std::size_t>(1, (count + options_.max_foreground_per_class - 1) /
                                                                    std::max<std::size_t>(1, options_.max_foreground_per_class));
            std::size_t seen = 0;
            for (std::size_t i = 0; i < c.labels.size(); ++i) {
                if (c.labels[i] != k) continue;
                if (seen++ % stride != 0) continue;
                const std::size_t x = i % std::size_t(c.extent.x), y = (i / std::size_t(c.extent.x)) % std::size_t(c.extent.y),
                                  z = i / (std::size_t(c.extent.x) * std::size_t(c.extent.y));
                foreground[std::size_t(k)].insert(foreground[std::size_t(k)].end(), {std::int32_t(x), std::int32_t(y), std::int32_t(z)});
            }
        }
        H5Lock lock;
        if (H5Lexists(cases_.get(), c.id.c_str(), H5P_DEFAULT) > 0)
            throw data::DataError(context + ": a case with this id is already in the store");
        H5Eclear2(H5E_DEFAULT);
        H5Handle group(H5Gcreate2(cases_.get(), c.id.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
                       context + ": cannot create group");
        const data::VolumeExtent e = c.extent;
        std::vector<hsize_t> chunk = chunk_for(e);
        write_dataset(group.get(), "images", {hsize_t(data::kModalityCount), hsize_t(e.z), hsize_t(e.y), hsize_t(e.x)},
                      {1, chunk[0], chunk[1], chunk[2]}, H5T_IEEE_F32LE, c.images.data(), options_.shuffle,
                      options_.gzip_level, context);
        if (c.has_labels()) {
            write_dataset(group.get(), "labels", {hsize_t(e.z), hsize_t(e.y), hsize_t(e.x)}, chunk, H5T_STD_U8LE, c.labels.data(),
                          options_.shuffle, options_.gzip_level, context);
            for (int k = 1; k < data::kClassCount; ++k) {
                const std::vector<std::int32_t>& list = foreground[std::size_t(k)];
                write_dataset(group.get(), "foreground_" + std::to_string(k), {hsize_t(list.size() / 3), 3}, {}, H5T_STD_I32LE,
                              list.data(), false, 0, context);
            }
        }
        const data::Geometry& g = info.geometry;
        write_string_attribute(group.get(), "id", {c.id}, context, true);
        write_string_attribute(group.get(), "edition", {data::edition_name(info.edition)}, context, true);
        write_string_attribute(group.get(), "source_files", info.source_files, context);
        write_attribute<float>(group.get(), "spacing", {g.spacing[0], g.spacing[1], g.spacing[2]}, context);
        write_attribute<std::int32_t>(group.get(), "original_extent", {g.extent.x, g.extent.y, g.extent.z}, context);
        write_attribute<std::int32_t>(group.get(), "crop_begin", {info.crop.begin[0], info.crop.begin[1], info.crop.begin[2]}, context);
        write_attribute<std::int32_t>(group.get(), "crop_end", {info.crop.end[0], info.crop.end[1], info.crop.end[2]}, context);
        write_attribute<std::int32_t>(group.get(), "qform_code", {g.qform_code}, context);
        write_attribute<std::int32_t>(group.get(), "sform_code", {g.sform_code}, context);
        std::vector<double> sform;
        for (const auto& row : g.sform) sform.insert(sform.end(), row.begin(), row.end());
        write_attribute<double>(group.get(), "sform", sform, context, {3, 4});
        write_attribute<float>(group.get(), "quatern_bcd_qfac", {g.quatern.begin(), g.quatern.end()}, context);
        write_attribute<float>(group.get(), "qoffset", {g.qoffset.begin(), g.qoffset.end()}, context);
        write_attribute<float>(group.get(), "brain_mean", {info.brain_mean.begin(), info.brain_mean.end()}, context);
        write_attribute<float>(group.get(), "brain_std", {info.brain_std.begin(), info.brain_std.end()}, context);
        write_attribute<std::int64_t>(group.get(), "class_voxels", {info.class_voxels.begin(), info.class_voxels.end()}, context);
        if (!info.present_slices.empty()) {
            // In the original volume's slice numbers (the file names' <s>), as a user reads them.
            std::vector<std::int32_t> runs;
            for (const data::SliceRange& run : info.present_slices)
                runs.insert(runs.end(), {run.begin + info.crop.begin[2], run.end + info.crop.begin[2]});
            write_attribute<std::int32_t>(group.get(), "present_slices", runs, context, {hsize_t(runs.size() / 2), 2});
        }
        ++case_count_;
    }

    fs::path file_, partial_;
    StoreOptions options_;
    H5Handle h5_, cases_;
    std::size_t case_count_ = 0;
    bool finished_ = false;
};

struct ConvertOptions {
    StoreOptions store;
    ReadOptions nifti;               // label map, tolerances
    // Channel order (judged over the set), depth; a volume missing slices is stored with the
    // slices it has (the case's present_slices): people keep part of each volume.
    KaggleVolumeOptions kaggle{KaggleReadOptions{}, 155, MissingSlices::fill_background};
    bool skip_bad_cases = false;     // convert the rest and report the bad ones
    std::function<void(const std::string& id, std::size_t done, std::size_t total)> progress;
    std::function<void(const std::string& text)> warning;  // as they arise (also in the report)

    // Every setting that changes what a conversion writes, on one line (the store's manifest
    // records it, so a store converted otherwise is not reused).
    std::string settings_text() const {
        std::ostringstream text;
        text << "store_version=" << kStoreVersion << " chunk=" << store.chunk[0] << ',' << store.chunk[1] << ',' << store.chunk[2]
             << " gzip=" << store.gzip_level << " shuffle=" << store.shuffle << " margin=" << store.margin
             << " max_foreground=" << store.max_foreground_per_class
             << " label_map=" << (nifti.label_map ? nifti.label_map->describe() : std::string("edition"))
             << " require_labels=" << nifti.require_labels << " affine_tolerance_mm=" << nifti.affine_tolerance_mm
             << " kaggle_channels=";
        for (const data::Modality m : kaggle.read.channels.image) text << int(m);
        text << " kaggle_mask_classes=";
        for (const int k : kaggle.read.channels.mask_classes) text << k;
        text << " channel_check=" << kaggle.read.verify_channel_order << " depth=" << kaggle.depth
             << " missing=" << int(kaggle.missing) << " skip_bad=" << skip_bad_cases;
        return text.str();
    }
};

struct ConvertReport {
    std::vector<std::string> converted;                       // case ids
    std::vector<std::pair<std::string, std::string>> skipped;  // case (id or path), reason
    std::vector<std::string> partial;   // "volume_47: 2 of 155 slices (71, 124)" (Kaggle volumes with slices missing)
    std::vector<std::string> warnings;  // volumes whose intensities doubt the declared channel order
    std::string channel_votes;          // the channel-order tally of a Kaggle folder
};

// Converts a folder of NIfTI cases (any mix of both namings, found recursively) or of Kaggle
// `volume_<v>_slice_<s>.h5` files into one store file. A bad case raises DataError (naming its
// file) unless skip_bad_cases, in which case it is left out, listed in the report and in the
// store's `skipped_cases` attribute. A folder holding neither layout, or both, raises. The store
// records the folder's manifest (source_manifest.hpp) as it was before reading.
inline ConvertReport convert_to_store(const fs::path& input, const fs::path& store_file, const ConvertOptions& options = {}) {
    const ConvertInputs inputs = find_convert_inputs(input);
    const std::string manifest = source_manifest(input, inputs, options.settings_text());
    const std::vector<CaseFiles>& nifti_cases = inputs.nifti;
    const std::map<int, std::map<int, fs::path>>& kaggle_volumes = inputs.kaggle;

    ConvertReport report;
    StoreWriter writer(store_file, options.store);
    const std::size_t total = nifti_cases.size() + kaggle_volumes.size();
    auto attempt = [&](const std::string& label, auto&& convert_one) {
        try {
            convert_one();
            report.converted.push_back(label);
        } catch (const ChannelOrderError&) {
            throw;
        } catch (const data::DataError& problem) {
            if (!options.skip_bad_cases) throw;
            report.skipped.emplace_back(label, problem.what());
        }
        if (options.progress) options.progress(label, report.converted.size() + report.skipped.size(), total);
    };
    for (const CaseFiles& files : nifti_cases)
        attempt(files.id, [&] {
            const data::Case c = read_case(files, options.nifti);
            std::vector<std::string> sources;
            for (const fs::path& p : files.images) sources.push_back(p.filename().string());
            if (!files.labels.empty()) sources.push_back(files.labels.filename().string());
            writer.add(c, files.edition(), sources);
        });
    ChannelOrderTally channel_order(options.kaggle.read.channels, input.string());
    for (const auto& [volume, slices] : kaggle_volumes)
        attempt("volume_" + std::to_string(volume), [&, volume = volume, &slices = slices] {
            const KaggleVolume v = read_kaggle_volume(input, volume, slices, options.kaggle);
            const data::Case& c = v.case_data;
            if (options.kaggle.read.verify_channel_order) {
                // A set that contradicts the declared order raises ChannelOrderError, which
                // skip_bad_cases does not skip: it is not one bad case.
                const std::string warning = channel_order.add(c.id, v.channel_check);
                if (!warning.empty()) {
                    report.warnings.push_back(warning);
                    if (options.warning) options.warning(warning);
                }
            }
            if (!c.present_slices.empty())
                report.partial.push_back(c.id + ": " + std::to_string(slices.size()) + " of " + std::to_string(options.kaggle.depth) +
                                         " slices (" + data::describe_slice_runs(c.present_slices) + ")");
            const std::vector<float> background = kaggle_slice_background(c);
            std::vector<std::string> sources;
            for (const auto& [s, path] : slices) sources.push_back(path.filename().string());
            writer.add(c, data::Edition::brats2017_2021, sources, &background);
        });
    if (report.converted.empty())
        throw data::DataError(input.string() + ": no case could be converted (first problem: " +
                              (report.skipped.empty() ? std::string("none") : report.skipped.front().second) + ")");
    if (!kaggle_volumes.empty() && options.kaggle.read.verify_channel_order) report.channel_votes = channel_order.votes();
    std::vector<std::string> skipped;
    for (const auto& [label, reason] : report.skipped) skipped.push_back(label + ": " + reason);
    writer.record_source_manifest(manifest);
    writer.finish(skipped);
    return report;
}

// Random access to a store. All HDF5 calls run under one process-wide lock (see
// hdf5_support.hpp), so any number of threads may call read() at once.
class StoreSource : public data::CaseSource {
public:
    explicit StoreSource(fs::path file) : file_(std::move(file)) {
        using namespace detail;
        const std::string name = file_.string();
        H5Lock lock;
        h5_ = open_hdf5_read(file_);
        const std::vector<std::string> format = read_string_attribute(h5_.get(), "format", name);
        if (format.size() != 1 || format[0] != kStoreFormat) throw data::DataError(name + ": not a lightunet store (format attribute)");
        const int version = read_attribute<std::int32_t>(h5_.get(), "version", 1, name)[0];
        if (version != kStoreVersion)
            throw data::DataError(name + ": store version " + std::to_string(version) + ", this reader knows " + std::to_string(kStoreVersion));
        skipped_ = read_string_attribute(h5_.get(), "skipped_cases", name);
        cases_ = open_group(h5_.get(), "cases", name);
        for (const std::string& id : group_members(cases_.get(), name + ": /cases")) infos_.push_back(read_info(id));
    }

    std::size_t size() const override { return infos_.size(); }
    std::string id(std::size_t index) const override { return info(index).id; }
    data::VolumeExtent extent(std::size_t index) const override { return info(index).extent; }
    bool has_labels(std::size_t index) const override { return info(index).has_labels; }
    std::vector<data::SliceRange> present_slices(std::size_t index) const override { return info(index).present_slices; }
    const StoredCaseInfo& info(std::size_t index) const {
        if (index >= infos_.size())
            throw std::out_of_range(file_.string() + ": case index " + std::to_string(index) + " of " + std::to_string(infos_.size()));
        return infos_[index];
    }
    // The manifest of the folder the store was converted from; empty for a store written case by
    // case (StoreWriter::add) or by an older version.
    std::string source_manifest() const {
        using namespace detail;
        const std::string context = file_.string() + ": /source_manifest";
        H5Lock lock;
        if (H5Lexists(h5_.get(), "source_manifest", H5P_DEFAULT) <= 0) {
            H5Eclear2(H5E_DEFAULT);
            return {};
        }
        H5Handle dataset = open_dataset(h5_.get(), "source_manifest", file_.string());
        const std::vector<hsize_t> dims = dataset_dims(dataset.get(), context);
        const StoredType type = dataset_type(dataset.get(), context);
        if (dims.size() != 1 || dims[0] > (hsize_t(1) << 30) || type.type_class != H5T_INTEGER || type.bytes != 1)
            throw data::DataError(context + ": expected a 1-D uint8 dataset, found " + type.describe() + " " + dims_text(dims));
        std::vector<std::uint8_t> bytes(dims[0]);
        if (!bytes.empty()) read_whole(dataset.get(), bytes, context);
        return std::string(bytes.begin(), bytes.end());
    }

    // Cases the converter left out, "id: reason".
    const std::vector<std::string>& skipped_cases() const { return skipped_; }
    const fs::path& file() const { return file_; }

    std::vector<std::array<int, 3>> foreground(std::size_t index) const override {
        const StoredCaseInfo& i = info(index);
        std::vector<std::array<int, 3>> voxels;
        if (!i.has_labels) return voxels;
        const std::string context = file_.string() + ": /cases/" + i.id;
        detail::H5Lock lock;
        const ForegroundLists lists = open_foreground_lists(i, context);
        for (std::size_t k = 0; k < lists.datasets.size(); ++k) {
            std::vector<std::int32_t> list(lists.rows[k] * 3);
            if (!list.empty()) detail::read_whole(lists.datasets[k].get(), list, context + "/foreground_" + std::to_string(k + 1));
            for (std::size_t v = 0; v < lists.rows[k]; ++v) voxels.push_back({list[3 * v], list[3 * v + 1], list[3 * v + 2]});
        }
        return voxels;
    }

    // Reads one row of the lists instead of all of them: the loader asks once per patch.
    std::optional<std::array<int, 3>> foreground_voxel(std::size_t index, std::uint64_t draw) const override {
        const StoredCaseInfo& i = info(index);
        if (!i.has_labels) return std::nullopt;
        const std::string context = file_.string() + ": /cases/" + i.id;
        detail::H5Lock lock;
        const ForegroundLists lists = open_foreground_lists(i, context);
        hsize_t total = 0;
        for (const hsize_t rows : lists.rows) total += rows;
        if (total == 0) return std::nullopt;
        hsize_t row = hsize_t(data::pick(draw, std::size_t(total)));
        std::size_t list = 0;
        while (row >= lists.rows[list]) row -= lists.rows[list++];
        std::array<std::int32_t, 3> voxel{};
        const hsize_t start[2] = {row, 0}, count[2] = {1, 3}, memory_dims[2] = {1, 3}, memory_start[2] = {0, 0};
        read_region(lists.datasets[list].get(), 2, start, count, memory_dims, memory_start,
                    detail::native_type<std::int32_t>(), voxel.data(), context + "/foreground_" + std::to_string(list + 1));
        return std::array<int, 3>{voxel[0], voxel[1], voxel[2]};
    }

    void read(std::size_t index, const data::Box& box, float* images, std::uint8_t* labels) const override {
        const StoredCaseInfo& i = info(index);
        const data::VolumeExtent out = box.extent();
        if (out.x <= 0 || out.y <= 0 || out.z <= 0) throw std::invalid_argument(file_.string() + ": empty box for case " + i.id);
        std::fill(images, images + std::size_t(data::kModalityCount) * out.voxels(), 0.0f);
        if (labels != nullptr) std::fill(labels, labels + out.voxels(), std::uint8_t(0));
        // The part of the box inside the case.
        const std::array<int, 3> limits{i.extent.x, i.extent.y, i.extent.z};
        std::array<int, 3> begin{}, end{};
        for (std::size_t d = 0; d < 3; ++d) {
            begin[d] = std::clamp(box.begin[d], 0, limits[d]);
            end[d] = std::clamp(box.end[d], 0, limits[d]);
            if (begin[d] >= end[d]) return;
        }
        using namespace detail;
        const std::string context = file_.string() + ": /cases/" + i.id;
        H5Lock lock;
        H5Handle group = open_group(cases_.get(), i.id, context);
        {
            H5Handle dataset = open_dataset(group.get(), "images", context);
            const hsize_t file_start[4] = {0, hsize_t(begin[2]), hsize_t(begin[1]), hsize_t(begin[0])};
            const hsize_t count[4] = {hsize_t(data::kModalityCount), hsize_t(end[2] - begin[2]), hsize_t(end[1] - begin[1]),
                                      hsize_t(end[0] - begin[0])};
            const hsize_t memory_dims[4] = {hsize_t(data::kModalityCount), hsize_t(out.z), hsize_t(out.y), hsize_t(out.x)};
            const hsize_t memory_start[4] = {0, hsize_t(begin[2] - box.begin[2]), hsize_t(begin[1] - box.begin[1]),
                                             hsize_t(begin[0] - box.begin[0])};
            read_region(dataset.get(), 4, file_start, count, memory_dims, memory_start, H5T_NATIVE_FLOAT, images, context + "/images");
        }
        if (labels != nullptr && i.has_labels) {
            H5Handle dataset = open_dataset(group.get(), "labels", context);
            const hsize_t file_start[3] = {hsize_t(begin[2]), hsize_t(begin[1]), hsize_t(begin[0])};
            const hsize_t count[3] = {hsize_t(end[2] - begin[2]), hsize_t(end[1] - begin[1]), hsize_t(end[0] - begin[0])};
            const hsize_t memory_dims[3] = {hsize_t(out.z), hsize_t(out.y), hsize_t(out.x)};
            const hsize_t memory_start[3] = {hsize_t(begin[2] - box.begin[2]), hsize_t(begin[1] - box.begin[1]),
                                             hsize_t(begin[0] - box.begin[0])};
            read_region(dataset.get(), 3, file_start, count, memory_dims, memory_start, H5T_NATIVE_UINT8, labels, context + "/labels");
        }
    }

    // The stored (cropped, z-scored) case with its original geometry and crop box, ready for
    // io::write_prediction.
    data::Case load(std::size_t index) const override {
        const StoredCaseInfo& i = info(index);
        data::Case c;
        c.id = i.id;
        c.extent = i.extent;
        c.geometry = i.geometry;
        c.crop = i.crop;
        c.present_slices = i.present_slices;
        c.images.resize(std::size_t(data::kModalityCount) * i.extent.voxels());
        if (i.has_labels) c.labels.resize(i.extent.voxels());
        data::Box whole;
        whole.end = {i.extent.x, i.extent.y, i.extent.z};
        read(index, whole, c.images.data(), i.has_labels ? c.labels.data() : nullptr);
        return c;
    }

private:
    // The case's foreground_1..3 lists, each checked to be (rows, 3). Caller holds the HDF5 lock.
    struct ForegroundLists {
        std::array<detail::H5Handle, data::kClassCount - 1> datasets;
        std::array<hsize_t, data::kClassCount - 1> rows{};
    };
    ForegroundLists open_foreground_lists(const StoredCaseInfo& i, const std::string& context) const {
        using namespace detail;
        H5Handle group = open_group(cases_.get(), i.id, context);
        ForegroundLists lists;
        for (int k = 1; k < data::kClassCount; ++k) {
            H5Handle& dataset = lists.datasets[std::size_t(k - 1)];
            dataset = open_dataset(group.get(), "foreground_" + std::to_string(k), context);
            const std::vector<hsize_t> dims = dataset_dims(dataset.get(), context);
            if (dims.size() != 2 || dims[1] != 3) throw data::DataError(context + ": foreground list has shape " + dims_text(dims));
            lists.rows[std::size_t(k - 1)] = dims[0];
        }
        return lists;
    }

    static void read_region(hid_t dataset, int rank, const hsize_t* file_start, const hsize_t* count, const hsize_t* memory_dims,
                            const hsize_t* memory_start, hid_t memory_type, void* out, const std::string& context) {
        using namespace detail;
        check_storage(dataset, context);
        H5Handle file_space(H5Dget_space(dataset), H5Sclose, context + ": dataspace");
        check_hdf5(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, file_start, nullptr, count, nullptr),
                   context + ": region outside the dataset");
        H5Handle memory_space(H5Screate_simple(rank, memory_dims, nullptr), H5Sclose, context + ": memory space");
        check_hdf5(H5Sselect_hyperslab(memory_space.get(), H5S_SELECT_SET, memory_start, nullptr, count, nullptr),
                   context + ": memory selection");
        check_hdf5(H5Dread(dataset, memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, out), context + ": read failed");
    }

    StoredCaseInfo read_info(const std::string& id) const {
        using namespace detail;
        const std::string context = file_.string() + ": /cases/" + id;
        H5Handle group = open_group(cases_.get(), id, context);
        StoredCaseInfo i;
        i.id = id;
        i.edition = data::edition_from_name(read_string_attribute(group.get(), "edition", context).at(0));
        i.source_files = read_string_attribute(group.get(), "source_files", context);
        const auto spacing = read_attribute<float>(group.get(), "spacing", 3, context);
        const auto original = read_attribute<std::int32_t>(group.get(), "original_extent", 3, context);
        const auto crop_begin = read_attribute<std::int32_t>(group.get(), "crop_begin", 3, context);
        const auto crop_end = read_attribute<std::int32_t>(group.get(), "crop_end", 3, context);
        const auto sform = read_attribute<double>(group.get(), "sform", 12, context);
        const auto quatern = read_attribute<float>(group.get(), "quatern_bcd_qfac", 4, context);
        const auto qoffset = read_attribute<float>(group.get(), "qoffset", 3, context);
        const auto mean = read_attribute<float>(group.get(), "brain_mean", 4, context);
        const auto stdev = read_attribute<float>(group.get(), "brain_std", 4, context);
        const auto classes = read_attribute<std::int64_t>(group.get(), "class_voxels", 4, context);
        i.geometry.extent = {original[0], original[1], original[2]};
        i.geometry.spacing = {spacing[0], spacing[1], spacing[2]};
        i.geometry.qform_code = read_attribute<std::int32_t>(group.get(), "qform_code", 1, context)[0];
        i.geometry.sform_code = read_attribute<std::int32_t>(group.get(), "sform_code", 1, context)[0];
        for (std::size_t r = 0; r < 3; ++r)
            for (std::size_t col = 0; col < 4; ++col) i.geometry.sform[r][col] = sform[r * 4 + col];
        std::copy(quatern.begin(), quatern.end(), i.geometry.quatern.begin());
        std::copy(qoffset.begin(), qoffset.end(), i.geometry.qoffset.begin());
        std::copy(mean.begin(), mean.end(), i.brain_mean.begin());
        std::copy(stdev.begin(), stdev.end(), i.brain_std.begin());
        std::copy(classes.begin(), classes.end(), i.class_voxels.begin());
        for (std::size_t d = 0; d < 3; ++d) {
            i.crop.begin[d] = crop_begin[d];
            i.crop.end[d] = crop_end[d];
        }
        H5Handle images = open_dataset(group.get(), "images", context);
        const std::vector<hsize_t> dims = dataset_dims(images.get(), context + "/images");
        if (dims.size() != 4 || dims[0] != hsize_t(data::kModalityCount))
            throw data::DataError(context + "/images: shape " + dims_text(dims) + ", expected (4, z, y, x)");
        i.extent = {int(dims[3]), int(dims[2]), int(dims[1])};
        if (i.crop.extent() != i.extent) throw data::DataError(context + ": crop box does not match the stored extent");
        if (H5Aexists(group.get(), "present_slices") > 0) {
            const std::string where = context + ": attribute 'present_slices'";
            const auto runs = read_attribute<std::int32_t>(group.get(), "present_slices", 2, std::size_t(i.geometry.extent.z) + 1, context);
            if (runs.size() % 2 != 0) throw data::DataError(where + ": " + std::to_string(runs.size()) + " values, expected (runs, 2)");
            std::vector<data::SliceRange> original;
            for (std::size_t r = 0; r < runs.size(); r += 2) original.push_back({runs[r], runs[r + 1]});
            if (const std::string problem = data::slice_runs_problem(original, i.geometry.extent.z); !problem.empty())
                throw data::DataError(where + ": " + problem);
            i.present_slices = data::crop_slice_runs(original, i.crop.begin[2], i.crop.end[2]);
            if (i.present_slices.empty()) throw data::DataError(where + ": no present slice lies in the stored crop");
        } else {
            H5Eclear2(H5E_DEFAULT);
        }
        i.has_labels = H5Lexists(group.get(), "labels", H5P_DEFAULT) > 0;
        if (i.has_labels) {
            H5Handle labels = open_dataset(group.get(), "labels", context);
            const std::vector<hsize_t> label_dims = dataset_dims(labels.get(), context + "/labels");
            if (label_dims != std::vector<hsize_t>{dims[1], dims[2], dims[3]})
                throw data::DataError(context + "/labels: shape " + dims_text(label_dims) + " differs from the images");
        }
        return i;
    }

    fs::path file_;
    detail::H5Handle h5_, cases_;
    std::vector<StoredCaseInfo> infos_;
    std::vector<std::string> skipped_;
};

// Why `store_file` cannot stand for a conversion of `input` with `options` now ("" when it can):
// no store, an unreadable one, one without a manifest, or a folder or settings that changed.
inline std::string store_reuse_problem(const fs::path& store_file, const fs::path& input, const ConvertOptions& options = {}) {
    std::error_code error;
    if (!fs::is_regular_file(store_file, error)) return "no store " + store_file.string() + " yet";
    std::string recorded;
    try {
        recorded = StoreSource(store_file).source_manifest();
    } catch (const data::DataError& problem) {
        return std::string("the store is unreadable (") + problem.what() + ")";
    }
    if (recorded.empty()) return "the store records no source manifest (written by an older version, or case by case)";
    const std::string current = source_manifest(input, find_convert_inputs(input), options.settings_text());
    return manifest_difference(recorded, current);
}

}  // namespace lightunet::io

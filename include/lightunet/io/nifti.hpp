#pragma once
// NIfTI-1 volumes and BraTS case folders, read and written through niftilib (nifti1_io.h).
//
// Volumes: single-file NIfTI-1 (`.nii`, `.nii.gz`), one 3D volume each; datatypes uint8, int8,
// int16, uint16, int32, uint32, float32, float64. vox_offset is honoured (header extensions),
// scl_slope == 0 means "no scaling" (NIfTI-1), qform/sform/spacing are kept in data::Geometry;
// the voxel -> world affine and orientation they give are in io/affine.hpp (Eigen).
// Before niftilib sees a file its header is checked and, for gzip files, the whole stream is
// inflated once with zlib so a truncated or corrupt file is an exception, not a partial read.
//
// Cases: two namings, detected from the file names (never guessed from contents):
//   Naming::brats2018  <case>_{t1,t1ce,t2,flair,seg}.nii[.gz]  BraTS 2017-2021 (BraTS20_Training_NNN_*),
//                       labels 0/1/2/4 (Edition::brats2017_2021)
//   Naming::brats2023  <case>-{t1n,t1c,t2w,t2f,seg}.nii[.gz]   BraTS 2023+ and BraTS-Africa,
//                       labels 0/1/2/3 (Edition::brats2023)
// A case without a seg file is unlabelled. Every problem raises data::DataError naming the file.
// nifti1.h #defines DT_UNKNOWN (a NIfTI datatype code), which is also an enumerator of
// <dirent.h>: declare dirent's first so that code including both still compiles.
#include <dirent.h>
#include <nifti1_io.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "../data/case.hpp"
#include "../data/labels.hpp"
#include "affine.hpp"

namespace lightunet::io {

using data::DataError;
namespace fs = std::filesystem;

// Voxel types a writer can store (a reader accepts these plus int8 and uint32).
enum class VoxelType { uint8, int16, uint16, int32, float32, float64 };

// One volume as read: values as float (exact for every integer type up to 2^24, which covers
// BraTS images and labels), with the file's scaling already applied.
struct NiftiVolume {
    fs::path path;
    data::VolumeExtent extent;
    int datatype = 0;           // NIFTI_TYPE_* as stored
    std::size_t vox_offset = 0; // bytes before the voxels (352 + header extensions)
    float scl_slope = 0, scl_inter = 0;  // as stored; slope 0 (or 1 with intercept 0) = none
    data::Geometry geometry;
    std::vector<float> values;  // x fastest, then y, then z
    // Voxel (i, j, k) -> RAS+ mm (io/affine.hpp), and its axis codes, e.g. "LPS".
    Eigen::Affine3d affine() const { return voxel_to_world(geometry); }
    std::string orientation() const { return io::orientation(geometry); }
};

namespace detail {

// niftilib keeps global options and prints to stderr; one lock around every call, debug level 0
// so that only our exceptions report problems.
inline std::mutex& niftilib_mutex() {
    static std::mutex mutex;
    return mutex;
}
inline void quiet_niftilib() {
    static const bool once = [] {
        nifti_set_debug_level(0);
        return true;
    }();
    (void)once;
}

struct NiftiImageDeleter {
    void operator()(nifti_image* image) const { nifti_image_free(image); }
};
using NiftiImagePtr = std::unique_ptr<nifti_image, NiftiImageDeleter>;
struct FreeDeleter {
    void operator()(void* pointer) const { std::free(pointer); }
};

inline bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool is_gzip_name(const fs::path& path) { return ends_with(path.filename().string(), ".nii.gz"); }

// What one pass over a file's bytes (inflated through zlib, which reads plain files as they
// are) establishes before niftilib sees it:
// - a gzip stream is complete and its CRC/length trailer right. niftilib stops after the voxels
//   it needs, and on a short stream may print and hand back a partial volume;
// - the header is single-file NIfTI-1 (sizeof_hdr 348 in either byte order, magic "n+1");
// - float voxels are finite. niftilib silently replaces NaN/Inf with 0 while loading.
struct FileScan {
    std::uint64_t content_bytes = 0;  // after inflation
    std::array<unsigned char, 348> header{};
    bool swapped = false;
    std::size_t nonfinite = 0, first_nonfinite = 0;
    double first_nonfinite_value = 0;
};

template <class T>
T header_field(const FileScan& scan, std::size_t offset) {
    std::array<unsigned char, sizeof(T)> bytes;
    std::memcpy(bytes.data(), scan.header.data() + offset, sizeof(T));
    if (scan.swapped) std::reverse(bytes.begin(), bytes.end());
    T value;
    std::memcpy(&value, bytes.data(), sizeof(T));
    return value;
}

// Header fields by byte offset in nifti_1_header.
struct HeaderOffsets {
    static constexpr std::size_t sizeof_hdr = 0, dim = 40, datatype = 70, vox_offset = 108, srow_x = 280,
                                 magic = 344;
};

inline FileScan scan_nifti_file(const fs::path& path, bool gzip) {
    const std::string name = path.string();
    gzFile file = gzopen(path.c_str(), "rb");
    if (file == nullptr) throw DataError(name + ": cannot open for reading");
    struct Closer {
        gzFile& file;
        ~Closer() { if (file != nullptr) gzclose_r(file); }
    } closer{file};
    gzbuffer(file, 1 << 17);
    FileScan scan;
    std::vector<unsigned char> buffer(1 << 20);
    std::size_t header_filled = 0;
    int datatype = 0;
    std::uint64_t data_begin = 0;
    int value_bytes = 0;  // 4 or 8 for float data that needs the finiteness check, else 0
    std::array<unsigned char, 8> partial_value{};
    int partial_filled = 0;
    std::string zlib_message;
    for (;;) {
        const int got = gzread(file, buffer.data(), unsigned(buffer.size()));
        if (got <= 0) {
            int errnum = Z_OK;
            const char* text = gzerror(file, &errnum);
            if (got < 0 || (errnum != Z_OK && errnum != Z_STREAM_END))
                zlib_message = text != nullptr ? text : "unknown zlib error";
            break;
        }
        std::size_t position = 0;
        const std::size_t count = std::size_t(got);
        if (header_filled < scan.header.size()) {
            const std::size_t take = std::min(count, scan.header.size() - header_filled);
            std::memcpy(scan.header.data() + header_filled, buffer.data(), take);
            header_filled += take;
            position = take;
            if (header_filled == scan.header.size()) {
                std::int32_t sizeof_hdr;
                std::memcpy(&sizeof_hdr, scan.header.data(), 4);
                if (sizeof_hdr != 348) {
                    scan.swapped = true;
                    if (header_field<std::int32_t>(scan, HeaderOffsets::sizeof_hdr) != 348)
                        throw DataError(name + ": not a NIfTI-1 header (sizeof_hdr is " + std::to_string(sizeof_hdr) + ")");
                }
                if (std::memcmp(scan.header.data() + HeaderOffsets::magic, "n+1", 4) != 0)
                    throw DataError(name + ": not a single-file NIfTI-1 image (magic is not \"n+1\")");
                datatype = header_field<std::int16_t>(scan, HeaderOffsets::datatype);
                const float offset = header_field<float>(scan, HeaderOffsets::vox_offset);
                data_begin = offset >= 348 && offset < 0x1p63f ? std::uint64_t(offset) : 0;  // beyond: the header check reports it
                value_bytes = datatype == NIFTI_TYPE_FLOAT32 ? 4 : datatype == NIFTI_TYPE_FLOAT64 ? 8 : 0;
                if (value_bytes != 0 && data_begin == 0) value_bytes = 0;  // the header check reports it
                if (value_bytes == 0 && !gzip) break;  // plain integer file: nothing more to learn
            }
        }
        if (value_bytes != 0) {
            for (; position < count; ++position) {
                const std::uint64_t absolute = scan.content_bytes + position;
                if (absolute < data_begin) continue;
                partial_value[std::size_t(partial_filled++)] = buffer[position];
                if (partial_filled < value_bytes) continue;
                partial_filled = 0;
                // Byte swaps on integers: GCC 12 misreads std::reverse over a run-time length here
                // (-Wstringop-overflow).
                double value;
                if (value_bytes == 4) {
                    std::uint32_t bits;
                    std::memcpy(&bits, partial_value.data(), 4);
                    if (scan.swapped) bits = __builtin_bswap32(bits);
                    float f;
                    std::memcpy(&f, &bits, 4);
                    value = f;
                } else {
                    std::uint64_t bits;
                    std::memcpy(&bits, partial_value.data(), 8);
                    if (scan.swapped) bits = __builtin_bswap64(bits);
                    std::memcpy(&value, &bits, 8);
                }
                if (!std::isfinite(value) && scan.nonfinite++ == 0) {
                    scan.first_nonfinite = std::size_t((absolute + 1 - data_begin) / std::uint64_t(value_bytes) - 1);
                    scan.first_nonfinite_value = value;
                }
            }
        }
        scan.content_bytes += count;
    }
    if (!zlib_message.empty())
        throw DataError(name + ": truncated or corrupt " + (gzip ? std::string("gzip data") : std::string("file")) +
                        " after " + std::to_string(scan.content_bytes) + " decompressed bytes (zlib: " + zlib_message + ")");
    const int close_status = gzclose_r(file);
    file = nullptr;
    if (close_status != Z_OK)
        throw DataError(name + ": gzip stream does not end cleanly (zlib status " + std::to_string(close_status) + ")");
    if (header_filled < scan.header.size())
        throw DataError(name + ": " + std::to_string(header_filled) + " bytes, shorter than a NIfTI-1 header (348)");
    if (!gzip) {
        std::error_code error;
        scan.content_bytes = fs::file_size(path, error);
        if (error) throw DataError(name + ": cannot stat (" + error.message() + ")");
    }
    return scan;
}

inline int bytes_per_voxel(int datatype) {
    switch (datatype) {
        case NIFTI_TYPE_UINT8:
        case NIFTI_TYPE_INT8: return 1;
        case NIFTI_TYPE_INT16:
        case NIFTI_TYPE_UINT16: return 2;
        case NIFTI_TYPE_INT32:
        case NIFTI_TYPE_UINT32:
        case NIFTI_TYPE_FLOAT32: return 4;
        case NIFTI_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

inline int nifti_datatype(VoxelType type) {
    switch (type) {
        case VoxelType::uint8: return NIFTI_TYPE_UINT8;
        case VoxelType::int16: return NIFTI_TYPE_INT16;
        case VoxelType::uint16: return NIFTI_TYPE_UINT16;
        case VoxelType::int32: return NIFTI_TYPE_INT32;
        case VoxelType::float32: return NIFTI_TYPE_FLOAT32;
        case VoxelType::float64: return NIFTI_TYPE_FLOAT64;
    }
    return 0;
}

inline std::string datatype_name(int datatype) {
    const char* name = nifti_datatype_string(datatype);
    return name != nullptr ? name : ("code " + std::to_string(datatype));
}

template <class Stored>
void convert_to_float(const void* data, std::size_t count, float slope, float intercept, float* out) {
    const Stored* stored = static_cast<const Stored*>(data);
    if (slope == 0.0f || (slope == 1.0f && intercept == 0.0f)) {
        for (std::size_t i = 0; i < count; ++i) out[i] = float(stored[i]);
    } else {
        for (std::size_t i = 0; i < count; ++i) out[i] = float(double(stored[i]) * slope + intercept);
    }
}

inline std::string voxel_position(std::size_t index, const data::VolumeExtent& extent) {
    const std::size_t plane = std::size_t(extent.x) * extent.y;
    std::ostringstream text;
    text << '(' << index % extent.x << ", " << (index / extent.x) % extent.y << ", " << index / plane << ')';
    return text.str();
}

inline void require_finite(const std::vector<float>& values, const data::VolumeExtent& extent,
                           const std::string& source) {
    std::size_t bad = 0, first = 0;
    for (std::size_t i = 0; i < values.size(); ++i)
        if (!std::isfinite(values[i]) && bad++ == 0) first = i;
    if (bad != 0)
        throw DataError(source + ": " + std::to_string(bad) + " NaN/Inf voxels (first at voxel " +
                        voxel_position(first, extent) + ", value " + std::to_string(values[first]) + ")");
}

}  // namespace detail

// Reads one single-file NIfTI-1 3D volume. Throws DataError naming `path` when the file is
// missing, not NIfTI-1, not 3D, of an unsupported datatype, shorter than its header says,
// truncated/corrupt gzip, or holds NaN/Inf.
inline NiftiVolume read_nifti(const fs::path& path) {
    const std::string name = path.string();
    std::error_code error;
    if (!fs::is_regular_file(path, error)) throw DataError(name + ": no such file");
    const std::string file_name = path.filename().string();
    const bool gzip = detail::is_gzip_name(path);
    if (!gzip && !detail::ends_with(file_name, ".nii"))
        throw DataError(name + ": not a .nii or .nii.gz file name");
    const detail::FileScan scan = detail::scan_nifti_file(path, gzip);
    const std::uint64_t content_bytes = scan.content_bytes;
    using Offsets = detail::HeaderOffsets;
    std::array<int, 8> dim{};
    for (std::size_t d = 0; d < 8; ++d) dim[d] = detail::header_field<std::int16_t>(scan, Offsets::dim + 2 * d);
    const int rank = dim[0];
    if (rank < 3 || rank > 7) throw DataError(name + ": dim[0] = " + std::to_string(rank) + ", expected a 3D volume");
    for (int d = 1; d <= rank; ++d) {
        if (dim[std::size_t(d)] < 1) throw DataError(name + ": dim[" + std::to_string(d) + "] = " + std::to_string(dim[std::size_t(d)]));
        if (d > 3 && dim[std::size_t(d)] != 1)
            throw DataError(name + ": holds " + std::to_string(dim[std::size_t(d)]) + " volumes along dimension " +
                            std::to_string(d) + ", expected one 3D volume");
    }
    const int datatype = detail::header_field<std::int16_t>(scan, Offsets::datatype);
    const int bytes_per_voxel = detail::bytes_per_voxel(datatype);
    if (bytes_per_voxel == 0) throw DataError(name + ": unsupported datatype " + detail::datatype_name(datatype));
    const double vox_offset = detail::header_field<float>(scan, Offsets::vox_offset);
    if (!(vox_offset >= 348.0) || vox_offset > double(content_bytes))
        throw DataError(name + ": vox_offset " + std::to_string(vox_offset) + " outside the file (" +
                        std::to_string(content_bytes) + " bytes)");
    const data::VolumeExtent extent{dim[1], dim[2], dim[3]};
    const std::uint64_t data_bytes = std::uint64_t(extent.voxels()) * std::uint64_t(bytes_per_voxel);
    if (std::uint64_t(vox_offset) + data_bytes > content_bytes)
        throw DataError(name + ": truncated: header needs " + std::to_string(std::uint64_t(vox_offset) + data_bytes) +
                        " bytes (" + std::to_string(extent.x) + "x" + std::to_string(extent.y) + "x" +
                        std::to_string(extent.z) + " " + detail::datatype_name(datatype) + " at offset " +
                        std::to_string(std::uint64_t(vox_offset)) + "), the file holds " +
                        std::to_string(content_bytes));
    if (scan.nonfinite != 0)
        throw DataError(name + ": " + std::to_string(scan.nonfinite) + " NaN/Inf voxels (first at voxel " +
                        detail::voxel_position(scan.first_nonfinite, extent) + ", value " +
                        std::to_string(scan.first_nonfinite_value) + ")");

    std::lock_guard lock(detail::niftilib_mutex());
    detail::quiet_niftilib();
    detail::NiftiImagePtr image(nifti_image_read(name.c_str(), 1));
    if (!image || image->data == nullptr) throw DataError(name + ": niftilib could not read the image");
    if (image->nx != extent.x || image->ny != extent.y || image->nz != extent.z || image->datatype != datatype)
        throw DataError(name + ": niftilib disagrees with the header about shape or datatype");

    NiftiVolume volume;
    volume.path = path;
    volume.extent = extent;
    volume.datatype = image->datatype;
    volume.vox_offset = std::size_t(image->iname_offset);
    volume.scl_slope = image->scl_slope;
    volume.scl_inter = image->scl_inter;
    if (!std::isfinite(volume.scl_slope) || !std::isfinite(volume.scl_inter))
        throw DataError(name + ": non-finite scl_slope/scl_inter");
    volume.values.resize(extent.voxels());
    const float slope = image->scl_slope, intercept = image->scl_inter;
    float* out = volume.values.data();
    const std::size_t count = volume.values.size();
    switch (image->datatype) {
        case NIFTI_TYPE_UINT8: detail::convert_to_float<std::uint8_t>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_INT8: detail::convert_to_float<std::int8_t>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_INT16: detail::convert_to_float<std::int16_t>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_UINT16: detail::convert_to_float<std::uint16_t>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_INT32: detail::convert_to_float<std::int32_t>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_UINT32: detail::convert_to_float<std::uint32_t>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_FLOAT32: detail::convert_to_float<float>(image->data, count, slope, intercept, out); break;
        case NIFTI_TYPE_FLOAT64: detail::convert_to_float<double>(image->data, count, slope, intercept, out); break;
        default: throw DataError(name + ": unsupported datatype " + detail::datatype_name(image->datatype));
    }
    detail::require_finite(volume.values, extent, name);

    data::Geometry& geometry = volume.geometry;
    geometry.extent = extent;
    geometry.spacing = {image->dx, image->dy, image->dz};
    geometry.qform_code = image->qform_code;
    geometry.sform_code = image->sform_code;
    // The stored rows, whatever sform_code says, so that a write reproduces them exactly.
    for (std::size_t row = 0; row < 3; ++row)
        for (std::size_t column = 0; column < 4; ++column)
            geometry.sform[row][column] = detail::header_field<float>(scan, Offsets::srow_x + 16 * row + 4 * column);
    geometry.quatern = {image->quatern_b, image->quatern_c, image->quatern_d, image->qfac};
    geometry.qoffset = {image->qoffset_x, image->qoffset_y, image->qoffset_z};
    return volume;
}

// Writes one 3D volume. `values` (x fastest) are stored as `type`; integer types require
// integral values inside the type's range (nothing is rounded or clipped silently). The file is
// written under a temporary name, checked by reading its header back, then renamed.
inline void write_nifti(const fs::path& path, const std::vector<float>& values, const data::Geometry& geometry,
                        VoxelType type) {
    const std::string name = path.string();
    const data::VolumeExtent extent = geometry.extent;
    if (extent.x < 1 || extent.y < 1 || extent.z < 1 || values.size() != extent.voxels())
        throw DataError(name + ": cannot write " + std::to_string(values.size()) + " values as a " +
                        std::to_string(extent.x) + "x" + std::to_string(extent.y) + "x" + std::to_string(extent.z) + " volume");
    const std::string file_name = path.filename().string();
    const bool gzip = detail::is_gzip_name(path);
    if (!gzip && !detail::ends_with(file_name, ".nii")) throw DataError(name + ": not a .nii or .nii.gz file name");

    auto check_range = [&](double low, double high, bool integral) {
        for (std::size_t i = 0; i < values.size(); ++i) {
            const double v = values[i];
            if (!std::isfinite(v) || v < low || v > high || (integral && std::nearbyint(v) != v))
                throw DataError(name + ": value " + std::to_string(v) + " at voxel " + detail::voxel_position(i, extent) +
                                " cannot be stored exactly as the requested voxel type");
        }
    };
    switch (type) {
        case VoxelType::uint8: check_range(0, 255, true); break;
        case VoxelType::int16: check_range(-32768, 32767, true); break;
        case VoxelType::uint16: check_range(0, 65535, true); break;
        case VoxelType::int32: check_range(-16777216, 16777216, true); break;  // exact in float
        case VoxelType::float32:
        case VoxelType::float64: check_range(-std::numeric_limits<double>::max(), std::numeric_limits<double>::max(), false); break;
    }

    std::error_code folder_error;
    if (!path.parent_path().empty()) fs::create_directories(path.parent_path(), folder_error);
    if (folder_error) throw DataError(name + ": cannot create its folder (" + folder_error.message() + ")");
    const fs::path partial = path.parent_path() / ("." + file_name.substr(0, file_name.size() - (gzip ? 7 : 4)) +
                                                   ".partial" + (gzip ? ".nii.gz" : ".nii"));
    {
        std::lock_guard lock(detail::niftilib_mutex());
        detail::quiet_niftilib();
        const int dims[8] = {3, extent.x, extent.y, extent.z, 1, 1, 1, 1};
        detail::NiftiImagePtr image(nifti_make_new_nim(dims, detail::nifti_datatype(type), 1));
        if (!image) throw DataError(name + ": niftilib could not allocate the image");
        const std::size_t count = values.size();
        switch (type) {
            case VoxelType::uint8: std::transform(values.begin(), values.end(), static_cast<std::uint8_t*>(image->data), [](float v) { return std::uint8_t(v); }); break;
            case VoxelType::int16: std::transform(values.begin(), values.end(), static_cast<std::int16_t*>(image->data), [](float v) { return std::int16_t(v); }); break;
            case VoxelType::uint16: std::transform(values.begin(), values.end(), static_cast<std::uint16_t*>(image->data), [](float v) { return std::uint16_t(v); }); break;
            case VoxelType::int32: std::transform(values.begin(), values.end(), static_cast<std::int32_t*>(image->data), [](float v) { return std::int32_t(v); }); break;
            case VoxelType::float32: std::memcpy(image->data, values.data(), count * sizeof(float)); break;
            case VoxelType::float64: std::copy(values.begin(), values.end(), static_cast<double*>(image->data)); break;
        }
        image->dx = image->pixdim[1] = geometry.spacing[0];
        image->dy = image->pixdim[2] = geometry.spacing[1];
        image->dz = image->pixdim[3] = geometry.spacing[2];
        image->scl_slope = 1.0f;  // explicit identity: readers that ignore the "0 = none" rule agree
        image->scl_inter = 0.0f;
        image->xyz_units = NIFTI_UNITS_MM;
        image->time_units = NIFTI_UNITS_SEC;
        image->qform_code = geometry.qform_code;
        image->sform_code = geometry.sform_code;
        image->quatern_b = geometry.quatern[0];
        image->quatern_c = geometry.quatern[1];
        image->quatern_d = geometry.quatern[2];
        image->qfac = geometry.quatern[3] < 0 ? -1.0f : 1.0f;
        image->pixdim[0] = image->qfac;
        image->qoffset_x = geometry.qoffset[0];
        image->qoffset_y = geometry.qoffset[1];
        image->qoffset_z = geometry.qoffset[2];
        image->qto_xyz = nifti_quatern_to_mat44(image->quatern_b, image->quatern_c, image->quatern_d, image->qoffset_x,
                                                image->qoffset_y, image->qoffset_z, image->dx, image->dy, image->dz,
                                                image->qfac);
        for (int row = 0; row < 3; ++row)
            for (int column = 0; column < 4; ++column) image->sto_xyz.m[row][column] = float(geometry.sform[row][column]);
        image->sto_xyz.m[3][0] = image->sto_xyz.m[3][1] = image->sto_xyz.m[3][2] = 0.0f;
        image->sto_xyz.m[3][3] = 1.0f;
        std::strncpy(image->descrip, "lightunet", sizeof(image->descrip) - 1);
        image->nifti_type = NIFTI_FTYPE_NIFTI1_1;
        if (nifti_set_filenames(image.get(), partial.c_str(), 0, 1) != 0)
            throw DataError(name + ": niftilib rejected the file name");
        std::error_code ignored;
        fs::remove(partial, ignored);
        nifti_image_write(image.get());  // reports nothing: the read-back below is the check
    }
    try {
        const NiftiVolume check = read_nifti(partial);
        if (check.extent != extent) throw DataError("shape differs on read-back");
    } catch (const DataError& problem) {
        std::error_code ignored;
        fs::remove(partial, ignored);
        throw DataError(name + ": writing failed (" + problem.what() + ")");
    }
    std::error_code error;
    fs::rename(partial, path, error);
    if (error) throw DataError(name + ": cannot move the written file into place (" + error.message() + ")");
}

// ---------------------------------------------------------------------------------------------
// BraTS case folders

enum class Naming { brats2018, brats2023 };

inline data::Edition edition_of(Naming naming) {
    return naming == Naming::brats2018 ? data::Edition::brats2017_2021 : data::Edition::brats2023;
}

// File-name suffixes per naming, in canonical modality order (t1, t1ce, t2, flair), then seg.
inline const std::array<const char*, data::kModalityCount + 1>& modality_suffixes(Naming naming) {
    static const std::array<const char*, data::kModalityCount + 1> brats2018{"_t1", "_t1ce", "_t2", "_flair", "_seg"};
    static const std::array<const char*, data::kModalityCount + 1> brats2023{"-t1n", "-t1c", "-t2w", "-t2f", "-seg"};
    return naming == Naming::brats2018 ? brats2018 : brats2023;
}
inline constexpr int kSegmentationSlot = data::kModalityCount;

struct CaseFiles {
    std::string id;
    Naming naming = Naming::brats2018;
    fs::path folder;
    std::array<fs::path, data::kModalityCount> images;  // canonical order; empty = missing
    fs::path labels;                                     // empty = unlabelled
    data::Edition edition() const { return edition_of(naming); }
    bool complete() const {
        return std::none_of(images.begin(), images.end(), [](const fs::path& p) { return p.empty(); });
    }
};

namespace detail {

struct NameMatch {
    std::string id;
    Naming naming;
    int slot;  // 0..3 canonical modality, 4 seg
};

inline std::optional<NameMatch> match_case_file(const std::string& file_name) {
    std::string stem;
    if (ends_with(file_name, ".nii.gz")) stem = file_name.substr(0, file_name.size() - 7);
    else if (ends_with(file_name, ".nii")) stem = file_name.substr(0, file_name.size() - 4);
    else return std::nullopt;
    for (Naming naming : {Naming::brats2018, Naming::brats2023}) {
        const auto& suffixes = modality_suffixes(naming);
        for (int slot = 0; slot <= kSegmentationSlot; ++slot) {
            const std::string suffix = suffixes[std::size_t(slot)];
            if (stem.size() > suffix.size() && ends_with(stem, suffix))
                return NameMatch{stem.substr(0, stem.size() - suffix.size()), naming, slot};
        }
    }
    return std::nullopt;
}

inline std::string slot_name(Naming naming, int slot) { return modality_suffixes(naming)[std::size_t(slot)] + 1; }

}  // namespace detail

// Finds every case under `root` (recursively), grouping files by case id. Cases with missing
// modalities are returned too (CaseFiles::complete() false) so that read_case reports them;
// two files for one slot (`x_t1.nii` and `x_t1.nii.gz`) or a case mixing both namings raise.
// Sorted by id. Raises when `root` is not a folder or holds no BraTS case file at all.
inline std::vector<CaseFiles> find_cases(const fs::path& root) {
    std::error_code error;
    if (!fs::is_directory(root, error)) throw DataError(root.string() + ": not a folder");
    std::map<std::pair<std::string, std::string>, CaseFiles> cases;  // (folder, id)
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, error);
         !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
        if (!it->is_regular_file(error)) continue;
        const auto match = detail::match_case_file(it->path().filename().string());
        if (!match) continue;
        const fs::path folder = it->path().parent_path();
        CaseFiles& files = cases[{folder.string(), match->id}];
        if (files.id.empty()) {
            files.id = match->id;
            files.naming = match->naming;
            files.folder = folder;
        } else if (files.naming != match->naming) {
            throw DataError(it->path().string() + ": case " + match->id + " mixes the BraTS 2018 and 2023 namings");
        }
        fs::path& slot = match->slot == kSegmentationSlot ? files.labels : files.images[std::size_t(match->slot)];
        if (!slot.empty())
            throw DataError(it->path().string() + ": case " + match->id + " has two " +
                            detail::slot_name(match->naming, match->slot) + " files (also " + slot.string() + ")");
        slot = it->path();
    }
    if (error) throw DataError(root.string() + ": cannot list (" + error.message() + ")");
    std::vector<CaseFiles> found;
    for (auto& [key, files] : cases) found.push_back(std::move(files));
    if (found.empty())
        throw DataError(root.string() + ": no BraTS case files (<case>_{t1,t1ce,t2,flair}.nii[.gz] or "
                                        "<case>-{t1n,t1c,t2w,t2f}.nii.gz) found");
    std::sort(found.begin(), found.end(), [](const CaseFiles& a, const CaseFiles& b) {
        return a.id != b.id ? a.id < b.id : a.folder < b.folder;
    });
    return found;
}

// The files of the one case in `folder` (not recursive); raises if it holds none or several.
inline CaseFiles case_files(const fs::path& folder) {
    std::error_code error;
    if (!fs::is_directory(folder, error)) throw DataError(folder.string() + ": not a folder");
    std::vector<CaseFiles> cases;
    for (CaseFiles& files : find_cases(folder))
        if (files.folder == folder) cases.push_back(std::move(files));
    if (cases.size() != 1)
        throw DataError(folder.string() + ": expected the files of one case, found " + std::to_string(cases.size()) +
                        (cases.empty() ? std::string(" (case files are only in subfolders)") : " (" + cases[0].id + ", " + cases[1].id + ", ...)"));
    return cases.front();
}

struct ReadOptions {
    // Raw -> canonical labels; default: the edition's map (2024's label 4 is rejected).
    std::optional<data::LabelMap> label_map;
    bool require_labels = false;  // raise for a case without a seg file
    // Largest differences tolerated between modalities' geometries: spacings, and how far apart
    // (mm) two modalities' affines may place any one voxel.
    double affine_tolerance_mm = 1e-3;
};

namespace detail {

// Why geometry `b` is not where `a` is ("" when it is): extents, spacings, orientations and
// where voxels lie (io/affine.hpp), and the qforms too when both volumes carry both forms.
inline std::string geometry_mismatch(const data::Geometry& a, const data::Geometry& b, const ReadOptions& options) {
    std::ostringstream text;
    auto extent_text = [](const data::VolumeExtent& e) {
        return std::to_string(e.x) + "x" + std::to_string(e.y) + "x" + std::to_string(e.z);
    };
    if (a.extent != b.extent) return "shape " + extent_text(b.extent) + " differs from " + extent_text(a.extent);
    for (int d = 0; d < 3; ++d)
        if (std::abs(a.spacing[std::size_t(d)] - b.spacing[std::size_t(d)]) > options.affine_tolerance_mm) {
            text << "spacing " << b.spacing[0] << "x" << b.spacing[1] << "x" << b.spacing[2] << " differs from "
                 << a.spacing[0] << "x" << a.spacing[1] << "x" << a.spacing[2];
            return text.str();
        }
    // The row of the 3 x 4 matrices that differs most, for the message.
    auto row_text = [](const Eigen::Affine3d& from, const Eigen::Affine3d& to) {
        Eigen::Index row = 0;
        (to.matrix() - from.matrix()).topRows<3>().cwiseAbs().rowwise().maxCoeff().maxCoeff(&row);
        const Eigen::IOFormat plain(Eigen::StreamPrecision, Eigen::DontAlignCols, " ", " ");
        std::ostringstream out;
        out << "affine row " << row << " [" << to.matrix().row(row).format(plain) << "] differs from ["
            << from.matrix().row(row).format(plain) << "]";
        return out.str();
    };
    // Codes are not compared: real BraTS 2018 images say qform_code 2 where their segmentations
    // say 1 for the same transform. What must agree is where each voxel lies.
    const Eigen::Affine3d affine_a = voxel_to_world(a), affine_b = voxel_to_world(b);
    const double apart = affine_distance_mm(affine_a, affine_b, a.extent);
    if (apart > options.affine_tolerance_mm) {  // orientations alone may differ on an axis of extent 1, or at 45 degrees
        if (const std::string from = orientation(affine_a), to = orientation(affine_b); from != to)
            text << "orientation " << to << " differs from " << from << ": ";
        text << affine_source_name(affine_source(a)) << ' ' << row_text(affine_a, affine_b) << ", voxels up to " << apart
             << " mm apart (tolerance " << options.affine_tolerance_mm << " mm)";
        return text.str();
    }
    if (a.sform_code > 0 && b.sform_code > 0 && a.qform_code > 0 && b.qform_code > 0) {
        const Eigen::Affine3d q_a = qform_affine(a), q_b = qform_affine(b);
        if (const double q_apart = affine_distance_mm(q_a, q_b, a.extent); q_apart > options.affine_tolerance_mm) {
            text << "qform " << row_text(q_a, q_b) << " (the sforms agree), voxels up to " << q_apart << " mm apart";
            return text.str();
        }
    }
    return {};
}

}  // namespace detail

// Reads a case: four modalities (canonical order) and, when present, the labels mapped to
// canonical classes. Checks every modality exists, that shapes and affines agree with the first
// modality, finite voxels and known label values. The Case is uncropped (crop = whole extent).
inline data::Case read_case(const CaseFiles& files, const ReadOptions& options = {}) {
    const auto& suffixes = modality_suffixes(files.naming);
    for (int m = 0; m < data::kModalityCount; ++m)
        if (files.images[std::size_t(m)].empty()) {
            const std::string expected = files.id + suffixes[std::size_t(m)] + ".nii[.gz]";
            throw DataError((files.folder / expected).string() + ": missing modality " +
                            detail::slot_name(files.naming, m) + " of case " + files.id);
        }
    if (options.require_labels && files.labels.empty())
        throw DataError((files.folder / (files.id + suffixes[kSegmentationSlot] + ".nii[.gz]")).string() +
                        ": missing segmentation of case " + files.id);

    data::Case result;
    result.id = files.id;
    for (int m = 0; m < data::kModalityCount; ++m) {
        NiftiVolume volume = read_nifti(files.images[std::size_t(m)]);
        if (m == 0) {
            result.extent = volume.extent;
            result.geometry = volume.geometry;
            result.images.resize(std::size_t(data::kModalityCount) * volume.extent.voxels());
        } else if (const std::string mismatch = detail::geometry_mismatch(result.geometry, volume.geometry, options);
                   !mismatch.empty()) {
            throw DataError(volume.path.string() + ": " + mismatch + " in " + files.images[0].string());
        }
        std::copy(volume.values.begin(), volume.values.end(), result.image(m));
    }
    if (!files.labels.empty()) {
        NiftiVolume volume = read_nifti(files.labels);
        if (const std::string mismatch = detail::geometry_mismatch(result.geometry, volume.geometry, options);
            !mismatch.empty())
            throw DataError(volume.path.string() + ": " + mismatch + " in " + files.images[0].string());
        const data::LabelMap map = options.label_map.value_or(data::LabelMap::for_edition(files.edition()));
        result.labels = map.apply(volume.values.data(), volume.values.size(), volume.path.string());
    }
    result.crop.begin = {0, 0, 0};
    result.crop.end = {result.extent.x, result.extent.y, result.extent.z};
    return result;
}

inline data::Case read_case(const fs::path& folder, const ReadOptions& options = {}) {
    return read_case(case_files(folder), options);
}

// ---------------------------------------------------------------------------------------------
// Writers

struct WriteOptions {
    bool compress = true;                             // .nii.gz, else .nii
    VoxelType image_type = VoxelType::float32;        // int16/uint8 need integral values
    VoxelType label_type = VoxelType::uint8;
    std::optional<data::LabelMap> label_map;          // default: the naming's edition
};

namespace detail {

// The geometry to write and where the case's arrays lie in it. A case without geometry (extent
// 0) is written as it is, with identity orientation codes left at 0.
inline std::pair<data::Geometry, data::CropBox> output_frame(const data::VolumeExtent& extent, const data::Geometry& geometry,
                                                             const data::CropBox& crop, const std::string& name) {
    data::Geometry out = geometry;
    data::CropBox box = crop;
    if (out.extent.voxels() == 0) out.extent = extent;
    if (box.extent().voxels() == 0 && box.begin == std::array<int, 3>{0, 0, 0}) box.end = {extent.x, extent.y, extent.z};
    if (box.extent() != extent)
        throw DataError(name + ": crop box extent differs from the case extent");
    for (int d = 0; d < 3; ++d) {
        const int limit = d == 0 ? out.extent.x : d == 1 ? out.extent.y : out.extent.z;
        if (box.begin[std::size_t(d)] < 0 || box.end[std::size_t(d)] > limit)
            throw DataError(name + ": crop box lies outside the original extent");
    }
    return {out, box};
}

template <class T>
std::vector<float> uncrop(const T* values, const data::VolumeExtent& extent, const data::Geometry& geometry,
                          const data::CropBox& box, float fill) {
    std::vector<float> full(geometry.extent.voxels(), fill);
    for (int z = 0; z < extent.z; ++z)
        for (int y = 0; y < extent.y; ++y) {
            const T* source = values + (std::size_t(z) * extent.y + y) * extent.x;
            float* target = full.data() + ((std::size_t(z + box.begin[2]) * geometry.extent.y + (y + box.begin[1])) *
                                               geometry.extent.x + box.begin[0]);
            for (int x = 0; x < extent.x; ++x) target[x] = float(source[x]);
        }
    return full;
}

inline fs::path case_file_path(const fs::path& folder, const std::string& id, Naming naming, int slot, bool compress) {
    return folder / (id + modality_suffixes(naming)[std::size_t(slot)] + (compress ? ".nii.gz" : ".nii"));
}

}  // namespace detail

// Writes a segmentation (canonical classes over a case's grid `extent`, placed at `crop` inside
// `geometry.extent`, background elsewhere) with the raw values of `label_map`.
inline void write_segmentation(const fs::path& file, const std::vector<std::uint8_t>& classes,
                               const data::VolumeExtent& extent, const data::Geometry& geometry,
                               const data::CropBox& crop, const data::LabelMap& label_map,
                               VoxelType type = VoxelType::uint8) {
    if (classes.size() != extent.voxels())
        throw DataError(file.string() + ": " + std::to_string(classes.size()) + " labels for a case of " +
                        std::to_string(extent.voxels()) + " voxels");
    const auto [frame, box] = detail::output_frame(extent, geometry, crop, file.string());
    const std::vector<std::uint8_t> raw = data::to_raw_labels(classes, label_map);
    write_nifti(file, detail::uncrop(raw.data(), extent, frame, box, float(label_map.raw_value(0))), frame, type);
}

// A prediction for `reference` (as read or loaded from the store) written back in its original
// geometry and the naming's edition labels: `<folder>/<id>_seg.nii.gz` or `<id>-seg.nii.gz`.
inline fs::path write_prediction(const fs::path& folder, const data::Case& reference,
                                 const std::vector<std::uint8_t>& classes, Naming naming, bool compress = true) {
    const fs::path file = detail::case_file_path(folder, reference.id, naming, kSegmentationSlot, compress);
    write_segmentation(file, classes, reference.extent, reference.geometry, reference.crop,
                       data::LabelMap::for_edition(edition_of(naming)));
    return file;
}

// Writes a whole case in `naming` into `folder` (created if needed); a cropped case is placed
// back into its original extent (zeros outside). Returns the files written.
inline CaseFiles write_case(const fs::path& folder, const data::Case& source, Naming naming,
                            const WriteOptions& options = {}) {
    if (source.id.empty()) throw DataError(folder.string() + ": cannot write a case without an id");
    if (source.images.size() != std::size_t(data::kModalityCount) * source.extent.voxels())
        throw DataError(folder.string() + "/" + source.id + ": images hold " + std::to_string(source.images.size()) +
                        " values, expected 4 x " + std::to_string(source.extent.voxels()));
    std::error_code error;
    fs::create_directories(folder, error);
    if (error) throw DataError(folder.string() + ": cannot create folder (" + error.message() + ")");
    CaseFiles files;
    files.id = source.id;
    files.naming = naming;
    files.folder = folder;
    for (int m = 0; m < data::kModalityCount; ++m) {
        const fs::path file = detail::case_file_path(folder, source.id, naming, m, options.compress);
        const auto [frame, box] = detail::output_frame(source.extent, source.geometry, source.crop, file.string());
        write_nifti(file, detail::uncrop(source.image(m), source.extent, frame, box, 0.0f), frame, options.image_type);
        files.images[std::size_t(m)] = file;
    }
    if (source.has_labels()) {
        files.labels = detail::case_file_path(folder, source.id, naming, kSegmentationSlot, options.compress);
        write_segmentation(files.labels, source.labels, source.extent, source.geometry, source.crop,
                           options.label_map.value_or(data::LabelMap::for_edition(edition_of(naming))),
                           options.label_type);
    }
    return files;
}

}  // namespace lightunet::io

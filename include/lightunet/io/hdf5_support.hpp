#pragma once
// What the HDF5 readers and writers share (Kaggle slices, the preprocessed store): RAII handles,
// one process-wide lock, the library's error stack turned into DataError messages that name the
// file and dataset, and small typed helpers.
//
// Locking: every HDF5 call happens under H5Lock. A serial (non-thread-safe) HDF5 build needs it;
// a thread-safe build serialises its API calls anyway, so the lock costs nothing there. The lock
// also switches off automatic error printing, which HDF5 keeps per thread.
#include <hdf5.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../data/labels.hpp"

namespace lightunet::io {

namespace detail {

inline std::recursive_mutex& hdf5_mutex() {
    static std::recursive_mutex mutex;
    return mutex;
}

class H5Lock {
public:
    H5Lock() : lock_(hdf5_mutex()) { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

private:
    std::lock_guard<std::recursive_mutex> lock_;
};

// The outermost descriptions of HDF5's error stack, and the operating system's message where
// one is on it (a full disk: "No space left on device"); then clears the stack.
inline std::string hdf5_error_text() {
    struct Found {
        std::string text, system;
    } found;
    H5Ewalk2(
        H5E_DEFAULT, H5E_WALK_DOWNWARD,
        [](unsigned depth, const H5E_error2_t* entry, void* data) -> herr_t {
            auto* out = static_cast<Found*>(data);
            if (entry->desc == nullptr || *entry->desc == '\0') return 0;
            const std::string description = entry->desc;
            static constexpr const char* kSystemMessage = "error message = '";
            if (const auto at = description.find(kSystemMessage); at != std::string::npos && out->system.empty()) {
                const auto begin = at + std::char_traits<char>::length(kSystemMessage);
                out->system = description.substr(begin, description.find('\'', begin) - begin);
            }
            if (depth < 3) out->text += (out->text.empty() ? "" : "; ") + description;
            return 0;
        },
        &found);
    H5Eclear2(H5E_DEFAULT);
    std::string text = found.text.empty() ? std::string("HDF5 error") : found.text;
    if (!found.system.empty() && text.find(found.system) == std::string::npos) text = found.system + ": " + text;
    return text;
}

[[noreturn]] inline void throw_hdf5(const std::string& context) {
    throw data::DataError(context + " (" + hdf5_error_text() + ")");
}

inline void check_hdf5(herr_t status, const std::string& context) {
    if (status < 0) throw_hdf5(context);
}

// An owned hid_t closed with the matching H5?close.
class H5Handle {
public:
    using Closer = herr_t (*)(hid_t);
    H5Handle() = default;
    H5Handle(hid_t id, Closer closer, const std::string& context) : id_(id), closer_(closer) {
        if (id_ < 0) throw_hdf5(context);
    }
    H5Handle(H5Handle&& other) noexcept : id_(std::exchange(other.id_, -1)), closer_(other.closer_) {}
    H5Handle& operator=(H5Handle&& other) noexcept {
        if (this != &other) {
            reset();
            id_ = std::exchange(other.id_, -1);
            closer_ = other.closer_;
        }
        return *this;
    }
    H5Handle(const H5Handle&) = delete;
    H5Handle& operator=(const H5Handle&) = delete;
    ~H5Handle() { reset(); }
    void reset() {
        if (id_ >= 0 && closer_ != nullptr) {
            H5Lock lock;
            closer_(id_);
        }
        id_ = -1;
    }
    hid_t get() const { return id_; }
    bool valid() const { return id_ >= 0; }

private:
    hid_t id_ = -1;
    Closer closer_ = nullptr;
};

inline H5Handle open_hdf5_read(const std::filesystem::path& path) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) throw data::DataError(path.string() + ": no such file");
    if (H5Fis_hdf5(path.c_str()) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        throw data::DataError(path.string() + ": not an HDF5 file");
    }
    return {H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, path.string() + ": cannot open as HDF5"};
}

inline H5Handle create_hdf5(const std::filesystem::path& path) {
    return {H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose,
            path.string() + ": cannot create HDF5 file"};
}

// An HDF5 file built in memory (the core driver, no backing file): nothing touches the disk
// until the caller writes file_image() itself, so a full disk or an I/O error is the caller's to
// see and handle, never a half-closed file inside libhdf5. `name` only names it in errors.
// A user block can be put before the image when it is written (HDF5 finds its signature at
// 512, 1024, ... bytes and reads the file from there, as after h5jam).
inline H5Handle create_hdf5_in_memory(const std::string& name) {
    H5Handle access(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, name + ": file access properties");
    check_hdf5(H5Pset_fapl_core(access.get(), std::size_t(1) << 20, false), name + ": in-memory driver");
    return {H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()), H5Fclose, name + ": cannot create HDF5 file in memory"};
}

// The bytes of an open file (flushed first).
inline std::vector<unsigned char> file_image(hid_t file, const std::string& context) {
    check_hdf5(H5Fflush(file, H5F_SCOPE_GLOBAL), context + ": flush");
    const ssize_t size = H5Fget_file_image(file, nullptr, 0);
    if (size < 0) throw_hdf5(context + ": file image");
    std::vector<unsigned char> image(static_cast<std::size_t>(size));
    if (H5Fget_file_image(file, image.data(), image.size()) != size) throw_hdf5(context + ": file image");
    return image;
}

inline H5Handle open_dataset(hid_t location, const std::string& name, const std::string& context) {
    if (H5Lexists(location, name.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        throw data::DataError(context + ": no dataset '" + name + "'");
    }
    return {H5Dopen2(location, name.c_str(), H5P_DEFAULT), H5Dclose, context + ": cannot open dataset '" + name + "'"};
}

inline H5Handle open_group(hid_t location, const std::string& name, const std::string& context) {
    if (H5Lexists(location, name.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        throw data::DataError(context + ": no group '" + name + "'");
    }
    return {H5Gopen2(location, name.c_str(), H5P_DEFAULT), H5Gclose, context + ": cannot open group '" + name + "'"};
}

inline H5Handle create_group(hid_t location, const std::string& name, const std::string& context) {
    return {H5Gcreate2(location, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
            context + ": cannot create group '" + name + "'"};
}

// The names of a group's members, at most `max_count` (a corrupt file may claim millions).
inline std::vector<std::string> group_members(hid_t group, const std::string& context, std::size_t max_count = 1u << 20) {
    H5G_info_t info{};
    check_hdf5(H5Gget_info(group, &info), context + ": cannot list the group");
    if (info.nlinks > max_count)
        throw data::DataError(context + ": group has " + std::to_string(info.nlinks) + " members, at most " + std::to_string(max_count) +
                              " expected");
    std::vector<std::string> names;
    check_hdf5(H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, nullptr,
                          [](hid_t, const char* member, const H5L_info_t*, void* data) -> herr_t {
                              static_cast<std::vector<std::string>*>(data)->emplace_back(member);
                              return 0;
                          },
                          &names),
               context + ": cannot list the group");
    return names;
}

inline std::vector<hsize_t> dataset_dims(hid_t dataset, const std::string& context) {
    H5Handle space(H5Dget_space(dataset), H5Sclose, context + ": no dataspace");
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0 || rank > 32) throw_hdf5(context + ": bad dataspace");
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) throw_hdf5(context + ": bad dataspace");
    return dims;
}

inline std::string dims_text(const std::vector<hsize_t>& dims) {
    std::string text = "(";
    for (std::size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
    return text + ")";
}

struct StoredType {
    H5T_class_t type_class = H5T_NO_CLASS;
    std::size_t bytes = 0;
    bool is_signed = false;
    std::string describe() const {
        if (type_class == H5T_FLOAT) return "float" + std::to_string(8 * bytes);
        if (type_class == H5T_INTEGER) return (is_signed ? "int" : "uint") + std::to_string(8 * bytes);
        constexpr const char* names[] = {"integer", "float", "time", "string", "bitfield", "opaque", "compound", "reference", "enum",
                                         "variable-length", "array"};
        return type_class >= 0 && type_class < int(std::size(names)) ? std::string("a ") + names[type_class] + " type"
                                                                       : std::string("an unknown type");
    }
};

inline StoredType dataset_type(hid_t dataset, const std::string& context) {
    H5Handle type(H5Dget_type(dataset), H5Tclose, context + ": no datatype");
    StoredType stored;
    stored.type_class = H5Tget_class(type.get());
    stored.bytes = H5Tget_size(type.get());
    if (stored.type_class == H5T_INTEGER) stored.is_signed = H5Tget_sign(type.get()) == H5T_SGN_2;
    return stored;
}

template <class T>
hid_t native_type() {
    if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
    else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
    else if constexpr (std::is_same_v<T, std::uint8_t>) return H5T_NATIVE_UINT8;
    else if constexpr (std::is_same_v<T, std::int32_t>) return H5T_NATIVE_INT32;
    else if constexpr (std::is_same_v<T, std::int64_t>) return H5T_NATIVE_INT64;
    else if constexpr (std::is_same_v<T, std::uint64_t>) return H5T_NATIVE_UINT64;
    else static_assert(!sizeof(T), "no HDF5 native type for this element type");
}

// A stored numeric type HDF5 converts to T without surprises: the same class (integer or
// float) and at most 8 bytes. Anything else (strings, variable-length, compound, references)
// is refused before HDF5 reads a byte of it: libhdf5 1.10 parses a variable-length element's
// heap on read and trusts a corrupt one.
template <class T>
void check_numeric_type(const StoredType& stored, const std::string& what, const std::string& context) {
    const H5T_class_t wanted = std::is_floating_point_v<T> ? H5T_FLOAT : H5T_INTEGER;
    if (stored.type_class != wanted || stored.bytes == 0 || stored.bytes > 8)
        throw data::DataError(context + ": " + what + " is " + stored.describe() + ", expected " +
                              (wanted == H5T_FLOAT ? "a float" : "an integer") + " type");
}

// Rejects storage layouts that disagree with the dataspace before any read: libhdf5 1.10 trusts
// a contiguous layout's size on corrupt files and copies past the caller's buffer (found by
// tests/fuzz/fuzz_hdf5).
inline void check_storage(hid_t dataset, const std::string& context) {
    const std::vector<hsize_t> dims = dataset_dims(dataset, context);
    hsize_t elements = 1;
    for (hsize_t d : dims) elements *= d;
    H5Handle type(H5Dget_type(dataset), H5Tclose, context + ": no datatype");
    const std::size_t element_bytes = H5Tget_size(type.get());
    H5Handle properties(H5Dget_create_plist(dataset), H5Pclose, context + ": no creation properties");
    const H5D_layout_t layout = H5Pget_layout(properties.get());
    if (layout == H5D_CONTIGUOUS || layout == H5D_COMPACT) {
        const hsize_t stored = H5Dget_storage_size(dataset);
        if (stored != 0 && stored != elements * element_bytes)
            throw data::DataError(context + ": corrupt storage (" + std::to_string(stored) + " bytes for " +
                                  std::to_string(elements) + " elements of " + std::to_string(element_bytes) + " bytes)");
    } else if (layout == H5D_CHUNKED) {
        const int rank = H5Pget_chunk(properties.get(), 0, nullptr);
        if (rank != int(dims.size())) throw data::DataError(context + ": corrupt chunk layout");
        std::vector<hsize_t> chunk(dims.size());
        H5Pget_chunk(properties.get(), rank, chunk.data());
        hsize_t chunk_bytes = element_bytes;
        for (std::size_t d = 0; d < dims.size(); ++d) {
            if (chunk[d] == 0 || chunk[d] > std::max<hsize_t>(dims[d], 1)) throw data::DataError(context + ": corrupt chunk layout");
            chunk_bytes *= chunk[d];
        }
        // Unfiltered chunks must hold exactly one chunk's bytes; libhdf5 1.10 reads a shorter one
        // into a buffer of its stored size and then copies a whole chunk out of it.
        if (H5Pget_nfilters(properties.get()) == 0) {
            hsize_t chunk_count = 0;
            check_hdf5(H5Dget_num_chunks(dataset, H5S_ALL, &chunk_count), context + ": cannot count chunks");
            std::vector<hsize_t> offset(dims.size());
            for (hsize_t c = 0; c < chunk_count; ++c) {
                unsigned filter_mask = 0;
                haddr_t address = 0;
                hsize_t size = 0;
                check_hdf5(H5Dget_chunk_info(dataset, H5S_ALL, c, offset.data(), &filter_mask, &address, &size),
                           context + ": cannot inspect chunk " + std::to_string(c));
                if (size != chunk_bytes)
                    throw data::DataError(context + ": corrupt chunk " + std::to_string(c) + " (" + std::to_string(size) +
                                          " bytes stored, " + std::to_string(chunk_bytes) + " expected)");
            }
        }
    } else {
        throw data::DataError(context + ": unsupported storage layout");
    }
}

// Reads a whole dataset (converted to T by HDF5) into `out`, which must have the right size.
template <class T>
void read_whole(hid_t dataset, std::vector<T>& out, const std::string& context) {
    check_storage(dataset, context);
    check_hdf5(H5Dread(dataset, native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), context + ": read failed");
}

// A whole numeric dataset of at most `max_elements` elements, after checking its type and
// storage; `dims` receives its shape.
template <class T>
std::vector<T> read_dataset(hid_t location, const std::string& name, std::vector<hsize_t>& dims, std::size_t max_elements,
                            const std::string& context) {
    const std::string where = context + ": dataset '" + name + "'";
    H5Handle dataset = open_dataset(location, name, context);
    dims = dataset_dims(dataset.get(), where);
    hsize_t elements = 1;
    for (const hsize_t d : dims) {
        if (d != 0 && elements > hsize_t(max_elements) / d)
            throw data::DataError(where + " has shape " + dims_text(dims) + ", more than " + std::to_string(max_elements) + " elements");
        elements *= d;
    }
    if (elements > max_elements)
        throw data::DataError(where + " has shape " + dims_text(dims) + ", more than " + std::to_string(max_elements) + " elements");
    check_numeric_type<T>(dataset_type(dataset.get(), where), "its type", where);
    std::vector<T> values(elements);
    if (elements > 0) read_whole(dataset.get(), values, where);
    return values;
}

// Creates a chunked, compressed dataset and writes `values` (row-major over `dims`).
template <class T>
void write_dataset(hid_t location, const std::string& name, const std::vector<hsize_t>& dims, const std::vector<hsize_t>& chunk,
                   hid_t file_type, const T* values, bool shuffle, int gzip_level, const std::string& context) {
    H5Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose, context + ": dataspace");
    H5Handle properties(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, context + ": properties");
    if (!chunk.empty()) {
        check_hdf5(H5Pset_chunk(properties.get(), int(chunk.size()), chunk.data()), context + ": chunking of '" + name + "'");
        if (shuffle) check_hdf5(H5Pset_shuffle(properties.get()), context + ": shuffle of '" + name + "'");
        if (gzip_level > 0) check_hdf5(H5Pset_deflate(properties.get(), unsigned(gzip_level)), context + ": gzip of '" + name + "'");
    }
    H5Handle dataset(H5Dcreate2(location, name.c_str(), file_type, space.get(), H5P_DEFAULT, properties.get(), H5P_DEFAULT),
                     H5Dclose, context + ": cannot create dataset '" + name + "'");
    hsize_t elements = 1;
    for (hsize_t d : dims) elements *= d;
    if (elements == 0) return;  // an empty list (e.g. no voxels of a class): nothing to write
    check_hdf5(H5Dwrite(dataset.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values),
               context + ": cannot write dataset '" + name + "'");
}

// Attributes: numeric arrays (a scalar is a 1-element array written as a scalar) and
// variable-length UTF-8 strings, which h5py reads as str.
template <class T>
void write_attribute(hid_t location, const std::string& name, const std::vector<T>& values, const std::string& context,
                     std::vector<hsize_t> dims = {}) {
    if (dims.empty() && values.size() != 1) dims = {hsize_t(values.size())};
    H5Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose,
                   context + ": attribute space");
    H5Handle attribute(H5Acreate2(location, name.c_str(), native_type<T>(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                       context + ": cannot create attribute '" + name + "'");
    check_hdf5(H5Awrite(attribute.get(), native_type<T>(), values.data()), context + ": cannot write attribute '" + name + "'");
}

inline H5Handle utf8_string_type(const std::string& context) {
    H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose, context + ": string type");
    check_hdf5(H5Tset_size(type.get(), H5T_VARIABLE), context + ": string type");
    check_hdf5(H5Tset_cset(type.get(), H5T_CSET_UTF8), context + ": string type");
    return type;
}

inline void write_string_attribute(hid_t location, const std::string& name, const std::vector<std::string>& values,
                                   const std::string& context, bool scalar = false) {
    H5Handle type = utf8_string_type(context);
    const hsize_t count = values.size();
    H5Handle space(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &count, nullptr), H5Sclose, context + ": attribute space");
    H5Handle attribute(H5Acreate2(location, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                       context + ": cannot create attribute '" + name + "'");
    std::vector<const char*> pointers;
    for (const std::string& value : values) pointers.push_back(value.c_str());
    if (pointers.empty()) return;  // an empty list: the attribute exists with no elements
    check_hdf5(H5Awrite(attribute.get(), type.get(), pointers.data()), context + ": cannot write attribute '" + name + "'");
}

inline H5Handle open_attribute(hid_t location, const std::string& name, const std::string& context) {
    if (H5Aexists(location, name.c_str()) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        throw data::DataError(context + ": no attribute '" + name + "'");
    }
    return {H5Aopen(location, name.c_str(), H5P_DEFAULT), H5Aclose, context + ": cannot open attribute '" + name + "'"};
}

// The number of elements of an attribute's dataspace (scalar: 1, null: 0), refusing counts over
// `max_count`.
inline std::size_t attribute_count(hid_t attribute, const std::string& name, std::size_t max_count, const std::string& context) {
    H5Handle space(H5Aget_space(attribute), H5Sclose, context + ": attribute '" + name + "' has no dataspace");
    const H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
    if (space_class == H5S_NULL) return 0;
    if (space_class != H5S_SCALAR && space_class != H5S_SIMPLE)
        throw data::DataError(context + ": attribute '" + name + "' has a corrupt dataspace");
    const hssize_t count = H5Sget_simple_extent_npoints(space.get());
    if (count < 0 || std::size_t(count) > max_count)
        throw data::DataError(context + ": attribute '" + name + "' holds " + std::to_string(count) + " values, at most " +
                              std::to_string(max_count) + " expected");
    return std::size_t(count);
}

inline StoredType attribute_type(hid_t attribute, const std::string& context) {
    H5Handle type(H5Aget_type(attribute), H5Tclose, context + ": no datatype");
    StoredType stored;
    stored.type_class = H5Tget_class(type.get());
    stored.bytes = H5Tget_size(type.get());
    if (stored.type_class == H5T_INTEGER) stored.is_signed = H5Tget_sign(type.get()) == H5T_SGN_2;
    return stored;
}

// A numeric attribute of `min_count` to `max_count` values; its count, class and size are
// checked before H5Aread.
template <class T>
std::vector<T> read_attribute(hid_t location, const std::string& name, std::size_t min_count, std::size_t max_count,
                              const std::string& context) {
    H5Handle attribute = open_attribute(location, name, context);
    const std::size_t count = attribute_count(attribute.get(), name, std::size_t(1) << 20, context);
    if (count < min_count || count > max_count)
        throw data::DataError(context + ": attribute '" + name + "' holds " + std::to_string(count) + " values, expected " +
                              (min_count == max_count ? std::to_string(min_count)
                                                      : std::to_string(min_count) + " to " + std::to_string(max_count)));
    check_numeric_type<T>(attribute_type(attribute.get(), context + ": attribute '" + name + "'"), "attribute '" + name + "'", context);
    std::vector<T> values(count);
    if (count != 0)
        check_hdf5(H5Aread(attribute.get(), native_type<T>(), values.data()), context + ": cannot read attribute '" + name + "'");
    return values;
}

template <class T>
std::vector<T> read_attribute(hid_t location, const std::string& name, std::size_t expected_count, const std::string& context) {
    return read_attribute<T>(location, name, expected_count, expected_count, context);
}

inline std::vector<std::string> read_string_attribute(hid_t location, const std::string& name, const std::string& context) {
    H5Handle attribute = open_attribute(location, name, context);
    H5Handle stored_type(H5Aget_type(attribute.get()), H5Tclose, context + ": attribute type");
    if (H5Tget_class(stored_type.get()) != H5T_STRING || H5Tis_variable_str(stored_type.get()) <= 0)
        throw data::DataError(context + ": attribute '" + name + "' is not a variable-length string");
    const std::size_t count = attribute_count(attribute.get(), name, std::size_t(1) << 20, context);
    if (count == 0) return {};
    std::vector<char*> pointers(count, nullptr);
    H5Handle type = utf8_string_type(context);
    check_hdf5(H5Aread(attribute.get(), type.get(), pointers.data()), context + ": cannot read attribute '" + name + "'");
    std::vector<std::string> values;
    for (char* pointer : pointers) values.emplace_back(pointer != nullptr ? pointer : "");
    H5Handle memory_space(H5Screate_simple(1, std::array<hsize_t, 1>{hsize_t(count)}.data(), nullptr), H5Sclose,
                          context + ": space");
    H5Dvlen_reclaim(type.get(), memory_space.get(), H5P_DEFAULT, pointers.data());
    return values;
}

// A string attribute that must hold exactly one string.
inline std::string read_single_string_attribute(hid_t location, const std::string& name, const std::string& context) {
    std::vector<std::string> values = read_string_attribute(location, name, context);
    if (values.size() != 1)
        throw data::DataError(context + ": attribute '" + name + "' holds " + std::to_string(values.size()) + " strings, expected 1");
    return std::move(values[0]);
}

}  // namespace detail

}  // namespace lightunet::io

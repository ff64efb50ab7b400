// libFuzzer target: arbitrary bytes as an HDF5 file through the Kaggle slice reader (first byte
// even) or the store reader (odd). Anything but a clean return or a DataError is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include <lightunet/io/kaggle_h5.hpp>
#include <lightunet/io/store.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    static const std::filesystem::path folder = [] {
        auto path = std::filesystem::temp_directory_path() / ("lightunet-fuzz-hdf5-" + std::to_string(::getpid()));
        std::filesystem::create_directories(path);
        return path;
    }();
    const std::filesystem::path file = folder / "volume_1_slice_0.h5";
    if (std::FILE* out = std::fopen(file.c_str(), "wb")) {
        std::fwrite(data + 1, 1, size - 1, out);
        std::fclose(out);
    }
    try {
        if ((data[0] & 1) == 0) {
            lightunet::io::KaggleReadOptions options;
            const lightunet::io::KaggleSlice slice = lightunet::io::read_kaggle_slice(file, options);
            (void)slice;
        } else {
            const lightunet::io::StoreSource store(file);
            (void)store.source_manifest();
            for (std::size_t i = 0; i < store.size() && i < 4; ++i) {
                const auto extent = store.extent(i);
                if (extent.voxels() > (1u << 22)) continue;  // keep each input cheap
                (void)store.load(i);
                (void)store.foreground(i);
                (void)store.foreground_voxel(i, ~std::uint64_t(0));
            }
        }
    } catch (const lightunet::data::DataError&) {
    } catch (const std::out_of_range&) {
    }
    std::filesystem::remove(file);
    return 0;
}

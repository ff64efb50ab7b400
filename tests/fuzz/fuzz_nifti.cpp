// libFuzzer target: arbitrary bytes as a .nii (first byte even) or .nii.gz (odd) file through
// io::read_nifti. Anything but a clean return or a DataError is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include <lightunet/io/nifti.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    static const std::filesystem::path folder = [] {
        auto path = std::filesystem::temp_directory_path() / ("lightunet-fuzz-nifti-" + std::to_string(::getpid()));
        std::filesystem::create_directories(path);
        return path;
    }();
    const bool gzip = data[0] & 1;
    const std::filesystem::path file = folder / (gzip ? "input.nii.gz" : "input.nii");
    if (std::FILE* out = std::fopen(file.c_str(), "wb")) {
        std::fwrite(data + 1, 1, size - 1, out);
        std::fclose(out);
    }
    try {
        const lightunet::io::NiftiVolume volume = lightunet::io::read_nifti(file);
        (void)volume;
    } catch (const lightunet::data::DataError&) {
    }
    std::filesystem::remove(file);
    return 0;
}

#pragma once
// Helpers for the reader/writer tests: scratch folders, small deterministic cases, the shared
// real-data folder.
#include <catch2/catch.hpp>

#include <atomic>
#include <iostream>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include <lightunet/data/case.hpp>
#include <lightunet/data/labels.hpp>

#include "../test_paths.hpp"

// Catch2 2.x has no SKIP: print a line ctest recognises (SKIP_REGULAR_EXPRESSION "SKIPPED:"
// in tests/data/CMakeLists.txt) and leave the test case.
#define LIGHTUNET_SKIP(message)                                  \
    do {                                                         \
        std::cout << "SKIPPED: " << message << std::endl;        \
        return;                                                  \
    } while (false)

namespace lightunet::test {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed with its contents at scope exit.
class ScratchDir {
public:
    explicit ScratchDir(const std::string& tag) {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() /
                ("lightunet-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~ScratchDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }

private:
    fs::path path_;
};

// The shared real-data folder, from the environment at run time (tests/test_paths.hpp).
inline fs::path shared_data_dir() { return lightunet_test::shared_data_dir(); }

// A small case with integral intensities (exact in int16 and, below 256, in uint8), a
// "brain" box of nonzero voxels and a tumour with all three classes, with BraTS-like geometry.
inline data::Case make_test_case(const std::string& id, data::VolumeExtent extent, std::uint32_t seed,
                                 bool labelled = true, int max_intensity = 250) {
    data::Case c;
    c.id = id;
    c.extent = extent;
    c.images.assign(std::size_t(data::kModalityCount) * extent.voxels(), 0.0f);
    if (labelled) c.labels.assign(extent.voxels(), 0);
    std::mt19937 random(seed);
    std::uniform_int_distribution<int> intensity(1, max_intensity);
    const int cx = extent.x / 2, cy = extent.y / 2, cz = extent.z / 2;
    for (int z = 0; z < extent.z; ++z)
        for (int y = 0; y < extent.y; ++y)
            for (int x = 0; x < extent.x; ++x) {
                const std::size_t i = (std::size_t(z) * extent.y + y) * extent.x + x;
                const bool brain = x >= 2 && x < extent.x - 2 && y >= 3 && y < extent.y - 1 && z >= 1 && z < extent.z - 2;
                if (brain)
                    for (int m = 0; m < data::kModalityCount; ++m) c.image(m)[i] = float(intensity(random));
                if (!labelled || !brain) continue;
                const int d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy) + (z - cz) * (z - cz);
                c.labels[i] = d2 <= 1 ? 1 : d2 <= 4 ? 3 : d2 <= 9 ? 2 : 0;
            }
    c.geometry.extent = extent;
    c.geometry.spacing = {1.0f, 1.0f, 1.0f};
    c.geometry.qform_code = 1;
    c.geometry.sform_code = 1;
    c.geometry.sform = {{{-1, 0, 0, 0}, {0, -1, 0, double(extent.y - 1)}, {0, 0, 1, 0}}};
    c.geometry.quatern = {0.0f, 0.0f, 1.0f, 1.0f};
    c.geometry.qoffset = {0.0f, float(extent.y - 1), 0.0f};
    c.crop.begin = {0, 0, 0};
    c.crop.end = {extent.x, extent.y, extent.z};
    return c;
}

inline std::vector<char> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void write_bytes(const fs::path& path, const std::vector<char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
}

// Expects `action` to throw a DataError whose message contains `file_part` and `what_part`.
template <class Action>
void require_data_error(Action&& action, const std::string& file_part, const std::string& what_part) {
    try {
        action();
    } catch (const data::DataError& error) {
        const std::string message = error.what();
        INFO(message);
        CHECK(message.find(file_part) != std::string::npos);
        CHECK(message.find(what_part) != std::string::npos);
        return;
    }
    FAIL("no DataError (expected one naming " << file_part << " and '" << what_part << "')");
}

}  // namespace lightunet::test

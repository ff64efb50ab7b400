#pragma once
// Where the tests find files of the source tree and the shared real-data folder: read at run time
// from the environment, never compiled in, so that no absolute path of the checkout appears on
// a compile command line (ccache then hits for the same code checked out anywhere).
//
//   LIGHTUNET_SOURCE_DIR       the lightunet checkout (tests/fixtures/, ...). Required.
//   LIGHTUNET_SHARED_DATA_DIR  the real-data folder; default <LIGHTUNET_SOURCE_DIR>/../shared/data.
//
// ctest sets both on every test (ENVIRONMENT test property, see tests/CMakeLists.txt). To run a
// test executable by hand, set them first, e.g.
//   LIGHTUNET_SOURCE_DIR=$PWD build/release/tests/lightunet_tests
//
// Call these from inside a test case, not from a namespace-scope initializer: the test executables
// also run without the environment (catch_discover_tests lists their tests at build time).
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace lightunet_test {

// The value of the environment variable `name`, or an empty path when unset or empty.
inline std::filesystem::path env_path(const char* name) {
    const char* value = std::getenv(name);
    return (value != nullptr && *value != '\0') ? std::filesystem::path(value) : std::filesystem::path();
}

// The lightunet checkout. Throws std::runtime_error (Catch2 reports it as the test's failure)
// when LIGHTUNET_SOURCE_DIR is unset.
inline std::filesystem::path source_dir() {
    std::filesystem::path dir = env_path("LIGHTUNET_SOURCE_DIR");
    if (dir.empty())
        throw std::runtime_error(
            "LIGHTUNET_SOURCE_DIR is not set: run the tests through ctest, or set it to the lightunet "
            "checkout (e.g. LIGHTUNET_SOURCE_DIR=$PWD build/release/tests/lightunet_tests)");
    return dir;
}

// The shared real-data folder (it may not exist: the tests that need it then skip).
inline std::filesystem::path shared_data_dir() {
    std::filesystem::path dir = env_path("LIGHTUNET_SHARED_DATA_DIR");
    if (dir.empty()) dir = source_dir() / ".." / "shared" / "data";
    return dir;
}

}  // namespace lightunet_test

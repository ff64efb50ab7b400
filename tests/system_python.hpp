#pragma once
// The tests that read our HDF5 files with h5py (tests/data/test_store.cpp,
// tests/train/test_checkpoint.cpp) run Debian's Python, /usr/bin/python3 with the python3-h5py
// package (which brings python3-numpy). A `python3` found earlier on PATH (a pyenv or venv
// install) usually lacks h5py, so the path is fixed. These checks are part of the suite: when
// that Python or h5py is missing they FAIL with what to install (scripts/install-deps.sh lists
// python3-h5py and CI runs it); they never skip.
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include <unistd.h>

#ifndef LIGHTUNET_SYSTEM_PYTHON
#define LIGHTUNET_SYSTEM_PYTHON "/usr/bin/python3"
#endif

namespace lightunet::test {

inline const char* system_python() { return LIGHTUNET_SYSTEM_PYTHON; }

// Empty when system_python() imports h5py and numpy; otherwise what is wrong and how to fix it.
inline std::string h5py_problem() {
    const std::string python = system_python();
    const std::string fix = "install python3-h5py (apt-get install python3-h5py, or scripts/install-deps.sh)";
    if (::access(python.c_str(), X_OK) != 0) return python + " not found: " + fix;
    const std::string command = python + " -c 'import h5py, numpy' 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) return "cannot run " + command;
    std::string output;
    char buffer[256];
    while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
    const int status = ::pclose(pipe);
    if (status == 0) return {};
    while (!output.empty() && output.back() == '\n') output.pop_back();
    const auto last_line = output.rfind('\n');
    return python + " cannot import h5py and numpy (" + output.substr(last_line == std::string::npos ? 0 : last_line + 1) +
           "): " + fix;
}

}  // namespace lightunet::test

// Fails the current test case unless system_python() has h5py.
#define LIGHTUNET_REQUIRE_H5PY()                                                     \
    do {                                                                             \
        const std::string lightunet_h5py_problem_ = ::lightunet::test::h5py_problem(); \
        if (!lightunet_h5py_problem_.empty()) FAIL(lightunet_h5py_problem_);         \
    } while (false)

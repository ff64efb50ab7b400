#pragma once
// Helpers shared by the training tests: a scratch folder per test and tiny synthetic data.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

#include "lightunet/model/init.hpp"
#include "lightunet/tensor/tensor.hpp"

namespace lightunet::test {

// A fresh folder under the system temp dir, removed with its contents at scope exit.
class ScratchDir {
public:
    explicit ScratchDir(const std::string& tag) {
        static int counter = 0;
        path_ = std::filesystem::temp_directory_path() /
                ("lightunet_train_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        std::filesystem::remove_all(path_);
        std::filesystem::create_directories(path_);
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string str() const { return path_.string(); }
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

// Images of one channel: a bright disc (class 1) on a noisy background, size s x s, batch n;
// the disc's centre and radius come from (seed, index), so a batch is a pure function of them.
inline void make_blobs(std::uint64_t seed, long index, int n, int s, Tensor<float>& x, Tensor<std::uint8_t>& y) {
    x.resize({n, 1, 1, s, s});
    y.resize({n, 1, 1, s, s});
    InitRng rng(seed * 1000003ull + std::uint64_t(index) * 7919ull + 17);
    for (int b = 0; b < n; ++b) {
        const double cx = s * (0.3 + 0.4 * rng.uniform()), cy = s * (0.3 + 0.4 * rng.uniform());
        const double r = s * (0.12 + 0.12 * rng.uniform());
        for (int i = 0; i < s; ++i)
            for (int j = 0; j < s; ++j) {
                const bool in = (i - cy) * (i - cy) + (j - cx) * (j - cx) <= r * r;
                x.at(b, 0, 0, i, j) = float((in ? 1.0 : 0.0) + 0.3 * rng.normal());
                y.at(b, 0, 0, i, j) = in ? 1 : 0;
            }
    }
}

}  // namespace lightunet::test

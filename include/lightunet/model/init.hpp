#pragma once
// Seeded initialisation that gives the same weights on every platform: splitmix64 bits and a
// Box-Muller normal, rather than std:: distributions whose algorithms are unspecified.
#include <cmath>
#include <cstdint>
#include <numbers>

#include "../detail/splitmix64.hpp"

namespace lightunet {

class InitRng {
public:
    explicit InitRng(std::uint64_t seed) : bits_(seed) {}
    std::uint64_t next() { return bits_.next(); }
    double uniform() { return bits_.uniform(); }  // [0, 1)
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = 1.0 - uniform(), u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1));
        spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
        has_spare_ = true;
        return r * std::cos(2.0 * std::numbers::pi * u2);
    }
    std::uint64_t state() const { return bits_.state(); }

private:
    detail::SplitMix64 bits_;
    double spare_ = 0;
    bool has_spare_ = false;
};

}  // namespace lightunet

#pragma once
// splitmix64: the one generator behind weight initialisation, synthetic data, the loader and
// the tests. Fixed bits for a fixed seed on every platform (std:: distributions are not).
#include <cstdint>

namespace lightunet::detail {

// splitmix64's finaliser: a bijection on 64-bit words with full avalanche.
constexpr std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

inline constexpr std::uint64_t golden_gamma = 0x9e3779b97f4a7c15ULL;

// The generator: 2^64 period, each output the finalised Weyl sequence.
class SplitMix64 {
public:
    explicit constexpr SplitMix64(std::uint64_t seed) : state_(seed) {}
    constexpr std::uint64_t next() { return mix64(state_ += golden_gamma); }
    // Uniform in [0, 1) with 53 random bits.
    constexpr double uniform() { return double(next() >> 11) * 0x1.0p-53; }
    constexpr std::uint64_t state() const { return state_; }

private:
    std::uint64_t state_;
};

}  // namespace lightunet::detail

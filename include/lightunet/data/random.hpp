#pragma once
// Counter-based random numbers for data generation and loading. A stream is a pure function of
// its key (seed, epoch, batch, item, ...), so results never depend on thread timing or on how
// many numbers other streams drew.
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "../detail/splitmix64.hpp"

namespace lightunet::data {

using detail::mix64;

// Hashes a key of several words into one seed; order matters, (a, b) != (b, a).
constexpr std::uint64_t hash_key(std::initializer_list<std::uint64_t> words) {
    std::uint64_t h = 0x6a09e667f3bcc909ULL;
    for (std::uint64_t w : words) h = mix64(h ^ mix64(w + detail::golden_gamma));
    return h;
}

// splitmix64 with the draws sampling and augmentation need.
class SplitMix64 : public detail::SplitMix64 {
public:
    using detail::SplitMix64::SplitMix64;
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    using detail::SplitMix64::uniform;
    // Log-uniform in [lo, hi], lo > 0: scales spread evenly over ratios.
    double log_uniform(double lo, double hi) { return lo * std::exp(std::log(hi / lo) * uniform()); }
    // Uniform integer in [0, n), n > 0 (multiply-shift, bias below 2^-32 for n < 2^32).
    std::uint64_t below(std::uint64_t n) { return std::uint64_t((unsigned __int128)next() * n >> 64); }
    bool bernoulli(double p) { return uniform() < p; }
};

// Approximately standard normal from one 64-bit word: the sum of four 16-bit uniforms
// (Irwin-Hall, variance 4/12), rescaled. Tails end at +-3.46, which noise does not miss.
inline float normal_from_bits(std::uint64_t bits) {
    const float sum = float(bits & 0xffff) + float((bits >> 16) & 0xffff) + float((bits >> 32) & 0xffff) +
                      float(bits >> 48);
    constexpr float mean = 4 * 65535.0f / 2, inv_std = 1.7320508f / 65536.0f;  // sqrt(12/4) / 2^16
    return (sum - mean) * inv_std;
}

}  // namespace lightunet::data

#pragma once
// Small helpers shared by the unit tests: a seeded generator that gives the same numbers on
// every platform (std:: distributions do not), filling tensors, and catching exceptions.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#include <lightunet/config/unet_config.hpp>
#include <lightunet/detail/splitmix64.hpp>

namespace lightunet::testing {

// splitmix64: fixed bits for a fixed seed, whatever the standard library.
class Rng {
public:
    explicit Rng(std::uint64_t seed) : bits_(seed) {}
    std::uint64_t next() { return bits_.next(); }
    double uniform() { return bits_.uniform(); }  // [0, 1)
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    std::size_t index(std::size_t n) { return std::size_t(next() % n); }
    double normal() {  // Box-Muller
        const double u1 = 1.0 - uniform(), u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }

private:
    detail::SplitMix64 bits_;
};

// A fixture file of raw values of T (native byte order), whole.
template <class T>
std::vector<T> read_raw(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    INFO("reading " << path);
    REQUIRE(f.good());
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    REQUIRE(bytes.size() % sizeof(T) == 0);
    std::vector<T> v(bytes.size() / sizeof(T));
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
}

template <class Range>
void fill_uniform(Range& r, Rng& rng, double lo = -1.0, double hi = 1.0) {
    for (auto& v : r) v = static_cast<std::remove_reference_t<decltype(v)>>(rng.uniform(lo, hi));
}

inline std::vector<double> random_vector(std::size_t n, Rng& rng, double lo = -1.0, double hi = 1.0) {
    std::vector<double> v(n);
    fill_uniform(v, rng, lo, hi);
    return v;
}

template <class A, class B>
double dot(const A& a, const B& b) {
    REQUIRE(std::size(a) == std::size(b));
    double s = 0;
    auto ib = std::begin(b);
    for (auto ia = std::begin(a); ia != std::end(a); ++ia, ++ib) s += double(*ia) * double(*ib);
    return s;
}

// Runs f, requires that it throws E, and returns the exception's message.
template <class E, class F>
std::string thrown_message(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    } catch (const std::exception& e) {
        FAIL("threw an exception of another type: " << e.what());
        return {};
    }
    FAIL("did not throw");
    return {};
}

// The parameter tensors of a configuration in the order and sizes of docs/design.md, written
// out independently of the library's own layout code.
struct Segment {
    std::string name;
    std::size_t offset = 0, size = 0;
};

inline std::vector<Segment> parameter_segments(const UNetConfig& c) {
    std::vector<Segment> s;
    std::size_t offset = 0;
    auto add = [&](std::string name, std::size_t size) {
        s.push_back({std::move(name), offset, size});
        offset += size;
    };
    const std::size_t taps = c.dims == 3 ? 27 : 9, cell = c.dims == 3 ? 8 : 4;
    auto conv = [&](const std::string& name, std::size_t cin, std::size_t cout, std::size_t k) {
        add(name + ".weight", cout * cin * k);
        add(name + ".bias", cout);
    };
    auto norm = [&](const std::string& name, std::size_t ch) {
        if (c.norm == Norm::none) return;
        add(name + ".weight", ch);
        add(name + ".bias", ch);
    };
    const int depth = c.depth();
    for (int l = 0; l < depth; ++l) {
        const std::string p = "enc" + std::to_string(l);
        const std::size_t cin = std::size_t(l == 0 ? c.in_channels : c.widths[l - 1]), w = std::size_t(c.widths[l]);
        if (l > 0 && c.down == Down::strided_conv) conv(p + ".down", cin, cin, cell);
        if (c.encoder == Encoder::plain) {
            conv(p + ".conv1", cin, w, taps);
            norm(p + ".norm1", w);
            conv(p + ".conv2", w, w, taps);
            norm(p + ".norm2", w);
            continue;
        }
        // Residual blocks (0 blocks means 1): the first takes the level's input; a skip whose
        // channels change is projected by a 1x1 conv and a norm.
        const int blocks = c.encoder_blocks[l] > 0 ? c.encoder_blocks[l] : 1;
        for (int b = 0; b < blocks; ++b) {
            const std::string q = p + ".block" + std::to_string(b);
            const std::size_t in = b == 0 ? cin : w;
            conv(q + ".conv1", in, w, taps);
            norm(q + ".norm1", w);
            conv(q + ".conv2", w, w, taps);
            norm(q + ".norm2", w);
            if (in != w) {
                conv(q + ".skip.conv", in, w, 1);
                norm(q + ".skip.norm", w);
            }
        }
    }
    for (int l = depth - 2; l >= 0; --l) {
        const std::string p = "dec" + std::to_string(l);
        const std::size_t below = std::size_t(c.widths[l + 1]), w = std::size_t(c.widths[l]);
        if (c.up == Up::transposed_conv) conv(p + ".up", below, w, cell);  // [below][w][cell]: same count
        else conv(p + ".up", below, w, 1);
        conv(p + ".conv1", 2 * w, w, taps);
        norm(p + ".norm1", w);
        conv(p + ".conv2", w, w, taps);
        norm(p + ".norm2", w);
    }
    conv("head", std::size_t(c.widths[0]), std::size_t(c.classes), 1);
    // Deep supervision: a 1x1 head on decoder levels 1 .. depth-3, after the top head.
    if (c.deep_supervision)
        for (int l = 1; l <= depth - 3; ++l) conv("aux" + std::to_string(l - 1), std::size_t(c.widths[l]), std::size_t(c.classes), 1);
    return s;
}

}  // namespace lightunet::testing

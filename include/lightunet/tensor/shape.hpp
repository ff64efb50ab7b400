#pragma once
#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace lightunet {

// N, C, D, H, W. A 2D tensor has D = 1.
struct Shape {
    int n = 0, c = 0, d = 0, h = 0, w = 0;

    constexpr std::size_t spatial() const { return std::size_t(d) * h * w; }
    constexpr std::size_t size() const { return std::size_t(n) * c * spatial(); }
    constexpr bool operator==(const Shape&) const = default;

    // Appends rather than `"(" + to_string(...)`, which GCC 12 misreports (-Wrestrict, PR 105651).
    std::string str() const {
        std::string s = "(";
        for (int v : {n, c, d, h, w}) s.append(std::to_string(v)).append(", ");
        s.resize(s.size() - 2);
        return s.append(")");
    }
};

// Spatial extent of one channel plane.
struct Extent {
    int d = 1, h = 1, w = 1;
    constexpr std::size_t size() const { return std::size_t(d) * h * w; }
    constexpr bool operator==(const Extent&) const = default;
};

constexpr Extent extent_of(const Shape& s) { return {s.d, s.h, s.w}; }

class ShapeError : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

}  // namespace lightunet

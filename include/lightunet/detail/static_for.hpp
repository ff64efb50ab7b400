#pragma once
#include <type_traits>
#include <utility>

namespace lightunet::detail {

// Unrolls a loop of compile-time length so register tiles stay in registers.
template <int N, class F>
inline void static_for(F&& f) {
    [&]<int... I>(std::integer_sequence<int, I...>) {
        (f(std::integral_constant<int, I>{}), ...);
    }(std::make_integer_sequence<int, N>{});
}

constexpr std::ptrdiff_t round_up(std::ptrdiff_t x, std::ptrdiff_t m) { return (x + m - 1) / m * m; }
constexpr std::ptrdiff_t ceil_div(std::ptrdiff_t x, std::ptrdiff_t m) { return (x + m - 1) / m; }

}  // namespace lightunet::detail

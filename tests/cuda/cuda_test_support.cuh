#pragma once
// Helpers for CPU-vs-CUDA tests: device tensors from host vectors, host copies, comparisons
// with a per-element bound.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <lightunet/backend/cpu/kernels.hpp>
#include <lightunet/backend/cuda/kernels.cuh>
#include <lightunet/tensor/tensor.hpp>

#include "../test_support.hpp"

namespace lightunet::testing {

template <class T>
Tensor<T, cuda> device_copy(const std::vector<T>& v) {
    Tensor<T, cuda> t({1, 1, 1, 1, int(std::max<std::size_t>(1, v.size()))});
    cuda::upload(t.data(), v.data(), v.size());
    return t;
}

template <class T>
std::vector<T> host_copy(const Tensor<T, cuda>& t, std::size_t count) {
    std::vector<T> v(count);
    cuda::download(v.data(), t.data(), count);
    return v;
}

template <class T>
std::vector<T> random_values(std::size_t n, Rng& rng, double lo = -1.0, double hi = 1.0) {
    std::vector<T> v(n);
    for (auto& x : v) x = T(rng.uniform(lo, hi));
    return v;
}

// |got - want| <= bound[i] for every i; reports the worst element. Empty vectors pass (the
// second sink of a one-source convolution has no channels): the report below indexes element
// `worst`, which an empty vector does not have (reading it crashed the test on the host).
template <class T>
void check_within(const std::vector<T>& got, const std::vector<T>& want, const std::vector<double>& bound, const std::string& what) {
    REQUIRE(got.size() == want.size());
    REQUIRE(bound.size() == want.size());
    if (want.empty()) return;
    std::size_t worst = 0, failures = 0;
    double worst_ratio = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double d = std::abs(double(got[i]) - double(want[i]));
        const double ratio = bound[i] > 0 ? d / bound[i] : (d > 0 ? INFINITY : 0);
        if (!(d <= bound[i])) ++failures;
        if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
    }
    INFO(what << ": " << failures << " of " << got.size() << " outside the bound; worst at " << worst << ": got "
              << double(got[worst]) << ", want " << double(want[worst]) << ", bound " << bound[worst]);
    CHECK(failures == 0);
}

// Bound rtol * |want| + atol.
template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol, const std::string& what) {
    std::vector<double> bound(want.size());
    for (std::size_t i = 0; i < want.size(); ++i) bound[i] = rtol * std::abs(double(want[i])) + atol;
    check_within(got, want, bound, what);
}

// Relative error in the 2-norm: ||got - want|| / ||want||.
template <class T>
double relative_error(const std::vector<T>& got, const std::vector<T>& want) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        num += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
        den += double(want[i]) * double(want[i]);
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace lightunet::testing

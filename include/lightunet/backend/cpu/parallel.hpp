#pragma once
// Work items are partitioned statically and each writes only its own outputs, so results do
// not depend on the number of threads.
#include <cstddef>

#include "geometry.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

inline int thread_count() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline void set_thread_count(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

template <class F>
void parallel_for(std::ptrdiff_t count, F&& f) {
#ifdef _OPENMP
    if (count > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
        for (std::ptrdiff_t i = 0; i < count; ++i) f(i);
        return;
    }
#endif
    for (std::ptrdiff_t i = 0; i < count; ++i) f(i);
}

// Splits [0, count) into one contiguous range per thread, f(begin, end) once per thread: for
// loops whose threads must each keep the same items across several passes without a barrier.
template <class F>
void parallel_ranges(std::ptrdiff_t count, F&& f) {
#ifdef _OPENMP
    if (count > 1 && !omp_in_parallel()) {
#pragma omp parallel
        {
            const std::ptrdiff_t t = omp_get_thread_num(), n = omp_get_num_threads();
            f(count * t / n, count * (t + 1) / n);
        }
        return;
    }
#endif
    f(std::ptrdiff_t(0), count);
}

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

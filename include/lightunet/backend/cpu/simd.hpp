#pragma once
// Kernels are written once against xsimd::batch<T, Arch>; the architecture is the compile
// target's unless LIGHTUNET_CPU_ARCH names another xsimd tag (e.g. xsimd::avx2).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "geometry.hpp"

namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET {

#ifdef LIGHTUNET_CPU_ARCH
using Arch = LIGHTUNET_CPU_ARCH;
#else
using Arch = xsimd::default_arch;
#endif

template <class T>
using Batch = xsimd::batch<T, Arch>;

template <class T>
inline constexpr int lanes = int(Batch<T>::size);

// Register tiles: 32 vector registers with AVX-512, 16 otherwise.
inline constexpr bool wide_register_file = sizeof(Batch<float>) >= 64;

// Batch<double>::size values of T as doubles: the double sums of float data (statistics,
// gradients of the normalisation) written as batches, so that every target vectorises them
// whatever the compiler's cost model makes of a reduction loop under its tuning.
template <class T>
inline Batch<double> load_as_double(const T* p) {
    return Batch<double>::load_unaligned(p);  // from float: xsimd converts
}

// The lanes<T> partial sums at `lane` added pairwise (halves, then quarters, ...): one order
// whatever the compiler makes of a reduction, and no xsimd::hadd, whose AVX-512 double reduction
// GCC 12 warns about.
template <class T>
T sum_lanes(const T* lane) {
    T half[lanes<T>];
    std::copy(lane, lane + lanes<T>, half);
    for (int width = lanes<T> / 2; width > 0; width /= 2)
        for (int i = 0; i < width; ++i) half[i] += half[i + width];
    return half[0];
}
template <class T>
T sum_lanes(const Batch<T>& partial) {
    alignas(sizeof(Batch<T>)) T lane[lanes<T>];
    partial.store_aligned(lane);
    return sum_lanes(static_cast<const T*>(lane));
}

// The activations by their negative slope (ReLU 0, leaky ReLU its slope, identity 1), which
// lies in [0, 1] (ValidConfig), so the activation is max(v, v * slope), and slope 1 returns v
// itself: one formula for the normalisation's pass and every convolution output store, so a
// folded batch norm activates as the unfolded one. A max, not a select on the sign: with the
// select's compare and blend (and its scalar branch in the runs' tails) the folded 2D bf16
// inference ran no faster than the unfolded one (bench_unet, alternated with 2921b46); with the
// max, 0.93 of its time (docs/performance.md, sixth session).
template <class T>
inline T activate(T v, T slope) {
    return std::max(v, v * slope);
}
// GCC 12 flags the _mm512_undefined_ps pass-through operand of AVX-512's max as (maybe)
// uninitialised wherever this is inlined (as in resample.hpp; fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
template <class T>
inline Batch<T> activate(const Batch<T>& v, const Batch<T>& slope) {
    return xsimd::max(v, v * slope);
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic pop
#endif

inline constexpr std::ptrdiff_t cache_line_bytes = 64;

// Asks for the cache line `bytes` past p, for loops that stream a large array once: on the
// Zen 5 host the hardware prefetchers left the bf16 padding of a 16-channel 128^3 volume at a
// third of the memory's speed (13.5 ms; 3.8 ms with this 4 KiB ahead). The address is formed as
// an integer: it may lie past the array, which a prefetch never reads from.
inline void prefetch_ahead(const void* p, std::ptrdiff_t bytes) {
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + std::uintptr_t(bytes)), 0, 3);
}
inline constexpr std::ptrdiff_t stream_prefetch_bytes = 4096;

// prefetch_ahead for each cache line of a row of `bytes` that a loop is about to stream, asked
// before the loop: the row's loop then needs no test of where a line begins.
inline void prefetch_row_ahead(const void* row, std::ptrdiff_t bytes) {
    for (std::ptrdiff_t at = 0; at < bytes; at += cache_line_bytes) prefetch_ahead(row, stream_prefetch_bytes + at);
}

// This compilation's geometry: the default of every size function.
inline constexpr VectorGeometry geometry{lanes<float>, lanes<double>, wide_register_file};

}  // namespace lightunet::cpu_kernels::inline LIGHTUNET_CPU_TARGET

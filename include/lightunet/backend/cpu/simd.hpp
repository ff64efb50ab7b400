#pragma once
// Kernels are written once against xsimd::batch<T, Arch>; the architecture is the compile
// target's unless LIGHTUNET_CPU_ARCH names another xsimd tag (e.g. xsimd::avx2).
#include <xsimd/xsimd.hpp>

namespace lightunet::cpu_kernels {

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

}  // namespace lightunet::cpu_kernels

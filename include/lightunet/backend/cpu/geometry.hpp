#pragma once
// What the CPU kernels' scratch sizes depend on: the vector width per scalar type and the
// register file (32 vector registers with AVX-512 allow larger register tiles). Sizes are
// constexpr functions of a VectorGeometry, so a program whose kernels are chosen at run time
// (cpu_targets.hpp) can size its workspaces at compile time for every target it carries.
#include <cstddef>

// The namespace the CPU kernels are compiled into: each instruction-set variant of a program
// that carries several (cpu_targets.hpp) compiles them into its own, so the variants never share
// a symbol; a header-only build compiles them once, into `native`.
#ifndef LIGHTUNET_CPU_TARGET
#define LIGHTUNET_CPU_TARGET native
#endif

namespace lightunet::cpu_kernels {

struct VectorGeometry {
    int float_lanes = 1;
    int double_lanes = 1;
    bool wide_register_file = false;
    friend constexpr bool operator==(const VectorGeometry&, const VectorGeometry&) = default;

    constexpr int lanes(std::size_t scalar_bytes) const { return scalar_bytes == sizeof(double) ? double_lanes : float_lanes; }
    // Register tiles. Fprop: fprop_rows output channels x fprop_vectors vectors of voxels.
    // Wgrad: wgrad_rows output channels x wgrad_pairs (input channel, tap) pairs. With 16
    // registers, 2 x 6 (12 accumulators, 8 loads per 12 FMAs) measured 11-19 % faster backward
    // passes than 1 x 9 (10 loads per 9 FMAs) on a Zen 3 AVX2 host.
    constexpr int fprop_rows() const { return wide_register_file ? 8 : 4; }
    static constexpr int fprop_vectors = 3;
    constexpr int wgrad_rows() const { return wide_register_file ? 3 : 2; }
    constexpr int wgrad_pairs() const { return wide_register_file ? 9 : 6; }
    // The direct Wgrad's tile: 2 vectors of output channels x (input channel, tap) pairs, each
    // accumulator a vector of weight gradients (2 x 12: 24 of the 32 registers; 2 x 6 of 16).
    static constexpr int blocked_wgrad_rows = 2;
    constexpr int blocked_wgrad_pairs() const { return wide_register_file ? 12 : 6; }
};

// The instruction sets a program can carry kernels for (cpu_targets.hpp).
inline constexpr VectorGeometry sse4_2_geometry{4, 2, false};
inline constexpr VectorGeometry avx2_geometry{8, 4, false};
inline constexpr VectorGeometry avx512_geometry{16, 8, true};

}  // namespace lightunet::cpu_kernels

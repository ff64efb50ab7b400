#pragma once
// One program, CPU kernels for several instruction sets, one chosen per process at run time.
//
// A header-only build compiles the kernels once, for the flags of the including file (-march,
// or LIGHTUNET_CPU_ARCH). Linking lightunet::cpu_targets (a compiled library) instead carries
// them for SSE4.2 (x86-64-v2), AVX2 + FMA (x86-64-v3) and AVX-512 (x86-64-v4), each compiled
// into its own namespace (geometry.hpp's LIGHTUNET_CPU_TARGET) so that no symbol is shared, and
// defines LIGHTUNET_CPU_DISPATCH: Kernels<cpu> then calls the kernels of the target that
// selected_cpu_target() chose, the best this CPU runs, or the one LIGHTUNET_CPU_TARGET names
// (sse4.2, avx2, avx512) for tests and benchmarks. Workspaces are sized for the largest need of
// any carried target (every size is a constexpr function of a VectorGeometry).
#include <cstddef>
#include <cstdint>
#include <span>

#include "../../config/unet_config.hpp"
#include "../../dist/cross_batch.hpp"
#include "../../loss/dice.hpp"
#include "../../optim/step.hpp"
#include "../conv_problem.hpp"
#include "../norm_problem.hpp"
#include "geometry.hpp"

namespace lightunet::cpu_kernels {

// Every kernel of one scalar type, as compiled for one target (signatures: the kernels' own).
template <class T>
struct KernelTable {
    void (*conv_prepare)(const ConvProblem&, const T*, T*, const T*);
    void (*conv_forward_prepared)(const ConvProblem&, int, std::span<const ChannelSource<T>>, const T*, const T*, T*,
                                  std::ptrdiff_t, T*, const Activation&);
    void (*conv_forward)(const ConvProblem&, int, std::span<const ChannelSource<T>>, const T*, const T*, T*, std::ptrdiff_t,
                         T*);
    void (*conv_backward)(const ConvProblem&, int, std::span<const ChannelSource<T>>, const T*, const T*, std::ptrdiff_t,
                          std::span<const ChannelSink<T>>, T*, T*, T*);
    void (*max_pool_forward)(const Cells&, std::ptrdiff_t, const T*, T*);
    void (*max_pool_backward)(const Cells&, std::ptrdiff_t, const T*, const T*, T*, bool);
    void (*space_to_depth)(const Cells&, std::ptrdiff_t, const T*, T*);
    void (*depth_to_space)(const Cells&, std::ptrdiff_t, int, const T*, const T*, T*, bool);
    void (*upsample_nearest_forward)(const Cells&, std::ptrdiff_t, const T*, T*);
    void (*upsample_nearest_backward)(const Cells&, std::ptrdiff_t, const T*, T*);
    void (*subsample_nearest)(const Cells&, std::ptrdiff_t, const T*, T*);
    void (*add_act_forward)(std::ptrdiff_t, const T*, const T*, T, T*);
    void (*add_act_backward)(std::ptrdiff_t, const T*, const T*, T, T*, bool, T*, bool);
    void (*norm_act_forward)(const NormGrouping&, const Activation&, const T*, const T*, const T*, T*, T*, T*, T*, T*,
                             NormStats, CrossBatch*, double, double);
    void (*norm_act_backward)(const NormGrouping&, const Activation&, const T*, const T*, const T*, const T*, const T*,
                              const T*, T*, T*, T*, T*, CrossBatch*);
    void (*softmax_channels)(int, int, std::ptrdiff_t, const T*, T*);
    void (*sigmoid)(std::ptrdiff_t, const T*, T*);
    double (*dice_loss)(Head, int, int, std::ptrdiff_t, const T*, const std::uint8_t*, const DiceLoss&, T*, double*,
                        CrossBatch*);
    double (*squared_norm)(std::ptrdiff_t, const T*, double*);
    void (*scale)(std::ptrdiff_t, T*, T);
    void (*adam_update)(std::ptrdiff_t, T*, const T*, T*, T*, const optim::AdamStep&);
    void (*sgd_update)(std::ptrdiff_t, T*, const T*, T*, const optim::SgdStep&);
};

// One carried target: its name, what it needs of the CPU, its geometry and its kernels.
struct CpuTarget {
    const char* name;      // "sse4.2", "avx2", "avx512": LIGHTUNET_CPU_TARGET's values
    const char* level;     // the x86-64 level it is compiled for (x86-64-v2, -v3, -v4)
    VectorGeometry geometry;
    KernelTable<float> f32;
    KernelTable<double> f64;
    bool (*bf16_dot_runs)();  // Precision::bf16 runs vdpbf16ps kernels (else fp32 ones on rounded operands)
    bool (*amx_runs)();       // ... and its Fprop and Dgrad AMX tiles

    template <class T>
    constexpr const KernelTable<T>& kernels() const {
        if constexpr (sizeof(T) == sizeof(double)) return f64;
        else return f32;
    }
};

// Defined by lightunet::cpu_targets, one per instruction set (src/cpu_target.cpp).
const CpuTarget& sse4_2_target();
const CpuTarget& avx2_target();
const CpuTarget& avx512_target();

// The geometries of the carried targets: the workspace of a dispatching program is the
// largest any of them needs.
inline constexpr VectorGeometry carried_geometries[] = {sse4_2_geometry, avx2_geometry, avx512_geometry};

// Defined by lightunet::cpu_targets (src/cpu_select.cpp).
// Every carried target, narrowest first.
std::span<const CpuTarget* const> carried_cpu_targets();
// Whether this CPU (and its operating system) runs the target's instructions.
bool cpu_runs(const CpuTarget& target);
// The target this process runs: LIGHTUNET_CPU_TARGET's if set (std::runtime_error if it names
// no carried target, or one this CPU cannot run), else the widest this CPU runs (an error if
// it runs none). Chosen on the first call, then fixed.
const CpuTarget& selected_cpu_target();

}  // namespace lightunet::cpu_kernels

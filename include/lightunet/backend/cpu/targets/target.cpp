// The CPU kernels of one instruction set, for lightunet::cpu_targets (cpu_targets.hpp).
// Compiled once per target with -march=<level> -DLIGHTUNET_CPU_TARGET=<name> (sse4_2, avx2,
// avx512): the kernels land in namespace lightunet::cpu_kernels::<name>, and <name>_target()
// returns their table. Only kernel headers belong here: anything else included would be
// compiled for this target's instructions and could be merged by the linker with the copy that
// code for an older CPU calls (tests/targets/check_isa_leaks.sh checks the linked programs).
#include "../conv.hpp"
#include "../cpu_targets.hpp"
#include "../join.hpp"
#include "../loss.hpp"
#include "../norm.hpp"
#include "../optim.hpp"
#include "../resample.hpp"

#define LIGHTUNET_PASTE_(a, b) a##b
#define LIGHTUNET_PASTE(a, b) LIGHTUNET_PASTE_(a, b)

namespace lightunet::cpu_kernels {

// The sizes the dispatching program allocates for are this target's.
static_assert(geometry == LIGHTUNET_PASTE(LIGHTUNET_CPU_TARGET, _geometry),
              "the compiler flags of this target do not give the vector geometry cpu_targets.hpp sizes it for");

namespace {
template <class T>
constexpr KernelTable<T> table() {
    return {&conv_prepare<T>,
            &conv_forward_prepared<T>,
            &conv_forward<T>,
            &conv_backward<T>,
            &max_pool_forward<T>,
            &max_pool_backward<T>,
            &space_to_depth<T>,
            &depth_to_space<T>,
            &upsample_nearest_forward<T>,
            &upsample_nearest_backward<T>,
            &subsample_nearest<T>,
            &add_act_forward<T>,
            &add_act_backward<T>,
            &norm_act_forward<T>,
            &norm_act_backward<T>,
            &softmax_channels<T>,
            &sigmoid<T>,
            &dice_loss<T>,
            &squared_norm<T>,
            &scale<T>,
            &adam_update<T>,
            &sgd_update<T>};
}
}  // namespace

const CpuTarget& LIGHTUNET_PASTE(LIGHTUNET_CPU_TARGET, _target)() {
    static constexpr CpuTarget target{LIGHTUNET_CPU_TARGET_NAME, LIGHTUNET_CPU_TARGET_LEVEL, geometry, table<float>(),
                                      table<double>(), &bf16_dot_runs, &amx_runs};
    return target;
}

}  // namespace lightunet::cpu_kernels

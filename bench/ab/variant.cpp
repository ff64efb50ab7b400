// One revision's CPU convolution kernels, compiled into a namespace of their own
// (LIGHTUNET_CPU_TARGET) so that two revisions link into one program (ab_kernels.sh).
// AB_VARIANT names the entry point.
#include <lightunet/backend/cpu/conv.hpp>

#include "ab_op.hpp"

namespace lightunet::ab {

void AB_VARIANT(const Op& op, const ConvProblem& p, const Buffers& b) {
    const std::ptrdiff_t volume = std::ptrdiff_t(p.extent.size());
    const ChannelSource<float> input{b.x, p.cin, p.cin * volume};
    const ChannelSink<float> input_grad{b.dx, p.cin, p.cin * volume, false};
    switch (op.kind) {
        case Op::forward:
            cpu_kernels::conv_forward<float>(p, 1, {&input, 1}, b.w, b.bias, b.y, p.cout * volume, b.workspace);
            return;
        case Op::weight_gradient:
            cpu_kernels::conv_backward<float>(p, 1, {&input, 1}, b.w, b.g, p.cout * volume, {}, b.dw, b.db, b.workspace);
            return;
        case Op::data_gradient:
            cpu_kernels::conv_backward<float>(p, 1, {&input, 1}, b.w, b.g, p.cout * volume, {&input_grad, 1}, nullptr, nullptr,
                                              b.workspace);
            return;
        case Op::backward:
            cpu_kernels::conv_backward<float>(p, 1, {&input, 1}, b.w, b.g, p.cout * volume, {&input_grad, 1}, b.dw, b.db,
                                              b.workspace);
            return;
    }
}

std::size_t AB_WORKSPACE(const ConvProblem& p) { return cpu_kernels::conv_workspace_size<float>(p); }

}  // namespace lightunet::ab

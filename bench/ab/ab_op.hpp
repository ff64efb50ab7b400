#pragma once
// What ab_kernels.sh times: one convolution pass over one image, the same buffers for both
// revisions.
#include <cstddef>

#include <lightunet/backend/conv_problem.hpp>

namespace lightunet::ab {

struct Op {
    enum Kind { forward, weight_gradient, data_gradient, backward } kind = forward;
};

struct Buffers {
    const float *x, *w, *bias, *g;
    float *y, *dx, *dw, *db, *workspace;
};

void old_kernels(const Op&, const ConvProblem&, const Buffers&);
void new_kernels(const Op&, const ConvProblem&, const Buffers&);
std::size_t old_workspace(const ConvProblem&);
std::size_t new_workspace(const ConvProblem&);

}  // namespace lightunet::ab

#pragma once
// Kernels<Backend>: every operation a layer needs, one static function each, with identical
// signatures in every backend (host pointers for cpu, device pointers for cuda).
#include "conv_problem.hpp"

namespace lightunet {
template <class Backend>
struct Kernels;
}

#pragma once
// One optimiser step as every backend runs it: what an Adam or SGD step takes, its bias
// corrections, and the fixed blocks that gradient norms are summed over. The blocks make a
// norm independent of the thread count and of the backend: backend/cpu/optim.hpp and
// backend/cuda/optim.cuh both sum block by block, then the blocks in order. optimizers.hpp
// builds the steps; the kernels only apply them. Host code, no backend headers.
#include <cmath>
#include <cstddef>

namespace lightunet::optim {

// Elements per block of the blocked sums (and of the CPU's parallel updates).
inline constexpr std::ptrdiff_t update_block = 1 << 14;

// Blocks of update_block that cover `count` elements: the partial sums a norm needs.
constexpr std::ptrdiff_t update_blocks(std::ptrdiff_t count) { return (count + update_block - 1) / update_block; }

// Adam (L2 weight decay added to the gradient) or, decoupled, AdamW.
struct AdamStep {
    double lr, beta1, beta2, eps, weight_decay;
    bool decoupled;  // AdamW
    long step;       // 1-based
    // 1 / (1 - beta^step): the bias corrections of the first and second moments.
    double first_moment_correction() const { return 1.0 / (1.0 - std::pow(beta1, double(step))); }
    double second_moment_correction() const { return 1.0 / (1.0 - std::pow(beta2, double(step))); }
};

// SGD with (Nesterov) momentum and L2 weight decay.
struct SgdStep {
    double lr, momentum, weight_decay;
    bool nesterov;
};

}  // namespace lightunet::optim

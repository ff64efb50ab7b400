#pragma once
// Optimisers over the model's one contiguous parameter buffer. Each keeps its moments in the
// backend's memory, sized on the first step; later steps allocate nothing.
#include <cmath>
#include <cstdint>

#include "../backend/kernels.hpp"
#include "../tensor/tensor.hpp"
#include "step.hpp"

namespace lightunet {

// Shared by every optimiser: learning rate, global gradient-norm clipping, step count.
struct OptimizerBase {
    double lr = 1e-3;
    double weight_decay = 0.0;
    double clip_norm = 0.0;  // > 0: rescale gradients whose global L2 norm exceeds it
    long steps = 0;
    double last_grad_norm = 0.0;
};

namespace detail {
template <class T, class Backend>
void clip_gradients(OptimizerBase& o, Tensor<T, Backend>& grads, Tensor<double, Backend>& partial) {
    const std::ptrdiff_t n = std::ptrdiff_t(grads.size());
    partial.resize({1, 1, 1, 1, int(std::max<std::ptrdiff_t>(1, optim::update_blocks(n)))});
    o.last_grad_norm = std::sqrt(Kernels<Backend>::squared_norm(n, grads.data(), partial.data()));
    if (o.clip_norm > 0 && o.last_grad_norm > o.clip_norm)
        Kernels<Backend>::scale(n, grads.data(), T(o.clip_norm / (o.last_grad_norm + 1e-6)));
}
}  // namespace detail

// Adam (L2 weight decay added to the gradient) or, with decoupled = true, AdamW.
template <class T = float, class Backend = cpu>
struct Adam : OptimizerBase {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    bool decoupled = false;
    Tensor<T, Backend> m, v;
    Tensor<double, Backend> partial;

    Adam() = default;
    explicit Adam(double learning_rate, double wd = 0.0, bool adamw = false) {
        lr = learning_rate;
        weight_decay = wd;
        decoupled = adamw;
    }
    void step(Tensor<T, Backend>& params, Tensor<T, Backend>& grads) {
        if (m.size() != params.size()) {
            m.resize(params.shape());
            v.resize(params.shape());
            m.fill(T(0));
            v.fill(T(0));
        }
        detail::clip_gradients(*this, grads, partial);
        ++steps;
        Kernels<Backend>::adam_update(std::ptrdiff_t(params.size()), params.data(), static_cast<const T*>(grads.data()), m.data(),
                                      v.data(), optim::AdamStep{lr, beta1, beta2, eps, weight_decay, decoupled, steps});
    }
};

template <class T = float, class Backend = cpu>
Adam<T, Backend> AdamW(double learning_rate, double wd = 1e-2) {
    return Adam<T, Backend>(learning_rate, wd, true);
}

// SGD with (Nesterov) momentum and L2 weight decay.
template <class T = float, class Backend = cpu>
struct Sgd : OptimizerBase {
    double momentum = 0.99;
    bool nesterov = true;
    Tensor<T, Backend> velocity;
    Tensor<double, Backend> partial;

    Sgd() = default;
    explicit Sgd(double learning_rate, double mom = 0.99, bool use_nesterov = true, double wd = 0.0) {
        lr = learning_rate;
        momentum = mom;
        nesterov = use_nesterov;
        weight_decay = wd;
    }
    void step(Tensor<T, Backend>& params, Tensor<T, Backend>& grads) {
        if (velocity.size() != params.size()) {
            velocity.resize(params.shape());
            velocity.fill(T(0));
        }
        detail::clip_gradients(*this, grads, partial);
        ++steps;
        Kernels<Backend>::sgd_update(std::ptrdiff_t(params.size()), params.data(), static_cast<const T*>(grads.data()),
                                     velocity.data(), optim::SgdStep{lr, momentum, weight_decay, nesterov});
    }
};

}  // namespace lightunet

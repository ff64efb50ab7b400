#pragma once
// Host staging for a model whose tensors may live in device memory: what the data layer, the
// trainer, checkpoints and the sliding window hand a model is host memory (Tensor<T, cpu>);
// Staging<Model> uploads inputs and labels to the model's backend and downloads its outputs, in
// buffers it keeps (no allocation after the first batch of a shape). For a host model every
// call returns its argument: no copy.
//
// The host copies of a model's state (parameters, running statistics, optimiser moments) in the
// layouts of docs/design.md, the same for every backend, so checkpoints and rollback states move
// between backends.
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "../backend/cpu/memory.hpp"
#include "../tensor/tensor.hpp"

namespace lightunet {

// True when the model's tensors are host tensors (the CPU backend, or a model type that names
// no backend: test doubles of the sliding window): no staging.
template <class Model>
constexpr bool model_runs_on_host() {
    if constexpr (requires { typename Model::backend; }) return std::is_same_v<typename Model::backend, cpu>;
    else return true;
}
template <class Model>
inline constexpr bool runs_on_host = model_runs_on_host<Model>();

template <class Model, bool OnHost = runs_on_host<Model>>
class Staging {
public:
    using T = typename Model::scalar;
    using HostImages = Tensor<T, cpu>;
    using HostLabels = Tensor<std::uint8_t, cpu>;

    // The model's input for host images x.
    const typename Model::Input& images(const HostImages& x) {
        copy_from_host(images_, x);
        return images_;
    }
    const typename Model::Labels& labels(const HostLabels& y) {
        copy_from_host(labels_, y);
        return labels_;
    }
    // A model output in host memory; valid until the next call.
    const HostImages& to_host(const typename Model::Input& y) {
        output_.resize(y.shape());
        Model::backend::download(output_.data(), y.data(), y.size());
        return output_;
    }

private:
    typename Model::Input images_;
    typename Model::Labels labels_;
    HostImages output_;
};

// A host model: every call returns its argument.
template <class Model>
class Staging<Model, true> {
public:
    template <class HostTensor>
    const HostTensor& images(const HostTensor& x) { return x; }
    template <class HostTensor>
    const HostTensor& labels(const HostTensor& y) { return y; }
    template <class HostTensor>
    const HostTensor& to_host(const HostTensor& y) { return y; }
};

// A tensor of any backend as host values: its own data on the host, else a copy in `staging`.
template <class T, class Backend>
const T* host_values(const Tensor<T, Backend>& t, std::vector<T>& staging) {
    if constexpr (Backend::host_accessible) {
        return t.data();
    } else {
        staging.resize(t.size());
        Backend::download(staging.data(), t.data(), t.size());
        return staging.data();
    }
}

// The model's parameters / running statistics as host values (the model's own memory on the
// host, else a copy in `staging`). The way back is the model's load_parameters_from_host /
// load_buffers_from_host, which serve every backend.
template <class Model>
std::span<const typename Model::scalar> host_parameters(const Model& model, std::vector<typename Model::scalar>& staging) {
    if constexpr (Model::backend::host_accessible) {
        return model.parameters();
    } else {
        staging.resize(Model::parameter_count);
        model.copy_parameters_to_host(staging);
        return staging;
    }
}
template <class Model>
std::span<const typename Model::scalar> host_buffers(const Model& model, std::vector<typename Model::scalar>& staging) {
    if constexpr (Model::backend::host_accessible) {
        return model.buffers();
    } else {
        staging.resize(Model::buffer_count);
        model.copy_buffers_to_host(staging);
        return staging;
    }
}

}  // namespace lightunet

#pragma once
// Sums a tensor (a model's gradients) across a process group, whatever memory it lives in: in
// place for host memory, and for device memory when the collective takes it (CUDA-aware MPI);
// otherwise through a host copy (one GPU per rank: download, sum, upload).
#include <cstddef>
#include <span>
#include <vector>

#include "../tensor/tensor.hpp"
#include "collective.hpp"

namespace lightunet::dist {

template <class T, class Backend>
void sum_across(Collective& group, Tensor<T, Backend>& values, std::size_t count, std::vector<T>& staging) {
    if constexpr (Backend::host_accessible) {
        group.sum(std::span<T>(values.data(), count));
    } else if (group.accepts_device_memory()) {
        Backend::synchronize();  // the backward pass's kernels have written the gradients
        group.sum(std::span<T>(values.data(), count));
    } else {
        staging.resize(count);
        Backend::download(staging.data(), values.data(), count);
        group.sum(std::span<T>(staging));
        Backend::upload(values.data(), staging.data(), count);
    }
}

}  // namespace lightunet::dist

#pragma once
// A training batch split across processes (data parallelism): this process holds images
// [first_image, first_image + local images) of a global batch of `total_images`. The kernels
// that reduce over the batch (batch-norm statistics and their backward sums, the loss's
// normalisation and batch Dice) exchange their partial sums through `sum`, so every process
// computes the loss and the gradients of one process given the global batch; the parameter
// gradients then only need summing across processes (the loss is normalised by the global
// batch, not the local one).
#include <algorithm>
#include <cstddef>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace lightunet {

struct CrossBatch {
    int first_image = 0;
    int total_images = 0;
    int rank = 0, ranks = 1;
    // Adds `values` element-wise across every process and leaves the result in each; every
    // process calls it at the same points with the same length (a collective).
    std::function<void(std::span<double>)> sum;
    // Host staging for the exchanges; it grows to the largest one and is then reused, so a
    // step allocates nothing once the first has run.
    std::vector<double> exchange;

    // Zeroed staging for `count` values.
    std::span<double> zeroed(std::size_t count) {
        if (exchange.size() < count) exchange.resize(count);
        std::fill_n(exchange.begin(), count, 0.0);
        return {exchange.data(), count};
    }
    // Throws unless a local batch of `images` fits this process's share.
    void check(int images, const char* who) const {
        if (!sum || ranks < 1 || rank < 0 || rank >= ranks || first_image < 0 || images < 1 || first_image + images > total_images)
            throw std::invalid_argument(std::string(who) + ": a local batch of " + std::to_string(images) + " images from image " +
                                        std::to_string(first_image) + " does not fit a global batch of " +
                                        std::to_string(total_images) + " on rank " + std::to_string(rank) + " of " +
                                        std::to_string(ranks) + (sum ? "" : " (no sum function)"));
    }
};

}  // namespace lightunet

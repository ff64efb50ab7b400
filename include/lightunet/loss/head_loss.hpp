#pragma once
// The loss over a network's heads: validation of the targets, their down-sampling for
// deep-supervision heads, and each head's Dice (+ CE) value and logits gradient, weighted.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../backend/kernels.hpp"
#include "../config/unet_config.hpp"
#include "../dist/cross_batch.hpp"
#include "../tensor/tensor.hpp"
#include "dice.hpp"

namespace lightunet {

template <class T, class Backend>
struct HeadLoss {
    using K = Kernels<Backend>;

    // Throws ShapeError (wrong shape) or std::invalid_argument naming the first bad value.
    static void check_targets(Head head, int classes, const Tensor<std::uint8_t, Backend>& labels, const Shape& expected,
                              const char* who) {
        if (labels.shape() != expected)
            throw ShapeError(std::string(who) + ": labels have shape " + labels.shape().str() + ", expected " + expected.str());
        const std::ptrdiff_t bad = K::first_invalid_label(head, classes, std::ptrdiff_t(labels.size()), labels.data());
        if (bad >= 0) {
            std::uint8_t value = 0;
            Backend::download(&value, labels.data() + bad, 1);
            throw std::invalid_argument(std::string(who) + ": label value " + std::to_string(int(value)) + " at index " +
                                        std::to_string(bad) +
                                        (head == Head::softmax ? " is not a class below " + std::to_string(classes)
                                                               : std::string(" is not 0 or 1")));
        }
    }

    // Targets one level coarser: the first voxel of each 2x2(x2) cell (PyTorch's nearest
    // interpolation at scale 1/2). `coarse` is the coarse label tensor's shape.
    static void subsample(const Shape& coarse, int depth_factor, const std::uint8_t* fine, std::uint8_t* out) {
        K::subsample_nearest(Cells{extent_of(coarse), depth_factor}, std::ptrdiff_t(coarse.n) * coarse.c, fine, out);
    }

    // weight x the head's loss; grad receives weight x d loss / d logits.
    static double apply(Head head, const Shape& logits, const T* probs, const std::uint8_t* target, const DiceLoss& loss,
                        double weight, T* grad, double* sums, CrossBatch* across = nullptr) {
        const double value =
            K::dice_loss(head, logits.n, logits.c, std::ptrdiff_t(logits.spatial()), probs, target, loss, grad, sums, across);
        if (weight == 1.0) return value;
        K::scale(std::ptrdiff_t(logits.size()), grad, T(weight));
        return weight * value;
    }
};

}  // namespace lightunet

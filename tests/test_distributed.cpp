// Data parallelism: a batch split across processes gives the loss, the batch-norm statistics
// and the summed gradients of one process given the whole batch (the processes are threads of
// a ThreadGroup here; tests/mpi runs the same under mpirun).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "dist_test_support.hpp"
#include "lightunet/detail/splitmix64.hpp"
#include "lightunet/lightunet.hpp"

using namespace lightunet;
using lightunet::test::ThreadGroup;

namespace {

template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
    detail::SplitMix64 rng(seed);
    std::vector<T> v(n);
    for (auto& x : v) x = T(lo + (hi - lo) * rng.uniform());
    return v;
}

template <class T>
double max_abs_diff(std::span<const T> a, std::span<const T> b) {
    REQUIRE(a.size() == b.size());
    double d = 0;
    for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
    return d;
}

template <class T>
double max_abs(std::span<const T> a) {
    double m = 0;
    for (T v : a) m = std::max(m, std::abs(double(v)));
    return m;
}

}  // namespace

TEST_CASE("batch norm split across ranks has the whole batch's statistics and gradients", "[distributed][norm]") {
    const int ranks = 2, images = 4, channels = 3;
    const std::ptrdiff_t plane = 37;
    const NormGrouping whole{Norm::batch, images, channels, 1, plane};
    const Activation act{Act::leaky_relu, 0.01};
    const std::size_t count = std::size_t(images) * channels * plane;
    // A large mean, so the merge of the ranks' statistics must not cancel the variance.
    const auto z = random_values<double>(count, 1, 99, 101);
    const auto dy = random_values<double>(count, 2);
    const auto gamma = random_values<double>(channels, 3, 0.5, 1.5), beta = random_values<double>(channels, 4);

    std::vector<double> y(count), dz(count), mean(channels), invstd(channels), rm(channels, 0.0), rv(channels, 1.0);
    std::vector<double> dgamma(channels, 0.0), dbeta(channels, 0.0), scratch(2 * std::size_t(images) * channels);
    cpu_kernels::norm_act_forward(whole, act, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(), rm.data(),
                                  rv.data(), NormStats::batch);
    cpu_kernels::norm_act_backward(whole, act, z.data(), dy.data(), gamma.data(), beta.data(), mean.data(), invstd.data(), dz.data(),
                                   dgamma.data(), dbeta.data(), scratch.data());

    ThreadGroup group(ranks);
    const int local = images / ranks;
    const std::size_t share = count / ranks;
    std::vector<std::vector<double>> part_y(ranks), part_dz(ranks), part_rm(ranks), part_rv(ranks), part_dgamma(ranks), part_dbeta(ranks);
    group.run([&](int r, dist::Collective& c) {
        CrossBatch across = c.cross_batch(local);
        const NormGrouping mine{Norm::batch, local, channels, 1, plane};
        std::vector<double> m(channels), s(channels), sc(2 * std::size_t(local) * channels);
        part_y[r].resize(share), part_dz[r].resize(share), part_rm[r].assign(channels, 0.0), part_rv[r].assign(channels, 1.0);
        part_dgamma[r].assign(channels, 0.0), part_dbeta[r].assign(channels, 0.0);
        const double* zr = z.data() + r * share;
        cpu_kernels::norm_act_forward(mine, act, zr, gamma.data(), beta.data(), part_y[r].data(), m.data(), s.data(),
                                      part_rm[r].data(), part_rv[r].data(), NormStats::batch, &across);
        cpu_kernels::norm_act_backward(mine, act, zr, dy.data() + r * share, gamma.data(), beta.data(), m.data(), s.data(),
                                       part_dz[r].data(), part_dgamma[r].data(), part_dbeta[r].data(), sc.data(), &across);
    });
    for (int r = 0; r < ranks; ++r) {
        CHECK(max_abs_diff<double>(std::span(y).subspan(r * share, share), part_y[r]) < 1e-10);
        CHECK(max_abs_diff<double>(std::span(dz).subspan(r * share, share), part_dz[r]) < 1e-10);
        CHECK(max_abs_diff<double>(rm, part_rm[r]) < 1e-12);
        CHECK(max_abs_diff<double>(rv, part_rv[r]) < 1e-10);
    }
    // dgamma and dbeta are parameter gradients: the ranks' parts sum to the whole batch's.
    for (int c = 0; c < channels; ++c) {
        CHECK(part_dgamma[0][c] + part_dgamma[1][c] == Approx(dgamma[c]).epsilon(1e-12));
        CHECK(part_dbeta[0][c] + part_dbeta[1][c] == Approx(dbeta[c]).epsilon(1e-12));
    }
}

TEST_CASE("the Dice loss split across ranks is the whole batch's, with its gradient", "[distributed][loss]") {
    const int ranks = 2, images = 4;
    const std::ptrdiff_t plane = 50;
    for (Head head : {Head::sigmoid, Head::softmax})
        for (bool batch_dice : {true, false}) {
            const int channels = 3;
            const std::size_t count = std::size_t(images) * channels * plane;
            const std::size_t label_count = head == Head::softmax ? std::size_t(images) * plane : count;
            auto probs = random_values<double>(count, 5, 0.01, 0.99);
            if (head == Head::softmax)  // probabilities over the classes of each voxel
                for (int n = 0; n < images; ++n)
                    for (std::ptrdiff_t k = 0; k < plane; ++k) {
                        double s = 0;
                        for (int c = 0; c < channels; ++c) s += probs[(std::size_t(n) * channels + c) * plane + k];
                        for (int c = 0; c < channels; ++c) probs[(std::size_t(n) * channels + c) * plane + k] /= s;
                    }
            std::vector<std::uint8_t> labels(label_count);
            detail::SplitMix64 rng(6);
            for (auto& l : labels) l = std::uint8_t(rng.next() % (head == Head::softmax ? channels : 2));
            const DiceLoss o{.include_background = false, .batch_dice = batch_dice, .smooth = 1e-5, .ce_weight = 1.0};
            std::vector<double> grad(count), sums(3 * std::size_t(images) * channels);
            const double whole = cpu_kernels::dice_loss(head, images, channels, plane, probs.data(), labels.data(), o, grad.data(), sums.data());

            ThreadGroup group(ranks);
            const int local = images / ranks;
            std::vector<double> loss(ranks), part_grad(count);
            group.run([&](int r, dist::Collective& c) {
                CrossBatch across = c.cross_batch(local);
                std::vector<double> s(3 * std::size_t(local) * channels);
                const std::size_t share = count / ranks, label_share = label_count / ranks;
                loss[r] = cpu_kernels::dice_loss(head, local, channels, plane, probs.data() + r * share, labels.data() + r * label_share, o,
                                                 part_grad.data() + r * share, s.data(), &across);
            });
            INFO("head " << (head == Head::softmax ? "softmax" : "sigmoid") << ", batch Dice " << batch_dice);
            CHECK(loss[0] == Approx(whole).epsilon(1e-13));
            CHECK(loss[1] == loss[0]);
            CHECK(max_abs_diff<double>(grad, part_grad) <= 1e-15 * max_abs<double>(grad));
        }
}

namespace {

constexpr UNetConfig split_bn_2d{.dims = 2, .in_channels = 2, .classes = 3, .widths = {4, 8, 8, 16}, .norm = Norm::batch,
                                 .head = Head::sigmoid, .deep_supervision = true};
constexpr UNetConfig split_in_3d{.dims = 3, .in_channels = 2, .classes = 3, .widths = {4, 8}, .norm = Norm::instance,
                                 .head = Head::sigmoid};

struct SplitDifference {
    double gradient = 0;  // first step: largest difference of a rank's summed gradients from the single run's, relative to its largest
    double weights = 0;   // after the last step: largest weight difference, relative to the largest weight
    double loss = 0;      // largest relative difference of a step's loss
};

// Trains `steps` steps on the global batch in one model and, split over `ranks` threads with
// the gradients summed between backward and the update, in `ranks` replicas.
template <UNetConfig C, class T, class Optimizer>
SplitDifference split_training_difference(int ranks, const Shape& global, int steps, DiceLoss loss, const Optimizer& optimizer) {
    using Model = UNet<C, cpu, T>;
    const Shape labels_shape{global.n, C.head == Head::softmax ? 1 : C.classes, global.d, global.h, global.w};
    std::vector<Tensor<T>> xs;
    std::vector<typename Model::Labels> ys;
    detail::SplitMix64 rng(11);
    for (int s = 0; s < steps; ++s) {
        Tensor<T> x(global);
        for (auto& v : x) v = T(rng.uniform() * 2 - 1);
        typename Model::Labels y(labels_shape);
        for (auto& v : y) v = std::uint8_t(rng.uniform() < 0.3);
        xs.push_back(std::move(x));
        ys.push_back(std::move(y));
    }
    Model whole(7);
    Optimizer whole_opt = optimizer;
    std::vector<double> whole_losses;
    std::vector<T> whole_gradient;
    for (int s = 0; s < steps; ++s) {
        whole_losses.push_back(whole.train_step(xs[s], ys[s], loss, whole_opt));
        if (s == 0) whole_gradient.assign(whole.gradients().begin(), whole.gradients().end());
    }

    const int local = global.n / ranks;
    const std::size_t x_share = xs[0].size() / std::size_t(ranks), y_share = ys[0].size() / std::size_t(ranks);
    std::vector<std::vector<T>> weights(ranks), gradients(ranks);
    std::vector<std::vector<double>> losses(ranks);
    ThreadGroup group(ranks);
    group.run([&](int r, dist::Collective& c) {
        Model replica(7);
        Optimizer opt = optimizer;
        CrossBatch across = c.cross_batch(local);
        replica.distribute(&across);
        Tensor<T> x({local, global.c, global.d, global.h, global.w});
        typename Model::Labels y({local, labels_shape.c, global.d, global.h, global.w});
        for (int s = 0; s < steps; ++s) {
            std::copy_n(xs[s].data() + r * x_share, x_share, x.data());
            std::copy_n(ys[s].data() + r * y_share, y_share, y.data());
            losses[r].push_back(replica.train_step(x, y, loss, opt, [&](Tensor<T>& g) {
                c.sum(std::span<T>(g.data(), Model::parameter_count));
                if (s == 0) gradients[r].assign(g.data(), g.data() + Model::parameter_count);
            }));
        }
        const auto p = replica.parameters();
        weights[r].assign(p.begin(), p.end());
    });
    SplitDifference d;
    const auto p = whole.parameters();
    const std::span<const T> single(p.data(), p.size());
    for (int r = 0; r < ranks; ++r) {
        d.weights = std::max(d.weights, max_abs_diff<T>(single, weights[r]) / max_abs<T>(single));
        d.gradient = std::max(d.gradient, max_abs_diff<T>(whole_gradient, gradients[r]) / max_abs<T>(whole_gradient));
        for (int s = 0; s < steps; ++s) d.loss = std::max(d.loss, std::abs(losses[r][s] - whole_losses[s]) / std::abs(whole_losses[s]));
    }
    return d;
}

}  // namespace

TEST_CASE("training split across ranks follows the single-process run on the global batch", "[distributed][model]") {
    const DiceLoss batch_dice{.include_background = true, .batch_dice = true, .smooth = 1e-5, .ce_weight = 1.0};
    const DiceLoss sample_dice{.include_background = true, .batch_dice = false, .smooth = 1e-5, .ce_weight = 1.0};
    // The ranks' gradients are summed in another order than one process sums them, so the
    // results agree to rounding, not bit for bit: about 1e-15 in double, and in float within a
    // few float epsilons of the gradient (relative to its largest element), growing slowly over
    // steps. SGD passes that on linearly. Adam does not: its first steps move every weight by
    // about lr whatever the gradient's size, so a near-zero gradient element whose sign the
    // summation order flips moves its weight 2 lr the other way (checked below to that bound).
    SECTION("double precision: batch norm, deep supervision, batch and per-sample Dice; instance norm in 3D") {
        for (const DiceLoss& loss : {batch_dice, sample_dice}) {
            const auto adam = split_training_difference<split_bn_2d, double>(2, {4, 2, 1, 16, 16}, 4, loss, Adam<double>(1e-3));
            CHECK(adam.loss < 1e-13);
            CHECK(adam.gradient < 1e-13);
            CHECK(adam.weights < 1e-10);
        }
        const auto in3d = split_training_difference<split_in_3d, double>(2, {2, 2, 8, 8, 8}, 3, batch_dice, Adam<double>(1e-3));
        CHECK(in3d.loss < 1e-13);
        CHECK(in3d.gradient < 1e-13);
        CHECK(in3d.weights < 1e-10);
    }
    SECTION("float, the path users train on: 2 and 4 ranks") {
        for (int ranks : {2, 4}) {
            INFO(ranks << " ranks");
            const auto sgd = split_training_difference<split_bn_2d, float>(ranks, {8, 2, 1, 32, 32}, 5, batch_dice, Sgd<float>(1e-2));
            CHECK(sgd.loss < 1e-6);
            CHECK(sgd.gradient < 1e-6);
            CHECK(sgd.weights < 1e-6);
            const auto adam = split_training_difference<split_bn_2d, float>(ranks, {8, 2, 1, 32, 32}, 5, batch_dice, Adam<float>(1e-3));
            CHECK(adam.gradient < 1e-6);
            CHECK(adam.weights < 2 * 5 * 1e-3);
        }
    }
}

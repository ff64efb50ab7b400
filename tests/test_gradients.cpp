// Every backward pass against central finite differences of its own forward pass, in double
// precision: the layer kernels one by one (norm + activation, max-pool, the resampling
// rearrangements, the head and Dice loss) and then whole networks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <lightunet/lightunet.hpp>

#include "reference_unet.hpp"
#include "test_support.hpp"

using namespace lightunet;
using lightunet::testing::dot;
using lightunet::testing::Rng;
using lightunet::testing::random_vector;

namespace {

constexpr double fd_step = 1e-5;
constexpr double fd_tolerance = 1e-6;  // relative to the largest analytic gradient of the group

// Compares analytic[i] with the central difference of eval() in x[i] for every i in indices.
// eval() must compute the loss from the current contents of x. A point where the loss is not
// smooth within the step (a ReLU kink or a max-pool tie straddled by the perturbation) shows
// as central differences that disagree between step h and h / 8; such points are skipped and
// counted, and only a few may be. A wrong gradient gives differences that agree with each other
// and not with it, and fails.
template <class Eval>
void check_gradient(const std::string& what, double* x, const double* analytic, std::size_t count,
                    const std::vector<std::size_t>& indices, Eval&& eval, double tolerance = fd_tolerance) {
    double scale = 0;
    for (std::size_t i = 0; i < count; ++i) scale = std::max(scale, std::abs(analytic[i]));
    INFO(what << ": max |analytic gradient| = " << scale);
    REQUIRE(scale > 1e-9);  // an all-zero gradient would make the comparison vacuous
    REQUIRE(!indices.empty());
    const double bound = tolerance * scale;
    auto central = [&](std::size_t i, double h) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double plus = eval();
        x[i] = x0 - h;
        const double minus = eval();
        x[i] = x0;
        return (plus - minus) / (2 * h);
    };
    double worst = 0, worst_fd = 0;
    std::size_t worst_at = 0, skipped = 0;
    for (std::size_t i : indices) {
        REQUIRE(i < count);
        double fd = central(i, fd_step);
        double err = std::abs(fd - analytic[i]);
        if (err > bound) {
            const double fd_small = central(i, fd_step / 8);
            const double err_small = std::abs(fd_small - analytic[i]);
            if (err_small <= bound) {
                err = err_small, fd = fd_small;
            } else if (std::abs(fd_small - fd) > bound) {
                ++skipped;
                continue;
            }
        }
        if (err >= worst) worst = err, worst_at = i, worst_fd = fd;
    }
    INFO("worst |fd - analytic| / scale = " << worst / scale << " at index " << worst_at << " (analytic "
                                            << analytic[worst_at] << ", finite difference " << worst_fd << "), "
                                            << skipped << " of " << indices.size() << " points skipped as non-smooth");
    CHECK(worst <= bound);
    CHECK(skipped <= std::max<std::size_t>(1, indices.size() / 20));
}

std::vector<std::size_t> all_indices(std::size_t n) {
    std::vector<std::size_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = i;
    return v;
}

std::vector<std::size_t> sample_indices(std::size_t n, std::size_t k, Rng& rng) {
    if (k >= n) return all_indices(n);
    std::vector<std::size_t> v;
    while (v.size() < k) {
        const std::size_t i = rng.index(n);
        if (std::find(v.begin(), v.end(), i) == v.end()) v.push_back(i);
    }
    return v;
}

const char* norm_name(Norm n) {
    switch (n) {
        case Norm::batch: return "batch";
        case Norm::instance: return "instance";
        case Norm::group: return "group";
        default: return "none";
    }
}

// ------------------------------------------------------------------------------------------
// Norm + activation

// The statistic a voxel of plane (n, c) belongs to, written out from the definitions.
std::vector<std::vector<std::size_t>> reference_stat_members(Norm norm, int images, int channels, int groups,
                                                             std::size_t plane) {
    std::vector<std::vector<std::size_t>> members;
    auto add_plane = [&](std::vector<std::size_t>& m, int n, int c) {
        for (std::size_t k = 0; k < plane; ++k) m.push_back((std::size_t(n) * channels + c) * plane + k);
    };
    if (norm == Norm::batch) {
        for (int c = 0; c < channels; ++c) {
            members.emplace_back();
            for (int n = 0; n < images; ++n) add_plane(members.back(), n, c);
        }
    } else if (norm == Norm::instance) {
        for (int n = 0; n < images; ++n)
            for (int c = 0; c < channels; ++c) add_plane(members.emplace_back(), n, c);
    } else if (norm == Norm::group) {
        const int per = channels / groups;
        for (int n = 0; n < images; ++n)
            for (int g = 0; g < groups; ++g) {
                members.emplace_back();
                for (int c = g * per; c < (g + 1) * per; ++c) add_plane(members.back(), n, c);
            }
    }
    return members;
}

void check_norm_act(Norm norm, Act act, Extent extent, int images, int channels, std::uint64_t seed) {
    const int groups = norm == Norm::group ? 2 : 1;
    const double slope = act == Act::leaky_relu ? 0.1 : 0.0;
    const NormGrouping g{norm, images, channels, groups, std::ptrdiff_t(extent.size())};
    const Activation a{act, slope};
    const std::size_t plane = extent.size(), count = std::size_t(images) * channels * plane;
    Rng rng(seed);
    auto z = random_vector(count, rng, -2.0, 2.0);
    for (std::size_t i = 0; i < count; ++i) z[i] += 0.5 * double((i / plane) % 3);  // planes with different means
    const auto gamma = random_vector(std::size_t(channels), rng, 0.5, 1.5);
    const auto beta = random_vector(std::size_t(channels), rng, -0.5, 0.5);
    const auto r = random_vector(count, rng);
    const std::size_t stats = std::size_t(std::max(1, g.stat_count()));
    std::vector<double> y(count), mean(stats), invstd(stats);
    std::vector<double> running_mean(std::size_t(channels), 0.2), running_var(std::size_t(channels), 1.3);

    // Forward against the definitions, and PyTorch's running-statistics update for batch norm.
    cpu_kernels::norm_act_forward(g, a, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                  running_mean.data(), running_var.data(), NormStats::batch);
    {
        std::vector<double> want(count);
        const auto members = reference_stat_members(norm, images, channels, groups, plane);
        std::vector<double> mu(count, 0.0), is(count, 1.0);
        for (const auto& m : members) {
            double s = 0, sq = 0;
            for (std::size_t i : m) s += z[i];
            const double M = double(m.size()), mm = s / M;
            for (std::size_t i : m) sq += (z[i] - mm) * (z[i] - mm);
            for (std::size_t i : m) mu[i] = mm, is[i] = 1.0 / std::sqrt(sq / M + 1e-5);
        }
        for (std::size_t i = 0; i < count; ++i) {
            const int c = int((i / plane) % std::size_t(channels));
            const double v = norm == Norm::none ? z[i] : gamma[c] * (z[i] - mu[i]) * is[i] + beta[c];
            want[i] = v > 0 ? v : slope * v;
        }
        double worst = 0;
        for (std::size_t i = 0; i < count; ++i) worst = std::max(worst, std::abs(y[i] - want[i]));
        INFO("forward: worst |y - reference| = " << worst);
        CHECK(worst < 1e-12);
        if (norm == Norm::batch) {
            for (int c = 0; c < channels; ++c) {
                const auto& m = members[std::size_t(c)];
                double s = 0, sq = 0;
                for (std::size_t i : m) s += z[i];
                const double M = double(m.size()), mm = s / M;
                for (std::size_t i : m) sq += (z[i] - mm) * (z[i] - mm);
                CHECK(running_mean[c] == Approx(0.9 * 0.2 + 0.1 * mm).epsilon(1e-12));
                CHECK(running_var[c] == Approx(0.9 * 1.3 + 0.1 * sq / (M - 1)).epsilon(1e-12));
            }
        } else {
            CHECK(std::all_of(running_mean.begin(), running_mean.end(), [](double v) { return v == 0.2; }));
            CHECK(std::all_of(running_var.begin(), running_var.end(), [](double v) { return v == 1.3; }));
        }
    }

    // Recomputing from the saved statistics gives the same activations and leaves the running
    // statistics alone.
    {
        std::vector<double> again(count, 99.0), rm = running_mean, rv = running_var;
        cpu_kernels::norm_act_forward(g, a, z.data(), gamma.data(), beta.data(), again.data(), mean.data(), invstd.data(),
                                      rm.data(), rv.data(), NormStats::saved);
        CHECK(again == y);
        CHECK(rm == running_mean);
        CHECK(rv == running_var);
    }
    // Inference batch norm normalises with the running statistics.
    if (norm == Norm::batch) {
        std::vector<double> eval(count), m2(stats), s2(stats);
        cpu_kernels::norm_act_forward(g, a, z.data(), gamma.data(), beta.data(), eval.data(), m2.data(), s2.data(),
                                      running_mean.data(), running_var.data(), NormStats::running);
        double worst = 0;
        for (std::size_t i = 0; i < count; ++i) {
            const int c = int((i / plane) % std::size_t(channels));
            const double v = gamma[c] * (z[i] - running_mean[c]) / std::sqrt(running_var[c] + 1e-5) + beta[c];
            worst = std::max(worst, std::abs(eval[i] - (v > 0 ? v : slope * v)));
        }
        CHECK(worst < 1e-12);
    }

    // Backward: dz fresh, dgamma and dbeta accumulated onto what they hold.
    std::vector<double> dz(count, 99.0), dgamma(std::size_t(channels), 0.25), dbeta(std::size_t(channels), -0.5);
    std::vector<double> scratch(2 * std::size_t(images) * channels);
    cpu_kernels::norm_act_backward(g, a, z.data(), r.data(), gamma.data(), beta.data(), mean.data(), invstd.data(), dz.data(),
                                   dgamma.data(), dbeta.data(), scratch.data());
    for (auto& v : dgamma) v -= 0.25;
    for (auto& v : dbeta) v += 0.5;

    // In place (dz aliasing dy), as the model runs it: the same numbers.
    std::vector<double> dz_alias = r, dgamma2(std::size_t(channels), 0.0), dbeta2(std::size_t(channels), 0.0);
    cpu_kernels::norm_act_backward(g, a, z.data(), dz_alias.data(), gamma.data(), beta.data(), mean.data(), invstd.data(),
                                   dz_alias.data(), dgamma2.data(), dbeta2.data(), scratch.data());
    {
        double worst = 0;
        for (std::size_t i = 0; i < count; ++i) worst = std::max(worst, std::abs(dz_alias[i] - dz[i]));
        CHECK(worst < 1e-14);
    }

    std::vector<double> zv = z, gv = gamma, bv = beta;
    std::vector<double> yy(count), mm(stats), ss(stats);
    auto loss = [&] {
        cpu_kernels::norm_act_forward(g, a, zv.data(), gv.data(), bv.data(), yy.data(), mm.data(), ss.data(),
                                      static_cast<double*>(nullptr), static_cast<double*>(nullptr), NormStats::batch);
        return dot(r, yy);
    };
    check_gradient("dz", zv.data(), dz.data(), count, all_indices(count), loss);
    if (norm == Norm::none) {
        CHECK(std::all_of(dgamma.begin(), dgamma.end(), [](double v) { return v == 0.0; }));
        CHECK(std::all_of(dbeta.begin(), dbeta.end(), [](double v) { return v == 0.0; }));
    } else {
        check_gradient("dgamma", gv.data(), dgamma.data(), gv.size(), all_indices(gv.size()), loss);
        check_gradient("dbeta", bv.data(), dbeta.data(), bv.size(), all_indices(bv.size()), loss);
        for (int c = 0; c < channels; ++c) {
            CHECK(dgamma2[c] == Approx(dgamma[c]).epsilon(1e-12));
            CHECK(dbeta2[c] == Approx(dbeta[c]).epsilon(1e-12));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Head + loss

// Loss of logits through the head; writes the analytic gradient when grad is given.
double head_loss(Head head, int images, int classes, std::size_t plane, const std::vector<double>& logits,
                 const std::vector<std::uint8_t>& target, const DiceLoss& o, std::vector<double>& probs,
                 std::vector<double>& grad, std::vector<double>& sums) {
    if (head == Head::softmax)
        cpu_kernels::softmax_channels(images, classes, std::ptrdiff_t(plane), logits.data(), probs.data());
    else
        cpu_kernels::sigmoid(std::ptrdiff_t(logits.size()), logits.data(), probs.data());
    return cpu_kernels::dice_loss(head, images, classes, std::ptrdiff_t(plane), static_cast<const double*>(probs.data()),
                                  target.data(), o, grad.data(), sums.data());
}

void check_head_loss(Head head, int images, int classes, Extent extent, const DiceLoss& o, std::uint64_t seed) {
    const std::size_t plane = extent.size(), count = std::size_t(images) * classes * plane;
    Rng rng(seed);
    auto logits = random_vector(count, rng, -3.0, 3.0);
    std::vector<std::uint8_t> target(head == Head::softmax ? std::size_t(images) * plane : count);
    for (auto& t : target) t = std::uint8_t(rng.index(head == Head::softmax ? std::size_t(classes) : 2));
    std::vector<double> probs(count), grad(count, 99.0), sums(3 * std::size_t(images) * classes), scratch(count);
    const double l0 = head_loss(head, images, classes, plane, logits, target, o, probs, grad, sums);
    CHECK(std::isfinite(l0));
    auto loss = [&] { return head_loss(head, images, classes, plane, logits, target, o, probs, scratch, sums); };
    CHECK(loss() == l0);
    Rng pick(seed + 1);
    check_gradient("d loss / d logits", logits.data(), grad.data(), count, sample_indices(count, 300, pick), loss);
}

// ------------------------------------------------------------------------------------------
// Whole networks

template <UNetConfig C>
void check_network(const Shape& s, const DiceLoss& o, std::uint64_t seed) {
    using Net = UNet<C, cpu, double>;
    Net net(seed);
    Rng rng(seed * 7919 + 17);
    // Move biases, gammas and betas off their initial 0 and 1, so every path is generic.
    for (auto& p : net.parameters()) p += rng.uniform(-0.05, 0.05);
    Tensor<double> x(s);
    lightunet::testing::fill_uniform(x, rng, -1.0, 1.0);
    typename Net::Labels labels(Shape{s.n, C.head == Head::softmax ? 1 : C.classes, s.d, s.h, s.w});
    for (auto& t : labels) t = std::uint8_t(rng.index(C.head == Head::softmax ? std::size_t(C.classes) : 2));

    net.forward(x, Mode::train);
    Tensor<double> input_grad;
    const double l0 = net.backward(x, labels, o, &input_grad);
    REQUIRE(input_grad.shape() == s);
    const std::vector<double> param_grad(net.gradients().begin(), net.gradients().end());

    // The finite differences run hundreds of tiny forward passes: one thread is faster there
    // (the analytic gradients above ran on the default count).
    struct ThreadCountGuard {
        int saved = cpu_kernels::thread_count();
        ~ThreadCountGuard() { cpu_kernels::set_thread_count(saved); }
    } guard;
    cpu_kernels::set_thread_count(1);

    // The loss alone, from the same kernels backward uses.
    const std::size_t probs_size = std::size_t(s.n) * C.classes * s.spatial();
    std::vector<double> grad_scratch(probs_size), sums(3 * std::size_t(s.n) * C.classes);
    auto model_loss = [&] {
        const auto& p = net.forward(x, Mode::train);
        return cpu_kernels::dice_loss(C.head, s.n, C.classes, std::ptrdiff_t(s.spatial()), p.data(), labels.data(), o,
                                      grad_scratch.data(), sums.data());
    };

    // The loss over every head from the naive forward of tests/reference_unet.hpp (the model
    // shows its top head only), with the targets sub-sampled and the heads weighted as
    // docs/design.md says, written out here: nnU-Net's 2^-h / sum_k 2^-k.
    const int heads = 1 + (C.deep_supervision ? C.depth() - 3 : 0);
    const int label_channels = C.head == Head::softmax ? 1 : C.classes;
    std::vector<std::vector<std::uint8_t>> head_labels{std::vector<std::uint8_t>(labels.begin(), labels.end())};
    std::vector<double> head_weights{1.0};
    for (int h = 1; h < heads; ++h) {
        const int fd = C.dims == 3 ? 2 : 1, scale = 1 << (h - 1);
        head_labels.push_back(reference::subsample_labels(head_labels.back(), s.n, label_channels, s.d / (C.dims == 3 ? scale : 1),
                                                          s.h / scale, s.w / scale, fd));
        head_weights.push_back(head_weights.back() / 2);
    }
    double weight_sum = 0;
    for (double w : head_weights) weight_sum += w;
    for (double& w : head_weights) w /= weight_sum;
    auto reference_probabilities = [&] {
        reference::Volume in(s.n, s.c, s.d, s.h, s.w);
        in.v.assign(x.begin(), x.end());
        return reference::UNetForward(C, net.parameters()).run(in);
    };
    auto reference_loss = [&] {
        const auto probs = reference_probabilities();
        REQUIRE(int(probs.size()) == heads);
        double total = 0;
        for (int h = 0; h < heads; ++h) {
            const auto& p = probs[std::size_t(h)];
            total += head_weights[std::size_t(h)] *
                     cpu_kernels::dice_loss(C.head, s.n, C.classes, std::ptrdiff_t(p.spatial()), p.v.data(),
                                            head_labels[std::size_t(h)].data(), o, grad_scratch.data(), sums.data());
        }
        return total;
    };
    {
        // The reference and the model agree before anything is differentiated.
        const auto probs = reference_probabilities();
        const auto& top = net.forward(x, Mode::train);
        REQUIRE(probs[0].v.size() == top.size());
        double gap = 0;
        for (std::size_t i = 0; i < top.size(); ++i) gap = std::max(gap, std::abs(probs[0].v[i] - top[i]));
        INFO("top head: |reference - model| up to " << gap);
        CHECK(gap < 1e-12);
        CHECK(reference_loss() == Approx(l0).epsilon(1e-12));
    }
    // Deep supervision: the loss of every head, so only the reference sees them all.
    auto loss = [&] { return C.deep_supervision ? reference_loss() : model_loss(); };
    CHECK(loss() == Approx(l0).epsilon(C.deep_supervision ? 1e-12 : 1e-13));

    // A point in every parameter tensor, then some anywhere.
    const auto segments = lightunet::testing::parameter_segments(C);
    REQUIRE(segments.back().offset + segments.back().size == Net::parameter_count);
    std::vector<std::size_t> points;
    for (const auto& seg : segments) points.push_back(seg.offset + rng.index(seg.size));
    for (std::size_t i : sample_indices(Net::parameter_count, 16, rng)) points.push_back(i);
    check_gradient("parameters", net.parameters().data(), param_grad.data(), Net::parameter_count, points, loss);
    // Every parameter tensor gets some gradient, except conv biases in front of a batch or
    // instance norm, whose per-channel mean subtraction removes them (group norm subtracts a
    // group mean and does not).
    for (const auto& seg : segments) {
        const bool cancelled = (C.norm == Norm::batch || C.norm == Norm::instance) && seg.name.find(".conv") != std::string::npos &&
                               seg.name.find(".bias") != std::string::npos;
        double m = 0;
        for (std::size_t i = seg.offset; i < seg.offset + seg.size; ++i) m = std::max(m, std::abs(param_grad[i]));
        INFO(seg.name << ": max |gradient| " << m);
        if (cancelled) CHECK(m < 1e-12);
        else CHECK(m > 1e-9);
    }

    check_gradient("input", x.data(), input_grad.data(), x.size(), sample_indices(x.size(), 12, rng), loss);
}

}  // namespace

TEST_CASE("norm + activation backward equals finite differences", "[gradients][norm]") {
    const Norm norms[] = {Norm::batch, Norm::instance, Norm::group, Norm::none};
    const Act acts[] = {Act::relu, Act::leaky_relu};
    std::uint64_t seed = 100;
    for (Norm norm : norms)
        for (Act act : acts) {
            const char* act_name = act == Act::relu ? "relu" : "leaky_relu";
            ++seed;
            DYNAMIC_SECTION("2D " << norm_name(norm) << " " << act_name << ", 2 images, 4 channels, 3x5") {
                check_norm_act(norm, act, {1, 3, 5}, 2, 4, seed);
            }
            DYNAMIC_SECTION("3D " << norm_name(norm) << " " << act_name << ", 3 images, 4 channels, 3x2x3") {
                check_norm_act(norm, act, {3, 2, 3}, 3, 4, seed + 1000);
            }
        }
}

// The backward pass takes the activation's derivative from the sign of v = z * scale + shift
// rather than from the forward's output y (which training then need not keep): on the float
// path the model runs, that sign must be the one y had, also where v rounds to either side of
// zero. With dy = 1 and ReLU, dbeta counts the voxels the backward treats as active: it must
// count those with y > 0, exactly, after half of them were moved to within a few ulps of v = 0.
TEST_CASE("norm backward sees the sign the forward output had, also at v = 0", "[gradients][norm]") {
    for (Norm norm : {Norm::batch, Norm::instance, Norm::group, Norm::none}) {
        DYNAMIC_SECTION(norm_name(norm)) {
            const int images = 2, channels = 4, groups = norm == Norm::group ? 2 : 1;
            const std::ptrdiff_t plane = 1000 + 7;  // a tail past every vector width
            const NormGrouping g{norm, images, channels, groups, plane};
            const Activation relu{Act::relu, 0};
            const std::size_t count = std::size_t(images) * channels * std::size_t(plane);
            Rng rng(41);
            std::vector<float> z(count), gamma(channels), beta(channels);
            for (auto& v : z) v = float(rng.uniform(-2.0, 2.0));
            for (auto& v : gamma) v = float(rng.uniform(0.5, 1.5));
            for (auto& v : beta) v = float(rng.uniform(-0.5, 0.5));
            const int stats = std::max(1, g.stat_count());
            std::vector<float> y(count), mean(static_cast<std::size_t>(stats)), invstd(static_cast<std::size_t>(stats));
            cpu_kernels::norm_act_forward(g, relu, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                          static_cast<float*>(nullptr), static_cast<float*>(nullptr), NormStats::batch);
            // Every other voxel to the root of v (in double) and a few ulps around it; the
            // statistics stay the saved ones.
            for (std::size_t i = 0; i < count; i += 2) {
                const int n = int(i / std::size_t(plane) / std::size_t(channels)), c = int(i / std::size_t(plane) % std::size_t(channels));
                const int st = g.stat_of(n, c);
                const double scale = norm == Norm::none ? 1.0 : double(gamma[c]) * double(invstd[st]);
                const double shift = norm == Norm::none ? 0.0 : double(beta[c]) - double(mean[st]) * scale;
                float root = float(-shift / scale);
                for (int step = int(i / 2 % 7) - 3; step != 0; step += step < 0 ? 1 : -1)
                    root = std::nextafter(root, step < 0 ? -INFINITY : INFINITY);
                z[i] = root;
            }
            cpu_kernels::norm_act_forward(g, relu, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                          static_cast<float*>(nullptr), static_cast<float*>(nullptr), NormStats::saved);
            std::vector<float> dz(count, 1.0f), dgamma(channels, 0.0f), dbeta(channels, 0.0f), scratch(2 * std::size_t(images) * channels);
            std::vector<double> active(std::size_t(channels), 0.0);
            int near_zero_active = 0, near_zero = 0;
            for (std::size_t i = 0; i < count; ++i) {
                active[i / std::size_t(plane) % std::size_t(channels)] += y[i] > 0;
                if (i % 2 == 0) ++near_zero, near_zero_active += y[i] > 0;
            }
            INFO(near_zero_active << " of " << near_zero << " voxels near v = 0 active");
            REQUIRE(near_zero_active > near_zero / 10);  // the test reaches both sides of zero
            REQUIRE(near_zero_active < near_zero * 9 / 10);
            cpu_kernels::norm_act_backward(g, relu, z.data(), dz.data(), gamma.data(), beta.data(), mean.data(), invstd.data(),
                                           dz.data(), dgamma.data(), dbeta.data(), scratch.data());
            if (norm == Norm::none) {
                // No norm: dz is the mask itself.
                for (std::size_t i = 0; i < count; ++i) CHECK(dz[i] == (y[i] > 0 ? 1.0f : 0.0f));
            } else {
                for (int c = 0; c < channels; ++c) CHECK(double(dbeta[c]) == active[std::size_t(c)]);
            }
        }
    }
}

// The norm's sums run over a whole 128^3 plane (2 M voxels) in short sums of T joined in double
// (norm_sum_block): the float path's statistics and backward sums must keep fp32 accuracy at
// that size, also with a mean far from zero. Against the same sums in double from the same
// float inputs: mean, invstd, dgamma, dbeta within 1e-6 (relative to the sum of the terms'
// magnitudes), dz within 1e-5. Summing a whole plane in float misses this by far.
TEST_CASE("norm sums keep fp32 accuracy over a 128^3 plane", "[gradients][norm]") {
    const int channels = 2;
    const std::ptrdiff_t plane = 128 * 128 * 128 + 5;  // and a tail
    const NormGrouping g{Norm::instance, 1, channels, 1, plane};
    const Activation act{Act::leaky_relu, 0.01};
    const std::size_t count = std::size_t(channels) * std::size_t(plane);
    Rng rng(7);
    std::vector<float> z(count), dy(count);
    for (std::size_t i = 0; i < count; ++i) {
        const double offset = i < std::size_t(plane) ? 0.0 : 40.0;  // channel 1 far from zero
        z[i] = float(offset + 3.0 * rng.normal());
        dy[i] = float(rng.normal());
    }
    const std::vector<float> gamma{1.3f, 0.7f}, beta{0.2f, -0.1f};
    std::vector<float> y(count), mean(channels), invstd(channels);
    cpu_kernels::norm_act_forward(g, act, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                  static_cast<float*>(nullptr), static_cast<float*>(nullptr), NormStats::batch);
    std::vector<float> dz(count), dgamma(channels, 0.0f), dbeta(channels, 0.0f), scratch(2 * std::size_t(channels));
    cpu_kernels::norm_act_backward(g, act, z.data(), dy.data(), gamma.data(), beta.data(), mean.data(), invstd.data(), dz.data(),
                                   dgamma.data(), dbeta.data(), scratch.data());
    for (int c = 0; c < channels; ++c) {
        const float* zc = z.data() + c * plane;
        const float* dyc = dy.data() + c * plane;
        double sum = 0, abs_sum = 0;
        for (std::ptrdiff_t k = 0; k < plane; ++k) sum += zc[k], abs_sum += std::abs(double(zc[k]));
        const double mu = sum / double(plane);
        double sq = 0;
        for (std::ptrdiff_t k = 0; k < plane; ++k) sq += (zc[k] - mu) * (zc[k] - mu);
        const double is = 1.0 / std::sqrt(sq / double(plane) + 1e-5);
        // The backward's sums with the float statistics the kernel saved (as it uses them).
        const double fmu = mean[std::size_t(c)], fis = invstd[std::size_t(c)];
        // The activation's mask: the sign the forward output had (the backward's contract; how a
        // build rounds v near zero is the business of the test before this one).
        const float* yc = y.data() + c * plane;
        double su = 0, sux = 0, abs_su = 0, abs_sux = 0;
        std::vector<double> u(static_cast<std::size_t>(plane)), xhat(static_cast<std::size_t>(plane));
        for (std::ptrdiff_t k = 0; k < plane; ++k) {
            u[std::size_t(k)] = yc[k] > 0 ? double(dyc[k]) : double(dyc[k]) * double(0.01f);
            xhat[std::size_t(k)] = (double(zc[k]) - fmu) * fis;
            su += u[std::size_t(k)], sux += u[std::size_t(k)] * xhat[std::size_t(k)];
            abs_su += std::abs(u[std::size_t(k)]), abs_sux += std::abs(u[std::size_t(k)] * xhat[std::size_t(k)]);
        }
        double worst_dz = 0;
        const double k1 = double(gamma[std::size_t(c)]) * su / double(plane), k2 = double(gamma[std::size_t(c)]) * sux / double(plane);
        for (std::ptrdiff_t k = 0; k < plane; ++k) {
            const double expected = double(gamma[std::size_t(c)]) * fis * u[std::size_t(k)] - fis * (k1 + xhat[std::size_t(k)] * k2);
            worst_dz = std::max(worst_dz, std::abs(double(dz[std::size_t(c * plane + k)]) - expected) / (1.0 + std::abs(expected)));
        }
        INFO("channel " << c << ": mean " << mean[std::size_t(c)] << " vs " << mu << ", invstd " << invstd[std::size_t(c)] << " vs " << is
                        << ", dbeta " << dbeta[std::size_t(c)] << " vs " << su << ", dgamma " << dgamma[std::size_t(c)] << " vs " << sux
                        << ", worst dz " << worst_dz);
        CHECK(std::abs(double(mean[std::size_t(c)]) - mu) <= 1e-6 * abs_sum / double(plane));
        CHECK(std::abs(double(invstd[std::size_t(c)]) - is) <= 1e-6 * is);
        CHECK(std::abs(double(dbeta[std::size_t(c)]) - su) <= 1e-6 * abs_su);
        CHECK(std::abs(double(dgamma[std::size_t(c)]) - sux) <= 1e-6 * abs_sux);
        CHECK(worst_dz <= 1e-5);
    }
}

TEST_CASE("max-pool backward equals finite differences", "[gradients][resample]") {
    auto check = [](const Cells& cells, std::ptrdiff_t planes, std::uint64_t seed) {
        const std::size_t fine = std::size_t(planes) * cells.fine().size(), coarse = std::size_t(planes) * cells.coarse.size();
        Rng rng(seed);
        auto x = random_vector(fine, rng);
        const auto r = random_vector(coarse, rng);
        std::vector<double> y(coarse), dx(fine, 99.0);
        cpu_kernels::max_pool_forward(cells, planes, x.data(), y.data());
        // The definition: the maximum of each cell.
        for (std::ptrdiff_t p = 0; p < planes; ++p)
            for (int z = 0; z < cells.coarse.d; ++z)
                for (int v = 0; v < cells.coarse.h; ++v)
                    for (int u = 0; u < cells.coarse.w; ++u) {
                        const Extent f = cells.fine();
                        double m = -1e300;
                        for (int a = 0; a < cells.fd; ++a)
                            for (int b = 0; b < 2; ++b)
                                for (int c = 0; c < 2; ++c)
                                    m = std::max(m, x[std::size_t(p) * f.size() +
                                                      (std::size_t(z * cells.fd + a) * f.h + std::size_t(2 * v + b)) * f.w +
                                                      std::size_t(2 * u + c)]);
                        CHECK(y[std::size_t(p) * cells.coarse.size() + (std::size_t(z) * cells.coarse.h + v) * cells.coarse.w + u] == m);
                    }
        cpu_kernels::max_pool_backward(cells, planes, x.data(), r.data(), dx.data(), false);
        auto loss = [&] {
            cpu_kernels::max_pool_forward(cells, planes, x.data(), y.data());
            return dot(r, y);
        };
        check_gradient("max-pool dx", x.data(), dx.data(), fine, all_indices(fine), loss);
        // Accumulating adds the same gradient onto what is there.
        std::vector<double> acc(fine, 0.5);
        cpu_kernels::max_pool_backward(cells, planes, x.data(), r.data(), acc.data(), true);
        for (std::size_t i = 0; i < fine; ++i) REQUIRE(acc[i] == Approx(0.5 + dx[i]).epsilon(1e-15));
    };
    SECTION("2D cells (fd = 1), 3 planes, coarse 3x2") { check(Cells{{1, 3, 2}, 1}, 3, 11); }
    SECTION("3D cells (fd = 2), 2 planes, coarse 2x1x3") { check(Cells{{2, 1, 3}, 2}, 2, 12); }
    SECTION("ties send the gradient to the first maximum, as PyTorch does") {
        const Cells cells{{1, 1, 1}, 1};
        const double x[4] = {0.5, 2.0, 2.0, 2.0}, g[1] = {3.0};
        double dx[4] = {9, 9, 9, 9};
        cpu_kernels::max_pool_backward(cells, 1, x, g, dx, false);
        CHECK(dx[0] == 0.0);
        CHECK(dx[1] == 3.0);
        CHECK(dx[2] == 0.0);
        CHECK(dx[3] == 0.0);
    }
}

TEST_CASE("up-sampling and space-to-depth are the adjoints of their backward passes", "[gradients][resample]") {
    auto check = [](const Cells& cells, int images, int channels, std::uint64_t seed) {
        const std::ptrdiff_t planes = std::ptrdiff_t(images) * channels;
        const Extent fe = cells.fine();
        const std::size_t fine = std::size_t(planes) * fe.size(), coarse = std::size_t(planes) * cells.coarse.size();
        const int per = cells.per_cell();
        Rng rng(seed);
        const auto xf = random_vector(fine, rng), xc = random_vector(coarse, rng);
        const auto yf = random_vector(fine, rng), yc = random_vector(coarse, rng);
        auto fine_index = [&](std::size_t p, int z, int v, int u) {
            return p * fe.size() + (std::size_t(z) * fe.h + std::size_t(v)) * fe.w + std::size_t(u);
        };

        // Nearest up-sampling: every fine voxel copies its cell's coarse voxel.
        std::vector<double> up(fine), up_t(coarse, 99.0);
        cpu_kernels::upsample_nearest_forward(cells, planes, xc.data(), up.data());
        for (std::size_t p = 0; p < std::size_t(planes); ++p)
            for (int z = 0; z < fe.d; ++z)
                for (int v = 0; v < fe.h; ++v)
                    for (int u = 0; u < fe.w; ++u)
                        REQUIRE(up[fine_index(p, z, v, u)] ==
                                xc[p * cells.coarse.size() + (std::size_t(z / cells.fd) * cells.coarse.h + std::size_t(v / 2)) * cells.coarse.w + std::size_t(u / 2)]);
        cpu_kernels::upsample_nearest_backward(cells, planes, yf.data(), up_t.data());
        CHECK(dot(up, yf) == Approx(dot(xc, up_t)).epsilon(1e-13));

        // Space-to-depth: channel c * per + k of the coarse tensor holds cell voxel k (a_d, a_h, a_w
        // row-major) of channel c.
        std::vector<double> s2d(fine), d2s(fine, 99.0);
        cpu_kernels::space_to_depth(cells, planes, xf.data(), s2d.data());
        for (int n = 0; n < images; ++n)
            for (int c = 0; c < channels; ++c)
                for (int k = 0; k < per; ++k) {
                    const int a = k / 4, b = (k / 2) % 2, e = k % 2;
                    for (int z = 0; z < cells.coarse.d; ++z)
                        for (int v = 0; v < cells.coarse.h; ++v)
                            for (int u = 0; u < cells.coarse.w; ++u) {
                                const std::size_t ci = ((std::size_t(n) * channels + c) * per + k) * cells.coarse.size() +
                                                       (std::size_t(z) * cells.coarse.h + v) * cells.coarse.w + u;
                                REQUIRE(s2d[ci] == xf[fine_index(std::size_t(n) * channels + c, z * cells.fd + a, 2 * v + b, 2 * u + e)]);
                            }
                }
        // Adjoint and inverse of each other (a permutation).
        cpu_kernels::depth_to_space(cells, planes, channels, yf.data(), static_cast<const double*>(nullptr), d2s.data(), false);
        CHECK(dot(s2d, yf) == Approx(dot(xf, d2s)).epsilon(1e-13));
        std::vector<double> back(fine, 99.0);
        cpu_kernels::depth_to_space(cells, planes, channels, static_cast<const double*>(s2d.data()),
                                    static_cast<const double*>(nullptr), back.data(), false);
        CHECK(back == xf);
        // With a bias per channel, accumulating.
        const auto bias = random_vector(std::size_t(channels), rng);
        std::vector<double> acc(fine, 0.25);
        cpu_kernels::depth_to_space(cells, planes, channels, static_cast<const double*>(s2d.data()), bias.data(), acc.data(), true);
        for (std::size_t i = 0; i < fine; ++i) {
            const std::size_t c = (i / fe.size()) % std::size_t(channels);
            REQUIRE(acc[i] == Approx(0.25 + xf[i] + bias[c]).epsilon(1e-15));
        }
    };
    SECTION("2D cells, 2 images x 3 channels, coarse 3x5") { check(Cells{{1, 3, 5}, 1}, 2, 3, 21); }
    SECTION("3D cells, 1 image x 2 channels, coarse 2x3x1") { check(Cells{{2, 3, 1}, 2}, 1, 2, 22); }
}

TEST_CASE("head + Dice loss gradient with respect to the logits equals finite differences", "[gradients][loss]") {
    const Head heads[] = {Head::softmax, Head::sigmoid};
    std::uint64_t seed = 300;
    for (Head head : heads)
        for (bool background : {true, false})
            for (bool batch_dice : {false, true})
                for (double ce : {0.0, 1.0}) {
                    if (head == Head::sigmoid && !background) continue;  // include_background is softmax-only
                    ++seed;
                    const DiceLoss o{.include_background = background, .batch_dice = batch_dice, .ce_weight = ce};
                    DYNAMIC_SECTION((head == Head::softmax ? "softmax" : "sigmoid")
                                    << " background " << background << " batch_dice " << batch_dice << " ce " << ce
                                    << ", 2D 2 images x 3 classes, 9x37") {
                        check_head_loss(head, 2, 3, {1, 9, 37}, o, seed);
                    }
                    DYNAMIC_SECTION((head == Head::softmax ? "softmax" : "sigmoid")
                                    << " background " << background << " batch_dice " << batch_dice << " ce " << ce
                                    << ", 3D 3 images x 2 classes, 3x2x5") {
                        check_head_loss(head, 3, 2, {3, 2, 5}, o, seed + 1000);
                    }
                }
}

namespace {
constexpr UNetConfig net_2d_batch{.dims = 2, .in_channels = 2, .classes = 3, .widths = {4, 8, 16}, .norm = Norm::batch,
                                  .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv,
                                  .head = Head::softmax};
constexpr UNetConfig net_2d_instance{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 6}, .norm = Norm::instance,
                                     .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                     .head = Head::sigmoid, .leaky_slope = 0.1};
constexpr UNetConfig net_2d_group{.dims = 2, .in_channels = 3, .classes = 4, .widths = {4, 6, 8}, .norm = Norm::group,
                                  .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::transposed_conv,
                                  .head = Head::softmax, .groups = 2, .leaky_slope = 0.2};
constexpr UNetConfig net_2d_none{.dims = 2, .in_channels = 1, .classes = 2, .widths = {3, 5}, .norm = Norm::none,
                                 .act = Act::relu, .down = Down::max_pool, .up = Up::interpolate_conv,
                                 .head = Head::softmax};
constexpr UNetConfig net_3d_batch{.dims = 3, .in_channels = 2, .classes = 2, .widths = {4, 8}, .norm = Norm::batch,
                                  .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::transposed_conv,
                                  .head = Head::sigmoid};
constexpr UNetConfig net_3d_instance{.dims = 3, .in_channels = 1, .classes = 3, .widths = {4, 6}, .norm = Norm::instance,
                                     .act = Act::relu, .down = Down::max_pool, .up = Up::interpolate_conv,
                                     .head = Head::softmax};
constexpr UNetConfig net_3d_group{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 4, 8}, .norm = Norm::group,
                                  .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv,
                                  .head = Head::softmax, .groups = 2};
constexpr UNetConfig net_3d_none{.dims = 3, .in_channels = 2, .classes = 2, .widths = {3, 4}, .norm = Norm::none,
                                 .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                 .head = Head::sigmoid};
}  // namespace

TEST_CASE("whole-network gradients equal finite differences", "[gradients][network]") {
    SECTION("2D batch norm, ReLU, max-pool, transposed conv, softmax, 2 x 2 x 8x12") {
        check_network<net_2d_batch>({2, 2, 1, 8, 12}, {}, 1);
    }
    SECTION("2D instance norm, LeakyReLU, strided conv, interpolation, sigmoid, batch Dice + BCE, 2 x 1 x 6x10") {
        check_network<net_2d_instance>({2, 1, 1, 6, 10}, {.batch_dice = true, .ce_weight = 1.0}, 2);
    }
    SECTION("2D group norm, LeakyReLU, strided conv, transposed conv, softmax without background + CE, 1 x 3 x 12x8") {
        check_network<net_2d_group>({1, 3, 1, 12, 8}, {.include_background = false, .ce_weight = 1.0}, 3);
    }
    SECTION("2D no norm, ReLU, max-pool, interpolation, softmax, batch Dice, 2 x 1 x 10x6") {
        check_network<net_2d_none>({2, 1, 1, 10, 6}, {.batch_dice = true}, 4);
    }
    SECTION("3D batch norm, LeakyReLU, strided conv, transposed conv, sigmoid, 2 x 2 x 4x6x4") {
        check_network<net_3d_batch>({2, 2, 4, 6, 4}, {}, 5);
    }
    SECTION("3D instance norm, ReLU, max-pool, interpolation, softmax + CE, 1 x 1 x 6x4x4") {
        check_network<net_3d_instance>({1, 1, 6, 4, 4}, {.ce_weight = 1.0}, 6);
    }
    SECTION("3D group norm, ReLU, max-pool, transposed conv, softmax without background, 1 x 1 x 8x4x4") {
        check_network<net_3d_group>({1, 1, 8, 4, 4}, {.include_background = false}, 7);
    }
    SECTION("3D no norm, LeakyReLU, strided conv, interpolation, sigmoid, batch Dice, 1 x 2 x 4x4x6") {
        check_network<net_3d_none>({1, 2, 4, 4, 6}, {.batch_dice = true}, 8);
    }
}

namespace {
// Residual encoders (nnU-Net's ResEnc): several blocks on some level, levels whose channels do
// not change (an identity skip, also on the first block: in_channels = widths[0] or
// widths[l] = widths[l-1]) next to projected ones, every norm, both heads.
constexpr UNetConfig res_2d_batch{.dims = 2, .in_channels = 2, .classes = 3, .widths = {4, 4, 8}, .norm = Norm::batch,
                                  .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv, .head = Head::softmax,
                                  .encoder = Encoder::residual, .encoder_blocks = {1, 2, 1}};
constexpr UNetConfig res_2d_group{.dims = 2, .in_channels = 4, .classes = 2, .widths = {4, 6, 6}, .norm = Norm::group,
                                  .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                  .head = Head::sigmoid, .groups = 2, .leaky_slope = 0.1, .encoder = Encoder::residual,
                                  .encoder_blocks = {2, 1, 2}};
constexpr UNetConfig res_2d_none{.dims = 2, .in_channels = 1, .classes = 2, .widths = {3, 5}, .norm = Norm::none,
                                 .act = Act::relu, .down = Down::max_pool, .up = Up::interpolate_conv, .head = Head::softmax,
                                 .encoder = Encoder::residual, .encoder_blocks = {2, 3}};
constexpr UNetConfig res_3d_instance{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 4}, .norm = Norm::instance,
                                     .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv,
                                     .head = Head::sigmoid, .encoder = Encoder::residual, .encoder_blocks = {1, 2}};
constexpr UNetConfig res_3d_batch{.dims = 3, .in_channels = 2, .classes = 3, .widths = {3, 6}, .norm = Norm::batch,
                                  .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                  .head = Head::softmax, .encoder = Encoder::residual, .encoder_blocks = {2, 1}};

// Deep supervision: depth 4 (one auxiliary head, on decoder level 1) and 5 (two, levels 1 and 2).
constexpr UNetConfig ds_2d_batch{.dims = 2, .in_channels = 1, .classes = 3, .widths = {2, 3, 4, 4}, .norm = Norm::batch,
                                 .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv, .head = Head::softmax,
                                 .deep_supervision = true};
constexpr UNetConfig ds_2d_instance{.dims = 2, .in_channels = 2, .classes = 2, .widths = {2, 2, 3, 3, 4},
                                    .norm = Norm::instance, .act = Act::leaky_relu, .down = Down::strided_conv,
                                    .up = Up::interpolate_conv, .head = Head::sigmoid, .leaky_slope = 0.1,
                                    .deep_supervision = true};
constexpr UNetConfig ds_3d_group{.dims = 3, .in_channels = 1, .classes = 2, .widths = {4, 4, 6, 6}, .norm = Norm::group,
                                 .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv, .head = Head::softmax,
                                 .groups = 2, .deep_supervision = true};

// Both together.
constexpr UNetConfig resds_2d_batch{.dims = 2, .in_channels = 2, .classes = 2, .widths = {4, 4, 6, 6}, .norm = Norm::batch,
                                    .act = Act::leaky_relu, .down = Down::max_pool, .up = Up::transposed_conv,
                                    .head = Head::sigmoid, .encoder = Encoder::residual, .encoder_blocks = {1, 2, 2, 1},
                                    .deep_supervision = true};
constexpr UNetConfig resds_2d_none{.dims = 2, .in_channels = 1, .classes = 2, .widths = {2, 3, 3, 4, 4}, .norm = Norm::none,
                                   .act = Act::relu, .down = Down::max_pool, .up = Up::interpolate_conv,
                                   .head = Head::softmax, .encoder = Encoder::residual, .encoder_blocks = {1, 1, 2, 1, 2},
                                   .deep_supervision = true};
constexpr UNetConfig resds_3d_instance{.dims = 3, .in_channels = 1, .classes = 3, .widths = {2, 4, 4, 4},
                                       .norm = Norm::instance, .act = Act::relu, .down = Down::strided_conv,
                                       .up = Up::interpolate_conv, .head = Head::softmax, .encoder = Encoder::residual,
                                       .encoder_blocks = {2, 1, 1, 2}, .deep_supervision = true};
}  // namespace

TEST_CASE("residual-encoder gradients equal finite differences", "[gradients][network][residual]") {
    SECTION("2D batch norm, ReLU, blocks 1,2,1 (level 1 identity skips), softmax, 2 x 2 x 8x12") {
        check_network<res_2d_batch>({2, 2, 1, 8, 12}, {}, 11);
    }
    SECTION("2D group norm, LeakyReLU, strided conv, interpolation, blocks 2,1,2 (input width = level 0), sigmoid, batch Dice + BCE, "
            "1 x 4 x 12x8") {
        check_network<res_2d_group>({1, 4, 1, 12, 8}, {.batch_dice = true, .ce_weight = 1.0}, 12);
    }
    SECTION("2D no norm, ReLU, interpolation, blocks 2,3 (unnormalised projection), softmax + CE, 2 x 1 x 10x6") {
        check_network<res_2d_none>({2, 1, 1, 10, 6}, {.ce_weight = 1.0}, 13);
    }
    SECTION("3D instance norm, ReLU, blocks 1,2 (level 1 identity skips), sigmoid, 1 x 1 x 4x6x4") {
        check_network<res_3d_instance>({1, 1, 4, 6, 4}, {}, 14);
    }
    SECTION("3D batch norm, LeakyReLU, strided conv, interpolation, blocks 2,1, softmax without background + CE, 2 x 2 x 4x4x6") {
        check_network<res_3d_batch>({2, 2, 4, 4, 6}, {.include_background = false, .ce_weight = 1.0}, 15);
    }
}

TEST_CASE("deep-supervision gradients equal finite differences", "[gradients][network][deep_supervision]") {
    SECTION("2D depth 4, batch norm, ReLU, transposed conv, softmax + CE, 2 x 1 x 8x16") {
        check_network<ds_2d_batch>({2, 1, 1, 8, 16}, {.ce_weight = 1.0}, 21);
    }
    SECTION("2D depth 5, instance norm, LeakyReLU, strided conv, interpolation, sigmoid, batch Dice, 1 x 2 x 32x32") {
        check_network<ds_2d_instance>({1, 2, 1, 32, 32}, {.batch_dice = true}, 22);
    }
    SECTION("3D depth 4, group norm, ReLU, transposed conv, softmax without background, 1 x 1 x 8x8x16") {
        check_network<ds_3d_group>({1, 1, 8, 8, 16}, {.include_background = false}, 23);
    }
}

TEST_CASE("residual encoder with deep supervision: gradients equal finite differences",
          "[gradients][network][residual][deep_supervision]") {
    SECTION("2D depth 4, batch norm, LeakyReLU, blocks 1,2,2,1, sigmoid + BCE, 2 x 2 x 16x8") {
        check_network<resds_2d_batch>({2, 2, 1, 16, 8}, {.ce_weight = 1.0}, 31);
    }
    SECTION("2D depth 5, no norm, ReLU, interpolation, blocks 1,1,2,1,2, softmax, 1 x 1 x 16x16") {
        check_network<resds_2d_none>({1, 1, 1, 16, 16}, {}, 32);
    }
    SECTION("3D depth 4, instance norm, ReLU, strided conv, interpolation, blocks 2,1,1,2, softmax + CE, 1 x 1 x 16x16x8") {
        check_network<resds_3d_instance>({1, 1, 16, 16, 8}, {.ce_weight = 1.0}, 33);
    }
}

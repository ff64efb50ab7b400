// Under mpirun -np N: MpiCollective's sums, maxima and broadcasts, and a U-Net trained on a
// global batch split over the ranks against the same network trained on the whole batch in
// this process (every rank computes that reference itself).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "lightunet/detail/splitmix64.hpp"
#include "lightunet/dist/mpi.hpp"
#include "lightunet/lightunet.hpp"

using namespace lightunet;

namespace {

int failures = 0;
void expect(bool ok, const std::string& what, int rank) {
    if (ok) return;
    ++failures;
    std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, what.c_str());
}

constexpr UNetConfig net_config{.dims = 2, .in_channels = 2, .classes = 3, .widths = {4, 8, 8, 16}, .norm = Norm::batch,
                                .head = Head::sigmoid, .deep_supervision = true};
using Net = UNet<net_config, cpu, double>;

}  // namespace

int main() {
    dist::MpiCollective group(60.0);
    const int rank = group.rank(), size = group.size();

    std::vector<double> values{double(rank), 1.0, double(rank * rank)};
    group.sum(std::span<double>(values));
    expect(values[0] == size * (size - 1) / 2.0 && values[1] == size, "sum of doubles", rank);
    std::vector<float> floats(3'000'001, float(rank + 1));  // more than one request's worth of small messages
    group.sum(std::span<float>(floats));
    expect(floats.front() == float(size * (size + 1) / 2) && floats.back() == floats.front(), "sum of 3M floats", rank);
    expect(group.max(double(rank)) == size - 1, "max", rank);
    const std::string text = group.broadcast(rank == 0 ? std::string("from rank 0") : std::string(), 0);
    expect(text == "from rank 0", "broadcast of a string: got '" + text + "'", rank);
    expect(group.broadcast(std::string(), 0).empty(), "broadcast of an empty string", rank);

    // Training: 4 Adam steps on a global batch of 2 x size images.
    const int local = 2, steps = 4;
    const Shape global{local * size, 2, 1, 16, 16};
    const DiceLoss loss{.include_background = true, .batch_dice = true, .smooth = 1e-5, .ce_weight = 1.0};
    Net whole(3), share(3);
    Adam<double> whole_opt(1e-3), share_opt(1e-3);
    CrossBatch across = group.cross_batch(local);
    share.distribute(&across);
    detail::SplitMix64 rng(17);
    double worst_loss = 0;
    for (int s = 0; s < steps; ++s) {
        Tensor<double> x(global);
        Net::Labels y({global.n, 3, 1, 16, 16});
        for (auto& v : x) v = rng.uniform() * 2 - 1;
        for (auto& v : y) v = std::uint8_t(rng.uniform() < 0.3);
        const double expected = whole.train_step(x, y, loss, whole_opt);
        Tensor<double> xs({local, 2, 1, 16, 16});
        Net::Labels ys({local, 3, 1, 16, 16});
        std::copy_n(x.data() + std::size_t(rank) * xs.size(), xs.size(), xs.data());
        std::copy_n(y.data() + std::size_t(rank) * ys.size(), ys.size(), ys.data());
        const double got = share.train_step(xs, ys, loss, share_opt, [&](Tensor<double>& g) {
            group.sum(std::span<double>(g.data(), Net::parameter_count));
        });
        worst_loss = std::max(worst_loss, std::abs(got - expected) / std::abs(expected));
    }
    double worst = 0, largest = 0;
    const auto a = whole.parameters(), b = share.parameters();
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i])), largest = std::max(largest, std::abs(a[i]));
    expect(worst_loss < 1e-13, "loss differs by " + std::to_string(worst_loss), rank);
    expect(worst / largest < 1e-10, "weights differ by " + std::to_string(worst / largest), rank);
    if (rank == 0)
        std::printf("%d ranks: loss %.2g, weights %.2g of the largest from one process on the global batch\n", size, worst_loss,
                    worst / largest);
    return failures ? 1 : 0;
}

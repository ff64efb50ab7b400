// CUDA ranks under mpirun -np N, one GPU each (rank % devices): each trains a CUDA U-Net on its
// share of a global batch, its gradients summed through dist::sum_across (host staging, or the
// device memory itself with CUDA-aware MPI), against a CUDA U-Net trained on the whole batch in
// the same process. Instance norm: batch norm across ranks is not available on CUDA (its
// statistics exchange is CPU-only). Without a GPU it prints SKIPPED (ctest: skipped).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <lightunet/detail/splitmix64.hpp>
#include <lightunet/dist/gradients.hpp>
#include <lightunet/dist/mpi.hpp>
#include <lightunet/model/unet.hpp>
#include <lightunet/optim/optimizers.hpp>

using namespace lightunet;

namespace {

constexpr UNetConfig net_config = [] {
    UNetConfig c;
    c.dims = 2;
    c.in_channels = 2;
    c.classes = 3;
    c.widths = {8, 16, 24, 0, 0, 0, 0, 0};
    c.norm = Norm::instance;
    c.head = Head::sigmoid;
    return c;
}();
using Net = UNet<net_config, cuda>;

}  // namespace

int main() {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
        std::printf("SKIPPED: no CUDA device (%s)\n", status != cudaSuccess ? cudaGetErrorString(status) : "none found");
        return 0;
    }
    dist::MpiCollective group(120.0);
    const int rank = group.rank(), size = group.size();
    cudaSetDevice(rank % devices);

    const int local = 2, steps = 4;
    const Shape global{local * size, 2, 1, 32, 32};
    const DiceLoss loss{.include_background = true, .batch_dice = true, .smooth = 1e-5, .ce_weight = 1.0};
    Net whole(3), share(3);
    Sgd<float, cuda> whole_opt(1e-2, 0.9, true), share_opt(1e-2, 0.9, true);
    CrossBatch across = group.cross_batch(local);
    share.distribute(&across);
    std::vector<float> staging;
    detail::SplitMix64 rng(17);
    double worst_loss = 0;
    for (int s = 0; s < steps; ++s) {
        Tensor<float> x(global);
        Tensor<std::uint8_t> y({global.n, 3, 1, 32, 32});
        for (auto& v : x) v = float(rng.uniform() * 2 - 1);
        for (auto& v : y) v = std::uint8_t(rng.uniform() < 0.3);
        Tensor<float> xs({local, 2, 1, 32, 32});
        Tensor<std::uint8_t> ys({local, 3, 1, 32, 32});
        std::copy_n(x.data() + std::size_t(rank) * xs.size(), xs.size(), xs.data());
        std::copy_n(y.data() + std::size_t(rank) * ys.size(), ys.size(), ys.data());
        Tensor<float, cuda> gx, gxs;
        Tensor<std::uint8_t, cuda> gy, gys;
        copy_from_host(gx, x), copy_from_host(gy, y), copy_from_host(gxs, xs), copy_from_host(gys, ys);
        const double expected = whole.train_step(gx, gy, loss, whole_opt);
        const double got = share.train_step(gxs, gys, loss, share_opt, [&](Tensor<float, cuda>& g) {
            dist::sum_across(group, g, Net::parameter_count, staging);
        });
        worst_loss = std::max(worst_loss, std::abs(got - expected) / std::abs(expected));
    }
    std::vector<float> a(Net::parameter_count), b(Net::parameter_count);
    whole.copy_parameters_to_host(a);
    share.copy_parameters_to_host(b);
    double worst = 0, largest = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, double(std::abs(a[i] - b[i]))), largest = std::max(largest, double(std::abs(a[i])));
    const bool ok = worst_loss < 1e-5 && worst / largest < 1e-5;
    std::printf("rank %d: %d CUDA ranks (%s): loss %.2g, weights %.2g of the largest from one process on the global batch%s\n", rank,
                size, group.accepts_device_memory() ? "CUDA-aware MPI" : "host staging", worst_loss, worst / largest,
                ok ? "" : ": FAILED");
    return ok ? 0 : 1;
}

// What data-parallel training's exchanges cost by themselves (run under mpirun, bench_mpi.sh):
// the gradient sum of the BraTS 2D network (4,370,547 floats) and a batch-norm-sized exchange
// (3 x 384 doubles), each the median of `reps` calls after a warm-up, on MpiCollective.
//   mpirun -np 2 bench_mpi_allreduce [reps]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "lightunet/dist/mpi.hpp"

namespace {

template <class T>
double median_ms(lightunet::dist::MpiCollective& group, std::vector<T>& values, int reps) {
    std::vector<double> ms;
    for (int r = -3; r < reps; ++r) {
        group.max(0.0);  // start together: the time is the exchange's, not a late rank's
        const auto t0 = std::chrono::steady_clock::now();
        group.sum(std::span<T>(values));
        const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (r >= 0) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 21;
    lightunet::dist::MpiCollective group;
    std::vector<float> gradients(4'370'547, 1.0f);
    std::vector<double> norm_stats(3 * 384, 1.0);
    const double big = median_ms(group, gradients, reps), small = median_ms(group, norm_stats, reps);
    if (group.rank() == 0)
        std::printf("%d ranks: gradient sum of %zu floats (%.1f MB) %.2f ms (%.2f GB/s of algorithm bandwidth); "
                    "batch-norm exchange of %zu doubles %.3f ms; medians of %d\n",
                    group.size(), gradients.size(), gradients.size() * 4 / 1e6, big, gradients.size() * 4 / 1e6 / big,
                    norm_stats.size(), small, reps);
    return 0;
}

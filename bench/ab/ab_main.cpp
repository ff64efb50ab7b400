// Times a convolution pass of two revisions' CPU kernels in one process, alternating call by
// call, so that a shared host's drift falls on both alike; prints each one's median and the
// median of the per-pair ratios (new / old). Arguments: dims h w cin cout op [precision] [calls],
// op one of forward, wgrad, dgrad, backward; precision fp32 or bf16 (default bf16); a 3D
// problem is h x h x w, 3x3x3; a 2D one h x w, 3x3. Built and run by ab_kernels.sh.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "ab_op.hpp"

using namespace lightunet;

namespace {

ab::Op parse_op(const std::string& name) {
    if (name == "forward") return {ab::Op::forward};
    if (name == "wgrad") return {ab::Op::weight_gradient};
    if (name == "dgrad") return {ab::Op::data_gradient};
    if (name == "backward") return {ab::Op::backward};
    throw std::invalid_argument("ab_kernels: op '" + name + "' is none of forward, wgrad, dgrad, backward");
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 7) throw std::invalid_argument("usage: ab_conv dims h w cin cout op [fp32|bf16] [calls]");
    const int dims = std::atoi(argv[1]), h = std::atoi(argv[2]), w = std::atoi(argv[3]), cin = std::atoi(argv[4]),
              cout = std::atoi(argv[5]);
    const ab::Op op = parse_op(argv[6]);
    const std::string precision = argc > 7 ? argv[7] : "bf16";
    const int calls = argc > 8 ? std::atoi(argv[8]) : 15;
    if ((dims != 2 && dims != 3) || h < 1 || w < 1 || cin < 1 || cout < 1 || calls < 1)
        throw std::invalid_argument("ab_kernels: dims 2 or 3 and positive sizes, channels and calls");
    if (precision != "fp32" && precision != "bf16") throw std::invalid_argument("ab_kernels: precision '" + precision + "' is not fp32 or bf16");
    ConvProblem p = dims == 3 ? ConvProblem{{h, h, w}, 3, 3, 3, cin, cout, ConvAlgorithm::automatic}
                              : ConvProblem{{1, h, w}, 1, 3, 3, cin, cout, ConvAlgorithm::automatic};
    p.precision = precision == "bf16" ? Precision::bf16 : Precision::fp32;
    const std::size_t volume = p.extent.size();
    std::vector<float> x(cin * volume), dx(x.size()), g(cout * volume), y(g.size()), wt(p.weight_count()), dw(wt.size()),
        bias(cout, 0.1f), db(cout);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i % 10007));
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::cos(0.11f * float(i % 10009));
    for (std::size_t i = 0; i < wt.size(); ++i) wt[i] = 0.05f * std::sin(0.7f * float(i));
    std::vector<float> workspace(std::max(ab::old_workspace(p), ab::new_workspace(p)) + 64);
    const ab::Buffers b{x.data(), wt.data(), bias.data(), g.data(), y.data(), dx.data(), dw.data(), db.data(), workspace.data()};
    std::vector<double> times[2], ratio;
    for (int call = 0; call <= calls; ++call) {
        double pair[2];
        for (int k = 0; k < 2; ++k) {
            const auto t0 = std::chrono::steady_clock::now();
            (k == 0 ? ab::old_kernels : ab::new_kernels)(op, p, b);
            pair[k] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        }
        if (call == 0) continue;  // first touches of the buffers
        for (int k = 0; k < 2; ++k) times[k].push_back(pair[k]);
        ratio.push_back(pair[1] / pair[0]);
    }
    const std::string extent = (dims == 3 ? std::to_string(h) + "x" : "") + std::to_string(h) + "x" + std::to_string(w);
    std::printf("%dD %s %s %d -> %d %s: old %.3f ms, new %.3f ms, new/old %.3f (medians of %d alternated calls)\n", dims, argv[6],
                extent.c_str(), cin, cout, precision.c_str(), median(times[0]), median(times[1]), median(ratio), calls);
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
}

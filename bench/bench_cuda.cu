// GPU benchmarks of the CUDA backend: per-operation (the convolutions, fp32 and TF32, and a
// fused norm) and whole networks (inference, and a training step: forward, Dice loss,
// backward, Adam) for the BraTS workloads of docs/performance.md. Times come from CUDA events
// around each repetition; every line reports the median, min and max of the repetitions.
//
//   bench_cuda [--list] [--filter SUBSTRING] [--repeats N]
//
// Without a CUDA device it prints "SKIPPED: no CUDA device" and exits with 77.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <lightunet/model/unet.hpp>
#include <lightunet/optim/optimizers.hpp>

using namespace lightunet;

namespace {

constexpr UNetConfig brats2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512},
                             .norm = Norm::batch, .act = Act::relu};
constexpr UNetConfig brats3d{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128, 256},
                             .norm = Norm::instance, .act = Act::relu};

struct Case {
    std::string name;
    double flops;  // per repetition, 0 when not meaningful
    std::function<void()> setup, run, teardown;
};

int repeats = 10;

void time_case(const Case& c) {
    c.setup();
    cudaEvent_t a, b;
    LIGHTUNET_CUDA_CHECK(cudaEventCreate(&a));
    LIGHTUNET_CUDA_CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 2; ++i) c.run();  // warm-up: plans, allocates, loads the kernels
    cuda::synchronize();
    std::vector<double> ms;
    for (int i = 0; i < repeats; ++i) {
        LIGHTUNET_CUDA_CHECK(cudaEventRecord(a, cuda::stream()));
        c.run();
        LIGHTUNET_CUDA_CHECK(cudaEventRecord(b, cuda::stream()));
        LIGHTUNET_CUDA_CHECK(cudaEventSynchronize(b));
        float t = 0;
        LIGHTUNET_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
        ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
    std::printf("%-58s median %9.3f ms  min %9.3f  max %9.3f", c.name.c_str(), median, ms.front(), ms.back());
    if (c.flops > 0) std::printf("  %8.0f GFLOP/s", c.flops / (median * 1e-3) * 1e-9);
    std::printf("\n");
    std::fflush(stdout);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    c.teardown();
}

// One 3x3(x3) convolution of a U-Net's top level: forward, data and weight gradients.
void conv_cases(std::vector<Case>& cases, const std::string& tag, ConvProblem p, int images) {
    struct State {
        Tensor<float, cuda> x, w, b, y, dy, dx, dw, ws;
    };
    auto s = std::make_shared<State>();
    const int plane = int(p.extent.size());
    auto setup = [s, p, images, plane] {
        s->x.resize({images, p.cin, 1, 1, plane});
        s->w.resize({1, 1, 1, 1, int(p.weight_count())});
        s->b.resize({1, 1, 1, 1, p.cout});
        s->y.resize({images, p.cout, 1, 1, plane});
        s->dy.resize({images, p.cout, 1, 1, plane});
        s->dx.resize({images, p.cin, 1, 1, plane});
        s->dw.resize({1, 1, 1, 1, int(p.weight_count())});
        s->ws.resize({1, 1, 1, 1, int(Kernels<cuda>::conv_workspace_size<float>(p))});
        s->x.fill(0.5f), s->w.fill(0.01f), s->dy.fill(0.25f);
    };
    auto teardown = [s] { *s = State{}; };
    const double flops = p.flops_per_image() * images;
    auto fwd = [s, p, images, plane] {
        const ChannelSource<float> in{s->x.data(), p.cin, std::ptrdiff_t(p.cin) * plane};
        Kernels<cuda>::conv_forward(p, images, std::span<const ChannelSource<float>>(&in, 1), static_cast<const float*>(s->w.data()),
                                    static_cast<const float*>(s->b.data()), s->y.data(), std::ptrdiff_t(p.cout) * plane, s->ws.data());
    };
    auto dgrad = [s, p, images, plane] {
        const ChannelSource<float> in{s->x.data(), p.cin, std::ptrdiff_t(p.cin) * plane};
        const ChannelSink<float> out{s->dx.data(), p.cin, std::ptrdiff_t(p.cin) * plane, false};
        Kernels<cuda>::conv_backward(p, images, std::span<const ChannelSource<float>>(&in, 1), static_cast<const float*>(s->w.data()),
                                     static_cast<const float*>(s->dy.data()), std::ptrdiff_t(p.cout) * plane,
                                     std::span<const ChannelSink<float>>(&out, 1), static_cast<float*>(nullptr), static_cast<float*>(nullptr),
                                     s->ws.data());
    };
    auto wgrad = [s, p, images, plane] {
        const ChannelSource<float> in{s->x.data(), p.cin, std::ptrdiff_t(p.cin) * plane};
        const ChannelSink<float> none{};
        Kernels<cuda>::conv_backward(p, images, std::span<const ChannelSource<float>>(&in, 1), static_cast<const float*>(s->w.data()),
                                     static_cast<const float*>(s->dy.data()), std::ptrdiff_t(p.cout) * plane,
                                     std::span<const ChannelSink<float>>(&none, 1), s->dw.data(), static_cast<float*>(nullptr), s->ws.data());
    };
    auto tf32 = [](std::function<void()> f) {
        return [f] {
            Kernels<cuda>::set_tf32(true);
            f();
            Kernels<cuda>::set_tf32(false);
        };
    };
    cases.push_back({"op/" + tag + "/conv_fprop_fp32", flops, setup, fwd, teardown});
    cases.push_back({"op/" + tag + "/conv_fprop_tf32", flops, setup, tf32(fwd), teardown});
    cases.push_back({"op/" + tag + "/conv_dgrad_fp32", flops, setup, dgrad, teardown});
    cases.push_back({"op/" + tag + "/conv_dgrad_tf32", flops, setup, tf32(dgrad), teardown});
    cases.push_back({"op/" + tag + "/conv_wgrad_fp32", flops, setup, wgrad, teardown});
}

void norm_case(std::vector<Case>& cases, const std::string& tag, Norm norm, int images, int channels, std::ptrdiff_t plane) {
    struct State {
        Tensor<float, cuda> z, y, gamma, beta, mean, invstd, rm, rv, dg, db, scratch;
    };
    auto s = std::make_shared<State>();
    const NormGrouping g{norm, images, channels, 1, plane};
    auto setup = [s, g] {
        s->z.resize({g.images, g.channels, 1, 1, int(g.plane)});
        s->y.resize(s->z.shape());
        for (auto* t : {&s->gamma, &s->beta, &s->rm, &s->rv, &s->dg, &s->db}) t->resize({1, 1, 1, 1, g.channels});
        for (auto* t : {&s->mean, &s->invstd}) t->resize({1, 1, 1, 1, g.stat_count()});
        s->scratch.resize({1, 1, 1, 2, g.images * g.channels});
        s->z.fill(1.f), s->gamma.fill(1.f);
    };
    auto run = [s, g] {
        const Activation a{Act::relu, 0};
        Kernels<cuda>::norm_act_forward(g, a, static_cast<const float*>(s->z.data()), static_cast<const float*>(s->gamma.data()),
                                        static_cast<const float*>(s->beta.data()), s->y.data(), s->mean.data(), s->invstd.data(),
                                        s->rm.data(), s->rv.data(), NormStats::batch);
        Kernels<cuda>::norm_act_backward(g, a, static_cast<const float*>(s->z.data()), static_cast<const float*>(s->y.data()),
                                         static_cast<const float*>(s->gamma.data()), static_cast<const float*>(s->beta.data()),
                                         static_cast<const float*>(s->mean.data()), static_cast<const float*>(s->invstd.data()),
                                         s->y.data(), s->dg.data(), s->db.data(), s->scratch.data());
    };
    cases.push_back({"op/" + tag + "/norm_relu_fwd_bwd", 0, setup, run, [s] { *s = State{}; }});
}

template <UNetConfig C>
void network_cases(std::vector<Case>& cases, const std::string& tag, Shape shape, bool tf32) {
    struct State {
        std::unique_ptr<UNet<C, cuda>> net;
        std::unique_ptr<Adam<float, cuda>> opt;
        Tensor<float, cuda> x;
        Tensor<std::uint8_t, cuda> labels;
    };
    auto s = std::make_shared<State>();
    auto setup = [s, shape, tf32] {
        Kernels<cuda>::set_tf32(tf32);
        s->net = std::make_unique<UNet<C, cuda>>(1);
        s->opt = std::make_unique<Adam<float, cuda>>(1e-3);
        Tensor<float, cpu> x(shape);
        Tensor<std::uint8_t, cpu> labels({shape.n, 1, shape.d, shape.h, shape.w});
        InitRng rng(3);
        for (auto& v : x) v = float(rng.normal());
        for (auto& v : labels) v = std::uint8_t(rng.next() % C.classes);
        copy_from_host(s->x, x);
        copy_from_host(s->labels, labels);
    };
    auto teardown = [s] {
        *s = State{};
        Kernels<cuda>::set_tf32(false);
    };
    const std::string p = tf32 ? "_tf32" : "_fp32";
    const double f = UNet<C, cuda>::forward_flops(shape);
    cases.push_back({"net/" + tag + "/infer" + p, f, setup, [s] { s->net->predict(s->x); }, teardown});
    cases.push_back({"net/" + tag + "/train_step" + p, 3 * f, setup,
                     [s] { s->net->train_step(s->x, s->labels, DiceLoss{}, *s->opt); }, teardown});
}

std::vector<Case> all_cases() {
    std::vector<Case> c;
    conv_cases(c, "2d_240x240_b8_32to32", ConvProblem{{1, 240, 240}, 1, 3, 3, 32, 32}, 8);
    conv_cases(c, "2d_240x240_b32_32to32", ConvProblem{{1, 240, 240}, 1, 3, 3, 32, 32}, 32);
    conv_cases(c, "2d_30x30_b8_256to256", ConvProblem{{1, 30, 30}, 1, 3, 3, 256, 256}, 8);
    conv_cases(c, "3d_128_b2_16to16", ConvProblem{{128, 128, 128}, 3, 3, 3, 16, 16}, 2);
    conv_cases(c, "3d_32_b2_64to64", ConvProblem{{32, 32, 32}, 3, 3, 3, 64, 64}, 2);
    norm_case(c, "2d_240x240_b8_c32_batch", Norm::batch, 8, 32, 240 * 240);
    norm_case(c, "3d_128_b2_c16_instance", Norm::instance, 2, 16, 128 * 128 * 128);
    for (bool tf32 : {false, true}) {
        network_cases<brats2d>(c, "2d_240x240_b8", {8, 4, 1, 240, 240}, tf32);
        network_cases<brats2d>(c, "2d_240x240_b32", {32, 4, 1, 240, 240}, tf32);
        network_cases<brats3d>(c, "3d_128_b2", {2, 4, 128, 128, 128}, tf32);
    }
    return c;
}

}  // namespace

int main(int argc, char** argv) {
    bool list = false;
    std::string filter;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--list")) list = true;
        else if (!std::strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
        else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::max(1, std::atoi(argv[++i]));
        else {
            std::fprintf(stderr, "usage: %s [--list] [--filter SUBSTRING] [--repeats N]\n", argv[0]);
            return 2;
        }
    }
    const auto cases = all_cases();
    if (list) {
        for (const auto& c : cases) std::printf("%s\n", c.name.c_str());
        return 0;
    }
    if (!cuda::device_available()) {
        std::printf("SKIPPED: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop{};
    LIGHTUNET_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s (sm_%d%d, %d SMs), repeats %d\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount, repeats);
    for (const auto& c : cases)
        if (filter.empty() || c.name.find(filter) != std::string::npos) {
            try {
                time_case(c);
            } catch (const std::exception& e) {
                std::printf("%-58s FAILED: %s\n", c.name.c_str(), e.what());
                c.teardown();
            }
        }
    return 0;
}

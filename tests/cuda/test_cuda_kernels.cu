// Every Kernels<cuda> operation against Kernels<cpu> on the same inputs, odd sizes, 2D and 3D.
//
// Tolerances. Convolutions: each output is a sum of K products (K = cin * taps for Fprop,
// cout * taps for Dgrad, images * voxels + 1 for Wgrad); two fp32 summations of the same terms
// in different orders differ by at most 2 K u sum|terms| (u = 2^-24, the classic bound for
// recursive summation, which also covers blocked and pairwise orders), and sum|terms| is the
// same convolution run on absolute values. TF32 rounds both factors to 10 mantissa bits
// (relative error 2^-11 each): bound (2^-10 + 2 K u) sum|terms|. Norms, losses and optimiser
// updates accumulate in double on both backends; elementwise fp32 arithmetic differs by a few
// ulps (FMA contraction, exp/log implementations), hence rtol 1e-5 unless stated. Where an
// update cancels (Adam's first moment b1 m + (1 - b1) g, SGD's velocity mu v + g, m and g of
// either sign), a relative bound on the result does not hold: each side rounds the products,
// the sum and g + wd p (the GPU contracts into FMAs, the CPU build may not) with error at most
// 4u times the sum of |terms| (g's rounding counts twice: in g and in the sum), so the two differ
// by at most 8u sum|terms|. Pure data
// movement (pooling, rearrangements, transposes) must match exactly.
#include <algorithm>
#include <cmath>
#include <span>

#include "cuda_test_support.cuh"

using namespace lightunet;
using namespace lightunet::testing;
using KC = Kernels<cpu>;
using KG = Kernels<cuda>;

namespace {

constexpr double u32 = 0x1.0p-24;

std::vector<float> abs_of(std::vector<float> v) {
    for (auto& x : v) x = std::abs(x);
    return v;
}

struct ConvCase {
    const char* name;
    ConvProblem p;
    int images;
    int split;  // channels of the first source (the rest in a second one); 0 = one source
};

// Inputs of one convolution test on the host, split into one or two source tensors.
struct ConvData {
    ConvCase c;
    std::ptrdiff_t plane;
    std::vector<float> x0, x1, w, b, dy;
    int ch0() const { return c.split ? c.split : c.p.cin; }
    int ch1() const { return c.p.cin - ch0(); }
};

ConvData make_conv(const ConvCase& c, Rng& rng) {
    ConvData d{c, std::ptrdiff_t(c.p.extent.size()), {}, {}, {}, {}, {}};
    d.x0 = random_values<float>(std::size_t(c.images) * d.ch0() * d.plane, rng);
    d.x1 = random_values<float>(std::size_t(c.images) * d.ch1() * d.plane, rng);
    d.w = random_values<float>(c.p.weight_count(), rng);
    d.b = random_values<float>(std::size_t(c.p.cout), rng);
    d.dy = random_values<float>(std::size_t(c.images) * c.p.cout * d.plane, rng);
    return d;
}

template <class T>
std::vector<ChannelSource<T>> sources(const ConvData& d, const T* x0, const T* x1) {
    std::vector<ChannelSource<T>> s{{x0, d.ch0(), d.ch0() * d.plane}};
    if (d.ch1()) s.push_back({x1, d.ch1(), d.ch1() * d.plane});
    return s;
}

// CPU forward of (x, w, b); returns the output.
std::vector<float> cpu_forward(const ConvData& d, const std::vector<float>& x0, const std::vector<float>& x1,
                               const std::vector<float>& w, const float* b) {
    std::vector<float> y(std::size_t(d.c.images) * d.c.p.cout * d.plane);
    std::vector<float> ws(std::max<std::size_t>(1, KC::conv_workspace_size<float>(d.c.p)));
    const auto src = sources<float>(d, x0.data(), x1.data());
    KC::conv_forward(d.c.p, d.c.images, std::span<const ChannelSource<float>>(src), w.data(), b, y.data(),
                     std::ptrdiff_t(d.c.p.cout) * d.plane, ws.data());
    return y;
}

std::vector<float> gpu_forward(const ConvData& d) {
    auto x0 = device_copy(d.x0), x1 = device_copy(d.x1), w = device_copy(d.w), b = device_copy(d.b);
    Tensor<float, cuda> y({1, 1, 1, 1, int(std::size_t(d.c.images) * d.c.p.cout * d.plane)});
    Tensor<float, cuda> ws({1, 1, 1, 1, int(std::max<std::size_t>(1, KG::conv_forward_workspace_size<float>(d.c.p)))});
    const auto src = sources<float>(d, x0.data(), x1.data());
    KG::conv_forward(d.c.p, d.c.images, std::span<const ChannelSource<float>>(src), static_cast<const float*>(w.data()),
                     static_cast<const float*>(b.data()), y.data(), std::ptrdiff_t(d.c.p.cout) * d.plane, ws.data());
    return host_copy(y, y.size());
}

struct Grads {
    std::vector<float> dx0, dx1, dw, db;
};

// Backward with sink 0 accumulating into its initial values, sink 1 overwriting, dW and dB
// accumulating into theirs.
Grads initial_grads(const ConvData& d, Rng& rng) {
    return {random_values<float>(d.x0.size(), rng), random_values<float>(d.x1.size(), rng), random_values<float>(d.w.size(), rng),
            random_values<float>(d.b.size(), rng)};
}

Grads cpu_backward(const ConvData& d, const std::vector<float>& x0, const std::vector<float>& x1, const std::vector<float>& w,
                   const std::vector<float>& dy, Grads g, bool accumulate0) {
    std::vector<float> ws(std::max<std::size_t>(1, KC::conv_workspace_size<float>(d.c.p)));
    const auto src = sources<float>(d, x0.data(), x1.data());
    std::vector<ChannelSink<float>> sinks{{g.dx0.data(), d.ch0(), d.ch0() * d.plane, accumulate0}};
    if (d.ch1()) sinks.push_back({g.dx1.data(), d.ch1(), d.ch1() * d.plane, false});
    KC::conv_backward(d.c.p, d.c.images, std::span<const ChannelSource<float>>(src), w.data(), dy.data(),
                      std::ptrdiff_t(d.c.p.cout) * d.plane, std::span<const ChannelSink<float>>(sinks), g.dw.data(), g.db.data(), ws.data());
    return g;
}

Grads gpu_backward(const ConvData& d, const Grads& init) {
    auto x0 = device_copy(d.x0), x1 = device_copy(d.x1), w = device_copy(d.w), dy = device_copy(d.dy);
    auto dx0 = device_copy(init.dx0), dx1 = device_copy(init.dx1), dw = device_copy(init.dw), db = device_copy(init.db);
    Tensor<float, cuda> ws({1, 1, 1, 1, int(std::max<std::size_t>(1, KG::conv_workspace_size<float>(d.c.p)))});
    const auto src = sources<float>(d, x0.data(), x1.data());
    std::vector<ChannelSink<float>> sinks{{dx0.data(), d.ch0(), d.ch0() * d.plane, true}};
    if (d.ch1()) sinks.push_back({dx1.data(), d.ch1(), d.ch1() * d.plane, false});
    KG::conv_backward(d.c.p, d.c.images, std::span<const ChannelSource<float>>(src), static_cast<const float*>(w.data()),
                      static_cast<const float*>(dy.data()), std::ptrdiff_t(d.c.p.cout) * d.plane, std::span<const ChannelSink<float>>(sinks),
                      dw.data(), db.data(), ws.data());
    return {host_copy(dx0, init.dx0.size()), host_copy(dx1, init.dx1.size()), host_copy(dw, init.dw.size()), host_copy(db, init.db.size())};
}

std::vector<double> bound_of(const std::vector<float>& abs_sum, const std::vector<float>& init, double factor) {
    std::vector<double> b(abs_sum.size());
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = factor * (double(abs_sum[i]) + (init.empty() ? 0.0 : std::abs(double(init[i])))) + 1e-30;
    return b;
}

const ConvCase conv_cases[] = {
    {"2D 3x3, odd extent, two sources", {{1, 9, 7}, 1, 3, 3, 5, 6}, 2, 3},
    {"2D 3x3, several tiles", {{1, 37, 29}, 1, 3, 3, 32, 40}, 2, 0},
    {"2D 3x3, wide output (BM 128)", {{1, 11, 13}, 1, 3, 3, 16, 130}, 1, 9},
    {"3D 3x3x3, odd extent, two sources", {{5, 6, 7}, 3, 3, 3, 7, 9}, 2, 4},
    {"3D 3x3x3, 70 outputs", {{4, 5, 3}, 3, 3, 3, 3, 70}, 3, 0},
    {"1x1 head", {{1, 13, 11}, 1, 1, 1, 33, 4}, 2, 0},
    {"1x1 3D", {{3, 5, 7}, 1, 1, 1, 16, 64}, 2, 8},
};

}  // namespace

TEST_CASE("conv_forward: CUDA equals CPU (fp32 and TF32)", "[cuda][kernels][conv]") {
    Rng rng(11);
    for (const auto& c : conv_cases) {
        SECTION(c.name) {
            const ConvData d = make_conv(c, rng);
            const auto want = cpu_forward(d, d.x0, d.x1, d.w, d.b.data());
            std::vector<float> abs_sum = cpu_forward(d, abs_of(d.x0), abs_of(d.x1), abs_of(d.w), nullptr);
            std::vector<float> bias_abs(want.size());
            for (int n = 0; n < c.images; ++n)
                for (int oc = 0; oc < c.p.cout; ++oc)
                    for (std::ptrdiff_t v = 0; v < d.plane; ++v) bias_abs[(std::size_t(n) * c.p.cout + oc) * d.plane + v] = d.b[oc];
            const double K = double(c.p.cin) * c.p.taps() + 1;
            check_within(gpu_forward(d), want, bound_of(abs_sum, bias_abs, 2 * K * u32), "fp32 forward");
            KG::set_tf32(true);
            const auto tf32 = gpu_forward(d);
            KG::set_tf32(false);
            check_within(tf32, want, bound_of(abs_sum, bias_abs, 0x1.0p-10 + 2 * K * u32), "tf32 forward");
        }
    }
}

TEST_CASE("conv_backward: CUDA equals CPU (Dgrad into two sinks, Wgrad, bias)", "[cuda][kernels][conv]") {
    Rng rng(12);
    for (const auto& c : conv_cases) {
        SECTION(c.name) {
            const ConvData d = make_conv(c, rng);
            const Grads init = initial_grads(d, rng);
            const Grads want = cpu_backward(d, d.x0, d.x1, d.w, d.dy, init, true);
            Grads zero{std::vector<float>(init.dx0.size()), std::vector<float>(init.dx1.size()), std::vector<float>(init.dw.size()),
                       std::vector<float>(init.db.size())};
            const Grads abs_sum = cpu_backward(d, abs_of(d.x0), abs_of(d.x1), abs_of(d.w), abs_of(d.dy), zero, false);
            const Grads got = gpu_backward(d, init);
            const double kd = double(c.p.cout) * c.p.taps() + 1, kw = double(c.images) * d.plane + 1;
            check_within(got.dx0, want.dx0, bound_of(abs_sum.dx0, init.dx0, 2 * kd * u32), "dgrad, accumulating sink");
            check_within(got.dx1, want.dx1, bound_of(abs_sum.dx1, {}, 2 * kd * u32), "dgrad, overwriting sink");
            check_within(got.dw, want.dw, bound_of(abs_sum.dw, init.dw, 2 * kw * u32), "wgrad");
            check_within(got.db, want.db, bound_of(abs_sum.db, init.db, 2 * kw * u32), "bias gradient");
            // TF32 runs Dgrad on tensor cores (bound as for Fprop); Wgrad and the bias stay fp32.
            KG::set_tf32(true);
            const Grads tf32 = gpu_backward(d, init);
            KG::set_tf32(false);
            check_within(tf32.dx0, want.dx0, bound_of(abs_sum.dx0, init.dx0, 0x1.0p-10 + 2 * kd * u32), "tf32 dgrad, accumulating sink");
            check_within(tf32.dx1, want.dx1, bound_of(abs_sum.dx1, {}, 0x1.0p-10 + 2 * kd * u32), "tf32 dgrad, overwriting sink");
            check_within(tf32.dw, want.dw, bound_of(abs_sum.dw, init.dw, 2 * kw * u32), "wgrad with tf32 on");
            check_within(tf32.db, want.db, bound_of(abs_sum.db, init.db, 2 * kw * u32), "bias gradient with tf32 on");
        }
    }
}

// ConvProblem's memory contract: no convolution works in place, on any backend. The GPU kernels
// read and write every image at once, so an overlapping sink is refused (the model gives each
// its own memory) instead of copied behind the caller's back.
TEST_CASE("conv_backward and conv_forward refuse overlapping outputs, as on the CPU", "[cuda][kernels][conv]") {
    Rng rng(13);
    const ConvCase c{"in place", {{3, 7, 6}, 3, 3, 3, 12, 12}, 2, 0};
    const ConvData d = make_conv(c, rng);
    auto x = device_copy(d.x0), w = device_copy(d.w), g = device_copy(d.dy), gdw = device_copy(std::vector<float>(d.w.size()));
    Tensor<float, cuda> gws({1, 1, 1, 1, int(KG::conv_workspace_size<float>(c.p))});
    const auto gsrc = sources<float>(d, x.data(), nullptr);
    auto backward = [&](const ChannelSink<float>& sink) {
        KG::conv_backward(c.p, c.images, std::span<const ChannelSource<float>>(gsrc), static_cast<const float*>(w.data()),
                          static_cast<const float*>(g.data()), std::ptrdiff_t(c.p.cout) * d.plane,
                          std::span<const ChannelSink<float>>(&sink, 1), gdw.data(), static_cast<float*>(nullptr), gws.data());
    };
    CHECK_THAT(thrown_message<std::invalid_argument>([&] { backward({g.data(), c.p.cin, c.p.cin * d.plane, false}); }),
               Catch::Contains("input-gradient sink 0 overlaps the output gradient"));
    CHECK_THAT(thrown_message<std::invalid_argument>([&] { backward({x.data(), c.p.cin, c.p.cin * d.plane, false}); }),
               Catch::Contains("input-gradient sink 0 overlaps input source 0"));
    Tensor<float, cuda> dx({1, 1, 1, 1, int(d.x0.size())});
    CHECK_NOTHROW(backward({dx.data(), c.p.cin, c.p.cin * d.plane, false}));
    ConvProblem winograd = c.p;
    winograd.algorithm = ConvAlgorithm::winograd;
    CHECK_THAT(thrown_message<std::invalid_argument>([&] {
                   KG::conv_forward(winograd, c.images, std::span<const ChannelSource<float>>(gsrc), static_cast<const float*>(w.data()),
                                    static_cast<const float*>(nullptr), dx.data(), std::ptrdiff_t(c.p.cout) * d.plane, gws.data());
               }),
               Catch::Contains("no Winograd"));
    LIGHTUNET_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_CASE("norm_act forward and backward: CUDA equals CPU", "[cuda][kernels][norm]") {
    Rng rng(21);
    struct Case {
        const char* name;
        Norm norm;
        Act act;
        int images, channels, groups;
        Extent e;
    };
    const Case cases[] = {
        {"batch relu 2D", Norm::batch, Act::relu, 3, 6, 1, {1, 7, 5}},
        {"batch leaky 3D", Norm::batch, Act::leaky_relu, 2, 4, 1, {3, 4, 5}},
        {"instance leaky 2D", Norm::instance, Act::leaky_relu, 3, 5, 1, {1, 9, 11}},
        {"instance relu 3D", Norm::instance, Act::relu, 2, 3, 1, {5, 3, 7}},
        {"group relu 2D", Norm::group, Act::relu, 2, 6, 2, {1, 13, 3}},
        {"group leaky 3D", Norm::group, Act::leaky_relu, 2, 8, 4, {3, 5, 3}},
        {"none leaky 2D", Norm::none, Act::leaky_relu, 2, 3, 1, {1, 5, 7}},
        {"batch relu, large planes (several chunks)", Norm::batch, Act::relu, 2, 3, 1, {1, 130, 129}},
    };
    for (const auto& c : cases) {
        SECTION(c.name) {
            const NormGrouping g{c.norm, c.images, c.channels, c.groups, std::ptrdiff_t(c.e.size())};
            const Activation a{c.act, c.act == Act::leaky_relu ? 0.01 : 0.0};
            const std::size_t count = std::size_t(c.images) * c.channels * c.e.size();
            const int stats = std::max(1, g.stat_count());
            const auto z = random_values<float>(count, rng, -2, 3), dy = random_values<float>(count, rng);
            const auto gamma = random_values<float>(c.channels, rng, 0.5, 1.5), beta = random_values<float>(c.channels, rng);
            auto rm = random_values<float>(c.channels, rng), rv = random_values<float>(c.channels, rng, 0.5, 2);
            const auto dgamma0 = random_values<float>(c.channels, rng), dbeta0 = random_values<float>(c.channels, rng);
            for (NormStats from : {NormStats::batch, NormStats::running, NormStats::saved}) {
                if (from == NormStats::running && c.norm != Norm::batch) continue;
                // CPU
                std::vector<float> y(count), mean(stats), invstd(stats), crm = rm, crv = rv;
                if (from == NormStats::saved) {  // statistics from a batch pass first
                    KC::norm_act_forward(g, a, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                         (float*)nullptr, (float*)nullptr, NormStats::batch);
                }
                KC::norm_act_forward(g, a, z.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(), crm.data(),
                                     crv.data(), from);
                std::vector<float> dz = dy, dgamma = dgamma0, dbeta = dbeta0, scratch(2 * count);
                KC::norm_act_backward(g, a, z.data(), dz.data(), gamma.data(), beta.data(), mean.data(), invstd.data(), dz.data(),
                                      dgamma.data(), dbeta.data(), scratch.data());
                // GPU
                auto gz = device_copy(z), ggamma = device_copy(gamma), gbeta = device_copy(beta), grm = device_copy(rm),
                     grv = device_copy(rv), gdz = device_copy(dy), gdg = device_copy(dgamma0), gdb = device_copy(dbeta0);
                Tensor<float, cuda> gy({1, 1, 1, 1, int(count)}), gmean({1, 1, 1, 1, stats}), ginv({1, 1, 1, 1, stats}),
                    gscratch({1, 1, 1, 1, int(2 * count)});
                if (from == NormStats::saved)
                    KG::norm_act_forward(g, a, static_cast<const float*>(gz.data()), static_cast<const float*>(ggamma.data()),
                                         static_cast<const float*>(gbeta.data()), gy.data(), gmean.data(), ginv.data(), (float*)nullptr,
                                         (float*)nullptr, NormStats::batch);
                KG::norm_act_forward(g, a, static_cast<const float*>(gz.data()), static_cast<const float*>(ggamma.data()),
                                     static_cast<const float*>(gbeta.data()), gy.data(), gmean.data(), ginv.data(), grm.data(),
                                     grv.data(), from);
                KG::norm_act_backward(g, a, static_cast<const float*>(gz.data()), static_cast<const float*>(gdz.data()),
                                      static_cast<const float*>(ggamma.data()), static_cast<const float*>(gbeta.data()),
                                      static_cast<const float*>(gmean.data()), static_cast<const float*>(ginv.data()), gdz.data(),
                                      gdg.data(), gdb.data(), gscratch.data());
                const double ymax = *std::max_element(y.begin(), y.end(), [](float p, float q) { return std::abs(p) < std::abs(q); });
                check_close(host_copy(gy, count), y, 1e-5, 1e-6 * std::abs(ymax), "y");
                if (c.norm != Norm::none) {
                    check_close(host_copy(gmean, stats), mean, 1e-6, 1e-7, "mean");
                    check_close(host_copy(ginv, stats), invstd, 1e-6, 0, "invstd");
                    if (c.norm == Norm::batch) {
                        check_close(host_copy(grm, c.channels), crm, 1e-6, 1e-7, "running mean");
                        check_close(host_copy(grv, c.channels), crv, 1e-6, 1e-7, "running var");
                    }
                    check_close(host_copy(gdg, c.channels), dgamma, 1e-5, 1e-5, "dgamma");
                    check_close(host_copy(gdb, c.channels), dbeta, 1e-5, 1e-5, "dbeta");
                }
                double dzmax = 0;
                for (float v : dz) dzmax = std::max(dzmax, double(std::abs(v)));
                // dz = gamma invstd u - invstd (k1 + xhat k2): terms of size ~max|dz|, fp32 ulps each.
                check_close(host_copy(gdz, count), dz, 1e-4, 1e-5 * dzmax, "dz");
            }
        }
    }
}

TEST_CASE("pooling, rearrangements and nearest up-sampling: CUDA equals CPU exactly", "[cuda][kernels][resample]") {
    Rng rng(31);
    const Cells cases[] = {{{1, 5, 3}, 1}, {{2, 3, 5}, 2}};
    for (const Cells& g : cases) {
        SECTION(g.fd == 1 ? "2D" : "3D") {
            const int channels = 3, images = 2;
            const std::ptrdiff_t planes = images * channels;
            const std::size_t coarse = std::size_t(planes) * g.coarse.size(), fine = coarse * g.per_cell();
            auto fine_x = random_values<float>(fine, rng);
            fine_x[1] = fine_x[0];  // a tie: the first maximum takes the gradient
            const auto coarse_x = random_values<float>(coarse, rng), bias = random_values<float>(channels, rng);
            const auto fine_init = random_values<float>(fine, rng);
            const auto packed = random_values<float>(fine, rng);  // [planes * per_cell][coarse]
            auto gf = device_copy(fine_x), gc = device_copy(coarse_x), gb = device_copy(bias), gp = device_copy(packed);
            {
                std::vector<float> want(coarse);
                KC::max_pool_forward(g, planes, fine_x.data(), want.data());
                Tensor<float, cuda> out({1, 1, 1, 1, int(coarse)});
                KG::max_pool_forward(g, planes, static_cast<const float*>(gf.data()), out.data());
                CHECK(host_copy(out, coarse) == want);
            }
            for (bool acc : {false, true}) {
                std::vector<float> want = fine_init;
                KC::max_pool_backward(g, planes, fine_x.data(), coarse_x.data(), want.data(), acc);
                auto out = device_copy(fine_init);
                KG::max_pool_backward(g, planes, static_cast<const float*>(gf.data()), static_cast<const float*>(gc.data()), out.data(), acc);
                CHECK(host_copy(out, fine) == want);
                std::vector<float> want2 = fine_init;
                KC::depth_to_space(g, planes, channels, packed.data(), acc ? bias.data() : nullptr, want2.data(), acc);
                auto out2 = device_copy(fine_init);
                KG::depth_to_space(g, planes, channels, static_cast<const float*>(gp.data()), acc ? static_cast<const float*>(gb.data()) : nullptr,
                                   out2.data(), acc);
                CHECK(host_copy(out2, fine) == want2);
            }
            {
                std::vector<float> want(fine);
                KC::space_to_depth(g, planes, fine_x.data(), want.data());
                Tensor<float, cuda> out({1, 1, 1, 1, int(fine)});
                KG::space_to_depth(g, planes, static_cast<const float*>(gf.data()), out.data());
                CHECK(host_copy(out, fine) == want);
            }
            {
                std::vector<float> want(fine), back(coarse);
                KC::upsample_nearest_forward(g, planes, coarse_x.data(), want.data());
                KC::upsample_nearest_backward(g, planes, fine_x.data(), back.data());
                Tensor<float, cuda> out({1, 1, 1, 1, int(fine)}), gback({1, 1, 1, 1, int(coarse)});
                KG::upsample_nearest_forward(g, planes, static_cast<const float*>(gc.data()), out.data());
                KG::upsample_nearest_backward(g, planes, static_cast<const float*>(gf.data()), gback.data());
                CHECK(host_copy(out, fine) == want);
                CHECK(host_copy(gback, coarse) == back);
            }
        }
    }
}

TEST_CASE("softmax, sigmoid and the Dice (+CE) loss: CUDA equals CPU", "[cuda][kernels][loss]") {
    Rng rng(41);
    struct Case {
        const char* name;
        Head head;
        DiceLoss loss;
        int images, channels;
        std::ptrdiff_t plane;
    };
    const Case cases[] = {
        {"softmax, no background, batch Dice, CE", Head::softmax, {false, true, 1e-5, 1.0}, 3, 4, 7 * 9 * 5},
        {"softmax, plain Dice", Head::softmax, {true, false, 1e-5, 0.0}, 2, 3, 1001},
        {"sigmoid, Dice + 0.5 BCE", Head::sigmoid, {true, false, 1e-5, 0.5}, 2, 3, 17 * 19},
    };
    for (const auto& c : cases) {
        SECTION(c.name) {
            const std::size_t count = std::size_t(c.images) * c.channels * c.plane;
            const auto logits = random_values<float>(count, rng, -4, 4);
            std::vector<std::uint8_t> target(c.head == Head::softmax ? std::size_t(c.images) * c.plane : count);
            for (auto& t : target) t = std::uint8_t(rng.index(c.head == Head::softmax ? c.channels : 2));
            std::vector<float> probs(count);
            if (c.head == Head::softmax) KC::softmax_channels(c.images, c.channels, c.plane, logits.data(), probs.data());
            else KC::sigmoid(std::ptrdiff_t(count), logits.data(), probs.data());
            auto gl = device_copy(logits);
            Tensor<float, cuda> gp({1, 1, 1, 1, int(count)});
            if (c.head == Head::softmax) KG::softmax_channels(c.images, c.channels, c.plane, static_cast<const float*>(gl.data()), gp.data());
            else KG::sigmoid(std::ptrdiff_t(count), static_cast<const float*>(gl.data()), gp.data());
            const auto gprobs = host_copy(gp, count);
            check_close(gprobs, probs, 1e-6, 1e-7, "probabilities");
            // The loss on the same probabilities (the CPU's), so only the loss kernels differ.
            std::vector<float> grad(count);
            std::vector<double> sums(3 * c.images * c.channels);
            const double want = KC::dice_loss(c.head, c.images, c.channels, c.plane, probs.data(), target.data(), c.loss, grad.data(), sums.data());
            auto gprob_cpu = device_copy(probs);
            auto gt = device_copy(target);
            Tensor<float, cuda> ggrad({1, 1, 1, 1, int(count)});
            Tensor<double, cuda> gsums({1, 1, 1, 1, int(sums.size())});
            const double got = KG::dice_loss(c.head, c.images, c.channels, c.plane, static_cast<const float*>(gprob_cpu.data()),
                                             static_cast<const std::uint8_t*>(gt.data()), c.loss, ggrad.data(), gsums.data());
            CHECK(got == Approx(want).epsilon(1e-10));
            double gmax = 0;
            for (float v : grad) gmax = std::max(gmax, double(std::abs(v)));
            check_close(host_copy(ggrad, count), grad, 1e-5, 1e-6 * gmax, "logit gradients");
            // Invalid labels.
            auto bad = target;
            bad[bad.size() / 2 + 1] = 7;
            bad[bad.size() - 1] = 9;
            auto gbad = device_copy(bad);
            CHECK(KG::first_invalid_label(c.head, c.channels, std::ptrdiff_t(bad.size()), gbad.data()) ==
                  KC::first_invalid_label(c.head, c.channels, std::ptrdiff_t(bad.size()), bad.data()));
            CHECK(KG::first_invalid_label(c.head, c.channels, std::ptrdiff_t(target.size()), gt.data()) == -1);
        }
    }
}

TEST_CASE("optimiser updates, norms and small helpers: CUDA equals CPU", "[cuda][kernels][optim]") {
    Rng rng(51);
    const std::ptrdiff_t n = 3 * optim::update_block + 1237;
    const auto p0 = random_values<float>(n, rng), g0 = random_values<float>(n, rng), m0 = random_values<float>(n, rng, -0.1, 0.1),
               v0 = random_values<float>(n, rng, 0, 0.01);
    SECTION("squared_norm and scale") {
        std::vector<double> partial(4);
        const double want = KC::squared_norm(n, g0.data(), partial.data());
        auto g = device_copy(g0);
        Tensor<double, cuda> gpart({1, 1, 1, 1, 4});
        CHECK(KG::squared_norm(n, static_cast<const float*>(g.data()), gpart.data()) == Approx(want).epsilon(1e-12));
        auto s = g0;
        KC::scale(n, s.data(), 0.37f);
        KG::scale(n, g.data(), 0.37f);
        CHECK(host_copy(g, n) == s);
    }
    SECTION("Adam and AdamW") {
        for (bool decoupled : {false, true}) {
            const optim::AdamStep st{1e-3, 0.9, 0.999, 1e-8, 0.01, decoupled, 7};
            auto p = p0, m = m0, v = v0;
            KC::adam_update(n, p.data(), g0.data(), m.data(), v.data(), st);
            auto gp = device_copy(p0), gg = device_copy(g0), gm = device_copy(m0), gv = device_copy(v0);
            KG::adam_update(n, gp.data(), static_cast<const float*>(gg.data()), gm.data(), gv.data(), st);
            check_close(host_copy(gp, n), p, 1e-6, 1e-9, "parameters");
            // m = b1 m + (1 - b1) g cancels (m and g of either sign): bound by its terms.
            std::vector<double> bound_m(n);
            for (std::ptrdiff_t i = 0; i < n; ++i)
                bound_m[i] = 8 * u32 * (st.beta1 * std::abs(m0[i]) + (1 - st.beta1) * (std::abs(g0[i]) + st.weight_decay * std::abs(p0[i])));
            check_within(host_copy(gm, n), m, bound_m, "first moment");
            check_close(host_copy(gv, n), v, 1e-6, 1e-12, "second moment");
        }
    }
    SECTION("SGD with Nesterov momentum") {
        const optim::SgdStep st{0.01, 0.99, 3e-5, true};
        auto p = p0, vel = m0;
        KC::sgd_update(n, p.data(), g0.data(), vel.data(), st);
        auto gp = device_copy(p0), gg = device_copy(g0), gvel = device_copy(m0);
        KG::sgd_update(n, gp.data(), static_cast<const float*>(gg.data()), gvel.data(), st);
        check_close(host_copy(gp, n), p, 1e-6, 1e-9, "parameters");
        std::vector<double> bound_v(n);  // velocity = mu velocity + g cancels too
        for (std::ptrdiff_t i = 0; i < n; ++i)
            bound_v[i] = 8 * u32 * (st.momentum * std::abs(m0[i]) + std::abs(g0[i]) + st.weight_decay * std::abs(p0[i]));
        check_within(host_copy(gvel, n), vel, bound_v, "velocity");
    }
    SECTION("transpose, add, channel_sums, all_finite") {
        const int rows = 37, cols = 53;
        const auto a = random_values<float>(rows * cols, rng);
        std::vector<float> t(rows * cols), acc = random_values<float>(rows * cols, rng);
        KC::transpose(rows, cols, a.data(), t.data());
        auto ga = device_copy(a), gacc = device_copy(acc);
        Tensor<float, cuda> gt({1, 1, 1, 1, rows * cols});
        KG::transpose(rows, cols, static_cast<const float*>(ga.data()), gt.data());
        CHECK(host_copy(gt, t.size()) == t);
        KC::add(rows * cols, a.data(), acc.data());
        KG::add(rows * cols, static_cast<const float*>(ga.data()), gacc.data());
        CHECK(host_copy(gacc, acc.size()) == acc);
        const int images = 3, channels = 5;
        const std::ptrdiff_t plane = 9001;
        const auto x = random_values<float>(std::size_t(images) * channels * plane, rng);
        auto sums = random_values<float>(channels, rng);
        auto gx = device_copy(x), gs = device_copy(sums);
        KC::channel_sums(images, channels, plane, x.data(), sums.data());
        KG::channel_sums(images, channels, plane, static_cast<const float*>(gx.data()), gs.data());
        check_close(host_copy(gs, channels), sums, 1e-6, 1e-6, "channel sums");
        CHECK(KG::all_finite(std::ptrdiff_t(x.size()), static_cast<const float*>(gx.data())));
        auto y = x;
        y[4321] = std::nanf("");
        auto gy = device_copy(y);
        CHECK_FALSE(KG::all_finite(std::ptrdiff_t(y.size()), static_cast<const float*>(gy.data())));
        y[4321] = INFINITY;
        gy = device_copy(y);
        CHECK_FALSE(KG::all_finite(std::ptrdiff_t(y.size()), static_cast<const float*>(gy.data())));
    }
}

TEST_CASE("CUDA errors become exceptions naming the call", "[cuda][kernels][errors]") {
    const std::string msg = thrown_message<CudaError>([] { (void)cuda::allocate<float>(std::size_t(1) << 50); });
    CHECK(msg.find("cudaMalloc") != std::string::npos);
    CHECK(msg.find("memory.cuh") != std::string::npos);
    cudaGetLastError();  // clear the sticky-free allocation error
}

// The model as a whole: parameter counts, input checks, determinism, allocation-free steady
// state, learning a toy segmentation, and batch norm's train/eval behaviour.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include <lightunet/lightunet.hpp>

#include "reference_ops.hpp"
#include "reference_unet.hpp"
#include "test_support.hpp"

// ------------------------------------------------------------------------------------------
// Counting replacements of the global allocation functions. They only count while `counting`
// is set (by the allocation test below) and otherwise behave as the defaults. Every form is
// replaced, so new/delete pairs always meet (AddressSanitizer checks that they do).
namespace {
std::atomic<bool> counting{false};
std::atomic<long> new_calls{0};

void* counted_new(std::size_t n) {
    if (counting.load(std::memory_order_relaxed)) new_calls.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* counted_new(std::size_t n, std::align_val_t al) {
    if (counting.load(std::memory_order_relaxed)) new_calls.fetch_add(1, std::memory_order_relaxed);
    const std::size_t a = std::max(std::size_t(al), sizeof(void*));
    const std::size_t bytes = n ? (n + a - 1) / a * a : a;
    if (void* p = std::aligned_alloc(a, bytes)) return p;
    throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t n) { return counted_new(n); }
void* operator new[](std::size_t n) { return counted_new(n); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_new(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_new(n, a); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return counted_new(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return counted_new(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return counted_new(n, a);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return counted_new(n, a);
    } catch (...) {
        return nullptr;
    }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

// The CPU backend with a counter on its allocations (every Tensor's storage goes through it).
namespace {
struct counting_cpu : lightunet::cpu {
    static inline std::atomic<long> allocations{0};
    template <class T>
    static T* allocate(std::size_t count) {
        allocations.fetch_add(1, std::memory_order_relaxed);
        return lightunet::cpu::allocate<T>(count);
    }
};
}  // namespace
template <>
struct lightunet::Kernels<counting_cpu> : lightunet::Kernels<lightunet::cpu> {};

using namespace lightunet;
using lightunet::testing::Rng;
using lightunet::testing::thrown_message;

namespace {

// ------------------------------------------------------------------------------------------
// Parameter counts, worked out by hand from docs/design.md.

// 2D BraTS: 4 inputs, 4 classes, widths 32..512, batch norm, max-pool, transposed conv.
// conv(ci -> co, k taps) = co * ci * k + co; a norm adds 2 * co; 2D taps 9, 2x2 cell 4.
// Encoder
//   l0: conv(4->32) 32*4*9+32 = 1184, +64, conv(32->32) 9216+32 = 9248, +64          = 10560
//   l1: conv(32->64) 18432+64 = 18496, +128, conv(64->64) 36864+64 = 36928, +128     = 55680
//   l2: conv(64->128) 73728+128 = 73856, +256, conv(128->128) 147456+128 = 147584, +256 = 221952
//   l3: conv(128->256) 294912+256 = 295168, +512, conv(256->256) 589824+256 = 590080, +512 = 886272
//   l4: conv(256->512) 1179648+512 = 1180160, +1024, conv(512->512) 2359296+512 = 2359808, +1024
//                                                                                    = 3542016
//   encoder total 4716480
// Decoder (up: transposed conv [below][w][2][2] + bias)
//   l3: up 512*256*4+256 = 524544, conv(512->256) 1179648+256 = 1179904, +512, 590080, +512 = 2295552
//   l2: up 256*128*4+128 = 131200, conv(256->128) 294912+128 = 295040, +256, 147584, +256 = 574336
//   l1: up 128*64*4+64 = 32832, conv(128->64) 73728+64 = 73792, +128, 36928, +128     = 143808
//   l0: up 64*32*4+32 = 8224, conv(64->32) 18432+32 = 18464, +64, 9248, +64           = 36064
//   decoder total 3049760
// Head: 4*32+4 = 132.  Total 4716480 + 3049760 + 132 = 7766372.
constexpr UNetConfig brats_2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512},
                              .norm = Norm::batch};
static_assert(parameter_count(brats_2d) == 7766372);
static_assert(UNet<brats_2d>::parameter_count == 7766372);
static_assert(UNet<brats_2d>::parameter_bytes == 4 * 7766372);
static_assert(UNet<brats_2d, cpu, double>::parameter_bytes == 8 * 7766372);
// Running mean and var for the 18 batch norms: 2 * 2 * (32+64+128+256+512 + 32+64+128+256).
static_assert(UNet<brats_2d>::buffer_count == 4 * (992 + 480));

// 3D BraTS: 4 inputs, 4 classes, widths 16..256, instance norm. 3D taps 27, 2x2x2 cell 8.
// Encoder
//   l0: conv(4->16) 1728+16 = 1744, +32, conv(16->16) 6912+16 = 6928, +32             = 8736
//   l1: conv(16->32) 13824+32 = 13856, +64, conv(32->32) 27648+32 = 27680, +64        = 41664
//   l2: conv(32->64) 55296+64 = 55360, +128, conv(64->64) 110592+64 = 110656, +128    = 166272
//   l3: conv(64->128) 221184+128 = 221312, +256, conv(128->128) 442368+128 = 442496, +256 = 664320
//   l4: conv(128->256) 884736+256 = 884992, +512, conv(256->256) 1769472+256 = 1769728, +512 = 2655744
//   encoder total 3536736
// Decoder
//   l3: up 256*128*8+128 = 262272, conv(256->128) 884736+128 = 884864, +256, 442496, +256 = 1590144
//   l2: up 128*64*8+64 = 65600, conv(128->64) 221184+64 = 221248, +128, 110656, +128  = 397760
//   l1: up 64*32*8+32 = 16416, conv(64->32) 55296+32 = 55328, +64, 27680, +64         = 99552
//   l0: up 32*16*8+16 = 4112, conv(32->16) 13824+16 = 13840, +32, 6928, +32           = 24944
//   decoder total 2112400
// Head: 4*16+4 = 68.  Total 3536736 + 2112400 + 68 = 5649204.
constexpr UNetConfig brats_3d{.dims = 3, .in_channels = 4, .classes = 4, .widths = {16, 32, 64, 128, 256},
                              .norm = Norm::instance};
static_assert(parameter_count(brats_3d) == 5649204);
static_assert(UNet<brats_3d>::parameter_count == 5649204);
static_assert(UNet<brats_3d>::buffer_count == 0);

// Strided-conv down-sampling, interpolation up-sampling, no norm: 2D, 1 input, 2 classes, 8/16/32.
//   enc l0: conv(1->8) 72+8 = 80, conv(8->8) 576+8 = 584                               = 664
//   enc l1: down conv(8->8, 2x2) 256+8 = 264, conv(8->16) 1152+16 = 1168, conv(16->16) 2304+16 = 2320 = 3752
//   enc l2: down conv(16->16, 2x2) 1024+16 = 1040, conv(16->32) 4608+32 = 4640, conv(32->32) 9216+32 = 9248
//                                                                                      = 14928
//   dec l1: up 1x1 conv(32->16) 512+16 = 528, conv(32->16) 4608+16 = 4624, conv(16->16) 2320 = 7472
//   dec l0: up 1x1 conv(16->8) 128+8 = 136, conv(16->8) 1152+8 = 1160, conv(8->8) 584 = 1880
//   head: 2*8+2 = 18.  Total 664 + 3752 + 14928 + 7472 + 1880 + 18 = 28714.
constexpr UNetConfig strided_plain{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16, 32}, .norm = Norm::none,
                                   .down = Down::strided_conv, .up = Up::interpolate_conv};
static_assert(parameter_count(strided_plain) == 28714);

// ------------------------------------------------------------------------------------------
// Networks used below.
constexpr UNetConfig small_2d{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16, 32}, .norm = Norm::batch};
constexpr UNetConfig small_3d{.dims = 3, .in_channels = 1, .classes = 1, .widths = {4, 8, 16}, .norm = Norm::instance,
                              .head = Head::sigmoid};

// Random ellipses (ellipsoids in 3D) of intensity 1 on a background of 0, plus Gaussian noise;
// the label is 1 inside any of them.
template <class Labels>
void make_blobs(Tensor<float>& x, Labels& y, std::uint64_t seed) {
    const Shape s = x.shape();
    Rng rng(seed);
    for (int n = 0; n < s.n; ++n) {
        struct Ellipse {
            double z, y, x, rz, ry, rx;
        };
        std::vector<Ellipse> blobs;
        const int count = 2 + int(rng.index(2));
        for (int k = 0; k < count; ++k)
            blobs.push_back({rng.uniform(0.25, 0.75) * s.d, rng.uniform(0.2, 0.8) * s.h, rng.uniform(0.2, 0.8) * s.w,
                             s.d == 1 ? 1e9 : rng.uniform(2.5, 5.0), rng.uniform(2.5, 6.0), rng.uniform(2.5, 6.0)});
        for (int z = 0; z < s.d; ++z)
            for (int i = 0; i < s.h; ++i)
                for (int j = 0; j < s.w; ++j) {
                    bool inside = false;
                    for (const auto& e : blobs) {
                        const double a = (z + 0.5 - e.z) / e.rz, b = (i + 0.5 - e.y) / e.ry, c = (j + 0.5 - e.x) / e.rx;
                        inside |= a * a + b * b + c * c < 1.0;
                    }
                    y.at(n, 0, z, i, j) = std::uint8_t(inside);
                    x.at(n, 0, z, i, j) = float((inside ? 1.0 : 0.0) + 0.4 * rng.normal());
                }
    }
}

// Hard Dice of the foreground: class 1 of a softmax head, channel 0 of a one-class sigmoid head.
template <class Labels>
double foreground_dice(Head head, const Tensor<float>& probs, const Labels& y) {
    const Shape s = y.shape();
    double inter = 0, predicted = 0, truth = 0;
    for (int n = 0; n < s.n; ++n)
        for (int z = 0; z < s.d; ++z)
            for (int i = 0; i < s.h; ++i)
                for (int j = 0; j < s.w; ++j) {
                    const bool p = probs.at(n, head == Head::softmax ? 1 : 0, z, i, j) > 0.5f;
                    const bool t = y.at(n, 0, z, i, j) != 0;
                    inter += p && t, predicted += p, truth += t;
                }
    return 2 * inter / std::max(1.0, predicted + truth);
}

template <UNetConfig C, class Backend = cpu>
struct TrainingData {
    Tensor<float, Backend> x;
    typename UNet<C, Backend>::Labels y;
    explicit TrainingData(const Shape& s, std::uint64_t seed = 3)
        : x(s), y(Shape{s.n, C.head == Head::softmax ? 1 : C.classes, s.d, s.h, s.w}) {
        Tensor<float> hx(s);
        typename UNet<C>::Labels hy(y.shape());
        make_blobs(hx, hy, seed);
        std::copy(hx.begin(), hx.end(), x.begin());
        std::copy(hy.begin(), hy.end(), y.begin());
    }
};

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

// Restores the OpenMP thread count on scope exit.
struct ThreadCountGuard {
    int saved = cpu_kernels::thread_count();
    ~ThreadCountGuard() { cpu_kernels::set_thread_count(saved); }
};

template <UNetConfig C>
std::vector<float> train_copy(std::uint64_t seed, int steps, const TrainingData<C>& data, std::vector<float>* buffers = nullptr) {
    UNet<C> net(seed);
    Adam<float> opt(1e-2);
    for (int i = 0; i < steps; ++i) net.train_step(data.x, data.y, DiceLoss{}, opt);
    if (buffers) buffers->assign(net.buffers().begin(), net.buffers().end());
    return {net.parameters().begin(), net.parameters().end()};
}

}  // namespace

TEST_CASE("the parameter layout of design.md adds up to parameter_count", "[model]") {
    // The same enumeration the gradient test uses to address parameter tensors.
    auto total = [](const UNetConfig& c) {
        const auto segments = lightunet::testing::parameter_segments(c);
        return segments.back().offset + segments.back().size;
    };
    CHECK(total(brats_2d) == 7766372);
    CHECK(total(brats_3d) == 5649204);
    CHECK(total(strided_plain) == 28714);
    CHECK(total(small_2d) == UNet<small_2d>::parameter_count);
    CHECK(total(small_3d) == UNet<small_3d>::parameter_count);
}

TEST_CASE("initialisation: He-normal conv weights, zero biases, unit gammas", "[model]") {
    UNet<small_2d> net(11);
    const auto p = net.parameters();
    const auto segments = lightunet::testing::parameter_segments(small_2d);
    for (std::size_t k = 0; k < segments.size(); ++k) {
        const auto& seg = segments[k];
        INFO(seg.name);
        const auto begin = p.begin() + std::ptrdiff_t(seg.offset), end = begin + std::ptrdiff_t(seg.size);
        const bool bias = seg.name.ends_with(".bias"), norm = seg.name.find(".norm") != std::string::npos;
        if (norm && !bias) {
            CHECK(std::all_of(begin, end, [](float v) { return v == 1.0f; }));
        } else if (bias) {
            CHECK(std::all_of(begin, end, [](float v) { return v == 0.0f; }));
        } else if (seg.name.find(".conv") != std::string::npos && seg.size >= 512) {
            // A 3x3 conv: fan_in = cin * 9 = size / cout (cout: the size of the bias after it).
            const double fan_in = double(seg.size) / double(segments[k + 1].size);
            double sq = 0, sum = 0;
            for (auto it = begin; it != end; ++it) sq += double(*it) * *it, sum += *it;
            const double sd = std::sqrt(sq / double(seg.size)), want = std::sqrt(2.0 / fan_in);
            CHECK(std::abs(sum / double(seg.size)) < 4 * want / std::sqrt(double(seg.size)));
            CHECK(sd == Approx(want).epsilon(0.15));
        }
    }
}

TEST_CASE("input shapes are checked with ShapeError messages that name the shape", "[model][errors]") {
    UNet<small_2d> net(1);  // 1 channel, 2^(3-1) = 4
    auto message = [&](Shape s) {
        Tensor<float> x(s);
        return thrown_message<ShapeError>([&] { net.forward(x, Mode::train); });
    };
    SECTION("wrong channel count") {
        const std::string m = message({1, 3, 1, 8, 8});
        INFO(m);
        CHECK_THAT(m, Catch::Contains("(1, 3, 1, 8, 8)"));
    }
    SECTION("a 2D network needs depth extent 1") {
        const std::string m = message({1, 1, 2, 8, 8});
        INFO(m);
        CHECK_THAT(m, Catch::Contains("(1, 1, 2, 8, 8)"));
    }
    SECTION("spatial extents must be multiples of 2^(depth - 1)") {
        for (Shape s : {Shape{1, 1, 1, 8, 6}, Shape{1, 1, 1, 10, 8}, Shape{2, 1, 1, 2, 8}, Shape{1, 1, 1, 8, 0}}) {
            const std::string m = message(s);
            INFO(m);
            CHECK_THAT(m, Catch::Contains(s.str()));
        }
    }
    SECTION("an empty batch") {
        CHECK_THAT(message({0, 1, 1, 8, 8}), Catch::Contains("(0, 1, 1, 8, 8)"));
    }
    SECTION("3D: the depth extent must be a multiple too") {
        UNet<small_3d> net3(1);
        for (Shape s : {Shape{1, 1, 6, 8, 8}, Shape{1, 1, 1, 8, 8}, Shape{1, 1, 8, 8, 10}}) {
            Tensor<float> x(s);
            const std::string m = thrown_message<ShapeError>([&] { net3.predict(x); });
            INFO(m);
            CHECK_THAT(m, Catch::Contains(s.str()));
        }
        Tensor<float> ok(Shape{1, 1, 4, 8, 12});
        CHECK_NOTHROW(net3.predict(ok));
    }
    SECTION("eval mode checks the same way, and a rejected input leaves the network usable") {
        Tensor<float> bad(Shape{1, 1, 1, 8, 6});
        CHECK_THROWS_AS(net.predict(bad), ShapeError);
        Tensor<float> ok(Shape{1, 1, 1, 8, 12});
        const auto& p = net.predict(ok);
        CHECK(p.shape() == Shape{1, 2, 1, 8, 12});
        CHECK(std::all_of(p.begin(), p.end(), [](float v) { return std::isfinite(v); }));
    }
}

TEST_CASE("NaN or Inf in the input throws std::invalid_argument", "[model][errors]") {
    UNet<small_2d> net(1);
    Tensor<float> x(Shape{2, 1, 1, 8, 8});
    x.fill(0.5f);
    SECTION("NaN, train mode") {
        x.at(1, 0, 0, 7, 3) = std::numeric_limits<float>::quiet_NaN();
        const std::string m = thrown_message<std::invalid_argument>([&] { net.forward(x, Mode::train); });
        INFO(m);
        CHECK_THAT(m, Catch::Contains("NaN"));
    }
    SECTION("Inf, eval mode") {
        x[0] = -std::numeric_limits<float>::infinity();
        CHECK_THROWS_AS(net.predict(x), std::invalid_argument);
    }
}

TEST_CASE("training is deterministic", "[model][determinism]") {
    const TrainingData<small_2d> data({2, 1, 1, 32, 32});
    ThreadCountGuard guard;
    SECTION("the same seed and data give bit-identical parameters and running statistics") {
        std::vector<float> b1, b2;
        const auto a = train_copy<small_2d>(42, 5, data, &b1);
        const auto b = train_copy<small_2d>(42, 5, data, &b2);
        CHECK(bitwise_equal(a, b));
        CHECK(bitwise_equal(b1, b2));
        // ... and training changed them.
        UNet<small_2d> fresh(42);
        CHECK_FALSE(bitwise_equal(a, {fresh.parameters().begin(), fresh.parameters().end()}));
    }
    SECTION("1 and 2 threads give bit-identical results") {
        std::vector<float> b1, b2;
        cpu_kernels::set_thread_count(1);
        const auto one = train_copy<small_2d>(42, 5, data, &b1);
        cpu_kernels::set_thread_count(2);
        const auto two = train_copy<small_2d>(42, 5, data, &b2);
        CHECK(bitwise_equal(one, two));
        CHECK(bitwise_equal(b1, b2));
        // In 3D too, with instance norm and a sigmoid head.
        const TrainingData<small_3d> data3({1, 1, 8, 8, 12});
        cpu_kernels::set_thread_count(1);
        const auto one3 = train_copy<small_3d>(7, 3, data3);
        cpu_kernels::set_thread_count(2);
        const auto two3 = train_copy<small_3d>(7, 3, data3);
        CHECK(bitwise_equal(one3, two3));
    }
    SECTION("different seeds give different weights") {
        UNet<small_2d> a(1), b(2), c(1);
        CHECK_FALSE(bitwise_equal(a.parameters(), b.parameters()));
        CHECK(bitwise_equal(a.parameters(), c.parameters()));
        // Not merely a shifted stream: most weights differ.
        std::size_t same = 0;
        for (std::size_t i = 0; i < a.parameters().size(); ++i) same += a.parameters()[i] == b.parameters()[i];
        CHECK(same < a.parameters().size() / 2);  // biases (0) and gammas (1) agree, weights do not
    }
}

TEST_CASE("a training step allocates nothing once the shape has been seen", "[model][allocation]") {
    using Net = UNet<small_2d, counting_cpu>;
    TrainingData<small_2d, counting_cpu> data({2, 1, 1, 32, 32});
    Net net(5);
    Adam<float, counting_cpu> opt(1e-2);
    struct Counter {
        long backend = 0, global = 0;
    };
    auto count = [&](auto&& f) {
        const long b0 = counting_cpu::allocations.load();
        new_calls.store(0);
        counting.store(true);
        f();
        counting.store(false);
        return Counter{counting_cpu::allocations.load() - b0, new_calls.load()};
    };
    // The counters are live.
    const Counter first = count([&] { net.train_step(data.x, data.y, DiceLoss{}, opt); });
    CHECK(first.backend > 0);
    CHECK(count([] { delete new int(1); }).global == 1);

    // Steps 2 .. 5: after the first two (OpenMP starts its threads in the first parallel
    // regions), nothing allocates.
    net.train_step(data.x, data.y, DiceLoss{}, opt);
    const Counter steady = count([&] {
        for (int i = 0; i < 3; ++i) net.train_step(data.x, data.y, DiceLoss{}, opt);
    });
    CHECK(steady.backend == 0);
    CHECK(steady.global == 0);

    // Alternating with inference at the same shape, once both have run.
    net.predict(data.x);
    const Counter mixed = count([&] {
        for (int i = 0; i < 2; ++i) {
            net.train_step(data.x, data.y, DiceLoss{}, opt);
            net.predict(data.x);
        }
    });
    CHECK(mixed.backend == 0);
    CHECK(mixed.global == 0);

    // A smaller shape fits in the buffers planned for the larger one.
    TrainingData<small_2d, counting_cpu> small({1, 1, 1, 16, 16});
    const Counter smaller = count([&] {
        net.train_step(small.x, small.y, DiceLoss{}, opt);
        net.train_step(data.x, data.y, DiceLoss{}, opt);
    });
    CHECK(smaller.backend == 0);
    CHECK(smaller.global == 0);
}

TEST_CASE("a small 2D U-Net learns to segment blobs", "[model][overfit]") {
    // One 32x32 image to learn; a batch of two (the same image first) for the batch-norm checks.
    const TrainingData<small_2d> data({1, 1, 1, 32, 32}, 3), batch({2, 1, 1, 32, 32}, 3);
    REQUIRE(std::equal(data.x.begin(), data.x.end(), batch.x.begin()));
    UNet<small_2d> net(1);
    Adam<float> opt(1e-2);
    const double before = foreground_dice(Head::softmax, net.predict(data.x), data.y);
    double dice = 0, first_loss = 0, loss = 0;
    int steps = 0;
    while (steps < 150 && dice <= 0.95) {
        for (int i = 0; i < 10; ++i, ++steps) {
            loss = net.train_step(data.x, data.y, DiceLoss{}, opt);
            if (steps == 0) first_loss = loss;
        }
        dice = foreground_dice(Head::softmax, net.predict(data.x), data.y);  // eval mode: running statistics
    }
    INFO("Dice " << before << " -> " << dice << " after " << steps << " steps; loss " << first_loss << " -> " << loss);
    CHECK(before < 0.8);
    CHECK(dice > 0.95);
    CHECK(loss < 0.5 * first_loss);

    SECTION("batch norm: eval differs from train, uses the running statistics, and does not change them") {
        const Tensor<float> train_probs = net.forward(batch.x, Mode::train);
        const std::vector<float> stats_before(net.buffers().begin(), net.buffers().end());
        const Tensor<float> eval_probs = net.forward(batch.x, Mode::eval);
        CHECK(bitwise_equal(stats_before, {net.buffers().begin(), net.buffers().end()}));
        float diff = 0;
        for (std::size_t i = 0; i < eval_probs.size(); ++i) diff = std::max(diff, std::abs(eval_probs[i] - train_probs[i]));
        CHECK(diff > 1e-3f);

        // Inference treats each image on its own; training mode normalises over the batch.
        const Tensor<float> alone = net.predict(data.x);
        float eval_gap = 0;
        for (std::size_t i = 0; i < alone.size(); ++i) eval_gap = std::max(eval_gap, std::abs(alone[i] - eval_probs[i]));
        CHECK(eval_gap < 1e-6f);
        const Tensor<float> alone_train = net.forward(data.x, Mode::train);
        float train_gap = 0;
        for (std::size_t i = 0; i < alone.size(); ++i)
            train_gap = std::max(train_gap, std::abs(alone_train[i] - train_probs[i]));
        CHECK(train_gap > 1e-4f);

        // Running statistics equal to the batch's own: zero them and run one training-mode pass
        // (momentum 0.1), so they hold 0.1 * mean and 0.1 * unbiased variance; scale by 10 and
        // undo the unbiased correction M / (M - 1). Inference must then reproduce training mode.
        auto buffers = net.buffers();
        std::fill(buffers.begin(), buffers.end(), 0.0f);
        const Tensor<float> batch_train = net.forward(batch.x, Mode::train);
        std::size_t offset = 0;
        auto for_each_norm = [&](auto&& f) {  // f(mean, var, channels, members)
            offset = 0;
            auto level = [&](int l) {
                const std::size_t ch = std::size_t(small_2d.widths[l]);
                const double members = 2.0 * (32 >> l) * (32 >> l);
                for (int k = 0; k < 2; ++k, offset += 2 * ch) f(&buffers[offset], &buffers[offset + ch], ch, members);
            };
            for (int l = 0; l < net.depth; ++l) level(l);
            for (int l = net.depth - 2; l >= 0; --l) level(l);
        };
        for_each_norm([](float* mean, float* var, std::size_t ch, double m) {
            for (std::size_t c = 0; c < ch; ++c) mean[c] *= 10.0f, var[c] = float(10.0 * var[c] * (m - 1) / m);
        });
        REQUIRE(offset == net.buffers().size());
        const Tensor<float> batch_eval = net.forward(batch.x, Mode::eval);
        float gap = 0;
        for (std::size_t i = 0; i < batch_eval.size(); ++i) gap = std::max(gap, std::abs(batch_eval[i] - batch_train[i]));
        CHECK(gap < 1e-4f);

        // With running means 0, huge running variances and zero betas, every normalised value is
        // ~0 and so is every activation: inference outputs softmax(head bias) everywhere, whatever
        // the input. Training mode, on batch statistics, does not.
        for_each_norm([](float* mean, float* var, std::size_t ch, double) {
            std::fill_n(mean, ch, 0.0f);
            std::fill_n(var, ch, 1e12f);
        });
        auto params = net.parameters();
        for (const auto& seg : lightunet::testing::parameter_segments(small_2d))
            if (seg.name.find(".norm") != std::string::npos && seg.name.ends_with(".bias"))
                std::fill_n(params.begin() + std::ptrdiff_t(seg.offset), seg.size, 0.0f);
        auto head_bias = params.last(2);
        head_bias[0] = 0.3f, head_bias[1] = -0.2f;
        const float p0 = float(1 / (1 + std::exp(-0.5)));
        auto distance_to_flat = [&](const Tensor<float>& t) {
            float worst = 0;
            for (std::size_t i = 0; i < t.size(); ++i) worst = std::max(worst, std::abs(t[i] - ((i / 1024) % 2 ? 1 - p0 : p0)));
            return worst;
        };
        CHECK(distance_to_flat(net.predict(batch.x)) < 1e-5f);
        CHECK(distance_to_flat(net.forward(batch.x, Mode::train)) > 0.01f);
    }
}

TEST_CASE("batch norm running statistics follow PyTorch's update once per training step", "[model][batchnorm]") {
    UNet<small_2d> net(9);
    const TrainingData<small_2d> data({2, 1, 1, 16, 16}, 5);
    CHECK(std::all_of(net.buffers().begin(), net.buffers().begin() + 8, [](float v) { return v == 0.0f; }));
    CHECK(std::all_of(net.buffers().begin() + 8, net.buffers().begin() + 16, [](float v) { return v == 1.0f; }));
    net.forward(data.x, Mode::train);
    net.backward(data.x, data.y, DiceLoss{});  // must not update them again

    // The first norm sees conv1(x): 1 -> 8 channels, weights then biases at the front.
    const ConvProblem p{{1, 16, 16}, 1, 3, 3, 1, 8};
    const auto params = net.parameters();
    const std::vector<double> x(data.x.begin(), data.x.end());
    const std::vector<double> w(params.begin(), params.begin() + 72), b(params.begin() + 72, params.begin() + 80);
    const auto z = reference::conv_forward(p, 2, x, w, b);
    for (int c = 0; c < 8; ++c) {
        double sum = 0, sq = 0;
        for (int n = 0; n < 2; ++n)
            for (int i = 0; i < 256; ++i) sum += z[(std::size_t(n) * 8 + c) * 256 + i];
        const double mean = sum / 512;
        for (int n = 0; n < 2; ++n)
            for (int i = 0; i < 256; ++i) sq += std::pow(z[(std::size_t(n) * 8 + c) * 256 + i] - mean, 2);
        INFO("channel " << c);
        CHECK(net.buffers()[c] == Approx(0.1 * mean).margin(1e-6).epsilon(1e-5));
        CHECK(net.buffers()[8 + c] == Approx(0.9 + 0.1 * sq / 511).epsilon(1e-5));
    }
}

TEST_CASE("a small 3D U-Net with instance norm learns to segment ellipsoids", "[model][overfit]") {
    const TrainingData<small_3d> data({1, 1, 16, 16, 16}, 4);
    UNet<small_3d> net(2);
    Adam<float> opt(2e-2);
    double dice = 0;
    int steps = 0;
    while (steps < 150 && dice <= 0.95) {
        for (int i = 0; i < 10; ++i, ++steps) net.train_step(data.x, data.y, DiceLoss{}, opt);
        dice = foreground_dice(Head::sigmoid, net.predict(data.x), data.y);
    }
    INFO("Dice " << dice << " after " << steps << " steps");
    CHECK(dice > 0.95);
    // Instance norm has no running statistics: inference equals training mode.
    const Tensor<float> train_probs = net.forward(data.x, Mode::train);
    const Tensor<float>& eval_probs = net.predict(data.x);
    float gap = 0;
    for (std::size_t i = 0; i < eval_probs.size(); ++i) gap = std::max(gap, std::abs(eval_probs[i] - train_probs[i]));
    CHECK(gap < 1e-6f);
}

TEST_CASE("inference prepares convolution weights once while they do not change", "[model][plan]") {
    TrainingData<small_2d> data({2, 1, 1, 32, 32});
    UNet<small_2d> net(5);
    constexpr int convolutions = 3 * 2 + 2 * (2 + 1) + 1;  // encoder blocks, decoder blocks and ups, head
    const std::vector<float> first(net.predict(data.x).begin(), net.predict(data.x).end());
    CHECK(net.weight_preparations() == convolutions);
    for (int i = 0; i < 3; ++i) net.predict(data.x);
    CHECK(net.weight_preparations() == convolutions);  // nothing prepared again

    // Every way the weights change prepares them again, and the result follows the weights.
    Adam<float> opt(1e-2);
    net.train_step(data.x, data.y, DiceLoss{}, opt);
    const std::vector<float> trained(net.predict(data.x).begin(), net.predict(data.x).end());
    CHECK(net.weight_preparations() == 2 * convolutions);
    CHECK(trained != first);
    {
        UNet<small_2d> twin(99);  // the same weights and statistics in a model that never prepared
        twin.load_parameters_from_host(net.parameters());
        twin.load_buffers_from_host(net.buffers());
        const auto& p = twin.predict(data.x);
        CHECK(std::equal(p.begin(), p.end(), trained.begin()));
    }
    {
        auto buffers = net.buffers();  // the running statistics, folded into the prepared weights
        for (float& v : buffers) v = v * 1.5f + 0.25f;
    }
    const std::vector<float> restated(net.predict(data.x).begin(), net.predict(data.x).end());
    CHECK(net.weight_preparations() == 3 * convolutions);
    CHECK(restated != trained);
    auto params = net.parameters();  // a mutable view counts as a change
    std::fill(params.begin(), params.end(), 0.0f);
    net.predict(data.x);
    const long after_view = net.weight_preparations();
    CHECK(after_view > 3 * convolutions);
    const auto& zeroed = net.predict(data.x);
    CHECK(std::all_of(zeroed.begin(), zeroed.end(), [](float v) { return v == 0.5f; }));  // softmax of equal logits
    CHECK(net.weight_preparations() == after_view);
    net.weights_changed();
    net.predict(data.x);
    CHECK(net.weight_preparations() == after_view + convolutions);
}

namespace {
// nnU-Net's ResEnc encoder with deep supervision (one auxiliary head, on decoder level 1), and
// the same network without the auxiliary heads: its parameters are the prefix of the other's.
constexpr UNetConfig resenc_ds_2d{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16, 16, 32}, .norm = Norm::batch,
                                  .encoder = Encoder::residual, .encoder_blocks = {1, 2, 2, 1}, .deep_supervision = true};
constexpr UNetConfig resenc_2d = [] {
    UNetConfig c = resenc_ds_2d;
    c.deep_supervision = false;
    return c;
}();
static_assert(UNet<resenc_2d>::parameter_count + 16 * 2 + 2 == UNet<resenc_ds_2d>::parameter_count);
static_assert(UNet<resenc_2d>::buffer_count == UNet<resenc_ds_2d>::buffer_count);
}  // namespace

TEST_CASE("a residual 2D U-Net with deep supervision learns to segment blobs", "[model][overfit][residual][deep_supervision]") {
    const TrainingData<resenc_ds_2d> data({2, 1, 1, 32, 32}, 3);
    UNet<resenc_ds_2d> net(1);
    Adam<float> opt(1e-2);
    const double before = foreground_dice(Head::softmax, net.predict(data.x), data.y);
    double first_loss = 0, loss = 0;
    for (int step = 0; step < 40; ++step) {
        loss = net.train_step(data.x, data.y, DiceLoss{}, opt);
        if (step == 0) first_loss = loss;
    }
    const double dice = foreground_dice(Head::softmax, net.predict(data.x), data.y);
    INFO("Dice " << before << " -> " << dice << "; loss (over both heads) " << first_loss << " -> " << loss);
    CHECK(loss < 0.5 * first_loss);
    CHECK(dice > 0.9);
    CHECK(dice > before + 0.2);

    // Inference runs the top head only: the twin without auxiliary heads, given the shared
    // parameters (a prefix: the auxiliary heads come last) and the running statistics, predicts
    // the same bits. So does a training-mode forward (the top head's probabilities).
    UNet<resenc_2d> twin(2);
    twin.load_parameters_from_host(net.parameters().first(UNet<resenc_2d>::parameter_count));
    twin.load_buffers_from_host(net.buffers());
    auto bits = [](const Tensor<float>& t) { return std::span<const float>(t.data(), t.size()); };
    CHECK(bitwise_equal(bits(net.predict(data.x)), bits(twin.predict(data.x))));
    const Tensor<float> train_probs = net.forward(data.x, Mode::train);
    CHECK(bitwise_equal(bits(train_probs), bits(twin.forward(data.x, Mode::train))));
    CHECK(bitwise_equal({net.buffers().begin(), net.buffers().end()}, {twin.buffers().begin(), twin.buffers().end()}));
}

// Precision::bf16: the same network with bfloat16 convolution operands (a configuration's
// default, or set at run time), fp32 weights.
namespace {
constexpr UNetConfig small_2d_bf16 = [] {
    UNetConfig c = small_2d;
    c.precision = Precision::bf16;
    return c;
}();
}  // namespace

TEST_CASE("a bf16 model: close to fp32, not equal to it, and the same whichever way it is chosen", "[model][bf16]") {
    const TrainingData<small_2d> data({4, 1, 1, 32, 32}, 5);
    UNet<small_2d> fp32(2), runtime(2);
    UNet<small_2d_bf16> configured(2);
    runtime.set_conv_precision(Precision::bf16);
    CHECK(configured.conv_precision() == Precision::bf16);
    CHECK(fp32.conv_precision() == Precision::fp32);
    // One training step each: the loss, then the parameter gradients.
    Adam<float> a(1e-3), b(1e-3), c(1e-3);
    const double l32 = fp32.train_step(data.x, data.y, DiceLoss{}, a);
    const double l16 = configured.train_step(data.x, data.y, DiceLoss{}, b);
    CHECK(runtime.train_step(data.x, data.y, DiceLoss{}, c) == l16);
    CHECK(bitwise_equal(runtime.parameters(), configured.parameters()));
    CHECK(bitwise_equal(runtime.gradients(), configured.gradients()));
    CHECK(std::abs(l16 - l32) < 1e-2 * std::abs(l32));
    CHECK(l16 != l32);
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < fp32.gradients().size(); ++i) {
        const double d = double(configured.gradients()[i]) - double(fp32.gradients()[i]);
        diff += d * d;
        norm += double(fp32.gradients()[i]) * double(fp32.gradients()[i]);
    }
    // Measured 0.082 (both kernels): batch norm's backward subtracts means of products whose
    // operands were rounded to 8 bits, in a network of 8..32 channels.
    INFO("gradient difference " << std::sqrt(diff / norm) << " of the fp32 gradient's norm");
    CHECK(std::sqrt(diff / norm) < 0.15);
    CHECK(std::sqrt(diff / norm) > 1e-5);
    // The workspace the bf16 plan states is what it holds (direct kernels only: no Winograd).
    CHECK(configured.planned_bytes() == UNet<small_2d_bf16>::workspace_bytes(data.x.shape(), Mode::train));
}

TEST_CASE("bf16 training learns the blobs as fp32 training does", "[model][bf16][overfit]") {
    // Over five initialisations: one run's held-out Dice moves by 0.01-0.03 with any change of
    // the fp32 bits (a single seed once landed at 0.0105 from fp32), the mean of five by less.
    const TrainingData<small_2d> train({8, 1, 1, 32, 32}, 7), held_out({8, 1, 1, 32, 32}, 8);
    auto learn = [&](Precision precision, std::uint64_t seed) {
        UNet<small_2d> net(seed);
        net.set_conv_precision(precision);
        Adam<float> opt(5e-3);
        for (int step = 0; step < 120; ++step) net.train_step(train.x, train.y, DiceLoss{}, opt);
        return foreground_dice(Head::softmax, net.predict(held_out.x), held_out.y);
    };
    double mean32 = 0, mean16 = 0;
    for (const std::uint64_t seed : {3, 4, 5, 6, 7}) {
        const double dice32 = learn(Precision::fp32, seed), dice16 = learn(Precision::bf16, seed);
        INFO("seed " << seed << ": held-out Dice fp32 " << dice32 << ", bf16 " << dice16 << " (" << Kernels<cpu>::bf16_kernels() << ")");
        CHECK(dice32 > 0.85);
        CHECK(dice16 > 0.85);
        mean32 += dice32 / 5, mean16 += dice16 / 5;
    }
    INFO("mean held-out Dice fp32 " << mean32 << ", bf16 " << mean16);
    CHECK(std::abs(mean16 - mean32) < 0.01);
}

namespace {
// Inference folds every batch norm into the convolution before it (weights scaled, bias
// shifted, the activation applied in the convolution's store; UNet's eval plan writes no
// convolution output of its own there). Against the naive double forward on the running
// statistics (tests/reference_unet.hpp), with the statistics and the norms' affine parameters
// set far from their initial 0 and 1, and the largest difference of a probability reported.
template <UNetConfig C>
void check_folded_inference(const Shape& shape, ConvAlgorithm algorithm, Precision precision, double tolerance) {
    using Net = UNet<C>;
    Net net(21);
    net.set_conv_algorithm(algorithm);
    net.set_conv_precision(precision);
    std::mt19937 rng(4);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    {
        auto params = net.parameters();
        auto buffers = net.buffers();
        for (const graph::Op& op : Net::Graph::ops) {
            if (op.kind != graph::OpKind::norm_act || op.running == graph::no_offset) continue;
            for (int c = 0; c < op.cout; ++c) {
                params[op.gamma + c] = 1.0f + 0.5f * u(rng);
                params[op.beta + c] = 0.3f * u(rng);
                buffers[op.running + c] = 0.5f * u(rng);
                buffers[op.running + op.cout + c] = 1.15f + 0.85f * u(rng);
            }
        }
    }
    Tensor<float> x(shape);
    for (auto& v : x) v = u(rng);
    net.predict(x);  // prepares, then runs on what it prepared
    const Tensor<float>& probs = net.predict(x);

    const std::vector<double> params(net.parameters().begin(), net.parameters().end());
    const std::vector<double> running(net.buffers().begin(), net.buffers().end());
    reference::Volume in(shape.n, shape.c, shape.d, shape.h, shape.w);
    in.v.assign(x.begin(), x.end());
    const auto want = reference::UNetForward(C, params, running).run(in);
    REQUIRE(want[0].v.size() == probs.size());
    double worst = 0;
    for (std::size_t i = 0; i < probs.size(); ++i) worst = std::max(worst, std::abs(double(probs[i]) - want[0].v[i]));
    INFO(to_string(algorithm) << (precision == Precision::bf16 ? ", bf16" : ", fp32") << ": largest probability difference " << worst);
    CHECK(worst < tolerance);
    // Every plain convolution followed by its batch norm runs folded: its own output has no buffer.
    int folded = 0;
    for (int i = 0; i < Net::Graph::op_count; ++i) folded += MemoryPlan<C, cpu, float>::folds_next_norm(i);
    CHECK(folded > 0);
}

constexpr UNetConfig folded_2d{.dims = 2, .in_channels = 3, .classes = 3, .widths = {8, 16, 32}, .norm = Norm::batch,
                               .act = Act::relu, .down = Down::max_pool, .up = Up::transposed_conv, .head = Head::softmax};
constexpr UNetConfig folded_resenc{.dims = 2, .in_channels = 2, .classes = 2, .widths = {8, 8, 16}, .norm = Norm::batch,
                                   .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                   .head = Head::sigmoid, .leaky_slope = 0.01, .encoder = Encoder::residual,
                                   .encoder_blocks = {1, 2, 1}};
constexpr UNetConfig folded_3d{.dims = 3, .in_channels = 2, .classes = 2, .widths = {8, 16}, .norm = Norm::batch,
                               .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::transposed_conv,
                               .head = Head::softmax, .leaky_slope = 0.1};
}  // namespace

TEST_CASE("inference with each batch norm folded into its convolution matches the eval-mode reference", "[model][plan]") {
    for (ConvAlgorithm a : {ConvAlgorithm::automatic, ConvAlgorithm::direct, ConvAlgorithm::winograd}) {
        check_folded_inference<folded_2d>({2, 3, 1, 40, 36}, a, Precision::fp32, 2e-5);
        check_folded_inference<folded_resenc>({1, 2, 1, 32, 24}, a, Precision::fp32, 2e-5);
        check_folded_inference<folded_3d>({1, 2, 8, 10, 6}, a, Precision::fp32, 2e-5);
    }
    // bf16 operands: the folded weights are rounded, as the unfolded ones were. Measured on the
    // Zen 5 host (vdpbf16ps): folded 0.051 (2D) and 0.0059 (3D); the same networks unfolded 0.045
    // and 0.0057 (fp32 folded at most 7.3e-6, unfolded 1.0e-5).
    check_folded_inference<folded_2d>({2, 3, 1, 40, 36}, ConvAlgorithm::automatic, Precision::bf16, 0.08);
    check_folded_inference<folded_3d>({1, 2, 8, 10, 6}, ConvAlgorithm::automatic, Precision::bf16, 0.08);
}

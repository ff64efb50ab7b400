#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <random>
#include <vector>

#include <lightunet/backend/cpu/kernels.hpp>

#include "reference_ops.hpp"
#include "test_support.hpp"

using namespace lightunet;

namespace {

template <class T>
std::vector<T> random_vector(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<T> v(n);
    for (auto& x : v) x = T(u(rng));
    return v;
}

template <class T>
void check_close(const std::vector<T>& a, const std::vector<T>& b, double tol) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (1.0 + std::abs(double(b[i]))));
    CHECK(worst < tol);
}

// One convolution's operands (seeded), its input split across two sources as the decoder's
// skip concatenation does, and its passes through Kernels<cpu>. The backward pass's first sink
// accumulates onto 7s, the second overwrites.
template <class T>
struct ConvRun {
    ConvProblem p;
    int images;
    std::size_t S = p.extent.size();
    std::vector<T> x, w, b, g, ws;
    int first = p.cin / 2;
    ConvRun(const ConvProblem& problem, int n, unsigned seed)
        : p(problem), images(n), x(random_vector<T>(std::size_t(n) * p.cin * S, seed)), w(random_vector<T>(p.weight_count(), seed + 1)),
          b(random_vector<T>(p.cout, seed + 2)), g(random_vector<T>(std::size_t(n) * p.cout * S, seed + 3)),
          ws(Kernels<cpu>::conv_workspace_size<T>(p)) {}
    std::array<ChannelSource<T>, 2> sources() const {
        return {ChannelSource<T>{x.data(), first, std::ptrdiff_t(p.cin * S)},
                ChannelSource<T>{x.data() + first * S, p.cin - first, std::ptrdiff_t(p.cin * S)}};
    }
    std::vector<T> forward() {
        std::vector<T> y(std::size_t(images) * p.cout * S);
        const auto in = sources();
        Kernels<cpu>::conv_forward<T>(p, images, in, w.data(), b.data(), y.data(), std::ptrdiff_t(p.cout * S), ws.data());
        return y;
    }
    void backward(std::vector<T>& dx, std::vector<T>& dw, std::vector<T>& db) {
        dx.assign(x.size(), T(7));
        dw.assign(w.size(), T(0));
        db.assign(std::size_t(p.cout), T(0));
        const auto in = sources();
        const ChannelSink<T> sinks[2] = {{dx.data(), first, std::ptrdiff_t(p.cin * S), true},
                                         {dx.data() + first * S, p.cin - first, std::ptrdiff_t(p.cin * S), false}};
        Kernels<cpu>::conv_backward<T>(p, images, in, w.data(), g.data(), std::ptrdiff_t(p.cout * S), sinks, dw.data(), db.data(),
                                      ws.data());
    }
    // The reference's input gradient with the 7s the first sink accumulated onto.
    template <class R>
    void add_sevens(std::vector<R>& dx_ref) const {
        for (int n = 0; n < images; ++n)
            for (std::size_t i = 0; i < first * S; ++i) dx_ref[n * p.cin * S + i] += R(7);
    }
};

template <class T>
void check_conv(const ConvProblem& p, int images, double tol) {
#ifdef LIGHTUNET_TEST_DEPTH_SLABS
    // This program's tiny slab bound (tests/CMakeLists.txt) must cut every deeper 3D volume.
    if (p.extent.d >= 5) CHECK(cpu_kernels::slab_depth<T>(p) < p.extent.d);
#endif
    ConvRun<T> run(p, images, 1);
    check_close(run.forward(), reference::conv_forward(p, images, run.x, run.w, run.b), tol);
    std::vector<T> dx_ref, dw_ref, db_ref, dx, dw, db;
    reference::conv_backward(p, images, run.x, run.w, run.g, dx_ref, dw_ref, db_ref);
    run.backward(dx, dw, db);
    run.add_sevens(dx_ref);
    check_close(dx, dx_ref, tol);
    check_close(dw, dw_ref, tol);
    check_close(db, db_ref, tol);
}

// Precision::bf16: the sums of the naive reference (in double) over operands rounded to bf16
// (inputs, weights, output gradients; the bias gradient sums the output gradient as given), to
// fp32 accuracy; and visibly not the fp32 convolution.
std::vector<double> bf16_rounded(const std::vector<float>& v) {
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) r[i] = cpu_kernels::round_to_bf16(v[i]);
    return r;
}
template <class A, class B>
double worst_relative(const std::vector<A>& a, const std::vector<B>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (1.0 + std::abs(double(b[i]))));
    return worst;
}
void check_conv_bf16(ConvProblem p, int images) {
    p.precision = Precision::bf16;
    ConvRun<float> run(p, images, 11);
    const std::vector<float> y = run.forward();
    const std::vector<double> xr = bf16_rounded(run.x), wr = bf16_rounded(run.w), gr = bf16_rounded(run.g);
    const std::vector<double> bd(run.b.begin(), run.b.end()), gd(run.g.begin(), run.g.end());
    CHECK(worst_relative(y, reference::conv_forward(p, images, xr, wr, bd)) < 2e-5);
    CHECK(worst_relative(y, reference::conv_forward(p, images, std::vector<double>(run.x.begin(), run.x.end()),
                                                    std::vector<double>(run.w.begin(), run.w.end()), bd)) > 2e-4);

    std::vector<double> dx_ref, dw_ref, db_ref, dx_unused, dw_unused;
    reference::conv_backward(p, images, xr, wr, gr, dx_ref, dw_ref, db_ref);
    reference::conv_backward(p, images, xr, wr, gd, dx_unused, dw_unused, db_ref);  // the bias sums g as given
    std::vector<float> dx, dw, db;
    run.backward(dx, dw, db);
    run.add_sevens(dx_ref);
    CHECK(worst_relative(dx, dx_ref) < 2e-5);
    // The weight gradient sums a product per voxel: fp32 rounding grows like the root of their
    // count (the fp32 kernels' order, LIGHTUNET_CPU_BF16=0: 2.8e-5 over 2 x 18,200 voxels).
    const double voxels = double(images) * double(p.extent.size());
    CHECK(worst_relative(dw, dw_ref) < 2e-5 * std::max(1.0, std::sqrt(voxels / 10000.0)));
    // The bias gradient is one fp32 sum over every voxel: its rounding grows with their count
    // (summed in order where the reduction is not vectorised, as in the sanitizer build).
    CHECK(worst_relative(db, db_ref) < 2e-5 * std::max(1.0, voxels / 1000.0));
}

}  // namespace

TEST_CASE("bf16 convolutions sum bf16-rounded operands in fp32", "[conv][bf16]") {
#if defined(__AVX512BF16__) && !defined(LIGHTUNET_CPU_DISPATCH)
    // This program was built for a CPU with AVX512_BF16: the vdpbf16ps kernels run unless turned off.
    const char* off = std::getenv("LIGHTUNET_CPU_BF16");
    CHECK(cpu_kernels::bf16_dot_runs() == !(off && std::string(off) == "0"));
#endif
    SECTION("2D 3x3, 5 -> 11 channels, 7x13, two images") { check_conv_bf16({{1, 7, 13}, 1, 3, 3, 5, 11}, 2); }
    SECTION("2D 3x3, 33 -> 17 channels, 20x37") { check_conv_bf16({{1, 20, 37}, 1, 3, 3, 33, 17}, 1); }
    SECTION("3D 3x3x3, 7 -> 10 channels, 5x6x7") { check_conv_bf16({{5, 6, 7}, 3, 3, 3, 7, 10}, 1); }
    SECTION("3D 1x1x1, 13 -> 5 channels, 7x4x9") { check_conv_bf16({{7, 4, 9}, 1, 1, 1, 13, 5}, 2); }
    SECTION("2D 1x1, 64 -> 4 channels, 16x16 (a head)") { check_conv_bf16({{1, 16, 16}, 1, 1, 1, 64, 4}, 1); }
    SECTION("2D 3x3, 32 -> 32 channels, 40x36 (Winograd's in fp32)") { check_conv_bf16({{1, 40, 36}, 1, 3, 3, 32, 32}, 1); }
    SECTION("2D 3x3, 16 -> 32 channels, 90x100 (the weight gradient in passes of 2,048 voxel pairs, a short last one)") {
        check_conv_bf16({{1, 90, 100}, 1, 3, 3, 16, 32}, 1);
    }
    SECTION("3D 3x3x3, 6 -> 16 channels, 9x20x30 (one block of outputs, in passes)") { check_conv_bf16({{9, 20, 30}, 3, 3, 3, 6, 16}, 1); }
    SECTION("2D 3x3, 9 -> 23 channels, 130x140, two images (the weight gradient with voxels in lanes, in passes of 16,384 voxels)") {
        constexpr ConvProblem p{{1, 130, 140}, 1, 3, 3, 9, 23};
#if LIGHTUNET_BF16_DOT_COMPILED
        // Two passes, the second partial: the running totals must carry the first one.
        static_assert(cpu_kernels::wgrad_in_lanes(23) && cpu_kernels::padded_layout(p).run_length > cpu_kernels::wgrad_lane_pass &&
                      cpu_kernels::padded_layout(p).run_length < 2 * cpu_kernels::wgrad_lane_pass);
#endif
        check_conv_bf16(p, 2);
    }
}

// The bf16 weight gradient's two copies (its output gradient into blocks of 16 channels by voxel
// pairs, its sums back from [k][16] to [cout][k]) move values: exact, in the vectorised
// interiors and the word-by-word edges (a partial block, an odd run, k past a multiple of 16).
TEST_CASE("the bf16 weight gradient's blocking copies move every value exactly", "[conv][bf16]") {
#if LIGHTUNET_BF16_DOT_COMPILED
    std::mt19937 rng(5);
    for (const std::ptrdiff_t run : {1, 31, 32, 33, 64, 95, 130}) {
        for (const int cout : {5, 16, 17, 40}) {
            const std::ptrdiff_t stride = run + 7;  // channels apart by more than the run
            std::vector<std::uint16_t> g(std::size_t(cout) * stride);
            for (auto& v : g) v = std::uint16_t(rng());
            const std::ptrdiff_t pairs = (run + 1) / 2;
            for (int b = 0; b * 16 < cout; ++b) {
                std::vector<std::uint32_t> out(std::size_t(pairs) * 16, 0xdeadbeefu);
                cpu_kernels::block_gradient_pairs(g.data(), stride, run, cout, b, out.data());
                std::size_t wrong = 0;
                for (std::ptrdiff_t p = 0; p < pairs; ++p)
                    for (int j = 0; j < 16; ++j) {
                        const int o = b * 16 + j;
                        const std::uint32_t low = o < cout ? g[std::size_t(o * stride + 2 * p)] : 0;
                        const std::uint32_t high = o < cout && 2 * p + 1 < run ? g[std::size_t(o * stride + 2 * p + 1)] : 0;
                        wrong += out[std::size_t(p * 16 + j)] != (low | high << 16);
                    }
                INFO("run " << run << ", cout " << cout << ", block " << b);
                CHECK(wrong == 0);
            }
        }
    }
    for (const int k_count : {1, 15, 16, 17, 40, 432}) {
        for (const int cout : {5, 16, 17, 40}) {
            const std::vector<float> start = random_vector<float>(std::size_t(cout) * k_count, 7);
            const int blocks = (cout + 15) / 16;
            const std::vector<float> blocked = random_vector<float>(std::size_t(blocks) * k_count * 16, 8);
            std::vector<float> dweight = start;
            for (int b = 0; b < blocks; ++b)
                cpu_kernels::add_blocked_weight_gradient(blocked.data() + std::size_t(b) * k_count * 16, k_count, cout, b, dweight.data());
            std::size_t wrong = 0;
            for (int o = 0; o < cout; ++o)
                for (int k = 0; k < k_count; ++k) {
                    const float expected = start[std::size_t(o) * k_count + k] + blocked[(std::size_t(o / 16) * k_count + k) * 16 + o % 16];
                    wrong += std::memcmp(&dweight[std::size_t(o) * k_count + k], &expected, sizeof expected) != 0;
                }
            INFO("k_count " << k_count << ", cout " << cout);
            CHECK(wrong == 0);
        }
    }
#else
    WARN("SKIPPED: the bf16 weight gradient's kernels are compiled for AVX-512 targets only");
#endif
}

// Both bf16 weight layouts, for Fprop and for Dgrad (outputs and inputs exchanged, taps
// mirrored), word by word against their definitions: odd input counts (a pair's second half
// zero), output counts past a block of R or of 16 rows (zero rows), 2D and 3D taps. The AMX
// layout is checked on every host here: its kernels run only where AMX does.
TEST_CASE("the bf16 weight packs put every weight where the kernels read it", "[conv][bf16]") {
#if LIGHTUNET_BF16_DOT_COMPILED
    constexpr int R = cpu_kernels::fprop_rows, rows16 = cpu_kernels::amx_rows;
    for (const auto& [cout, cin, taps] : {std::array{5, 9, 9}, std::array{24, 7, 27}, std::array{33, 48, 9}, std::array{16, 2, 1}}) {
        const std::vector<float> w = random_vector<float>(std::size_t(cout) * cin * taps, 31);
        for (const bool dgrad : {false, true}) {
            const int outs = dgrad ? cin : cout, ins = dgrad ? cout : cin;
            const int pairs = (ins + 1) / 2;
            auto value = [&](int o, int i, int t) -> std::uint32_t {
                if (o >= outs || i >= ins) return 0;
                const float v = dgrad ? w[(std::size_t(i) * cin + o) * taps + (taps - 1 - t)] : w[(std::size_t(o) * cin + i) * taps + t];
                return cpu_kernels::bf16_bits(v);
            };
            auto word = [&](int o, int pair, int t) { return value(o, 2 * pair, t) | value(o, 2 * pair + 1, t) << 16; };
            for (const bool amx : {false, true}) {
                std::vector<std::uint32_t> packed(cpu_kernels::packed_weights_bf16_size<float>(outs, ins, taps), 0xdeadbeefu);
                cpu_kernels::pack_weights_bf16(w.data(), cout, cin, taps, dgrad, packed.data(), amx);
                std::size_t wrong = 0;
                if (amx) {
                    const int k = cpu_kernels::amx_pair_block(pairs);
                    for (int b = 0; b * rows16 < outs; ++b)
                        for (int kb = 0; kb < pairs / k; ++kb)
                            for (int t = 0; t < taps; ++t)
                                for (int r = 0; r < rows16; ++r)
                                    for (int j = 0; j < k; ++j)
                                        wrong += packed[std::size_t(b) * pairs * taps * rows16 + ((std::size_t(kb) * taps + t) * rows16 + r) * k + j] !=
                                                 word(b * rows16 + r, kb * k + j, t);
                } else {
                    for (int b = 0; b * R < outs; ++b)
                        for (int pr = 0; pr < pairs; ++pr)
                            for (int t = 0; t < taps; ++t)
                                for (int r = 0; r < R; ++r)
                                    wrong += packed[((std::size_t(b) * pairs + pr) * taps + t) * R + r] != word(b * R + r, pr, t);
                }
                INFO("cout " << cout << ", cin " << cin << ", taps " << taps << (dgrad ? ", Dgrad" : ", Fprop") << (amx ? ", AMX layout" : ", vdpbf16ps layout"));
                CHECK(wrong == 0);
            }
        }
    }
#else
    WARN("SKIPPED: the bf16 weight packs serve the AVX-512 targets' kernels only");
#endif
}

// A direct convolution's chunk of V x L padded positions crosses the ends of padded rows
// wherever a row is not a multiple of it (most rows: 130 against 48 at 128^3); its interior
// voxels go out as runs along rows (store_compact_chunk). Against a voxel-by-voxel copy, bit for
// bit, over chunks tiling the whole run (as the kernels do) and at odd offsets: rows of every
// width around the vector and the chunk, 2D, 3D and 1x1 layouts, accumulating and overwriting
// (activated) outputs, a row with no output, a partial block of rows. Every interior voxel is
// written once.
TEST_CASE("a chunk's interior voxels reach the unpadded outputs once, whatever rows it crosses", "[conv]") {
    using T = float;
    constexpr int R = 4;
    constexpr int L = cpu_kernels::lanes<T>;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<ConvProblem> problems;
    for (const int w : {1, 2, 5, L - 1, L, L + 1, 47, 48, 49, 130})
        problems.push_back({{1, 3, w}, 1, 3, 3, 1, 1}), problems.push_back({{3, 2, w}, 3, 3, 3, 1, 1});
    problems.push_back({{2, 3, 37}, 1, 1, 1, 1, 1});
    for (const ConvProblem& p : problems) {
        const cpu_kernels::PaddedLayout l = cpu_kernels::padded_layout(p);
        const std::ptrdiff_t plane = std::ptrdiff_t(p.extent.size());
        for (const std::ptrdiff_t n : {std::ptrdiff_t(3 * L), std::ptrdiff_t(L), std::ptrdiff_t(5)}) {
            std::vector<T> out(std::size_t(R) * plane), expected;
            for (auto& v : out) v = u(rng);
            for (std::ptrdiff_t i = plane; i < 2 * plane; ++i) out[std::size_t(i)] = std::numeric_limits<T>::quiet_NaN();
            expected = out;
            cpu_kernels::CompactRows<T, R> rows{};
            const int row_count = 3;  // a partial block: the fourth row is never written
            // Row 1 starts as NaN: every voxel must be written, after a leaky ReLU. Row 0
            // accumulates: no activation, whatever its slope says.
            rows.set(0, {out.data(), 0.25f, true, 0.5f});
            rows.set(1, {out.data() + plane, -1.5f, false, 0.125f});
            rows.set(2, {nullptr, 0.0f, false});
            rows.set(3, {out.data() + 3 * plane, 0.0f, false});
            std::vector<T> src(std::size_t(R) * n);
            const std::ptrdiff_t last = l.run_begin + l.run_length;
            for (std::ptrdiff_t q = l.run_begin; q < last; q += n) {
                for (auto& v : src) v = u(rng);
                cpu_kernels::store_compact_chunk<T, R>(src.data(), n, n, row_count, rows, l, q);
                for (std::ptrdiff_t i = 0; i < n; ++i) {
                    const std::ptrdiff_t at = q + i, z = at / (l.hp * l.wp), y = at / l.wp % l.hp, x = at % l.wp;
                    if (z < l.pd || z >= l.pd + p.extent.d || y < l.ph || y >= l.ph + p.extent.h || x < l.pw || x >= l.pw + p.extent.w)
                        continue;
                    const std::ptrdiff_t o = ((z - l.pd) * p.extent.h + (y - l.ph)) * p.extent.w + (x - l.pw);
                    expected[std::size_t(o)] = expected[std::size_t(o)] + (src[std::size_t(i)] + rows.bias[0]);
                    const T v = src[std::size_t(n + i)] + rows.bias[1];
                    expected[std::size_t(plane + o)] = v > 0 ? v : v * 0.125f;
                }
            }
            INFO("extent " << p.extent.d << "x" << p.extent.h << "x" << p.extent.w << ", taps " << p.taps() << ", chunk " << n);
            CHECK(std::memcmp(out.data(), expected.data(), out.size() * sizeof(T)) == 0);
            CHECK(std::none_of(out.begin() + plane, out.begin() + 2 * plane, [](T v) { return std::isnan(v); }));
        }
    }
}

TEMPLATE_TEST_CASE("convolution kernels equal the naive reference on odd sizes", "[conv]", float, double) {
    const double tol = std::is_same_v<TestType, float> ? 2e-4 : 1e-12;
    SECTION("2D 3x3, 5 -> 11 channels, 7x13") { check_conv<TestType>({{1, 7, 13}, 1, 3, 3, 5, 11}, 2, tol); }
    SECTION("2D 3x3, 1 -> 3 channels, 1x1") { check_conv<TestType>({{1, 1, 1}, 1, 3, 3, 2, 3}, 1, tol); }
    SECTION("2D 3x3, 17 -> 9 channels, 19x5") { check_conv<TestType>({{1, 19, 5}, 1, 3, 3, 17, 9}, 1, tol); }
    SECTION("3D 3x3x3, 3 -> 10 channels, 5x6x7") { check_conv<TestType>({{5, 6, 7}, 3, 3, 3, 3, 10}, 2, tol); }
    SECTION("3D 1x1x1, 13 -> 5 channels, 3x4x9") { check_conv<TestType>({{3, 4, 9}, 1, 1, 1, 13, 5}, 1, tol); }
    SECTION("3D 1x1x1, 13 -> 5 channels, 7x4x9") { check_conv<TestType>({{7, 4, 9}, 1, 1, 1, 13, 5}, 2, tol); }
    SECTION("3D 3x3x3, 6 -> 4 channels, 11x5x6") { check_conv<TestType>({{11, 5, 6}, 3, 3, 3, 6, 4}, 1, tol); }
    // Enough input channels that the kernel takes several passes through padded output rows.
    SECTION("3D 3x3x3, 90 -> 9 channels, 3x4x5 (several input-channel passes)") {
        check_conv<TestType>({{3, 4, 5}, 3, 3, 3, 90, 9}, 1, tol);
    }
    SECTION("2D 1x1, 36 -> 4 channels, 9x11") { check_conv<TestType>({{1, 9, 11}, 1, 1, 1, 36, 4}, 2, tol); }
}

// Large enough 2D planes take Winograd F(2x2, 3x3) in float for Fprop and Dgrad (Wgrad only
// when forced: the direct one is faster): odd sizes (partial tiles at the right and bottom), several bands of tile rows,
// output blocks partly past cout, the direct kernels where a side has too few channels.
// 3D convolutions hold one slab of padded depth planes in their workspace, not the volume.
TEST_CASE("a 3D convolution's workspace holds slabs, not the padded volume", "[conv][slab]") {
    // The 3D BraTS network's largest convolutions at 128^3: the decoder's first at level 0
    // (32 -> 16 channels) and the head's 1x1.
    constexpr ConvProblem decoder{{128, 128, 128}, 3, 3, 3, 32, 16};
    constexpr ConvProblem head{{128, 128, 128}, 1, 1, 1, 16, 4};
    constexpr std::size_t MiB = std::size_t(1) << 20;
    // The padded input and output gradient alone took 411 MiB and 160 MiB. Now: a slab of
    // padded input, of output gradient, and of outputs or weight-gradient partials, and weights.
    constexpr std::size_t bound = cpu_kernels::slab_bytes / MiB * 3 + 24;
    CHECK(Kernels<cpu>::conv_workspace_size<float>(decoder) * sizeof(float) / MiB <= bound);
    CHECK(Kernels<cpu>::conv_workspace_size<float>(head) * sizeof(float) / MiB <= bound);
    CHECK(cpu_kernels::slab_depth<float>(decoder) < 128);
    // 2D problems are one slab.
    CHECK(cpu_kernels::slab_depth<float>(ConvProblem{{1, 240, 240}, 1, 3, 3, 512, 512}) == 1);
}

TEST_CASE("Winograd convolution equals the naive reference", "[conv][winograd]") {
    using cpu_kernels::winograd::applies;
    const double tol = 2e-4;
    SECTION("17 -> 20 channels, 33x35, two images") {
        const ConvProblem p{{1, 33, 35}, 1, 3, 3, 17, 20};
        REQUIRE(applies<float>(p));
        REQUIRE_FALSE(cpu_kernels::winograd::applies_to_weight_gradient<float>(p));
        REQUIRE(applies<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 2, tol);
    }
    SECTION("64 -> 6 channels, 130x37: three bands, direct Dgrad") {
        const ConvProblem p{{1, 130, 37}, 1, 3, 3, 64, 6};
        REQUIRE(applies<float>(p));
        REQUIRE(cpu_kernels::winograd::plan<float>(p).band_rows < 65);
        REQUIRE_FALSE(applies<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 1, tol);
    }
    SECTION("5 -> 16 channels, 40x32: direct Fprop, Winograd Dgrad") {
        const ConvProblem p{{1, 40, 32}, 1, 3, 3, 5, 16};
        REQUIRE_FALSE(applies<float>(p));
        REQUIRE(applies<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 1, tol);
    }
    SECTION("16 -> 4 channels, 9x300: rows of tiles wider than one pass") {
        const ConvProblem p{{1, 9, 300}, 1, 3, 3, 16, 4};
        REQUIRE(applies<float>(p));
        check_conv<float>(p, 1, tol);
    }
    SECTION("20 -> 16 channels, 17x16: Winograd Fprop and Dgrad, direct Wgrad") {
        const ConvProblem p{{1, 17, 16}, 1, 3, 3, 20, 16};
        REQUIRE(applies<float>(p));
        REQUIRE_FALSE(cpu_kernels::winograd::applies_to_weight_gradient<float>(p));
        check_conv<float>(p, 2, tol);
    }
    SECTION("double and 3D stay direct") {
        REQUIRE_FALSE(applies<double>(ConvProblem{{1, 64, 64}, 1, 3, 3, 32, 32}));
        REQUIRE_FALSE(applies<float>(ConvProblem{{16, 16, 16}, 3, 3, 3, 32, 32}));
        REQUIRE_FALSE(applies<float>(ConvProblem{{1, 13, 13}, 1, 3, 3, 32, 32}));  // 49 tiles
    }
}

// Forcing an algorithm runs it on shapes the automatic choice gives to the other one.
TEST_CASE("a forced convolution algorithm equals the naive reference", "[conv][winograd]") {
    using cpu_kernels::winograd::applies;
    const double tol = 2e-4;
    SECTION("Winograd forced: 4 -> 32 channels, 9x11 (too few channels and tiles for automatic)") {
        const ConvProblem p{{1, 9, 11}, 1, 3, 3, 4, 32, ConvAlgorithm::winograd};
        REQUIRE_FALSE(applies<float>(p));
        REQUIRE(cpu_kernels::use_winograd<float>(p));
        REQUIRE(cpu_kernels::use_winograd_weight_gradient<float>(p));
        REQUIRE(cpu_kernels::use_winograd<float>(cpu_kernels::dgrad_problem(p)));
        check_conv<float>(p, 3, tol);
    }
    SECTION("Winograd forced: 1x1 and 3D problems stay direct") {
        REQUIRE_FALSE(cpu_kernels::use_winograd<float>(ConvProblem{{1, 64, 64}, 1, 1, 1, 32, 32, ConvAlgorithm::winograd}));
        REQUIRE_FALSE(cpu_kernels::use_winograd<float>(ConvProblem{{8, 8, 8}, 3, 3, 3, 32, 32, ConvAlgorithm::winograd}));
        REQUIRE_FALSE(cpu_kernels::use_winograd<double>(ConvProblem{{1, 64, 64}, 1, 3, 3, 32, 32, ConvAlgorithm::winograd}));
        check_conv<float>({{3, 4, 5}, 3, 3, 3, 6, 7, ConvAlgorithm::winograd}, 2, tol);
    }
    SECTION("direct forced: 32 -> 24 channels, 40x36 (Winograd under automatic)") {
        const ConvProblem p{{1, 40, 36}, 1, 3, 3, 32, 24, ConvAlgorithm::direct};
        REQUIRE(applies<float>(p));
        REQUIRE_FALSE(cpu_kernels::use_winograd<float>(p));
        REQUIRE_FALSE(cpu_kernels::use_winograd_weight_gradient<float>(p));
        check_conv<float>(p, 2, tol);
    }
}

// docs: ConvProblem's memory contract. A convolution never works in place: Winograd reads each
// band's halo rows after the band above has written its outputs, so an input-gradient sink
// sharing memory with the output gradient got wrong values at every band boundary (10-50 %
// wrong weight gradients in 2D networks at 64x64 and up). Every algorithm refuses overlap, on
// shapes with several bands, images and sinks; disjoint interleaved buffers pass.
TEST_CASE("convolutions refuse outputs that overlap their inputs, on every algorithm", "[conv][contract]") {
    using lightunet::testing::thrown_message;
    const int images = 2;
    const ConvAlgorithm algorithm = GENERATE(ConvAlgorithm::automatic, ConvAlgorithm::direct, ConvAlgorithm::winograd);
    {
        // 130 rows of 64 -> 64 channels: several Winograd bands per image.
        const ConvProblem p{{1, 130, 40}, 1, 3, 3, 64, 64, algorithm};
        INFO("algorithm " << to_string(algorithm));
        REQUIRE(cpu_kernels::winograd::plan<float>(p).band_rows < cpu_kernels::winograd::plan<float>(p).tile_rows);
        const std::size_t S = p.extent.size(), image = std::size_t(p.cin) * S;
        auto x = random_vector<float>(images * image, 1);
        auto w = random_vector<float>(p.weight_count(), 2);
        std::vector<float> g = random_vector<float>(images * image, 3), dw(w.size()), db(p.cout), y(images * image);
        std::vector<float> ws(Kernels<cpu>::conv_workspace_size<float>(p));
        const ChannelSource<float> src{x.data(), p.cin, std::ptrdiff_t(image)};
        auto backward = [&](std::span<const ChannelSink<float>> sinks, const float* grad) {
            Kernels<cpu>::conv_backward<float>(p, images, {&src, 1}, w.data(), grad, std::ptrdiff_t(image), sinks, dw.data(),
                                              db.data(), ws.data());
        };
        const int half = p.cin / 2;
        SECTION("the input gradient written over the output gradient") {
            const ChannelSink<float> sink{g.data(), p.cin, std::ptrdiff_t(image), false};
            const std::string m = thrown_message<std::invalid_argument>([&] { backward({&sink, 1}, g.data()); });
            CHECK_THAT(m, Catch::Contains("conv_backward") && Catch::Contains("input-gradient sink 0 overlaps the output gradient") &&
                              Catch::Contains("64 -> 64 channels") && Catch::Contains("(1, 1, 1, 130, 40)"));
        }
        SECTION("the second of two sinks shares the output gradient's memory (the decoder's up-sampling half)") {
            std::vector<float> skip(images * half * S);
            const ChannelSink<float> sinks[2] = {{skip.data(), half, std::ptrdiff_t(half * S), false},
                                                 {g.data(), p.cin - half, std::ptrdiff_t(image), false}};
            CHECK_THAT(thrown_message<std::invalid_argument>([&] { backward(sinks, g.data()); }),
                       Catch::Contains("input-gradient sink 1 overlaps the output gradient"));
        }
        SECTION("a sink that overlaps only the last channel of the second image") {
            std::vector<float> big(3 * images * image);
            const float* grad = big.data();
            const ChannelSink<float> sink{big.data() + (2 * image - S), p.cin, std::ptrdiff_t(image), false};
            CHECK_THAT(thrown_message<std::invalid_argument>([&] { backward({&sink, 1}, grad); }),
                       Catch::Contains("overlaps the output gradient"));
        }
        SECTION("a sink over the input, and two sinks over each other") {
            const ChannelSink<float> over_input{x.data(), p.cin, std::ptrdiff_t(image), false};
            CHECK_THAT(thrown_message<std::invalid_argument>([&] { backward({&over_input, 1}, g.data()); }),
                       Catch::Contains("input-gradient sink 0 overlaps input source 0"));
            std::vector<float> dx(images * image);
            const ChannelSink<float> twice[2] = {{dx.data(), half, std::ptrdiff_t(image), false},
                                                 {dx.data() + S, p.cin - half, std::ptrdiff_t(image), false}};
            CHECK_THAT(thrown_message<std::invalid_argument>([&] { backward(twice, g.data()); }),
                       Catch::Contains("input-gradient sink 1 overlaps input-gradient sink 0"));
        }
        SECTION("the forward output written over its input") {
            std::vector<float> room((images + 1) * image);
            const ChannelSource<float> in{room.data(), p.cin, std::ptrdiff_t(image)};
            CHECK_THAT(thrown_message<std::invalid_argument>([&] {
                           Kernels<cpu>::conv_forward<float>(p, images, {&in, 1}, w.data(), nullptr, room.data() + S,
                                                            std::ptrdiff_t(image), ws.data());
                       }),
                       Catch::Contains("conv_forward: the output overlaps input source 0"));
        }
        SECTION("buffers that touch without overlapping, and sinks interleaved in one tensor, are accepted") {
            std::vector<float> both(2 * images * image);
            std::copy(g.begin(), g.end(), both.begin());
            const ChannelSink<float> after{both.data() + images * image, p.cin, std::ptrdiff_t(image), false};
            CHECK_NOTHROW(backward({&after, 1}, both.data()));
            std::vector<float> dx(images * image);
            const ChannelSink<float> split[2] = {{dx.data(), half, std::ptrdiff_t(image), false},
                                                 {dx.data() + half * S, p.cin - half, std::ptrdiff_t(image), false}};
            CHECK_NOTHROW(backward(split, g.data()));
            for (std::size_t i = 0; i < dx.size(); ++i) REQUIRE(dx[i] == both[images * image + i]);
            CHECK_NOTHROW(Kernels<cpu>::conv_forward<float>(p, images, {&src, 1}, w.data(), nullptr, y.data(),
                                                           std::ptrdiff_t(image), ws.data()));
        }
    }
}

namespace {

// conv_forward_prepared on conv_prepare's weights against conv_forward, bit for bit, with the
// prepared weights and the workspace each followed by a guard that must stay untouched.
template <class T>
void check_prepared(const ConvProblem& p, int images) {
    const std::size_t S = p.extent.size();
    const auto x = random_vector<T>(std::size_t(images) * p.cin * S, 5);
    const auto w = random_vector<T>(p.weight_count(), 6);
    const auto b = random_vector<T>(p.cout, 7);
    const ChannelSource<T> in{x.data(), p.cin, std::ptrdiff_t(p.cin * S)};
    const std::span<const ChannelSource<T>> input(&in, 1);
    const std::ptrdiff_t stride = std::ptrdiff_t(p.cout * S);
    std::vector<T> want(std::size_t(images) * p.cout * S), got(want.size());
    std::vector<T> ws(Kernels<cpu>::conv_forward_workspace_size<T>(p));
    Kernels<cpu>::conv_forward(p, images, input, w.data(), b.data(), want.data(), stride, ws.data());

    constexpr std::size_t guard = 256;
    const T poison = T(-12345.5);
    std::vector<T> prepared(Kernels<cpu>::conv_prepared_size<T>(p) + guard, poison);
    std::vector<T> scratch(Kernels<cpu>::conv_forward_prepared_workspace_size<T>(p) + guard, poison);
    Kernels<cpu>::conv_prepare(p, w.data(), prepared.data());
    // Preparing twice and running twice changes nothing (the kernel reads only what it prepared).
    for (int run = 0; run < 2; ++run)
        Kernels<cpu>::conv_forward_prepared(p, images, input, static_cast<const T*>(prepared.data()), b.data(), got.data(), stride,
                                           scratch.data());
    CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(T)) == 0);
    for (std::size_t i = prepared.size() - guard; i < prepared.size(); ++i) REQUIRE(prepared[i] == poison);
    for (std::size_t i = scratch.size() - guard; i < scratch.size(); ++i) REQUIRE(scratch[i] == poison);
    CHECK(Kernels<cpu>::conv_forward_workspace_size<T>(p) ==
          Kernels<cpu>::conv_prepared_size<T>(p) + Kernels<cpu>::conv_forward_prepared_workspace_size<T>(p));

    // Weights prepared with output scales (a folded batch norm's) give the bits of weights scaled
    // before.
    {
        const auto scale = random_vector<T>(p.cout, 8);
        std::vector<T> scaled(w);
        for (std::size_t i = 0; i < scaled.size(); ++i) scaled[i] *= scale[i / (p.weight_count() / std::size_t(p.cout))];
        std::vector<T> from_scaled(want.size()), with_scale(want.size());
        Kernels<cpu>::conv_forward(p, images, input, scaled.data(), b.data(), from_scaled.data(), stride, ws.data());
        Kernels<cpu>::conv_prepare(p, w.data(), prepared.data(), scale.data());
        Kernels<cpu>::conv_forward_prepared(p, images, input, static_cast<const T*>(prepared.data()), b.data(), with_scale.data(),
                                           stride, scratch.data());
        CHECK(std::memcmp(with_scale.data(), from_scaled.data(), want.size() * sizeof(T)) == 0);
        CHECK(std::memcmp(with_scale.data(), want.data(), want.size() * sizeof(T)) != 0);
        Kernels<cpu>::conv_prepare(p, w.data(), prepared.data());
    }
    // An activation applied as the outputs are stored (a folded batch norm's) gives the bits of
    // the activation applied to the stored outputs.
    const std::size_t negative = std::size_t(std::count_if(want.begin(), want.end(), [](T v) { return v < T(0); }));
    REQUIRE(negative > want.size() / 8);
    for (const Activation activation : {Activation{Act::relu}, Activation{Act::leaky_relu, 0.01}}) {
        Kernels<cpu>::conv_forward_prepared(p, images, input, static_cast<const T*>(prepared.data()), b.data(), got.data(), stride,
                                           scratch.data(), activation);
        const T slope = T(activation.negative_slope());
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < want.size(); ++i) {
            const T expected = want[i] > T(0) ? want[i] : want[i] * slope;
            wrong += std::memcmp(&got[i], &expected, sizeof(T)) != 0;
        }
        INFO("cin " << p.cin << ", cout " << p.cout << ", extent " << p.extent.d << "x" << p.extent.h << "x" << p.extent.w << ", "
                    << to_string(p.algorithm) << (p.precision == Precision::bf16 ? ", bf16" : "") << ", slope " << slope << ": "
                    << wrong << " of " << want.size() << " outputs differ");
        CHECK(wrong == 0);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("prepared weights give the forward pass's bits, within their stated sizes", "[conv][plan]", float, double) {
    for (ConvAlgorithm a : {ConvAlgorithm::automatic, ConvAlgorithm::direct, ConvAlgorithm::winograd}) {
        check_prepared<TestType>({{1, 40, 36}, 1, 3, 3, 17, 13, a}, 2);   // Winograd where it may (float)
        check_prepared<TestType>({{1, 9, 7}, 1, 3, 3, 5, 3, a}, 1);       // odd and small
        check_prepared<TestType>({{5, 6, 7}, 3, 3, 3, 3, 6, a}, 2);       // 3D
        check_prepared<TestType>({{1, 12, 10}, 1, 1, 1, 24, 7, a}, 2);    // 1x1 (heads, stride-2 rearranged)
        check_prepared<TestType>({{4, 6, 5}, 3, 3, 3, 96, 5, a}, 1);      // inputs in several passes, outputs copied out
    }
    if constexpr (std::is_same_v<TestType, float>) {  // bf16 operands (the vdpbf16ps kernels where they run)
        check_prepared<float>({{1, 40, 36}, 1, 3, 3, 17, 13, ConvAlgorithm::automatic, Precision::bf16}, 2);
        check_prepared<float>({{5, 6, 7}, 3, 3, 3, 3, 6, ConvAlgorithm::automatic, Precision::bf16}, 2);
        check_prepared<float>({{4, 6, 5}, 3, 3, 3, 96, 5, ConvAlgorithm::automatic, Precision::bf16}, 1);
    }
}

// Where the CPU has AMX, the bf16 passes run on tiles (conv_bf16.hpp): the same rounded operands
// as vdpbf16ps, summed in another order (the weight gradient in the same short sums of 256 voxel
// pairs), so equal to it up to fp32 rounding. Input pair counts with every Fprop tile depth: 16
// (a full block), 8 and 12 (one block of all), 24 (two of 12), 17 (a prime: blocks of one pair),
// 2; partial blocks of inputs and outputs; odd runs and a last weight-gradient block of fewer
// than 16 voxel pairs; 2D and 3D taps.
TEST_CASE("AMX tiles and vdpbf16ps compute the same bf16 convolution", "[conv][bf16][amx]") {
#if LIGHTUNET_AMX_COMPILED
    if (!cpu_kernels::amx_runs()) {
        WARN("SKIPPED: no AMX here (or turned off: LIGHTUNET_CPU_AMX=0, LIGHTUNET_CPU_BF16=0)");
        return;
    }
    const ConvProblem problems[] = {{{1, 20, 37}, 1, 3, 3, 32, 17}, {{1, 9, 50}, 1, 3, 3, 16, 16}, {{1, 40, 40}, 1, 3, 3, 48, 40},
                                    {{5, 6, 7}, 3, 3, 3, 24, 10},   {{3, 8, 9}, 3, 3, 3, 34, 33},   {{9, 8, 9}, 3, 3, 3, 3, 33},
                                    {{4, 5, 6}, 1, 1, 1, 4, 3}};
    // results[0]: vdpbf16ps, results[1]: tiles.
    auto check_close = [](const ConvProblem& p, const char* pass, const std::vector<float> (&results)[2]) {
        double worst = 0, scale = 0;
        for (std::size_t i = 0; i < results[0].size(); ++i) {
            worst = std::max(worst, std::abs(double(results[1][i]) - double(results[0][i])));
            scale = std::max(scale, std::abs(double(results[0][i])));
        }
        INFO(pass << ", cin " << p.cin << ", cout " << p.cout << ", taps " << p.taps() << ", " << p.extent.size()
                  << " voxels: worst difference " << worst << " of " << scale);
        CHECK(scale > 1.0);
        CHECK(worst <= 1e-5 * scale);
    };
    for (const ConvProblem& p : problems) {
        const cpu_kernels::PaddedLayout l = cpu_kernels::slab_layout(p, p.extent.d);
        const std::ptrdiff_t plane = std::ptrdiff_t(p.extent.size());
        const std::vector<float> x = random_vector<float>(std::size_t(p.cin) * plane, 11), w = random_vector<float>(p.weight_count(), 12);
        const std::vector<float> g = random_vector<float>(std::size_t(p.cout) * plane, 22);
        const ChannelSource<float> xs{x.data(), p.cin, p.cin * plane}, gs{g.data(), p.cout, p.cout * plane};
        const auto whole = cpu_kernels::VolumeSlab::with_halo(0, p.extent.d);
        // Fprop (Dgrad is the same kernel on the mirrored weights).
        std::vector<std::uint32_t> x2(std::size_t(p.cin + 2) * l.stride + 4096);
        cpu_kernels::pad_source_pairs<float>(l, std::span(&xs, 1), 0, plane, whole, reinterpret_cast<std::uint16_t*>(x2.data()));
        std::vector<float> outputs[2];
        for (const bool amx : {false, true}) {
            std::vector<std::uint32_t> packed(cpu_kernels::packed_weights_bf16_size<float>(p.cout, p.cin, p.taps()));
            cpu_kernels::pack_weights_bf16(w.data(), p.cout, p.cin, p.taps(), false, packed.data(), amx);
            std::vector<float>& y = outputs[amx];
            y.assign(std::size_t(p.cout) * plane, 0.0f);
            cpu_kernels::fprop_padded_bf16(
                l, p.cin, reinterpret_cast<const std::uint16_t*>(x2.data()), packed.data(), 0, p.cout,
                [&](int oc) { return cpu_kernels::CompactChannel<float>{y.data() + oc * plane, 0.5f, false}; }, amx);
        }
        check_close(p, "Fprop", outputs);
        // Wgrad, onto existing sums.
        std::vector<std::uint16_t> x16(std::size_t(p.cin + 1) * l.stride + 4096), g16(std::size_t(p.cout + 1) * l.stride + 4096);
        cpu_kernels::pad_sources_bf16<float>(l, std::span(&xs, 1), 0, plane, whole, x16.data());
        cpu_kernels::pad_sources_bf16<float>(l, std::span(&gs, 1), 0, plane, cpu_kernels::VolumeSlab::alone(0, p.extent.d), g16.data());
        std::vector<float> scratch(cpu_kernels::bf16_wgrad_scratch_size(l, p.cin, p.cout) + 64);
        std::vector<float> dweight[2];
        for (const bool amx : {false, true}) {
            dweight[amx].assign(p.weight_count(), 0.25f);
            cpu_kernels::wgrad_bf16(l, p.cin, p.cout, x16.data(), g16.data(), dweight[amx].data(), scratch.data(), amx);
        }
        check_close(p, "Wgrad", dweight);
    }
#else
    WARN("SKIPPED: the AMX kernels are compiled for AVX-512 targets on x86-64 Linux only");
#endif
}

// The pooling and rearrangement kernels run in vectors along rows of cells (lane permutations)
// and finish each row one cell at a time; the finite-difference tests (test_gradients.cpp) use
// rows shorter than a vector. Here rows of 2-3 vectors and a tail, in float and double, against
// the definitions, bit for bit; values of few levels, so that ties (first maximum wins) are common.
TEMPLATE_TEST_CASE("pooling and space-to-depth kernels equal their definitions in vectors and row tails", "[kernels][resample]", float,
                   double) {
    using T = TestType;
    auto check = [](const Cells& cells, std::ptrdiff_t planes, int channels, unsigned seed) {
        const Extent fe = cells.fine();
        const int per = cells.per_cell();
        const std::size_t fine = std::size_t(planes) * fe.size(), coarse = std::size_t(planes) * cells.coarse.size();
        std::mt19937 rng(seed);
        auto levels = [&](std::size_t n) {
            std::vector<T> v(n);
            for (auto& e : v) e = T(int(rng() % 4) - 1.5);
            return v;
        };
        const auto x = levels(fine), g = levels(coarse), stacked = levels(fine), bias = levels(std::size_t(channels));
        auto cell_voxel = [&](std::size_t p, int z, int v, int u, int k) {
            const int a = k / 4, b = (k / 2) % 2, c = k % 2;
            return p * fe.size() + (std::size_t(z * cells.fd + a) * fe.h + std::size_t(2 * v + b)) * fe.w + std::size_t(2 * u + c);
        };
        std::vector<T> pooled(coarse, T(99)), dx(fine, T(99)), acc(fine, T(0.5)), s2d(fine, T(99)), d2s(fine, T(99)), d2s_acc(fine, T(0.25));
        Kernels<cpu>::max_pool_forward(cells, planes, x.data(), pooled.data());
        Kernels<cpu>::max_pool_backward(cells, planes, x.data(), g.data(), dx.data(), false);
        Kernels<cpu>::max_pool_backward(cells, planes, x.data(), g.data(), acc.data(), true);
        Kernels<cpu>::space_to_depth(cells, planes, x.data(), s2d.data());
        Kernels<cpu>::depth_to_space(cells, planes, channels, stacked.data(), static_cast<const T*>(nullptr), d2s.data(), false);
        Kernels<cpu>::depth_to_space(cells, planes, channels, stacked.data(), bias.data(), d2s_acc.data(), true);
        std::size_t ties = 0;
        for (std::size_t p = 0; p < std::size_t(planes); ++p)
            for (int z = 0; z < cells.coarse.d; ++z)
                for (int v = 0; v < cells.coarse.h; ++v)
                    for (int u = 0; u < cells.coarse.w; ++u) {
                        const std::size_t o = p * cells.coarse.size() + (std::size_t(z) * cells.coarse.h + v) * cells.coarse.w + u;
                        int arg = 0;
                        for (int k = 1; k < per; ++k) arg = x[cell_voxel(p, z, v, u, k)] > x[cell_voxel(p, z, v, u, arg)] ? k : arg;
                        INFO("plane " << p << " coarse voxel (" << z << ", " << v << ", " << u << ")");
                        REQUIRE(pooled[o] == x[cell_voxel(p, z, v, u, arg)]);
                        for (int k = 0; k < per; ++k) {
                            const std::size_t f = cell_voxel(p, z, v, u, k);
                            ties += k != arg && x[f] == x[cell_voxel(p, z, v, u, arg)];
                            REQUIRE(dx[f] == (k == arg ? g[o] : T(0)));
                            REQUIRE(acc[f] == T(0.5) + (k == arg ? g[o] : T(0)));
                            const std::size_t stacked_at = (p * std::size_t(per) + std::size_t(k)) * cells.coarse.size() + (o - p * cells.coarse.size());
                            REQUIRE(s2d[stacked_at] == x[f]);
                            REQUIRE(d2s[f] == stacked[stacked_at]);
                            REQUIRE(d2s_acc[f] == T(0.25) + (stacked[stacked_at] + bias[p % std::size_t(channels)]));
                        }
                    }
        CHECK(ties > coarse / 4);  // the first-maximum rule was exercised
    };
    SECTION("2D cells, 3 planes, coarse rows of 37") { check(Cells{{1, 3, 37}, 1}, 3, 3, 41); }
    SECTION("3D cells, 2 planes, coarse rows of 19") { check(Cells{{2, 2, 19}, 2}, 2, 2, 42); }
    SECTION("3D cells, rows of exactly two float vectors") { check(Cells{{1, 2, 32}, 2}, 2, 1, 43); }
}

// The heads' nonlinearities in vectors (xsimd::exp): every voxel within a few ulp of the double
// definition, in whole vectors and in a row's partial last one (the same function there, so a
// voxel's value does not depend on where its vector ends), from logits far enough apart that exp
// underflows to 0 and a softmax's row is one-hot.
TEMPLATE_TEST_CASE("softmax and sigmoid heads equal their definitions in vectors and tails", "[kernels][loss]", float, double) {
    using T = TestType;
    const double tol = std::is_same_v<T, float> ? 4e-7 : 1e-15;
    auto check = [&](int images, int channels, std::ptrdiff_t plane) {
        const std::size_t n = std::size_t(images) * std::size_t(channels) * std::size_t(plane);
        std::vector<T> x(n), probs(n, T(99)), sig(n, T(99));
        for (std::size_t i = 0; i < n; ++i) x[i] = T(12.0 * std::sin(0.7 * double(i))) + (i % 29 == 0 ? T(-150) : T(0)) + (i % 31 == 0 ? T(150) : T(0));
        Kernels<cpu>::softmax_channels(images, channels, plane, x.data(), probs.data());
        Kernels<cpu>::sigmoid(std::ptrdiff_t(n), x.data(), sig.data());
        double worst = 0, worst_sigmoid = 0;
        for (int image = 0; image < images; ++image)
            for (std::ptrdiff_t k = 0; k < plane; ++k) {
                auto at = [&](int c) { return (std::size_t(image) * std::size_t(channels) + std::size_t(c)) * std::size_t(plane) + std::size_t(k); };
                double m = -1e300, sum = 0, total = 0;
                for (int c = 0; c < channels; ++c) m = std::max(m, double(x[at(c)]));
                for (int c = 0; c < channels; ++c) sum += std::exp(double(x[at(c)]) - m);
                for (int c = 0; c < channels; ++c) {
                    worst = std::max(worst, std::abs(double(probs[at(c)]) - std::exp(double(x[at(c)]) - m) / sum));
                    worst_sigmoid = std::max(worst_sigmoid, std::abs(double(sig[at(c)]) - 1.0 / (1.0 + std::exp(-double(x[at(c)])))));
                    total += double(probs[at(c)]);
                }
                REQUIRE(std::abs(total - 1.0) < 8 * tol);
            }
        CHECK(worst < tol);
        CHECK(worst_sigmoid < tol);
    };
    SECTION("4 classes, 2 images, planes of 300 (blocks of 256 and a partial vector)") { check(2, 4, 300); }
    SECTION("3 classes, 1 image, a plane shorter than a vector") { check(1, 3, 5); }
    SECTION("2 classes, 3 images, a plane of exactly one block") { check(3, 2, 256); }
}

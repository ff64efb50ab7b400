// The model walking the op graph against the hand-written model it replaced (main at cd20504):
// bit-identical probabilities, loss, parameter and input gradients, running statistics and
// predictions over two Adam steps, for every algorithm; and both models' workspace_bytes at the
// BraTS sizes. Run by scripts/compare_with_legacy.sh.
#include <lightunet/lightunet.hpp>
#include "legacy_unet.hpp"  // written by compare_with_legacy.sh from main before the op graph
#include <cstdio>
#include <cstring>
using namespace lightunet;
constexpr UNetConfig c2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {8, 16, 32, 64}};
constexpr UNetConfig c2s{.dims = 2, .in_channels = 3, .classes = 3, .widths = {4, 8, 16}, .norm = Norm::group, .act = Act::leaky_relu,
                         .down = Down::strided_conv, .head = Head::sigmoid, .groups = 2};
constexpr UNetConfig c3d{.dims = 3, .in_channels = 2, .classes = 3, .widths = {4, 8, 16}, .norm = Norm::instance,
                         .down = Down::strided_conv, .up = Up::interpolate_conv, .head = Head::sigmoid};
constexpr UNetConfig c3b{.dims = 3, .in_channels = 4, .classes = 4, .widths = {8, 16, 32}, .norm = Norm::batch};
template <class A, class B> bool same(const A& a, const B& b, std::size_t n) { return std::memcmp(a, b, n * sizeof(*a)) == 0; }
template <UNetConfig C, class T>
void run(Shape s, const char* name, ConvAlgorithm alg) {
    UNet<C, cpu, T> a(7);
    legacy::UNet<C, cpu, T> b(7);
    a.set_conv_algorithm(alg); b.set_conv_algorithm(alg);
    bool ok = same(a.parameters().data(), b.parameters().data(), a.parameter_count) && a.buffer_count == b.buffer_count;
    Tensor<T> x(s);
    for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = T(((i * 7919) % 101) / 50.0 - 1.0);
    const int lc = C.head == Head::softmax ? 1 : C.classes;
    Tensor<std::uint8_t> lab({s.n, lc, s.d, s.h, s.w});
    for (std::size_t i = 0; i < lab.size(); ++i) lab.data()[i] = std::uint8_t(C.head == Head::softmax ? (i * 31 / 7) % C.classes : (i * 13 / 5) % 2);
    Adam<T> oa(1e-3), ob(1e-3);
    Tensor<T> ga, gb;
    for (int step = 0; step < 2; ++step) {
        a.forward(x, Mode::train); b.forward(x, Mode::train);
        ok &= same(a.probabilities().data(), b.probabilities().data(), a.probabilities().size());
        double la = a.backward(x, lab, DiceLoss{.ce_weight = 0.5}, &ga), lb = b.backward(x, lab, DiceLoss{.ce_weight = 0.5}, &gb);
        ok &= la == lb && same(a.gradients().data(), b.gradients().data(), a.parameter_count) && same(ga.data(), gb.data(), ga.size());
        oa.step(a.parameter_tensor(), a.gradient_tensor()); ob.step(b.parameter_tensor(), b.gradient_tensor());
    }
    ok &= same(a.buffers().data(), b.buffers().data(), a.buffer_count);
    auto& pa = a.predict(x); auto& pb = b.predict(x);
    ok &= same(pa.data(), pb.data(), pa.size());
    std::printf("%-6s %-9s %s  train ws new %zu old %zu, eval ws new %zu old %zu\n", name, to_string(alg), ok ? "IDENTICAL" : "DIFFERENT",
                UNet<C, cpu, T>::workspace_bytes(s, Mode::train, alg), legacy::UNet<C, cpu, T>::workspace_bytes(s, Mode::train, alg),
                UNet<C, cpu, T>::workspace_bytes(s, Mode::eval, alg), legacy::UNet<C, cpu, T>::workspace_bytes(s, Mode::eval, alg));
}
template <UNetConfig C>
void memory(const char* name, Shape s, Mode mode) {
    const double mib = 1 << 20;
    const double now = double(UNet<C>::workspace_bytes(s, mode)) / mib, before = double(legacy::UNet<C>::workspace_bytes(s, mode)) / mib;
    std::printf("| %s | %s | %s | %.1f | %.1f | %.2f |\n", name, s.str().c_str(), mode == Mode::train ? "train" : "eval", before, now,
                now / before);
}
constexpr UNetConfig slice2d{.dims = 2, .in_channels = 4, .classes = 3, .widths = {24, 48, 96, 192, 384}, .head = Head::sigmoid};
constexpr UNetConfig patch3d{.dims = 3, .in_channels = 4, .classes = 3, .widths = {16, 32, 64, 128, 256}, .norm = Norm::instance,
                             .act = Act::leaky_relu, .head = Head::sigmoid};
constexpr UNetConfig wide2d{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512}};

int main() {
    for (auto alg : {ConvAlgorithm::automatic, ConvAlgorithm::direct, ConvAlgorithm::winograd}) {
        run<c2d, float>({2, 4, 1, 48, 40}, "2d", alg);
        run<c2s, float>({2, 3, 1, 24, 16}, "2ds", alg);
        run<c2d, double>({1, 4, 1, 16, 16}, "2d-f64", alg);
    }
    for (auto alg : {ConvAlgorithm::automatic, ConvAlgorithm::direct}) {
        run<c3d, float>({1, 2, 8, 8, 12}, "3d", alg);
        run<c3b, float>({2, 4, 8, 8, 8}, "3db", alg);
    }
    std::printf("\n| network | input | pass | workspace before (MiB) | after (MiB) | after / before |\n|---|---|---|---|---|---|\n");
    memory<slice2d>("BraTS 2D 24..384", {8, 4, 1, 160, 192}, Mode::train);
    memory<slice2d>("BraTS 2D 24..384", {1, 4, 1, 240, 240}, Mode::eval);
    memory<wide2d>("2D 32..512", {8, 4, 1, 240, 240}, Mode::train);
    memory<wide2d>("2D 32..512", {1, 4, 1, 240, 240}, Mode::eval);
    memory<patch3d>("BraTS 3D 16..256", {1, 4, 128, 128, 128}, Mode::train);
    memory<patch3d>("BraTS 3D 16..256", {1, 4, 128, 128, 128}, Mode::eval);
}

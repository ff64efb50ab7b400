// Whole-network forward, loss and gradients equal PyTorch on the same weights and input
// (fixtures from tests/fixtures/make_fixtures.py, float64).
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <lightunet/lightunet.hpp>
#include <lightunet/train/checkpoint.hpp>

#include "test_paths.hpp"
#include "test_support.hpp"

using namespace lightunet;
using lightunet::testing::read_raw;

namespace {

// Read at run time (tests/test_paths.hpp), so called from the test cases, not at static init.
std::string fixture_dir() { return (lightunet_test::source_dir() / "tests" / "fixtures").string() + "/"; }


std::map<std::string, std::string> read_config(const std::string& path) {
    std::ifstream f(path);
    REQUIRE(f.good());
    std::map<std::string, std::string> kv;
    for (std::string line; std::getline(f, line);) {
        const auto eq = line.find('=');
        if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return kv;
}

double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::abs(x));
    return m;
}

template <class Span>
void check_close(const Span& got, const std::vector<double>& want, double tol, const char* what) {
    REQUIRE(got.size() == want.size());
    const double scale = std::max(1e-300, max_abs(want));
    double worst = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        const double e = std::abs(double(got[i]) - want[i]) / scale;
        if (e > worst) worst = e, at = i;
    }
    INFO(what << ": worst error relative to max |value| " << worst << " at " << at);
    CHECK(worst < tol);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> parts;
    std::istringstream in(s);
    for (std::string part; std::getline(in, part, sep);) parts.push_back(part);
    return parts;
}

// The PyTorch twin's parameter names (params.txt) as lightunet names them
// (train::parameter_layout): enc.{l} -> encoder.{l}, downs.{k} -> encoder.{k+1}.down,
// ups.{k}.conv -> decoder.{depth-2-k}.up, dec.{k} -> decoder.{depth-2-k}; the rest (head,
// auxiliary_heads.{i}, and everything below a level) is the same.
std::string lightunet_name(const std::string& torch_name, int depth) {
    auto parts = split(torch_name, '.');
    REQUIRE(parts.size() >= 2);
    std::vector<std::string> head;
    std::size_t rest = 2;
    if (parts[0] == "enc") {
        head = {"encoder", parts[1]};
    } else if (parts[0] == "downs") {
        head = {"encoder", std::to_string(std::stoi(parts[1]) + 1), "down"};
    } else if (parts[0] == "ups") {
        REQUIRE(parts.size() >= 3);
        REQUIRE(parts[2] == "conv");
        head = {"decoder", std::to_string(depth - 2 - std::stoi(parts[1])), "up"};
        rest = 3;
    } else if (parts[0] == "dec") {
        head = {"decoder", std::to_string(depth - 2 - std::stoi(parts[1]))};
    } else {
        return torch_name;
    }
    std::string out;
    for (const auto& p : head) out += (out.empty() ? "" : ".") + p;
    for (std::size_t i = rest; i < parts.size(); ++i) out += "." + parts[i];
    return out;
}

// params.txt (name, shape, offset and count per tensor, in the twin's canonical order) names
// our parameter layout, tensor for tensor.
template <UNetConfig C>
void check_parameter_names(const std::string& path) {
    std::ifstream f(path);
    REQUIRE(f.good());
    const auto [layout, buffers] = train::parameter_layout(C);
    std::size_t k = 0, offset = 0;
    for (std::string line; std::getline(f, line);) {
        if (line.empty() || line[0] == '#') continue;
        std::istringstream in(line);
        std::string index, name, shape;
        std::size_t at = 0, count = 0;
        in >> index >> name >> shape >> at >> count;
        INFO(path << ": " << line);
        REQUIRE(k < layout.size());
        CHECK(lightunet_name(name, C.depth()) == layout[k].name);
        std::string ours;
        for (int e : layout[k].shape) ours += (ours.empty() ? "" : "x") + std::to_string(e);
        CHECK(shape == ours);
        CHECK(at == offset);
        CHECK(count == layout[k].size());
        offset += layout[k].size();
        ++k;
    }
    CHECK(k == layout.size());
    CHECK(offset == UNet<C>::parameter_count);
}

template <UNetConfig C>
void run_fixture(const std::string& name, const DiceLoss& loss) {
    const std::string dir = fixture_dir() + name + "/";
    auto kv = read_config(dir + "config.txt");
    REQUIRE(std::stoi(kv["dims"]) == C.dims);
    REQUIRE(std::stoi(kv["in_channels"]) == C.in_channels);
    REQUIRE(std::stoi(kv["classes"]) == C.classes);
    REQUIRE((kv["include_background"] == "1") == loss.include_background);
    REQUIRE((kv["batch_dice"] == "1") == loss.batch_dice);
    // Keys the residual-encoder and deep-supervision cases added; absent: plain, 1 block per
    // level, no deep supervision, Dice alone.
    REQUIRE((kv.count("encoder") ? kv["encoder"] : "plain") == (C.encoder == Encoder::residual ? "residual" : "plain"));
    if (kv.count("blocks")) {
        const auto blocks = split(kv["blocks"], ',');
        REQUIRE(int(blocks.size()) == C.depth());
        for (int l = 0; l < C.depth(); ++l) REQUIRE(std::stoi(blocks[std::size_t(l)]) == C.blocks(l));
    } else {
        for (int l = 0; l < C.depth(); ++l) REQUIRE(C.blocks(l) == 1);
    }
    REQUIRE((kv.count("deep_supervision") && kv["deep_supervision"] == "1") == C.deep_supervision);
    REQUIRE(kv["loss"] == (loss.ce_weight > 0 ? "dice_ce" : "dice"));
    if (loss.ce_weight > 0) REQUIRE(std::stod(kv["ce_weight"]) == loss.ce_weight);
    check_parameter_names<C>(dir + "params.txt");

    using Net = UNet<C, cpu, double>;
    Net net(7);
    auto params = read_raw<double>(dir + "params.f64");
    REQUIRE(params.size() == Net::parameter_count);
    std::copy(params.begin(), params.end(), net.parameters().begin());

    const Shape shape{std::stoi(kv["n"]), C.in_channels, std::stoi(kv["d"]), std::stoi(kv["h"]), std::stoi(kv["w"])};
    Tensor<double> x(shape);
    auto input = read_raw<double>(dir + "input.f64");
    REQUIRE(input.size() == x.size());
    std::copy(input.begin(), input.end(), x.begin());
    auto label_bytes = read_raw<std::uint8_t>(dir + "labels.u8");
    typename Net::Labels labels(
        Shape{shape.n, C.head == Head::softmax ? 1 : C.classes, shape.d, shape.h, shape.w});
    REQUIRE(label_bytes.size() == labels.size());
    std::copy(label_bytes.begin(), label_bytes.end(), labels.begin());

    const auto& probs = net.forward(x, Mode::train);
    check_close(probs, read_raw<double>(dir + "output.f64"), 1e-10, "probabilities");

    Tensor<double> input_grad;
    const double value = net.backward(x, labels, loss, &input_grad);
    double want_loss = 0;
    std::ifstream(dir + "loss.txt") >> want_loss;
    CHECK(value == Approx(want_loss).epsilon(1e-10));
    check_close(net.gradients(), read_raw<double>(dir + "param_grads.f64"), 1e-8, "parameter gradients");
    check_close(input_grad, read_raw<double>(dir + "input_grad.f64"), 1e-8, "input gradient");

    if (C.norm == Norm::batch) check_close(net.buffers(), read_raw<double>(dir + "running_stats.f64"), 1e-10, "running stats");
    const auto& eval = net.forward(x, Mode::eval);
    check_close(eval, read_raw<double>(dir + "output_eval.f64"), 1e-10, "eval-mode probabilities");
}

constexpr UNetConfig unet2d_batch_relu{.dims = 2, .in_channels = 3, .classes = 3, .widths = {4, 8, 16},
                                       .norm = Norm::batch, .act = Act::relu, .down = Down::max_pool,
                                       .up = Up::transposed_conv, .head = Head::softmax};
constexpr UNetConfig unet3d_instance_leaky{.dims = 3, .in_channels = 2, .classes = 3, .widths = {4, 8},
                                           .norm = Norm::instance, .act = Act::leaky_relu, .down = Down::strided_conv,
                                           .up = Up::interpolate_conv, .head = Head::sigmoid, .leaky_slope = 0.01};
constexpr UNetConfig unet2d_group_none{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8, 8},
                                       .norm = Norm::group, .act = Act::leaky_relu, .down = Down::max_pool,
                                       .up = Up::transposed_conv, .head = Head::softmax, .groups = 2, .leaky_slope = 0.1};
constexpr UNetConfig unet2d_nonorm{.dims = 2, .in_channels = 2, .classes = 2, .widths = {4, 8}, .norm = Norm::none,
                                   .act = Act::relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                   .head = Head::softmax};

// The residual encoder (nnU-Net ResEnc) and deep supervision: the loss is the weighted sum over
// the heads, each against its down-sampled targets (bench/reference/unet_torch.py).
constexpr UNetConfig unet2d_resenc_ds{.dims = 2, .in_channels = 2, .classes = 3, .widths = {4, 4, 8, 16},
                                      .norm = Norm::batch, .act = Act::relu, .down = Down::max_pool,
                                      .up = Up::transposed_conv, .head = Head::softmax, .encoder = Encoder::residual,
                                      .encoder_blocks = {1, 2, 2, 1}, .deep_supervision = true};
constexpr UNetConfig unet3d_resenc{.dims = 3, .in_channels = 2, .classes = 2, .widths = {4, 6, 6}, .norm = Norm::instance,
                                   .act = Act::leaky_relu, .down = Down::strided_conv, .up = Up::interpolate_conv,
                                   .head = Head::sigmoid, .leaky_slope = 0.01, .encoder = Encoder::residual,
                                   .encoder_blocks = {2, 1, 2}};
constexpr UNetConfig unet2d_ds_regions{.dims = 2, .in_channels = 1, .classes = 3, .widths = {4, 4, 8, 8, 8},
                                       .norm = Norm::group, .act = Act::leaky_relu, .down = Down::strided_conv,
                                       .up = Up::interpolate_conv, .head = Head::sigmoid, .groups = 2, .leaky_slope = 0.1,
                                       .deep_supervision = true};
constexpr UNetConfig unet3d_resenc_ds_nonorm{.dims = 3, .in_channels = 1, .classes = 2, .widths = {2, 4, 4, 4},
                                             .norm = Norm::none, .act = Act::relu, .down = Down::max_pool,
                                             .up = Up::transposed_conv, .head = Head::softmax,
                                             .encoder = Encoder::residual, .encoder_blocks = {1, 1, 2, 1},
                                             .deep_supervision = true};

}  // namespace

TEST_CASE("2D batch norm, ReLU, max-pool, transposed conv, softmax equals PyTorch", "[pytorch]") {
    run_fixture<unet2d_batch_relu>("unet2d_batch_relu", {});
}
TEST_CASE("3D instance norm, LeakyReLU, strided conv, interpolation, sigmoid equals PyTorch", "[pytorch]") {
    run_fixture<unet3d_instance_leaky>("unet3d_instance_leaky", {});
}
TEST_CASE("2D group norm, background out, batch Dice equals PyTorch", "[pytorch]") {
    run_fixture<unet2d_group_none>("unet2d_group_none", {.include_background = false, .batch_dice = true});
}
TEST_CASE("2D without norm, strided conv, interpolation equals PyTorch", "[pytorch]") {
    run_fixture<unet2d_nonorm>("unet2d_nonorm", {});
}
TEST_CASE("2D residual encoder (blocks 1,2,2,1), batch norm, deep supervision (depth 4) equals PyTorch", "[pytorch]") {
    run_fixture<unet2d_resenc_ds>("unet2d_resenc_ds", {});
}
TEST_CASE("3D residual encoder (blocks 2,1,2), instance norm, strided conv, sigmoid equals PyTorch", "[pytorch]") {
    run_fixture<unet3d_resenc>("unet3d_resenc", {});
}
TEST_CASE("2D deep supervision (depth 5, two auxiliary heads), group norm, sigmoid regions, batch Dice + BCE equals PyTorch",
          "[pytorch]") {
    run_fixture<unet2d_ds_regions>("unet2d_ds_regions", {.batch_dice = true, .ce_weight = 1.0});
}
TEST_CASE("3D residual encoder without norm, deep supervision (depth 4), softmax without background + CE equals PyTorch",
          "[pytorch]") {
    run_fixture<unet3d_resenc_ds_nonorm>("unet3d_resenc_ds_nonorm", {.include_background = false, .ce_weight = 1.0});
}

#pragma once
// ONNX export: the inference network of a UNet (its op graph without the training-only heads,
// norms in eval mode) as an ONNX model, opset 17, built with the ONNX library's protobuf classes
// (Debian: libonnx-dev, libprotobuf-dev) and checked with its checker. Link lightunet::onnx.
//
//   lightunet::export_onnx(model, "unet.onnx");                            // symbolic N, (D,) H, W
//   lightunet::export_onnx(model, "unet.onnx", {.input_shape = Shape{1, 4, 1, 240, 240}});
//
// One ONNX node (or a few) per op of UNet<C>::Graph, in its order:
//   conv            Conv (3x3(x3) pad 1, or 1x1), after a Concat(skip, up) for a decoder block
//   strided_down    Conv kernel 2 stride 2          max_pool   MaxPool kernel 2 stride 2
//   up_transposed   ConvTranspose kernel 2 stride 2 up_interpolate  Conv 1x1 at the coarse level,
//                                                   then Resize nearest x2 (asymmetric, floor)
//   norm_act        batch: BatchNormalization with the running statistics (or folded into the
//                   conv before it, OnnxBatchNorm::fold); instance: InstanceNormalization; group:
//                   Reshape [N, G, -1], InstanceNormalization, Reshape back, Mul gamma, Add beta;
//                   every epsilon 1e-5 as ours; then Relu, LeakyRelu(alpha = slope) or nothing
//   add_act         Add, then the activation        output     Softmax(axis = 1) or Sigmoid
// 2D networks take [N, C, H, W] (ours [N, C, 1, H, W]: the same memory), 3D ones [N, C, D, H, W].
// The graph's input is `input_name`, its output `output_name` (the top head's probabilities);
// initializers carry the PyTorch names of the checkpoint layout (docs/design.md). Spatial extents
// must be multiples of 2^(depth-1) as for UNet::predict (the model's metadata_props record it as
// lightunet.size_multiple); a symbolic export cannot say so in its types.
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "../config/unet_config.hpp"
#include "../graph/unet_graph.hpp"
#include "../model/unet.hpp"
#include "../tensor/shape.hpp"

namespace lightunet {

class OnnxError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The opset the export targets (ONNX 1.12, Debian 12's libonnx, checks up to 17) and the IR
// version that goes with it.
inline constexpr int onnx_opset = 17;
inline constexpr int onnx_ir_version = 8;

enum class OnnxBatchNorm {
    node,  // a BatchNormalization node with the running statistics
    fold,  // scale and shift folded into the convolution before it (no norm node)
};

struct OnnxOptions {
    // Fixed input shape [n, in_channels, d, h, w] (d = 1 for 2D); empty: symbolic batch and
    // spatial dims, named by dim_names (N, D, H, W; a 2D network has no D).
    std::optional<Shape> input_shape;
    std::array<std::string, 4> dim_names{"N", "D", "H", "W"};
    OnnxBatchNorm batch_norm = OnnxBatchNorm::node;
    std::string input_name = "input";
    std::string output_name = "probabilities";
    std::string graph_name = "lightunet_unet";
    bool check = true;  // run check_onnx before returning or writing
};

// The ONNX checker's full check: the model checker, then strict shape inference with type
// checks (what onnx.checker.check_model(model, full_check=True) does). Throws OnnxError naming
// `what` and the checker's message.
inline void check_onnx(const onnx::ModelProto& model, const std::string& what = "ONNX model") {
    try {
        onnx::checker::check_model(model);
        onnx::ModelProto inferred = model;
        onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                           onnx::ShapeInferenceOptions{/*check_type=*/true, /*strict_mode=*/1});
    } catch (const std::exception& e) {
        throw OnnxError(what + ": the ONNX checker rejects it: " + e.what());
    }
}

// Reads an ONNX file (for checks and tests). Throws OnnxError naming the file.
inline onnx::ModelProto read_onnx(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw OnnxError(path.string() + ": cannot open the ONNX file");
    onnx::ModelProto model;
    if (!model.ParseFromIstream(&in)) throw OnnxError(path.string() + ": not a readable ONNX model (protobuf parse failed)");
    return model;
}

namespace detail::onnx_export {

inline std::string config_text(const UNetConfig& c) {
    const char* norm = c.norm == Norm::batch ? "batch" : c.norm == Norm::instance ? "instance" : c.norm == Norm::group ? "group" : "none";
    std::string widths;
    for (int l = 0; l < c.depth(); ++l) widths.append(l ? "," : "").append(std::to_string(c.widths[l]));
    std::string blocks;
    for (int l = 0; l < c.depth(); ++l) blocks.append(l ? "," : "").append(std::to_string(c.blocks(l)));
    std::string t = "dims=" + std::to_string(c.dims);
    t.append(" in_channels=").append(std::to_string(c.in_channels));
    t.append(" classes=").append(std::to_string(c.classes));
    t.append(" widths=").append(widths);
    t.append(" norm=").append(norm);
    if (c.norm == Norm::group) t.append(" groups=").append(std::to_string(c.groups));
    t.append(" act=").append(c.act == Act::relu ? "relu" : c.act == Act::leaky_relu ? "leaky_relu" : "identity");
    if (c.act == Act::leaky_relu) t.append(" leaky_slope=").append(std::to_string(c.leaky_slope));
    t.append(" down=").append(c.down == Down::max_pool ? "max_pool" : "strided_conv");
    t.append(" up=").append(c.up == Up::transposed_conv ? "transposed_conv" : "interpolate_conv");
    t.append(" head=").append(c.head == Head::softmax ? "softmax" : "sigmoid");
    t.append(" encoder=").append(c.encoder == Encoder::plain ? "plain" : "residual");
    if (c.encoder == Encoder::residual) t.append(" encoder_blocks=").append(blocks);
    if (c.deep_supervision) t.append(" deep_supervision=on (auxiliary heads not exported)");
    return t;
}

// Builds the ModelProto from the op list and host copies of the parameters and buffers.
class Builder {
public:
    Builder(const UNetConfig& c, std::span<const graph::Op> ops, std::span<const graph::Slot> slots, int output_slot,
            std::span<const float> params, std::span<const float> buffers, const OnnxOptions& o)
        : c_(c), ops_(ops), slots_(slots), output_slot_(output_slot), params_(params), buffers_(buffers), o_(o) {}

    onnx::ModelProto build() {
        onnx::ModelProto m;
        m.set_ir_version(onnx_ir_version);
        m.set_producer_name("lightunet");
        m.set_producer_version("0.1");
        m.set_model_version(1);
        m.set_doc_string("lightunet U-Net (inference): " + config_text(c_));
        auto* opset = m.add_opset_import();
        opset->set_domain("");
        opset->set_version(onnx_opset);
        auto meta = [&](const std::string& k, const std::string& v) {
            auto* p = m.add_metadata_props();
            p->set_key(k);
            p->set_value(v);
        };
        meta("lightunet.config", config_text(c_));
        meta("lightunet.size_multiple", std::to_string(1 << (c_.depth() - 1)));
        meta("lightunet.head", c_.head == Head::softmax ? "softmax" : "sigmoid");

        g_ = m.mutable_graph();
        g_->set_name(o_.graph_name);
        plan_folding();
        for (std::size_t i = 0; i < ops_.size(); ++i)
            if (!ops_[i].training_only) emit(int(i));
        declare_io();
        return m;
    }

private:
    static constexpr float eps = 1e-5f;  // every norm's epsilon (backend/cpu/norm.hpp)

    int spatial_dims() const { return c_.dims; }
    // Kernel dims of a convolution-like op's weight after its two channel dims.
    std::vector<std::int64_t> kernel(int k) const { return std::vector<std::int64_t>(std::size_t(spatial_dims()), k); }

    std::string slot_name(int slot) const {
        if (slot == 0) return o_.input_name;
        if (slot == output_slot_) return o_.output_name;
        return names_.at(std::size_t(slot));
    }
    // The module path of the op that produces a slot ("" for the input or a module-less op).
    std::string producer_module(int slot) const {
        for (const graph::Op& op : ops_)
            if (op.out == slot) return op.module.str();
        return {};
    }
    // Names each op's output before it is emitted, from the module path when it has one.
    std::string output_name_of(const graph::Op& op) {
        std::string name = op.module.str();
        if (name.empty()) {
            switch (op.kind) {
                case graph::OpKind::max_pool: name = "encoder." + std::to_string(op.level) + ".pool"; break;
                case graph::OpKind::add_act: {
                    std::string prefix = producer_module(op.in[0]);
                    const auto dot = prefix.rfind('.');
                    name = (dot == std::string::npos ? std::string("residual") : prefix.substr(0, dot)) + ".add";
                    break;
                }
                default: name = "output." + std::to_string(op.head); break;
            }
        }
        return name;
    }

    void plan_folding() {
        names_.assign(slots_.size(), std::string());
        folded_.assign(ops_.size(), false);
        fold_.assign(ops_.size(), -1);
        if (c_.norm != Norm::batch || o_.batch_norm != OnnxBatchNorm::fold) return;
        // A batch norm folds into the conv writing its input when that input has no other reader.
        for (std::size_t i = 0; i < ops_.size(); ++i) {
            const graph::Op& op = ops_[i];
            if (op.kind != graph::OpKind::norm_act || op.training_only) continue;
            int producer = -1, readers = 0;
            for (std::size_t j = 0; j < ops_.size(); ++j) {
                if (ops_[j].out == op.in[0]) producer = int(j);
                if (ops_[j].training_only) continue;
                for (int s : ops_[j].in) readers += s == op.in[0];
            }
            if (producer >= 0 && ops_[std::size_t(producer)].kind == graph::OpKind::conv && readers == 1) {
                fold_[std::size_t(producer)] = int(i);
                folded_[i] = true;
            }
        }
    }

    onnx::NodeProto* node(const std::string& type, std::vector<std::string> inputs, const std::string& output,
                          const std::string& name) {
        auto* n = g_->add_node();
        n->set_op_type(type);
        n->set_name(name);
        for (const auto& in : inputs) n->add_input(in);
        n->add_output(output);
        return n;
    }
    static void attr(onnx::NodeProto* n, const std::string& name, std::vector<std::int64_t> values) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INTS);
        for (auto v : values) a->add_ints(v);
    }
    static void attr(onnx::NodeProto* n, const std::string& name, std::int64_t value) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(value);
    }
    static void attr(onnx::NodeProto* n, const std::string& name, float value) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::FLOAT);
        a->set_f(value);
    }
    static void attr(onnx::NodeProto* n, const std::string& name, const std::string& value) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::STRING);
        a->set_s(value);
    }

    template <class Range>
    const std::string& initializer(const std::string& name, std::vector<std::int64_t> dims, const Range& values) {
        auto* t = g_->add_initializer();
        t->set_name(name);
        t->set_data_type(onnx::TensorProto::FLOAT);
        std::size_t count = 1;
        for (auto d : dims) t->add_dims(d), count *= std::size_t(d);
        if (std::size(values) != count)
            throw std::logic_error("export_onnx: initializer " + name + " has " + std::to_string(std::size(values)) + " values, " +
                                   std::to_string(count) + " expected");
        std::string raw(count * sizeof(float), '\0');
        std::size_t k = 0;
        for (auto v : values) {
            const float f = float(v);
            std::memcpy(raw.data() + k * sizeof(float), &f, sizeof(float));
            ++k;
        }
        t->set_raw_data(std::move(raw));  // little-endian float32, as the format requires (x86, ARM)
        return t->name();
    }
    std::span<const float> params(std::size_t offset, std::size_t count) const {
        if (offset == graph::no_offset || offset + count > params_.size())
            throw std::logic_error("export_onnx: a parameter range lies outside the parameters");
        return params_.subspan(offset, count);
    }
    std::span<const float> buffers(std::size_t offset, std::size_t count) const {
        if (offset == graph::no_offset || offset + count > buffers_.size())
            throw std::logic_error("export_onnx: a buffer range lies outside the buffers");
        return buffers_.subspan(offset, count);
    }

    void activation(const Activation& a, const std::string& in, const std::string& out, const std::string& name) {
        switch (a.act) {
            case Act::relu: node("Relu", {in}, out, name + ".relu"); break;
            case Act::leaky_relu: attr(node("LeakyRelu", {in}, out, name + ".leaky_relu"), "alpha", float(a.slope)); break;
            default: node("Identity", {in}, out, name + ".identity"); break;
        }
    }

    void emit(int index) {
        const graph::Op& op = ops_[std::size_t(index)];
        const std::string name = output_name_of(op);
        names_[std::size_t(op.out)] = name;
        const std::string in0 = slot_name(op.in[0]);
        const std::string out = slot_name(op.out);
        std::size_t taps = 1;
        for (int d = 0; d < spatial_dims(); ++d) taps *= std::size_t(op.kernel);
        const std::size_t weights = std::size_t(op.cin) * std::size_t(op.cout) * taps;
        switch (op.kind) {
            case graph::OpKind::conv:
            case graph::OpKind::strided_down:
            case graph::OpKind::up_interpolate: {
                std::string input = in0;
                if (op.has_input2()) {  // a decoder block: cat(skip, up) along channels
                    input = name + ".concat";
                    attr(node("Concat", {in0, slot_name(op.in[1])}, input, name + ".concat"), "axis", std::int64_t(1));
                }
                std::vector<std::int64_t> dims{op.cout, op.cin};
                for (auto k : kernel(op.kernel)) dims.push_back(k);
                std::span<const float> w = params(op.weight, weights), b = params(op.bias, std::size_t(op.cout));
                std::string wname, bname;
                if (const int norm = fold_[std::size_t(index)]; norm >= 0) {
                    // y = gamma (z - mean) / sqrt(var + eps) + beta with z = W x + b.
                    const graph::Op& n = ops_[std::size_t(norm)];
                    const auto gamma = params(n.gamma, std::size_t(n.cout)), beta = params(n.beta, std::size_t(n.cout));
                    const auto mean = buffers(n.running, std::size_t(n.cout)), var = buffers(n.running + std::size_t(n.cout), std::size_t(n.cout));
                    std::vector<double> fw(w.begin(), w.end()), fb(b.begin(), b.end());
                    const std::size_t per_out = weights / std::size_t(op.cout);
                    for (int o = 0; o < op.cout; ++o) {
                        const double s = double(gamma[std::size_t(o)]) / std::sqrt(double(var[std::size_t(o)]) + double(eps));
                        for (std::size_t k = 0; k < per_out; ++k) fw[std::size_t(o) * per_out + k] *= s;
                        fb[std::size_t(o)] = (fb[std::size_t(o)] - double(mean[std::size_t(o)])) * s + double(beta[std::size_t(o)]);
                    }
                    wname = initializer(op.module.str() + ".weight", dims, fw);
                    bname = initializer(op.module.str() + ".bias", {op.cout}, fb);
                } else {
                    wname = initializer(op.module.str() + ".weight", dims, w);
                    bname = initializer(op.module.str() + ".bias", {op.cout}, b);
                }
                const bool up = op.kind == graph::OpKind::up_interpolate;
                const std::string conv_out = up ? name + ".coarse" : out;
                auto* n = node("Conv", {input, wname, bname}, conv_out, name);
                attr(n, "kernel_shape", kernel(op.kernel));
                const int stride = op.kind == graph::OpKind::strided_down ? 2 : 1;
                attr(n, "strides", kernel(stride));
                attr(n, "pads", std::vector<std::int64_t>(std::size_t(2 * spatial_dims()), op.kernel == 3 ? 1 : 0));
                if (up) {
                    std::vector<float> scales{1.0f, 1.0f};
                    for (int d = 0; d < spatial_dims(); ++d) scales.push_back(2.0f);
                    const std::string sname = initializer(name + ".scales", {std::int64_t(scales.size())}, scales);
                    auto* r = node("Resize", {conv_out, "", sname}, out, name + ".resize");
                    attr(r, "mode", std::string("nearest"));
                    attr(r, "coordinate_transformation_mode", std::string("asymmetric"));
                    attr(r, "nearest_mode", std::string("floor"));
                }
                break;
            }
            case graph::OpKind::up_transposed: {
                std::vector<std::int64_t> dims{op.cin, op.cout};  // PyTorch's ConvTranspose layout
                for (auto k : kernel(2)) dims.push_back(k);
                const std::string wname = initializer(op.module.str() + ".weight", dims, params(op.weight, weights));
                const std::string bname = initializer(op.module.str() + ".bias", {op.cout}, params(op.bias, std::size_t(op.cout)));
                auto* n = node("ConvTranspose", {in0, wname, bname}, out, name);
                attr(n, "kernel_shape", kernel(2));
                attr(n, "strides", kernel(2));
                break;
            }
            case graph::OpKind::max_pool: {
                auto* n = node("MaxPool", {in0}, out, name);
                attr(n, "kernel_shape", kernel(2));
                attr(n, "strides", kernel(2));
                break;
            }
            case graph::OpKind::norm_act: emit_norm_act(index, name, in0, out); break;
            case graph::OpKind::add_act: {
                const bool has_act = op.act.act != Act::identity;
                const std::string sum = has_act ? name + ".sum" : out;
                node("Add", {in0, slot_name(op.in[1])}, sum, name);
                if (has_act) activation(op.act, sum, out, name);
                break;
            }
            case graph::OpKind::output:
                if (c_.head == Head::softmax) attr(node("Softmax", {in0}, out, name), "axis", std::int64_t(1));
                else node("Sigmoid", {in0}, out, name);
                break;
        }
    }

    void emit_norm_act(int index, const std::string& name, const std::string& in, const std::string& out) {
        const graph::Op& op = ops_[std::size_t(index)];
        const std::size_t ch = std::size_t(op.cout);
        const bool has_act = op.act.act != Act::identity;
        const bool has_norm = c_.norm != Norm::none && !folded_[std::size_t(index)];
        if (!has_norm) {
            activation(op.act, in, out, name);
            return;
        }
        const std::string normed = has_act ? name + ".norm" : out;
        const std::string gamma = op.module.str() + ".weight", beta = op.module.str() + ".bias";
        switch (c_.norm) {
            case Norm::batch: {
                const std::string g = initializer(gamma, {op.cout}, params(op.gamma, ch));
                const std::string b = initializer(beta, {op.cout}, params(op.beta, ch));
                const std::string m = initializer(op.module.str() + ".running_mean", {op.cout}, buffers(op.running, ch));
                const std::string v = initializer(op.module.str() + ".running_var", {op.cout}, buffers(op.running + ch, ch));
                attr(node("BatchNormalization", {in, g, b, m, v}, normed, name), "epsilon", eps);
                break;
            }
            case Norm::instance: {
                const std::string g = initializer(gamma, {op.cout}, params(op.gamma, ch));
                const std::string b = initializer(beta, {op.cout}, params(op.beta, ch));
                attr(node("InstanceNormalization", {in, g, b}, normed, name), "epsilon", eps);
                break;
            }
            default: {  // group: instance norm over [N, G, C/G * voxels], then the per-channel affine
                const std::int64_t groups = c_.groups;
                if (!group_inputs_) {
                    auto* shape = g_->add_initializer();
                    shape->set_name("group_norm.grouped_shape");
                    shape->set_data_type(onnx::TensorProto::INT64);
                    shape->add_dims(3);
                    for (std::int64_t v : {std::int64_t(0), groups, std::int64_t(-1)}) shape->add_int64_data(v);
                    initializer("group_norm.ones", {groups}, std::vector<float>(std::size_t(groups), 1.0f));
                    initializer("group_norm.zeros", {groups}, std::vector<float>(std::size_t(groups), 0.0f));
                    group_inputs_ = true;
                }
                // Back to [N, C, (D,) H, W]: the input's shape, a constant when the shapes are fixed
                // (so that shape inference sees every extent), else read by a Shape node.
                std::string shape = name + ".shape";
                if (o_.input_shape) {
                    const Shape& s = *o_.input_shape;
                    const int l = slots_[std::size_t(op.in[0])].level;
                    auto* t = g_->add_initializer();
                    t->set_name(shape);
                    t->set_data_type(onnx::TensorProto::INT64);
                    t->add_dims(c_.dims + 2);
                    t->add_int64_data(s.n);
                    t->add_int64_data(op.cout);
                    if (c_.dims == 3) t->add_int64_data(s.d >> l);
                    t->add_int64_data(s.h >> l);
                    t->add_int64_data(s.w >> l);
                } else {
                    node("Shape", {in}, shape, name + ".shape");
                }
                node("Reshape", {in, "group_norm.grouped_shape"}, name + ".grouped", name + ".group");
                attr(node("InstanceNormalization", {name + ".grouped", "group_norm.ones", "group_norm.zeros"}, name + ".grouped_norm",
                          name),
                     "epsilon", eps);
                node("Reshape", {name + ".grouped_norm", shape}, name + ".normalized", name + ".ungroup");
                std::vector<std::int64_t> affine{op.cout};
                for (int d = 0; d < spatial_dims(); ++d) affine.push_back(1);
                const std::string g = initializer(gamma, affine, params(op.gamma, ch));
                const std::string b = initializer(beta, affine, params(op.beta, ch));
                node("Mul", {name + ".normalized", g}, name + ".scaled", name + ".scale");
                node("Add", {name + ".scaled", b}, normed, name + ".shift");
                break;
            }
        }
        if (has_act) activation(op.act, normed, out, name);
    }

    void value_info(onnx::ValueInfoProto* v, const std::string& name, int channels) const {
        v->set_name(name);
        auto* t = v->mutable_type()->mutable_tensor_type();
        t->set_elem_type(onnx::TensorProto::FLOAT);
        auto* shape = t->mutable_shape();
        auto dim = [&](int index, int fixed) {
            auto* d = shape->add_dim();
            if (o_.input_shape) d->set_dim_value(fixed);
            else d->set_dim_param(o_.dim_names[std::size_t(index)]);
        };
        const Shape s = o_.input_shape.value_or(Shape{});
        dim(0, s.n);
        shape->add_dim()->set_dim_value(channels);
        if (c_.dims == 3) dim(1, s.d);
        dim(2, s.h);
        dim(3, s.w);
    }
    void declare_io() {
        value_info(g_->add_input(), o_.input_name, c_.in_channels);
        value_info(g_->add_output(), o_.output_name, c_.classes);
    }

    const UNetConfig& c_;
    std::span<const graph::Op> ops_;
    std::span<const graph::Slot> slots_;
    int output_slot_;
    std::span<const float> params_, buffers_;
    const OnnxOptions& o_;
    onnx::GraphProto* g_ = nullptr;
    std::vector<std::string> names_;
    std::vector<bool> folded_;  // norm ops folded into their conv
    std::vector<int> fold_;     // conv op -> the norm op folded into it (-1: none)
    bool group_inputs_ = false;
};

}  // namespace detail::onnx_export

// The model's inference network as an ONNX ModelProto (parameters and running statistics from
// the host copies, so any backend exports). Throws ShapeError for a fixed input_shape the network
// cannot take, OnnxError when the checker rejects the result (options.check).
template <UNetConfig C, class Backend, class T>
onnx::ModelProto to_onnx(const UNet<C, Backend, T>& model, const OnnxOptions& options = {}) {
    using Model = UNet<C, Backend, T>;
    using Graph = typename Model::Graph;
    if (options.input_shape) Model::check_input_shape(*options.input_shape);
    std::vector<T> params(Model::parameter_count), buffers(Model::buffer_count);
    model.copy_parameters_to_host(params);
    model.copy_buffers_to_host(buffers);
    const std::vector<float> p(params.begin(), params.end()), b(buffers.begin(), buffers.end());
    onnx::ModelProto m = detail::onnx_export::Builder(C, Graph::ops, Graph::slots, Graph::output_slot, p, b, options).build();
    if (options.check) check_onnx(m, "export_onnx");
    return m;
}

// Writes to_onnx(model, options) to `path` (through a temporary file renamed over it, so a failed
// write leaves no partial model). Throws OnnxError naming the file and the problem.
template <UNetConfig C, class Backend, class T>
void export_onnx(const UNet<C, Backend, T>& model, const std::filesystem::path& path, const OnnxOptions& options = {}) {
    const onnx::ModelProto m = to_onnx(model, options);
    const std::size_t bytes = m.ByteSizeLong();
    if (bytes > std::size_t(INT_MAX))
        throw OnnxError(path.string() + ": the model would be " + std::to_string(bytes) +
                        " bytes, over protobuf's 2 GiB limit (external data is not supported)");
    const std::filesystem::path temporary = path.string() + ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) throw OnnxError(temporary.string() + ": cannot create the file (" + std::generic_category().message(errno) + ")");
        if (!m.SerializeToOstream(&out) || !out.flush()) {
            out.close();
            std::error_code ignored;
            std::filesystem::remove(temporary, ignored);
            throw OnnxError(temporary.string() + ": writing " + std::to_string(bytes) + " bytes failed (disk full?)");
        }
    }
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) {
        std::error_code ignored;
        std::filesystem::remove(temporary, ignored);
        throw OnnxError(path.string() + ": cannot move the written model into place (" + error.message() + ")");
    }
}

}  // namespace lightunet

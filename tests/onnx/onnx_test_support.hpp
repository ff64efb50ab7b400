#pragma once
// What the ONNX tests share: weights that make every parameter and running statistic matter,
// the full ONNX check of an export (symbolic and fixed shapes, both batch-norm forms), and ONNX
// Runtime through node (scripts/onnxruntime/run_onnx.cjs with the onnxruntime-node that
// scripts/install-onnxruntime.sh caches). Without node or that package the round-trip tests print
// "SKIPPED: ..." (ctest: SKIP_REGULAR_EXPRESSION) and return.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include <lightunet/io/onnx_export.hpp>
#include <lightunet/model/unet.hpp>

#include "../test_paths.hpp"
#include "../test_support.hpp"

namespace lightunet::onnx_test {

namespace fs = std::filesystem;

// Seeded He-normal weights from the model, then biases, norm scales and shifts, and running
// statistics drawn away from their initial 0 / 1, so that a parameter in the wrong place shows.
template <class Model>
void randomise(Model& model, std::uint64_t seed) {
    testing::Rng rng(seed);
    std::vector<float> p(Model::parameter_count), b(std::max<std::size_t>(1, Model::buffer_count));
    model.copy_parameters_to_host(p);
    model.copy_buffers_to_host(std::span<float>(b.data(), Model::buffer_count));
    for (const graph::Op& op : Model::Graph::ops) {
        if (op.is_conv_like()) {
            for (int o = 0; o < op.cout; ++o) p[op.bias + std::size_t(o)] = float(0.1 * rng.normal());
        } else if (op.kind == graph::OpKind::norm_act) {
            for (int c = 0; c < op.cout; ++c) {
                if (op.gamma != graph::no_offset) p[op.gamma + std::size_t(c)] = float(1.0 + 0.2 * rng.normal());
                if (op.beta != graph::no_offset) p[op.beta + std::size_t(c)] = float(0.2 * rng.normal());
                if (op.running != graph::no_offset) {
                    b[op.running + std::size_t(c)] = float(0.2 * rng.normal());
                    b[op.running + std::size_t(op.cout + c)] = float(std::exp(0.3 * rng.normal()));
                }
            }
        }
    }
    model.load_parameters_from_host(p);
    model.load_buffers_from_host(std::span<const float>(b.data(), Model::buffer_count));
}

// As randomise, then a few training passes (batch statistics) on `shape`d random inputs move the
// running statistics most of the way to the activations' own, as training leaves them: the
// activations of the eval pass keep their scale instead of growing level by level.
template <class Model>
void randomise_trained(Model& model, std::uint64_t seed, const Shape& shape, int passes = 8) {
    randomise(model, seed);
    if (Model::config.norm != Norm::batch) return;
    Tensor<float> x(shape);
    testing::Rng rng(seed + 1);
    for (int i = 0; i < passes; ++i) {
        for (auto& v : x) v = float(rng.normal());
        model.forward(x, Mode::train);
    }
}

// Op types of a model's graph, counted.
inline int count_nodes(const onnx::ModelProto& m, const std::string& type) {
    return int(std::count_if(m.graph().node().begin(), m.graph().node().end(), [&](const auto& n) { return n.op_type() == type; }));
}

// Checks the exports of a model: symbolic, fixed at `shape`, batch norm folded; the node counts
// follow the op graph (training-only heads left out).
template <class Model>
void check_exports(const Model& model, const Shape& shape) {
    using Graph = typename Model::Graph;
    constexpr UNetConfig C = Model::config;
    int convs = 0, transposed = 0, pools = 0, interpolations = 0, norms = 0, adds = 0;
    for (const graph::Op& op : Graph::ops) {
        if (op.training_only) continue;
        convs += op.kind == graph::OpKind::conv || op.kind == graph::OpKind::strided_down || op.kind == graph::OpKind::up_interpolate;
        transposed += op.kind == graph::OpKind::up_transposed;
        pools += op.kind == graph::OpKind::max_pool;
        interpolations += op.kind == graph::OpKind::up_interpolate;
        norms += op.kind == graph::OpKind::norm_act;
        adds += op.kind == graph::OpKind::add_act;
    }
    for (const bool fixed : {false, true}) {
        for (const OnnxBatchNorm bn : {OnnxBatchNorm::node, OnnxBatchNorm::fold}) {
            if (bn == OnnxBatchNorm::fold && C.norm != Norm::batch) continue;
            OnnxOptions o;
            if (fixed) o.input_shape = shape;
            o.batch_norm = bn;
            o.check = false;
            INFO((fixed ? "fixed shape " + shape.str() : std::string("symbolic shape")) << (bn == OnnxBatchNorm::fold ? ", batch norm folded" : ""));
            const onnx::ModelProto m = to_onnx(model, o);
            REQUIRE_NOTHROW(check_onnx(m));
            CHECK(m.opset_import(0).version() == onnx_opset);
            // The metadata a deployment reads: the configuration, the extent multiple, the head.
            std::map<std::string, std::string> meta;
            for (const auto& p : m.metadata_props()) meta[p.key()] = p.value();
            const char* norm = C.norm == Norm::batch ? "norm=batch" : C.norm == Norm::instance ? "norm=instance"
                               : C.norm == Norm::group ? "norm=group" : "norm=none";
            CHECK_THAT(meta["lightunet.config"], Catch::Contains(norm) && Catch::Contains("dims=" + std::to_string(C.dims)));
            CHECK(meta["lightunet.size_multiple"] == std::to_string(Model::size_multiple));
            CHECK(meta["lightunet.head"] == (C.head == Head::softmax ? "softmax" : "sigmoid"));
            CHECK(count_nodes(m, "Conv") == convs);
            CHECK(count_nodes(m, "ConvTranspose") == transposed);
            CHECK(count_nodes(m, "MaxPool") == pools);
            CHECK(count_nodes(m, "Resize") == interpolations);
            CHECK(count_nodes(m, C.head == Head::softmax ? "Softmax" : "Sigmoid") == 1);
            const int norm_nodes = count_nodes(m, "BatchNormalization") + count_nodes(m, "InstanceNormalization");
            CHECK(norm_nodes == (C.norm == Norm::none || bn == OnnxBatchNorm::fold ? 0 : norms));
            CHECK(count_nodes(m, "Add") == adds + (C.norm == Norm::group ? norms : 0));
            // The input and output types: rank 4 (2D) or 5 (3D), channels fixed, the rest symbolic or fixed.
            const auto& in = m.graph().input(0).type().tensor_type().shape();
            const auto& out = m.graph().output(0).type().tensor_type().shape();
            REQUIRE(in.dim_size() == C.dims + 2);
            REQUIRE(out.dim_size() == C.dims + 2);
            CHECK(in.dim(1).dim_value() == C.in_channels);
            CHECK(out.dim(1).dim_value() == C.classes);
            if (fixed) {
                CHECK(in.dim(0).dim_value() == shape.n);
                CHECK(in.dim(C.dims + 1).dim_value() == shape.w);
            } else {
                CHECK(in.dim(0).dim_param() == "N");
                CHECK(in.dim(C.dims + 1).dim_param() == "W");
            }
            if (fixed) {
                // Strict shape inference gives the declared output shape from the fixed input.
                onnx::ModelProto inferred = m;
                inferred.mutable_graph()->clear_output();
                onnx::shape_inference::InferShapes(inferred);
                bool found = false;
                for (const auto& v : inferred.graph().value_info()) {
                    if (v.name() != o.output_name) continue;
                    found = true;
                    const auto& s = v.type().tensor_type().shape();
                    REQUIRE(s.dim_size() == C.dims + 2);
                    CHECK(s.dim(0).dim_value() == shape.n);
                    CHECK(s.dim(1).dim_value() == C.classes);
                    CHECK(s.dim(C.dims).dim_value() == shape.h);
                    CHECK(s.dim(C.dims + 1).dim_value() == shape.w);
                }
                CHECK(found);
            }
        }
    }
}

// node with onnxruntime-node, or why not.
struct Runtime {
    std::string problem;  // empty: available
    fs::path script;
};

inline std::string run_command(const std::string& command, int& status) {
    std::string output;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe) {
        status = -1;
        return output;
    }
    char buffer[512];
    while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
    status = ::pclose(pipe);
    return output;
}

inline Runtime find_runtime() {
    Runtime r;
    r.script = lightunet_test::source_dir() / "scripts" / "onnxruntime" / "run_onnx.cjs";
    int status = 0;
    run_command("command -v node >/dev/null 2>&1", status);
    if (status != 0) {
        r.problem = "node is not on PATH (Debian: apt-get install nodejs; then scripts/install-onnxruntime.sh)";
        return r;
    }
    // run_onnx.cjs exits 3 when it cannot load onnxruntime-node, 2 on its usage error.
    const std::string out = run_command("node '" + r.script.string() + "' 2>&1 x x 1,1,1 x", status);
    if (WEXITSTATUS(status) == 3) r.problem = "onnxruntime-node is not installed: " + out.substr(0, out.find_last_not_of("\n") + 1);
    return r;
}

// One round trip: a model exported to `model`, an input, and where ORT writes its output.
struct Job {
    std::string name;
    fs::path model, input, output;
    std::vector<int> dims;           // the ONNX input's dims
    std::vector<float> expected;     // lightunet's predict
    double ours_ms = 0;              // median predict time
};

inline void write_floats(const fs::path& path, const float* data, std::size_t count) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(count * sizeof(float)));
    REQUIRE(f.good());
}

// Exports `model` (fixed at the shape or symbolic), predicts a seeded random input and times it.
template <class Model>
Job prepare(Model& model, const std::string& name, const fs::path& dir, const Shape& shape, bool fixed, int repeats,
            OnnxBatchNorm bn = OnnxBatchNorm::node) {
    Job job;
    job.name = name;
    job.model = dir / (name + ".onnx");
    job.input = dir / (name + ".input.f32");
    job.output = dir / (name + ".ort.f32");
    OnnxOptions o;
    if (fixed) o.input_shape = shape;
    o.batch_norm = bn;
    export_onnx(model, job.model, o);
    Tensor<float> x(shape);
    testing::Rng rng(11);
    for (auto& v : x) v = float(rng.normal());
    write_floats(job.input, x.data(), x.size());
    job.dims = {shape.n, shape.c};
    if (Model::config.dims == 3) job.dims.push_back(shape.d);
    job.dims.push_back(shape.h);
    job.dims.push_back(shape.w);
    std::vector<double> times;
    for (int i = 0; i < repeats + 1; ++i) {  // the first pass plans the buffers
        const auto t0 = std::chrono::steady_clock::now();
        const Tensor<float>& p = model.predict(x);
        times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        if (i == 0) job.expected.assign(p.data(), p.data() + p.size());
    }
    std::sort(times.begin() + 1, times.end());
    job.ours_ms = times[1 + std::size_t(repeats) / 2];
    return job;
}

// Runs every job in one node process and compares each output with predict: max |ORT - ours|
// <= 1e-4. Prints a line per job (configuration, difference, both times).
inline void run_and_compare(const Runtime& rt, const std::vector<Job>& jobs, int repeats) {
    std::string command = "node '" + rt.script.string() + "' --threads 2 --warmup 1 --repeats " + std::to_string(repeats);
    for (const Job& j : jobs) {
        std::string dims;
        for (std::size_t i = 0; i < j.dims.size(); ++i) dims.append(i ? "," : "").append(std::to_string(j.dims[i]));
        command += " '" + j.model.string() + "' '" + j.input.string() + "' " + dims + " '" + j.output.string() + "'";
    }
    int status = 0;
    const std::string out = run_command(command + " 2>&1", status);
    INFO(command << "\n" << out);
    REQUIRE(status == 0);
    std::vector<std::string> lines;
    for (std::size_t at = 0; at < out.size();) {
        const auto end = out.find('\n', at);
        lines.push_back(out.substr(at, end - at));
        at = end == std::string::npos ? out.size() : end + 1;
    }
    REQUIRE(lines.size() == jobs.size());
    for (std::size_t k = 0; k < jobs.size(); ++k) {
        const Job& j = jobs[k];
        const std::vector<float> got = testing::read_raw<float>(j.output.string());
        REQUIRE(got.size() == j.expected.size());
        double worst = 0;
        for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - j.expected[i])));
        const auto at = lines[k].find("\"median_ms\":");
        const double ort_ms = at == std::string::npos ? -1 : std::atof(lines[k].c_str() + at + 12);
        std::printf("round trip %-34s max |ORT - predict| %.2e  ORT %.1f ms  lightunet %.1f ms\n", j.name.c_str(), worst, ort_ms,
                    j.ours_ms);
        INFO(j.name << ": max |ORT - predict| = " << worst);
        CHECK(worst <= 1e-4);
    }
}

// A fresh folder under the system's temporary folder, removed with the object.
struct TemporaryFolder {
    fs::path path;
    explicit TemporaryFolder(const std::string& name)
        : path(fs::temp_directory_path() / (name + "." + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TemporaryFolder() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

}  // namespace lightunet::onnx_test

// Catch2 2.x has no SKIP: a line ctest recognises (SKIP_REGULAR_EXPRESSION "SKIPPED:"), then return.
#define LIGHTUNET_REQUIRE_ONNXRUNTIME(runtime)                              \
    do {                                                                    \
        if (!(runtime).problem.empty()) {                                   \
            std::cout << "SKIPPED: " << (runtime).problem << std::endl;     \
            WARN("SKIPPED: " << (runtime).problem);                         \
            return;                                                         \
        }                                                                   \
    } while (false)

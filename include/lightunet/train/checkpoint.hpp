#pragma once
// Training checkpoints in HDF5 (schema: docs/checkpoint.md): weights, optimiser moments and
// step count, epoch / step / LR-schedule position, named RNG states, the configuration
// fingerprint, metrics history.
//
// Crash safety: a checkpoint is written to a temporary file in the same folder, flushed,
// fsync'ed, renamed over the target, and the folder fsync'ed, so a kill or power loss at any
// moment leaves either the old or the new file, never a torn one. CheckpointManager keeps the
// last K rolling checkpoints plus the best by validation Dice.
//
// Loading checks the configuration fingerprint (naming the fields that differ), the optimiser
// type and every dataset's shape, reads everything before changing anything, and throws
// CheckpointError naming the file and what is wrong.
#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../config/unet_config.hpp"
#include "../optim/optimizers.hpp"
#include "progress.hpp"

namespace lightunet::train {

class CheckpointError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Named RNG states (model init, loader, augmentation, ...), each any number of 64-bit words.
using RngStates = std::map<std::string, std::vector<std::uint64_t>>;

// Where training stands, besides the model and optimiser.
struct TrainState {
    long epoch = 0;          // 0-based epoch the next step belongs to
    long step = 0;           // batches of that epoch already done
    long global_step = 0;    // optimiser steps done in total: the LR schedule's position
    double lr_scale = 1.0;   // product of the watchdog's LR reductions
    double epoch_loss_sum = 0.0;  // training loss summed over the epoch's steps so far
    long epoch_loss_count = 0;
    long epoch_rollbacks = 0;
    double epoch_seconds = 0.0;   // wall time spent in the epoch so far
    double best_dice = -1.0;      // best mean validation Dice so far (-1: none yet)
    double elapsed_seconds = 0.0; // training wall time so far
    RngStates rng;
    std::vector<EpochRecord> history;
};

// ---------------------------------------------------------------------------------------------
// Configuration fingerprint and the named parameter layout.

namespace detail {
inline const char* name_of(Norm v) {
    constexpr const char* n[] = {"none", "batch", "instance", "group"};
    return n[int(v)];
}
inline const char* name_of(Act v) { return v == Act::relu ? "relu" : "leaky_relu"; }
inline const char* name_of(Down v) { return v == Down::max_pool ? "max_pool" : "strided_conv"; }
inline const char* name_of(Up v) { return v == Up::transposed_conv ? "transposed_conv" : "interpolate_conv"; }
inline const char* name_of(Head v) { return v == Head::softmax ? "softmax" : "sigmoid"; }
template <class T>
constexpr const char* scalar_name() {
    return sizeof(T) == 4 ? "float32" : "float64";
}
}  // namespace detail

// "dims=2 in_channels=4 classes=4 widths=8,16 norm=batch ... scalar=float32": every field of
// the configuration, the scalar type and the parameter / buffer counts.
template <class Model>
std::string config_string() {
    constexpr UNetConfig c = Model::config;
    std::ostringstream s;
    s << "dims=" << c.dims << " in_channels=" << c.in_channels << " classes=" << c.classes << " widths=";
    for (int l = 0; l < c.depth(); ++l) s << (l ? "," : "") << c.widths[l];
    char slope[32];
    std::snprintf(slope, sizeof slope, "%.17g", c.leaky_slope);
    s << " norm=" << detail::name_of(c.norm) << " act=" << detail::name_of(c.act) << " down=" << detail::name_of(c.down)
      << " up=" << detail::name_of(c.up) << " head=" << detail::name_of(c.head) << " groups=" << c.groups
      << " leaky_slope=" << slope << " scalar=" << detail::scalar_name<typename Model::scalar>()
      << " parameters=" << Model::parameter_count << " buffers=" << Model::buffer_count;
    return s.str();
}

// FNV-1a 64 of the configuration string: stable across builds and platforms.
inline std::uint64_t fingerprint(const std::string& config) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char ch : config) h = (h ^ ch) * 0x100000001b3ull;
    return h;
}

// "a=1 b=2" vs "a=1 b=3" -> "b: checkpoint 2, this model 3".
inline std::string config_difference(const std::string& stored, const std::string& current) {
    auto fields = [](const std::string& s) {
        std::map<std::string, std::string> m;
        std::istringstream in(s);
        std::string tok;
        while (in >> tok) {
            const auto eq = tok.find('=');
            m[tok.substr(0, eq)] = eq == std::string::npos ? "" : tok.substr(eq + 1);
        }
        return m;
    };
    const auto a = fields(stored), b = fields(current);
    std::string out;
    auto note = [&](const std::string& k, const std::string& x, const std::string& y) {
        out += (out.empty() ? "" : "; ") + k + ": checkpoint " + x + ", this model " + y;
    };
    for (const auto& [k, v] : a) {
        const auto it = b.find(k);
        if (it == b.end()) note(k, v, "(absent)");
        else if (it->second != v) note(k, v, it->second);
    }
    for (const auto& [k, v] : b)
        if (!a.count(k)) note(k, "(absent)", v);
    return out;
}

struct TensorInfo {
    std::string name;
    std::vector<int> shape;
    std::size_t size() const {
        std::size_t n = 1;
        for (int d : shape) n *= std::size_t(d);
        return n;
    }
};

// Names and PyTorch shapes of the parameters, then the buffers, in the order of docs/design.md
// (the flat /model/parameters and /model/buffers datasets are these tensors back to back).
inline std::pair<std::vector<TensorInfo>, std::vector<TensorInfo>> parameter_layout(const UNetConfig& c) {
    std::vector<TensorInfo> p, b;
    const bool three = c.dims == 3;
    auto k = [&](int e) { return three ? std::vector<int>{e, e, e} : std::vector<int>{e, e}; };
    auto conv = [&](const std::string& name, int cout, int cin, int kernel) {
        std::vector<int> s{cout, cin};
        for (int e : k(kernel)) s.push_back(e);
        p.push_back({name + ".weight", s});
        p.push_back({name + ".bias", {cout}});
    };
    auto norm = [&](const std::string& name, int ch) {
        if (c.has_norm_params()) p.push_back({name + ".weight", {ch}}), p.push_back({name + ".bias", {ch}});
        if (c.norm == Norm::batch) b.push_back({name + ".running_mean", {ch}}), b.push_back({name + ".running_var", {ch}});
    };
    auto block = [&](const std::string& pre, int cin, int w) {
        conv(pre + "conv1", w, cin, 3);
        norm(pre + "norm1", w);
        conv(pre + "conv2", w, w, 3);
        norm(pre + "norm2", w);
    };
    const int depth = c.depth();
    for (int l = 0; l < depth; ++l) {
        const std::string pre = "encoder." + std::to_string(l) + ".";
        const int cin = l == 0 ? c.in_channels : c.widths[l - 1];
        if (l > 0 && c.down == Down::strided_conv) conv(pre + "down", cin, cin, 2);
        block(pre, cin, c.widths[l]);
    }
    for (int l = depth - 2; l >= 0; --l) {
        const std::string pre = "decoder." + std::to_string(l) + ".";
        const int below = c.widths[l + 1], w = c.widths[l];
        if (c.up == Up::transposed_conv) {
            std::vector<int> s{below, w};
            for (int e : k(2)) s.push_back(e);
            p.push_back({pre + "up.weight", s});
            p.push_back({pre + "up.bias", {w}});
        } else {
            conv(pre + "up", w, below, 1);
        }
        block(pre, 2 * w, w);
    }
    conv("head", c.classes, c.widths[0], 1);
    return {p, b};
}

inline std::string layout_string(const std::vector<TensorInfo>& tensors) {
    std::string s;
    std::size_t offset = 0;
    for (const auto& t : tensors) {
        s += t.name + " [";
        for (std::size_t i = 0; i < t.shape.size(); ++i) {
            if (i) s += ',';
            s += std::to_string(t.shape[i]);  // appended alone: GCC 12 misreports "," + to_string (-Wrestrict)
        }
        s += "] " + std::to_string(offset) + "\n";
        offset += t.size();
    }
    return s;
}

// ---------------------------------------------------------------------------------------------
// HDF5 plumbing.

namespace detail {

// Owns an HDF5 identifier.
class H5Id {
public:
    H5Id() = default;
    H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
    H5Id(const H5Id&) = delete;
    H5Id& operator=(const H5Id&) = delete;
    H5Id(H5Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
    H5Id& operator=(H5Id&& o) noexcept {
        std::swap(id_, o.id_);
        std::swap(close_, o.close_);
        return *this;
    }
    ~H5Id() { reset(); }
    void reset() {
        if (id_ >= 0 && close_) close_(id_);
        id_ = -1;
    }
    hid_t get() const { return id_; }
    bool valid() const { return id_ >= 0; }

private:
    hid_t id_ = -1;
    herr_t (*close_)(hid_t) = nullptr;
};

// Silences HDF5's printed error stack while alive (errors become exceptions instead).
class H5Quiet {
public:
    H5Quiet() {
        H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    }
    ~H5Quiet() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
    H5Quiet(const H5Quiet&) = delete;
    H5Quiet& operator=(const H5Quiet&) = delete;

private:
    H5E_auto2_t func_ = nullptr;
    void* data_ = nullptr;
};

template <class T>
hid_t mem_type() {
    if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
    else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
    else if constexpr (std::is_same_v<T, std::int64_t> || std::is_same_v<T, long>) return H5T_NATIVE_INT64;
    else if constexpr (std::is_same_v<T, std::uint64_t>) return H5T_NATIVE_UINT64;
    else static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
}
template <class T>
hid_t file_type() {
    if constexpr (std::is_same_v<T, float>) return H5T_IEEE_F32LE;
    else if constexpr (std::is_same_v<T, double>) return H5T_IEEE_F64LE;
    else if constexpr (std::is_same_v<T, std::int64_t> || std::is_same_v<T, long>) return H5T_STD_I64LE;
    else if constexpr (std::is_same_v<T, std::uint64_t>) return H5T_STD_U64LE;
    else static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
}

inline std::string dims_str(const std::vector<hsize_t>& d) {
    std::string s = "[";
    for (std::size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
}

class H5Writer {
public:
    explicit H5Writer(std::string path) : path_(std::move(path)) {}
    void check(herr_t status, const std::string& what) const {
        if (status < 0) throw CheckpointError("checkpoint " + path_ + ": writing " + what + " failed");
    }
    H5Id check(hid_t id, herr_t (*close)(hid_t), const std::string& what) const {
        if (id < 0) throw CheckpointError("checkpoint " + path_ + ": writing " + what + " failed");
        return H5Id(id, close);
    }
    H5Id group(hid_t parent, const std::string& name) const {
        return check(H5Gcreate2(parent, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "group " + name);
    }
    template <class T>
    void dataset(hid_t loc, const std::string& name, std::vector<hsize_t> dims, const T* data) const {
        hsize_t n = 1;
        for (auto d : dims) n *= d;
        H5Id space = check(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose, name);
        H5Id set = check(H5Dcreate2(loc, name.c_str(), file_type<T>(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                         H5Dclose, "dataset " + name);
        if (n) check(H5Dwrite(set.get(), mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "dataset " + name);
    }
    template <class T>
    void attr(hid_t loc, const std::string& name, T value) const {
        H5Id space = check(H5Screate(H5S_SCALAR), H5Sclose, name);
        H5Id a = check(H5Acreate2(loc, name.c_str(), file_type<T>(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                       "attribute " + name);
        check(H5Awrite(a.get(), mem_type<T>(), &value), "attribute " + name);
    }
    void attr(hid_t loc, const std::string& name, const std::string& value) const {
        H5Id type = check(H5Tcopy(H5T_C_S1), H5Tclose, name);
        check(H5Tset_size(type.get(), H5T_VARIABLE), name);
        check(H5Tset_cset(type.get(), H5T_CSET_UTF8), name);
        H5Id space = check(H5Screate(H5S_SCALAR), H5Sclose, name);
        H5Id a = check(H5Acreate2(loc, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                       "attribute " + name);
        const char* p = value.c_str();
        check(H5Awrite(a.get(), type.get(), &p), "attribute " + name);
    }

private:
    std::string path_;
};

class H5Reader {
public:
    explicit H5Reader(std::string path) : path_(std::move(path)) {}
    [[noreturn]] void fail(const std::string& what) const { throw CheckpointError("checkpoint " + path_ + ": " + what); }
    bool exists(hid_t loc, const std::string& name) const { return H5Lexists(loc, name.c_str(), H5P_DEFAULT) > 0; }
    H5Id group(hid_t loc, const std::string& name) const {
        const hid_t g = H5Gopen2(loc, name.c_str(), H5P_DEFAULT);
        if (g < 0) fail("group " + name + " is missing or unreadable");
        return H5Id(g, H5Gclose);
    }
    // A dataset of any shape; `expected` (if given) must match exactly.
    template <class T>
    std::vector<T> dataset(hid_t loc, const std::string& name, std::vector<hsize_t>* dims_out = nullptr,
                           const std::optional<std::vector<hsize_t>>& expected = std::nullopt) const {
        const hid_t id = H5Dopen2(loc, name.c_str(), H5P_DEFAULT);
        if (id < 0) fail("dataset " + name + " is missing or unreadable");
        H5Id set(id, H5Dclose);
        H5Id space(H5Dget_space(set.get()), H5Sclose);
        if (!space.valid()) fail("dataset " + name + ": unreadable shape");
        const int rank = H5Sget_simple_extent_ndims(space.get());
        if (rank < 0) fail("dataset " + name + ": unreadable shape");
        std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
        H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
        if (expected && dims != *expected)
            fail("dataset " + name + " has shape " + dims_str(dims) + ", expected " + dims_str(*expected));
        hsize_t n = 1;
        for (auto d : dims) n *= d;
        std::vector<T> out(n);
        if (n && H5Dread(set.get(), mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
            fail("dataset " + name + ": reading its " + std::to_string(n) + " values failed (truncated or corrupt file?)");
        if (dims_out) *dims_out = dims;
        return out;
    }
    template <class T>
    T attr(hid_t loc, const std::string& name) const {
        const hid_t id = H5Aopen(loc, name.c_str(), H5P_DEFAULT);
        if (id < 0) fail("attribute " + name + " is missing or unreadable");
        H5Id a(id, H5Aclose);
        T value{};
        if (H5Aread(a.get(), mem_type<T>(), &value) < 0) fail("attribute " + name + " is unreadable");
        return value;
    }
    std::string string_attr(hid_t loc, const std::string& name) const {
        const hid_t id = H5Aopen(loc, name.c_str(), H5P_DEFAULT);
        if (id < 0) fail("attribute " + name + " is missing or unreadable");
        H5Id a(id, H5Aclose);
        H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
        H5Tset_size(type.get(), H5T_VARIABLE);
        H5Tset_cset(type.get(), H5T_CSET_UTF8);
        char* p = nullptr;
        if (H5Aread(a.get(), type.get(), &p) < 0) fail("attribute " + name + " is not a readable string");
        std::string s = p ? p : "";
        H5free_memory(p);
        return s;
    }
    std::vector<std::string> children(hid_t group) const {
        H5G_info_t info{};
        if (H5Gget_info(group, &info) < 0) fail("cannot list a group");
        std::vector<std::string> names;
        for (hsize_t i = 0; i < info.nlinks; ++i) {
            const ssize_t len = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
            if (len < 0) fail("cannot list a group");
            std::string name(std::size_t(len), '\0');
            H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), std::size_t(len) + 1, H5P_DEFAULT);
            names.push_back(name);
        }
        return names;
    }

private:
    std::string path_;
};

// The optimiser's state tensors by name.
template <class Opt>
auto optimizer_tensors(Opt& o) {
    if constexpr (requires { o.m; o.v; })
        return std::vector<std::pair<std::string, decltype(&o.m)>>{{"m", &o.m}, {"v", &o.v}};
    else if constexpr (requires { o.velocity; })
        return std::vector<std::pair<std::string, decltype(&o.velocity)>>{{"velocity", &o.velocity}};
    else
        static_assert(sizeof(Opt) == 0, "checkpoints know Adam (m, v) and Sgd (velocity) optimisers");
}
template <class Opt>
const char* optimizer_name() {
    if constexpr (requires(Opt o) { o.m; }) return "adam";
    else return "sgd";
}

inline std::string parent_dir(const std::string& path) {
    const auto slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}
inline std::string base_name(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}
inline void fsync_path(const std::string& path, bool directory) {
    const int fd = ::open(path.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
    if (fd < 0) throw CheckpointError("checkpoint " + path + ": cannot open for fsync: " + std::strerror(errno));
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0 && !(directory && (err == EINVAL || err == EROFS)))
        throw CheckpointError("checkpoint " + path + ": fsync failed: " + std::strerror(err));
}

}  // namespace detail

inline constexpr const char* kCheckpointFormat = "lightunet-checkpoint";
inline constexpr long kCheckpointVersion = 1;

// Writes the checkpoint crash-safely (temporary file, flush, fsync, rename, fsync of the folder).
template <class Model, class Optimizer>
void save_checkpoint(const std::string& path, const Model& model, const Optimizer& optimizer, const TrainState& state) {
    using T = typename Model::scalar;
    const std::string dir = detail::parent_dir(path);
    const std::string tmp = dir + "/." + detail::base_name(path) + ".tmp-" + std::to_string(::getpid());
    detail::H5Quiet quiet;
    try {
        {
            const detail::H5Writer w(tmp);
            detail::H5Id file = w.check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, "the file");
            const hid_t root = file.get();
            const std::string config = config_string<Model>();
            w.attr(root, "format", std::string(kCheckpointFormat));
            w.attr(root, "version", std::int64_t(kCheckpointVersion));
            w.attr(root, "config", config);
            w.attr(root, "config_fingerprint", fingerprint(config));
            {
                detail::H5Id g = w.group(root, "model");
                const auto [params, buffers] = parameter_layout(Model::config);
                w.attr(g.get(), "parameter_layout", layout_string(params));
                w.attr(g.get(), "buffer_layout", layout_string(buffers));
                w.dataset(g.get(), "parameters", {hsize_t(Model::parameter_count)}, model.parameters().data());
                w.dataset(g.get(), "buffers", {hsize_t(Model::buffer_count)}, model.buffers().data());
            }
            {
                detail::H5Id g = w.group(root, "optimizer");
                auto& opt = const_cast<Optimizer&>(optimizer);
                w.attr(g.get(), "type", std::string(detail::optimizer_name<Optimizer>()));
                w.attr(g.get(), "steps", std::int64_t(opt.steps));
                w.attr(g.get(), "lr", opt.lr);
                w.attr(g.get(), "weight_decay", opt.weight_decay);
                w.attr(g.get(), "clip_norm", opt.clip_norm);
                w.attr(g.get(), "last_grad_norm", opt.last_grad_norm);
                for (auto& [name, t] : detail::optimizer_tensors(opt))
                    w.dataset(g.get(), name, {hsize_t(t->size())}, static_cast<const T*>(t->data()));
            }
            {
                detail::H5Id g = w.group(root, "progress");
                w.attr(g.get(), "epoch", std::int64_t(state.epoch));
                w.attr(g.get(), "step", std::int64_t(state.step));
                w.attr(g.get(), "global_step", std::int64_t(state.global_step));
                w.attr(g.get(), "lr_scale", state.lr_scale);
                w.attr(g.get(), "epoch_loss_sum", state.epoch_loss_sum);
                w.attr(g.get(), "epoch_loss_count", std::int64_t(state.epoch_loss_count));
                w.attr(g.get(), "epoch_rollbacks", std::int64_t(state.epoch_rollbacks));
                w.attr(g.get(), "epoch_seconds", state.epoch_seconds);
                w.attr(g.get(), "best_dice", state.best_dice);
                w.attr(g.get(), "elapsed_seconds", state.elapsed_seconds);
            }
            {
                detail::H5Id g = w.group(root, "rng");
                for (const auto& [name, words] : state.rng) w.dataset(g.get(), name, {hsize_t(words.size())}, words.data());
            }
            {
                detail::H5Id g = w.group(root, "history");
                const std::size_t e = state.history.size();
                std::vector<std::int64_t> epoch(e), rollbacks(e);
                std::vector<double> train(e), val(e), dice(e * kRegions), lr(e), seconds(e);
                for (std::size_t i = 0; i < e; ++i) {
                    const auto& r = state.history[i];
                    epoch[i] = r.epoch, rollbacks[i] = r.rollbacks;
                    train[i] = r.train_loss, val[i] = r.val_loss, lr[i] = r.lr, seconds[i] = r.seconds;
                    for (int k = 0; k < kRegions; ++k) dice[i * kRegions + k] = r.dice[k];
                }
                w.dataset(g.get(), "epoch", {hsize_t(e)}, epoch.data());
                w.dataset(g.get(), "train_loss", {hsize_t(e)}, train.data());
                w.dataset(g.get(), "val_loss", {hsize_t(e)}, val.data());
                w.dataset(g.get(), "dice", {hsize_t(e), hsize_t(kRegions)}, dice.data());
                w.dataset(g.get(), "lr", {hsize_t(e)}, lr.data());
                w.dataset(g.get(), "seconds", {hsize_t(e)}, seconds.data());
                w.dataset(g.get(), "rollbacks", {hsize_t(e)}, rollbacks.data());
            }
            w.check(H5Fflush(root, H5F_SCOPE_GLOBAL), "(flush)");
        }
        detail::fsync_path(tmp, false);
        if (std::rename(tmp.c_str(), path.c_str()) != 0)
            throw CheckpointError("checkpoint " + path + ": rename from " + tmp + " failed: " + std::strerror(errno));
        detail::fsync_path(dir, true);
    } catch (...) {
        std::remove(tmp.c_str());
        throw;
    }
}

// What a checkpoint says about itself (without a model).
struct CheckpointInfo {
    std::string config;
    std::uint64_t fingerprint = 0;
    TrainState state;
    std::string optimizer;
    long optimizer_steps = 0;
};

namespace detail {
inline H5Id open_checkpoint(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw CheckpointError("checkpoint " + path + ": " + std::strerror(errno));
    const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        throw CheckpointError("checkpoint " + path + ": not a readable HDF5 file (" + std::to_string(st.st_size) +
                              " bytes; truncated or corrupt?)");
    H5Id file(f, H5Fclose);
    const H5Reader r(path);
    if (H5Aexists(f, "format") <= 0 || r.string_attr(f, "format") != kCheckpointFormat)
        r.fail("not a lightunet checkpoint (no format attribute \"" + std::string(kCheckpointFormat) + "\")");
    const auto version = r.attr<std::int64_t>(f, "version");
    if (version != kCheckpointVersion)
        r.fail("format version " + std::to_string(version) + ", this build reads version " + std::to_string(kCheckpointVersion));
    return file;
}

inline void read_state(const H5Reader& r, hid_t root, TrainState& s) {
    {
        H5Id g = r.group(root, "progress");
        s.epoch = long(r.attr<std::int64_t>(g.get(), "epoch"));
        s.step = long(r.attr<std::int64_t>(g.get(), "step"));
        s.global_step = long(r.attr<std::int64_t>(g.get(), "global_step"));
        s.lr_scale = r.attr<double>(g.get(), "lr_scale");
        s.epoch_loss_sum = r.attr<double>(g.get(), "epoch_loss_sum");
        s.epoch_loss_count = long(r.attr<std::int64_t>(g.get(), "epoch_loss_count"));
        s.epoch_rollbacks = long(r.attr<std::int64_t>(g.get(), "epoch_rollbacks"));
        s.epoch_seconds = r.attr<double>(g.get(), "epoch_seconds");
        s.best_dice = r.attr<double>(g.get(), "best_dice");
        s.elapsed_seconds = r.attr<double>(g.get(), "elapsed_seconds");
    }
    {
        H5Id g = r.group(root, "rng");
        s.rng.clear();
        for (const auto& name : r.children(g.get())) s.rng[name] = r.dataset<std::uint64_t>(g.get(), name);
    }
    {
        H5Id g = r.group(root, "history");
        std::vector<hsize_t> dims;
        const auto epoch = r.dataset<std::int64_t>(g.get(), "epoch", &dims);
        const std::vector<hsize_t> e = dims;
        const auto train = r.dataset<double>(g.get(), "train_loss", nullptr, e);
        const auto val = r.dataset<double>(g.get(), "val_loss", nullptr, e);
        const auto dice = r.dataset<double>(g.get(), "dice", nullptr, std::vector<hsize_t>{e.at(0), hsize_t(kRegions)});
        const auto lr = r.dataset<double>(g.get(), "lr", nullptr, e);
        const auto seconds = r.dataset<double>(g.get(), "seconds", nullptr, e);
        const auto rollbacks = r.dataset<std::int64_t>(g.get(), "rollbacks", nullptr, e);
        s.history.resize(epoch.size());
        for (std::size_t i = 0; i < epoch.size(); ++i) {
            auto& rec = s.history[i];
            rec.epoch = long(epoch[i]), rec.train_loss = train[i], rec.val_loss = val[i], rec.lr = lr[i];
            rec.seconds = seconds[i], rec.rollbacks = long(rollbacks[i]);
            for (int k = 0; k < kRegions; ++k) rec.dice[k] = dice[i * kRegions + k];
        }
    }
}
}  // namespace detail

inline CheckpointInfo read_checkpoint_info(const std::string& path) {
    detail::H5Quiet quiet;
    detail::H5Id file = detail::open_checkpoint(path);
    const detail::H5Reader r(path);
    CheckpointInfo info;
    info.config = r.string_attr(file.get(), "config");
    info.fingerprint = r.attr<std::uint64_t>(file.get(), "config_fingerprint");
    detail::read_state(r, file.get(), info.state);
    detail::H5Id g = r.group(file.get(), "optimizer");
    info.optimizer = r.string_attr(g.get(), "type");
    info.optimizer_steps = long(r.attr<std::int64_t>(g.get(), "steps"));
    return info;
}

// Restores model weights and buffers, the optimiser's moments, step count and learning rate
// (its hyperparameters stay the caller's), and the training state. Nothing changes unless the
// whole file reads and matches.
template <class Model, class Optimizer>
void load_checkpoint(const std::string& path, Model& model, Optimizer& optimizer, TrainState& state) {
    using T = typename Model::scalar;
    detail::H5Quiet quiet;
    detail::H5Id file = detail::open_checkpoint(path);
    const detail::H5Reader r(path);
    const hid_t root = file.get();
    const std::string stored = r.string_attr(root, "config"), current = config_string<Model>();
    const auto stored_fp = r.attr<std::uint64_t>(root, "config_fingerprint");
    if (stored != current || stored_fp != fingerprint(current)) {
        const std::string diff = config_difference(stored, current);
        r.fail("written for another configuration (" + (diff.empty() ? "fingerprint differs" : diff) + ")");
    }
    detail::H5Id mg = r.group(root, "model");
    const auto params = r.dataset<T>(mg.get(), "parameters", nullptr, std::vector<hsize_t>{hsize_t(Model::parameter_count)});
    const auto buffers = r.dataset<T>(mg.get(), "buffers", nullptr, std::vector<hsize_t>{hsize_t(Model::buffer_count)});
    detail::H5Id og = r.group(root, "optimizer");
    const std::string type = r.string_attr(og.get(), "type");
    if (type != detail::optimizer_name<Optimizer>())
        r.fail("holds the state of optimiser \"" + type + "\", this run uses \"" + detail::optimizer_name<Optimizer>() + "\"");
    const long steps = long(r.attr<std::int64_t>(og.get(), "steps"));
    const double lr = r.attr<double>(og.get(), "lr");
    const double last_norm = r.attr<double>(og.get(), "last_grad_norm");
    std::vector<std::vector<T>> moments;
    for (auto& [name, t] : detail::optimizer_tensors(optimizer)) {
        std::vector<hsize_t> dims;
        moments.push_back(r.dataset<T>(og.get(), name, &dims));
        if (dims.size() != 1 || (dims[0] != 0 && dims[0] != Model::parameter_count))
            r.fail("dataset optimizer/" + name + " has shape " + detail::dims_str(dims) + ", expected [0] or [" +
                   std::to_string(Model::parameter_count) + "]");
    }
    TrainState loaded;
    detail::read_state(r, root, loaded);
    // Everything read and checked: commit.
    std::copy(params.begin(), params.end(), model.parameters().begin());
    std::copy(buffers.begin(), buffers.end(), model.buffers().begin());
    std::size_t i = 0;
    for (auto& [name, t] : detail::optimizer_tensors(optimizer)) {
        const auto& m = moments[i++];
        if (m.empty()) {
            *t = std::remove_reference_t<decltype(*t)>();
        } else {
            t->resize({1, 1, 1, 1, int(m.size())});
            std::copy(m.begin(), m.end(), t->data());
        }
    }
    optimizer.steps = steps;
    optimizer.lr = lr;
    optimizer.last_grad_norm = last_norm;
    state = std::move(loaded);
}

// Rolling checkpoints `checkpoint-<global step>.h5` (the newest `keep_last` kept) and `best.h5`
// in one folder.
class CheckpointManager {
public:
    explicit CheckpointManager(std::string dir, int keep_last = 3) : dir_(std::move(dir)), keep_(std::max(1, keep_last)) {
        if (dir_.empty()) throw std::invalid_argument("CheckpointManager: empty folder name");
        if (::mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST)
            throw CheckpointError("checkpoint folder " + dir_ + ": cannot create: " + std::strerror(errno));
        // Temporary files of writers that died (ours are removed on every error path).
        for (const auto& name : entries())
            if (name.rfind(".checkpoint-", 0) == 0 || name.rfind(".best.h5.tmp-", 0) == 0) std::remove((dir_ + "/" + name).c_str());
    }
    const std::string& dir() const { return dir_; }
    std::string path_for(long global_step) const {
        char buf[48];
        std::snprintf(buf, sizeof buf, "checkpoint-%09ld.h5", global_step);
        return dir_ + "/" + buf;
    }
    std::string best_path() const { return dir_ + "/best.h5"; }

    template <class Model, class Optimizer>
    std::string save(const Model& model, const Optimizer& optimizer, const TrainState& state) {
        const std::string path = path_for(state.global_step);
        save_checkpoint(path, model, optimizer, state);
        const auto all = rolling();
        for (std::size_t i = std::size_t(keep_); i < all.size(); ++i) std::remove(all[i].c_str());
        return path;
    }
    template <class Model, class Optimizer>
    std::string save_best(const Model& model, const Optimizer& optimizer, const TrainState& state) {
        save_checkpoint(best_path(), model, optimizer, state);
        return best_path();
    }
    // Rolling checkpoints, newest (highest step) first.
    std::vector<std::string> rolling() const {
        std::vector<std::string> names;
        for (const auto& name : entries())
            if (name.size() >= 23 && name.rfind("checkpoint-", 0) == 0 && name.substr(name.size() - 3) == ".h5") names.push_back(name);
        std::sort(names.rbegin(), names.rend());
        for (auto& n : names) n = dir_ + "/" + n;
        return names;
    }
    // The newest rolling checkpoint that opens and reads as a checkpoint.
    std::optional<std::string> latest() const {
        for (const auto& path : rolling()) {
            try {
                read_checkpoint_info(path);
                return path;
            } catch (const CheckpointError&) {
            }
        }
        return std::nullopt;
    }

private:
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        DIR* d = ::opendir(dir_.c_str());
        if (!d) return out;
        while (const dirent* e = ::readdir(d)) out.emplace_back(e->d_name);
        ::closedir(d);
        return out;
    }
    std::string dir_;
    int keep_;
};

}  // namespace lightunet::train

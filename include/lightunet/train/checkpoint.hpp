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
// type, every attribute's type and size before reading it, every dataset's type, shape and
// storage, reads everything before changing anything, and throws CheckpointError naming the
// file and what is wrong. All HDF5 calls hold io's process-wide HDF5 lock.
#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <zlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
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
#include "../graph/unet_graph.hpp"
#include "../io/hdf5_support.hpp"
#include "../model/staging.hpp"
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
inline const char* name_of(Act v) { return v == Act::relu ? "relu" : v == Act::leaky_relu ? "leaky_relu" : "identity"; }
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
      << " leaky_slope=" << slope;
    // Fields added later are written only when they differ from their default, so checkpoints
    // of plain configurations keep the fingerprint they always had.
    if (c.encoder == Encoder::residual) {
        s << " encoder=residual blocks=";
        for (int l = 0; l < c.depth(); ++l) s << (l ? "," : "") << c.blocks(l);
    }
    if (c.deep_supervision) s << " deep_supervision=1";
    s << " scalar=" << detail::scalar_name<typename Model::scalar>()
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
    auto kernel = [&](std::vector<int> s, int e) {
        for (int i = 0; i < (c.dims == 3 ? 3 : 2); ++i) s.push_back(e);
        return s;
    };
    const graph::GraphBuilder g = graph::build_graph(c);
    for (int i = 0; i < g.op_count; ++i) {
        const graph::Op& op = g.ops[i];
        const std::string name = op.module.str();
        if (op.is_conv_like()) {
            // ConvTranspose keeps PyTorch's [in][out][kernel] layout.
            p.push_back({name + ".weight", op.kind == graph::OpKind::up_transposed ? kernel({op.cin, op.cout}, op.kernel)
                                                                                   : kernel({op.cout, op.cin}, op.kernel)});
            p.push_back({name + ".bias", {op.cout}});
        } else if (op.kind == graph::OpKind::norm_act) {
            if (op.gamma != graph::no_offset) p.push_back({name + ".weight", {op.cout}}), p.push_back({name + ".bias", {op.cout}});
            if (op.running != graph::no_offset)
                b.push_back({name + ".running_mean", {op.cout}}), b.push_back({name + ".running_var", {op.cout}});
        }
    }
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
// HDF5: the wrappers of io/hdf5_support.hpp, under its process-wide lock (libhdf5 1.10 is not
// thread-safe, and the data loader's threads read the store while a checkpoint is saved).

namespace detail {

namespace h5 = io::detail;

template <class T>
hid_t file_type() {
    if constexpr (std::is_same_v<T, float>) return H5T_IEEE_F32LE;
    else if constexpr (std::is_same_v<T, double>) return H5T_IEEE_F64LE;
    else if constexpr (std::is_same_v<T, std::int64_t>) return H5T_STD_I64LE;
    else if constexpr (std::is_same_v<T, std::uint64_t>) return H5T_STD_U64LE;
    else static_assert(sizeof(T) == 0, "unsupported checkpoint element type");
}

// Runs `body`, turning the io layer's DataError into a CheckpointError (its message already
// names the checkpoint file).
template <class F>
decltype(auto) as_checkpoint_error(F&& body) {
    try {
        return body();
    } catch (const data::DataError& e) {
        throw CheckpointError(e.what());
    }
}

inline std::string context_for(const std::string& path) { return "checkpoint " + path; }

template <class T>
void write_vector(hid_t location, const std::string& name, const std::vector<hsize_t>& dims, const T* values, const std::string& context) {
    h5::write_dataset(location, name, dims, {}, file_type<T>(), values, false, 0, context);
}
template <class T>
void write_scalar(hid_t location, const std::string& name, T value, const std::string& context) {
    h5::write_attribute<T>(location, name, {value}, context);
}
inline void write_text(hid_t location, const std::string& name, const std::string& value, const std::string& context) {
    h5::write_string_attribute(location, name, {value}, context, true);
}
template <class T>
T read_scalar(hid_t location, const std::string& name, const std::string& context) {
    return h5::read_attribute<T>(location, name, 1, context)[0];
}

// Sizes a checkpoint may claim (a corrupt file may claim anything): the history of a run of a
// million epochs, an RNG state of a million words, a thousand named states.
inline constexpr std::size_t kMaxHistory = std::size_t(1) << 20;
inline constexpr std::size_t kMaxRngWords = std::size_t(1) << 20;
inline constexpr std::size_t kMaxRngStates = 1024;

// A 1-D dataset, or one of exactly `expected` dims.
template <class T>
std::vector<T> read_vector(hid_t location, const std::string& name, const std::vector<hsize_t>& expected, std::size_t max_elements,
                           const std::string& context, std::vector<hsize_t>* dims_out = nullptr) {
    std::vector<hsize_t> dims;
    std::vector<T> values = h5::read_dataset<T>(location, name, dims, max_elements, context);
    if (!expected.empty() && dims != expected)
        throw CheckpointError(context + ": dataset '" + name + "' has shape " + h5::dims_text(dims) + ", expected " +
                              h5::dims_text(expected));
    if (dims_out) *dims_out = dims;
    return values;
}

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

// "; 12 KB free in <dir>" when the folder's file system is (nearly) full: the likely cause of a
// failed write, said plainly.
inline std::string free_space_note(const std::string& dir) {
    struct statvfs fs {};
    if (::statvfs(dir.c_str(), &fs) != 0) return "";
    const unsigned long long free_bytes = static_cast<unsigned long long>(fs.f_bavail) * fs.f_frsize;
    if (free_bytes >= (1ull << 30)) return "";
    return "; " + std::to_string(free_bytes / 1024) + " KB free in " + dir;
}

// The writer's temporary file: `<dir>/.<name>.tmp-<pid>` (CheckpointManager removes those of
// dead writers).
inline std::string temporary_path(const std::string& path) {
    return parent_dir(path) + "/." + base_name(path) + ".tmp-" + std::to_string(::getpid());
}

// Integrity record: the first 512 bytes of a checkpoint (an HDF5 user block, which HDF5 and
// h5py skip) hold "lightunet-checkpoint-integrity bytes=<n> crc32=<hex>" for the n bytes after
// them. Loading checks it before libhdf5 parses anything, so a truncated file, a flipped bit or
// a random one is refused by a check of ours, not left to libhdf5 1.10's parser, which trusts
// corrupt metadata (its global heap: seen reading past buffers and looping forever under fuzzing).
inline constexpr hsize_t kIntegrityBytes = 512;
inline constexpr const char* kIntegrityMagic = "lightunet-checkpoint-integrity ";

// The record for `body`, the bytes that follow it.
inline std::array<char, kIntegrityBytes> integrity_record(const unsigned char* body, std::size_t bytes) {
    std::array<char, kIntegrityBytes> record{};
    const auto crc = unsigned(crc32(crc32(0L, Z_NULL, 0), body, uInt(bytes)));
    std::snprintf(record.data(), record.size(), "%sbytes=%zu crc32=%08x\n", kIntegrityMagic, bytes, crc);
    return record;
}

inline std::uint32_t crc_of_file_after(std::FILE* file, long offset, std::uintmax_t& bytes) {
    std::vector<unsigned char> buffer(std::size_t(1) << 20);
    uLong crc = crc32(0L, Z_NULL, 0);
    bytes = 0;
    if (std::fseek(file, offset, SEEK_SET) != 0) return 0;
    for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0; bytes += n) crc = crc32(crc, buffer.data(), uInt(n));
    return std::uint32_t(crc);
}

// Writes `bytes` to a new file at `path` and fsyncs it; any error (ENOSPC: the disk is full)
// raises, naming the path and the operating system's message.
inline void write_file_durably(const std::string& path, const std::vector<std::span<const unsigned char>>& parts) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw CheckpointError("checkpoint " + path + ": cannot create: " + std::strerror(errno));
    auto fail = [&](const char* what) {
        const int err = errno;
        ::close(fd);
        throw CheckpointError("checkpoint " + path + ": " + what + ": " + std::strerror(err));
    };
    for (const auto part : parts)
        for (std::size_t done = 0; done < part.size();) {
            const ssize_t n = ::write(fd, part.data() + done, part.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) fail("write failed");
            done += std::size_t(n);
        }
    if (::fsync(fd) != 0) fail("fsync failed");
    if (::close(fd) != 0) throw CheckpointError("checkpoint " + path + ": close failed: " + std::strerror(errno));
}

// Puts the record before an existing HDF5 file (tests and the fuzz target use this to seal a
// file they changed).
inline void write_integrity_record(const std::string& path) {
    std::vector<unsigned char> body;
    {
        std::FILE* file = std::fopen(path.c_str(), "rb");
        if (file == nullptr) throw CheckpointError("checkpoint " + path + ": " + std::strerror(errno));
        unsigned char buffer[1 << 16];
        for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, file)) > 0;) body.insert(body.end(), buffer, buffer + n);
        std::fclose(file);
    }
    if (body.size() >= kIntegrityBytes && std::memcmp(body.data(), kIntegrityMagic, std::strlen(kIntegrityMagic)) == 0)
        body.erase(body.begin(), body.begin() + std::ptrdiff_t(kIntegrityBytes));  // replace an old record
    const auto record = integrity_record(body.data(), body.size());
    write_file_durably(path, {std::span(reinterpret_cast<const unsigned char*>(record.data()), record.size()), std::span(body)});
}

// Refuses a file whose record does not match what follows it (truncated, or changed after it
// was written), or that has neither a record nor HDF5's signature at its start. A file that
// starts with the signature was written before checkpoints had the record (same format
// otherwise): it is read without this check. Run without the HDF5 lock: it reads the whole file.
inline void check_integrity_record(const std::string& path) {
    const std::string context = "checkpoint " + path;
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) throw CheckpointError(context + ": " + std::strerror(errno));
    char record[kIntegrityBytes + 1] = {};
    const std::size_t got = std::fread(record, 1, kIntegrityBytes, file);
    static constexpr char kHdf5Signature[] = "\x89HDF\r\n\x1a\n";
    if (got >= 8 && std::memcmp(record, kHdf5Signature, 8) == 0) {
        std::fclose(file);
        return;
    }
    std::uintmax_t bytes = 0;
    const std::uint32_t crc = got == kIntegrityBytes ? crc_of_file_after(file, long(kIntegrityBytes), bytes) : 0;
    std::fclose(file);
    std::uintmax_t recorded_bytes = 0;
    unsigned recorded_crc = 0;
    const std::size_t magic = std::strlen(kIntegrityMagic);
    if (got < kIntegrityBytes || std::strncmp(record, kIntegrityMagic, magic) != 0 ||
        std::sscanf(record + magic, "bytes=%ju crc32=%x", &recorded_bytes, &recorded_crc) != 2)
        throw CheckpointError(context + ": no integrity record in its first " + std::to_string(kIntegrityBytes) +
                              " bytes (not a lightunet checkpoint, or its start is damaged)");
    if (bytes != recorded_bytes)
        throw CheckpointError(context + ": truncated or extended: " + std::to_string(bytes) + " bytes after the integrity record, " +
                              std::to_string(recorded_bytes) + " written");
    if (crc != recorded_crc) {
        char text[96];
        std::snprintf(text, sizeof text, ": corrupt: CRC-32 %08x, %08x written", unsigned(crc), recorded_crc);
        throw CheckpointError(context + text);
    }
}

}  // namespace detail

inline constexpr const char* kCheckpointFormat = "lightunet-checkpoint";
inline constexpr long kCheckpointVersion = 1;

// Writes the checkpoint crash-safely: built in memory by HDF5 (under the HDF5 lock), then the
// integrity record and the image written to a temporary file, fsync, rename, fsync of the
// folder. On any failure (a full disk included) the temporary file is removed, the file at
// `path` is left as it was, and CheckpointError names `path` and the cause.
template <class Model, class Optimizer>
void save_checkpoint(const std::string& path, const Model& model, const Optimizer& optimizer, const TrainState& state) {
    using T = typename Model::scalar;
    namespace h5 = io::detail;
    const std::string dir = detail::parent_dir(path);
    const std::string tmp = detail::temporary_path(path);
    const std::string context = detail::context_for(tmp);
    try {
        const std::vector<unsigned char> image = detail::as_checkpoint_error([&] {
            h5::H5Lock lock;
            h5::H5Handle file = h5::create_hdf5_in_memory(tmp);
            const hid_t root = file.get();
            const std::string config = config_string<Model>();
            detail::write_text(root, "format", kCheckpointFormat, context);
            detail::write_scalar(root, "version", std::int64_t(kCheckpointVersion), context);
            detail::write_text(root, "config", config, context);
            detail::write_scalar(root, "config_fingerprint", fingerprint(config), context);
            {
                h5::H5Handle g = h5::create_group(root, "model", context);
                const auto [params, buffers] = parameter_layout(Model::config);
                detail::write_text(g.get(), "parameter_layout", layout_string(params), context);
                detail::write_text(g.get(), "buffer_layout", layout_string(buffers), context);
                std::vector<T> staging;  // device models: values pass through the host
                detail::write_vector(g.get(), "parameters", {hsize_t(Model::parameter_count)}, host_parameters(model, staging).data(), context);
                detail::write_vector(g.get(), "buffers", {hsize_t(Model::buffer_count)}, host_buffers(model, staging).data(), context);
            }
            {
                h5::H5Handle g = h5::create_group(root, "optimizer", context);
                auto& opt = const_cast<Optimizer&>(optimizer);
                detail::write_text(g.get(), "type", detail::optimizer_name<Optimizer>(), context);
                detail::write_scalar(g.get(), "steps", std::int64_t(opt.steps), context);
                detail::write_scalar(g.get(), "lr", double(opt.lr), context);
                detail::write_scalar(g.get(), "weight_decay", double(opt.weight_decay), context);
                detail::write_scalar(g.get(), "clip_norm", double(opt.clip_norm), context);
                detail::write_scalar(g.get(), "last_grad_norm", double(opt.last_grad_norm), context);
                std::vector<T> staging;
                for (auto& [name, t] : detail::optimizer_tensors(opt))
                    detail::write_vector(g.get(), name, {hsize_t(t->size())}, host_values(*t, staging), context);
            }
            {
                h5::H5Handle g = h5::create_group(root, "progress", context);
                detail::write_scalar(g.get(), "epoch", std::int64_t(state.epoch), context);
                detail::write_scalar(g.get(), "step", std::int64_t(state.step), context);
                detail::write_scalar(g.get(), "global_step", std::int64_t(state.global_step), context);
                detail::write_scalar(g.get(), "lr_scale", state.lr_scale, context);
                detail::write_scalar(g.get(), "epoch_loss_sum", state.epoch_loss_sum, context);
                detail::write_scalar(g.get(), "epoch_loss_count", std::int64_t(state.epoch_loss_count), context);
                detail::write_scalar(g.get(), "epoch_rollbacks", std::int64_t(state.epoch_rollbacks), context);
                detail::write_scalar(g.get(), "epoch_seconds", state.epoch_seconds, context);
                detail::write_scalar(g.get(), "best_dice", state.best_dice, context);
                detail::write_scalar(g.get(), "elapsed_seconds", state.elapsed_seconds, context);
            }
            {
                h5::H5Handle g = h5::create_group(root, "rng", context);
                for (const auto& [name, words] : state.rng) detail::write_vector(g.get(), name, {hsize_t(words.size())}, words.data(), context);
            }
            {
                h5::H5Handle g = h5::create_group(root, "history", context);
                const std::size_t e = state.history.size();
                std::vector<std::int64_t> epoch(e), rollbacks(e);
                std::vector<double> train(e), val(e), dice(e * kRegions), lr(e), seconds(e), telemetry(e * telemetry_count);
                for (std::size_t i = 0; i < e; ++i) {
                    const auto& r = state.history[i];
                    epoch[i] = r.epoch, rollbacks[i] = r.rollbacks;
                    train[i] = r.train_loss, val[i] = r.val_loss, lr[i] = r.lr, seconds[i] = r.seconds;
                    for (int k = 0; k < kRegions; ++k) dice[i * kRegions + k] = r.dice[k];
                    std::copy(r.telemetry.begin(), r.telemetry.end(), telemetry.begin() + std::ptrdiff_t(i * telemetry_count));
                }
                detail::write_vector(g.get(), "epoch", {hsize_t(e)}, epoch.data(), context);
                detail::write_vector(g.get(), "train_loss", {hsize_t(e)}, train.data(), context);
                detail::write_vector(g.get(), "val_loss", {hsize_t(e)}, val.data(), context);
                detail::write_vector(g.get(), "dice", {hsize_t(e), hsize_t(kRegions)}, dice.data(), context);
                detail::write_vector(g.get(), "lr", {hsize_t(e)}, lr.data(), context);
                detail::write_vector(g.get(), "seconds", {hsize_t(e)}, seconds.data(), context);
                detail::write_vector(g.get(), "rollbacks", {hsize_t(e)}, rollbacks.data(), context);
                // Columns in telemetry_columns' order (progress.hpp); checkpoints before it lack it.
                detail::write_vector(g.get(), "telemetry", {hsize_t(e), hsize_t(telemetry_count)}, telemetry.data(), context);
            }
            return h5::file_image(root, context);
        });
        // Outside the HDF5 lock: the loader's threads read the store meanwhile.
        const auto record = detail::integrity_record(image.data(), image.size());
        detail::write_file_durably(tmp, {std::span(reinterpret_cast<const unsigned char*>(record.data()), record.size()), std::span(image)});
        if (std::rename(tmp.c_str(), path.c_str()) != 0)
            throw CheckpointError("checkpoint " + path + ": rename from " + tmp + " failed: " + std::strerror(errno));
        detail::fsync_path(dir, true);
    } catch (const CheckpointError& e) {
        std::remove(tmp.c_str());
        throw CheckpointError("saving checkpoint " + path + " failed, the previous file (if any) is intact: " + e.what() +
                              detail::free_space_note(dir));
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

// Opens a checkpoint and checks its format and version. Caller holds the HDF5 lock and has
// checked the integrity record.
inline h5::H5Handle open_checkpoint(const std::string& path) {
    const std::string context = context_for(path);
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw CheckpointError(context + ": " + std::strerror(errno));
    h5::H5Handle file;
    try {
        file = h5::open_hdf5_read(path);
    } catch (const data::DataError&) {
        throw CheckpointError(context + ": not a readable HDF5 file (" + std::to_string(st.st_size) + " bytes; truncated or corrupt?)");
    }
    const hid_t root = file.get();
    if (H5Aexists(root, "format") <= 0 || h5::read_single_string_attribute(root, "format", context) != kCheckpointFormat) {
        H5Eclear2(H5E_DEFAULT);
        throw CheckpointError(context + ": not a lightunet checkpoint (no format attribute \"" + std::string(kCheckpointFormat) + "\")");
    }
    const auto version = read_scalar<std::int64_t>(root, "version", context);
    if (version != kCheckpointVersion)
        throw CheckpointError(context + ": format version " + std::to_string(version) + ", this build reads version " +
                              std::to_string(kCheckpointVersion));
    return file;
}

inline void read_state(hid_t root, TrainState& s, const std::string& context) {
    {
        h5::H5Handle g = h5::open_group(root, "progress", context);
        s.epoch = long(read_scalar<std::int64_t>(g.get(), "epoch", context));
        s.step = long(read_scalar<std::int64_t>(g.get(), "step", context));
        s.global_step = long(read_scalar<std::int64_t>(g.get(), "global_step", context));
        s.lr_scale = read_scalar<double>(g.get(), "lr_scale", context);
        s.epoch_loss_sum = read_scalar<double>(g.get(), "epoch_loss_sum", context);
        s.epoch_loss_count = long(read_scalar<std::int64_t>(g.get(), "epoch_loss_count", context));
        s.epoch_rollbacks = long(read_scalar<std::int64_t>(g.get(), "epoch_rollbacks", context));
        s.epoch_seconds = read_scalar<double>(g.get(), "epoch_seconds", context);
        s.best_dice = read_scalar<double>(g.get(), "best_dice", context);
        s.elapsed_seconds = read_scalar<double>(g.get(), "elapsed_seconds", context);
    }
    {
        h5::H5Handle g = h5::open_group(root, "rng", context);
        s.rng.clear();
        for (const auto& name : h5::group_members(g.get(), context + ": /rng", kMaxRngStates))
            s.rng[name] = read_vector<std::uint64_t>(g.get(), name, {}, kMaxRngWords, context + ": /rng");
    }
    {
        h5::H5Handle g = h5::open_group(root, "history", context);
        const std::string where = context + ": /history";
        std::vector<hsize_t> dims;
        const auto epoch = read_vector<std::int64_t>(g.get(), "epoch", {}, kMaxHistory, where, &dims);
        if (dims.size() != 1) throw CheckpointError(where + ": dataset 'epoch' has shape " + h5::dims_text(dims) + ", expected one axis");
        const auto train = read_vector<double>(g.get(), "train_loss", dims, kMaxHistory, where);
        const auto val = read_vector<double>(g.get(), "val_loss", dims, kMaxHistory, where);
        const auto dice = read_vector<double>(g.get(), "dice", {dims[0], hsize_t(kRegions)}, kMaxHistory * kRegions, where);
        const auto lr = read_vector<double>(g.get(), "lr", dims, kMaxHistory, where);
        const auto seconds = read_vector<double>(g.get(), "seconds", dims, kMaxHistory, where);
        const auto rollbacks = read_vector<std::int64_t>(g.get(), "rollbacks", dims, kMaxHistory, where);
        const bool has_telemetry = H5Lexists(g.get(), "telemetry", H5P_DEFAULT) > 0;  // absent before telemetry was logged
        const auto telemetry = has_telemetry ? read_vector<double>(g.get(), "telemetry", {dims[0], hsize_t(telemetry_count)},
                                                                   kMaxHistory * telemetry_count, where)
                                             : std::vector<double>{};
        s.history.resize(epoch.size());
        for (std::size_t i = 0; i < epoch.size(); ++i) {
            auto& rec = s.history[i];
            rec.epoch = long(epoch[i]), rec.train_loss = train[i], rec.val_loss = val[i], rec.lr = lr[i];
            rec.seconds = seconds[i], rec.rollbacks = long(rollbacks[i]);
            for (int k = 0; k < kRegions; ++k) rec.dice[k] = dice[i * kRegions + k];
            if (has_telemetry)
                std::copy_n(telemetry.begin() + std::ptrdiff_t(i * telemetry_count), telemetry_count, rec.telemetry.begin());
        }
    }
}
}  // namespace detail

inline CheckpointInfo read_checkpoint_info(const std::string& path) {
    namespace h5 = io::detail;
    const std::string context = detail::context_for(path);
    detail::check_integrity_record(path);
    return detail::as_checkpoint_error([&] {
        h5::H5Lock lock;
        h5::H5Handle file = detail::open_checkpoint(path);
        CheckpointInfo info;
        info.config = h5::read_single_string_attribute(file.get(), "config", context);
        info.fingerprint = detail::read_scalar<std::uint64_t>(file.get(), "config_fingerprint", context);
        detail::read_state(file.get(), info.state, context);
        h5::H5Handle g = h5::open_group(file.get(), "optimizer", context);
        info.optimizer = h5::read_single_string_attribute(g.get(), "type", context + ": /optimizer");
        info.optimizer_steps = long(detail::read_scalar<std::int64_t>(g.get(), "steps", context + ": /optimizer"));
        return info;
    });
}

// Restores model weights and buffers, the optimiser's moments, step count and learning rate
// (its hyperparameters stay the caller's), and the training state. Nothing changes unless the
// whole file reads and matches.
template <class Model, class Optimizer>
void load_checkpoint(const std::string& path, Model& model, Optimizer& optimizer, TrainState& state) {
    using T = typename Model::scalar;
    namespace h5 = io::detail;
    const std::string context = detail::context_for(path);
    struct Loaded {
        std::vector<T> params, buffers;
        std::vector<std::vector<T>> moments;
        long steps = 0;
        double lr = 0, last_norm = 0;
        TrainState state;
    };
    detail::check_integrity_record(path);
    Loaded loaded = detail::as_checkpoint_error([&] {
        h5::H5Lock lock;
        h5::H5Handle file = detail::open_checkpoint(path);
        const hid_t root = file.get();
        const std::string stored = h5::read_single_string_attribute(root, "config", context), current = config_string<Model>();
        const auto stored_fp = detail::read_scalar<std::uint64_t>(root, "config_fingerprint", context);
        if (stored != current || stored_fp != fingerprint(current)) {
            const std::string diff = config_difference(stored, current);
            throw CheckpointError(context + ": written for another configuration (" + (diff.empty() ? "fingerprint differs" : diff) + ")");
        }
        Loaded l;
        {
            h5::H5Handle g = h5::open_group(root, "model", context);
            const std::string where = context + ": /model";
            l.params = detail::read_vector<T>(g.get(), "parameters", {hsize_t(Model::parameter_count)}, Model::parameter_count, where);
            l.buffers = detail::read_vector<T>(g.get(), "buffers", {hsize_t(Model::buffer_count)}, Model::buffer_count, where);
        }
        h5::H5Handle g = h5::open_group(root, "optimizer", context);
        const std::string where = context + ": /optimizer";
        const std::string type = h5::read_single_string_attribute(g.get(), "type", where);
        if (type != detail::optimizer_name<Optimizer>())
            throw CheckpointError(context + ": holds the state of optimiser \"" + type + "\", this run uses \"" +
                                  detail::optimizer_name<Optimizer>() + "\"");
        l.steps = long(detail::read_scalar<std::int64_t>(g.get(), "steps", where));
        l.lr = detail::read_scalar<double>(g.get(), "lr", where);
        l.last_norm = detail::read_scalar<double>(g.get(), "last_grad_norm", where);
        for (auto& [name, t] : detail::optimizer_tensors(optimizer)) {
            std::vector<hsize_t> dims;
            l.moments.push_back(detail::read_vector<T>(g.get(), name, {}, Model::parameter_count, where, &dims));
            if (dims.size() != 1 || (dims[0] != 0 && dims[0] != Model::parameter_count))
                throw CheckpointError(where + ": dataset '" + name + "' has shape " + h5::dims_text(dims) + ", expected (0) or (" +
                                      std::to_string(Model::parameter_count) + ")");
        }
        detail::read_state(root, l.state, context);
        return l;
    });
    // Everything read and checked: commit.
    model.load_parameters_from_host(loaded.params);
    model.load_buffers_from_host(loaded.buffers);
    std::size_t i = 0;
    for (auto& [name, t] : detail::optimizer_tensors(optimizer)) {
        const auto& m = loaded.moments[i++];
        using Moments = std::remove_reference_t<decltype(*t)>;
        if (m.empty()) {
            *t = Moments();
        } else {
            t->resize({1, 1, 1, 1, int(m.size())});
            Moments::backend::upload(t->data(), m.data(), m.size());
        }
    }
    optimizer.steps = loaded.steps;
    optimizer.lr = loaded.lr;
    optimizer.last_grad_norm = loaded.last_norm;
    state = std::move(loaded.state);
}

// Rolling checkpoints `checkpoint-<global step>.h5` (the newest `keep_last` kept) and `best.h5`
// in one folder.
class CheckpointManager {
public:
    explicit CheckpointManager(std::string dir, int keep_last = 3) : dir_(std::move(dir)), keep_(std::max(1, keep_last)) {
        if (dir_.empty()) throw std::invalid_argument("CheckpointManager: empty folder name");
        if (::mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST)
            throw CheckpointError("checkpoint folder " + dir_ + ": cannot create: " + std::strerror(errno));
        // Temporary files of writers that died (a writer removes its own on every error path);
        // those of a live writer, another process saving into this folder now, stay.
        for (const auto& name : entries())
            if (const auto writer = temporary_file_writer(name); writer && ::kill(*writer, 0) != 0 && errno == ESRCH)
                std::remove((dir_ + "/" + name).c_str());
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

    // The pid in `.<checkpoint name>.tmp-<pid>`, the name save_checkpoint writes first.
    static std::optional<pid_t> temporary_file_writer(const std::string& name) {
        if (name.rfind(".checkpoint-", 0) != 0 && name.rfind(".best.h5", 0) != 0) return std::nullopt;
        const auto tag = name.rfind(".tmp-");
        if (tag == std::string::npos || tag + 5 >= name.size()) return std::nullopt;
        const std::string digits = name.substr(tag + 5);
        if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
        const long pid = std::stol(digits);
        return pid > 0 ? std::optional<pid_t>(pid_t(pid)) : std::nullopt;
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

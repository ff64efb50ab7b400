#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "lightunet/model/unet.hpp"
#include "lightunet/optim/optimizers.hpp"
#include "lightunet/train/checkpoint.hpp"
#include "../fixtures/legacy_checkpoints/legacy_configs.hpp"
#include "../system_python.hpp"
#include "../test_paths.hpp"
#include "train_test_support.hpp"

using namespace lightunet;
using namespace lightunet::train;

namespace {
constexpr UNetConfig small{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}};
constexpr UNetConfig small_wider{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 32}};
using Net = UNet<small>;

template <class T>
bool same_bytes(std::span<const T> a, std::span<const T> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}
template <class T>
bool same_bytes(const Tensor<T>& a, const Tensor<T>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TrainState sample_state() {
    TrainState s;
    s.epoch = 2, s.step = 5, s.global_step = 37, s.lr_scale = 0.5, s.epoch_loss_sum = 1.25, s.epoch_loss_count = 5;
    s.epoch_rollbacks = 1, s.epoch_seconds = 3.5, s.best_dice = 0.75, s.elapsed_seconds = 99.5;
    s.rng = {{"loader", {1, 2, 3}}, {"model_init", {0xFFFFFFFFFFFFFFFFull}}, {"augment", {}}};
    for (int e = 1; e <= 2; ++e) {
        EpochRecord r;
        r.epoch = e, r.train_loss = 1.0 / e, r.val_loss = 1.5 / e, r.dice = {0.1 * e, 0.2 * e, 0.3 * e}, r.lr = 1e-3;
        r.seconds = 10.0 * e, r.rollbacks = e - 1;
        r.telemetry[3] = 70.0 + e, r.telemetry[8] = 64;  // GPU temperature, throttle bits; the rest unknown (NaN)
        s.history.push_back(r);
    }
    return s;
}

void check_state_equal(const TrainState& a, const TrainState& b) {
    CHECK(a.epoch == b.epoch);
    CHECK(a.step == b.step);
    CHECK(a.global_step == b.global_step);
    CHECK(a.lr_scale == b.lr_scale);
    CHECK(a.epoch_loss_sum == b.epoch_loss_sum);
    CHECK(a.epoch_loss_count == b.epoch_loss_count);
    CHECK(a.epoch_rollbacks == b.epoch_rollbacks);
    CHECK(a.epoch_seconds == b.epoch_seconds);
    CHECK(a.best_dice == b.best_dice);
    CHECK(a.elapsed_seconds == b.elapsed_seconds);
    CHECK(a.rng == b.rng);
    REQUIRE(a.history.size() == b.history.size());
    for (std::size_t i = 0; i < a.history.size(); ++i) {
        CHECK(a.history[i].epoch == b.history[i].epoch);
        CHECK(a.history[i].train_loss == b.history[i].train_loss);
        CHECK(a.history[i].val_loss == b.history[i].val_loss);
        CHECK(a.history[i].dice == b.history[i].dice);
        CHECK(a.history[i].lr == b.history[i].lr);
        CHECK(a.history[i].seconds == b.history[i].seconds);
        CHECK(a.history[i].rollbacks == b.history[i].rollbacks);
        CHECK(std::memcmp(a.history[i].telemetry.data(), b.history[i].telemetry.data(), sizeof(a.history[i].telemetry)) == 0);
    }
}
}  // namespace

TEST_CASE("The named layout covers every parameter and buffer", "[checkpoint]") {
    auto total = [](const std::vector<TensorInfo>& v) {
        std::size_t n = 0;
        for (const auto& t : v) n += t.size();
        return n;
    };
    constexpr UNetConfig c3{.dims = 3, .in_channels = 4, .classes = 4, .widths = {4, 8, 16}, .norm = Norm::instance,
                            .down = Down::strided_conv, .up = Up::interpolate_conv};
    constexpr UNetConfig c2{.dims = 2, .in_channels = 4, .classes = 4, .widths = {32, 64, 128, 256, 512}};
    const auto [p3, b3] = parameter_layout(c3);
    CHECK(total(p3) == UNet<c3>::parameter_count);
    CHECK(total(b3) == UNet<c3>::buffer_count);
    const auto [p2, b2] = parameter_layout(c2);
    CHECK(total(p2) == UNet<c2>::parameter_count);
    CHECK(total(b2) == UNet<c2>::buffer_count);
    CHECK(p2.front().name == "encoder.0.conv1.weight");
    CHECK(p2.front().shape == std::vector<int>{32, 4, 3, 3});
    CHECK(p2.back().name == "head.bias");
    CHECK(p3[8 + 0].name == "encoder.1.down.weight");
    CHECK(p3[8 + 0].shape == std::vector<int>{4, 4, 2, 2, 2});
}

TEST_CASE("Checkpoint round trip restores every piece of state", "[checkpoint]") {
    test::ScratchDir dir("ckpt_roundtrip");
    Net net(7);
    Tensor<float> x;
    Tensor<std::uint8_t> y;
    test::make_blobs(1, 0, 2, 16, x, y);
    const TrainState state = sample_state();
    SECTION("Adam") {
        Adam<float> opt(1e-2);
        for (int i = 0; i < 3; ++i) net.train_step(x, y, DiceLoss{}, opt);
        save_checkpoint(dir.file("a.h5"), net, opt, state);
        Net fresh(99);
        Adam<float> fresh_opt(5e-3);
        TrainState loaded;
        REQUIRE_FALSE(same_bytes<float>(net.parameters(), fresh.parameters()));
        REQUIRE(opt.m.size() == Net::parameter_count);  // moments to compare, not two empty tensors
        REQUIRE(fresh_opt.m.size() == 0);
        load_checkpoint(dir.file("a.h5"), fresh, fresh_opt, loaded);
        CHECK(same_bytes<float>(net.parameters(), fresh.parameters()));
        CHECK(same_bytes<float>(net.buffers(), fresh.buffers()));
        CHECK(same_bytes(opt.m, fresh_opt.m));
        CHECK(same_bytes(opt.v, fresh_opt.v));
        CHECK(fresh_opt.steps == 3);
        CHECK(fresh_opt.lr == opt.lr);
        check_state_equal(state, loaded);
        const auto info = read_checkpoint_info(dir.file("a.h5"));
        CHECK(info.config == config_string<Net>());
        CHECK(info.fingerprint == fingerprint(config_string<Net>()));
        CHECK(info.optimizer == "adam");
    }
    SECTION("SGD, saved before its first step (no moments yet), then after") {
        Sgd<float> opt(1e-2);
        save_checkpoint(dir.file("s0.h5"), net, opt, state);
        Sgd<float> o2(1e-2);
        TrainState loaded;
        Net fresh(3);
        load_checkpoint(dir.file("s0.h5"), fresh, o2, loaded);
        CHECK(o2.velocity.size() == 0);
        CHECK(o2.steps == 0);
        net.train_step(x, y, DiceLoss{}, opt);
        REQUIRE(opt.velocity.size() == Net::parameter_count);
        save_checkpoint(dir.file("s1.h5"), net, opt, state);
        load_checkpoint(dir.file("s1.h5"), fresh, o2, loaded);
        CHECK(same_bytes(opt.velocity, o2.velocity));
        CHECK(same_bytes<float>(net.parameters(), fresh.parameters()));
        CHECK(o2.steps == 1);
    }
}

TEST_CASE("A network without buffers round-trips through empty datasets", "[checkpoint]") {
    constexpr UNetConfig inst{.dims = 3, .in_channels = 2, .classes = 3, .widths = {4, 8}, .norm = Norm::instance,
                              .head = Head::sigmoid};
    using Net3 = UNet<inst>;
    static_assert(Net3::buffer_count == 0);
    test::ScratchDir dir("ckpt_nobuf");
    Net3 net(1), fresh(2);
    Sgd<float> opt(1e-2), o2(1e-2);
    TrainState s, loaded;
    save_checkpoint(dir.file("n.h5"), net, opt, s);
    load_checkpoint(dir.file("n.h5"), fresh, o2, loaded);
    CHECK(same_bytes<float>(net.parameters(), fresh.parameters()));
    CHECK(loaded.history.empty());
    CHECK(loaded.rng.empty());
}

TEST_CASE("A checkpoint serves either convolution precision: the weights are fp32 in both", "[checkpoint][bf16]") {
    constexpr UNetConfig small_bf16{.dims = 2, .in_channels = 1, .classes = 2, .widths = {8, 16}, .precision = Precision::bf16};
    test::ScratchDir dir("ckpt_bf16");
    Net fp32(1), back(3);
    UNet<small_bf16> bf16(2);
    Adam<float> a(1e-3), b(1e-3), c(1e-3);
    TrainState s, loaded;
    CHECK(config_string<Net>() == config_string<UNet<small_bf16>>());
    save_checkpoint(dir.file("fp32.h5"), fp32, a, s);
    load_checkpoint(dir.file("fp32.h5"), bf16, b, loaded);
    CHECK(same_bytes<float>(fp32.parameters(), bf16.parameters()));
    save_checkpoint(dir.file("bf16.h5"), bf16, b, s);
    load_checkpoint(dir.file("bf16.h5"), back, c, loaded);
    CHECK(same_bytes<float>(fp32.parameters(), back.parameters()));
}

TEST_CASE("Loading names what differs: configuration, optimiser, corrupt or truncated files", "[checkpoint]") {
    test::ScratchDir dir("ckpt_errors");
    Net net(1);
    Adam<float> opt(1e-3);
    const std::string path = dir.file("c.h5");
    save_checkpoint(path, net, opt, sample_state());
    TrainState st;
    SECTION("another configuration") {
        UNet<small_wider> other(1);
        Adam<float> o(1e-3);
        CHECK_THROWS_WITH(load_checkpoint(path, other, o, st),
                          Catch::Contains(path) && Catch::Contains("widths: checkpoint 8,16, this model 8,32") &&
                              Catch::Contains("parameters: checkpoint"));
    }
    SECTION("another optimiser") {
        Sgd<float> o(1e-3);
        Net fresh(2);
        const std::vector<float> before(fresh.parameters().begin(), fresh.parameters().end());
        CHECK_THROWS_WITH(load_checkpoint(path, fresh, o, st), Catch::Contains("optimiser \"adam\""));
        CHECK(std::equal(before.begin(), before.end(), fresh.parameters().begin()));  // nothing changed
    }
    SECTION("truncated") {
        const auto size = std::filesystem::file_size(path);
        std::filesystem::copy_file(path, dir.file("t.h5"));
        std::filesystem::resize_file(dir.file("t.h5"), size / 2);
        CHECK_THROWS_AS(load_checkpoint(dir.file("t.h5"), net, opt, st), CheckpointError);
        CHECK_THROWS_WITH(load_checkpoint(dir.file("t.h5"), net, opt, st), Catch::Contains(dir.file("t.h5")));
    }
    SECTION("the integrity record: one flipped bit, a truncation, an older file without a record") {
        std::vector<char> bytes;
        {
            std::ifstream in(path, std::ios::binary);
            bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        }
        std::vector<char> flipped = bytes;
        flipped[flipped.size() / 2] ^= 0x10;
        std::ofstream(dir.file("flip.h5"), std::ios::binary).write(flipped.data(), std::streamsize(flipped.size()));
        CHECK_THROWS_WITH(load_checkpoint(dir.file("flip.h5"), net, opt, st), Catch::Contains(dir.file("flip.h5")) && Catch::Contains("corrupt: CRC-32"));
        std::ofstream(dir.file("cut.h5"), std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() - 1));
        CHECK_THROWS_WITH(read_checkpoint_info(dir.file("cut.h5")),
                          Catch::Contains("truncated or extended: " + std::to_string(bytes.size() - 513) + " bytes after the integrity record, " +
                                          std::to_string(bytes.size() - 512) + " written"));
        // A checkpoint of before the record: the HDF5 file without its user block still loads.
        std::ofstream(dir.file("old.h5"), std::ios::binary).write(bytes.data() + 512, std::streamsize(bytes.size() - 512));
        Net fresh(9);
        Adam<float> o(1e-3);
        TrainState old_state;
        CHECK_NOTHROW(load_checkpoint(dir.file("old.h5"), fresh, o, old_state));
        CHECK(std::equal(fresh.parameters().begin(), fresh.parameters().end(), net.parameters().begin()));
    }
    SECTION("a sweep: 64 flipped bits and 40 cuts spread over the file, every one refused, the model unchanged") {
        std::vector<char> bytes;
        {
            std::ifstream in(path, std::ios::binary);
            bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        }
        Net target(9);
        Adam<float> o(1e-3);
        TrainState s;
        const std::vector<float> before(target.parameters().begin(), target.parameters().end());
        int refused = 0;
        auto try_load = [&](const std::vector<char>& file_bytes) {
            std::ofstream(dir.file("bad.h5"), std::ios::binary | std::ios::trunc)
                .write(file_bytes.data(), std::streamsize(file_bytes.size()));
            try {
                load_checkpoint(dir.file("bad.h5"), target, o, s);
            } catch (const CheckpointError& e) {
                refused += std::string(e.what()).find(dir.file("bad.h5")) != std::string::npos;
            }
        };
        for (int k = 0; k < 64; ++k) {  // one bit each, from the header to the last byte
            std::vector<char> flipped = bytes;
            flipped[bytes.size() * std::size_t(k) / 64 + std::size_t(k % 7)] ^= char(1 << (k % 8));
            try_load(flipped);
        }
        for (int k = 0; k < 40; ++k) try_load(std::vector<char>(bytes.begin(), bytes.begin() + std::ptrdiff_t(bytes.size() * std::size_t(k) / 40)));
        CHECK(refused == 104);
        CHECK(std::equal(before.begin(), before.end(), target.parameters().begin()));
    }
    SECTION("not HDF5, missing") {
        std::ofstream(dir.file("g.h5")) << "garbage that is not HDF5";
        CHECK_THROWS_WITH(load_checkpoint(dir.file("g.h5"), net, opt, st),
                          Catch::Contains(dir.file("g.h5")) && Catch::Contains("no integrity record"));
        CHECK_THROWS_WITH(load_checkpoint(dir.file("none.h5"), net, opt, st), Catch::Contains("none.h5"));
    }
}

TEST_CASE("Hostile checkpoints are refused before libhdf5 reads what we did not expect", "[checkpoint]") {
    LIGHTUNET_REQUIRE_H5PY();
    test::ScratchDir dir("ckpt_hostile");
    Net net(1);
    Adam<float> opt(1e-3);
    const std::string path = dir.file("good.h5");
    save_checkpoint(path, net, opt, sample_state());
    // Each variant changes one object of a good checkpoint the way a corrupt or hostile file could.
    const std::string script = dir.file("hostile.py");
    std::ofstream(script) << R"(import h5py, numpy as np, shutil, sys, zlib
src, out = sys.argv[1], sys.argv[2]
def variant(name, edit):
    target = out + "/" + name + ".h5"
    shutil.copy(src, target)
    with h5py.File(target, "r+") as f:
        edit(f)
    if name != "unsealed":
        seal(target)
def seal(target):  # a crafted file carries a valid integrity record, as save_checkpoint writes it
    data = open(target, "rb").read()
    body = data[512:]
    record = ("lightunet-checkpoint-integrity bytes=%d crc32=%08x\n" % (len(body), zlib.crc32(body))).encode()
    open(target, "wb").write(record.ljust(512, b"\0") + body)
def replace_attr(obj, key, value, dtype=None):
    del obj.attrs[key]
    obj.attrs.create(key, value, dtype=dtype)
variant("version_string", lambda f: replace_attr(f, "version", "1"))
variant("config_fixed", lambda f: replace_attr(f, "config", np.bytes_(f.attrs["config"].encode())))
variant("epoch_array", lambda f: replace_attr(f["progress"], "epoch", np.array([1, 2, 3], dtype=np.int64)))
variant("fingerprint_float", lambda f: replace_attr(f, "config_fingerprint", 1.5))
vlen = h5py.vlen_dtype(np.float64)
def lr_vlen(f):
    del f["optimizer"].attrs["lr"]
    value = np.empty(1, dtype=object)
    value[0] = np.array([1.0, 2.0])
    f["optimizer"].attrs.create("lr", value, dtype=vlen)
variant("lr_vlen", lr_vlen)
def params_int(f):
    n = f["model/parameters"].shape[0]
    del f["model/parameters"]
    f["model"].create_dataset("parameters", data=np.zeros(n, dtype=np.int32))
variant("params_int", params_int)
def history_huge(f):
    del f["history/epoch"]
    f["history"].create_dataset("epoch", shape=(2**40,), dtype=np.int64, chunks=(1024,))
variant("history_huge", history_huge)
def rng_many(f):
    for i in range(1100):
        f["rng"].create_dataset("s%d" % i, data=np.zeros(1, dtype=np.uint64))
variant("rng_many", rng_many)
variant("unsealed", lambda f: replace_attr(f["progress"], "epoch", np.array([1, 2, 3], dtype=np.int64)))
)";
    REQUIRE(std::system((std::string(test::system_python()) + " " + script + " " + path + " " + dir.str()).c_str()) == 0);
    const std::vector<std::pair<std::string, std::string>> expected{
        {"version_string", "attribute 'version' is a string type, expected an integer type"},
        {"config_fixed", "attribute 'config' is not a variable-length string"},
        {"epoch_array", "attribute 'epoch' holds 3 values, expected 1"},
        {"fingerprint_float", "attribute 'config_fingerprint' is float64, expected an integer type"},
        {"lr_vlen", "attribute 'lr' is a variable-length type, expected a float type"},
        {"params_int", "dataset 'parameters': its type is int32, expected a float type"},
        {"history_huge", "dataset 'epoch' has shape (1099511627776), more than 1048576 elements"},
        {"rng_many", "/rng: group has 1103 members, at most 1024 expected"},  // 3 states + 1,100
        {"unsealed", "truncated or extended"},  // changed after save_checkpoint sealed it
    };
    for (const auto& [name, message] : expected) {
        INFO(name);
        const std::string file = dir.file(name + ".h5");
        Net fresh(2);
        Adam<float> o(1e-3);
        TrainState st;
        const std::vector<float> before(fresh.parameters().begin(), fresh.parameters().end());
        CHECK_THROWS_WITH(load_checkpoint(file, fresh, o, st), Catch::Contains(file) && Catch::Contains(message));
        CHECK(std::equal(before.begin(), before.end(), fresh.parameters().begin()));  // nothing changed
        if (name != "params_int" && name != "lr_vlen")  // what the info does not read
            CHECK_THROWS_WITH(read_checkpoint_info(file), Catch::Contains(message));
    }
}

TEST_CASE("CheckpointManager removes only the temporary files of dead writers", "[checkpoint]") {
    test::ScratchDir dir("ckpt_temporaries");
    // A writer that is alive (this process) and one that is gone (a child that has exited).
    const pid_t dead = ::fork();
    REQUIRE(dead >= 0);
    if (dead == 0) ::_exit(0);
    REQUIRE(::waitpid(dead, nullptr, 0) == dead);
    const std::string live_file = dir.file(".checkpoint-000000007.h5.tmp-" + std::to_string(::getpid()));
    const std::string dead_file = dir.file(".checkpoint-000000007.h5.tmp-" + std::to_string(dead));
    const std::string dead_best = dir.file(".best.h5.tmp-" + std::to_string(dead));
    const std::string other = dir.file(".notes.tmp-" + std::to_string(dead));  // not ours
    for (const auto& f : {live_file, dead_file, dead_best, other}) std::ofstream(f) << "partial";
    CheckpointManager manager(dir.str(), 2);
    CHECK(std::filesystem::exists(live_file));
    CHECK_FALSE(std::filesystem::exists(dead_file));
    CHECK_FALSE(std::filesystem::exists(dead_best));
    CHECK(std::filesystem::exists(other));
}

TEST_CASE("Checkpoints read with h5py as docs/checkpoint.md describes", "[checkpoint]") {
    LIGHTUNET_REQUIRE_H5PY();  // fails, with what to install, when /usr/bin/python3 has no h5py
    test::ScratchDir dir("ckpt_h5py");
    Net net(5);
    Adam<float> opt(1e-3);
    Tensor<float> x;
    Tensor<std::uint8_t> y;
    test::make_blobs(1, 0, 1, 16, x, y);
    net.train_step(x, y, DiceLoss{}, opt);
    const std::string path = dir.file("p.h5");
    save_checkpoint(path, net, opt, sample_state());
    const std::string script = dir.file("check.py");
    std::ofstream(script) << "import h5py, sys\n"
                             "f = h5py.File(sys.argv[1], 'r')\n"
                             "assert f.attrs['format'] == 'lightunet-checkpoint', f.attrs['format']\n"
                             "assert f['model/parameters'].shape == (" << Net::parameter_count << ",)\n"
                             "assert f['model/parameters'].dtype == 'float32'\n"
                             "assert abs(float(f['model/parameters'][3]) - " << net.parameters()[3] << ") < 1e-6 * (1 + abs(" << net.parameters()[3] << "))\n"
                             "assert f['optimizer/m'].shape == (" << Net::parameter_count << ",)\n"
                             "assert f['optimizer'].attrs['steps'] == 1\n"
                             "assert list(f['rng/loader'][:]) == [1, 2, 3]\n"
                             "assert f['history/dice'].shape == (2, 3)\n"
                             "assert f['progress'].attrs['global_step'] == 37\n"
                             "lines = f['model'].attrs['parameter_layout'].strip().split('\\n')\n"
                             "assert lines[0].startswith('encoder.0.conv1.weight [8,1,3,3] 0'), lines[0]\n"
                             "assert 'widths=8,16' in f.attrs['config']\n";
    CHECK(std::system((std::string(test::system_python()) + " " + script + " " + path).c_str()) == 0);
}

TEST_CASE("CheckpointManager keeps the last K and finds the newest", "[checkpoint]") {
    test::ScratchDir dir("ckpt_manager");
    Net net(1);
    Adam<float> opt(1e-3);
    CheckpointManager mgr(dir.str(), 2);
    TrainState s;
    for (long step : {5L, 10L, 15L}) {
        s.global_step = step;
        mgr.save(net, opt, s);
    }
    const auto files = mgr.rolling();
    REQUIRE(files.size() == 2);
    CHECK(files[0] == mgr.path_for(15));
    CHECK(files[1] == mgr.path_for(10));
    // A corrupt newest file is passed over.
    std::ofstream(mgr.path_for(20)) << "torn";
    CHECK(mgr.latest() == mgr.path_for(15));
    mgr.save_best(net, opt, s);
    CHECK(std::filesystem::exists(mgr.best_path()));
}

TEST_CASE("A kill during save leaves a loadable checkpoint", "[checkpoint]") {
    test::ScratchDir dir("ckpt_kill");
    Net net(1);
    Adam<float> opt(1e-3);
    Tensor<float> x;
    Tensor<std::uint8_t> y;
    test::make_blobs(1, 0, 1, 16, x, y);
    net.train_step(x, y, DiceLoss{}, opt);  // moments exist
    std::mt19937 gen(123);
    int checked = 0, torn = 0;
    // LIGHTUNET_KILL_ROUNDS=300 for the reliability table of docs/reliability.md.
    const int rounds = std::getenv("LIGHTUNET_KILL_ROUNDS") ? std::atoi(std::getenv("LIGHTUNET_KILL_ROUNDS")) : 6;
    for (int round = 0; round < rounds; ++round) {
        {
            CheckpointManager first(dir.str(), 2);  // first save happens before any kill
            TrainState s;
            s.global_step = round * 100000;
            std::fill(net.parameters().begin(), net.parameters().end(), float(s.global_step));
            first.save(net, opt, s);
        }
        const pid_t child = ::fork();
        REQUIRE(child >= 0);
        if (child == 0) {
            // Child: save forever, each checkpoint internally consistent (weights == step).
            try {
                CheckpointManager mgr(dir.str(), 2);
                TrainState s;
                for (long step = round * 100000 + 1;; ++step) {
                    s.global_step = step;
                    s.step = step;
                    std::fill(net.parameters().begin(), net.parameters().end(), float(step));
                    mgr.save(net, opt, s);
                }
            } catch (...) {
                ::_exit(3);
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 120)(gen)));
        ::kill(child, SIGKILL);
        int status = 0;
        ::waitpid(child, &status, 0);
        REQUIRE(WIFSIGNALED(status));
        for (const auto& entry : std::filesystem::directory_iterator(dir.str()))
            torn += entry.path().filename().string().find(".tmp-") != std::string::npos;  // killed mid-save
        CheckpointManager mgr(dir.str(), 2);
        const auto latest = mgr.latest();
        REQUIRE(latest);
        Net fresh(2);
        Adam<float> o(1e-3);
        TrainState s;
        load_checkpoint(*latest, fresh, o, s);
        CHECK(s.global_step >= round * 100000);
        CHECK(fresh.parameters()[0] == float(s.global_step));
        CHECK(fresh.parameters()[Net::parameter_count - 1] == float(s.global_step));
        // Every rolling file left behind loads.
        for (const auto& f : mgr.rolling()) CHECK_NOTHROW(load_checkpoint(f, fresh, o, s));
        ++checked;
    }
    CHECK(checked == rounds);
    std::printf("kills during saves: %d, of which mid-write (a temporary file left): %d; every one left a loadable checkpoint\n",
                checked, torn);
}

namespace {

// Loads a checkpoint main wrote before the op graph (tests/fixtures/legacy_checkpoints) and
// predicts on the input it predicted on; returns the largest difference to its probabilities.
template <UNetConfig C>
float legacy_difference(const char* name, Shape shape) {
    const auto dir = lightunet_test::source_dir() / "tests/fixtures/legacy_checkpoints";
    UNet<C> net(99);  // another seed: every weight must come from the file
    Adam<> adam(1e-2);
    TrainState state;
    load_checkpoint((dir / (std::string(name) + ".ckpt")).string(), net, adam, state);
    CHECK(state.epoch == 1);
    CHECK(adam.steps == 3);
    const Tensor<float>& p = net.predict(legacy_fixture::input(shape));
    std::vector<float> expected(p.size());
    std::ifstream in(dir / (std::string(name) + ".probs.f32"), std::ios::binary);
    in.read(reinterpret_cast<char*>(expected.data()), std::streamsize(expected.size() * sizeof(float)));
    REQUIRE(in.gcount() == std::streamsize(expected.size() * sizeof(float)));
    float worst = 0;
    for (std::size_t i = 0; i < expected.size(); ++i) worst = std::max(worst, std::abs(p.data()[i] - expected[i]));
    std::printf("checkpoint from before the op graph: %-10s largest probability difference %.3g\n", name, double(worst));
    return worst;
}

}  // namespace

// The fixtures were written with -march=native on a Zen 5 host: another ISA sums in another
// order, so the bound is a rounding one rather than bit equality (the same build compares equal).
TEST_CASE("Checkpoints from before the op graph load and predict the same", "[checkpoint]") {
    CHECK(legacy_difference<legacy_fixture::plain_2d>("plain_2d", legacy_fixture::plain_2d_shape) <= 1e-5f);
    CHECK(legacy_difference<legacy_fixture::strided_2d>("strided_2d", legacy_fixture::strided_2d_shape) <= 1e-5f);
    CHECK(legacy_difference<legacy_fixture::interp_3d>("interp_3d", legacy_fixture::interp_3d_shape) <= 1e-5f);
    CHECK(legacy_difference<legacy_fixture::batch_3d>("batch_3d", legacy_fixture::batch_3d_shape) <= 1e-5f);
}

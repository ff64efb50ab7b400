// libFuzzer target: arbitrary bytes as a training checkpoint, through read_checkpoint_info and
// load_checkpoint for a small 2D U-Net. Anything but a clean return or a CheckpointError is a
// finding. Inputs that start with an integrity record are sealed anew before reading (see
// below). The corpus (tests/fuzz/corpus/checkpoint) holds real checkpoints of this network,
// written by this file built as a program of its own:
//   c++ -std=c++20 -DLIGHTUNET_FUZZ_SEED_WRITER -Iinclude tests/fuzz/fuzz_checkpoint.cpp \
//       $(pkg-config --cflags --libs hdf5-serial) -o /tmp/seeds && /tmp/seeds tests/fuzz/corpus/checkpoint
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include <lightunet/model/unet.hpp>
#include <lightunet/optim/optimizers.hpp>
#include <lightunet/train/checkpoint.hpp>

namespace {
constexpr lightunet::UNetConfig kConfig{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8}};
using Net = lightunet::UNet<kConfig>;
}  // namespace

#ifndef LIGHTUNET_FUZZ_SEED_WRITER
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const std::filesystem::path file = [] {
        auto folder = std::filesystem::temp_directory_path() / ("lightunet-fuzz-checkpoint-" + std::to_string(::getpid()));
        std::filesystem::create_directories(folder);
        return folder / "checkpoint.h5";
    }();
    if (std::FILE* out = std::fopen(file.c_str(), "wb")) {
        std::fwrite(data, 1, size, out);
        std::fclose(out);
    }
    // An input that starts like a sealed checkpoint is sealed anew, so that mutations of its
    // HDF5 body reach the HDF5 reader behind the integrity check (which they would fail).
    const std::size_t magic = std::strlen(lightunet::train::detail::kIntegrityMagic);
    if (size >= lightunet::train::detail::kIntegrityBytes && std::memcmp(data, lightunet::train::detail::kIntegrityMagic, magic) == 0)
        lightunet::train::detail::write_integrity_record(file.string());
    static Net net(1);
    lightunet::Adam<float> optimizer(1e-3);
    lightunet::train::TrainState state;
    try {
        (void)lightunet::train::read_checkpoint_info(file.string());
    } catch (const lightunet::train::CheckpointError&) {
    }
    try {
        lightunet::train::load_checkpoint(file.string(), net, optimizer, state);
    } catch (const lightunet::train::CheckpointError&) {
    }
    std::filesystem::remove(file);
    return 0;
}
#else
// Seeds: a fresh network (no optimiser moments, no history), one after training steps with
// history and RNG states, and one of another optimiser (SGD), which the target refuses late.
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string folder = argv[1];
    using namespace lightunet;
    Net net(3);
    net.set_threads(1);
    Adam<float> adam(1e-3);
    train::TrainState state;
    train::save_checkpoint(folder + "/fresh.h5", net, adam, state);
    Tensor<float> x({2, 1, 1, 16, 16});
    Tensor<std::uint8_t> y({2, 1, 1, 16, 16});
    for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = float(i % 7) * 0.1f, y.data()[i] = std::uint8_t(i % 3 == 0);
    net.train_step(x, y, DiceLoss{}, adam);
    state.epoch = 2, state.step = 1, state.global_step = 9, state.best_dice = 0.5;
    state.rng = {{"loader", {1, 2, 3}}, {"augment", {4}}};
    train::EpochRecord record;
    record.epoch = 1, record.train_loss = 0.7, record.val_loss = 0.8, record.dice = {0.1, 0.2, 0.3};
    state.history = {record, record};
    train::save_checkpoint(folder + "/trained.h5", net, adam, state);
    Sgd<float> sgd(1e-2);
    net.train_step(x, y, DiceLoss{}, sgd);
    train::save_checkpoint(folder + "/sgd.h5", net, sgd, state);
    return 0;
}
#endif

// The preprocessed store: conversion from NIfTI and Kaggle folders, what it stores (crop,
// z-score inside the brain, labels, geometry), region reads (also from several threads), the
// way back to a prediction in the original geometry, skipping bad cases, and h5py's view.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <lightunet/data/loader.hpp>
#include <lightunet/io/store.hpp>

#include "../system_python.hpp"
#include "io_test_support.hpp"

using namespace lightunet;
using lightunet::test::ScratchDir;
namespace fs = std::filesystem;

namespace {

// The region `box` cut out of a loaded case by hand (zeros outside).
void cut(const data::Case& c, const data::Box& box, std::vector<float>& images, std::vector<std::uint8_t>& labels) {
    const data::VolumeExtent out = box.extent();
    images.assign(4 * out.voxels(), 0.0f);
    labels.assign(out.voxels(), 0);
    for (int z = box.begin[2]; z < box.end[2]; ++z)
        for (int y = box.begin[1]; y < box.end[1]; ++y)
            for (int x = box.begin[0]; x < box.end[0]; ++x) {
                if (x < 0 || y < 0 || z < 0 || x >= c.extent.x || y >= c.extent.y || z >= c.extent.z) continue;
                const std::size_t i = (std::size_t(z) * c.extent.y + y) * c.extent.x + x;
                const std::size_t o = (std::size_t(z - box.begin[2]) * out.y + (y - box.begin[1])) * out.x + (x - box.begin[0]);
                for (int m = 0; m < 4; ++m) images[m * out.voxels() + o] = c.image(m)[i];
                if (c.has_labels()) labels[o] = c.labels[i];
            }
}

}  // namespace

TEST_CASE("Store from NIfTI cases: crop, z-score, labels, geometry, regions, prediction", "[io][store]") {
    ScratchDir dir("store-nifti");
    data::Case a = test::make_test_case("Brats18_A_1", {24, 20, 16}, 1);
    data::Case b = test::make_test_case("BraTS-GLI-00002-000", {22, 21, 15}, 2, true, 1000);
    data::Case unlabelled = test::make_test_case("BraTS-GLI-00003-000", {18, 19, 12}, 3, false);
    io::write_case(dir / "in" / a.id, a, io::Naming::brats2018);
    io::write_case(dir / "in" / b.id, b, io::Naming::brats2023);
    io::WriteOptions uncompressed;
    uncompressed.compress = false;
    io::write_case(dir / "in" / unlabelled.id, unlabelled, io::Naming::brats2023, uncompressed);

    io::ConvertOptions options;
    options.store.chunk = {8, 8, 4};
    options.store.max_foreground_per_class = 5;
    std::size_t progress_calls = 0;
    options.progress = [&](const std::string&, std::size_t, std::size_t total) { progress_calls += total == 3; };
    const io::ConvertReport report = io::convert_to_store(dir / "in", dir / "store.h5", options);
    REQUIRE(report.converted.size() == 3);
    REQUIRE(report.skipped.empty());
    REQUIRE(progress_calls == 3);
    REQUIRE_FALSE(fs::exists(dir / "store.h5.partial"));

    const io::StoreSource store(dir / "store.h5");
    REQUIRE(store.size() == 3);
    REQUIRE(store.skipped_cases().empty());
    const std::vector<const data::Case*> originals{&b, &unlabelled, &a};  // stored by id
    for (std::size_t index = 0; index < 3; ++index) {
        const data::Case& original = *originals[index];
        INFO(original.id);
        REQUIRE(store.id(index) == original.id);
        const io::StoredCaseInfo& info = store.info(index);
        // make_test_case's brain: x in [2, X-2), y in [3, Y-1), z in [1, Z-2); tumour inside.
        REQUIRE(info.crop.begin == std::array<int, 3>{2, 3, 1});
        REQUIRE(info.crop.end == std::array<int, 3>{original.extent.x - 2, original.extent.y - 1, original.extent.z - 2});
        REQUIRE(store.extent(index) == info.crop.extent());
        REQUIRE(info.geometry.extent == original.extent);
        REQUIRE(info.geometry.sform == original.geometry.sform);
        REQUIRE(info.geometry.qform_code == 1);
        REQUIRE(info.edition == (index == 2 ? data::Edition::brats2017_2021 : data::Edition::brats2023));
        REQUIRE(info.source_files.size() == (original.has_labels() ? 5u : 4u));
        REQUIRE(store.has_labels(index) == original.has_labels());

        const data::Case loaded = store.load(index);
        REQUIRE(loaded.crop.begin == info.crop.begin);
        const std::size_t n = loaded.extent.voxels();
        for (int m = 0; m < 4; ++m) {
            // Every stored voxel is brain here: mean 0, std 1, and an affine image of the source.
            double sum = 0, squares = 0;
            for (std::size_t i = 0; i < n; ++i) sum += loaded.image(m)[i];
            for (std::size_t i = 0; i < n; ++i) squares += loaded.image(m)[i] * double(loaded.image(m)[i]);
            REQUIRE(sum / n == Approx(0).margin(1e-5));
            REQUIRE(squares / n == Approx(1).epsilon(1e-4));
            const int x = 5, y = 6, z = 4;
            const float source = original.image(m)[(std::size_t(z) * original.extent.y + y) * original.extent.x + x];
            const float stored = loaded.image(m)[(std::size_t(z - 1) * loaded.extent.y + (y - 3)) * loaded.extent.x + (x - 2)];
            REQUIRE(stored == Approx((source - info.brain_mean[m]) / info.brain_std[m]).margin(1e-4));
        }
        if (!original.has_labels()) {
            REQUIRE(store.foreground(index).empty());
            REQUIRE_FALSE(store.foreground_voxel(index, 12345).has_value());
            continue;
        }
        // Labels: the original's, cropped; the prediction written back equals the source seg.
        std::array<std::int64_t, 4> counts{};
        for (std::uint8_t k : loaded.labels) ++counts[k];
        REQUIRE(counts == info.class_voxels);
        const fs::path written = io::write_prediction(dir / "pred", loaded, loaded.labels,
                                                      index == 2 ? io::Naming::brats2018 : io::Naming::brats2023);
        const io::NiftiVolume seg = io::read_nifti(written);
        REQUIRE(seg.geometry.sform == original.geometry.sform);
        REQUIRE(data::LabelMap::for_edition(info.edition).apply(seg.values.data(), seg.values.size(), written.string()) == original.labels);
        // Foreground: subsampled to at most 5 + rounding per class, every entry of its class.
        const auto foreground = store.foreground(index);
        std::array<int, 4> per_class{};
        for (const auto& v : foreground) {
            const std::uint8_t k = loaded.labels[(std::size_t(v[2]) * loaded.extent.y + v[1]) * loaded.extent.x + v[0]];
            REQUIRE(k != 0);
            ++per_class[k];
        }
        for (int k = 1; k < 4; ++k) {
            REQUIRE(per_class[k] > 0);
            REQUIRE(per_class[k] <= 5);
        }
        // One voxel by a draw reads one row: the same voxel as picking from the whole list.
        for (std::uint64_t draw : {std::uint64_t(0), std::uint64_t(1) << 63, ~std::uint64_t(0), std::uint64_t(0x9e3779b97f4a7c15)})
            REQUIRE(store.foreground_voxel(index, draw) == foreground[data::pick(draw, foreground.size())]);
        for (std::size_t row = 0; row < foreground.size(); ++row) {
            // The smallest draw that picks `row`: every row is reachable.
            const std::uint64_t draw = std::uint64_t((((unsigned __int128)row << 64) + foreground.size() - 1) / foreground.size());
            REQUIRE(store.foreground_voxel(index, draw) == foreground[row]);
        }
        // Region reads, inside, straddling the border and fully outside.
        std::mt19937 random{unsigned(index)};
        for (int trial = 0; trial < 20; ++trial) {
            data::Box box;
            for (int d = 0; d < 3; ++d) {
                const int limit = d == 0 ? loaded.extent.x : d == 1 ? loaded.extent.y : loaded.extent.z;
                box.begin[d] = std::uniform_int_distribution<int>(-6, limit + 2)(random);
                box.end[d] = box.begin[d] + std::uniform_int_distribution<int>(1, 12)(random);
            }
            std::vector<float> expected_images, images(4 * box.extent().voxels(), -7.0f);
            std::vector<std::uint8_t> expected_labels, labels(box.extent().voxels(), 9);
            cut(loaded, box, expected_images, expected_labels);
            store.read(index, box, images.data(), labels.data());
            REQUIRE(images == expected_images);
            REQUIRE(labels == expected_labels);
        }
    }

    SECTION("reads from several threads at once") {
        const data::Case reference = store.load(2);
        std::vector<std::thread> threads;
        std::atomic<int> mismatches{0};
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&, t] {
                for (int trial = 0; trial < 25; ++trial) {
                    data::Box box;
                    box.begin = {trial % 5 + t, trial % 7, trial % 3};
                    box.end = {box.begin[0] + 9, box.begin[1] + 8, box.begin[2] + 5};
                    std::vector<float> expected_images, images(4 * box.extent().voxels());
                    std::vector<std::uint8_t> expected_labels, labels(box.extent().voxels());
                    cut(reference, box, expected_images, expected_labels);
                    store.read(2, box, images.data(), labels.data());
                    if (images != expected_images || labels != expected_labels) ++mismatches;
                }
            });
        for (auto& thread : threads) thread.join();
        REQUIRE(mismatches == 0);
    }

    SECTION("h5py reads the documented schema") {
        LIGHTUNET_REQUIRE_H5PY();  // fails, with what to install, when /usr/bin/python3 has no h5py
        const fs::path script = dir / "check.py";
        std::ofstream(script) << R"(import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f.attrs["format"] == "lightunet-store", f.attrs["format"]
assert int(f.attrs["version"]) == 1
assert list(f.attrs["skipped_cases"]) == []
out = []
for name in sorted(f["cases"]):
    g = f["cases"][name]
    img = g["images"]
    assert img.dtype == np.float32 and img.ndim == 4 and img.shape[0] == 4
    assert img.compression == "gzip" and img.shuffle and img.chunks[0] == 1
    b, e = g.attrs["crop_begin"], g.attrs["crop_end"]
    assert tuple(img.shape[1:]) == (e[2] - b[2], e[1] - b[1], e[0] - b[0])
    assert g.attrs["sform"].shape == (3, 4)
    assert g.attrs["edition"] in ("brats2017-2021", "brats2023")
    line = [name, "%.6f" % float(np.asarray(img[:, 1:4, 2:6, 3:9], dtype=np.float64).sum())]
    if "labels" in g:
        lab = g["labels"]
        assert lab.dtype == np.uint8 and lab.shape == img.shape[1:]
        assert int(g.attrs["class_voxels"].sum()) == lab.size
        assert g["foreground_3"].shape[1] == 3
        line.append(str(int(lab[...].astype(np.int64).sum())))
    out.append(" ".join(line))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
)";
        const fs::path result = dir / "result.txt";
        const std::string command = std::string(test::system_python()) + " " + script.string() + " " +
                                    (dir / "store.h5").string() + " " + result.string();
        REQUIRE(std::system(command.c_str()) == 0);
        std::ifstream in(result);
        for (std::size_t index = 0; index < 3; ++index) {
            std::string line;
            REQUIRE(std::getline(in, line));
            std::istringstream fields(line);
            std::string name;
            double patch_sum = 0;
            fields >> name >> patch_sum;
            REQUIRE(name == store.id(index));
            data::Box box;
            box.begin = {3, 2, 1};
            box.end = {9, 6, 4};
            std::vector<float> images(4 * box.extent().voxels());
            store.read(index, box, images.data(), nullptr);
            double sum = 0;
            for (float v : images) sum += v;
            REQUIRE(patch_sum == Approx(sum).margin(1e-3));
            if (store.has_labels(index)) {
                long long label_sum = -1;
                fields >> label_sum;
                const data::Case loaded = store.load(index);
                long long expected = 0;
                for (std::uint8_t k : loaded.labels) expected += k;
                REQUIRE(label_sum == expected);
            }
        }
    }
}

TEST_CASE("Store conversion: bad cases raise, or are skipped and listed", "[io][store][bad]") {
    ScratchDir dir("store-bad");
    const data::Case good = test::make_test_case("Brats18_GOOD_1", {16, 14, 10}, 4);
    const data::Case bad = test::make_test_case("Brats18_BAD_1", {16, 14, 10}, 5);
    io::write_case(dir / "in" / "good", good, io::Naming::brats2018);
    const io::CaseFiles bad_files = io::write_case(dir / "in" / "bad", bad, io::Naming::brats2018);
    fs::remove(bad_files.images[3]);  // no flair

    {  // without skipping, the bad case stops the conversion
        try {
            io::convert_to_store(dir / "in", dir / "store.h5");
            FAIL("a case without flair was converted");
        } catch (const data::DataError& error) {
            CHECK(std::string(error.what()).find("Brats18_BAD_1_flair.nii") != std::string::npos);
        }
        REQUIRE_FALSE(fs::exists(dir / "store.h5"));
        REQUIRE_FALSE(fs::exists(dir / "store.h5.partial"));
    }
    io::ConvertOptions options;
    options.skip_bad_cases = true;
    const io::ConvertReport report = io::convert_to_store(dir / "in", dir / "store.h5", options);
    REQUIRE(report.converted == std::vector<std::string>{"Brats18_GOOD_1"});
    REQUIRE(report.skipped.size() == 1);
    REQUIRE(report.skipped[0].first == "Brats18_BAD_1");
    REQUIRE(report.skipped[0].second.find("missing modality flair") != std::string::npos);
    const io::StoreSource store(dir / "store.h5");
    REQUIRE(store.size() == 1);
    REQUIRE(store.skipped_cases().size() == 1);
    REQUIRE(store.skipped_cases()[0].find("Brats18_BAD_1: ") == 0);

    fs::create_directories(dir / "empty");
    REQUIRE_THROWS_WITH(io::convert_to_store(dir / "empty", dir / "e.h5"), Catch::Contains("empty") && Catch::Contains("no BraTS"));
    fs::create_directories(dir / "allbad");
    fs::copy(dir / "in" / "bad", dir / "allbad");
    REQUIRE_THROWS_WITH(io::convert_to_store(dir / "allbad", dir / "b.h5", options), Catch::Contains("no case could be converted"));
    REQUIRE_THROWS_WITH(io::StoreSource(dir / "absent.h5"), Catch::Contains("absent.h5"));
    test::write_bytes(dir / "junk.h5", std::vector<char>(64, 'j'));
    REQUIRE_THROWS_WITH(io::StoreSource(dir / "junk.h5"), Catch::Contains("junk.h5") && Catch::Contains("not an HDF5 file"));
}

TEST_CASE("Store from a Kaggle slice folder", "[io][store][kaggle]") {
    ScratchDir dir("store-kaggle");
    data::Case volume = test::make_test_case("v", {30, 28, 8}, 6);
    io::write_kaggle_volume(dir / "slices", volume, 5);
    io::ConvertOptions options;
    options.kaggle.depth = 8;
    options.kaggle.read.verify_channel_order = false;  // test intensities carry no MR contrast
    const io::ConvertReport report = io::convert_to_store(dir / "slices", dir / "store.h5", options);
    REQUIRE(report.converted == std::vector<std::string>{"volume_5"});
    const io::StoreSource store(dir / "store.h5");
    REQUIRE(store.size() == 1);
    // The brain box of make_test_case survives the per-slice z-scoring (background constant).
    REQUIRE(store.info(0).crop.begin == std::array<int, 3>{2, 3, 1});
    REQUIRE(store.info(0).crop.end == std::array<int, 3>{28, 27, 6});
    const data::Case loaded = store.load(0);
    for (int z = 0; z < loaded.extent.z; ++z)
        for (int y = 0; y < loaded.extent.y; ++y)
            for (int x = 0; x < loaded.extent.x; ++x)
                REQUIRE(loaded.labels[(std::size_t(z) * loaded.extent.y + y) * loaded.extent.x + x] ==
                        volume.labels[(std::size_t(z + 1) * 28 + (y + 3)) * 30 + (x + 2)]);
}

TEST_CASE("Store from Kaggle folders that keep only some slices of each volume", "[io][store][kaggle][partial]") {
    ScratchDir dir("store-kaggle-partial");
    const data::Case volume = test::make_test_case("v", {30, 28, 12}, 6);  // brain z 1..10
    io::write_kaggle_volume(dir / "slices", volume, 5);
    io::write_kaggle_volume(dir / "slices", volume, 6);
    io::write_kaggle_volume(dir / "slices", volume, 7);
    for (int z : {0, 1, 5, 6, 8, 10, 11}) fs::remove(dir / "slices" / ("volume_5_slice_" + std::to_string(z) + ".h5"));
    for (int z = 0; z < 12; ++z)
        if (z != 4) fs::remove(dir / "slices" / ("volume_6_slice_" + std::to_string(z) + ".h5"));
    io::ConvertOptions options;
    options.kaggle.depth = 12;
    options.kaggle.read.verify_channel_order = false;  // test intensities carry no MR contrast
    const io::ConvertReport report = io::convert_to_store(dir / "slices", dir / "store.h5", options);
    REQUIRE(report.converted == std::vector<std::string>{"volume_5", "volume_6", "volume_7"});
    REQUIRE(report.partial == std::vector<std::string>{"volume_5: 5 of 12 slices (2-4, 7, 9)", "volume_6: 1 of 12 slices (4)"});

    const io::StoreSource store(dir / "store.h5");
    // volume_5: the crop spans slices 2..9 (brain in the present slices only): runs 0-2, 5, 7.
    REQUIRE(store.info(0).crop.begin[2] == 2);
    REQUIRE(store.info(0).crop.end[2] == 10);
    REQUIRE(store.present_slices(0) == std::vector<data::SliceRange>{{0, 3}, {5, 6}, {7, 8}});
    REQUIRE(store.present_slices(1) == std::vector<data::SliceRange>{{0, 1}});
    REQUIRE(store.info(1).extent.z == 1);
    REQUIRE(store.present_slices(2).empty());  // a whole volume: nothing recorded, as before
    const data::Case loaded = store.load(0);
    REQUIRE(loaded.present_slices == store.info(0).present_slices);
    const std::size_t plane = std::size_t(loaded.extent.x) * loaded.extent.y;
    for (int z : {3, 4, 6}) {  // slices 5, 6, 8 are absent: zero images, background
        for (int m = 0; m < 4; ++m)
            REQUIRE(std::all_of(loaded.image(m) + z * plane, loaded.image(m) + (z + 1) * plane, [](float v) { return v == 0.0f; }));
        REQUIRE(std::all_of(loaded.labels.begin() + std::ptrdiff_t(z * plane), loaded.labels.begin() + std::ptrdiff_t((z + 1) * plane),
                            [](std::uint8_t k) { return k == 0; }));
    }
    for (int z : {0, 1, 2, 5, 7}) {  // present slices keep their labels
        const int original = z + 2;
        for (int y = 0; y < loaded.extent.y; ++y)
            for (int x = 0; x < loaded.extent.x; ++x)
                REQUIRE(loaded.labels[(std::size_t(z) * loaded.extent.y + y) * loaded.extent.x + x] ==
                        volume.labels[(std::size_t(original) * 28 + (y + store.info(0).crop.begin[1])) * 30 + (x + store.info(0).crop.begin[0])]);
    }
    {  // the attribute, as h5py users read it: runs in the volume's own slice numbers
        io::detail::H5Lock lock;
        io::detail::H5Handle file = io::detail::open_hdf5_read(dir / "store.h5");
        io::detail::H5Handle group = io::detail::open_group(file.get(), "cases/volume_5", "store");
        REQUIRE(io::detail::read_attribute<std::int32_t>(group.get(), "present_slices", 6, "store") ==
                std::vector<std::int32_t>{2, 5, 7, 8, 9, 10});
    }

    auto loader_config = [](int depth) {
        data::LoaderConfig config;
        config.patch = {depth, 16, 16};
        config.batch = 4;
        config.workers = 0;
        return config;
    };
    // (case, first slice) of every patch in 30 batches.
    auto drawn = [](data::PatchLoader& loader) {
        std::set<std::pair<std::size_t, int>> seen;
        data::Batch b;
        for (int k = 0; k < 30; ++k) {
            loader.next(b);
            for (std::size_t item = 0; item < b.cases.size(); ++item) seen.insert({b.cases[item], b.boxes[item].begin[2]});
        }
        return seen;
    };
    SECTION("2D training draws only the present slices") {
        data::PatchLoader loader(store, loader_config(1));
        const std::set<std::pair<std::size_t, int>> seen = drawn(loader);
        for (const auto& [index, z] : seen) {
            const auto runs = index == 2 ? std::vector<data::SliceRange>{{0, store.info(2).extent.z}} : store.present_slices(index);
            REQUIRE(std::any_of(runs.begin(), runs.end(), [z = z](const data::SliceRange& r) { return z >= r.begin && z < r.end; }));
        }
        REQUIRE(seen.count({0, 5}) == 1);
        REQUIRE(seen.count({1, 0}) == 1);
    }
    SECTION("3D patches only inside runs: the one-slice volume is left out, not padded") {
        data::PatchLoader loader(store, loader_config(2));
        REQUIRE(loader.left_out().size() == 1);
        CHECK_THAT(loader.left_out()[0].second, Catch::Contains("'volume_6' holds 1 of its slices, 1 contiguous at most, no run of 2"));
        for (const auto& [index, z] : drawn(loader)) {
            REQUIRE(index != 1);
            if (index == 0) REQUIRE(z <= 1);  // inside run 0-2 of volume_5
        }
    }
    SECTION("a hostile present_slices attribute is refused, naming it") {
        for (const std::vector<std::int32_t>& bad : {std::vector<std::int32_t>{2, 5, 4, 8}, std::vector<std::int32_t>{2, 5, 7},
                                                     std::vector<std::int32_t>{-1, 3}, std::vector<std::int32_t>{3, 200}}) {
            fs::copy_file(dir / "store.h5", dir / "hostile.h5", fs::copy_options::overwrite_existing);
            {
                io::detail::H5Lock lock;
                io::detail::H5Handle file(H5Fopen((dir / "hostile.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose, "hostile");
                io::detail::H5Handle group = io::detail::open_group(file.get(), "cases/volume_5", "hostile");
                REQUIRE(H5Adelete(group.get(), "present_slices") >= 0);
                io::detail::write_attribute<std::int32_t>(group.get(), "present_slices", bad, "hostile");
            }
            REQUIRE_THROWS_WITH(io::StoreSource(dir / "hostile.h5"),
                                Catch::Contains("hostile.h5: /cases/volume_5") && Catch::Contains("present_slices"));
        }
    }
}

TEST_CASE("Store from the real Kaggle slices: every volume partial, converted, and drawn from", "[io][store][kaggle][real]") {
    const fs::path folder = test::shared_data_dir() / "kaggle-brats2020-h5";
    if (!fs::is_directory(folder)) LIGHTUNET_SKIP("shared data folder absent: " << folder.string());
    ScratchDir dir("store-kaggle-real");
    std::vector<std::string> warnings;
    io::ConvertOptions options;
    options.warning = [&](const std::string& text) { warnings.push_back(text); };
    const io::ConvertReport report = io::convert_to_store(folder, dir / "real.h5", options);  // the channel order judged
    REQUIRE(report.converted.size() == 22);
    REQUIRE(report.partial.size() == 22);  // 1 or 2 of 155 slices each: refused before
    CHECK(warnings.empty());
    CHECK(report.channel_votes == "T2/CSF test 22 of 22 volumes agree, T1ce/enhancing test 14 of 14 volumes agree, "
                                  "FLAIR/edema test 19 of 19 volumes agree");
    const io::StoreSource store(dir / "real.h5");
    const auto volume_47 = std::find_if(report.partial.begin(), report.partial.end(),
                                        [](const std::string& p) { return p.rfind("volume_47:", 0) == 0; });
    REQUIRE(volume_47 != report.partial.end());
    CHECK(*volume_47 == "volume_47: 2 of 155 slices (71, 124)");
    std::size_t slices = 0;
    for (std::size_t i = 0; i < store.size(); ++i)
        for (const data::SliceRange& r : store.present_slices(i)) slices += std::size_t(r.size());
    REQUIRE(slices == 28);  // every real slice, and nothing else, is data
}

TEST_CASE("A case prepared for prediction: the store's crop and z-score, labels kept out of the crop, and back",
          "[io][store][predict]") {
    data::Case c = test::make_test_case("p", {30, 28, 8}, 6);  // brain x 2..27, y 3..26, z 1..5
    c.labels[0] = 2;  // a label outside the brain must not widen the crop
    const data::Case prepared = io::prepare_for_prediction(c);
    REQUIRE(prepared.crop.begin == std::array<int, 3>{2, 3, 1});
    REQUIRE(prepared.crop.end == std::array<int, 3>{28, 27, 6});
    REQUIRE(prepared.extent == data::VolumeExtent{26, 24, 5});
    // Every prepared voxel is brain here: each modality has mean 0 and std 1 over it.
    for (int m = 0; m < 4; ++m) {
        const float* v = prepared.image(m);
        double sum = 0, squares = 0;
        for (std::size_t i = 0; i < prepared.extent.voxels(); ++i) sum += v[i], squares += double(v[i]) * v[i];
        const double mean = sum / double(prepared.extent.voxels());
        REQUIRE(mean == Approx(0.0).margin(1e-5));
        REQUIRE(squares / double(prepared.extent.voxels()) - mean * mean == Approx(1.0).epsilon(1e-4));
    }
    for (int z = 0; z < 5; ++z)
        for (int y = 0; y < 24; ++y)
            for (int x = 0; x < 26; ++x)
                REQUIRE(prepared.labels[(std::size_t(z) * 24 + y) * 26 + x] == c.labels[(std::size_t(z + 1) * 28 + (y + 3)) * 30 + (x + 2)]);
    std::vector<std::uint8_t> expected = c.labels;
    expected[0] = 0;  // outside the crop: background
    REQUIRE(io::uncrop_labels(prepared, prepared.labels, c.extent) == expected);
    REQUIRE_THROWS_WITH(io::uncrop_labels(prepared, std::vector<std::uint8_t>(7), c.extent), Catch::Contains("case p has 3120 voxels"));
    REQUIRE_THROWS_WITH(io::uncrop_labels(prepared, prepared.labels, {20, 28, 8}), Catch::Contains("does not lie in the extent 20x28x8"));
    data::Case reshaped = prepared;
    reshaped.crop.end[0] -= 1;  // a box one column narrower than the prepared labels
    REQUIRE_THROWS_WITH(io::uncrop_labels(reshaped, prepared.labels, c.extent), Catch::Contains("crop box does not match its extent"));

    SECTION("Kaggle slices: the per-slice background, with an absent slice") {
        ScratchDir dir("prepare-kaggle");
        io::write_kaggle_volume(dir / "slices", c, 4);
        fs::remove(dir / "slices" / "volume_4_slice_3.h5");
        io::KaggleVolumeOptions options;
        options.depth = 8;
        options.missing = io::MissingSlices::fill_background;
        options.read.verify_channel_order = false;
        const io::KaggleVolume v = io::read_kaggle_volume(dir / "slices", 4, options);
        const std::vector<float> background = io::kaggle_slice_background(v.case_data);
        const data::Case from_slices = io::prepare_for_prediction(v.case_data, &background);
        REQUIRE(from_slices.crop.begin == std::array<int, 3>{2, 3, 1});
        REQUIRE(from_slices.crop.end == std::array<int, 3>{28, 27, 6});
        // The absent slice (z = 3, local 2) is background: zero after the z-score.
        const std::size_t plane = 26 * 24;
        for (int m = 0; m < 4; ++m)
            for (std::size_t i = 0; i < plane; ++i) REQUIRE(from_slices.image(m)[2 * plane + i] == 0.0f);
    }
}

TEST_CASE("Store from the real BraTS cases keeps their geometry", "[io][store][real]") {
    const fs::path root = test::shared_data_dir();
    if (!fs::is_directory(root / "brats2018")) LIGHTUNET_SKIP("shared data folder absent: " << root.string());
    ScratchDir dir("store-real");
    // Two real cases (the int16-seg one with labels outside the brain mask, and one more) plus the
    // unlabelled 2023 case.
    for (const char* id : {"Brats18_2013_3_1", "Brats18_TCIA10_628_1"})
        fs::create_directory_symlink(root / "brats2018" / id, dir / id);
    fs::create_directory_symlink(root / "brats2023" / "BraTS-GLI-00001-000", dir / "BraTS-GLI-00001-000");
    // find_cases follows folders, not symlinks to them: link the files instead.
    fs::create_directories(dir / "in");
    for (const auto& entry : fs::directory_iterator(dir.path()))
        if (fs::is_symlink(entry.path()))
            for (const auto& file : fs::directory_iterator(entry.path())) fs::create_symlink(file.path(), dir / "in" / file.path().filename());
    const io::ConvertReport report = io::convert_to_store(dir / "in", dir / "real.h5");
    REQUIRE(report.converted.size() == 3);
    const io::StoreSource store(dir / "real.h5");
    for (std::size_t index = 0; index < store.size(); ++index) {
        const io::StoredCaseInfo& info = store.info(index);
        INFO(info.id);
        REQUIRE(info.geometry.extent == data::VolumeExtent{240, 240, 155});
        REQUIRE(info.geometry.sform[1][3] == 239);
        REQUIRE(info.extent.x < 200);  // cropped to the brain
        REQUIRE(info.extent.x > 100);
        REQUIRE(info.has_labels == (info.id != "BraTS-GLI-00001-000"));
        if (info.has_labels) {
            const io::CaseFiles files = io::case_files(root / "brats2018" / info.id);
            const data::Case original = io::read_case(files);
            std::array<std::int64_t, 4> counts{};
            for (std::uint8_t k : original.labels) ++counts[k];
            REQUIRE(info.class_voxels[1] == counts[1]);  // no tumour voxel cropped away
            REQUIRE(info.class_voxels[2] == counts[2]);
            REQUIRE(info.class_voxels[3] == counts[3]);
        }
    }
}

TEST_CASE("A converted store is reused only while its folder and settings are unchanged", "[io][store][reuse]") {
    ScratchDir dir("store-reuse");
    const data::Case a = test::make_test_case("Brats18_A_1", {16, 14, 10}, 11);
    const data::Case b = test::make_test_case("Brats18_B_1", {16, 14, 10}, 12);
    const io::CaseFiles a_files = io::write_case(dir / "in" / a.id, a, io::Naming::brats2018);
    const fs::path store = dir / "store.h5";
    io::ConvertOptions options;
    CHECK_THAT(io::store_reuse_problem(store, dir / "in", options), Catch::Contains("no store"));
    io::convert_to_store(dir / "in", store, options);
    CHECK(io::store_reuse_problem(store, dir / "in", options).empty());
    // The manifest names every input file with its size.
    const std::string manifest = io::StoreSource(store).source_manifest();
    CHECK_THAT(manifest, Catch::Contains("Brats18_A_1/Brats18_A_1_flair.nii.gz\t" + std::to_string(fs::file_size(a_files.images[3]))));
    CHECK_THAT(manifest, Catch::Contains("Brats18_A_1/Brats18_A_1_seg.nii.gz"));

    io::ConvertOptions other = options;
    other.skip_bad_cases = true;
    CHECK_THAT(io::store_reuse_problem(store, dir / "in", other), Catch::Contains("conversion settings differ") && Catch::Contains("skip_bad=1"));
    other = options;
    other.store.margin = 2;
    CHECK_THAT(io::store_reuse_problem(store, dir / "in", other), Catch::Contains("margin=2"));

    // A rewritten file: same size, only its modification time moves.
    fs::last_write_time(a_files.labels, fs::last_write_time(a_files.labels) + std::chrono::seconds(3));
    CHECK_THAT(io::store_reuse_problem(store, dir / "in", options), Catch::Equals("1 file rewritten (Brats18_A_1/Brats18_A_1_seg.nii.gz)"));
    io::convert_to_store(dir / "in", store, options);
    CHECK(io::store_reuse_problem(store, dir / "in", options).empty());

    io::write_case(dir / "in" / b.id, b, io::Naming::brats2018);
    CHECK_THAT(io::store_reuse_problem(store, dir / "in", options), Catch::StartsWith("5 files added (Brats18_B_1/"));
    io::convert_to_store(dir / "in", store, options);
    CHECK(io::store_reuse_problem(store, dir / "in", options).empty());
    fs::remove_all(dir / "in" / b.id);
    CHECK_THAT(io::store_reuse_problem(store, dir / "in", options), Catch::StartsWith("5 files removed (Brats18_B_1/"));

    // A store written case by case records no folder, and an unreadable one is not reused.
    {
        io::StoreWriter writer(dir / "by_hand.h5");
        writer.add(a, data::Edition::brats2017_2021, {});
        writer.finish();
    }
    CHECK_THAT(io::store_reuse_problem(dir / "by_hand.h5", dir / "in", options), Catch::Contains("no source manifest"));
    test::write_bytes(dir / "torn.h5", std::vector<char>(64, 't'));
    CHECK_THAT(io::store_reuse_problem(dir / "torn.h5", dir / "in", options), Catch::Contains("unreadable") && Catch::Contains("torn.h5"));
}

TEST_CASE("A truncated store is refused or reads exactly what was stored, never something else", "[io][store][bad]") {
    ScratchDir dir("store-truncated");
    const data::Case a = test::make_test_case("Brats18_A_1", {24, 20, 16}, 21);
    io::write_case(dir / "in" / a.id, a, io::Naming::brats2018);
    io::convert_to_store(dir / "in", dir / "store.h5");
    const data::Case whole = io::StoreSource(dir / "store.h5").load(0);
    const std::uintmax_t size = fs::file_size(dir / "store.h5");
    int refused = 0, intact = 0;
    for (int step = 0; step < 40; ++step) {
        const std::uintmax_t cut = step == 0 ? 0 : size * std::uintmax_t(step) / 40;
        const fs::path file = dir / ("cut_" + std::to_string(cut) + ".h5");
        fs::copy_file(dir / "store.h5", file);
        fs::resize_file(file, cut);
        INFO("truncated to " << cut << " of " << size << " bytes");
        try {
            const io::StoreSource store(file);
            const data::Case loaded = store.load(0);
            (void)store.source_manifest();
            CHECK(loaded.images == whole.images);
            CHECK(loaded.labels == whole.labels);
            ++intact;
        } catch (const data::DataError& error) {
            CHECK_THAT(error.what(), Catch::Contains(file.filename().string()));
            ++refused;
        }
    }
    CHECK(refused + intact == 40);
    CHECK(refused >= 39);  // only the whole file (and a cut in trailing free space) reads
}

// Kaggle BraTS2020 HDF5 slices: real files with their measured facts (layout, z-scoring, channel
// order by intensities), writer/reader round trip in exactly that layout, CSV, bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>

#include <lightunet/io/kaggle_h5.hpp>

#include "io_test_support.hpp"

using namespace lightunet;
using lightunet::test::ScratchDir;
namespace fs = std::filesystem;

namespace {

using test::require_data_error;

// Storage layout of one dataset as HDF5 reports it.
struct Layout {
    std::vector<hsize_t> dims, chunk;
    std::string type;
    std::vector<int> filters;
    std::vector<unsigned> gzip_level;
    int attributes = 0;
    bool operator==(const Layout&) const = default;
};

Layout dataset_layout(const fs::path& file, const std::string& dataset_name) {
    io::detail::H5Lock lock;
    io::detail::H5Handle h5 = io::detail::open_hdf5_read(file);
    io::detail::H5Handle dataset = io::detail::open_dataset(h5.get(), dataset_name, file.string());
    Layout layout;
    layout.dims = io::detail::dataset_dims(dataset.get(), "");
    layout.type = io::detail::dataset_type(dataset.get(), "").describe();
    io::detail::H5Handle properties(H5Dget_create_plist(dataset.get()), H5Pclose, "plist");
    if (H5Pget_layout(properties.get()) == H5D_CHUNKED) {
        layout.chunk.resize(layout.dims.size());
        H5Pget_chunk(properties.get(), int(layout.chunk.size()), layout.chunk.data());
    }
    for (int i = 0; i < H5Pget_nfilters(properties.get()); ++i) {
        unsigned flags = 0, values[4] = {};
        std::size_t count = 4;
        layout.filters.push_back(int(H5Pget_filter2(properties.get(), unsigned(i), &flags, &count, values, 0, nullptr, nullptr)));
        if (layout.filters.back() == H5Z_FILTER_DEFLATE) layout.gzip_level.push_back(values[0]);
    }
    H5O_info_t info;
    H5Oget_info2(dataset.get(), &info, H5O_INFO_NUM_ATTRS);
    layout.attributes = int(info.num_attrs);
    return layout;
}

int root_attribute_count(const fs::path& file) {
    io::detail::H5Lock lock;
    io::detail::H5Handle h5 = io::detail::open_hdf5_read(file);
    H5O_info_t info;
    H5Oget_info_by_name2(h5.get(), "/", &info, H5O_INFO_NUM_ATTRS, H5P_DEFAULT);
    hsize_t objects = 0;
    H5Gget_num_objs(h5.get(), &objects);
    return int(info.num_attrs) * 100 + int(objects);  // attributes, then member count
}

// Rewrites one dataset of a slice file (for bad-input tests).
template <class T>
void write_slice_file(const fs::path& file, const std::vector<hsize_t>& image_dims, const std::vector<double>& image,
                      const std::vector<hsize_t>& mask_dims, const std::vector<T>& mask) {
    io::detail::H5Lock lock;
    io::detail::H5Handle h5 = io::detail::create_hdf5(file);
    io::detail::write_dataset(h5.get(), "image", image_dims, {}, H5T_IEEE_F64LE, image.data(), false, 0, file.string());
    io::detail::write_dataset(h5.get(), "mask", mask_dims, {}, io::detail::native_type<T>(), mask.data(), false, 0, file.string());
}

}  // namespace

TEST_CASE("Real Kaggle slices: layout, z-scoring and channel order", "[io][kaggle][real]") {
    const fs::path folder = test::shared_data_dir() / "kaggle-brats2020-h5";
    if (!fs::is_directory(folder)) LIGHTUNET_SKIP("shared data folder absent: " << folder.string());

    const auto volumes = io::group_kaggle_slices(folder);
    std::size_t files = 0;
    for (const auto& [volume, slices] : volumes) files += slices.size();
    REQUIRE(files == 28);
    REQUIRE(volumes.count(47) == 1);
    REQUIRE(volumes.at(47).size() == 2);

    const Layout image_layout{{240, 240, 4}, {60, 60, 1}, "float64", {H5Z_FILTER_DEFLATE}, {9}, 0};
    const Layout mask_layout{{240, 240, 3}, {60, 60, 2}, "uint8", {H5Z_FILTER_DEFLATE}, {9}, 0};
    int all_checks = 0;
    for (const auto& [volume, slices] : volumes)
        for (const auto& [s, path] : slices) {
            INFO(path.string());
            REQUIRE(dataset_layout(path, "image") == image_layout);
            REQUIRE(dataset_layout(path, "mask") == mask_layout);
            REQUIRE(root_attribute_count(path) == 2);  // no attributes, two datasets
            const io::KaggleSlice slice = io::read_kaggle_slice(path);  // default order verified
            REQUIRE(slice.width == 240);
            REQUIRE(slice.height == 240);
            const std::size_t pixels = 240 * 240;
            for (int m = 0; m < 4; ++m) {
                const float* v = slice.images.data() + std::size_t(m) * pixels;
                const double mean = std::accumulate(v, v + pixels, 0.0) / pixels;
                double squares = 0;
                for (std::size_t i = 0; i < pixels; ++i) squares += (v[i] - mean) * (v[i] - mean);
                REQUIRE(std::abs(mean) < 1e-4);
                REQUIRE(std::sqrt(squares / pixels) == Approx(1.0).epsilon(1e-4));  // population std
                const float background = *std::min_element(v, v + pixels);
                REQUIRE(background < 0);
                REQUIRE(v[0] == background);  // the corner is background: a constant negative value
            }
            for (std::uint8_t label : slice.labels) REQUIRE(label <= 3);

            {  // the intensity checks the slice allows
                io::detail::ChannelOrderEvidence evidence;
                io::KaggleReadOptions raw;
                const io::detail::StoredSlice stored = io::detail::read_stored_slice(path, raw.channels);
                evidence.add_slice(stored.channels.data(), stored.classes.data(), pixels);
                const io::ChannelOrderCheck check = evidence.verify(raw.channels, path.string());
                REQUIRE(check.checked_t2());  // every real slice holds enough healthy brain
                all_checks += check.checked_t1ce() && check.checked_flair();
            }
        }
    REQUIRE(all_checks >= 15);

    SECTION("wrong declared channel orders raise on a slice with every tumour class") {
        const fs::path rich = folder / "volume_47_slice_71.h5";
        using M = data::Modality;
        const std::vector<std::array<M, 4>> wrong{
            {M::t1, M::flair, M::t1ce, M::t2},  // notebooks' favourite: FLAIR/T1 swapped
            {M::flair, M::t1ce, M::t1, M::t2},  // T1/T1ce swapped
            {M::flair, M::t1, M::t2, M::t1ce},  // T1ce/T2 swapped
            {M::t2, M::t1, M::t1ce, M::flair},  // FLAIR/T2 swapped
            {M::t1, M::t1ce, M::t2, M::flair},  // canonical order assumed
        };
        for (const auto& order : wrong) {
            io::KaggleReadOptions options;
            options.channels.image = order;
            require_data_error([&] { io::read_kaggle_slice(rich, options); }, "volume_47_slice_71.h5",
                               "contradicts the intensities");
            options.verify_channel_order = false;
            REQUIRE_NOTHROW(io::read_kaggle_slice(rich, options));
        }
    }
}

TEST_CASE("Channel order over a set: one volume against it is a warning, a set against it stops", "[io][kaggle]") {
    using M = data::Modality;
    const io::KaggleChannels declared;
    auto verdict = [](bool t2_agrees, bool flair_made, bool flair_agrees) {
        io::ChannelOrderCheck check;
        check.tests[0] = {"csf", true, t2_agrees, t2_agrees ? 3u : 0u, 3, {0.01, 0.02, 0.03, t2_agrees ? 0.09 : 0.0}};
        check.tests[1].name = "et";
        check.tests[2] = {"edema", flair_made, flair_agrees, flair_agrees ? 0u : 3u, 0, {1.5, 0.2, 0.3, flair_agrees ? 0.9 : 1.7}};
        return check;
    };
    SECTION("a doubtful volume among agreeing ones: a warning with its evidence, never an error") {
        io::ChannelOrderTally tally(declared, "/data/slices");
        REQUIRE(tally.add("volume_1", verdict(true, true, true)).empty());
        const std::string warning = tally.add("volume_2", verdict(true, true, false));
        CHECK_THAT(warning, Catch::Contains("volume_2: the intensities of this volume contradict the declared channel order "
                                            "[FLAIR, T1, T1ce, T2]: edema is largest on stored channel 3 (declared T2), "
                                            "expected on FLAIR (per channel: 1.5 0.2 0.3 1.7)"));
        CHECK_THAT(warning, Catch::Contains("FLAIR/edema test 1 of 2 volumes agree"));
        for (int v = 3; v < 40; ++v) REQUIRE(tally.add("volume_" + std::to_string(v), verdict(true, v % 2 == 0, true)).empty());
        REQUIRE(tally.doubtful_volumes() == 1);
        // A second and third doubtful volume: still far from two thirds.
        REQUIRE_FALSE(tally.add("volume_40", verdict(false, true, false)).empty());
        REQUIRE(tally.doubtful_volumes() == 2);
    }
    SECTION("two volumes against: too few to decide; the third judged against decides") {
        io::ChannelOrderTally tally(declared, "/data/slices");
        REQUIRE_FALSE(tally.add("volume_1", verdict(true, true, false)).empty());
        REQUIRE_FALSE(tally.add("volume_2", verdict(true, true, false)).empty());
        REQUIRE(tally.add("volume_3", verdict(true, false, false)).empty());  // not judged by FLAIR: no vote
        REQUIRE_THROWS_AS(tally.add("volume_4", verdict(true, true, false)), io::ChannelOrderError);
    }
    SECTION("a set against the declared order stops at the third volume judged, naming the votes and examples") {
        io::ChannelOrderTally tally(declared, "/data/slices");
        tally.add("volume_1", verdict(false, false, false));
        tally.add("volume_2", verdict(false, false, false));
        try {
            tally.add("volume_3", verdict(false, false, false));
            FAIL("no error");
        } catch (const io::ChannelOrderError& e) {
            CHECK_THAT(e.what(), Catch::Contains("/data/slices: declared channel order [FLAIR, T1, T1ce, T2] contradicts the "
                                                 "intensities of 3 of 3 volumes judged by csf (volume_1: csf is largest on "
                                                 "stored channel 0 (declared FLAIR), expected on T2"));
        }
    }
    REQUIRE_THROWS_AS(io::ChannelOrderTally({{M::t1, M::t1, M::t2, M::flair}, {1, 2, 3}}, "x"), std::invalid_argument);
}

TEST_CASE("Real Kaggle slices with one volume's channels swapped: the set is judged, that volume warned about",
          "[io][kaggle][real]") {
    const fs::path folder = test::shared_data_dir() / "kaggle-brats2020-h5";
    if (!fs::is_directory(folder)) LIGHTUNET_SKIP("shared data folder absent: " << folder.string());
    ScratchDir dir("kaggle-real-swapped");
    for (const auto& entry : fs::directory_iterator(folder)) fs::copy_file(entry.path(), dir / entry.path().filename());
    {  // volume_45 (one slice): FLAIR and T2 swapped in its file, as a mislabelled export would
        const fs::path file = dir / "volume_45_slice_56.h5";
        std::vector<double> image(240 * 240 * 4);
        std::vector<std::uint8_t> mask(240 * 240 * 3);
        {
            io::detail::H5Lock lock;
            io::detail::H5Handle h5 = io::detail::open_hdf5_read(file);
            io::detail::read_whole(io::detail::open_dataset(h5.get(), "image", "").get(), image, "image");
            io::detail::read_whole(io::detail::open_dataset(h5.get(), "mask", "").get(), mask, "mask");
        }
        for (std::size_t p = 0; p < 240 * 240; ++p) std::swap(image[p * 4 + 0], image[p * 4 + 3]);
        write_slice_file(file, {240, 240, 4}, image, {240, 240, 3}, mask);
    }
    using M = data::Modality;
    auto judge_set = [&](const io::KaggleChannels& channels, std::vector<std::string>& warnings) {
        io::ChannelOrderTally tally(channels, dir.path().string());
        io::KaggleVolumeOptions options;
        options.read.channels = channels;
        options.missing = io::MissingSlices::fill_background;
        int volumes = 0;
        for (const auto& [volume, slices] : io::group_kaggle_slices(dir.path())) {
            const io::KaggleVolume v = io::read_kaggle_volume(dir.path(), volume, slices, options);  // judged, not raised
            const std::string warning = tally.add(v.case_data.id, v.channel_check);
            if (!warning.empty()) warnings.push_back(warning);
            ++volumes;
        }
        return volumes;
    };
    std::vector<std::string> warnings;
    REQUIRE(judge_set({}, warnings) == 22);  // every volume read: the doubtful one does not end the run
    REQUIRE(warnings.size() == 1);
    CHECK_THAT(warnings[0], Catch::StartsWith("volume_45: the intensities of this volume contradict the declared channel order"));
    CHECK_THAT(warnings[0], Catch::Contains("the set as a whole does not"));
    // Declared wrongly for the whole set (the notebooks' FLAIR/T1 swap): stopped within the first volumes.
    warnings.clear();
    REQUIRE_THROWS_WITH(judge_set({{M::t1, M::flair, M::t1ce, M::t2}, {1, 2, 3}}, warnings),
                        Catch::Contains("declared channel order [T1, FLAIR, T1ce, T2] contradicts the intensities of 3 of 3 volumes"));
    CHECK(warnings.size() == 2);
}

TEST_CASE("Kaggle writer and reader round trip in the exact Kaggle layout, with CSV", "[io][kaggle]") {
    ScratchDir dir("kaggle-roundtrip");
    data::Case original = test::make_test_case("v", {70, 64, 6}, 5);
    // An all-background slice: std 0, must not be divided by.
    std::fill(original.images.begin(), original.images.end(), 0.0f);
    const std::size_t pixels = 70 * 64;
    for (int m = 0; m < 4; ++m)
        for (std::size_t i = pixels; i < original.extent.voxels(); ++i)
            original.image(m)[i] = float((i * (m + 3)) % 97) + (i % 70 > 10 ? 50.0f : 0.0f);
    io::KaggleWriteOptions write_options;
    write_options.slice_path_prefix = "/content/data/";
    const std::vector<io::KaggleSliceRecord> records = io::write_kaggle_volume(dir.path(), original, 12, write_options);
    REQUIRE(records.size() == 6);
    io::write_kaggle_metadata(dir / "meta_data.csv", records);

    // The layout of the real set (chunks shrink to the slice size only below 60).
    const fs::path first = dir / "volume_12_slice_0.h5";
    REQUIRE(dataset_layout(first, "image") == Layout{{70, 64, 4}, {60, 60, 1}, "float64", {H5Z_FILTER_DEFLATE}, {9}, 0});
    REQUIRE(dataset_layout(first, "mask") == Layout{{70, 64, 3}, {60, 60, 2}, "uint8", {H5Z_FILTER_DEFLATE}, {9}, 0});
    REQUIRE(root_attribute_count(first) == 2);

    io::KaggleVolumeOptions options;
    options.depth = 6;
    options.read.verify_channel_order = false;  // random test intensities carry no MR contrast
    const io::KaggleVolume back = io::read_kaggle_volume(dir.path(), 12, options);
    REQUIRE(back.missing_slices.empty());
    REQUIRE(back.case_data.id == "volume_12");
    REQUIRE(back.case_data.extent == original.extent);
    REQUIRE(back.case_data.labels == original.labels);
    for (int m = 0; m < 4; ++m)
        for (int z = 0; z < 6; ++z) {
            const float* in = original.image(m) + std::size_t(z) * pixels;
            const float* out = back.case_data.image(m) + std::size_t(z) * pixels;
            const double mean = std::accumulate(in, in + pixels, 0.0) / pixels;
            double squares = 0;
            for (std::size_t i = 0; i < pixels; ++i) squares += (in[i] - mean) * (in[i] - mean);
            const double stdev = std::sqrt(squares / pixels);
            for (std::size_t i = 0; i < pixels; ++i)
                REQUIRE(out[i] == Approx(stdev > 0 ? (in[i] - mean) / stdev : 0.0).margin(1e-5));
        }

    const std::vector<io::KaggleSliceRecord> csv = io::read_kaggle_metadata(dir / "meta_data.csv");
    REQUIRE(csv.size() == 6);
    for (std::size_t z = 0; z < 6; ++z) {
        REQUIRE(csv[z].slice_path == "/content/data/volume_12_slice_" + std::to_string(z) + ".h5");
        REQUIRE(csv[z].volume == 12);
        REQUIRE(csv[z].slice == int(z));
        std::array<long long, 4> counts{};
        for (std::size_t i = 0; i < pixels; ++i) ++counts[original.labels[z * pixels + i]];
        REQUIRE(csv[z].label_pixel_counts == std::array<long long, 3>{counts[1], counts[2], counts[3]});
        REQUIRE(csv[z].target == (counts[1] + counts[2] + counts[3] > 0));
        REQUIRE(csv[z].background_ratio == Approx(double(counts[0]) / pixels));
    }
}

TEST_CASE("Kaggle bad input raises a DataError naming the file", "[io][kaggle][bad]") {
    ScratchDir dir("kaggle-bad");
    const data::Case c = test::make_test_case("v", {20, 18, 4}, 9);
    io::write_kaggle_volume(dir.path(), c, 3);
    io::KaggleVolumeOptions options;
    options.depth = 4;
    options.read.verify_channel_order = false;
    REQUIRE_NOTHROW(io::read_kaggle_volume(dir.path(), 3, options));

    SECTION("missing slice: raises, or is filled and listed when asked") {
        fs::remove(dir / "volume_3_slice_2.h5");
        require_data_error([&] { io::read_kaggle_volume(dir.path(), 3, options); }, "volume_3_slice_*.h5", "1 of 4 slices missing (2)");
        options.missing = io::MissingSlices::fill_background;
        const io::KaggleVolume filled = io::read_kaggle_volume(dir.path(), 3, options);
        REQUIRE(filled.missing_slices == std::vector<int>{2});
        const std::size_t pixels = 20 * 18;
        for (std::size_t i = 0; i < pixels; ++i) REQUIRE(filled.case_data.labels[2 * pixels + i] == 0);
    }
    SECTION("slice beyond the depth, absent volume, empty folder") {
        options.depth = 3;
        require_data_error([&] { io::read_kaggle_volume(dir.path(), 3, options); }, "volume_3_slice_3.h5", "beyond the volume depth 3");
        require_data_error([&] { io::read_kaggle_volume(dir.path(), 4, options); }, "volume_4_slice_*.h5", "no slices");
        fs::create_directories(dir / "empty");
        require_data_error([&] { io::group_kaggle_slices(dir / "empty"); }, "empty", "no volume_");
    }
    SECTION("truncated file") {
        std::vector<char> bytes = test::read_bytes(dir / "volume_3_slice_1.h5");
        bytes.resize(bytes.size() / 2);
        test::write_bytes(dir / "volume_3_slice_1.h5", bytes);
        REQUIRE_THROWS_WITH(io::read_kaggle_slice(dir / "volume_3_slice_1.h5"), Catch::Contains("volume_3_slice_1.h5"));
        test::write_bytes(dir / "volume_3_slice_1.h5", std::vector<char>(100, 'x'));
        require_data_error([&] { io::read_kaggle_slice(dir / "volume_3_slice_1.h5"); }, "volume_3_slice_1.h5", "not an HDF5 file");
    }
    SECTION("overlapping mask channels, mask values, shapes, types, NaN, missing dataset") {
        const fs::path file = dir / "volume_9_slice_0.h5";
        std::vector<double> image(5 * 4 * 4, 1.0);
        std::vector<std::uint8_t> mask(5 * 4 * 3, 0);
        mask[0] = mask[1] = 1;
        write_slice_file(file, {5, 4, 4}, image, {5, 4, 3}, mask);
        require_data_error([&] { io::read_kaggle_slice(file); }, "volume_9_slice_0.h5", "more than one channel");
        mask[1] = 0;
        mask[5] = 2;
        write_slice_file(file, {5, 4, 4}, image, {5, 4, 3}, mask);
        require_data_error([&] { io::read_kaggle_slice(file); }, "volume_9_slice_0.h5", "other than 0/1");
        mask[5] = 0;
        write_slice_file(file, {5, 4, 4}, image, {5, 4, 3}, mask);
        REQUIRE_NOTHROW(io::read_kaggle_slice(file));
        write_slice_file(file, {5, 4, 4}, image, {5, 3, 3}, std::vector<std::uint8_t>(45, 0));
        require_data_error([&] { io::read_kaggle_slice(file); }, "volume_9_slice_0.h5", "'mask' has shape (5, 3, 3)");
        write_slice_file(file, {5, 4, 4}, image, {5, 4, 3}, std::vector<double>(60, 0.0));
        require_data_error([&] { io::read_kaggle_slice(file); }, "volume_9_slice_0.h5", "'mask' is float64");
        image[7] = std::nan("");
        write_slice_file(file, {5, 4, 4}, image, {5, 4, 3}, mask);
        require_data_error([&] { io::read_kaggle_slice(file); }, "volume_9_slice_0.h5", "1 NaN/Inf");
        {
            io::detail::H5Lock lock;
            io::detail::H5Handle h5 = io::detail::create_hdf5(file);
            io::detail::write_dataset(h5.get(), "image", {5, 4, 4}, {}, H5T_IEEE_F64LE, image.data(), false, 0, file.string());
        }
        require_data_error([&] { io::read_kaggle_slice(file); }, "volume_9_slice_0.h5", "no dataset 'mask'");
    }
    SECTION("CSV header and fields") {
        const fs::path csv = dir / "meta.csv";
        test::write_bytes(csv, {'a', ',', 'b', '\n'});
        require_data_error([&] { io::read_kaggle_metadata(csv); }, "meta.csv:1", "header");
        const std::string body = std::string(io::kKaggleCsvHeader) + "\nx.h5,1,3,0,1,2,3,0.5\nx.h5,1,3,zero,1,2,3,0.5\n";
        test::write_bytes(csv, std::vector<char>(body.begin(), body.end()));
        require_data_error([&] { io::read_kaggle_metadata(csv); }, "meta.csv:3", "'zero' is not an integer");
    }
}

TEST_CASE("Kaggle prediction masks: the set's mask layout, read back exactly, in any declared order", "[io][kaggle]") {
    ScratchDir dir("kaggle-masks");
    const data::Case c = test::make_test_case("v", {70, 64, 5}, 4);
    const std::size_t pixels = 70 * 64;
    const std::uint8_t* slice = c.labels.data() + 2 * pixels;  // the tumour's centre slice: classes 1, 2, 3

    const io::KaggleSliceRecord record = io::write_kaggle_mask(dir / "pred", 7, 88, slice, 70, 64);
    const fs::path file = dir / "pred" / "volume_7_slice_88.h5";
    REQUIRE(record.slice_path == file.string());
    REQUIRE(record.volume == 7);
    REQUIRE(record.slice == 88);
    std::array<long long, 4> counts{};
    for (std::size_t i = 0; i < pixels; ++i) ++counts[slice[i]];
    REQUIRE(counts[1] > 0);
    REQUIRE(counts[2] > 0);
    REQUIRE(counts[3] > 0);
    REQUIRE(record.label_pixel_counts == std::array<long long, 3>{counts[1], counts[2], counts[3]});
    REQUIRE(record.target == 1);
    REQUIRE(record.background_ratio == Approx(double(counts[0]) / pixels));
    // Exactly the set's 'mask' dataset, and nothing else in the file.
    REQUIRE(dataset_layout(file, "mask") == Layout{{70, 64, 3}, {60, 60, 2}, "uint8", {H5Z_FILTER_DEFLATE}, {9}, 0});
    REQUIRE(root_attribute_count(file) == 1);

    const io::KaggleMask back = io::read_kaggle_mask(file);
    REQUIRE(back.width == 70);
    REQUIRE(back.height == 64);
    REQUIRE(std::equal(back.labels.begin(), back.labels.end(), slice));
    // The [x][y][c] layout of the set: pixel (x, y) of class 3 sets channel 2 (label 4, ET).
    std::size_t et = 0;
    while (slice[et] != 3) ++et;
    {
        io::detail::H5Lock lock;
        io::detail::H5Handle h5 = io::detail::open_hdf5_read(file);
        io::detail::H5Handle mask = io::detail::open_dataset(h5.get(), "mask", file.string());
        std::vector<std::uint8_t> raw(pixels * 3);
        io::detail::read_whole(mask.get(), raw, file.string());
        const std::size_t x = et % 70, y = et / 70;
        REQUIRE(raw[(x * 64 + y) * 3 + 0] == 0);
        REQUIRE(raw[(x * 64 + y) * 3 + 1] == 0);
        REQUIRE(raw[(x * 64 + y) * 3 + 2] == 1);
    }
    // A slice file of the set reads as its mask alone, the same labels as read_kaggle_slice gives.
    io::write_kaggle_volume(dir / "set", c, 3);
    const io::KaggleMask set_mask = io::read_kaggle_mask(dir / "set" / "volume_3_slice_2.h5");
    REQUIRE(std::equal(set_mask.labels.begin(), set_mask.labels.end(), slice));

    SECTION("another declared channel order round-trips, and differs on disk") {
        io::KaggleWriteOptions options;
        options.channels.mask_classes = {3, 1, 2};
        io::write_kaggle_mask(dir / "other", 7, 88, slice, 70, 64, options);
        const io::KaggleMask other = io::read_kaggle_mask(dir / "other" / "volume_7_slice_88.h5", options.channels);
        REQUIRE(std::equal(other.labels.begin(), other.labels.end(), slice));
        const io::KaggleMask misread = io::read_kaggle_mask(dir / "other" / "volume_7_slice_88.h5");
        REQUIRE_FALSE(std::equal(misread.labels.begin(), misread.labels.end(), slice));
    }
    SECTION("a label above 3, an empty extent and a mask of the wrong shape raise") {
        std::vector<std::uint8_t> bad(slice, slice + pixels);
        bad[5] = 4;
        require_data_error([&] { io::write_kaggle_mask(dir / "pred", 7, 89, bad.data(), 70, 64); }, "volume_7_slice_89.h5",
                           "label 4 at (5, 0)");
        require_data_error([&] { io::write_kaggle_mask(dir / "pred", 7, 90, slice, 0, 64); }, "volume 7 slice 90", "empty extent");
        const fs::path wrong = dir / "wrong.h5";
        {
            io::detail::H5Lock lock;
            io::detail::H5Handle h5 = io::detail::create_hdf5(wrong);
            const std::vector<std::uint8_t> two(70 * 64 * 2, 0);
            io::detail::write_dataset(h5.get(), "mask", {70, 64, 2}, {}, H5T_STD_U8LE, two.data(), false, 0, wrong.string());
        }
        require_data_error([&] { io::read_kaggle_mask(wrong); }, "wrong.h5", "'mask' has shape (70, 64, 2), expected (X, Y, 3)");
    }
}

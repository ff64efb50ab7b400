// NIfTI volumes and BraTS case folders: round trips in both namings, the real shared files with
// their measured facts, and every kind of bad input raising a DataError that names the file.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <set>

#include <lightunet/io/nifti.hpp>

#include "io_test_support.hpp"

using namespace lightunet;
using lightunet::test::ScratchDir;
namespace fs = std::filesystem;

namespace {

void require_same_geometry(const data::Geometry& a, const data::Geometry& b) {
    REQUIRE(a.extent == b.extent);
    REQUIRE(a.spacing == b.spacing);
    REQUIRE(a.qform_code == b.qform_code);
    REQUIRE(a.sform_code == b.sform_code);
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 4; ++c) REQUIRE(a.sform[r][c] == Approx(b.sform[r][c]).margin(1e-6));
    for (int i = 0; i < 4; ++i) REQUIRE(a.quatern[i] == Approx(b.quatern[i]).margin(1e-6));
    for (int i = 0; i < 3; ++i) REQUIRE(a.qoffset[i] == Approx(b.qoffset[i]).margin(1e-6));
}

using test::require_data_error;

}  // namespace

TEST_CASE("NIfTI case round trip in both namings, compressed or not, int16/uint8/float32", "[io][nifti]") {
    const data::VolumeExtent extent{13, 11, 7};
    for (io::Naming naming : {io::Naming::brats2018, io::Naming::brats2023})
        for (bool compress : {true, false})
            for (io::VoxelType type : {io::VoxelType::int16, io::VoxelType::uint8, io::VoxelType::float32}) {
                DYNAMIC_SECTION("naming " << int(naming) << " compress " << compress << " type " << int(type)) {
                    ScratchDir dir("nifti-roundtrip");
                    data::Case original = test::make_test_case(naming == io::Naming::brats2018 ? "Brats18_X_1" : "BraTS-GLI-00042-000",
                                                               extent, 7);
                    if (type == io::VoxelType::float32)
                        for (float& v : original.images) v *= 0.37f;  // non-integral values survive float32
                    io::WriteOptions options;
                    options.compress = compress;
                    options.image_type = type;
                    const io::CaseFiles written = io::write_case(dir.path(), original, naming, options);
                    REQUIRE(written.complete());
                    REQUIRE_FALSE(written.labels.empty());
                    REQUIRE(fs::exists(written.labels));

                    const io::CaseFiles found = io::case_files(dir.path());
                    REQUIRE(found.id == original.id);
                    REQUIRE(found.naming == naming);
                    REQUIRE(found.images == written.images);
                    const data::Case back = io::read_case(found);
                    REQUIRE(back.id == original.id);
                    REQUIRE(back.extent == original.extent);
                    REQUIRE(back.images == original.images);
                    REQUIRE(back.labels == original.labels);
                    require_same_geometry(back.geometry, original.geometry);
                    REQUIRE(back.crop.extent() == extent);

                    // The raw label values on disk are the edition's.
                    const io::NiftiVolume raw = io::read_nifti(written.labels);
                    std::set<float> raw_values(raw.values.begin(), raw.values.end());
                    const std::set<float> expected = naming == io::Naming::brats2018 ? std::set<float>{0, 1, 2, 4}
                                                                                     : std::set<float>{0, 1, 2, 3};
                    REQUIRE(raw_values == expected);
                    REQUIRE(raw.datatype == NIFTI_TYPE_UINT8);
                }
            }
}

TEST_CASE("NIfTI volume: every readable datatype and scl_slope/scl_inter", "[io][nifti]") {
    ScratchDir dir("nifti-types");
    data::Geometry geometry;
    geometry.extent = {5, 4, 3};
    std::vector<float> values(geometry.extent.voxels());
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = float(i % 50);
    for (io::VoxelType type : {io::VoxelType::uint8, io::VoxelType::int16, io::VoxelType::uint16, io::VoxelType::int32,
                               io::VoxelType::float32, io::VoxelType::float64}) {
        const fs::path file = dir / ("v" + std::to_string(int(type)) + ".nii");
        io::write_nifti(file, values, geometry, type);
        const io::NiftiVolume volume = io::read_nifti(file);
        REQUIRE(volume.values == values);
        REQUIRE(volume.vox_offset >= 352);
    }
    SECTION("scaling is applied unless the slope is 0") {
        const fs::path file = dir / "scaled.nii";
        io::write_nifti(file, values, geometry, io::VoxelType::int16);
        std::vector<char> bytes = test::read_bytes(file);
        float slope = 2.0f, intercept = -3.0f;
        std::memcpy(bytes.data() + 112, &slope, 4);  // scl_slope, scl_inter offsets in nifti_1_header
        std::memcpy(bytes.data() + 116, &intercept, 4);
        test::write_bytes(file, bytes);
        io::NiftiVolume volume = io::read_nifti(file);
        for (std::size_t i = 0; i < values.size(); ++i) REQUIRE(volume.values[i] == values[i] * 2 - 3);
        slope = 0.0f;
        std::memcpy(bytes.data() + 112, &slope, 4);
        test::write_bytes(file, bytes);
        volume = io::read_nifti(file);
        REQUIRE(volume.values == values);
    }
    SECTION("writing refuses values the voxel type cannot hold exactly") {
        std::vector<float> fractional = values;
        fractional[3] = 2.5f;
        require_data_error([&] { io::write_nifti(dir / "f.nii", fractional, geometry, io::VoxelType::int16); }, "f.nii", "2.5");
        std::vector<float> large = values;
        large[0] = 300;
        require_data_error([&] { io::write_nifti(dir / "u.nii", large, geometry, io::VoxelType::uint8); }, "u.nii", "300");
        REQUIRE_FALSE(fs::exists(dir / "f.nii"));
    }
}

TEST_CASE("Prediction written back in the original geometry and the edition's labels", "[io][nifti]") {
    ScratchDir dir("nifti-prediction");
    data::Case full = test::make_test_case("BraTS-GLI-00007-000", {12, 10, 8}, 3);
    // A cropped view of the case, as the store hands it out.
    data::Case cropped;
    cropped.id = full.id;
    cropped.geometry = full.geometry;
    cropped.crop.begin = {2, 3, 1};
    cropped.crop.end = {10, 9, 6};
    cropped.extent = cropped.crop.extent();
    std::vector<std::uint8_t> prediction(cropped.extent.voxels());
    for (std::size_t i = 0; i < prediction.size(); ++i) prediction[i] = std::uint8_t(i % 4);
    for (io::Naming naming : {io::Naming::brats2018, io::Naming::brats2023}) {
        const fs::path file = io::write_prediction(dir.path(), cropped, prediction, naming);
        REQUIRE(file.filename().string() == full.id + (naming == io::Naming::brats2018 ? "_seg.nii.gz" : "-seg.nii.gz"));
        const io::NiftiVolume volume = io::read_nifti(file);
        require_same_geometry(volume.geometry, full.geometry);
        const float et = naming == io::Naming::brats2018 ? 4.0f : 3.0f;
        const std::array<float, 4> raw_of{0, 1, 2, et};
        for (int z = 0; z < 8; ++z)
            for (int y = 0; y < 10; ++y)
                for (int x = 0; x < 12; ++x) {
                    const float value = volume.values[(std::size_t(z) * 10 + y) * 12 + x];
                    const bool inside = x >= 2 && x < 10 && y >= 3 && y < 9 && z >= 1 && z < 6;
                    if (!inside) {
                        REQUIRE(value == 0);
                        continue;
                    }
                    const std::size_t j = (std::size_t(z - 1) * 6 + (y - 3)) * 8 + (x - 2);
                    REQUIRE(value == raw_of[prediction[j]]);
                }
    }
}

TEST_CASE("Real BraTS 2018 and 2023 files: measured facts", "[io][nifti][real]") {
    const fs::path root = test::shared_data_dir();
    if (!fs::is_directory(root / "brats2018")) LIGHTUNET_SKIP("shared data folder absent: " << root.string());

    const std::vector<io::CaseFiles> cases = io::find_cases(root / "brats2018");
    REQUIRE(cases.size() == 8);
    std::set<std::size_t> offsets;
    int zero_slopes = 0;
    for (const io::CaseFiles& files : cases) {
        INFO(files.id);
        REQUIRE(files.naming == io::Naming::brats2018);
        REQUIRE(files.complete());
        REQUIRE_FALSE(files.labels.empty());
        for (const fs::path& file : files.images) {
            const io::NiftiVolume volume = io::read_nifti(file);
            REQUIRE(volume.extent == data::VolumeExtent{240, 240, 155});
            REQUIRE(volume.datatype == NIFTI_TYPE_INT16);
            // qform_code is 1 or 2 (2 in the 2013/TCIA images whose segmentations say 1).
            REQUIRE((volume.geometry.qform_code == 1 || volume.geometry.qform_code == 2));
            REQUIRE(volume.geometry.sform_code == 1);
            REQUIRE(volume.geometry.sform[0] == std::array<double, 4>{-1, 0, 0, 0});
            REQUIRE(volume.geometry.sform[1] == std::array<double, 4>{0, -1, 0, 239});
            REQUIRE(volume.geometry.sform[2] == std::array<double, 4>{0, 0, 1, 0});
            REQUIRE(volume.geometry.spacing == std::array<float, 3>{1, 1, 1});
            offsets.insert(volume.vox_offset);
            zero_slopes += volume.scl_slope == 0.0f;
            const float maximum = *std::max_element(volume.values.begin(), volume.values.end());
            REQUIRE(maximum >= 279);
            REQUIRE(maximum <= 32767);
            REQUIRE(*std::min_element(volume.values.begin(), volume.values.end()) == 0);  // background exactly 0
        }
        const io::NiftiVolume seg = io::read_nifti(files.labels);
        REQUIRE(seg.datatype == (files.id == "Brats18_2013_3_1" ? NIFTI_TYPE_INT16 : NIFTI_TYPE_UINT8));
        const std::set<float> raw_labels(seg.values.begin(), seg.values.end());
        for (float value : raw_labels) REQUIRE((value == 0 || value == 1 || value == 2 || value == 4));
        REQUIRE(raw_labels.count(2) == 1);  // every case has edema

        const data::Case c = io::read_case(files);
        REQUIRE(c.extent == data::VolumeExtent{240, 240, 155});
        REQUIRE(c.labels.size() == c.extent.voxels());
        std::array<std::size_t, 5> counts{};
        for (std::uint8_t label : c.labels) ++counts[std::min<std::size_t>(label, 4)];
        REQUIRE(counts[4] == 0);
        for (int raw = 1; raw <= 4; ++raw) {
            const std::size_t raw_count = std::count(seg.values.begin(), seg.values.end(), float(raw));
            const int canonical = raw == 4 ? 3 : raw;
            if (raw != 3) REQUIRE(counts[canonical] == raw_count);
        }
    }
    REQUIRE(offsets.size() >= 3);       // vox_offset varies: header extensions
    REQUIRE(offsets.count(352) == 1);
    REQUIRE(*offsets.rbegin() > 352);
    REQUIRE(zero_slopes > 0);           // scl_slope 0 means no scaling: values are not all 0

    // The unlabelled 2023 case.
    const io::CaseFiles files2023 = io::case_files(root / "brats2023" / "BraTS-GLI-00001-000");
    REQUIRE(files2023.id == "BraTS-GLI-00001-000");
    REQUIRE(files2023.naming == io::Naming::brats2023);
    REQUIRE(files2023.edition() == data::Edition::brats2023);
    REQUIRE(files2023.labels.empty());
    const data::Case c2023 = io::read_case(files2023);
    REQUIRE(c2023.extent == data::VolumeExtent{240, 240, 155});
    REQUIRE_FALSE(c2023.has_labels());
    REQUIRE_THROWS_AS(io::read_case(files2023, [] { io::ReadOptions o; o.require_labels = true; return o; }()), data::DataError);
}

TEST_CASE("Bad NIfTI input raises a DataError naming the file", "[io][nifti][bad]") {
    ScratchDir dir("nifti-bad");
    const data::Case good = test::make_test_case("Brats18_BAD_1", {9, 8, 6}, 11);

    SECTION("truncated gzip") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        std::vector<char> bytes = test::read_bytes(files.images[2]);
        bytes.resize(bytes.size() * 2 / 3);
        test::write_bytes(files.images[2], bytes);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_t2.nii.gz", "gzip");
    }
    SECTION("gzip with only its trailer cut off") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        std::vector<char> bytes = test::read_bytes(files.images[0]);
        bytes.resize(bytes.size() - 4);
        test::write_bytes(files.images[0], bytes);
        require_data_error([&] { io::read_nifti(files.images[0]); }, "Brats18_BAD_1_t1.nii.gz", "gzip");
    }
    SECTION("corrupt bytes inside the gzip stream") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        std::vector<char> bytes = test::read_bytes(files.images[1]);
        for (std::size_t i = bytes.size() / 3; i < bytes.size() / 3 + 16; ++i) bytes[i] = char(bytes[i] ^ 0x5a);
        test::write_bytes(files.images[1], bytes);
        require_data_error([&] { io::read_nifti(files.images[1]); }, "Brats18_BAD_1_t1ce.nii.gz", "gzip");
    }
    SECTION("truncated uncompressed file") {
        io::WriteOptions options;
        options.compress = false;
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018, options);
        std::vector<char> bytes = test::read_bytes(files.images[3]);
        bytes.resize(bytes.size() - 10);
        test::write_bytes(files.images[3], bytes);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_flair.nii", "truncated");
    }
    SECTION("not NIfTI at all") {
        test::write_bytes(dir / "junk_t1.nii", std::vector<char>(400, 'x'));
        require_data_error([&] { io::read_nifti(dir / "junk_t1.nii"); }, "junk_t1.nii", "NIfTI");
    }
    SECTION("missing modality") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2023);
        fs::remove(files.images[1]);
        require_data_error([&] { io::read_case(dir / "case"); }, "Brats18_BAD_1-t1c.nii", "missing modality t1c");
    }
    SECTION("shape mismatch between modalities") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        data::Geometry other = good.geometry;
        other.extent = {9, 8, 5};
        io::write_nifti(files.images[2], std::vector<float>(other.extent.voxels(), 1.0f), other, io::VoxelType::int16);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_t2.nii.gz", "shape 9x8x5");
    }
    SECTION("affine mismatch between modalities") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        data::Geometry shifted = good.geometry;
        shifted.sform[1][3] += 2.0;
        const io::NiftiVolume flair = io::read_nifti(files.images[3]);
        io::write_nifti(files.images[3], flair.values, shifted, io::VoxelType::float32);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_flair.nii.gz", "affine row 1");
    }
    SECTION("segmentation affine mismatch; a different code for the same transform is fine") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        const io::NiftiVolume seg = io::read_nifti(files.labels);
        data::Geometry recoded = good.geometry;
        recoded.qform_code = 2;
        io::write_nifti(files.labels, seg.values, recoded, io::VoxelType::uint8);
        REQUIRE(io::read_case(files).labels == good.labels);
        data::Geometry flipped = good.geometry;
        flipped.sform[0][0] = 1.0;
        io::write_nifti(files.labels, seg.values, flipped, io::VoxelType::uint8);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_seg.nii.gz", "affine row 0");
    }
    SECTION("qform mismatch while the sforms agree") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        const io::NiftiVolume t2 = io::read_nifti(files.images[2]);
        data::Geometry moved = good.geometry;
        moved.qoffset[2] = 5.0f;
        io::write_nifti(files.images[2], t2.values, moved, io::VoxelType::float32);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_t2.nii.gz", "qform affine");
    }
    SECTION("NaN and Inf voxels") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        io::NiftiVolume t1 = io::read_nifti(files.images[0]);
        t1.values[5] = std::numeric_limits<float>::quiet_NaN();
        t1.values[9] = std::numeric_limits<float>::infinity();
        // write_nifti refuses non-finite values, so patch the stored floats directly.
        const fs::path raw_file = dir / "nan_t1.nii";
        io::write_nifti(raw_file, std::vector<float>(t1.values.size(), 1.0f), t1.geometry, io::VoxelType::float32);
        std::vector<char> bytes = test::read_bytes(raw_file);
        const std::size_t offset = io::read_nifti(raw_file).vox_offset;
        std::memcpy(bytes.data() + offset, t1.values.data(), t1.values.size() * sizeof(float));
        test::write_bytes(raw_file, bytes);
        require_data_error([&] { io::read_nifti(raw_file); }, "nan_t1.nii", "2 NaN/Inf voxels");
    }
    SECTION("vox_offset beyond any file") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        const io::NiftiVolume t1 = io::read_nifti(files.images[0]);
        const fs::path raw_file = dir / "far_t1.nii";
        io::write_nifti(raw_file, std::vector<float>(t1.values.size(), 1.0f), t1.geometry, io::VoxelType::float32);
        std::vector<char> bytes = test::read_bytes(raw_file);
        const float far = 1e30f;  // over 2^64: converting it to an integer was undefined (clang UBSan, fuzz_nifti)
        std::memcpy(bytes.data() + 108, &far, sizeof far);
        test::write_bytes(raw_file, bytes);
        require_data_error([&] { io::read_nifti(raw_file); }, "far_t1.nii", "vox_offset");
    }
    SECTION("label 3 in a 2018 case") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
        io::NiftiVolume seg = io::read_nifti(files.labels);
        seg.values[0] = 3;
        seg.values[1] = 3;
        io::write_nifti(files.labels, seg.values, seg.geometry, io::VoxelType::uint8);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1_seg.nii.gz", "value 3 (2 voxels)");
        // Mapped on purpose, it is accepted.
        io::ReadOptions options;
        options.label_map = data::LabelMap::for_edition(data::Edition::brats2017_2021).set(3, 1);
        REQUIRE(io::read_case(files, options).labels[0] == 1);
    }
    SECTION("2024 resection cavity (label 4) in a 2023-named case") {
        const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2023);
        io::NiftiVolume seg = io::read_nifti(files.labels);
        seg.values[7] = 4;
        io::write_nifti(files.labels, seg.values, seg.geometry, io::VoxelType::uint8);
        require_data_error([&] { io::read_case(files); }, "Brats18_BAD_1-seg.nii.gz", "value 4 (1 voxels)");
    }
    SECTION("empty folder and a folder without case files") {
        fs::create_directories(dir / "empty");
        require_data_error([&] { io::find_cases(dir / "empty"); }, "empty", "no BraTS case files");
        test::write_bytes(dir / "empty" / "notes.txt", {'h', 'i'});
        require_data_error([&] { io::case_files(dir / "empty"); }, "empty", "no BraTS case files");
        require_data_error([&] { io::find_cases(dir / "absent"); }, "absent", "not a folder");
    }
    SECTION("one slot twice") {
        io::WriteOptions options;
        options.compress = false;
        io::write_case(dir / "case", good, io::Naming::brats2018, options);
        io::write_case(dir / "case", good, io::Naming::brats2018);
        require_data_error([&] { io::find_cases(dir / "case"); }, "Brats18_BAD_1_", "two");
    }
}

// The voxel -> world affine (io/affine.hpp) of NIfTI files written with a qform only, with an
// sform, with neither, and of the real BraTS files; orientation codes; where a cropped case's
// voxels lie; and the modality check that uses them (io::read_case).
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include <lightunet/io/affine.hpp>
#include <lightunet/io/nifti.hpp>

#include "io_test_support.hpp"

using namespace lightunet;
namespace fs = std::filesystem;

namespace {

// Every entry of the top 3 x 4 of `affine` within `margin` of `expected` (rows).
void require_affine(const Eigen::Affine3d& affine, const std::array<std::array<double, 4>, 3>& expected, double margin = 1e-6) {
    for (int row = 0; row < 3; ++row)
        for (int column = 0; column < 4; ++column) {
            INFO("row " << row << ", column " << column);
            REQUIRE(affine.matrix()(row, column) == Approx(expected[std::size_t(row)][std::size_t(column)]).margin(margin));
        }
    REQUIRE(affine.matrix().row(3) == Eigen::RowVector4d(0, 0, 0, 1));
}

data::Geometry small_geometry() {
    data::Geometry g;
    g.extent = {6, 5, 4};
    g.spacing = {2.0f, 3.0f, 4.0f};
    return g;
}

// Writes `geometry` with a few voxels and reads the volume back.
io::NiftiVolume round_trip(const fs::path& file, const data::Geometry& geometry) {
    io::write_nifti(file, std::vector<float>(geometry.extent.voxels(), 1.0f), geometry, io::VoxelType::uint8);
    return io::read_nifti(file);
}

std::string read_case_error(const io::CaseFiles& files) {
    try {
        io::read_case(files);
    } catch (const data::DataError& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("Affine from a qform: rotation, spacing, qfac and offset as NIfTI-1 defines them", "[io][nifti][affine]") {
    test::ScratchDir dir("affine_qform");
    data::Geometry g = small_geometry();
    g.qform_code = 1;
    g.sform_code = 0;
    // 90 degrees about z: a = cos 45, d = sin 45; qfac -1 flips the third voxel axis.
    const float s = float(std::sqrt(0.5));
    g.quatern = {0.0f, 0.0f, s, -1.0f};
    g.qoffset = {10.0f, 20.0f, 30.0f};
    const io::NiftiVolume volume = round_trip(dir / "q.nii.gz", g);
    REQUIRE(volume.geometry.sform_code == 0);
    REQUIRE(io::affine_source(volume.geometry) == io::AffineSource::qform);

    // By hand: R = [0 -1 0; 1 0 0; 0 0 1], times diag(2, 3, -4), plus the offset.
    const std::array<std::array<double, 4>, 3> expected{{{0, -3, 0, 10}, {2, 0, 0, 20}, {0, 0, -4, 30}}};
    require_affine(volume.affine(), expected);
    require_affine(io::qform_affine(volume.geometry), expected);
    // Voxel axis i runs to +y (anterior), j to -x (left), k to -z (inferior).
    CHECK(volume.orientation() == "ALI");
    // World position of voxel (1, 2, 3) = (0 - 6 + 0 + 10, 2 + 20, -12 + 30).
    const Eigen::Vector3d world = volume.affine() * Eigen::Vector3d(1, 2, 3);
    CHECK(world.isApprox(Eigen::Vector3d(4, 22, 18), 1e-6));  // the quaternion is stored in float

    // niftilib's own quaternion -> matrix, from the same header fields, agrees.
    const mat44 m = nifti_quatern_to_mat44(g.quatern[0], g.quatern[1], g.quatern[2], g.qoffset[0], g.qoffset[1], g.qoffset[2],
                                           g.spacing[0], g.spacing[1], g.spacing[2], g.quatern[3]);
    for (int row = 0; row < 3; ++row)
        for (int column = 0; column < 4; ++column) CHECK(volume.affine().matrix()(row, column) == Approx(m.m[row][column]).margin(1e-5));

    SECTION("a quaternion of a 180 degree turn (b^2 + c^2 + d^2 = 1, a = 0)") {
        data::Geometry turned = g;
        turned.quatern = {0.0f, 0.0f, 1.0f, 1.0f};  // about z
        turned.qoffset = {0.0f, 0.0f, 0.0f};
        require_affine(io::qform_affine(turned), {{{-2, 0, 0, 0}, {0, -3, 0, 0}, {0, 0, 4, 0}}});
        CHECK(io::orientation(turned) == "LPS");
    }
}

TEST_CASE("Affine from an sform, which wins over the qform; pixdim alone without codes", "[io][nifti][affine]") {
    test::ScratchDir dir("affine_sform");
    data::Geometry g = small_geometry();
    g.sform_code = 1;
    g.qform_code = 1;
    g.quatern = {0.0f, 0.0f, 0.0f, 1.0f};  // identity rotation: a qform that disagrees
    // Voxel axes permuted and flipped: i -> -x, j -> -z, k -> +y.
    g.sform = {{{-1.5, 0, 0, 100}, {0, 0, 2, -50}, {0, -2.5, 0, 30}}};
    const io::NiftiVolume volume = round_trip(dir / "s.nii", g);
    REQUIRE(io::affine_source(volume.geometry) == io::AffineSource::sform);
    require_affine(volume.affine(), g.sform);
    CHECK(volume.orientation() == "LIA");
    CHECK(io::orientation(io::qform_affine(volume.geometry)) == "RAS");

    SECTION("no codes: the spacing alone, RAS") {
        data::Geometry plain = small_geometry();
        const io::NiftiVolume bare = round_trip(dir / "p.nii", plain);
        REQUIRE(io::affine_source(bare.geometry) == io::AffineSource::pixdim);
        require_affine(bare.affine(), {{{2, 0, 0, 0}, {0, 3, 0, 0}, {0, 0, 4, 0}}});
        CHECK(bare.orientation() == "RAS");
    }
    SECTION("an oblique sform: axis codes from the nearest direction, as nibabel") {
        data::Geometry oblique = g;
        const double c = std::cos(0.3), s = std::sin(0.3);  // 17 degrees about z
        oblique.sform = {{{c, -s, 0, 0}, {s, c, 0, 0}, {0, 0, 1, 0}}};
        CHECK(io::orientation(oblique) == "RAS");
        oblique.sform = {{{-c, s, 0, 0}, {s, c, 0, 0}, {0, 0, -1, 0}}};
        CHECK(io::orientation(oblique) == "LAI");
    }
}

TEST_CASE("A cropped case's affine places its voxels where the original volume's were", "[io][affine]") {
    data::Case c = test::make_test_case("crop", {12, 10, 8}, 3);
    c.geometry.extent = {40, 30, 20};
    c.geometry.sform_code = 1;
    c.geometry.sform = {{{-1, 0, 0, 0}, {0, -1, 0, 239}, {0, 0, 1, 0}}};
    c.crop.begin = {10, 7, 5};
    c.crop.end = {22, 17, 13};
    const Eigen::Vector3d cropped = io::voxel_to_world(c) * Eigen::Vector3d(1, 2, 3);
    const Eigen::Vector3d original = io::voxel_to_world(c.geometry) * Eigen::Vector3d(11, 9, 8);
    CHECK(cropped.isApprox(original, 1e-12));
    CHECK(cropped.isApprox(Eigen::Vector3d(-11, 230, 8), 1e-12));
}

TEST_CASE("affine_distance_mm is the farthest any voxel moves", "[io][affine]") {
    const data::Geometry a = [] {
        data::Geometry g = small_geometry();
        g.sform_code = 1;
        g.sform = {{{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}}};
        return g;
    }();
    data::Geometry shifted = a;
    shifted.sform[1][3] = 2.0;
    CHECK(io::affine_distance_mm(io::voxel_to_world(a), io::voxel_to_world(shifted), a.extent) == Approx(2.0));
    data::Geometry flipped = a;
    flipped.sform[0][0] = -1.0;  // voxel x -> -x: voxel 5 moves from 5 to -5
    CHECK(io::affine_distance_mm(io::voxel_to_world(a), io::voxel_to_world(flipped), a.extent) == Approx(10.0));
    data::Geometry tilted = a;
    tilted.sform[2][0] = 1e-3;  // 1e-3 mm per voxel of x: 5e-3 mm at the far corner
    CHECK(io::affine_distance_mm(io::voxel_to_world(a), io::voxel_to_world(tilted), a.extent) == Approx(5e-3));
}

TEST_CASE("read_case names the orientation and the distance when modalities disagree", "[io][nifti][affine]") {
    test::ScratchDir dir("affine_case");
    data::Case good = test::make_test_case("Brats18_AFF_1", {9, 8, 6}, 11);
    good.geometry.extent = good.extent;
    good.geometry.sform_code = good.geometry.qform_code = 1;
    good.geometry.sform = {{{-1, 0, 0, 0}, {0, -1, 0, 7}, {0, 0, 1, 0}}};
    good.geometry.quatern = {0, 0, 1, 1};
    good.geometry.qoffset = {0, 7, 0};
    good.crop.end = {9, 8, 6};
    const io::CaseFiles files = io::write_case(dir / "case", good, io::Naming::brats2018);
    const data::Case read = io::read_case(files);
    CHECK(io::orientation(read.geometry) == "LPS");
    require_affine(io::voxel_to_world(read), good.geometry.sform);
    // Its qform is the same transform as its sform.
    CHECK(io::affine_distance_mm(io::qform_affine(read.geometry), io::sform_affine(read.geometry), read.extent) < 1e-6);

    const io::NiftiVolume t1 = io::read_nifti(files.images[0]);
    SECTION("a flipped axis") {
        data::Geometry flipped = good.geometry;
        flipped.sform[0] = {1, 0, 0, 0};
        io::write_nifti(files.images[0], t1.values, flipped, io::VoxelType::float32);
        const std::string error = read_case_error(files);
        INFO(error);
        // The first modality (t1) is the reference, so the others are named against it.
        CHECK(error.find("Brats18_AFF_1_t1ce.nii.gz: orientation LPS differs from RPS: sform affine row 0 [-1 0 0 0] "
                         "differs from [1 0 0 0], voxels up to 16 mm apart (tolerance 0.001 mm)") != std::string::npos);
    }
    SECTION("a shift within and beyond the tolerance") {
        data::Geometry shifted = good.geometry;
        shifted.sform[2][3] = 5e-4;
        io::write_nifti(files.images[3], io::read_nifti(files.images[3]).values, shifted, io::VoxelType::float32);
        CHECK(read_case_error(files).empty());
        shifted.sform[2][3] = 0.5;
        io::write_nifti(files.images[3], io::read_nifti(files.images[3]).values, shifted, io::VoxelType::float32);
        const std::string error = read_case_error(files);
        INFO(error);
        CHECK(error.find("Brats18_AFF_1_flair.nii.gz: sform affine row 2 [0 0 1 0.5] differs from [0 0 1 0], voxels up to "
                         "0.5 mm apart") != std::string::npos);
    }
}

TEST_CASE("Real BraTS files: the affine and orientation from their headers", "[io][nifti][affine][real]") {
    const fs::path root = test::shared_data_dir();
    if (!fs::is_directory(root / "brats2018")) LIGHTUNET_SKIP("shared data folder absent: " << root.string());
    // The headers (../shared/data/README.md, and read with Python's struct): sform_code 1, rows
    // [-1 0 0 0; 0 -1 0 239; 0 0 1 0], pixdim 1 1 1, qfac 1; qform_code 1 or 2 with quatern_b,c,d
    // = 0, 0, 1 (a = 0: a half turn about z, diag(-1, -1, 1)) and qoffset (0, 239, 0), by hand the
    // same transform. Voxel axes run to -x, -y, +z: LPS.
    const std::array<std::array<double, 4>, 3> sform{{{-1, 0, 0, 0}, {0, -1, 0, 239}, {0, 0, 1, 0}}};
    for (const io::CaseFiles& files : io::find_cases(root / "brats2018")) {
        INFO(files.id);
        for (const fs::path& file : {files.images[0], files.labels}) {
            const io::NiftiVolume volume = io::read_nifti(file);
            require_affine(volume.affine(), sform, 0.0);
            CHECK(volume.orientation() == "LPS");
            require_affine(io::qform_affine(volume.geometry), sform, 1e-9);
            CHECK(io::orientation(io::qform_affine(volume.geometry)) == "LPS");
        }
        const data::Case c = io::read_case(files);
        // Voxel (0, 0, 0) lies at x = 0, y = 239 mm; voxel (239, 239, 154) at (-239, 0, 154).
        CHECK((io::voxel_to_world(c) * Eigen::Vector3d(0, 0, 0)).isApprox(Eigen::Vector3d(0, 239, 0)));
        CHECK((io::voxel_to_world(c) * Eigen::Vector3d(239, 239, 154)).isApprox(Eigen::Vector3d(-239, 0, 154)));
    }
    // BraTS 2023: the same header numbers.
    const std::vector<io::CaseFiles> cases = io::find_cases(root / "brats2023");
    REQUIRE(cases.size() == 1);
    for (const fs::path& file : cases[0].images) {
        INFO(file.string());
        const io::NiftiVolume volume = io::read_nifti(file);
        require_affine(volume.affine(), sform, 0.0);
        require_affine(io::qform_affine(volume.geometry), sform, 1e-9);
        CHECK(volume.orientation() == "LPS");
    }
}

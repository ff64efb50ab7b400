#pragma once
// Where a volume's voxels lie: the NIfTI-1 voxel -> world transform of a data::Geometry as an
// Eigen affine (world: RAS+ millimetres), and the orientation it gives as axis codes, as
// nibabel's aff2axcodes writes them ("LPS": voxel axis i runs to the left, j to posterior, k to
// superior; BraTS files are LPS).
//
// Which transform, as NIfTI-1 says (nifti1.h, "3D IMAGE (VOLUME) ORIENTATION AND LOCATION IN
// SPACE"), voxel indices counted from 0:
// - sform_code > 0: the srow_x, srow_y, srow_z rows (method 3);
// - else qform_code > 0: the rotation of the unit quaternion (a, b, c, d), a = sqrt(1 - b^2 -
//   c^2 - d^2), times diag(dx, dy, qfac dz), plus qoffset (method 2); a non-positive spacing
//   counts as 1 and a < 1e-7 as a 180 degree turn (b, c, d normalised), as niftilib does;
// - else the spacing alone, diag(dx, dy, dz) (method 1).
// Codes say which space the world is (scanner, aligned, template); only where voxels lie is
// compared (io/nifti.hpp: the modalities of a case must agree within ReadOptions'
// affine_tolerance_mm).
#include <Eigen/Geometry>
#include <Eigen/SVD>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>

#include "../data/case.hpp"

namespace lightunet::io {

enum class AffineSource { sform, qform, pixdim };

inline AffineSource affine_source(const data::Geometry& geometry) {
    return geometry.sform_code > 0 ? AffineSource::sform : geometry.qform_code > 0 ? AffineSource::qform : AffineSource::pixdim;
}
inline const char* affine_source_name(AffineSource source) {
    switch (source) {
        case AffineSource::sform: return "sform";
        case AffineSource::qform: return "qform";
        case AffineSource::pixdim: return "pixdim";
    }
    return "?";
}

// The stored srow rows, whatever sform_code says.
inline Eigen::Affine3d sform_affine(const data::Geometry& geometry) {
    Eigen::Affine3d affine = Eigen::Affine3d::Identity();
    for (int row = 0; row < 3; ++row)
        for (int column = 0; column < 4; ++column) affine.matrix()(row, column) = geometry.sform[std::size_t(row)][std::size_t(column)];
    return affine;
}

// The quaternion transform, whatever qform_code says.
inline Eigen::Affine3d qform_affine(const data::Geometry& geometry) {
    double b = geometry.quatern[0], c = geometry.quatern[1], d = geometry.quatern[2];
    double a = 1.0 - (b * b + c * c + d * d);
    if (a < 1e-7) {  // a 180 degree turn: a = 0, (b, c, d) a unit axis
        const double norm = std::sqrt(b * b + c * c + d * d);
        b /= norm, c /= norm, d /= norm;
        a = 0.0;
    } else {
        a = std::sqrt(a);
    }
    auto positive = [](float spacing) { return spacing > 0 ? double(spacing) : 1.0; };
    const double qfac = geometry.quatern[3] < 0 ? -1.0 : 1.0;
    Eigen::Affine3d affine = Eigen::Affine3d::Identity();
    affine.linear() = Eigen::Quaterniond(a, b, c, d).toRotationMatrix() *
                      Eigen::Vector3d(positive(geometry.spacing[0]), positive(geometry.spacing[1]),
                                      qfac * positive(geometry.spacing[2])).asDiagonal();
    affine.translation() = Eigen::Vector3d(geometry.qoffset[0], geometry.qoffset[1], geometry.qoffset[2]);
    return affine;
}

inline Eigen::Affine3d pixdim_affine(const data::Geometry& geometry) {
    Eigen::Affine3d affine = Eigen::Affine3d::Identity();
    affine.linear() = Eigen::Vector3d(geometry.spacing[0], geometry.spacing[1], geometry.spacing[2]).asDiagonal();
    return affine;
}

// The transform NIfTI readers use: sform if its code is set, else qform, else the spacing.
inline Eigen::Affine3d voxel_to_world(const data::Geometry& geometry) {
    switch (affine_source(geometry)) {
        case AffineSource::sform: return sform_affine(geometry);
        case AffineSource::qform: return qform_affine(geometry);
        case AffineSource::pixdim: break;
    }
    return pixdim_affine(geometry);
}

// The transform of a case's own arrays: voxel (x, y, z) of Case::images lies at voxel
// crop.begin + (x, y, z) of the original volume.
inline Eigen::Affine3d voxel_to_world(const data::Case& c) {
    return voxel_to_world(c.geometry) *
           Eigen::Translation3d(double(c.crop.begin[0]), double(c.crop.begin[1]), double(c.crop.begin[2]));
}

// Axis codes of a transform: for each voxel axis, the world direction it runs along most, from
// L/R, P/A, I/S. As nibabel: the linear part, columns scaled to unit length, is replaced by the
// nearest orthonormal matrix (SVD), and each voxel axis in turn takes the world axis of its
// largest component, which no later axis may take. '?' for an axis that has no direction.
inline std::string orientation(const Eigen::Affine3d& affine) {
    Eigen::Matrix3d directions = affine.linear();
    for (int column = 0; column < 3; ++column) {
        const double length = directions.col(column).norm();
        if (length > 0) directions.col(column) /= length;
    }
    const Eigen::JacobiSVD<Eigen::Matrix3d> svd(directions, Eigen::ComputeFullU | Eigen::ComputeFullV);
    const Eigen::Vector3d singular = svd.singularValues();
    const double tolerance = singular.maxCoeff() * 3 * std::numeric_limits<double>::epsilon();
    Eigen::Matrix3d nearest = Eigen::Matrix3d::Zero();
    for (int k = 0; k < 3; ++k)
        if (singular(k) > tolerance) nearest += svd.matrixU().col(k) * svd.matrixV().col(k).transpose();
    static constexpr std::array<std::array<char, 2>, 3> codes{{{'L', 'R'}, {'P', 'A'}, {'I', 'S'}}};
    std::string text(3, '?');
    for (int axis = 0; axis < 3; ++axis) {
        Eigen::Index world = 0;
        const double largest = nearest.col(axis).cwiseAbs().maxCoeff(&world);
        if (!(largest > 1e-8)) continue;
        text[std::size_t(axis)] = codes[std::size_t(world)][nearest(world, axis) > 0 ? 1 : 0];
        nearest.row(world).setZero();
    }
    return text;
}
inline std::string orientation(const data::Geometry& geometry) { return orientation(voxel_to_world(geometry)); }

// The farthest apart (mm) that two transforms place one voxel of `extent`: the difference of two
// affine maps is affine, so it is largest at a corner of the voxel box.
inline double affine_distance_mm(const Eigen::Affine3d& a, const Eigen::Affine3d& b, const data::VolumeExtent& extent) {
    const Eigen::Matrix4d difference = a.matrix() - b.matrix();
    double farthest = 0;
    for (int corner = 0; corner < 8; ++corner) {
        const Eigen::Vector4d voxel(corner & 1 ? std::max(extent.x - 1, 0) : 0, corner & 2 ? std::max(extent.y - 1, 0) : 0,
                                    corner & 4 ? std::max(extent.z - 1, 0) : 0, 1.0);
        farthest = std::max(farthest, (difference * voxel).head<3>().norm());
    }
    return farthest;
}

}  // namespace lightunet::io

#pragma once
// xtensor in user code: zero-copy views of lightunet's arrays, and copies back.
//
//   auto x = lightunet::as_xtensor(tensor);        // xt view [n][c][d][h][w] of the tensor's memory
//   auto img = lightunet::as_xtensor(case_);       // [modality][z][y][x] of data::Case::images
//   auto seg = lightunet::labels_as_xtensor(case_); // [z][y][x] canonical classes
//   auto vol = lightunet::as_xtensor(nifti_volume); // [z][y][x] of io::NiftiVolume::values
//   lightunet::copy_into(tensor, xt::transpose(...)); // any xtensor expression of the same shape
//
// The views are xt::xtensor_adaptor over the object's own buffer (no copy, row-major, the last
// index fastest): writes through a view change the object, and a view lives no longer than the
// object's buffer (a Tensor::resize that grows reallocates). Host memory only: Tensor<T, cpu>.
// Link lightunet::xtensor (present when CMake found xtensor; docs/design.md, Dependencies).
#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xexpression.hpp>
#include <xtensor/xtensor.hpp>

#include "../data/case.hpp"
#include "../tensor/tensor.hpp"

namespace lightunet {

namespace detail {

inline std::array<std::size_t, 5> xt_shape(const Shape& s) {
    return {std::size_t(s.n), std::size_t(s.c), std::size_t(s.d), std::size_t(s.h), std::size_t(s.w)};
}

// "(4, 8, 8)", as Shape::str() writes a tensor's shape.
template <class Sequence>
std::string xt_shape_text(const Sequence& shape) {
    std::string s = "(";
    for (const auto extent : shape) s.append(std::to_string(extent)).append(", ");
    if (s.size() > 1) s.resize(s.size() - 2);
    return s.append(")");
}

inline std::array<std::size_t, 3> xt_volume_shape(const data::VolumeExtent& e) {
    return {std::size_t(e.z), std::size_t(e.y), std::size_t(e.x)};
}

template <class Values>
void require_volume_size(const Values& values, std::size_t expected, const char* what, const data::VolumeExtent& e) {
    if (values.size() != expected)
        throw ShapeError(std::string("lightunet::as_xtensor: ") + what + " hold " + std::to_string(values.size()) +
                         " values, not the " + std::to_string(expected) + " of their extent " + std::to_string(e.x) + "x" +
                         std::to_string(e.y) + "x" + std::to_string(e.z));
}

}  // namespace detail

// [n][c][d][h][w] view of a host tensor.
template <class T>
auto as_xtensor(Tensor<T, cpu>& tensor) {
    return xt::adapt(tensor.data(), tensor.size(), xt::no_ownership(), detail::xt_shape(tensor.shape()));
}
template <class T>
auto as_xtensor(const Tensor<T, cpu>& tensor) {
    return xt::adapt(tensor.data(), tensor.size(), xt::no_ownership(), detail::xt_shape(tensor.shape()));
}

// [modality][z][y][x] view of a case's images (canonical modality order, data/case.hpp).
// Throws ShapeError when the images do not hold kModalityCount x extent values.
inline auto as_xtensor(data::Case& c) {
    detail::require_volume_size(c.images, std::size_t(data::kModalityCount) * c.extent.voxels(), "the case's images", c.extent);
    const auto v = detail::xt_volume_shape(c.extent);
    return xt::adapt(c.images.data(), c.images.size(), xt::no_ownership(),
                     std::array<std::size_t, 4>{std::size_t(data::kModalityCount), v[0], v[1], v[2]});
}
inline auto as_xtensor(const data::Case& c) {
    detail::require_volume_size(c.images, std::size_t(data::kModalityCount) * c.extent.voxels(), "the case's images", c.extent);
    const auto v = detail::xt_volume_shape(c.extent);
    return xt::adapt(c.images.data(), c.images.size(), xt::no_ownership(),
                     std::array<std::size_t, 4>{std::size_t(data::kModalityCount), v[0], v[1], v[2]});
}

// [z][y][x] view of a case's canonical labels. Throws ShapeError for an unlabelled case.
inline auto labels_as_xtensor(data::Case& c) {
    detail::require_volume_size(c.labels, c.extent.voxels(), "the case's labels", c.extent);
    return xt::adapt(c.labels.data(), c.labels.size(), xt::no_ownership(), detail::xt_volume_shape(c.extent));
}
inline auto labels_as_xtensor(const data::Case& c) {
    detail::require_volume_size(c.labels, c.extent.voxels(), "the case's labels", c.extent);
    return xt::adapt(c.labels.data(), c.labels.size(), xt::no_ownership(), detail::xt_volume_shape(c.extent));
}

// A volume as the readers return it (io::NiftiVolume): `values` x fastest over `extent`.
template <class V>
concept VoxelVolume = requires(V& v) {
    { v.extent } -> std::convertible_to<data::VolumeExtent>;
    v.values.data();
    v.values.size();
};

// [z][y][x] view of a volume's values. Throws ShapeError when they do not fill its extent.
template <VoxelVolume V>
auto as_xtensor(V& volume) {
    detail::require_volume_size(volume.values, volume.extent.voxels(), "the volume's values", volume.extent);
    return xt::adapt(volume.values.data(), volume.values.size(), xt::no_ownership(), detail::xt_volume_shape(volume.extent));
}

// Copies an xtensor expression (xt::xarray, xt::xtensor, a view, a lazy expression) into
// `tensor`, converting the values to T. The expression must have the tensor's five extents
// [n][c][d][h][w]; otherwise ShapeError names both shapes and the tensor is left unchanged.
template <class T, class E>
void copy_into(Tensor<T, cpu>& tensor, const xt::xexpression<E>& expression) {
    const E& e = expression.derived_cast();
    const auto wanted = detail::xt_shape(tensor.shape());
    const bool same = e.dimension() == wanted.size() && std::equal(wanted.begin(), wanted.end(), e.shape().begin());
    if (!same)
        throw ShapeError("lightunet::copy_into: the xtensor expression's shape " + detail::xt_shape_text(e.shape()) +
                         " differs from the tensor's " + tensor.shape().str() + " (n, c, d, h, w)");
    auto view = as_xtensor(tensor);
    view = e;  // xtensor evaluates into a temporary first when `e` reads the tensor itself
}

// A new host tensor holding a copy of a five-dimensional expression [n][c][d][h][w].
template <class T = void, class E>
auto to_tensor(const xt::xexpression<E>& expression) {
    using Value = std::conditional_t<std::is_void_v<T>, typename E::value_type, T>;
    const E& e = expression.derived_cast();
    if (e.dimension() != 5)
        throw ShapeError("lightunet::to_tensor: the xtensor expression's shape " + detail::xt_shape_text(e.shape()) +
                         " has " + std::to_string(e.dimension()) + " dimensions, a tensor 5 (n, c, d, h, w)");
    std::array<int, 5> extents{};
    for (std::size_t i = 0; i < 5; ++i) {
        if (e.shape()[i] > std::size_t(std::numeric_limits<int>::max()))
            throw ShapeError("lightunet::to_tensor: the xtensor expression's shape " + detail::xt_shape_text(e.shape()) +
                             " has an extent beyond a tensor's int");
        extents[i] = int(e.shape()[i]);
    }
    Tensor<Value, cpu> tensor(Shape{extents[0], extents[1], extents[2], extents[3], extents[4]});
    copy_into(tensor, e);
    return tensor;
}

}  // namespace lightunet

// xtensor views of tensors, cases and volumes: the shape is [n][c][d][h][w] (or [m][z][y][x],
// [z][y][x]), the view reads and writes the object's own memory (no copy), and copies back
// check the shape and name both shapes when they differ.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <lightunet/interop/xtensor.hpp>
#include <lightunet/io/nifti.hpp>

using namespace lightunet;

namespace {

template <class View>
std::vector<std::size_t> shape_of(const View& view) {
    return {view.shape().begin(), view.shape().end()};
}

// The message of the ShapeError that `f` throws.
template <class F>
std::string shape_error(F&& f) {
    try {
        f();
    } catch (const ShapeError& e) {
        return e.what();
    }
    FAIL("no ShapeError");
    return {};
}

}  // namespace

TEST_CASE("as_xtensor views a tensor in place, [n][c][d][h][w]", "[interop][xtensor]") {
    Tensor<float> t(Shape{2, 3, 4, 5, 6});
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = float(i);

    SECTION("shape, element order and the tensor's own memory") {
        auto x = as_xtensor(t);
        STATIC_REQUIRE(decltype(x)::rank == 5);
        CHECK(shape_of(x) == std::vector<std::size_t>{2, 3, 4, 5, 6});
        REQUIRE(x.data() == t.data());  // zero-copy: the view's buffer is the tensor's
        CHECK(&x(0, 0, 0, 0, 0) == t.data());
        CHECK(&x(1, 2, 3, 4, 5) == &t.at(1, 2, 3, 4, 5));
        CHECK(x(1, 2, 3, 4, 5) == t.at(1, 2, 3, 4, 5));
        CHECK(x(0, 1, 0, 0, 0) == float(4 * 5 * 6));
    }
    SECTION("writes go both ways") {
        auto x = as_xtensor(t);
        x(1, 0, 2, 3, 4) = -7.0f;
        CHECK(t.at(1, 0, 2, 3, 4) == -7.0f);
        t.at(0, 2, 1, 1, 1) = 42.0f;
        CHECK(x(0, 2, 1, 1, 1) == 42.0f);
        xt::view(x, 1, xt::all()) *= 0.0f;  // an xtensor expression over the tensor's memory
        CHECK(t.at(1, 2, 3, 4, 5) == 0.0f);
        CHECK(t.at(0, 2, 3, 4, 5) != 0.0f);
    }
    SECTION("a const tensor gives a read-only view of the same memory") {
        const Tensor<float>& c = t;
        const auto x = as_xtensor(c);
        CHECK(x.data() == c.data());
        CHECK(shape_of(x) == std::vector<std::size_t>{2, 3, 4, 5, 6});
        CHECK(xt::sum(x)() == Approx(double(t.size()) * double(t.size() - 1) / 2));
    }
    SECTION("a 2D tensor keeps its depth of one") {
        Tensor<double> p(Shape{1, 4, 1, 8, 8});
        CHECK(shape_of(as_xtensor(p)) == std::vector<std::size_t>{1, 4, 1, 8, 8});
        CHECK(as_xtensor(p).data() == p.data());
    }
}

TEST_CASE("copy_into and to_tensor copy xtensor expressions with a shape check", "[interop][xtensor]") {
    SECTION("an xarray of the tensor's shape, converted to the tensor's type") {
        xt::xarray<double> a = xt::arange<double>(2 * 3 * 1 * 2 * 2).reshape({2, 3, 1, 2, 2});
        Tensor<float> t(Shape{2, 3, 1, 2, 2});
        copy_into(t, a);
        for (std::size_t i = 0; i < t.size(); ++i) CHECK(t[i] == float(i));
    }
    SECTION("a lazy expression and a strided view") {
        xt::xtensor<float, 5> a = xt::arange<float>(24).reshape({1, 2, 1, 3, 4});
        Tensor<float> t(Shape{1, 2, 1, 4, 3});
        copy_into(t, xt::transpose(a, {0, 1, 2, 4, 3}) * 2.0f);
        CHECK(t.at(0, 1, 0, 3, 2) == 2.0f * a(0, 1, 0, 2, 3));
        CHECK(t.at(0, 0, 0, 1, 0) == 2.0f * a(0, 0, 0, 0, 1));
    }
    SECTION("an expression that reads the tensor it is written into") {
        Tensor<float> t(Shape{1, 1, 1, 2, 2});
        for (std::size_t i = 0; i < 4; ++i) t[i] = float(i);
        copy_into(t, xt::transpose(as_xtensor(t), {0, 1, 2, 4, 3}));
        CHECK(std::vector<float>(t.begin(), t.end()) == std::vector<float>{0, 2, 1, 3});
    }
    SECTION("a shape that differs is refused, naming both shapes, and the tensor is unchanged") {
        Tensor<float> t(Shape{1, 4, 1, 8, 8});
        t.fill(5.0f);
        const xt::xarray<float> wrong = xt::zeros<float>({1, 4, 1, 8, 9});
        CHECK(shape_error([&] { copy_into(t, wrong); }) ==
              "lightunet::copy_into: the xtensor expression's shape (1, 4, 1, 8, 9) differs from the tensor's (1, 4, 1, 8, 8) "
              "(n, c, d, h, w)");
        const xt::xarray<float> flat = xt::zeros<float>({4, 8, 8});
        CHECK(shape_error([&] { copy_into(t, flat); }).find("shape (4, 8, 8) differs from the tensor's (1, 4, 1, 8, 8)") !=
              std::string::npos);
        CHECK(t[0] == 5.0f);
    }
    SECTION("to_tensor takes the expression's shape and type, or the one asked for") {
        const xt::xtensor<double, 5> a = xt::ones<double>({1, 2, 3, 4, 5}) * 0.5;
        const Tensor<double> t = to_tensor(a);
        CHECK(t.shape() == Shape{1, 2, 3, 4, 5});
        CHECK(t[t.size() - 1] == 0.5);
        const Tensor<float> f = to_tensor<float>(a);
        CHECK(f.shape() == Shape{1, 2, 3, 4, 5});
        CHECK(f[0] == 0.5f);
        CHECK(shape_error([] { to_tensor(xt::xarray<float>(xt::zeros<float>({4, 8, 8}))); }) ==
              "lightunet::to_tensor: the xtensor expression's shape (4, 8, 8) has 3 dimensions, a tensor 5 (n, c, d, h, w)");
    }
}

TEST_CASE("Cases and volumes as xtensor views: [modality][z][y][x] and [z][y][x], in place", "[interop][xtensor]") {
    data::Case c;
    c.extent = {5, 4, 3};  // x, y, z
    c.images.resize(std::size_t(data::kModalityCount) * c.extent.voxels());
    for (std::size_t i = 0; i < c.images.size(); ++i) c.images[i] = float(i);
    c.labels.assign(c.extent.voxels(), 0);

    SECTION("images") {
        auto x = as_xtensor(c);
        CHECK(shape_of(x) == std::vector<std::size_t>{4, 3, 4, 5});
        REQUIRE(x.data() == c.images.data());
        // modality m, voxel (x=4, y=1, z=2): x fastest, then y, then z (data/case.hpp).
        const int m = int(data::Modality::flair);
        CHECK(&x(m, 2, 1, 4) == c.image(m) + (2 * 4 + 1) * 5 + 4);
        x(m, 2, 1, 4) = -1.0f;
        CHECK(c.image(m)[(2 * 4 + 1) * 5 + 4] == -1.0f);
        const data::Case& constant = c;
        CHECK(as_xtensor(constant).data() == c.images.data());
    }
    SECTION("labels") {
        auto y = labels_as_xtensor(c);
        CHECK(shape_of(y) == std::vector<std::size_t>{3, 4, 5});
        REQUIRE(y.data() == c.labels.data());
        y(1, 2, 3) = 3;
        CHECK(c.labels[(1 * 4 + 2) * 5 + 3] == 3);
        c.labels.clear();
        CHECK(shape_error([&] { labels_as_xtensor(c); }) ==
              "lightunet::as_xtensor: the case's labels hold 0 values, not the 60 of their extent 5x4x3");
    }
    SECTION("a NIfTI volume as read") {
        io::NiftiVolume v;
        v.extent = {5, 4, 3};
        v.values.assign(v.extent.voxels(), 1.0f);
        auto x = as_xtensor(v);
        CHECK(shape_of(x) == std::vector<std::size_t>{3, 4, 5});
        REQUIRE(x.data() == v.values.data());
        x(2, 3, 4) = 9.0f;
        CHECK(v.values.back() == 9.0f);
        v.values.pop_back();
        CHECK_THROWS_AS(as_xtensor(v), ShapeError);
    }
}

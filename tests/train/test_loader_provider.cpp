#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "lightunet/data/memory_source.hpp"
#include "lightunet/data/synthetic.hpp"
#include "lightunet/train/loader_provider.hpp"

using namespace lightunet;

namespace {
data::LoaderConfig config(data::LoaderMode mode) {
    data::LoaderConfig c;
    c.patch = {1, 32, 32};
    c.batch = 2;
    c.batches_per_epoch = 4;
    c.workers = 2;
    c.mode = mode;
    c.seed = 9;
    return c;
}
bool same(const Tensor<float>& a, const Tensor<float>& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
}  // namespace

TEST_CASE("LoaderProvider gives batch (epoch, index) wherever it is asked to start", "[loader_provider]") {
    data::SyntheticConfig sc;
    sc.extent = {32, 32, 16};
    const data::MemorySource source(data::synthetic_cases(sc, 1, 3));
    train::LoaderProvider seq(source, config(data::LoaderMode::train));
    CHECK(seq.batches(0) == 4);
    std::vector<Tensor<float>> all;
    Tensor<float> x;
    Tensor<std::uint8_t> y;
    for (long e = 0; e < 2; ++e)
        for (long k = 0; k < 4; ++k) {
            seq.fill(e, k, x, y);
            all.push_back(x);
        }
    CHECK_FALSE(same(all[0], all[1]));
    CHECK_FALSE(same(all[0], all[4]));
    // A fresh provider asked for (1, 2) first, as after a resume; then one going backwards.
    train::LoaderProvider jump(source, config(data::LoaderMode::train));
    jump.fill(1, 2, x, y);
    CHECK(same(x, all[6]));
    jump.fill(1, 3, x, y);
    CHECK(same(x, all[7]));
    jump.fill(0, 1, x, y);
    CHECK(same(x, all[1]));
    // Validation passes repeat the same batches.
    train::LoaderProvider val(source, config(data::LoaderMode::validate_center));
    const long n = val.batches(0);
    CHECK(n == 2);  // 3 cases in batches of 2
    std::vector<Tensor<float>> first;
    for (long k = 0; k < n; ++k) val.fill(0, k, x, y), first.push_back(x);
    for (long k = 0; k < n; ++k) {
        val.fill(5, k, x, y);
        CHECK(same(x, first[std::size_t(k)]));
    }
}

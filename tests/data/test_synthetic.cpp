// Synthetic BraTS: determinism per seed, skull-stripped background, tissue contrasts per
// modality as measured on real BraTS, tumour sub-region statistics, label nesting, geometry.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include <lightunet/data/synthetic.hpp>

using namespace lightunet::data;

namespace {

constexpr std::uint8_t as_byte(Tissue t) { return std::uint8_t(t); }

float median_where(const Case& c, int modality, const std::vector<std::uint8_t>& mask_source, std::uint8_t value) {
    std::vector<float> values;
    const float* image = c.image(modality);
    for (std::size_t v = 0; v < mask_source.size(); ++v)
        if (mask_source[v] == value) values.push_back(image[v]);
    REQUIRE(!values.empty());
    std::nth_element(values.begin(), values.begin() + std::ptrdiff_t(values.size() / 2), values.end());
    return values[values.size() / 2];
}

bool same_bytes(const SyntheticCase& a, const SyntheticCase& b) {
    return a.brats.images.size() == b.brats.images.size() &&
           std::memcmp(a.brats.images.data(), b.brats.images.data(), a.brats.images.size() * sizeof(float)) == 0 &&
           a.brats.labels == b.brats.labels && a.tissue == b.tissue && a.kind == b.kind;
}

}  // namespace

TEST_CASE("synthetic: same seed gives identical bytes, different seeds differ", "[data][synthetic]") {
    const SyntheticConfig config;
    const SyntheticCase a = generate_synthetic_case(config, 7), b = generate_synthetic_case(config, 7);
    const SyntheticCase c = generate_synthetic_case(config, 8);
    CHECK(same_bytes(a, b));
    CHECK(a.brats.id == "synthetic-7");
    CHECK_FALSE(a.brats.images == c.brats.images);
    CHECK_FALSE(a.brats.labels == c.brats.labels);
}

TEST_CASE("synthetic: skull-stripped integer images, labels only inside the brain", "[data][synthetic]") {
    const SyntheticConfig config;
    for (std::uint64_t seed : {1u, 2u, 3u}) {
        const SyntheticCase s = generate_synthetic_case(config, seed);
        const Case& c = s.brats;
        const std::size_t volume = c.extent.voxels();
        REQUIRE(c.images.size() == volume * kModalityCount);
        std::size_t brain = 0, bad_background = 0, bad_inside = 0, non_integer = 0, bad_labels = 0;
        for (std::size_t v = 0; v < volume; ++v) {
            const bool inside = s.tissue[v] != as_byte(Tissue::background);
            brain += inside;
            for (int m = 0; m < kModalityCount; ++m) {
                const float x = c.image(m)[v];
                if (!inside && x != 0.0f) ++bad_background;
                if (inside && !(x >= 1.0f && x <= 32767.0f)) ++bad_inside;
                if (x != std::round(x)) ++non_integer;
            }
            if (c.labels[v] > 3 || (!inside && c.labels[v] != 0) ||
                (c.labels[v] != 0) != (s.tissue[v] == as_byte(Tissue::tumour)))
                ++bad_labels;
        }
        INFO("seed " << seed);
        CHECK(bad_background == 0);
        CHECK(bad_inside == 0);
        CHECK(non_integer == 0);
        CHECK(bad_labels == 0);
        // The brain fills 13-19% of BraTS's field of view (1.17M-1.52M of 8.9M voxels measured).
        const double fraction = double(brain) / double(volume);
        CHECK(fraction > 0.11);
        CHECK(fraction < 0.21);
    }
}

TEST_CASE("synthetic: tissue contrasts per modality follow real BraTS", "[data][synthetic]") {
    const SyntheticConfig config;
    for (std::uint64_t seed : {11u, 12u, 13u, 14u}) {
        const SyntheticCase s = generate_synthetic_case(config, seed);
        const Case& c = s.brats;
        INFO("seed " << seed << ", tumour kind " << int(s.kind));
        auto tissue = [&](int m, Tissue t) { return median_where(c, m, s.tissue, as_byte(t)); };
        auto lesion = [&](int m, std::uint8_t label) { return median_where(c, m, c.labels, label); };
        const int t1 = int(Modality::t1), t1ce = int(Modality::t1ce), t2 = int(Modality::t2), flair = int(Modality::flair);
        for (int m : {t1, t1ce}) {
            CHECK(tissue(m, Tissue::white) > tissue(m, Tissue::grey));
            CHECK(tissue(m, Tissue::grey) > 1.3f * tissue(m, Tissue::csf));
        }
        CHECK(tissue(t2, Tissue::csf) > 1.5f * tissue(t2, Tissue::grey));
        CHECK(tissue(t2, Tissue::grey) > tissue(t2, Tissue::white));
        CHECK(tissue(flair, Tissue::grey) > tissue(flair, Tissue::white));
        CHECK(tissue(flair, Tissue::white) > 1.5f * tissue(flair, Tissue::csf));
        // Edema: bright on T2 and brightest on FLAIR.
        CHECK(lesion(t2, 2) > 1.3f * tissue(t2, Tissue::white));
        CHECK(lesion(flair, 2) > 1.4f * tissue(flair, Tissue::white));
        CHECK(lesion(flair, 2) > tissue(flair, Tissue::grey));
        if (std::count(c.labels.begin(), c.labels.end(), 3) > 50) {
            CHECK(lesion(t1ce, 3) > 1.3f * tissue(t1ce, Tissue::white));
            CHECK(lesion(t1ce, 3) > 1.3f * lesion(t1ce, 2));
        }
        if (s.kind == TumourKind::high_grade && std::count(c.labels.begin(), c.labels.end(), 1) > 50) {
            CHECK(lesion(t1, 1) < 0.8f * tissue(t1, Tissue::white));
            CHECK(lesion(t2, 1) > 1.5f * tissue(t2, Tissue::white));
        }
    }
}

TEST_CASE("synthetic: tumour kinds, sub-region presence and nesting across seeds", "[data][synthetic]") {
    const SyntheticConfig config;
    constexpr int cases = 40;
    std::array<int, 3> kinds{};
    int with_necrotic_core = 0, with_enhancing = 0, with_edema = 0;
    std::vector<float> white_t1;
    for (int seed = 100; seed < 100 + cases; ++seed) {
        const SyntheticCase s = generate_synthetic_case(config, std::uint64_t(seed));
        const Case& c = s.brats;
        INFO("seed " << seed << ", kind " << int(s.kind));
        ++kinds[std::size_t(s.kind)];
        std::array<std::size_t, 4> counts{};
        for (std::uint8_t l : c.labels) ++counts[std::min<std::size_t>(l, 3)];
        with_necrotic_core += counts[1] > 0;
        with_enhancing += counts[3] > 0;
        with_edema += counts[2] > 0;
        switch (s.kind) {
        case TumourKind::high_grade: CHECK(counts[1] > 0); CHECK(counts[3] > 0); break;
        case TumourKind::enhancing_solid: CHECK(counts[1] == 0); CHECK(counts[3] > 0); break;
        case TumourKind::low_grade: CHECK(counts[1] > 0); CHECK(counts[3] == 0); break;
        }
        // Nesting: the necrosis of a high-grade tumour is enclosed by tumour (no 6-neighbour is
        // healthy brain), so ET and TC sit inside WT as shells, not as separate blobs.
        if (s.kind == TumourKind::high_grade) {
            const VolumeExtent e = c.extent;
            std::size_t exposed = 0;
            for (int z = 1; z + 1 < e.z; ++z)
                for (int y = 1; y + 1 < e.y; ++y)
                    for (int x = 1; x + 1 < e.x; ++x) {
                        const std::size_t v = (std::size_t(z) * e.y + y) * e.x + x;
                        if (c.labels[v] != 1) continue;
                        const std::size_t sy = std::size_t(e.x), sz = std::size_t(e.x) * e.y;
                        for (std::size_t n : {v - 1, v + 1, v - sy, v + sy, v - sz, v + sz})
                            exposed += c.labels[n] == 0 && s.tissue[n] != as_byte(Tissue::background);
                    }
            CHECK(exposed == 0);
        }
        white_t1.push_back(median_where(c, int(Modality::t1), s.tissue, as_byte(Tissue::white)));
    }
    // Defaults: 60% high grade, 20% solid enhancing, 20% low grade.
    CHECK(kinds[0] >= 15);
    CHECK(kinds[1] >= 3);
    CHECK(kinds[2] >= 3);
    CHECK(with_edema == cases);
    CHECK(with_enhancing == kinds[0] + kinds[1]);
    CHECK(with_necrotic_core == kinds[0] + kinds[2]);
    // Scanner scales differ several-fold between cases, as in real BraTS (maxima 279..3924).
    const auto [lo, hi] = std::minmax_element(white_t1.begin(), white_t1.end());
    CHECK(*hi > 4.0f * *lo);
}

TEST_CASE("synthetic: BraTS grid and geometry", "[data][synthetic]") {
    const SyntheticCase s = generate_synthetic_case(SyntheticConfig::brats(), 3);
    const Case& c = s.brats;
    CHECK(c.extent == VolumeExtent{240, 240, 155});
    const Geometry& g = c.geometry;
    CHECK(g.extent == c.extent);
    CHECK(g.spacing == std::array<float, 3>{1, 1, 1});
    CHECK(g.sform_code == 1);
    CHECK(g.qform_code == 1);
    // The real files' sform: [-1 0 0 0; 0 -1 0 239; 0 0 1 0].
    CHECK(g.sform[0] == std::array<double, 4>{-1, 0, 0, 0});
    CHECK(g.sform[1] == std::array<double, 4>{0, -1, 0, 239});
    CHECK(g.sform[2] == std::array<double, 4>{0, 0, 1, 0});
    CHECK(c.crop.end == std::array<int, 3>{240, 240, 155});
    const std::size_t brain =
        std::size_t(std::count_if(s.tissue.begin(), s.tissue.end(), [](std::uint8_t t) { return t != 0; }));
    CHECK(brain > 1'000'000);
    CHECK(brain < 1'700'000);
    // Intensities like int16 scanner data: up to a few thousand.
    const float max_value = *std::max_element(c.images.begin(), c.images.end());
    CHECK(max_value > 200.0f);
    CHECK(max_value < 32767.0f);
}

TEST_CASE("synthetic: invalid configurations name the value", "[data][synthetic]") {
    SyntheticConfig config;
    config.extent = {8, 96, 64};
    CHECK_THROWS_WITH(generate_synthetic_case(config, 0), Catch::Contains("8x96x64"));
    config = SyntheticConfig{};
    config.high_grade_probability = 0.9;
    config.enhancing_solid_probability = 0.2;
    CHECK_THROWS_WITH(generate_synthetic_case(config, 0), Catch::Contains("not a distribution"));
}

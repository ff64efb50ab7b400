// PatchLoader over a MemorySource: determinism whatever the worker count, foreground
// oversampling ratio, augmentation invariants (labels move with images; flips and rotations are
// bijections), padding, label formats, validation modes, worker errors and shutdown.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <stdexcept>
#include <vector>

#include <lightunet/data/loader.hpp>
#include <lightunet/data/memory_source.hpp>
#include <lightunet/data/synthetic.hpp>

using namespace lightunet;
using namespace lightunet::data;

namespace {

const MemorySource& synthetic_source() {
    static const MemorySource source = [] {
        SyntheticConfig config;
        config.extent = {64, 64, 48};
        return MemorySource(synthetic_cases(config, 500, 4), {.normalize = true});
    }();
    return source;
}

// A case whose every voxel says who it is: image channel c holds c * 1e6 + label * 1e5 + voxel
// index (exact in float), labels are a hash of the index. After any voxel permutation the
// label must still equal the image's label digit, and all channels must name the same voxel.
Case self_describing_case(VolumeExtent e, const std::string& id = "described") {
    Case c;
    c.id = id;
    c.extent = e;
    const std::size_t volume = e.voxels();
    c.images.resize(volume * kModalityCount);
    c.labels.resize(volume);
    for (std::size_t v = 0; v < volume; ++v) {
        c.labels[v] = std::uint8_t(mix64(v) % 4);
        for (int m = 0; m < kModalityCount; ++m) c.image(m)[v] = float(m * 1'000'000 + c.labels[v] * 100'000 + v);
    }
    return c;
}

int voxel_id(float value, int channel) { return int(value) - channel * 1'000'000 - (int(value) % 1'000'000) / 100'000 * 100'000; }
int label_digit(float value, int channel) { return (int(value) - channel * 1'000'000) / 100'000; }

bool same_batch(const Batch& a, const Batch& b) {
    return a.images.shape() == b.images.shape() && a.labels.shape() == b.labels.shape() && a.epoch == b.epoch &&
           a.index == b.index && a.cases == b.cases &&
           std::memcmp(a.images.data(), b.images.data(), a.images.size() * sizeof(float)) == 0 &&
           std::memcmp(a.labels.data(), b.labels.data(), a.labels.size()) == 0;
}

std::vector<Batch> collect(const CaseSource& source, LoaderConfig config, int count) {
    PatchLoader loader(source, config);
    std::vector<Batch> batches(static_cast<std::size_t>(count));
    for (Batch& b : batches) loader.next(b);
    return batches;
}

// The 16 voxel permutations of a [D][H][W] grid with H == W that the loader may apply:
// the dihedral group of the axial square times a flip in z, built from rot90 and two flips.
std::vector<std::vector<int>> permutation_group(Extent p) {
    const std::size_t size = p.size();
    auto apply = [&](const std::vector<int>& a, auto map) {
        std::vector<int> out(size);
        for (int d = 0; d < p.d; ++d)
            for (int h = 0; h < p.h; ++h)
                for (int w = 0; w < p.w; ++w) {
                    const auto [sd, sh, sw] = map(d, h, w);
                    out[(std::size_t(d) * p.h + h) * p.w + w] = a[(std::size_t(sd) * p.h + sh) * p.w + sw];
                }
        return out;
    };
    std::vector<int> identity(size);
    std::iota(identity.begin(), identity.end(), 0);
    std::vector<std::vector<int>> group;
    for (int flip_d = 0; flip_d < 2; ++flip_d)
        for (int flip_h = 0; flip_h < 2; ++flip_h) {
            std::vector<int> a = identity;
            if (flip_d) a = apply(a, [&](int d, int h, int w) { return std::array<int, 3>{p.d - 1 - d, h, w}; });
            if (flip_h) a = apply(a, [&](int d, int h, int w) { return std::array<int, 3>{d, p.h - 1 - h, w}; });
            for (int turn = 0; turn < 4; ++turn) {
                group.push_back(a);
                a = apply(a, [&](int d, int h, int w) { return std::array<int, 3>{d, w, p.w - 1 - h}; });
            }
        }
    return group;
}

class FailingSource final : public CaseSource {
public:
    FailingSource(const CaseSource& inner, std::size_t failing) : inner_(inner), failing_(failing) {}
    std::size_t size() const override { return inner_.size(); }
    std::string id(std::size_t i) const override { return i == failing_ ? "bad-case" : inner_.id(i); }
    VolumeExtent extent(std::size_t i) const override { return inner_.extent(i); }
    bool has_labels(std::size_t i) const override { return inner_.has_labels(i); }
    std::vector<std::array<int, 3>> foreground(std::size_t i) const override { return inner_.foreground(i); }
    void read(std::size_t i, const Box& box, float* images, std::uint8_t* labels) const override {
        if (i == failing_) throw std::runtime_error("disk on fire");
        inner_.read(i, box, images, labels);
    }
    Case load(std::size_t i) const override { return inner_.load(i); }

private:
    const CaseSource& inner_;
    std::size_t failing_;
};

// A training configuration whose batches are prepared inside next() (no workers).
LoaderConfig in_order(Extent patch, int batch, std::size_t batches_per_epoch, std::uint64_t seed) {
    LoaderConfig config;
    config.patch = patch;
    config.batch = batch;
    config.batches_per_epoch = batches_per_epoch;
    config.seed = seed;
    config.workers = 0;
    return config;
}

}  // namespace

TEST_CASE("loader: batches depend only on (seed, epoch, batch), not on the workers", "[data][loader]") {
    const MemorySource& source = synthetic_source();
    LoaderConfig config = in_order({16, 32, 32}, 2, 5, 42);
    const std::vector<Batch> reference = collect(source, config, 10);
    CHECK(reference[4].last_in_epoch);
    CHECK(reference[5].epoch == 1);
    CHECK(reference[5].index == 0);
    for (int workers : {1, 2, 3}) {
        for (int depth : {1, 3}) {
            config.workers = workers;
            config.queue_depth = depth;
            const std::vector<Batch> batches = collect(source, config, 10);
            for (std::size_t k = 0; k < batches.size(); ++k) {
                INFO("workers " << workers << ", queue depth " << depth << ", batch " << k);
                CHECK(same_batch(batches[k], reference[k]));
            }
        }
    }
    SECTION("resuming at an epoch reproduces it") {
        config.first_epoch = 1;
        const std::vector<Batch> resumed = collect(source, config, 5);
        for (std::size_t k = 0; k < resumed.size(); ++k) CHECK(same_batch(resumed[k], reference[k + 5]));
    }
    SECTION("another seed gives other batches") {
        config.seed = 43;
        const std::vector<Batch> other = collect(source, config, 3);
        for (std::size_t k = 0; k < other.size(); ++k) CHECK_FALSE(same_batch(other[k], reference[k]));
    }
}

TEST_CASE("loader: ranks drawing disjoint item ranges see exactly the global batch", "[data][loader][distributed]") {
    const MemorySource& source = synthetic_source();
    LoaderConfig config = in_order({1, 32, 32}, 6, 3, 7);
    const std::vector<Batch> global = collect(source, config, 4);
    for (int ranks : {2, 3}) {
        const int local = config.batch / ranks;
        for (int r = 0; r < ranks; ++r) {
            LoaderConfig mine = config;
            mine.batch = local;
            mine.first_item = r * local;
            mine.workers = 1;
            const std::vector<Batch> part = collect(source, mine, 4);
            for (std::size_t k = 0; k < part.size(); ++k) {
                INFO(ranks << " ranks, rank " << r << ", batch " << k);
                const std::size_t images = part[k].images.size(), labels = part[k].labels.size();
                CHECK(std::equal(part[k].images.begin(), part[k].images.end(), global[k].images.begin() + std::ptrdiff_t(r * images)));
                CHECK(std::equal(part[k].labels.begin(), part[k].labels.end(), global[k].labels.begin() + std::ptrdiff_t(r * labels)));
                CHECK(std::equal(part[k].cases.begin(), part[k].cases.end(), global[k].cases.begin() + r * local));
            }
        }
    }
    config.first_item = -1;
    CHECK_THROWS_WITH(PatchLoader(source, config), Catch::Contains("first_item -1"));
}

TEST_CASE("loader: foreground oversampling centres the configured fraction on tumour", "[data][loader]") {
    const MemorySource& source = synthetic_source();
    LoaderConfig config;
    config.patch = {1, 32, 32};
    config.batch = 8;
    config.augmentation = Augmentation::none();
    config.workers = 2;
    constexpr int batches = 100;
    auto centre_tumour_fraction = [&](double fraction) {
        config.foreground_fraction = fraction;
        config.batches_per_epoch = batches;
        PatchLoader loader(source, config);
        Batch b;
        int hits = 0;
        for (int k = 0; k < batches; ++k) {
            loader.next(b);
            for (int i = 0; i < config.batch; ++i) hits += b.labels.at(i, 0, 0, 16, 16) != 0;
        }
        return double(hits) / (batches * config.batch);
    };
    const double random_hits = centre_tumour_fraction(0.0);  // tumour share of uniform positions
    CHECK(random_hits < 0.15);
    CHECK(centre_tumour_fraction(1.0) == 1.0);
    const double third = centre_tumour_fraction(1.0 / 3.0);
    const double expected = 1.0 / 3.0 + (2.0 / 3.0) * random_hits;
    INFO("random positions hit tumour " << random_hits << ", oversampled " << third << ", expected " << expected);
    CHECK(std::abs(third - expected) < 0.06);  // 800 patches: standard error ~0.017
}

TEST_CASE("loader: labels move with images; flips and rotations are bijections", "[data][loader]") {
    const Extent patch{6, 12, 12};
    std::vector<Case> cases;
    cases.push_back(self_describing_case({patch.w, patch.h, patch.d}));
    const MemorySource source(std::move(cases));
    const Case& original = source.at(0);
    const std::vector<std::vector<int>> group = permutation_group(patch);

    LoaderConfig config;
    config.patch = patch;
    config.batch = 4;
    config.batches_per_epoch = 16;
    config.foreground_fraction = 0.0;  // patch == case: no padding
    config.augmentation = Augmentation::none();
    config.augmentation.flip = true;
    config.augmentation.rotate90 = true;
    PatchLoader loader(source, config);
    Batch b;
    std::set<std::size_t> seen;
    for (std::size_t k = 0; k < config.batches_per_epoch; ++k) {
        loader.next(b);
        for (int i = 0; i < config.batch; ++i) {
            std::vector<int> ids(patch.size());
            bool consistent = true;
            for (std::size_t v = 0; v < patch.size(); ++v) {
                ids[v] = voxel_id(b.images.channel(i, 0)[v], 0);
                for (int m = 0; m < kModalityCount; ++m) {
                    const float value = b.images.channel(i, m)[v];
                    consistent = consistent && voxel_id(value, m) == ids[v] && label_digit(value, m) == b.labels.channel(i, 0)[v];
                }
            }
            INFO("batch " << k << ", item " << i);
            CHECK(consistent);
            const auto match = std::find(group.begin(), group.end(), ids);
            REQUIRE(match != group.end());  // a voxel permutation the loader may make, hence a bijection
            seen.insert(std::size_t(match - group.begin()));
            for (int m = 0; m < kModalityCount; ++m) {
                const double sum_out = std::accumulate(b.images.channel(i, m), b.images.channel(i, m) + patch.size(), 0.0);
                const double sum_in = std::accumulate(original.image(m), original.image(m) + patch.size(), 0.0);
                CHECK(sum_out == sum_in);
            }
        }
    }
    CHECK(seen.size() >= 12);  // 64 items over 16 equally likely transforms
}

TEST_CASE("loader: intensity augmentation is monotone per channel and leaves labels alone", "[data][loader]") {
    const Case original = synthetic_source().load(1);
    const Extent whole{original.extent.z, original.extent.y, original.extent.x};
    std::vector<Case> cases{original};
    const MemorySource source(std::move(cases));
    LoaderConfig config;
    config.patch = whole;
    config.batch = 1;
    config.batches_per_epoch = 6;
    config.foreground_fraction = 0.0;
    config.augmentation = Augmentation::none();
    config.augmentation.scale = 0.2f;
    config.augmentation.shift = 0.2f;
    config.augmentation.gamma_probability = 0.5f;
    PatchLoader loader(source, config);
    Batch b;
    std::vector<std::size_t> order(whole.size());
    int changed = 0;
    for (std::size_t k = 0; k < config.batches_per_epoch; ++k) {
        loader.next(b);
        REQUIRE(std::equal(original.labels.begin(), original.labels.end(), b.labels.data()));
        for (int m = 0; m < kModalityCount; ++m) {
            const float* in = original.image(m);
            const float* out = b.images.channel(0, m);
            std::iota(order.begin(), order.end(), 0);
            std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t c) { return in[a] < in[c]; });
            std::size_t inversions = 0;
            for (std::size_t j = 1; j < order.size(); ++j) inversions += out[order[j]] < out[order[j - 1]] - 1e-5f;
            INFO("batch " << k << ", channel " << m);
            CHECK(inversions == 0);
            changed += !std::equal(in, in + whole.size(), out);
        }
    }
    CHECK(changed > 0);
}

TEST_CASE("loader: cases smaller than the patch are padded with zeros and background", "[data][loader]") {
    const VolumeExtent small{20, 20, 10};
    std::vector<Case> cases;
    cases.push_back(self_describing_case(small, "small"));
    const MemorySource source(std::move(cases));
    const Case& c = source.at(0);
    LoaderConfig config;
    config.patch = {16, 32, 32};
    config.batch = 1;
    config.batches_per_epoch = 2;
    config.foreground_fraction = 0.0;
    config.augmentation = Augmentation::none();
    PatchLoader loader(source, config);
    Batch b;
    loader.next(b);
    REQUIRE(b.images.shape() == Shape{1, 4, 16, 32, 32});
    // Centred: 6 voxels of padding before x and y, 3 before z.
    CHECK(b.boxes[0].begin == std::array<int, 3>{-6, -6, -3});
    std::size_t mismatches = 0;
    for (int d = 0; d < 16; ++d)
        for (int h = 0; h < 32; ++h)
            for (int w = 0; w < 32; ++w) {
                const int x = w - 6, y = h - 6, z = d - 3;
                const bool inside = x >= 0 && x < small.x && y >= 0 && y < small.y && z >= 0 && z < small.z;
                const std::size_t v = inside ? (std::size_t(z) * small.y + y) * small.x + x : 0;
                for (int m = 0; m < kModalityCount; ++m)
                    mismatches += b.images.at(0, m, d, h, w) != (inside ? c.image(m)[v] : 0.0f);
                mismatches += b.labels.at(0, 0, d, h, w) != (inside ? c.labels[v] : 0);
            }
    CHECK(mismatches == 0);
}

TEST_CASE("loader: class indices for softmax, WT/TC/ET masks for sigmoid", "[data][loader]") {
    const MemorySource& source = synthetic_source();
    LoaderConfig config;
    config.patch = {8, 24, 24};
    config.batch = 3;
    config.batches_per_epoch = 4;
    config.foreground_fraction = 1.0;
    config.labels = LabelFormat::classes;
    const std::vector<Batch> classes = collect(source, config, 4);
    config.labels = LabelFormat::regions;
    const std::vector<Batch> regions = collect(source, config, 4);
    std::array<std::size_t, 4> class_counts{};
    for (std::size_t k = 0; k < classes.size(); ++k) {
        REQUIRE(classes[k].labels.shape() == Shape{3, 1, 8, 24, 24});
        REQUIRE(regions[k].labels.shape() == Shape{3, 3, 8, 24, 24});
        CHECK(std::memcmp(classes[k].images.data(), regions[k].images.data(), classes[k].images.size() * sizeof(float)) == 0);
        std::size_t wrong = 0;
        for (int i = 0; i < 3; ++i)
            for (std::size_t v = 0; v < 8 * 24 * 24; ++v) {
                const std::uint8_t cls = classes[k].labels.channel(i, 0)[v];
                ++class_counts[std::min<std::size_t>(cls, 3)];
                const std::uint8_t wt = regions[k].labels.channel(i, 0)[v], tc = regions[k].labels.channel(i, 1)[v],
                                   et = regions[k].labels.channel(i, 2)[v];
                wrong += cls > 3 || wt != (cls != 0) || tc != (cls == 1 || cls == 3) || et != (cls == 3) || et > tc || tc > wt;
            }
        CHECK(wrong == 0);
    }
    // Foreground patches see the tumour's classes.
    CHECK(class_counts[2] > 0);
    CHECK(class_counts[1] + class_counts[3] > 0);
}

TEST_CASE("loader: validation yields centre patches and whole cases in order", "[data][loader]") {
    const MemorySource& source = synthetic_source();
    LoaderConfig config;
    config.patch = {16, 32, 32};
    config.batch = 3;
    config.mode = LoaderMode::validate_center;
    {
        PatchLoader loader(source, config);
        REQUIRE(loader.batches_per_epoch() == 2);
        Batch b;
        loader.next(b);
        CHECK(b.images.shape().n == 3);
        CHECK(b.cases == std::vector<std::size_t>{0, 1, 2});
        CHECK(b.boxes[0].begin == std::array<int, 3>{16, 16, 16});
        loader.next(b);
        CHECK(b.images.shape().n == 1);
        CHECK(b.last_in_epoch);
        loader.next(b);  // the next epoch repeats the pass
        CHECK(b.epoch == 1);
        CHECK(b.cases == std::vector<std::size_t>{0, 1, 2});
    }
    const Case c = source.load(2);
    config.mode = LoaderMode::validate_whole;
    SECTION("3D: one case per batch") {
        PatchLoader loader(source, config);
        Batch b;
        for (int k = 0; k < 3; ++k) loader.next(b);
        REQUIRE(b.images.shape() == Shape{1, 4, 48, 64, 64});
        CHECK(std::equal(c.images.begin(), c.images.end(), b.images.data()));
        CHECK(std::equal(c.labels.begin(), c.labels.end(), b.labels.data()));
    }
    SECTION("2D: the case's slices are the batch") {
        config.patch = {1, 32, 32};
        PatchLoader loader(source, config);
        Batch b;
        for (int k = 0; k < 3; ++k) loader.next(b);
        REQUIRE(b.images.shape() == Shape{48, 4, 1, 64, 64});
        std::size_t mismatches = 0;
        for (int z = 0; z < 48; ++z)
            for (int m = 0; m < kModalityCount; ++m)
                mismatches += !std::equal(b.images.channel(z, m), b.images.channel(z, m) + 64 * 64,
                                          c.image(m) + std::size_t(z) * 64 * 64);
        CHECK(mismatches == 0);
    }
}

namespace {

// A 12x12x16 case holding slices 2-4, 7 and 10-14 only (as a Kaggle folder keeping part of a
// volume): present voxels describe themselves (self_describing_case), missing slices hold a
// value no present voxel has, and background labels.
Case partial_case(const std::string& id = "partial") {
    Case c = self_describing_case({12, 12, 16}, id);
    c.present_slices = {{2, 5}, {7, 8}, {10, 15}};
    const std::size_t plane = 12 * 12;
    for (int z = 0; z < 16; ++z) {
        const bool present = std::any_of(c.present_slices.begin(), c.present_slices.end(),
                                         [&](const SliceRange& r) { return z >= r.begin && z < r.end; });
        if (present) continue;
        for (std::size_t i = 0; i < plane; ++i) {
            c.labels[std::size_t(z) * plane + i] = 0;
            for (int m = 0; m < kModalityCount; ++m) c.image(m)[std::size_t(z) * plane + i] = -7777.0f;
        }
    }
    return c;
}

// The slices (z) the voxels of item `item` came from, -1 for a missing slice's voxel (padding
// in x and y, 0, is left out: voxel 0 lies in missing slice 0).
std::set<int> item_slices(const Batch& b, int item) {
    std::set<int> slices;
    const float* v = b.images.channel(item, 0);
    for (std::size_t i = 0, n = b.images.shape().spatial(); i < n; ++i)
        if (v[i] != 0.0f) slices.insert(v[i] == -7777.0f ? -1 : voxel_id(v[i], 0) / (12 * 12));
    return slices;
}

// Calls check(batch, item) for every item of the next `batches` batches.
template <class Check>
void for_each_item(PatchLoader& loader, int batches, Check&& check) {
    Batch b;
    for (int k = 0; k < batches; ++k) {
        loader.next(b);
        for (int item = 0; item < b.images.shape().n; ++item) check(b, item);
    }
}

}  // namespace

TEST_CASE("loader: partial cases give patches only from present slices, 3D only from contiguous runs", "[data][loader][partial]") {
    const MemorySource source(std::vector<Case>{partial_case()});
    REQUIRE(source.present_slices(0) == std::vector<SliceRange>{{2, 5}, {7, 8}, {10, 15}});
    LoaderConfig config;
    config.batch = 4;
    config.workers = 0;
    config.foreground_fraction = 0.5;  // foreground centres in slice 7 must move or fall back in 3D
    config.augmentation = {true, true, 0.0f, 0.0f, 0.0f, {1.0f, 1.0f}};  // voxels move, values stay readable

    SECTION("2D: every present slice is drawn, no missing one") {
        config.patch = {1, 8, 8};
        PatchLoader loader(source, config);
        REQUIRE(loader.left_out().empty());
        std::set<int> seen;
        for_each_item(loader, 40, [&](const Batch& b, int item) {
            const std::set<int> slices = item_slices(b, item);
            REQUIRE(slices.size() == 1);
            REQUIRE(*slices.begin() >= 0);
            REQUIRE(b.boxes[std::size_t(item)].begin[2] == *slices.begin());
            seen.insert(*slices.begin());
        });
        CHECK(seen == std::set<int>{2, 3, 4, 7, 10, 11, 12, 13, 14});
    }
    SECTION("3D: a patch lies inside one run at least as deep as the patch") {
        config.patch = {3, 8, 8};
        PatchLoader loader(source, config);
        std::set<int> first_slices;
        for_each_item(loader, 40, [&](const Batch& b, int item) {
            const std::set<int> slices = item_slices(b, item);
            const int z0 = b.boxes[std::size_t(item)].begin[2];
            REQUIRE(slices == std::set<int>{z0, z0 + 1, z0 + 2});
            REQUIRE(((z0 == 2) || (z0 >= 10 && z0 <= 12)));  // runs 2-4 and 10-14; 7 is too short
            first_slices.insert(z0);
        });
        CHECK(first_slices == std::set<int>{2, 10, 11, 12});
    }
    SECTION("a case without a run as deep as the patch is left out, and named; none at all is refused") {
        config.patch = {6, 8, 8};
        Case whole = self_describing_case({12, 12, 16}, "whole");
        const MemorySource mixed(std::vector<Case>{partial_case(), whole});
        PatchLoader loader(mixed, config);
        REQUIRE(loader.left_out().size() == 1);
        CHECK(loader.left_out()[0].first == 0);
        CHECK_THAT(loader.left_out()[0].second, Catch::Contains("'partial' holds 9 of its slices, 5 contiguous at most, no run of 6 for a patch"));
        Batch b;
        for (int k = 0; k < 10; ++k) {
            loader.next(b);
            for (std::size_t c : b.cases) REQUIRE(c == 1);
        }
        REQUIRE_THROWS_WITH(PatchLoader(source, config), Catch::Contains("no case holds 6 contiguous slices") &&
                                                             Catch::Contains("'partial' holds 9 of its slices"));
    }
    SECTION("validation: the centre patch on the present slice nearest the middle, whole cases of present slices") {
        config.patch = {1, 8, 8};
        config.mode = LoaderMode::validate_center;
        {
            PatchLoader loader(source, config);
            Batch b;
            loader.next(b);
            CHECK(item_slices(b, 0) == std::set<int>{7});  // middle 8: 7 is nearer than 10
        }
        config.patch = {3, 8, 8};
        {
            PatchLoader loader(source, config);
            Batch b;
            loader.next(b);
            CHECK(item_slices(b, 0) == std::set<int>{10, 11, 12});  // the nearest run deep enough
        }
        config.patch = {1, 8, 8};
        config.mode = LoaderMode::validate_whole;
        PatchLoader loader(source, config);
        Batch b;
        loader.next(b);
        REQUIRE(b.slices == std::vector<int>{2, 3, 4, 7, 10, 11, 12, 13, 14});
        REQUIRE(b.images.shape().n == 9);
        for (int item = 0; item < 9; ++item) CHECK(item_slices(b, item) == std::set<int>{b.slices[std::size_t(item)]});
    }
    SECTION("MemorySource refuses runs that overlap, touch or leave the case") {
        for (const std::vector<SliceRange>& bad : {std::vector<SliceRange>{{2, 5}, {4, 8}}, std::vector<SliceRange>{{2, 5}, {5, 8}},
                                                   std::vector<SliceRange>{{10, 17}}, std::vector<SliceRange>{{3, 3}}}) {
            Case c = partial_case();
            c.present_slices = bad;
            REQUIRE_THROWS_WITH(MemorySource(std::vector<Case>{c}), Catch::Contains("case 'partial': present_slices: slice run"));
        }
    }
}

TEST_CASE("loader: a worker's error reaches the consumer with the case id, in order", "[data][loader]") {
    const FailingSource source(synthetic_source(), 2);
    LoaderConfig config;
    config.patch = {1, 16, 16};
    config.batch = 2;
    config.batches_per_epoch = 12;
    auto failing_batches = [&](int workers) {
        config.workers = workers;
        PatchLoader loader(source, config);
        Batch b;
        std::vector<int> failed;
        for (int k = 0; k < 12; ++k) {
            try {
                loader.next(b);
                CHECK(std::find(b.cases.begin(), b.cases.end(), 2u) == b.cases.end());
            } catch (const std::runtime_error& e) {
                const std::string message = e.what();
                CHECK_THAT(message, Catch::Contains("case 'bad-case'") && Catch::Contains("disk on fire") &&
                                        Catch::Contains("batch " + std::to_string(k)));
                failed.push_back(k);
            }
        }
        return failed;
    };
    const std::vector<int> inline_failures = failing_batches(0);
    CHECK_FALSE(inline_failures.empty());
    CHECK(failing_batches(2) == inline_failures);
    CHECK(failing_batches(3) == inline_failures);
}

TEST_CASE("loader: training refuses unlabelled cases, bad configurations name the value", "[data][loader]") {
    Case unlabelled = self_describing_case({16, 16, 8}, "no-seg");
    unlabelled.labels.clear();
    std::vector<Case> cases;
    cases.push_back(std::move(unlabelled));
    const MemorySource source(std::move(cases));
    LoaderConfig config;
    config.patch = {1, 16, 16};
    config.batch = 1;
    {
        PatchLoader loader(source, config);
        Batch b;
        CHECK_THROWS_WITH(loader.next(b), Catch::Contains("case 'no-seg'") && Catch::Contains("needs labels"));
    }
    config.mode = LoaderMode::validate_whole;
    {
        PatchLoader loader(source, config);
        Batch b;
        loader.next(b);
        CHECK_FALSE(b.labelled);
    }
    config.mode = LoaderMode::train;
    config.foreground_fraction = 1.5;
    CHECK_THROWS_WITH(PatchLoader(source, config), Catch::Contains("foreground_fraction 1.5"));
    config.foreground_fraction = 0.5;
    config.patch = {0, 16, 16};
    CHECK_THROWS_WITH(PatchLoader(source, config), Catch::Contains("0x16x16"));
    const MemorySource empty(std::vector<Case>{});
    config.patch = {1, 16, 16};
    CHECK_THROWS_WITH(PatchLoader(empty, config), Catch::Contains("no cases"));
}

TEST_CASE("loader: destruction with a full queue and busy workers returns", "[data][loader]") {
    const MemorySource& source = synthetic_source();
    LoaderConfig config;
    config.patch = {16, 32, 32};
    config.batch = 2;
    config.workers = 3;
    config.queue_depth = 2;
    for (int consumed : {0, 1, 5}) {
        PatchLoader loader(source, config);
        Batch b;
        for (int k = 0; k < consumed; ++k) loader.next(b);
    }
    SUCCEED("three loaders stopped and joined");
}

TEST_CASE("MemorySource: checks cases, reads regions, lists foreground per class", "[data][loader]") {
    Case bad = self_describing_case({8, 8, 4}, "bad-label");
    bad.labels[5] = 4;
    std::vector<Case> cases;
    cases.push_back(bad);
    CHECK_THROWS_WITH(MemorySource(cases), Catch::Contains("bad-label") && Catch::Contains("label 4"));
    cases[0].labels[5] = 0;
    cases[0].images[3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(MemorySource(cases), Catch::Contains("non-finite") && Catch::Contains("t1"));

    const MemorySource& source = synthetic_source();
    for (std::size_t i = 0; i < source.size(); ++i) {
        const Case& c = source.at(i);
        std::array<bool, 4> present{}, listed{};
        for (std::uint8_t l : c.labels) present[l] = true;
        const auto foreground = source.foreground(i);
        CHECK(foreground.size() <= 3 * 4096);
        for (const auto& v : foreground) {
            const std::uint8_t l = c.labels[(std::size_t(v[2]) * c.extent.y + v[1]) * c.extent.x + v[0]];
            CHECK(l != 0);
            listed[l] = true;
        }
        for (int cls = 1; cls < 4; ++cls) CHECK(listed[std::size_t(cls)] == present[std::size_t(cls)]);
        for (std::uint64_t draw : {std::uint64_t(0), std::uint64_t(1) << 63, ~std::uint64_t(0)})
            CHECK(source.foreground_voxel(i, draw) == (foreground.empty() ? std::nullopt
                                                                            : std::optional(foreground[pick(draw, foreground.size())])));
    }
}

// Label maps per edition, unknown values, regions and the way back to raw labels.
#include <catch2/catch.hpp>

#include <lightunet/data/labels.hpp>

using namespace lightunet::data;

TEST_CASE("Edition label maps convert raw values to canonical classes and back", "[data][labels]") {
    const std::vector<std::uint8_t> raw2018{0, 1, 2, 4, 4, 0};
    const std::vector<std::int16_t> raw2023{0, 1, 2, 3, 3, 0};
    const std::vector<std::uint8_t> canonical{0, 1, 2, 3, 3, 0};
    const LabelMap map2018 = LabelMap::for_edition(Edition::brats2017_2021);
    const LabelMap map2023 = LabelMap::for_edition(Edition::brats2023);
    REQUIRE(map2018.apply(raw2018.data(), raw2018.size(), "a.nii") == canonical);
    REQUIRE(map2023.apply(raw2023.data(), raw2023.size(), "b.nii") == canonical);
    REQUIRE(to_raw_labels(canonical, Edition::brats2017_2021) == raw2018);
    REQUIRE(to_raw_labels(canonical, Edition::brats2023) == std::vector<std::uint8_t>{0, 1, 2, 3, 3, 0});
    REQUIRE(map2018.raw_values() == std::vector<int>{0, 1, 2, 4});
    REQUIRE(edition_from_name(edition_name(Edition::brats2023)) == Edition::brats2023);
    REQUIRE_THROWS_AS(edition_from_name("brats2099"), DataError);
}

TEST_CASE("Unknown, fractional and out-of-range labels raise naming file, value and count", "[data][labels]") {
    const LabelMap map2018 = LabelMap::for_edition(Edition::brats2017_2021);
    const std::vector<float> with_three{0, 3, 3, 3, 1, 2};
    try {
        map2018.apply(with_three.data(), with_three.size(), "case_seg.nii.gz");
        FAIL("label 3 accepted in a 2018 map");
    } catch (const DataError& error) {
        const std::string message = error.what();
        CHECK(message.find("case_seg.nii.gz") != std::string::npos);
        CHECK(message.find("value 3 (3 voxels)") != std::string::npos);
    }
    // 2024 post-treatment resection cavity: rejected unless mapped on purpose.
    const std::vector<int> with_cavity{0, 4, 1};
    LabelMap map2023 = LabelMap::for_edition(Edition::brats2023);
    REQUIRE_THROWS_WITH(map2023.apply(with_cavity.data(), with_cavity.size(), "x-seg.nii.gz"),
                        Catch::Contains("value 4 (1 voxels)"));
    map2023.set(4, 0);
    REQUIRE(map2023.apply(with_cavity.data(), with_cavity.size(), "x-seg.nii.gz") == std::vector<std::uint8_t>{0, 0, 1});
    const std::vector<double> odd{0.5, -1, 300};
    REQUIRE_THROWS_WITH(map2018.apply(odd.data(), odd.size(), "odd.nii"),
                        Catch::Contains("odd.nii") && Catch::Contains("1 non-integer") && Catch::Contains("2 values outside"));
    REQUIRE_THROWS_AS(LabelMap().set(256, 1), std::invalid_argument);
    REQUIRE_THROWS_AS(LabelMap().set(1, 4), std::invalid_argument);
    REQUIRE_THROWS_AS(LabelMap().set(0, 0).raw_value(3), DataError);
}

TEST_CASE("Regions WT/TC/ET over canonical classes", "[data][labels]") {
    const std::vector<std::uint8_t> classes{0, 1, 2, 3};
    REQUIRE(region_mask(classes, Region::whole_tumour) == std::vector<std::uint8_t>{0, 1, 1, 1});
    REQUIRE(region_mask(classes, Region::tumour_core) == std::vector<std::uint8_t>{0, 1, 0, 1});
    REQUIRE(region_mask(classes, Region::enhancing) == std::vector<std::uint8_t>{0, 0, 0, 1});
    const std::vector<std::uint8_t> masks = region_masks(classes);
    REQUIRE(masks.size() == 12);
    REQUIRE(classes_from_regions(masks.data(), masks.data() + 4, masks.data() + 8, 4) == classes);
    STATIC_REQUIRE(in_region(3, Region::enhancing));
    STATIC_REQUIRE_FALSE(in_region(2, Region::tumour_core));
}

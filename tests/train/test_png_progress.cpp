#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "lightunet/io/png.hpp"
#include "lightunet/train/progress.hpp"
#include "train_test_support.hpp"

using namespace lightunet;

namespace {
std::vector<unsigned char> file_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
std::uint32_t be32(const unsigned char* p) { return (std::uint32_t(p[0]) << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }
std::string read_text(std::FILE* f) {
    std::rewind(f);
    std::string s;
    for (int c; (c = std::fgetc(f)) != EOF;) s += char(c);
    return s;
}
}  // namespace

TEST_CASE("PNG files carry the signature and IHDR and decode to the pixels written", "[png]") {
    test::ScratchDir dir("png");
    SECTION("grayscale") {
        std::vector<std::uint8_t> px(7 * 5);
        for (std::size_t i = 0; i < px.size(); ++i) px[i] = std::uint8_t(i * 7);
        io::write_png(dir.file("g.png"), 7, 5, 1, px.data());
        const auto bytes = file_bytes(dir.file("g.png"));
        REQUIRE(bytes.size() > 33);
        const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        CHECK(std::equal(sig, sig + 8, bytes.begin()));
        CHECK(std::string(bytes.begin() + 12, bytes.begin() + 16) == "IHDR");
        CHECK(be32(&bytes[16]) == 7);
        CHECK(be32(&bytes[20]) == 5);
        CHECK(int(bytes[24]) == 8);  // bit depth
        CHECK(int(bytes[25]) == 0);  // colour type gray
        const auto img = io::read_png(dir.file("g.png"));
        CHECK(img.channels == 1);
        CHECK(img.pixels == px);
    }
    SECTION("RGB canvas with text") {
        io::Canvas c(20, 10, io::kBlack);
        c.text(0, 0, "A", io::kWhite);  // 'A' row 0 is .###.
        CHECK(c.get(0, 0).r == 0);
        CHECK(c.get(1, 0).r == 255);
        CHECK(c.get(3, 0).g == 255);
        CHECK(c.get(4, 0).b == 0);
        CHECK(c.get(0, 3).r == 255);  // row 3 is #####
        c.write(dir.file("c.png"));
        const auto bytes = file_bytes(dir.file("c.png"));
        CHECK(int(bytes[25]) == 2);  // colour type RGB
        const auto img = io::read_png(dir.file("c.png"));
        CHECK(img.width == 20);
        CHECK(img.height == 10);
        CHECK(img.pixels == c.pixels());
    }
    SECTION("errors name the file") {
        CHECK_THROWS_WITH(io::read_png(dir.file("missing.png")), Catch::Contains("missing.png"));
        std::vector<std::uint8_t> px(4);
        CHECK_THROWS_WITH(io::write_png(dir.file("x.png"), 2, 2, 2, px.data()), Catch::Contains("channels must be 1 or 3"));
    }
}

TEST_CASE("Case overlay and loss-curve pictures decode with the expected layout", "[png]") {
    test::ScratchDir dir("overlay");
    data::Case c;
    c.id = "case1";
    c.extent = {24, 20, 9};
    c.images.resize(4 * c.extent.voxels());
    c.labels.resize(c.extent.voxels());
    for (std::size_t i = 0; i < c.images.size(); ++i) c.images[i] = float(i % 97);
    for (int z = 3; z < 7; ++z)
        for (int y = 5; y < 12; ++y)
            for (int x = 6; x < 14; ++x) c.labels[(std::size_t(z) * 20 + y) * 24 + x] = std::uint8_t(1 + (x + y) % 3);
    std::vector<std::uint8_t> pred(c.labels);
    pred[0] = 3;
    const auto zs = io::overlay_slices(c, pred, 3);
    CHECK(zs == std::vector<int>{4, 5, 6});  // tumour in z 3..6: the 25/50/75 % points
    io::write_case_overlay(dir.file("o.png"), c, pred, 3, 2);
    const auto img = io::read_png(dir.file("o.png"));
    CHECK(img.channels == 3);
    CHECK(img.width == 6 * (48 + 4) + 4);
    CHECK(img.height == 3 * (40 + 4) + 4 + 14 + 12);

    std::vector<train::EpochRecord> h(5);
    for (int i = 0; i < 5; ++i) {
        h[i].epoch = i + 1;
        h[i].train_loss = 1.0 / (i + 1);
        h[i].val_loss = 1.2 / (i + 1);
        h[i].dice = {0.5 + 0.1 * i, 0.4 + 0.1 * i, std::numeric_limits<double>::quiet_NaN()};
    }
    train::write_history_png(dir.file("curve.png"), h);
    const auto curve = io::read_png(dir.file("curve.png"));
    CHECK(curve.width == 960);
    CHECK(curve.height == 380);
    // Something was drawn in the train-loss colour.
    bool found = false;
    for (std::size_t i = 0; i + 2 < curve.pixels.size(); i += 3)
        found |= curve.pixels[i] == 31 && curve.pixels[i + 1] == 119 && curve.pixels[i + 2] == 180;
    CHECK(found);
}

TEST_CASE("Progress bar and epoch line formatting", "[progress]") {
    using train::format_progress;
    // 540/1287 = 41.96 %: 4 full cells and 1/8 of the fifth; 540 / 62 s = 8.71 it/s; 747 left -> 85.8 s.
    CHECK(format_progress("Epoch 3/10", 540, 1287, 62.0, 0.231) ==
          "Epoch 3/10: 42%|████▏     | 540/1287 [01:02<01:25, 8.7it/s, loss=0.231]");
    CHECK(format_progress("E", 4, 4, 10.0, std::nan("")) == "E: 100%|██████████| 4/4 [00:10<00:00, 2.50s/it]");
    CHECK(format_progress("E", 1, 4, 2.0, std::nan("")) == "E: 25%|██▌       | 1/4 [00:02<00:06, 2.00s/it]");
    CHECK(format_progress("E", 0, 4, 0.0, 1.0) == "E: 0%|          | 0/4 [00:00<?, ?it/s, loss=1]");
    // A resumed epoch: 500 items were done before the clock started; 40 in 62 s is 0.645 it/s, 747 left take 1158 s.
    CHECK(format_progress("Epoch 3/10", 540, 1287, 62.0, 0.231, 10, 500) ==
          "Epoch 3/10: 42%|████▏     | 540/1287 [01:02<19:17, 1.55s/it, loss=0.231]");
    CHECK(train::format_duration(3723) == "1:02:03");
    CHECK(train::format_duration(59.9) == "00:59");

    train::EpochRecord r;
    r.epoch = 3, r.train_loss = 0.231, r.val_loss = 0.25, r.dice = {0.81, 0.70, 0.65};
    CHECK(train::format_epoch_line(r) == "[INFO] Epoch 3 | Train Loss 0.2310 | Val Loss 0.2500 | Dice WT/TC/ET 0.81/0.70/0.65");
    train::EpochRecord t;
    t.epoch = 1, t.train_loss = 0.5;
    CHECK(train::format_epoch_line(t) == "[INFO] Epoch 1 | Train Loss 0.5000");
}

TEST_CASE("Progress bar redraws with \\r on a terminal and prints plain lines otherwise", "[progress]") {
    SECTION("terminal") {
        std::FILE* f = std::tmpfile();
        {
            train::ProgressBar bar("T", 3, f, {.terminal = true, .redraw_seconds = 0.0});
            for (long i = 1; i <= 3; ++i) bar.update(i, 0.5);
        }
        const std::string s = read_text(f);
        std::fclose(f);
        CHECK(std::count(s.begin(), s.end(), '\r') == 4);  // three updates and the close
        CHECK(std::count(s.begin(), s.end(), '\n') == 1);
        CHECK(s.find("3/3") != std::string::npos);
    }
    SECTION("not a terminal: throttled lines, the last always shown") {
        std::FILE* f = std::tmpfile();
        {
            train::ProgressBar bar("P", 100, f, {.terminal = false, .line_seconds = 3600.0});
            for (long i = 1; i <= 100; ++i) bar.update(i, 0.5);
        }
        const std::string s = read_text(f);
        std::fclose(f);
        CHECK(s.find('\r') == std::string::npos);
        CHECK(std::count(s.begin(), s.end(), '\n') == 2);  // the first update, then 100/100
        CHECK(s.find("100/100") != std::string::npos);
    }
}

TEST_CASE("History CSV and JSON", "[progress]") {
    test::ScratchDir dir("history");
    std::vector<train::EpochRecord> h(2);
    h[0].epoch = 1, h[0].train_loss = 0.5, h[0].lr = 0.001, h[0].seconds = 2;
    h[1].epoch = 2, h[1].train_loss = 0.25, h[1].val_loss = 0.3, h[1].dice = {0.9, 0.8, 0.7}, h[1].rollbacks = 1;
    h[1].telemetry[0] = 61.5, h[1].telemetry[3] = 83, h[1].telemetry[4] = 151.25, h[1].telemetry[8] = 64;  // CPU C, GPU C, GPU W, throttle
    train::write_history_csv(dir.file("h.csv"), h);
    train::write_history_json(dir.file("h.json"), h);
    std::ifstream c(dir.file("h.csv"));
    std::string header, l1, l2;
    std::getline(c, header), std::getline(c, l1), std::getline(c, l2);
    CHECK(header == "epoch,train_loss,val_loss,dice_WT,dice_TC,dice_ET,lr,seconds,rollbacks,cpu_temp_c,cpu_power_w,rss_mb,"
                    "gpu_temp_c,gpu_power_w,gpu_power_limit_w,gpu_sm_clock_mhz,gpu_memory_mb,gpu_throttle_reasons");
    CHECK(l1 == "1,0.500000,nan,nan,nan,nan,0.001,2.000,0,,,,,,,,,");  // no watchdog: telemetry unknown
    CHECK(l2 == "2,0.250000,0.300000,0.900000,0.800000,0.700000,0,0.000,1,61.5,,,83,151.25,,,,64");
    std::ifstream j(dir.file("h.json"));
    const std::string js((std::istreambuf_iterator<char>(j)), std::istreambuf_iterator<char>());
    CHECK(js.find("{\"epoch\": 1, \"train_loss\": 0.5, \"val_loss\": null, \"dice\": {\"WT\": null") != std::string::npos);
    CHECK(js.find("\"dice\": {\"WT\": 0.9, \"TC\": 0.8, \"ET\": 0.7}, \"lr\": 0, \"seconds\": 0, \"rollbacks\": 1, \"telemetry\": "
                  "{\"cpu_temp_c\": 61.5, \"cpu_power_w\": null, \"rss_mb\": null, \"gpu_temp_c\": 83, \"gpu_power_w\": 151.25, "
                  "\"gpu_power_limit_w\": null, \"gpu_sm_clock_mhz\": null, \"gpu_memory_mb\": null, \"gpu_throttle_reasons\": 64}}") !=
          std::string::npos);
    // The curves get a temperature panel when an epoch has one.
    train::write_history_png(dir.file("h.png"), h);
    CHECK(io::read_png(dir.file("h.png")).width == 1440);
    h[1].telemetry = train::EpochRecord::unknown_telemetry();
    train::write_history_png(dir.file("h2.png"), h);
    CHECK(io::read_png(dir.file("h2.png")).width == 960);
}

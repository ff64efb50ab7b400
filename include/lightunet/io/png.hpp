#pragma once
// PNG pictures through libpng's simplified API: a writer and reader for 8-bit grayscale and RGB,
// a small RGB canvas (rectangles, lines, a built-in 5x7 bitmap font, grayscale images with label
// overlays), a line plot with axes and ticks, and the per-case overlay picture (axial slices:
// the 4 modalities, ground truth and prediction drawn over FLAIR).
//
// Label colours (canonical classes): 1 necrotic / non-enhancing core red, 2 edema green,
// 3 enhancing tumour yellow.
#include <png.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "../data/case.hpp"

namespace lightunet::io {

struct Image {
    int width = 0, height = 0, channels = 0;  // channels 1 (gray) or 3 (RGB)
    std::vector<std::uint8_t> pixels;        // rows top to bottom, channels interleaved
};

// Writes 8-bit grayscale (channels 1) or RGB (channels 3) pixels, rows top to bottom.
inline void write_png(const std::string& path, int width, int height, int channels, const std::uint8_t* pixels) {
    if (width <= 0 || height <= 0) throw std::invalid_argument("write_png " + path + ": empty image " + std::to_string(width) + "x" + std::to_string(height));
    if (channels != 1 && channels != 3)
        throw std::invalid_argument("write_png " + path + ": channels must be 1 or 3, not " + std::to_string(channels));
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    image.width = png_uint_32(width);
    image.height = png_uint_32(height);
    image.format = channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    if (!png_image_write_to_file(&image, path.c_str(), 0, pixels, 0, nullptr)) {
        const std::string why = image.message;
        png_image_free(&image);
        throw std::runtime_error("write_png " + path + ": " + why);
    }
}

inline void write_png(const std::string& path, const Image& img) {
    if (img.pixels.size() != std::size_t(img.width) * img.height * img.channels)
        throw std::invalid_argument("write_png " + path + ": pixel buffer does not match " + std::to_string(img.width) + "x" +
                                    std::to_string(img.height) + "x" + std::to_string(img.channels));
    write_png(path, img.width, img.height, img.channels, img.pixels.data());
}

// Reads any PNG, converted to 8-bit grayscale or RGB (whichever the file's colour type is closer to).
inline Image read_png(const std::string& path) {
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, path.c_str())) {
        const std::string why = image.message;
        png_image_free(&image);
        throw std::runtime_error("read_png " + path + ": " + why);
    }
    const bool colour = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
    image.format = colour ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    Image out{int(image.width), int(image.height), colour ? 3 : 1, {}};
    out.pixels.resize(PNG_IMAGE_SIZE(image));
    if (!png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr)) {
        const std::string why = image.message;
        png_image_free(&image);
        throw std::runtime_error("read_png " + path + ": " + why);
    }
    return out;
}

struct Rgb {
    std::uint8_t r = 0, g = 0, b = 0;
};
inline constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGray{128, 128, 128}, kLightGray{220, 220, 220};

// Colour of a canonical label (0 = none).
inline constexpr Rgb label_colour(int label) {
    switch (label) {
        case 1: return {230, 40, 40};    // necrotic / non-enhancing core
        case 2: return {40, 200, 60};    // edema
        case 3: return {250, 230, 30};   // enhancing tumour
        default: return {0, 0, 0};
    }
}

namespace detail {
// 5x7 glyphs, one byte per row, bit 4 = leftmost column. Lower case is drawn as upper case.
inline const std::uint8_t* glyph(char ch) {
    static constexpr std::string_view chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:/-_()%=+[]|<>? '";
    static constexpr std::uint8_t rows[][7] = {
        {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
        {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
        {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
        {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
        {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},  // A B
        {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},  // C D
        {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},  // E F
        {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // G H
        {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},  // I J
        {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},  // K L
        {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},  // M N
        {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},  // O P
        {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}, {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},  // Q R
        {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // S T
        {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},  // U V
        {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},  // W X
        {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},  // Y Z
        {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}, {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08},  // . ,
        {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}, {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},  // : /
        {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},  // - _
        {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},  // ( )
        {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},  // % =
        {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}, {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E},  // + [
        {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}, {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // ] |
        {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}, {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},  // < >
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}, {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ? space
        {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}};                                            // '
    static_assert(sizeof(rows) / sizeof(rows[0]) == chars.size(), "one glyph per character");
    if (ch >= 'a' && ch <= 'z') ch = char(ch - 'a' + 'A');
    const std::size_t i = chars.find(ch);
    return rows[i == std::string_view::npos ? chars.find('?') : i];
}
}  // namespace detail

// An RGB drawing surface. Drawing clips at the edges.
class Canvas {
public:
    Canvas(int width, int height, Rgb background = kWhite) : w_(width), h_(height), px_(std::size_t(width) * height * 3) {
        if (width <= 0 || height <= 0)
            throw std::invalid_argument("Canvas: empty size " + std::to_string(width) + "x" + std::to_string(height));
        fill_rect(0, 0, width, height, background);
    }
    int width() const { return w_; }
    int height() const { return h_; }
    const std::vector<std::uint8_t>& pixels() const { return px_; }

    Rgb get(int x, int y) const {
        const std::uint8_t* p = &px_[(std::size_t(y) * w_ + x) * 3];
        return {p[0], p[1], p[2]};
    }
    void set(int x, int y, Rgb c) {
        if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
        std::uint8_t* p = &px_[(std::size_t(y) * w_ + x) * 3];
        p[0] = c.r, p[1] = c.g, p[2] = c.b;
    }
    // alpha in [0, 1]: 1 replaces the pixel.
    void blend(int x, int y, Rgb c, double alpha) {
        if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
        std::uint8_t* p = &px_[(std::size_t(y) * w_ + x) * 3];
        auto mix = [&](std::uint8_t old, std::uint8_t v) { return std::uint8_t(std::lround(old + alpha * (double(v) - old))); };
        p[0] = mix(p[0], c.r), p[1] = mix(p[1], c.g), p[2] = mix(p[2], c.b);
    }
    void fill_rect(int x, int y, int w, int h, Rgb c) {
        for (int j = std::max(0, y); j < std::min(h_, y + h); ++j)
            for (int i = std::max(0, x); i < std::min(w_, x + w); ++i) set(i, j, c);
    }
    void rect(int x, int y, int w, int h, Rgb c) {
        line(x, y, x + w - 1, y, c), line(x, y + h - 1, x + w - 1, y + h - 1, c);
        line(x, y, x, y + h - 1, c), line(x + w - 1, y, x + w - 1, y + h - 1, c);
    }
    // Bresenham; thickness > 1 draws a square brush.
    void line(int x0, int y0, int x1, int y1, Rgb c, int thickness = 1) {
        const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
        int err = dx + dy;
        const int r0 = -(thickness - 1) / 2, r1 = thickness / 2;
        while (true) {
            for (int a = r0; a <= r1; ++a)
                for (int b = r0; b <= r1; ++b) set(x0 + a, y0 + b, c);
            if (x0 == x1 && y0 == y1) break;
            const int e2 = 2 * err;
            if (e2 >= dy) err += dy, x0 += sx;
            if (e2 <= dx) err += dx, y0 += sy;
        }
    }
    // Text in the 5x7 font, top-left at (x, y); each glyph cell is 6 x 8 pixels times scale.
    void text(int x, int y, std::string_view s, Rgb c, int scale = 1) {
        for (char ch : s) {
            const std::uint8_t* g = detail::glyph(ch);
            for (int row = 0; row < 7; ++row)
                for (int col = 0; col < 5; ++col)
                    if (g[row] & (0x10 >> col)) fill_rect(x + col * scale, y + row * scale, scale, scale, c);
            x += 6 * scale;
        }
    }
    static int text_width(std::string_view s, int scale = 1) { return int(s.size()) * 6 * scale; }

    // A w x h grayscale plane (rows top to bottom) mapped linearly from [lo, hi] to [0, 255],
    // drawn at (x, y) with each pixel repeated `zoom` times; labels (optional, same layout)
    // drawn over it in label_colour with the given alpha.
    void image(int x, int y, const float* plane, int w, int h, float lo, float hi, int zoom = 1,
               const std::uint8_t* labels = nullptr, double alpha = 0.5) {
        const float scale = hi > lo ? 255.f / (hi - lo) : 0.f;
        for (int j = 0; j < h; ++j)
            for (int i = 0; i < w; ++i) {
                const float v = std::clamp((plane[std::size_t(j) * w + i] - lo) * scale, 0.f, 255.f);
                const auto g = std::uint8_t(std::lround(v));
                const int lab = labels ? labels[std::size_t(j) * w + i] : 0;
                for (int a = 0; a < zoom; ++a)
                    for (int b = 0; b < zoom; ++b) {
                        set(x + i * zoom + b, y + j * zoom + a, {g, g, g});
                        if (lab) blend(x + i * zoom + b, y + j * zoom + a, label_colour(lab), alpha);
                    }
            }
    }

    void write(const std::string& path) const { write_png(path, w_, h_, 3, px_.data()); }

private:
    int w_, h_;
    std::vector<std::uint8_t> px_;
};

// One polyline of a plot: values[i] is drawn at x = i + 1 (epochs count from 1). Non-finite
// values leave a gap.
struct PlotSeries {
    std::string label;
    std::vector<double> values;
    Rgb colour;
};

inline std::string tick_label(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", std::abs(v) < 1e-12 ? 0.0 : v);
    return buf;
}

// A line plot inside the box (x, y, w, h): title, axes with ticks and labels, legend.
// y_min/y_max: NaN picks the range from the data.
inline void plot_series(Canvas& canvas, int x, int y, int w, int h, std::string_view title, std::span<const PlotSeries> series,
                        double y_min = std::numeric_limits<double>::quiet_NaN(),
                        double y_max = std::numeric_limits<double>::quiet_NaN()) {
    const int left = x + 48, right = x + w - 10, top = y + 22, bottom = y + h - 28;
    if (right - left < 20 || bottom - top < 20) throw std::invalid_argument("plot_series: box too small");
    canvas.text(x + (w - Canvas::text_width(title, 2)) / 2, y + 2, title, kBlack, 2);
    std::size_t count = 0;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& s : series) {
        count = std::max(count, s.values.size());
        for (double v : s.values)
            if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (std::isfinite(y_min)) lo = y_min;
    if (std::isfinite(y_max)) hi = y_max;
    if (hi - lo < 1e-9) lo -= 0.5, hi += 0.5;
    const double pad = std::isfinite(y_min) && std::isfinite(y_max) ? 0.0 : 0.05 * (hi - lo);
    lo -= pad, hi += pad;
    const int n = int(std::max<std::size_t>(count, 2));
    auto px = [&](double i) { return left + int(std::lround((i - 1) / double(n - 1) * (right - left))); };
    auto py = [&](double v) { return bottom - int(std::lround((v - lo) / (hi - lo) * (bottom - top))); };
    // Grid, axes and ticks.
    for (int t = 0; t <= 4; ++t) {
        const double v = lo + (hi - lo) * t / 4.0;
        const int yy = py(v);
        canvas.line(left, yy, right, yy, kLightGray);
        canvas.line(left - 4, yy, left, yy, kBlack);
        const std::string s = tick_label(v);
        canvas.text(left - 6 - Canvas::text_width(s), yy - 3, s, kBlack);
    }
    const int step = std::max(1, (n + 9) / 10);
    for (int i = 1; i <= n; i += step) {
        const int xx = px(i);
        canvas.line(xx, bottom, xx, bottom + 4, kBlack);
        const std::string s = std::to_string(i);
        canvas.text(xx - Canvas::text_width(s) / 2, bottom + 7, s, kBlack);
    }
    canvas.line(left, top, left, bottom, kBlack);
    canvas.line(left, bottom, right, bottom, kBlack);
    canvas.text(right - Canvas::text_width("epoch"), bottom + 18, "epoch", kGray);
    // Lines (a single point shows as a dot), then the legend.
    for (const auto& s : series) {
        for (std::size_t i = 0; i < s.values.size(); ++i) {
            if (!std::isfinite(s.values[i])) continue;
            const int x0 = px(double(i + 1)), y0 = py(s.values[i]);
            canvas.fill_rect(x0 - 1, y0 - 1, 3, 3, s.colour);
            if (i + 1 < s.values.size() && std::isfinite(s.values[i + 1]))
                canvas.line(x0, y0, px(double(i + 2)), py(s.values[i + 1]), s.colour, 2);
        }
    }
    int ly = top + 4;
    for (const auto& s : series) {
        const int lx = right - Canvas::text_width(s.label) - 24;
        canvas.line(lx, ly + 3, lx + 14, ly + 3, s.colour, 2);
        canvas.text(lx + 18, ly, s.label, kBlack);
        ly += 11;
    }
}

// Axial slices that show the tumour: up to `count` z indices spread over the slices holding
// labels (the ground truth, else the prediction), else over the middle of the volume.
inline std::vector<int> overlay_slices(const data::Case& c, std::span<const std::uint8_t> prediction, int count) {
    const auto& e = c.extent;
    const std::size_t plane = std::size_t(e.x) * e.y;
    std::span<const std::uint8_t> lab = c.has_labels() ? std::span<const std::uint8_t>(c.labels) : prediction;
    std::vector<std::pair<std::size_t, int>> area;  // (voxels, z)
    if (lab.size() == e.voxels())
        for (int z = 0; z < e.z; ++z) {
            const std::size_t a = std::size_t(std::count_if(lab.begin() + z * plane, lab.begin() + (z + 1) * plane,
                                                             [](std::uint8_t v) { return v != 0; }));
            if (a) area.push_back({a, z});
        }
    std::vector<int> zs;
    if (area.empty()) {
        for (int i = 0; i < count; ++i) zs.push_back(std::min(e.z - 1, e.z * (i + 1) / (count + 1)));
    } else {
        // The slices at the 25/50/75 % points of the tumour's extent (for count 3).
        for (int i = 0; i < count; ++i) zs.push_back(area[std::min(area.size() - 1, area.size() * (i + 1) / (count + 1))].second);
    }
    std::sort(zs.begin(), zs.end());
    zs.erase(std::unique(zs.begin(), zs.end()), zs.end());
    return zs;
}

// One row per axial slice: t1, t1ce, t2, flair, ground truth over flair, prediction over
// flair, with column titles. Intensities are windowed per modality at the 0.5 / 99.5
// percentiles of the case's non-zero voxels. `prediction` is a canonical label volume (x fastest)
// or empty; a case without labels leaves the ground-truth column out.
inline void write_case_overlay(const std::string& path, const data::Case& c, std::span<const std::uint8_t> prediction,
                               int slices = 3, int zoom = 1) {
    const auto& e = c.extent;
    if (c.images.size() != e.voxels() * data::kModalityCount)
        throw std::invalid_argument("write_case_overlay " + path + ": case " + c.id + " holds " + std::to_string(c.images.size()) +
                                    " image values, expected 4 x " + std::to_string(e.voxels()));
    if (!prediction.empty() && prediction.size() != e.voxels())
        throw std::invalid_argument("write_case_overlay " + path + ": prediction has " + std::to_string(prediction.size()) +
                                    " voxels, case " + c.id + " has " + std::to_string(e.voxels()));
    std::array<std::pair<float, float>, data::kModalityCount> window{};
    std::vector<float> sample;
    for (int m = 0; m < data::kModalityCount; ++m) {
        sample.clear();
        const float* img = c.image(m);
        const std::size_t stride = std::max<std::size_t>(1, e.voxels() / 200000);
        for (std::size_t i = 0; i < e.voxels(); i += stride)
            if (img[i] != 0.f) sample.push_back(img[i]);
        if (sample.empty()) {
            window[m] = {0.f, 1.f};
            continue;
        }
        auto at = [&](double q) {
            auto it = sample.begin() + std::ptrdiff_t(q * double(sample.size() - 1));
            std::nth_element(sample.begin(), it, sample.end());
            return *it;
        };
        window[m] = {at(0.005), at(0.995)};
    }
    const std::vector<int> zs = overlay_slices(c, prediction, slices);
    std::vector<const char*> titles{"T1", "T1CE", "T2", "FLAIR"};
    if (c.has_labels()) titles.push_back("TRUTH");
    if (!prediction.empty()) titles.push_back("PREDICTION");
    const int pw = e.x * zoom, ph = e.y * zoom, gap = 4, head = 14;
    Canvas canvas(int(titles.size()) * (pw + gap) + gap, int(zs.size()) * (ph + gap) + gap + head + 12, kBlack);
    for (std::size_t t = 0; t < titles.size(); ++t)
        canvas.text(gap + int(t) * (pw + gap) + (pw - Canvas::text_width(titles[t])) / 2, 4, titles[t], kWhite);
    const std::size_t plane = std::size_t(e.x) * e.y;
    for (std::size_t r = 0; r < zs.size(); ++r) {
        const int y = head + gap + int(r) * (ph + gap);
        const std::size_t off = std::size_t(zs[r]) * plane;
        // Canvas rows go top to bottom; draw y flipped so anterior is up in radiological views.
        std::vector<float> flipped(plane);
        std::vector<std::uint8_t> lab(plane);
        auto flip_img = [&](const float* src) {
            for (int j = 0; j < e.y; ++j) std::copy_n(src + off + std::size_t(e.y - 1 - j) * e.x, e.x, flipped.data() + std::size_t(j) * e.x);
        };
        auto flip_lab = [&](const std::uint8_t* src) {
            for (int j = 0; j < e.y; ++j) std::copy_n(src + off + std::size_t(e.y - 1 - j) * e.x, e.x, lab.data() + std::size_t(j) * e.x);
        };
        int col = 0;
        for (int m = 0; m < data::kModalityCount; ++m, ++col) {
            flip_img(c.image(m));
            canvas.image(gap + col * (pw + gap), y, flipped.data(), e.x, e.y, window[m].first, window[m].second, zoom);
        }
        flip_img(c.image(int(data::Modality::flair)));
        const auto [lo, hi] = window[int(data::Modality::flair)];
        if (c.has_labels()) {
            flip_lab(c.labels.data());
            canvas.image(gap + col++ * (pw + gap), y, flipped.data(), e.x, e.y, lo, hi, zoom, lab.data());
        }
        if (!prediction.empty()) {
            flip_lab(prediction.data());
            canvas.image(gap + col++ * (pw + gap), y, flipped.data(), e.x, e.y, lo, hi, zoom, lab.data());
        }
        // The slice index of the original volume (a cropped case starts at crop.begin[2]).
        canvas.text(gap + 2, y + 2, "z=" + std::to_string(zs[r] + (c.crop.extent().voxels() ? c.crop.begin[2] : 0)), kWhite);
    }
    // Legend.
    const int ly = canvas.height() - 11;
    int lx = gap;
    for (int l = 1; l <= 3; ++l) {
        static constexpr const char* names[] = {"", "NECROTIC", "EDEMA", "ENHANCING"};
        canvas.fill_rect(lx, ly, 8, 8, label_colour(l));
        canvas.text(lx + 11, ly, names[l], kWhite);
        lx += 11 + Canvas::text_width(names[l]) + 10;
    }
    canvas.write(path);
}

}  // namespace lightunet::io

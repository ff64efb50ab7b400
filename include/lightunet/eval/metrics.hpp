#pragma once
// Segmentation metrics per BraTS region: Dice and the 95th-percentile Hausdorff distance (HD95).
//
// Regions over canonical classes (0 background, 1 necrotic, 2 edema, 3 enhancing):
//   WT (whole tumour) = {1, 2, 3}, TC (tumour core) = {1, 3}, ET (enhancing tumour) = {3}.
//
// Conventions (exactly how each case is scored):
// - Dice = 2|P n G| / (|P| + |G|). Both empty: Dice 1. One empty, the other not: Dice 0.
// - HD95: surface voxels of a mask are its voxels with at least one 6-neighbour outside the
//   mask; neighbours beyond the volume count as outside, except along an axis of extent 1 (a
//   2D slice has no z neighbours). For each surface voxel of P, the Euclidean distance (mm,
//   voxel spacing applied) to the nearest surface voxel of G, and vice versa;
//   HD95 = max(q95(P -> G), q95(G -> P)) with q95 the 95th percentile with linear interpolation
//   (numpy's default). Both empty: HD95 0. One empty, the other not: HD95 = `empty_hd95`,
//   by default the diagonal of the volume in mm (BraTS' 240 x 240 x 155 grid at 1 mm gives
//   373.13, the value the BraTS tools use).
// - Distances come from an exact separable Euclidean distance transform (Felzenszwalb &
//   Huttenlocher), computed only over the bounding box of both masks.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "../config/unet_config.hpp"
#include "../data/case.hpp"

namespace lightunet::eval {

inline constexpr int kRegions = 3;
inline constexpr std::array<const char*, kRegions> kRegionLabels{"WT", "TC", "ET"};

// Is canonical class `label` inside region r (0 WT, 1 TC, 2 ET)?
constexpr bool in_region(std::uint8_t label, int region) {
    switch (region) {
        case 0: return label >= 1 && label <= 3;
        case 1: return label == 1 || label == 3;
        case 2: return label == 3;
        default: return false;
    }
}

// Voxel grid: x fastest, then y, then z (as data::Case stores labels).
struct Grid {
    int x = 1, y = 1, z = 1;
    std::array<double, 3> spacing{1.0, 1.0, 1.0};  // mm along x, y, z
    std::size_t voxels() const { return std::size_t(x) * y * z; }
    double voxel_mm3() const { return spacing[0] * spacing[1] * spacing[2]; }
    double diagonal_mm() const {
        const double a = x * spacing[0], b = y * spacing[1], c = z * spacing[2];
        return std::sqrt(a * a + b * b + c * c);
    }
};

struct MetricOptions {
    std::optional<double> empty_hd95;  // HD95 when exactly one mask is empty; default: grid diagonal
};

// Running intersection / size counts of a region over any number of voxels.
struct DiceCounts {
    std::uint64_t intersection = 0, predicted = 0, truth = 0;
    double dice() const {
        if (predicted + truth == 0) return 1.0;
        return 2.0 * double(intersection) / double(predicted + truth);
    }
    void add(const DiceCounts& o) {
        intersection += o.intersection;
        predicted += o.predicted;
        truth += o.truth;
    }
};

inline std::array<DiceCounts, kRegions> region_counts(std::span<const std::uint8_t> prediction,
                                                      std::span<const std::uint8_t> truth) {
    if (prediction.size() != truth.size())
        throw std::invalid_argument("region_counts: prediction has " + std::to_string(prediction.size()) +
                                    " voxels, ground truth " + std::to_string(truth.size()));
    std::array<DiceCounts, kRegions> c{};
    for (std::size_t i = 0; i < truth.size(); ++i) {
        for (int r = 0; r < kRegions; ++r) {
            const bool p = in_region(prediction[i], r), g = in_region(truth[i], r);
            c[r].predicted += p;
            c[r].truth += g;
            c[r].intersection += p && g;
        }
    }
    return c;
}

namespace detail {

// 1D squared-distance transform of sampled function f (inf = no feature) at positions i * step.
// v (n ints) and z (n + 1 doubles) are scratch.
inline void edt_1d(const double* f, double* out, int n, double step, int* v, double* z) {
    constexpr double inf = std::numeric_limits<double>::infinity();
    int k = -1;
    for (int q = 0; q < n; ++q) {
        if (!(f[q] < inf)) continue;
        const double xq = q * step;
        double s = -inf;
        while (k >= 0) {
            const double xp = v[k] * step;
            s = ((f[q] + xq * xq) - (f[v[k]] + xp * xp)) / (2.0 * (xq - xp));
            if (s <= z[k]) --k;
            else break;
        }
        ++k;
        v[k] = q;
        z[k] = k == 0 ? -inf : s;
    }
    if (k < 0) {
        std::fill_n(out, n, inf);
        return;
    }
    z[k + 1] = inf;
    int j = 0;
    for (int q = 0; q < n; ++q) {
        const double xq = q * step;
        while (z[j + 1] < xq) ++j;
        const double d = xq - v[j] * step;
        out[q] = d * d + f[v[j]];
    }
}

}  // namespace detail

// Exact squared Euclidean distance (mm^2) from every voxel of an x/y/z grid to the nearest
// feature voxel (feature[i] != 0); infinity when there is none. `dist` gets grid.voxels() values.
inline void squared_distance_transform(const std::uint8_t* feature, const Grid& grid, std::vector<double>& dist) {
    constexpr double inf = std::numeric_limits<double>::infinity();
    const std::size_t n = grid.voxels();
    dist.resize(n);
    for (std::size_t i = 0; i < n; ++i) dist[i] = feature[i] ? 0.0 : inf;
    const int len = std::max({grid.x, grid.y, grid.z});
    std::vector<double> line(len), out(len), z(len + 1);
    std::vector<int> v(len);
    const std::array<int, 3> ext{grid.x, grid.y, grid.z};
    const std::array<std::size_t, 3> stride{1, std::size_t(grid.x), std::size_t(grid.x) * grid.y};
    for (int axis = 0; axis < 3; ++axis) {
        const int a = ext[axis];
        if (a == 1) continue;
        const int o1 = axis == 0 ? 1 : 0, o2 = axis == 2 ? 1 : 2;  // the two other axes
        for (int j = 0; j < ext[o2]; ++j)
            for (int i = 0; i < ext[o1]; ++i) {
                const std::size_t base = std::size_t(i) * stride[o1] + std::size_t(j) * stride[o2];
                for (int t = 0; t < a; ++t) line[t] = dist[base + t * stride[axis]];
                detail::edt_1d(line.data(), out.data(), a, grid.spacing[axis], v.data(), z.data());
                for (int t = 0; t < a; ++t) dist[base + t * stride[axis]] = out[t];
            }
    }
}

// 95th percentile with linear interpolation between order statistics (numpy's default).
inline double percentile95(std::vector<double>& values) {
    if (values.empty()) throw std::invalid_argument("percentile95: no values");
    std::sort(values.begin(), values.end());
    const double pos = 0.95 * double(values.size() - 1);
    const std::size_t lo = std::size_t(pos);
    const double frac = pos - double(lo);
    if (lo + 1 >= values.size()) return values[lo];
    return values[lo] + frac * (values[lo + 1] - values[lo]);
}

// HD95 between two binary masks on the grid (see the conventions at the top).
inline double hd95(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b, const Grid& grid,
                   const MetricOptions& options = {}) {
    if (a.size() != grid.voxels() || b.size() != grid.voxels())
        throw std::invalid_argument("hd95: masks of " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
                                    " voxels for a grid of " + std::to_string(grid.x) + "x" + std::to_string(grid.y) +
                                    "x" + std::to_string(grid.z));
    // Bounding box of both masks.
    std::array<int, 3> lo{grid.x, grid.y, grid.z}, hi{-1, -1, -1};
    bool any_a = false, any_b = false;
    for (int z = 0, i = 0; z < grid.z; ++z)
        for (int y = 0; y < grid.y; ++y)
            for (int x = 0; x < grid.x; ++x, ++i) {
                if (!a[i] && !b[i]) continue;
                any_a |= a[i] != 0;
                any_b |= b[i] != 0;
                lo = {std::min(lo[0], x), std::min(lo[1], y), std::min(lo[2], z)};
                hi = {std::max(hi[0], x), std::max(hi[1], y), std::max(hi[2], z)};
            }
    if (!any_a && !any_b) return 0.0;
    if (!any_a || !any_b) return options.empty_hd95.value_or(grid.diagonal_mm());

    Grid box{hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1, grid.spacing};
    const std::size_t n = box.voxels();
    std::vector<std::uint8_t> surf_a(n), surf_b(n);
    auto surface = [&](std::span<const std::uint8_t> m, std::vector<std::uint8_t>& s) {
        auto inside = [&](int x, int y, int z) {
            if (x < 0 || y < 0 || z < 0 || x >= grid.x || y >= grid.y || z >= grid.z) return false;
            return m[(std::size_t(z) * grid.y + y) * grid.x + x] != 0;
        };
        const std::array<int, 3> ext{grid.x, grid.y, grid.z};
        for (int z = 0, i = 0; z < box.z; ++z)
            for (int y = 0; y < box.y; ++y)
                for (int x = 0; x < box.x; ++x, ++i) {
                    const int gx = x + lo[0], gy = y + lo[1], gz = z + lo[2];
                    if (!inside(gx, gy, gz)) continue;
                    bool edge = false;
                    const int dx[6][3] = {{1, 0, 0}, {-1, 0, 0}, {0, 1, 0}, {0, -1, 0}, {0, 0, 1}, {0, 0, -1}};
                    for (int k = 0; k < 6 && !edge; ++k) {
                        const int axis = k / 2;
                        if (ext[axis] == 1) continue;
                        edge = !inside(gx + dx[k][0], gy + dx[k][1], gz + dx[k][2]);
                    }
                    s[i] = edge;
                }
    };
    surface(a, surf_a);
    surface(b, surf_b);
    std::vector<double> dist, d;
    auto directed = [&](const std::vector<std::uint8_t>& from, const std::vector<std::uint8_t>& to) {
        squared_distance_transform(to.data(), box, dist);
        d.clear();
        for (std::size_t i = 0; i < n; ++i)
            if (from[i]) d.push_back(std::sqrt(dist[i]));
        return percentile95(d);
    };
    return std::max(directed(surf_a, surf_b), directed(surf_b, surf_a));
}

// Canonical labels from a network's per-voxel outputs, `probs` laid out [classes][voxels]:
// a softmax head takes the argmax (class index = canonical class); a sigmoid head over the three
// regions WT, TC, ET (classes == 3) thresholds each at 0.5 and nests them: ET -> 3, else TC -> 1
// (necrotic), else WT -> 2 (edema), else 0.
template <class T>
void probabilities_to_labels(Head head, int classes, const T* probs, std::size_t voxels, std::uint8_t* labels) {
    if (head == Head::sigmoid) {
        if (classes != kRegions)
            throw std::invalid_argument("probabilities_to_labels: a sigmoid head must give the 3 regions WT, TC, ET, not " +
                                        std::to_string(classes) + " channels");
        for (std::size_t i = 0; i < voxels; ++i)
            labels[i] = probs[2 * voxels + i] > T(0.5) ? 3 : probs[voxels + i] > T(0.5) ? 1 : probs[i] > T(0.5) ? 2 : 0;
        return;
    }
    for (std::size_t i = 0; i < voxels; ++i) {
        int best = 0;
        for (int c = 1; c < classes; ++c)
            if (probs[c * voxels + i] > probs[best * voxels + i]) best = c;
        labels[i] = std::uint8_t(best);
    }
}

// Canonical labels from region masks [3][voxels] (WT, TC, ET 0/1), nested as above.
inline void region_masks_to_labels(const std::uint8_t* masks, std::size_t voxels, std::uint8_t* labels) {
    for (std::size_t i = 0; i < voxels; ++i)
        labels[i] = masks[2 * voxels + i] ? 3 : masks[voxels + i] ? 1 : masks[i] ? 2 : 0;
}

struct CaseMetrics {
    std::string id;
    std::array<double, kRegions> dice{}, hd95{};
};

// Dice and HD95 of every region for one case: prediction and truth are canonical label
// volumes on `grid`.
inline CaseMetrics evaluate_case(std::string id, std::span<const std::uint8_t> prediction,
                                 std::span<const std::uint8_t> truth, const Grid& grid, const MetricOptions& options = {}) {
    if (prediction.size() != grid.voxels() || truth.size() != grid.voxels())
        throw std::invalid_argument("evaluate_case " + id + ": prediction has " + std::to_string(prediction.size()) +
                                    " voxels, truth " + std::to_string(truth.size()) + ", the grid " +
                                    std::to_string(grid.voxels()));
    CaseMetrics m;
    m.id = std::move(id);
    const auto counts = region_counts(prediction, truth);
    std::vector<std::uint8_t> pa(grid.voxels()), ga(grid.voxels());
    for (int r = 0; r < kRegions; ++r) {
        m.dice[r] = counts[r].dice();
        for (std::size_t i = 0; i < pa.size(); ++i) {
            pa[i] = in_region(prediction[i], r);
            ga[i] = in_region(truth[i], r);
        }
        m.hd95[r] = hd95(pa, ga, grid, options);
    }
    return m;
}

// A case's (cropped) grid with its voxel spacing.
inline Grid case_grid(const data::Case& c) {
    const auto& sp = c.geometry.spacing;
    return Grid{c.extent.x, c.extent.y, c.extent.z, {double(sp[0]), double(sp[1]), double(sp[2])}};
}

// A labelled case against a prediction on its grid.
inline CaseMetrics evaluate_case(const data::Case& c, std::span<const std::uint8_t> prediction, const MetricOptions& options = {}) {
    if (!c.has_labels()) throw std::invalid_argument("evaluate_case: case " + c.id + " has no labels");
    return evaluate_case(c.id, prediction, c.labels, case_grid(c), options);
}

inline CaseMetrics mean_metrics(std::span<const CaseMetrics> cases) {
    CaseMetrics mean;
    mean.id = "mean";
    if (cases.empty()) return mean;
    for (const auto& c : cases)
        for (int r = 0; r < kRegions; ++r) {
            mean.dice[r] += c.dice[r] / double(cases.size());
            mean.hd95[r] += c.hd95[r] / double(cases.size());
        }
    return mean;
}

// CSV: header `case,dice_WT,dice_TC,dice_ET,hd95_WT,hd95_TC,hd95_ET`, one row per case, then a
// row `mean`. Values with 6 significant decimals.
inline void write_metrics_csv(const std::string& path, std::span<const CaseMetrics> cases) {
    std::ofstream f(path);
    if (!f) throw std::runtime_error("write_metrics_csv: cannot open " + path + " for writing");
    f << "case";
    for (const char* p : {"dice", "hd95"})
        for (const char* r : kRegionLabels) f << ',' << p << '_' << r;
    f << '\n';
    auto row = [&](const CaseMetrics& c) {
        char buf[64];
        f << c.id;
        for (double v : c.dice) std::snprintf(buf, sizeof buf, ",%.6f", v), f << buf;
        for (double v : c.hd95) std::snprintf(buf, sizeof buf, ",%.6f", v), f << buf;
        f << '\n';
    };
    for (const auto& c : cases) row(c);
    row(mean_metrics(cases));
    if (!f) throw std::runtime_error("write_metrics_csv: writing " + path + " failed");
}

}  // namespace lightunet::eval

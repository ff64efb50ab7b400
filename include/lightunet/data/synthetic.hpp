#pragma once
// Synthetic BraTS-like cases: a skull-stripped brain with CSF, grey and white matter, a glioma
// with necrotic / non-enhancing core, enhancing rim and edema, in the four modalities t1, t1ce,
// t2, flair. Deterministic per seed; what the quick start trains on and most tests read.
//
// Contract:
// - generate_synthetic_case(config, seed) is a pure function of (config, seed): same inputs,
//   identical bytes (no threads, no global state; only std::exp in the bias field depends on the
//   C library, so other platforms may differ by one intensity step in rare voxels).
// - Anatomy lives in a 240 x 240 x 155 mm field of view (BraTS's) whatever the extent, so a
//   96 x 96 x 64 case is the same kind of brain at 2.5 x 2.5 x 2.4 mm voxels; Geometry carries
//   that spacing and BraTS's sform [-sx 0 0 0; 0 -sy 0 (Y-1)sy; 0 0 sz 0].
// - Images are integer-valued floats in [1, 32767] inside the brain and exactly 0 outside it
//   (skull-stripped, as BraTS ships them); each modality has its own scanner scale (white
//   matter between ~120 and ~1800), a smooth multiplicative bias field and Rician noise.
// - Contrasts (as measured on the BraTS 2018 cases in ../shared/data): T1 WM > GM > CSF,
//   necrosis dark; T1ce like T1 with the enhancing rim at ~1.6x WM; T2 CSF > GM > WM with edema
//   and necrosis bright; FLAIR GM > WM > CSF (fluid suppressed) with edema brightest.
// - Labels are canonical (0 bg, 1 necrotic / non-enhancing core, 2 edema, 3 enhancing), only
//   inside the brain, nested ET within TC within WT. Tumour kinds: high grade (necrosis, rim,
//   edema), solid enhancing (no necrosis), low grade (non-enhancing core and edema, no label 3).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "case.hpp"
#include "random.hpp"

namespace lightunet::data {

enum class TumourKind : std::uint8_t { high_grade, enhancing_solid, low_grade };

struct SyntheticConfig {
    VolumeExtent extent{96, 96, 64};
    float noise = 0.03f;      // Rician noise sigma as a fraction of white-matter intensity
    float bias = 0.12f;       // log-amplitude of the multiplicative bias field
    double high_grade_probability = 0.6;
    double enhancing_solid_probability = 0.2;  // the rest are low grade (no enhancement)

    // BraTS's own grid: 240 x 240 x 155 voxels of 1 mm.
    static SyntheticConfig brats() {
        SyntheticConfig config;
        config.extent = {240, 240, 155};
        return config;
    }
};

// Healthy tissue class of each voxel (tumour where a label is set), for tests and inspection.
enum class Tissue : std::uint8_t { background = 0, csf = 1, grey = 2, white = 3, tumour = 4 };

struct SyntheticCase {
    Case brats;
    std::vector<std::uint8_t> tissue;  // [z][y][x] Tissue values
    TumourKind kind = TumourKind::high_grade;
};

namespace detail {

inline float smoothstep01(float t) { return t * t * (3.0f - 2.0f * t); }

// 1 below lo, 0 above hi, smooth in between: a partial-volume edge.
inline float soft_inside(float value, float lo, float hi) {
    if (value <= lo) return 1.0f;
    if (value >= hi) return 0.0f;
    return 1.0f - smoothstep01((value - lo) / (hi - lo));
}

// Value noise: uniform random values on a lattice of `cell_mm`, interpolated with smoothstep
// weights (C1). Evaluated one x-row at a time: the y/z blend is done once per lattice column of
// the row, leaving one lerp per voxel.
class SmoothField {
public:
    SmoothField(SplitMix64& rng, VolumeExtent extent, std::array<float, 3> voxel_mm, float cell_mm) {
        const std::array<int, 3> sizes{extent.x, extent.y, extent.z};
        for (int a = 0; a < 3; ++a) {
            step_[a] = voxel_mm[a] / cell_mm;
            lattice_[a] = int(float(sizes[a]) * step_[a]) + 3;
        }
        values_.resize(std::size_t(lattice_[0]) * lattice_[1] * lattice_[2]);
        for (float& v : values_) v = float(rng.uniform(-1.0, 1.0));
        plane_.resize(std::size_t(lattice_[0]));
    }

    // out[x - x0] for x in [x0, x1) of row (y, z).
    void row(int y, int z, int x0, int x1, float* out) {
        const float fy = float(y) * step_[1], fz = float(z) * step_[2];
        const int iy = int(fy), iz = int(fz);
        const float ty = smoothstep01(fy - float(iy)), tz = smoothstep01(fz - float(iz));
        const std::size_t nx = std::size_t(lattice_[0]), ny = std::size_t(lattice_[1]);
        const float* v00 = values_.data() + (std::size_t(iz) * ny + iy) * nx;
        const float* v01 = v00 + nx;           // y + 1
        const float* v10 = v00 + nx * ny;      // z + 1
        const float* v11 = v10 + nx;
        const int lo = int(float(x0) * step_[0]), hi = int(float(x1 - 1) * step_[0]) + 1;
        for (int ix = lo; ix <= hi; ++ix) {
            const float a = v00[ix] + ty * (v01[ix] - v00[ix]);
            const float b = v10[ix] + ty * (v11[ix] - v10[ix]);
            plane_[std::size_t(ix)] = a + tz * (b - a);
        }
        for (int x = x0; x < x1; ++x) {
            const float fx = float(x) * step_[0];
            const int ix = int(fx);
            const float t = smoothstep01(fx - float(ix));
            out[x - x0] = plane_[std::size_t(ix)] + t * (plane_[std::size_t(ix) + 1] - plane_[std::size_t(ix)]);
        }
    }

private:
    std::array<float, 3> step_{};
    std::array<int, 3> lattice_{};
    std::vector<float> values_, plane_;
};

// Mean intensity of each tissue relative to white matter, per modality (t1, t1ce, t2, flair).
enum TissueMean { csf_mean, grey_mean, white_mean, deep_grey_mean, necrosis_mean, enhancing_mean, edema_mean,
                  non_enhancing_mean, tissue_mean_count };
// Ratios measured on the eight BraTS 2018 cases (tumour medians over healthy-tissue medians),
// healthy tissue from the usual relaxation-time orderings.
inline constexpr float kTissueMeans[kModalityCount][tissue_mean_count] = {
    //  CSF   GM    WM    deep  NEC   ENH   ED    NET
    {0.35f, 0.72f, 1.0f, 0.86f, 0.58f, 0.85f, 0.82f, 0.62f},  // t1
    {0.40f, 0.75f, 1.0f, 0.86f, 0.62f, 1.60f, 0.88f, 0.66f},  // t1ce
    {3.20f, 1.40f, 1.0f, 1.20f, 2.60f, 1.90f, 1.75f, 2.30f},  // t2
    {0.32f, 1.15f, 1.0f, 1.06f, 1.55f, 1.65f, 1.90f, 1.70f},  // flair
};

}  // namespace detail

// Generates one case. Throws std::invalid_argument for an extent below 16 voxels on any axis
// or probabilities outside [0, 1].
inline SyntheticCase generate_synthetic_case(const SyntheticConfig& config, std::uint64_t seed) {
    using detail::soft_inside;
    const VolumeExtent ext = config.extent;
    if (ext.x < 16 || ext.y < 16 || ext.z < 16)
        throw std::invalid_argument("generate_synthetic_case: extent " + std::to_string(ext.x) + "x" +
                                    std::to_string(ext.y) + "x" + std::to_string(ext.z) +
                                    " is below 16 voxels on an axis");
    const double p_hg = config.high_grade_probability, p_es = config.enhancing_solid_probability;
    if (!(p_hg >= 0 && p_es >= 0 && p_hg + p_es <= 1))
        throw std::invalid_argument("generate_synthetic_case: tumour kind probabilities " + std::to_string(p_hg) +
                                    " + " + std::to_string(p_es) + " are not a distribution");

    constexpr std::array<float, 3> fov_mm{240.0f, 240.0f, 155.0f};
    const std::array<float, 3> vox{fov_mm[0] / float(ext.x), fov_mm[1] / float(ext.y), fov_mm[2] / float(ext.z)};
    const float voxel_mm = std::max({vox[0], vox[1], vox[2]});

    SplitMix64 rng(hash_key({seed, 0x5b7a75ULL}));
    const std::uint64_t noise_key = rng.next();

    // Brain: an ellipsoid, flatter below (temporal lobes, cerebellum), deformed smoothly.
    const float brain_cx = 120.0f + float(rng.uniform(-5, 5)), brain_cy = 122.0f + float(rng.uniform(-6, 6));
    const float brain_cz = 72.0f + float(rng.uniform(-5, 5));
    const float ax = float(rng.uniform(62, 72)), ay = float(rng.uniform(78, 90));
    const float az_up = float(rng.uniform(58, 66)), az_down = float(rng.uniform(48, 56));
    const float deform = float(rng.uniform(0.05, 0.09));
    const float ventricle_size = float(rng.uniform(0.7, 1.4));
    const float sulcus_depth = float(rng.uniform(14, 22));

    // Scanner: per-modality white-matter level spread several-fold, tissue means jittered.
    std::array<float, kModalityCount> scale{};
    for (float& s : scale) s = float(rng.log_uniform(120, 1800));
    float means[kModalityCount][detail::tissue_mean_count];
    for (int m = 0; m < kModalityCount; ++m)
        for (int t = 0; t < detail::tissue_mean_count; ++t)
            means[m][t] = detail::kTissueMeans[m][t] * (t == detail::white_mean ? 1.0f : float(rng.uniform(0.93, 1.07)));
    // Each modality's bias field: its own mixture of two shared fields.
    std::array<float, kModalityCount> bias_cos{}, bias_sin{};
    for (int m = 0; m < kModalityCount; ++m) {
        const double angle = rng.uniform(0, 6.283185307179586);
        bias_cos[m] = config.bias * float(std::cos(angle));
        bias_sin[m] = config.bias * float(std::sin(angle));
    }

    // Tumour: kind, centre inside the brain, edema radius, core and necrosis fractions.
    const double kind_draw = rng.uniform();
    const TumourKind kind = kind_draw < p_hg ? TumourKind::high_grade
                            : kind_draw < p_hg + p_es ? TumourKind::enhancing_solid
                                                      : TumourKind::low_grade;
    float tx, ty, tz;
    for (;;) {  // rejection sampling in the undeformed ellipsoid, away from the surface
        const float ux = float(rng.uniform(-1, 1)), uy = float(rng.uniform(-1, 1)), uz = float(rng.uniform(-1, 1));
        if (ux * ux + uy * uy + uz * uz > 0.45f) continue;
        tx = brain_cx + ux * ax;
        ty = brain_cy + uy * ay;
        tz = brain_cz + uz * (uz >= 0 ? az_up : az_down);
        break;
    }
    const float radius = float(rng.log_uniform(14, 36));  // edema extent, mm
    const std::array<float, 3> tumour_axis{float(rng.uniform(0.75, 1.3)), float(rng.uniform(0.75, 1.3)),
                                           float(rng.uniform(0.75, 1.3))};
    const float core_noise = float(rng.uniform(0.35, 0.6)), edema_noise = float(rng.uniform(0.35, 0.6));
    // The core covers 40-75% of the lesion's radius. A high-grade core keeps necrosis at least
    // 1.6 voxels across inside a rim at least 2 voxels thick, widened by the core's deformation
    // (which thins the shell locally), so the rim encloses the necrosis on coarse grids too.
    float core_fraction = float(rng.uniform(0.4, 0.75));
    float necrosis_fraction = 0.0f;
    const double rim_draw = rng.uniform(2.5, 6.0);
    if (kind == TumourKind::high_grade) {
        const float rim_mm = std::max(float(rim_draw), 2.0f * voxel_mm) * (1.0f + core_noise);
        core_fraction = std::min(0.9f, std::max(core_fraction, (1.6f * voxel_mm + rim_mm) / radius));
        necrosis_fraction = core_fraction - rim_mm / radius;
    }

    detail::SmoothField shape_field(rng, ext, vox, 30.0f), fold_field(rng, ext, vox, 6.5f),
        fine_fold_field(rng, ext, vox, 3.5f), texture_field(rng, ext, vox, 3.0f), bias_a(rng, ext, vox, 90.0f),
        bias_b(rng, ext, vox, 90.0f), core_field(rng, ext, vox, std::max(radius * 0.4f, 5.0f)),
        edema_field(rng, ext, vox, std::max(radius * 0.6f, 8.0f));

    SyntheticCase out;
    out.kind = kind;
    Case& c = out.brats;
    c.id = "synthetic-" + std::to_string(seed);
    c.extent = ext;
    c.images.assign(std::size_t(kModalityCount) * ext.voxels(), 0.0f);
    c.labels.assign(ext.voxels(), 0);
    out.tissue.assign(ext.voxels(), 0);
    c.geometry.extent = ext;
    c.geometry.spacing = vox;
    c.geometry.qform_code = c.geometry.sform_code = 1;
    c.geometry.sform = {{{-double(vox[0]), 0, 0, 0}, {0, -double(vox[1]), 0, double(ext.y - 1) * vox[1]},
                         {0, 0, double(vox[2]), 0}}};
    c.geometry.quatern = {0, 0, 1, 1};  // 180 degrees about z, qfac 1: the sform's rotation
    c.geometry.qoffset = {0, float(ext.y - 1) * vox[1], 0};
    c.crop.begin = {0, 0, 0};
    c.crop.end = {ext.x, ext.y, ext.z};

    // Voxel box of the deformed brain (the deformation shrinks r by at most `deform`).
    const float reach = 1.0f / (1.0f - deform);
    auto voxel_range = [&](float centre, float half, int axis, int size) {
        const int lo = std::max(0, int(std::floor((centre - half * reach) / vox[axis] - 0.5f)));
        const int hi = std::min(size, int(std::ceil((centre + half * reach) / vox[axis] + 0.5f)) + 1);
        return std::array<int, 2>{lo, std::max(lo, hi)};
    };
    const auto xr = voxel_range(brain_cx, ax, 0, ext.x), yr = voxel_range(brain_cy, ay, 1, ext.y);
    const int z_lo = std::max(0, int(std::floor((brain_cz - az_down * reach) / vox[2] - 0.5f)));
    const int z_hi = std::min(ext.z, int(std::ceil((brain_cz + az_up * reach) / vox[2] + 0.5f)) + 1);
    const float tumour_reach = radius * 1.3f * (1.0f + edema_noise) / std::min({tumour_axis[0], tumour_axis[1], tumour_axis[2]});

    const int row_len = xr[1] - xr[0];
    const std::vector<float> empty_row(static_cast<std::size_t>(row_len));
    std::vector<float> shape_row(empty_row), fold_row(shape_row), fine_row(shape_row), texture_row(shape_row),
        bias_a_row(shape_row), bias_b_row(shape_row), core_row(shape_row), edema_row(shape_row);
    const float half_voxel = 0.5f * voxel_mm;
    const std::size_t volume = ext.voxels();

    for (int z = z_lo; z < z_hi; ++z) {
        const float pz = (float(z) + 0.5f) * vox[2], dz = pz - brain_cz;
        const float az = dz >= 0 ? az_up : az_down;
        for (int y = yr[0]; y < yr[1]; ++y) {
            const float py = (float(y) + 0.5f) * vox[1], dy = py - brain_cy;
            const float ry = dy / ay, rz = dz / az;
            if (ry * ry + rz * rz > reach * reach) continue;
            const int x0 = xr[0], x1 = xr[1];
            shape_field.row(y, z, x0, x1, shape_row.data());
            fold_field.row(y, z, x0, x1, fold_row.data());
            fine_fold_field.row(y, z, x0, x1, fine_row.data());
            texture_field.row(y, z, x0, x1, texture_row.data());
            bias_a.row(y, z, x0, x1, bias_a_row.data());
            bias_b.row(y, z, x0, x1, bias_b_row.data());
            const float tdy = (py - ty) / tumour_axis[1], tdz = (pz - tz) / tumour_axis[2];
            const bool tumour_row = std::abs(py - ty) < tumour_reach && std::abs(pz - tz) < tumour_reach;
            if (tumour_row) {
                core_field.row(y, z, x0, x1, core_row.data());
                edema_field.row(y, z, x0, x1, edema_row.data());
            }
            const std::size_t row_offset = (std::size_t(z) * ext.y + y) * ext.x;
            for (int x = x0; x < x1; ++x) {
                const int i = x - x0;
                const float px = (float(x) + 0.5f) * vox[0], dx = px - brain_cx;
                const float rx = dx / ax;
                const float r = std::sqrt(rx * rx + ry * ry + rz * rz);
                const float shape = shape_row[i];
                const float rd = r * (1.0f + deform * shape);
                if (rd >= 1.0f) continue;
                const float dist = std::sqrt(dx * dx + dy * dy + dz * dz);
                const float local_radius = r > 1e-4f ? dist / r : ax;
                const float depth = (1.0f - rd) * local_radius;  // mm below the brain surface, roughly

                // Cortex: CSF then a grey ribbon below the surface and along sulci (the zero set
                // of the folding field, reaching `sulcus_depth` deep) and the midline fissure.
                const float fold = fold_row[i] + 0.5f * fine_row[i];
                const float sulcus_distance =
                    std::abs(fold) * 7.0f + std::max(0.0f, depth - sulcus_depth * (1.0f + 0.5f * shape)) * 1.5f;
                const float fissure_distance = std::abs(dx + 3.0f * shape) + std::max(0.0f, depth - 28.0f);
                const float cortical_depth = std::min({depth, sulcus_distance, fissure_distance});
                const float csf_edge = 0.9f, grey_edge = csf_edge + 2.6f + 0.9f * fine_row[i];
                // Fluid in sulci is thinner than the grey matter lining them.
                const float fluid_depth = std::min({depth, 1.8f * sulcus_distance, fissure_distance});
                float w_csf = soft_inside(fluid_depth, csf_edge - half_voxel, csf_edge + half_voxel);
                float w_grey = std::max(0.0f, soft_inside(cortical_depth, grey_edge - half_voxel, grey_edge + half_voxel) - w_csf);
                float w_white = 1.0f - w_csf - w_grey;
                // Deep grey nuclei (thalamus, basal ganglia) on both sides of the midline.
                const float nx = (std::abs(dx) - 15.0f) / 9.0f, ny = (dy - 4.0f) / 16.0f, nz = (dz - 4.0f) / 10.0f;
                const float w_deep = w_white * soft_inside(std::sqrt(nx * nx + ny * ny + nz * nz), 0.85f, 1.15f);
                w_white -= w_deep;
                // Lateral ventricles: curved bodies diverging into frontal and occipital horns.
                const float vy = dy / (24.0f * ventricle_size);
                const float vx = (std::abs(dx) - (4.0f + 5.0f * vy * vy) * ventricle_size) / (4.5f * ventricle_size);
                const float vz = (dz - 10.0f + 8.0f * vy * vy) / (6.0f * ventricle_size);
                const float w_ventricle = soft_inside(std::sqrt(vx * vx + vy * vy + vz * vz) * (1.0f + 0.15f * shape), 0.85f, 1.15f);
                w_grey *= 1.0f - w_ventricle;
                w_white *= 1.0f - w_ventricle;
                const float w_deep_kept = w_deep * (1.0f - w_ventricle);
                w_csf = 1.0f - w_grey - w_white - w_deep_kept;

                // Tumour: a deformed ellipsoid; t scales so the core ends at core_fraction and
                // the necrosis at necrosis_fraction; the edema halo has its own, rougher edge.
                float a_lesion = 0.0f, a_core = 0.0f, a_necrosis = 0.0f;
                std::uint8_t label = 0;
                if (tumour_row) {
                    const float tdx = (px - tx) / tumour_axis[0];
                    const float q = std::sqrt(tdx * tdx + tdy * tdy + tdz * tdz) / radius;
                    if (q < 1.0f + edema_noise + 0.3f) {
                        const float t_core = q * (1.0f + core_noise * core_row[i]);
                        const float t_edema = q * (1.0f + edema_noise * edema_row[i]);
                        const float h = half_voxel / radius;
                        a_core = soft_inside(t_core, core_fraction - h, core_fraction + h);
                        a_lesion = std::max(a_core, soft_inside(t_edema, 1.0f - h, 1.0f + h));
                        if (necrosis_fraction > 0) a_necrosis = soft_inside(t_core, necrosis_fraction - h, necrosis_fraction + h);
                        if (t_core < necrosis_fraction) label = 1;
                        else if (t_core < core_fraction) label = kind == TumourKind::low_grade ? 1 : 3;
                        else if (t_edema < 1.0f) label = 2;
                    }
                }

                const std::size_t voxel = row_offset + std::size_t(x);
                c.labels[voxel] = label;
                out.tissue[voxel] = std::uint8_t(
                    label ? Tissue::tumour
                          : (w_csf >= w_grey + w_deep_kept && w_csf >= w_white) ? Tissue::csf
                          : (w_grey + w_deep_kept >= w_white)                   ? Tissue::grey
                                                                                : Tissue::white);
                const float texture = texture_row[i];
                for (int m = 0; m < kModalityCount; ++m) {
                    const float* mu = means[m];
                    const float healthy = (w_csf * mu[detail::csf_mean] + w_grey * mu[detail::grey_mean] +
                                           w_deep_kept * mu[detail::deep_grey_mean] + w_white * mu[detail::white_mean]) *
                                          (1.0f + 0.04f * texture);
                    float value = healthy;
                    if (a_lesion > 0) {
                        // Edema replaces parenchyma, not the fluid in sulci and ventricles.
                        const float edema = w_csf * mu[detail::csf_mean] + (1.0f - w_csf) * mu[detail::edema_mean] * (1.0f + 0.12f * texture + 0.1f * edema_row[i]);
                        const float solid = kind == TumourKind::low_grade ? mu[detail::non_enhancing_mean] : mu[detail::enhancing_mean];
                        const float core = (a_necrosis * mu[detail::necrosis_mean] + (1.0f - a_necrosis) * solid) * (1.0f + 0.12f * texture);
                        value = (1.0f - a_lesion) * healthy + a_lesion * ((1.0f - a_core) * edema + a_core * core);
                    }
                    const float bias = std::exp(bias_cos[m] * bias_a_row[i] + bias_sin[m] * bias_b_row[i]);
                    const float clean = value * bias * scale[m];
                    // Rician: magnitude of a complex signal with Gaussian noise on both parts.
                    const float sigma = config.noise * scale[m];
                    const std::uint64_t key = noise_key + (std::uint64_t(m) * volume + voxel) * 2;
                    const float re = clean + sigma * normal_from_bits(mix64(key));
                    const float im = sigma * normal_from_bits(mix64(key + 1));
                    const float magnitude = std::round(std::sqrt(re * re + im * im));
                    c.images[std::size_t(m) * volume + voxel] = std::clamp(magnitude, 1.0f, 32767.0f);
                }
            }
        }
    }
    return out;
}

// The case alone (images, labels, geometry); id "synthetic-<seed>".
inline Case synthetic_case(const SyntheticConfig& config, std::uint64_t seed) {
    return std::move(generate_synthetic_case(config, seed).brats);
}

// `count` cases with seeds first_seed, first_seed + 1, ...
inline std::vector<Case> synthetic_cases(const SyntheticConfig& config, std::uint64_t first_seed, std::size_t count) {
    std::vector<Case> cases;
    cases.reserve(count);
    for (std::size_t i = 0; i < count; ++i) cases.push_back(synthetic_case(config, first_seed + i));
    return cases;
}

}  // namespace lightunet::data

#pragma once
#include <cstddef>

#include "../config/unet_config.hpp"

namespace lightunet {

// Which (image, channel) planes share one mean and variance.
struct NormGrouping {
    Norm norm = Norm::none;
    int images = 0, channels = 0, groups = 1;
    std::ptrdiff_t plane = 0;  // voxels per channel

    constexpr int channels_per_group() const { return norm == Norm::group ? channels / groups : 1; }
    constexpr int stat_count() const {
        switch (norm) {
            case Norm::batch: return channels;
            case Norm::instance: return images * channels;
            case Norm::group: return images * groups;
            default: return 0;
        }
    }
    constexpr int stat_of(int n, int c) const {
        switch (norm) {
            case Norm::batch: return c;
            case Norm::instance: return n * channels + c;
            case Norm::group: return n * groups + c / channels_per_group();
            default: return 0;
        }
    }
    // Members of a statistic: `planes` planes, each of `plane` voxels.
    constexpr std::ptrdiff_t members(int) const {
        switch (norm) {
            case Norm::batch: return std::ptrdiff_t(images) * plane;
            case Norm::group: return std::ptrdiff_t(channels_per_group()) * plane;
            default: return plane;
        }
    }
    template <class F>
    void for_each_plane(int stat, F&& f) const {  // f(n, c)
        switch (norm) {
            case Norm::batch:
                for (int n = 0; n < images; ++n) f(n, stat);
                break;
            case Norm::instance: f(stat / channels, stat % channels); break;
            case Norm::group: {
                const int n = stat / groups, c0 = (stat % groups) * channels_per_group();
                for (int c = c0; c < c0 + channels_per_group(); ++c) f(n, c);
                break;
            }
            default: break;
        }
    }
};

// Where norm_act_forward takes its mean and variance from.
enum class NormStats {
    batch,    // computed from this input (training; batch norm also updates running statistics)
    running,  // batch norm's running statistics (inference)
    saved,    // what the last batch pass stored (recomputing an activation during backward)
};

struct Activation {
    Act act = Act::relu;
    double slope = 0.0;
    constexpr double negative_slope() const { return act == Act::leaky_relu ? slope : act == Act::identity ? 1.0 : 0.0; }
};

}  // namespace lightunet

#pragma once
// Learning-rate schedules: the rate for a 0-based step, given the base rate.
#include <algorithm>
#include <cmath>
#include <numbers>

namespace lightunet {

// nnU-Net's poly decay: base * (1 - step / total)^power.
struct PolyLR {
    long total_steps = 1000;
    double power = 0.9;
    double operator()(double base, long step) const {
        const double t = std::clamp(double(step) / double(std::max(1L, total_steps)), 0.0, 1.0);
        return base * std::pow(1.0 - t, power);
    }
};

// Cosine annealing from base to min_lr over total_steps.
struct CosineLR {
    long total_steps = 1000;
    double min_lr = 0.0;
    double operator()(double base, long step) const {
        const double t = std::clamp(double(step) / double(std::max(1L, total_steps)), 0.0, 1.0);
        return min_lr + 0.5 * (base - min_lr) * (1.0 + std::cos(std::numbers::pi * t));
    }
};

// Multiply by gamma every step_size steps.
struct StepLR {
    long step_size = 100;
    double gamma = 0.1;
    double operator()(double base, long step) const {
        return base * std::pow(gamma, double(step / std::max(1L, step_size)));
    }
};

}  // namespace lightunet

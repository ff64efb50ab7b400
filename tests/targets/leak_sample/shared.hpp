#pragma once
// An inline function that two objects compiled for different CPUs both emit: the linker keeps
// one copy, the first object's.
[[gnu::noinline]] inline float sum_of_squares(const float* x, int n) {
    float s = 0;
    for (int i = 0; i < n; ++i) s += x[i] * x[i];
    return s;
}
float wide_sum(const float* x, int n);

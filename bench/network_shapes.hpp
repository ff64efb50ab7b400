#pragma once
// Every convolution of the two BraTS networks of docs/performance.md: 2D 240^2 widths 32..512
// and 3D 128^3 widths 16..256 (each level's two 3x3(x3) convolutions, the decoder's first one
// over the up-sampled and skip halves together, the 1x1 head). f(dims, size, cin, cout, k).
template <class F>
void for_each_network_convolution(F&& f) {
    const int widths_2d[] = {32, 64, 128, 256, 512}, widths_3d[] = {16, 32, 64, 128, 256};
    for (int dims : {2, 3}) {
        const int* widths = dims == 2 ? widths_2d : widths_3d;
        const int top = dims == 2 ? 240 : 128;
        for (int level = 0; level < 5; ++level) {
            const int size = top >> level, width = widths[level];
            f(dims, size, level == 0 ? 4 : widths[level - 1], width, 3);
            f(dims, size, width, width, 3);
            if (level < 4) f(dims, size, 2 * width, width, 3);  // decoder, after the concatenation
        }
        f(dims, top, widths[0], 4, 1);
    }
}

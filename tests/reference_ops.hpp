#pragma once
// Naive reference implementations: the oracles for the optimised kernels.
#include <cstddef>
#include <vector>

#include <lightunet/backend/conv_problem.hpp>

namespace lightunet::reference {

// Stride-1 'same' convolution, zero padding k/2, layouts [n][c][d][h][w] and [oc][ci][kd][kh][kw].
template <class T>
std::vector<T> conv_forward(const ConvProblem& p, int n_images, const std::vector<T>& x, const std::vector<T>& w,
                            const std::vector<T>& b) {
    const auto [D, H, W] = p.extent;
    const std::size_t S = p.extent.size();
    std::vector<T> y(std::size_t(n_images) * p.cout * S);
    for (int n = 0; n < n_images; ++n)
        for (int oc = 0; oc < p.cout; ++oc)
            for (int z = 0; z < D; ++z)
                for (int yy = 0; yy < H; ++yy)
                    for (int xx = 0; xx < W; ++xx) {
                        T acc = b.empty() ? T(0) : b[oc];
                        for (int ci = 0; ci < p.cin; ++ci)
                            for (int kz = 0; kz < p.kd; ++kz)
                                for (int ky = 0; ky < p.kh; ++ky)
                                    for (int kx = 0; kx < p.kw; ++kx) {
                                        const int iz = z + kz - p.kd / 2, iy = yy + ky - p.kh / 2, ix = xx + kx - p.kw / 2;
                                        if (iz < 0 || iz >= D || iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                        acc += w[(((std::size_t(oc) * p.cin + ci) * p.kd + kz) * p.kh + ky) * p.kw + kx] *
                                               x[((std::size_t(n) * p.cin + ci) * D + iz) * H * W + std::size_t(iy) * W + ix];
                                    }
                        y[((std::size_t(n) * p.cout + oc) * D + z) * H * W + std::size_t(yy) * W + xx] = acc;
                    }
    return y;
}

// Gradients of sum(g * conv(x)) with respect to x, w and b.
template <class T>
void conv_backward(const ConvProblem& p, int n_images, const std::vector<T>& x, const std::vector<T>& w,
                   const std::vector<T>& g, std::vector<T>& dx, std::vector<T>& dw, std::vector<T>& db) {
    const auto [D, H, W] = p.extent;
    dx.assign(x.size(), T(0));
    dw.assign(w.size(), T(0));
    db.assign(p.cout, T(0));
    for (int n = 0; n < n_images; ++n)
        for (int oc = 0; oc < p.cout; ++oc)
            for (int z = 0; z < D; ++z)
                for (int yy = 0; yy < H; ++yy)
                    for (int xx = 0; xx < W; ++xx) {
                        const T go = g[((std::size_t(n) * p.cout + oc) * D + z) * H * W + std::size_t(yy) * W + xx];
                        db[oc] += go;
                        for (int ci = 0; ci < p.cin; ++ci)
                            for (int kz = 0; kz < p.kd; ++kz)
                                for (int ky = 0; ky < p.kh; ++ky)
                                    for (int kx = 0; kx < p.kw; ++kx) {
                                        const int iz = z + kz - p.kd / 2, iy = yy + ky - p.kh / 2, ix = xx + kx - p.kw / 2;
                                        if (iz < 0 || iz >= D || iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                        const std::size_t wi = (((std::size_t(oc) * p.cin + ci) * p.kd + kz) * p.kh + ky) * p.kw + kx;
                                        const std::size_t xi = ((std::size_t(n) * p.cin + ci) * D + iz) * H * W + std::size_t(iy) * W + ix;
                                        dw[wi] += go * x[xi];
                                        dx[xi] += go * w[wi];
                                    }
                    }
}

}  // namespace lightunet::reference

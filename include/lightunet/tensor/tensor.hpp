#pragma once
// An owning N,C,D,H,W tensor in a backend's memory. Growing reallocates; shrinking keeps the
// buffer, so a workspace planned for the largest shape never allocates again.
#include <cstring>
#include <utility>

#include "../backend/cpu/memory.hpp"
#include "shape.hpp"

namespace lightunet {

struct cpu;

template <class T, class Backend = cpu>
class Tensor {
public:
    using value_type = T;
    using backend = Backend;

    Tensor() = default;
    explicit Tensor(Shape shape) { resize(shape); }
    Tensor(const Tensor& other) : Tensor(other.shape_) { Backend::copy(data_, other.data_, size()); }
    Tensor& operator=(const Tensor& other) {
        if (this != &other) {
            resize(other.shape_);
            Backend::copy(data_, other.data_, size());
        }
        return *this;
    }
    Tensor(Tensor&& other) noexcept { swap(other); }
    Tensor& operator=(Tensor&& other) noexcept {
        swap(other);
        return *this;
    }
    ~Tensor() { Backend::deallocate(data_); }

    void swap(Tensor& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(capacity_, other.capacity_);
        std::swap(shape_, other.shape_);
    }

    // Keeps the contents only when the buffer is large enough; new storage is zeroed.
    void resize(Shape shape) {
        if (shape.n < 0 || shape.c < 0 || shape.d < 0 || shape.h < 0 || shape.w < 0)
            throw ShapeError("Tensor: negative extent in shape " + shape.str());
        if (shape.size() > capacity_) {
            Backend::deallocate(data_);
            data_ = nullptr;
            data_ = Backend::template allocate<T>(shape.size());
            capacity_ = shape.size();
            Backend::fill(data_, T(0), capacity_);
        }
        shape_ = shape;
    }

    const Shape& shape() const { return shape_; }
    std::size_t size() const { return shape_.size(); }
    std::size_t capacity() const { return capacity_; }
    T* data() { return data_; }
    const T* data() const { return data_; }
    T* channel(int n, int c) { return data_ + (std::size_t(n) * shape_.c + c) * shape_.spatial(); }
    const T* channel(int n, int c) const { return data_ + (std::size_t(n) * shape_.c + c) * shape_.spatial(); }

    // Element access for host-side code and tests (host-accessible memory only).
    T& operator[](std::size_t i) requires(Backend::host_accessible) { return data_[i]; }
    const T& operator[](std::size_t i) const requires(Backend::host_accessible) { return data_[i]; }
    T& at(int n, int c, int d, int h, int w) requires(Backend::host_accessible) { return data_[index(n, c, d, h, w)]; }
    const T& at(int n, int c, int d, int h, int w) const requires(Backend::host_accessible) { return data_[index(n, c, d, h, w)]; }

    void fill(T value) { Backend::fill(data_, value, size()); }
    T* begin() requires(Backend::host_accessible) { return data_; }
    T* end() requires(Backend::host_accessible) { return data_ + size(); }
    const T* begin() const requires(Backend::host_accessible) { return data_; }
    const T* end() const requires(Backend::host_accessible) { return data_ + size(); }

private:
    std::size_t index(int n, int c, int d, int h, int w) const {
        return (((std::size_t(n) * shape_.c + c) * shape_.d + d) * shape_.h + h) * shape_.w + w;
    }

    T* data_ = nullptr;
    std::size_t capacity_ = 0;
    Shape shape_{};
};

// Copies between a tensor in any backend's memory and one in host memory (checkpoints,
// optimiser state, inputs and outputs of a GPU model).
template <class T, class Backend>
Tensor<T, cpu> to_host(const Tensor<T, Backend>& t) {
    Tensor<T, cpu> host(t.shape());
    Backend::download(host.data(), t.data(), t.size());
    return host;
}
template <class T, class Backend>
void copy_from_host(Tensor<T, Backend>& dst, const Tensor<T, cpu>& src) {
    dst.resize(src.shape());
    Backend::upload(dst.data(), src.data(), src.size());
}

}  // namespace lightunet

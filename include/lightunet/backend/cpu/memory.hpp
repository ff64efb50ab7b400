#pragma once
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

namespace lightunet {

// The CPU backend tag. Kernels live in backend/cpu/*.hpp and are reached through Kernels<cpu>.
struct cpu {
    static constexpr std::size_t alignment = 64;
    static constexpr bool host_accessible = true;  // host code may read and write its memory

    template <class T>
    static T* allocate(std::size_t count) {
        if (count == 0) return nullptr;
        const std::size_t bytes = (count * sizeof(T) + alignment - 1) / alignment * alignment;
        void* p = std::aligned_alloc(alignment, bytes);
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    static void deallocate(void* p) noexcept { std::free(p); }
    template <class T>
    static void copy(T* dst, const T* src, std::size_t count) {
        if (count) std::memcpy(dst, src, count * sizeof(T));
    }
    template <class T>
    static void fill(T* dst, T value, std::size_t count) {
        std::fill(dst, dst + count, value);
    }
    // Between host memory and the backend's (plain copies here; device transfers for cuda).
    template <class T>
    static void upload(T* dst, const T* host, std::size_t count) { copy(dst, host, count); }
    template <class T>
    static void download(T* host, const T* src, std::size_t count) { copy(host, src, count); }
};

}  // namespace lightunet

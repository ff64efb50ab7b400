#pragma once
// The CUDA backend tag: device memory, the one stream every kernel and copy runs on, pinned
// staging buffers for host <-> device transfers, and error checking that turns every failed
// CUDA call or launch into an exception naming the call, file and line.
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

namespace lightunet {

class CudaError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace cuda_detail {

inline void check(cudaError_t status, const char* call, const char* file, int line) {
    if (status != cudaSuccess)
        throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                        cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
}

}  // namespace cuda_detail

#define LIGHTUNET_CUDA_CHECK(call) ::lightunet::cuda_detail::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: a bad configuration shows here; faults inside the kernel show at the
// next synchronising call (compute-sanitizer pins them to the kernel).
#define LIGHTUNET_CUDA_LAUNCHED(name) ::lightunet::cuda_detail::check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)

namespace cuda_detail {

// Process-wide state of the backend: one non-blocking stream, two pinned staging buffers (so
// one upload's host copy overlaps the previous one's transfer), a grow-only device scratch for
// reductions and a counter of device allocations (tests check that a step allocates nothing).
struct Context {
    cudaStream_t stream = nullptr;
    struct Staging {
        void* host = nullptr;
        std::size_t bytes = 0;
        cudaEvent_t done = nullptr;
    } staging[2];
    int next_staging = 0;
    void* scratch = nullptr;
    std::size_t scratch_bytes = 0;
    void* host_result = nullptr;  // pinned, for reduction results read back by the host
    std::atomic<long> device_allocations{0};
    std::mutex mutex;

    Context() {
        created() = true;
        LIGHTUNET_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        for (auto& s : staging) LIGHTUNET_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
        LIGHTUNET_CUDA_CHECK(cudaMallocHost(&host_result, 4096));
    }
    ~Context() {
        // Errors cannot be reported from here (the runtime may already be shutting down).
        cudaStreamSynchronize(stream);
        for (auto& s : staging) {
            cudaFreeHost(s.host);
            cudaEventDestroy(s.done);
        }
        cudaFreeHost(host_result);
        cudaFree(scratch);
        cudaStreamDestroy(stream);
    }
    static Context& get() {
        static Context c;
        return c;
    }
    // Whether the context (its stream, on the device current then) exists yet.
    static bool& created() {
        static bool made = false;
        return made;
    }
};

}  // namespace cuda_detail

// What cuda::use_device found: the device and the versions of the runtime and driver.
struct CudaDeviceInfo {
    int index = 0;
    std::string name;
    int major = 0, minor = 0;     // compute capability
    std::size_t memory_bytes = 0;
    std::string pci_bus_id;       // "0000:3B:00.0", as NVML names the same device
    int runtime_version = 0, driver_version = 0;  // 13000 = 13.0
};

struct cuda {
    static constexpr bool host_accessible = false;

    // The current device's compute capability as 10 x major + minor (61: Pascal GTX 10x0, 90: Hopper).
    static int compute_capability() {
        int device = 0, major = 0, minor = 0;
        LIGHTUNET_CUDA_CHECK(cudaGetDevice(&device));
        LIGHTUNET_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
        LIGHTUNET_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
        return 10 * major + minor;
    }

    // Runs this process's work on device `index` (as the CUDA runtime numbers them, after
    // CUDA_VISIBLE_DEVICES). Call before any other use of the backend: its stream belongs to the
    // device current when it is first used. Throws CudaError when there is no usable device (no
    // driver, no GPU, index out of range), naming what the runtime said.
    static CudaDeviceInfo use_device(int index) {
        int count = 0;
        if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess)
            throw CudaError("cuda:" + std::to_string(index) + ": no usable CUDA device (cudaGetDeviceCount: " + cudaGetErrorName(e) +
                            ": " + cudaGetErrorString(e) + ")");
        if (index < 0 || index >= count)
            throw CudaError("cuda:" + std::to_string(index) + ": no such device; the CUDA runtime sees " + std::to_string(count) +
                            (count == 1 ? " device (cuda:0)" : " devices (cuda:0 to cuda:" + std::to_string(count - 1) + ")"));
        int current = 0;
        LIGHTUNET_CUDA_CHECK(cudaGetDevice(&current));
        if (cuda_detail::Context::created() && current != index)
            throw std::logic_error("cuda::use_device(" + std::to_string(index) + "): the backend already runs on device " +
                                   std::to_string(current));
        LIGHTUNET_CUDA_CHECK(cudaSetDevice(index));
        cudaDeviceProp prop{};
        LIGHTUNET_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
        CudaDeviceInfo info;
        info.index = index;
        info.name = prop.name;
        info.major = prop.major;
        info.minor = prop.minor;
        info.memory_bytes = prop.totalGlobalMem;
        char bus[32] = {};
        if (cudaDeviceGetPCIBusId(bus, sizeof bus, index) == cudaSuccess) info.pci_bus_id = bus;
        cudaRuntimeGetVersion(&info.runtime_version);
        cudaDriverGetVersion(&info.driver_version);
        return info;
    }

    static cudaStream_t stream() { return cuda_detail::Context::get().stream; }
    static void synchronize() { LIGHTUNET_CUDA_CHECK(cudaStreamSynchronize(stream())); }
    // cudaMalloc calls made through this backend so far (tensors and the reduction scratch).
    static long device_allocations() { return cuda_detail::Context::get().device_allocations.load(); }
    // True when the CUDA runtime sees at least one device.
    static bool device_available() {
        int n = 0;
        return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    }

    template <class T>
    static T* allocate(std::size_t count) {
        if (count == 0) return nullptr;
        void* p = nullptr;
        auto& ctx = cuda_detail::Context::get();
        LIGHTUNET_CUDA_CHECK(cudaMalloc(&p, count * sizeof(T)));
        ++ctx.device_allocations;
        return static_cast<T*>(p);
    }
    static void deallocate(void* p) noexcept {
        if (!p) return;
        // Kernels in flight may still use p; cudaFree waits for the device. Errors are dropped
        // (destructors must not throw).
        cudaFree(p);
    }
    // Device to device, ordered on the stream.
    template <class T>
    static void copy(T* dst, const T* src, std::size_t count) {
        if (count) LIGHTUNET_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyDeviceToDevice, stream()));
    }
    template <class T>
    static void fill(T* dst, T value, std::size_t count);  // kernels.cuh

    // Host to device through a pinned staging buffer: returns once `host` may be reused; the
    // transfer itself runs on the stream, after the work queued before it.
    template <class T>
    static void upload(T* dst, const T* host, std::size_t count) {
        if (!count) return;
        auto& ctx = cuda_detail::Context::get();
        std::lock_guard lock(ctx.mutex);
        auto& s = ctx.staging[ctx.next_staging];
        ctx.next_staging ^= 1;
        const std::size_t bytes = count * sizeof(T);
        LIGHTUNET_CUDA_CHECK(cudaEventSynchronize(s.done));  // its previous transfer has finished
        if (bytes > s.bytes) {
            LIGHTUNET_CUDA_CHECK(cudaFreeHost(s.host));
            s.host = nullptr;
            s.bytes = 0;
            LIGHTUNET_CUDA_CHECK(cudaMallocHost(&s.host, bytes));
            s.bytes = bytes;
        }
        std::memcpy(s.host, host, bytes);
        LIGHTUNET_CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream()));
        LIGHTUNET_CUDA_CHECK(cudaEventRecord(s.done, stream()));
    }
    // Device to host: waits for the stream, so the result includes all queued work.
    template <class T>
    static void download(T* host, const T* src, std::size_t count) {
        if (!count) return;
        LIGHTUNET_CUDA_CHECK(cudaMemcpyAsync(host, src, count * sizeof(T), cudaMemcpyDeviceToHost, stream()));
        synchronize();
    }

    // Device scratch of at least `bytes`, valid until the next call (grows, never shrinks).
    static void* scratch(std::size_t bytes) {
        auto& ctx = cuda_detail::Context::get();
        if (bytes > ctx.scratch_bytes) {
            synchronize();
            LIGHTUNET_CUDA_CHECK(cudaFree(ctx.scratch));
            ctx.scratch = nullptr;
            ctx.scratch_bytes = 0;
            LIGHTUNET_CUDA_CHECK(cudaMalloc(&ctx.scratch, bytes));
            ++ctx.device_allocations;
            ctx.scratch_bytes = bytes;
        }
        return ctx.scratch;
    }
    // A small pinned host buffer (4 KiB) that reductions copy their results into.
    static void* host_result() { return cuda_detail::Context::get().host_result; }
};

}  // namespace lightunet

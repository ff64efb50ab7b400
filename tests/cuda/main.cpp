// Catch2's runner for the CUDA tests. Without a CUDA device the whole executable reports
// SKIPPED and exits with 77, which ctest shows as a skipped test (SKIP_RETURN_CODE).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstdio>

int main(int argc, char** argv) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
        std::printf("SKIPPED: no CUDA device (%s)\n", status != cudaSuccess ? cudaGetErrorString(status) : "none found");
        return 77;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) std::printf("CUDA device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    return Catch::Session().run(argc, argv);
}

// --device cuda:N: the GPU every CUDA pipeline of this process runs on, said in the log.
#include <cstdio>
#include <string>

#include <lightunet/backend/cuda/memory.cuh>

namespace brats {

std::string use_cuda_device(int index) {
    const lightunet::CudaDeviceInfo d = lightunet::cuda::use_device(index);
    std::fprintf(stderr, "[INFO] Device cuda:%d: %s (compute capability %d.%d, %.1f GiB, PCI %s), CUDA runtime %d.%d, driver %d.%d\n",
                 d.index, d.name.c_str(), d.major, d.minor, double(d.memory_bytes) / double(1ull << 30), d.pci_bus_id.c_str(),
                 d.runtime_version / 1000, d.runtime_version % 1000 / 10, d.driver_version / 1000, d.driver_version % 1000 / 10);
    return d.pci_bus_id;
}

}  // namespace brats

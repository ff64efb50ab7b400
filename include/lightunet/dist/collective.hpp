#pragma once
// Collective: what data-parallel training needs from a process group (rank, size, sums and
// broadcasts across every process), behind an interface so the trainer does not depend on MPI.
// lightunet::mpi provides MpiCollective (dist/mpi.hpp); tests use an in-process group.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "cross_batch.hpp"

namespace lightunet::dist {

// How many processes an MPI launcher started for this job (Open MPI's mpirun, or a PMI/PMIx one
// such as Slurm's srun or MPICH's hydra), read from its environment before MPI is initialised;
// 1 without one. Needs no MPI, so a build without it can refuse a launch.
inline int launched_processes() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"})
        if (const char* n = std::getenv(v)) return std::max(1, std::atoi(n));
    return 1;
}

class Collective {
public:
    virtual ~Collective() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // In place, element-wise over every process; each process calls these in the same order.
    virtual void sum(std::span<double> values) = 0;
    virtual void sum(std::span<float> values) = 0;
    virtual void max(std::span<double> values) = 0;
    virtual void broadcast(std::span<std::byte> bytes, int root) = 0;
    // Whether sum() may be given device (GPU) memory directly (CUDA-aware MPI); if not, device
    // data goes through host memory (dist/gradients.hpp).
    virtual bool accepts_device_memory() const { return false; }
    // Ends every process of the group with `why` on stderr (a failed rank must not leave the
    // others waiting in a collective).
    [[noreturn]] virtual void abort(const std::string& why, int code = 1) = 0;

    std::string broadcast(const std::string& text, int root) {
        unsigned long long length = text.size();
        broadcast(std::as_writable_bytes(std::span(&length, 1)), root);
        std::string out = rank() == root ? text : std::string(std::size_t(length), '\0');
        if (length) broadcast(std::as_writable_bytes(std::span(out.data(), out.size())), root);
        return out;
    }
    double max(double value) {
        max(std::span(&value, 1));
        return value;
    }

    // This process's share of a global batch of local_images x size() images.
    CrossBatch cross_batch(int local_images) {
        CrossBatch c;
        c.rank = rank();
        c.ranks = size();
        c.first_image = rank() * local_images;
        c.total_images = local_images * size();
        c.sum = [this](std::span<double> v) { sum(v); };
        return c;
    }
};

}  // namespace lightunet::dist

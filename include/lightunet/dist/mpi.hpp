#pragma once
// MpiCollective: dist::Collective over MPI (link lightunet::mpi, which find_package(MPI) provides).
//
// Every collective is non-blocking (MPI_Iallreduce / MPI_Ibcast) and waited for with a deadline:
// a rank that hangs, or dies where the launcher does not end the job itself, then ends the job
// with a message naming this rank and the operation, instead of leaving the others waiting for
// ever. Errors come back as codes (MPI_ERRORS_RETURN on a private duplicate of the
// communicator) and end the job the same way, with MPI's own error text.
// The C API only: the MPI C++ bindings (deprecated, and warning under -Wextra) stay out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#if defined(OPEN_MPI) && __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // MPIX_Query_cuda_support
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>

#include "collective.hpp"

namespace lightunet::dist {

class MpiCollective final : public Collective {
public:
    // Initialises MPI unless the caller already has (and then finalises it on destruction).
    // `timeout_seconds`: how long a collective may wait for the other ranks (a watchdog pause for
    // cooling or a long checkpoint on rank 0 holds the others at their next collective, so keep
    // it above those).
    explicit MpiCollective(double timeout_seconds = 1800.0, MPI_Comm world = MPI_COMM_WORLD) : timeout_(timeout_seconds) {
        int initialised = 0;
        MPI_Initialized(&initialised);
        if (!initialised) {
            int provided = 0;
            // Only the thread that trains calls MPI (the loader's and the watchdog's threads never do).
            if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
                throw std::runtime_error("MpiCollective: MPI_Init_thread failed");
            owns_mpi_ = true;
        }
        check(MPI_Comm_dup(world, &comm_), "MPI_Comm_dup");
        check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
        check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    }
    ~MpiCollective() override {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (finalized) return;
        MPI_Comm_free(&comm_);
        if (owns_mpi_) MPI_Finalize();
    }
    MpiCollective(const MpiCollective&) = delete;
    MpiCollective& operator=(const MpiCollective&) = delete;

    using Collective::broadcast;  // the string and single-value helpers, beside the overrides
    using Collective::max;
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    double timeout_seconds() const { return timeout_; }

    // What this rank's collectives cost so far: the wall time from each call to its completion
    // (the transfer, plus waiting for slower ranks), the bytes it contributed, and the calls.
    struct Traffic {
        double seconds = 0;
        double bytes = 0;
        long calls = 0;
    };
    const Traffic& traffic() const { return traffic_; }

    // Open MPI built with CUDA support says so at run time; others (and Debian's build) do not.
    bool accepts_device_memory() const override {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
        return MPIX_Query_cuda_support() == 1;
#else
        return false;
#endif
    }
    void sum(std::span<double> v) override { reduce(v.data(), v.size(), MPI_DOUBLE, MPI_SUM, "sum"); }
    void sum(std::span<float> v) override { reduce(v.data(), v.size(), MPI_FLOAT, MPI_SUM, "sum"); }
    void max(std::span<double> v) override { reduce(v.data(), v.size(), MPI_DOUBLE, MPI_MAX, "max"); }
    void broadcast(std::span<std::byte> bytes, int root) override {
        for (std::size_t done = 0; done < bytes.size();) {
            const int n = int(std::min(bytes.size() - done, chunk));
            MPI_Request request;
            check(MPI_Ibcast(bytes.data() + done, n, MPI_BYTE, root, comm_, &request), "MPI_Ibcast");
            traffic_.bytes += n;
            wait(request, "broadcast of " + std::to_string(bytes.size()) + " bytes from rank " + std::to_string(root));
            done += std::size_t(n);
        }
    }
    [[noreturn]] void abort(const std::string& why, int code = 1) override {
        std::fprintf(stderr, "[MPI] rank %d of %d: %s; ending the job\n", rank_, size_, why.c_str());
        std::fflush(stderr);
        MPI_Abort(comm_ == MPI_COMM_NULL ? MPI_COMM_WORLD : comm_, code);
        std::_Exit(code);  // MPI_Abort does not return; if an implementation does, do not linger
    }

private:
    static constexpr std::size_t chunk = std::size_t(1) << 30;  // MPI counts are int

    void reduce(void* data, std::size_t count, MPI_Datatype type, MPI_Op op, const char* what) {
        int bytes_per = 0;
        MPI_Type_size(type, &bytes_per);
        for (std::size_t done = 0; done < count;) {
            const int n = int(std::min(count - done, chunk));
            MPI_Request request;
            check(MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(data) + done * std::size_t(bytes_per), n, type, op, comm_, &request),
                  "MPI_Iallreduce");
            traffic_.bytes += double(n) * bytes_per;
            wait(request, std::string(what) + " of " + std::to_string(count) + " values");
            done += std::size_t(n);
        }
    }

    // Polls the request (which drives MPI's progress) with short sleeps, so a rank waiting for a
    // slower one leaves the core to it.
    void wait(MPI_Request& request, const std::string& what) {
        const auto start = std::chrono::steady_clock::now();
        for (int polls = 0;; ++polls) {
            int done = 0;
            check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
            if (done) {
                traffic_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                ++traffic_.calls;
                return;
            }
            const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            if (waited > timeout_)
                abort("the " + what + " waited " + std::to_string(int(waited)) + " s for the other ranks (timeout " +
                      std::to_string(int(timeout_)) + " s): a rank has died or hangs");
            if (polls > 100) std::this_thread::sleep_for(std::chrono::microseconds(polls > 10000 ? 1000 : 50));
        }
    }
    void check(int code, const char* call) {
        if (code == MPI_SUCCESS) return;
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(code, text, &length);
        abort(std::string(call) + " failed: " + std::string(text, std::size_t(length)));
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    double timeout_;
    bool owns_mpi_ = false;
    Traffic traffic_;
};

}  // namespace lightunet::dist

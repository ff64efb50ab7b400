#pragma once
// ThreadGroup: a Collective among threads of one process, so data-parallel training is tested
// without MPI (and under the sanitizers). Sums run in rank order, like a fixed-order reduction.
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "lightunet/dist/collective.hpp"

namespace lightunet::test {

class ThreadGroup {
public:
    explicit ThreadGroup(int size) : shared_(std::make_shared<Shared>(size)) {
        members_.reserve(std::size_t(size));
        for (int r = 0; r < size; ++r) members_.emplace_back(shared_, r);
    }
    dist::Collective& member(int rank) { return members_[std::size_t(rank)]; }
    int size() const { return int(members_.size()); }

    // Runs body(rank, member) on one thread per rank and waits for all; an exception on any
    // rank is rethrown after the others finished (a test's ranks must not leave one waiting).
    void run(const std::function<void(int, dist::Collective&)>& body) {
        std::vector<std::exception_ptr> errors(members_.size());
        std::vector<std::thread> threads;
        for (int r = 0; r < size(); ++r)
            threads.emplace_back([&, r] {
                try {
                    body(r, member(r));
                } catch (...) {
                    errors[std::size_t(r)] = std::current_exception();
                }
            });
        for (auto& t : threads) t.join();
        for (auto& e : errors)
            if (e) std::rethrow_exception(e);
    }

private:
    struct Shared {
        explicit Shared(int n) : size(n), sync(n), slots(std::size_t(n)) {}
        int size;
        std::barrier<> sync;
        std::vector<void*> slots;
        std::vector<double> result;
    };

    class Member final : public dist::Collective {
    public:
        Member(std::shared_ptr<Shared> s, int rank) : s_(std::move(s)), rank_(rank) {}
        using Collective::broadcast;  // the string and single-value helpers, beside the overrides
        using Collective::max;
        int rank() const override { return rank_; }
        int size() const override { return s_->size; }
        void sum(std::span<double> v) override { combine(v, [](double a, double b) { return a + b; }); }
        void sum(std::span<float> v) override { combine(v, [](float a, float b) { return a + b; }); }
        void max(std::span<double> v) override { combine(v, [](double a, double b) { return a > b ? a : b; }); }
        void broadcast(std::span<std::byte> bytes, int root) override {
            s_->slots[std::size_t(rank_)] = bytes.data();
            s_->sync.arrive_and_wait();
            if (rank_ != root) std::memcpy(bytes.data(), s_->slots[std::size_t(root)], bytes.size());
            s_->sync.arrive_and_wait();
        }
        [[noreturn]] void abort(const std::string& why, int code) override {
            std::fprintf(stderr, "ThreadGroup rank %d aborts: %s\n", rank_, why.c_str());
            std::exit(code);
        }

    private:
        template <class T, class Op>
        void combine(std::span<T> v, Op op) {
            s_->slots[std::size_t(rank_)] = v.data();
            s_->sync.arrive_and_wait();
            if (rank_ == 0) {
                s_->result.assign(v.size(), 0.0);
                for (std::size_t i = 0; i < v.size(); ++i) {
                    T acc = static_cast<const T*>(s_->slots[0])[i];
                    for (int r = 1; r < s_->size; ++r) acc = op(acc, static_cast<const T*>(s_->slots[std::size_t(r)])[i]);
                    s_->result[i] = double(acc);
                }
            }
            s_->sync.arrive_and_wait();
            for (std::size_t i = 0; i < v.size(); ++i) v[i] = T(s_->result[i]);
            s_->sync.arrive_and_wait();
        }

        std::shared_ptr<Shared> s_;
        int rank_;
    };

    std::shared_ptr<Shared> shared_;
    std::vector<Member> members_;
};

}  // namespace lightunet::test

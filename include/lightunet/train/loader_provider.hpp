#pragma once
// LoaderProvider: the data layer's PatchLoader as a Trainer BatchProvider. The loader hands out
// batches in order (prefetched by its workers); the trainer asks for (epoch, index) in order
// too, so the provider simply follows. When asked for another position (after a resume, or a
// validation pass that starts over each epoch), it restarts the loader at that epoch and skips
// to the index: batch (e, k) is a pure function of (seed, e, k) in the loader, so the result is
// the same batch an uninterrupted run would see.
#include <memory>
#include <stdexcept>
#include <string>

#include "../data/loader.hpp"
#include "trainer.hpp"

namespace lightunet::train {

class LoaderProvider {
public:
    // `source` must outlive the provider. Validation modes ignore the epoch: every pass
    // restarts at the first case.
    LoaderProvider(const data::CaseSource& source, data::LoaderConfig config) : source_(source), config_(config) {
        restart(config_.mode == data::LoaderMode::train ? long(config_.first_epoch) : 0);
    }

    long batches(long /*epoch*/) const { return long(loader_->batches_per_epoch()); }
    // Cases the loader does not draw (partial cases without a run of patch-depth slices).
    const std::vector<std::pair<std::size_t, std::string>>& left_out() const { return loader_->left_out(); }

    void fill(long epoch, long index, Tensor<float>& x, Tensor<std::uint8_t>& y) {
        const bool train = config_.mode == data::LoaderMode::train;
        const long e = train ? epoch : 0;  // every validation pass is the first pass of a fresh loader
        if (e != next_epoch_ || index != next_index_) {
            if (e != next_epoch_ || index < next_index_) restart(e);
            for (; next_index_ < index; ++next_index_) loader_->next(batch_);  // skip ahead in order
        }
        loader_->next(batch_);
        if ((train && long(batch_.epoch) != e) || long(batch_.index) != index)
            throw std::logic_error("LoaderProvider: the loader returned batch (" + std::to_string(batch_.epoch) + ", " +
                                   std::to_string(batch_.index) + "), expected (" + std::to_string(e) + ", " +
                                   std::to_string(index) + ")");
        x.swap(batch_.images);
        y.swap(batch_.labels);
        if (++next_index_ == batches(e)) {
            if (train) next_epoch_ = e + 1, next_index_ = 0;
            else restart(0);
        }
    }

    // The provider in the form Trainer::fit takes (this object must outlive it).
    template <class Model>
    BatchProvider<Model> provider() {
        return {[this](long e) { return batches(e); },
                [this](long e, long k, typename BatchProvider<Model>::Images& x, typename BatchProvider<Model>::Labels& y) { fill(e, k, x, y); }};
    }

private:
    void restart(long epoch) {
        loader_.reset();
        data::LoaderConfig c = config_;
        if (config_.mode == data::LoaderMode::train) c.first_epoch = std::uint64_t(epoch);
        loader_ = std::make_unique<data::PatchLoader>(source_, c);
        next_epoch_ = epoch;
        next_index_ = 0;
    }

    const data::CaseSource& source_;
    data::LoaderConfig config_;
    std::unique_ptr<data::PatchLoader> loader_;
    data::Batch batch_;
    long next_epoch_ = 0, next_index_ = 0;
};

}  // namespace lightunet::train

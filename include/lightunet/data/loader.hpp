#pragma once
// PatchLoader: batches of random 3D patches or 2D axial slices from any CaseSource, straight
// into the tensors UNet::train_step takes, prepared by background threads.
//
// Contract:
// - Output: images Tensor<float> [B][4][D][H][W] (channels t1, t1ce, t2, flair) and labels
//   Tensor<uint8_t> either [B][1][D][H][W] canonical classes 0..3 (LabelFormat::classes, for a
//   softmax head with 4 classes) or [B][3][D][H][W] 0/1 masks WT, TC, ET (LabelFormat::regions,
//   for a sigmoid head with 3 classes). A 2D configuration has D = 1: one axial slice (z).
// - Determinism: batch k of epoch e is a pure function of (seed, e, k) and the source's data,
//   whatever the number of workers and however they are scheduled: each item draws from its
//   own counter-based stream keyed by (seed, e, k, item), and batches are handed out in order.
// - Training (LoaderMode::train): each item picks a case uniformly; with probability
//   foreground_fraction the patch is centred exactly on a voxel drawn uniformly from
//   CaseSource::foreground (padding where it crosses the case's edge), otherwise it lies at a
//   uniform position inside the case (centred, with padding, on axes where the case is smaller
//   than the patch). Augmentation: flips per axis, k * 90 degree rotations in the axial plane
//   (square patches), per-channel intensity scale/shift and gamma; labels undergo exactly the
//   same voxel permutation as the images.
// - Partial cases (CaseSource::present_slices: some slices missing, as in Kaggle folders that
//   keep part of each volume): a patch's z range lies inside one run of present slices (2D: a
//   present slice; a foreground patch is moved along z into its voxel's run); a case with no run
//   as deep as the patch is not drawn (left_out() says which). Validation's centre patch sits on
//   the present slice nearest the middle; validate_whole's 2D batch holds only present slices
//   (Batch::slices gives their z). Cases with every slice behave exactly as before.
// - Validation: LoaderMode::validate_center gives the centre patch of every case in order
//   (batches of up to B, the last one may be smaller); LoaderMode::validate_whole gives one whole
//   case per batch, [1][4][Z][Y][X] for 3D patches, or its slices [Z][4][1][Y][X] when the patch
//   depth is 1. No augmentation, no randomness; unlabelled cases yield background labels and
//   Batch::labelled = false.
// - Memory: `workers` threads each hold one patch of scratch; at most `queue_depth` batches wait
//   ready. Data are read through CaseSource::read only. next() swaps buffers with the caller's
//   Batch, so after warm-up no tensor is allocated.
// - Errors: a failure while preparing batch k (a read error, an unlabelled case in training, a
//   label outside 0..3) is rethrown by the next() that would have returned batch k, as a
//   std::runtime_error naming the epoch, batch, item and case id. The destructor stops and joins
//   the workers.
#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <optional>
#include <vector>

#include "../tensor/tensor.hpp"
#include "case.hpp"
#include "random.hpp"
#include "source.hpp"

namespace lightunet::data {

enum class LabelFormat { classes, regions };
enum class LoaderMode { train, validate_center, validate_whole };

struct Augmentation {
    bool flip = true;       // each axis with probability 1/2 (z only for 3D patches)
    bool rotate90 = true;   // 0, 90, 180 or 270 degrees in the axial plane when H == W
    float scale = 0.1f;     // per channel, multiply by U(1 - scale, 1 + scale)
    float shift = 0.1f;     // per channel, add U(-shift, shift) (units of the z-scored data)
    float gamma_probability = 0.3f;            // per channel
    std::array<float, 2> gamma_range{0.7f, 1.5f};  // log-uniform; applied over the patch's range

    static Augmentation none() { return {false, false, 0.0f, 0.0f, 0.0f, {1.0f, 1.0f}}; }
};

struct LoaderConfig {
    Extent patch{1, 240, 240};  // D, H, W; D = 1 for 2D slices
    int batch = 8;
    double foreground_fraction = 1.0 / 3.0;
    LabelFormat labels = LabelFormat::classes;
    Augmentation augmentation{};
    LoaderMode mode = LoaderMode::train;
    std::size_t batches_per_epoch = 250;  // training only; validation passes over every case
    int workers = 2;                      // 0: batches are prepared inside next()
    int queue_depth = 4;                  // batches prepared ahead
    std::uint64_t seed = 0;
    std::uint64_t first_epoch = 0;        // resume: the first batch returned is (first_epoch, 0)
    // Data parallelism: this loader's `batch` items are items first_item.. of a global batch, each
    // drawn as a loader of the global batch size draws it (every item is a pure function of
    // (seed, epoch, index, item)), so ranks with disjoint ranges see exactly the global batch.
    int first_item = 0;
};

struct Batch {
    Tensor<float> images;          // [B][4][D][H][W]
    Tensor<std::uint8_t> labels;   // [B][1 or 3][D][H][W]
    std::uint64_t epoch = 0;
    std::size_t index = 0;         // within the epoch
    bool last_in_epoch = false;
    bool labelled = true;          // false when a validation case has no labels
    std::vector<std::size_t> cases;  // source index of each item (whole-case 2D: one entry)
    std::vector<Box> boxes;          // region each item was read from, in the case's voxels
    std::vector<int> slices;         // whole-case 2D: the z of each item (present slices only)
};

class PatchLoader {
public:
    PatchLoader(const CaseSource& source, LoaderConfig config) : source_(source), config_(config) {
        validate();
        find_present_slices();
        if (config_.mode == LoaderMode::train) batches_per_epoch_ = config_.batches_per_epoch;
        else if (config_.mode == LoaderMode::validate_center)
            batches_per_epoch_ = (source_.size() + std::size_t(config_.batch) - 1) / std::size_t(config_.batch);
        else batches_per_epoch_ = source_.size();
        slots_.resize(std::size_t(config_.queue_depth));
        for (int w = 0; w < config_.workers; ++w) workers_.emplace_back([this] { work(); });
    }

    ~PatchLoader() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        work_cv_.notify_all();
        for (std::thread& t : workers_) t.join();
    }

    PatchLoader(const PatchLoader&) = delete;
    PatchLoader& operator=(const PatchLoader&) = delete;

    std::size_t batches_per_epoch() const { return batches_per_epoch_; }
    // Training: cases that hold only some slices and no run of patch-depth contiguous ones (3D
    // patches never span a missing slice), with why; they are not drawn.
    const std::vector<std::pair<std::size_t, std::string>>& left_out() const { return left_out_; }
    const LoaderConfig& config() const { return config_; }

    // The next batch in order; its buffers are swapped with `batch`'s (reuse one Batch object).
    void next(Batch& batch) {
        if (workers_.empty()) {
            const std::uint64_t sequence = next_to_consume_++;
            fill(batch, sequence, inline_scratch_);
            return;
        }
        std::exception_ptr error;
        {
            std::unique_lock lock(mutex_);
            Slot& slot = slots_[next_to_consume_ % slots_.size()];
            ready_cv_.wait(lock, [&] { return slot.ready && slot.sequence == next_to_consume_; });
            swap_batches(batch, slot.batch);
            error = std::exchange(slot.error, nullptr);
            slot.ready = false;
            ++next_to_consume_;
        }
        work_cv_.notify_all();
        if (error) std::rethrow_exception(error);
    }

private:
    struct Slot {
        Batch batch;
        std::uint64_t sequence = 0;
        bool ready = false;
        std::exception_ptr error;
    };
    struct Scratch {
        std::vector<float> images;
        std::vector<std::uint8_t> labels;
    };
    // Output voxel (d, h, w) reads scratch voxel offset + d * step_d + h * step_h + w * step_w:
    // flips and axial rotations are affine maps of the index.
    struct Transform {
        std::ptrdiff_t offset = 0, step_d = 0, step_h = 0, step_w = 0;
    };

    static void swap_batches(Batch& a, Batch& b) {
        a.images.swap(b.images);
        a.labels.swap(b.labels);
        std::swap(a.epoch, b.epoch);
        std::swap(a.index, b.index);
        std::swap(a.last_in_epoch, b.last_in_epoch);
        std::swap(a.labelled, b.labelled);
        a.cases.swap(b.cases);
        a.boxes.swap(b.boxes);
        a.slices.swap(b.slices);
    }

    // Runs of present slices per case (once: the sources answer from their index), and in
    // training the cases a patch can be cut from.
    void find_present_slices() {
        const int depth = config_.patch.d;
        runs_.resize(source_.size());
        for (std::size_t i = 0; i < source_.size(); ++i) {
            runs_[i] = source_.present_slices(i);
            const int z = source_.extent(i).z;
            if (const std::string problem = slice_runs_problem(runs_[i], z); !problem.empty())
                throw std::invalid_argument("PatchLoader: case '" + source_.id(i) + "': present slices: " + problem);
            if (config_.mode != LoaderMode::train) continue;
            int longest = 0, present = 0;
            for (const SliceRange& r : runs_[i]) longest = std::max(longest, r.size()), present += r.size();
            if (partial(i) && longest < depth)
                left_out_.emplace_back(i, "case '" + source_.id(i) + "' holds " + std::to_string(present) + " of its slices, " +
                                              std::to_string(longest) + " contiguous at most, no run of " + std::to_string(depth) +
                                              " for a patch");
            else
                drawable_.push_back(i);
        }
        if (config_.mode == LoaderMode::train && drawable_.empty())
            throw std::invalid_argument("PatchLoader: no case holds " + std::to_string(depth) + " contiguous slices for a patch (" +
                                        left_out_.front().second + "): 3D patches never span a missing slice; train 2D, or "
                                        "with a shallower patch");
    }

    // First z of a patch `depth` deep in a partial case: around `centre` inside its run when the
    // run is deep enough, else at a uniform position (`draw`) among all positions inside runs.
    int partial_patch_z(std::size_t case_index, std::optional<int> centre, std::uint64_t draw, int depth) const {
        const std::vector<SliceRange>& runs = runs_[case_index];
        if (centre)
            for (const SliceRange& r : runs)
                if (*centre >= r.begin && *centre < r.end && r.size() >= depth)
                    return std::clamp(*centre - depth / 2, r.begin, r.end - depth);
        std::uint64_t positions = 0;
        for (const SliceRange& r : runs)
            if (r.size() >= depth) positions += std::uint64_t(r.size() - depth + 1);
        std::uint64_t chosen = std::uint64_t((unsigned __int128)draw * positions >> 64);
        for (const SliceRange& r : runs) {
            if (r.size() < depth) continue;
            const std::uint64_t here = std::uint64_t(r.size() - depth + 1);
            if (chosen < here) return r.begin + int(chosen);
            chosen -= here;
        }
        throw std::logic_error("PatchLoader: no run for a patch");  // drawable_ holds only cases with one
    }

    void validate() const {
        const LoaderConfig& c = config_;
        auto fail = [](const std::string& what) { throw std::invalid_argument("PatchLoader: " + what); };
        if (source_.size() == 0) fail("the source holds no cases");
        if (c.patch.d < 1 || c.patch.h < 1 || c.patch.w < 1)
            fail("patch extent " + std::to_string(c.patch.d) + "x" + std::to_string(c.patch.h) + "x" +
                 std::to_string(c.patch.w) + " has an empty axis");
        if (c.batch < 1) fail("batch size " + std::to_string(c.batch) + " is not positive");
        if (c.first_item < 0) fail("first_item " + std::to_string(c.first_item) + " is negative");
        if (!(c.foreground_fraction >= 0 && c.foreground_fraction <= 1))
            fail("foreground_fraction " + std::to_string(c.foreground_fraction) + " is outside [0, 1]");
        if (c.mode == LoaderMode::train && c.batches_per_epoch == 0) fail("batches_per_epoch is 0");
        if (c.workers < 0) fail("workers " + std::to_string(c.workers) + " is negative");
        if (c.queue_depth < 1) fail("queue_depth " + std::to_string(c.queue_depth) + " is below 1");
        const Augmentation& a = c.augmentation;
        if (!(a.scale >= 0 && a.scale < 1)) fail("augmentation scale " + std::to_string(a.scale) + " is outside [0, 1)");
        if (!(a.shift >= 0)) fail("augmentation shift " + std::to_string(a.shift) + " is negative");
        if (!(a.gamma_probability >= 0 && a.gamma_probability <= 1))
            fail("gamma_probability " + std::to_string(a.gamma_probability) + " is outside [0, 1]");
        if (!(a.gamma_range[0] > 0 && a.gamma_range[0] <= a.gamma_range[1]))
            fail("gamma_range [" + std::to_string(a.gamma_range[0]) + ", " + std::to_string(a.gamma_range[1]) +
                 "] is not a positive interval");
    }

    void work() {
        Scratch scratch;
        for (;;) {
            std::uint64_t sequence;
            Slot* slot;
            {
                std::unique_lock lock(mutex_);
                // Batch s may use slot s % depth once batch s - depth has been consumed.
                work_cv_.wait(lock, [&] { return stop_ || next_to_claim_ < next_to_consume_ + slots_.size(); });
                if (stop_) return;
                sequence = next_to_claim_++;
                slot = &slots_[sequence % slots_.size()];
            }
            std::exception_ptr error;
            try {
                fill(slot->batch, sequence, scratch);
            } catch (...) {
                error = std::current_exception();
            }
            {
                std::lock_guard lock(mutex_);
                slot->error = error;
                slot->sequence = sequence;
                slot->ready = true;
            }
            ready_cv_.notify_all();
        }
    }

    void fill(Batch& batch, std::uint64_t sequence, Scratch& scratch) const {
        batch.epoch = config_.first_epoch + sequence / batches_per_epoch_;
        batch.index = std::size_t(sequence % batches_per_epoch_);
        batch.last_in_epoch = batch.index + 1 == batches_per_epoch_;
        batch.labelled = true;
        batch.cases.clear();
        batch.boxes.clear();
        batch.slices.clear();
        switch (config_.mode) {
        case LoaderMode::train: fill_train(batch, scratch); break;
        case LoaderMode::validate_center: fill_center(batch, scratch); break;
        case LoaderMode::validate_whole: fill_whole(batch, scratch); break;
        }
    }

    int label_channels() const { return config_.labels == LabelFormat::classes ? 1 : kRegionCount; }

    [[noreturn]] void rethrow_for(const Batch& batch, int item, std::size_t case_index, const std::exception& e) const {
        std::string id;
        try {
            id = source_.id(case_index);
        } catch (...) {
            id = "#" + std::to_string(case_index);
        }
        throw std::runtime_error("PatchLoader: epoch " + std::to_string(batch.epoch) + ", batch " +
                                 std::to_string(batch.index) + ", item " + std::to_string(item) + ", case '" + id +
                                 "': " + e.what());
    }

    void read_box(std::size_t case_index, const Box& box, Scratch& scratch) const {
        const std::size_t volume = box.extent().voxels();
        scratch.images.resize(volume * kModalityCount);
        scratch.labels.resize(volume);
        source_.read(case_index, box, scratch.images.data(), scratch.labels.data());
        for (std::size_t v = 0; v < volume; ++v)
            if (scratch.labels[v] >= kClassCount)
                throw std::invalid_argument("label " + std::to_string(int(scratch.labels[v])) + " at box voxel " +
                                            std::to_string(v) + " is not a canonical class 0.." +
                                            std::to_string(kClassCount - 1));
    }

    void fill_train(Batch& batch, Scratch& scratch) const {
        const Extent p = config_.patch;
        const int n = config_.batch;
        batch.images.resize({n, kModalityCount, p.d, p.h, p.w});
        batch.labels.resize({n, label_channels(), p.d, p.h, p.w});
        const Augmentation& aug = config_.augmentation;
        for (int item = 0; item < n; ++item) {
            SplitMix64 rng(hash_key({config_.seed, batch.epoch, batch.index, std::uint64_t(config_.first_item + item)}));
            const std::size_t case_index = drawable_[std::size_t(rng.below(drawable_.size()))];
            try {
                // Every draw happens whatever the branches, so one choice never shifts another.
                const bool want_foreground = rng.bernoulli(config_.foreground_fraction);
                const std::uint64_t foreground_draw = rng.next();
                const std::array<std::uint64_t, 3> position_draw{rng.next(), rng.next(), rng.next()};
                const std::array<bool, 3> flip{rng.bernoulli(0.5), rng.bernoulli(0.5), rng.bernoulli(0.5)};
                const int quarter_turns = int(rng.below(4));

                if (!source_.has_labels(case_index)) throw std::invalid_argument("training needs labels, the case has none");
                const VolumeExtent e = source_.extent(case_index);
                const std::array<int, 3> size{e.x, e.y, e.z}, patch{p.w, p.h, p.d};
                Box box;
                const std::optional<std::array<int, 3>> centre =
                    want_foreground ? source_.foreground_voxel(case_index, foreground_draw) : std::nullopt;
                if (centre) {
                    for (int a = 0; a < 3; ++a) box.begin[a] = (*centre)[a] - patch[a] / 2;
                } else {
                    for (int a = 0; a < 3; ++a)
                        box.begin[a] = size[a] >= patch[a]
                                           ? int((unsigned __int128)position_draw[a] * std::uint64_t(size[a] - patch[a] + 1) >> 64)
                                           : -((patch[a] - size[a]) / 2);
                }
                if (partial(case_index))  // z inside a run of present slices
                    box.begin[2] = partial_patch_z(case_index, centre ? std::optional<int>((*centre)[2]) : std::nullopt,
                                                   position_draw[2], p.d);
                for (int a = 0; a < 3; ++a) box.end[a] = box.begin[a] + patch[a];
                read_box(case_index, box, scratch);

                const bool rotate = aug.rotate90 && p.h == p.w;
                const Transform t = transform(p, aug.flip && flip[0], aug.flip && flip[1], aug.flip && p.d > 1 && flip[2],
                                              rotate ? quarter_turns : 0);
                emit(scratch.images.data(), p.size(), scratch.labels.data(), p, t, batch, item);
                augment_intensity(batch, item, rng);
                batch.cases.push_back(case_index);
                batch.boxes.push_back(box);
            } catch (const std::exception& e) {
                rethrow_for(batch, item, case_index, e);
            }
        }
    }

    void fill_center(Batch& batch, Scratch& scratch) const {
        const Extent p = config_.patch;
        const std::size_t first = batch.index * std::size_t(config_.batch);
        const int n = int(std::min<std::size_t>(std::size_t(config_.batch), source_.size() - first));
        batch.images.resize({n, kModalityCount, p.d, p.h, p.w});
        batch.labels.resize({n, label_channels(), p.d, p.h, p.w});
        for (int item = 0; item < n; ++item) {
            const std::size_t case_index = first + std::size_t(item);
            try {
                const VolumeExtent e = source_.extent(case_index);
                const std::array<int, 3> size{e.x, e.y, e.z}, patch{p.w, p.h, p.d};
                Box box;
                for (int a = 0; a < 3; ++a) box.begin[a] = size[a] / 2 - patch[a] / 2;  // floor of the centre for even sizes
                if (partial(case_index)) box.begin[2] = centre_patch_z(case_index, p.d);
                for (int a = 0; a < 3; ++a) box.end[a] = box.begin[a] + patch[a];
                read_box(case_index, box, scratch);
                batch.labelled = batch.labelled && source_.has_labels(case_index);
                emit(scratch.images.data(), p.size(), scratch.labels.data(), p, transform(p, false, false, false, 0), batch, item);
                batch.cases.push_back(case_index);
                batch.boxes.push_back(box);
            } catch (const std::exception& e) {
                rethrow_for(batch, item, case_index, e);
            }
        }
    }

    void fill_whole(Batch& batch, Scratch& scratch) const {
        const std::size_t case_index = batch.index;
        try {
            const VolumeExtent e = source_.extent(case_index);
            Box box;
            box.end = {e.x, e.y, e.z};
            read_box(case_index, box, scratch);
            batch.labelled = source_.has_labels(case_index);
            batch.cases.push_back(case_index);
            batch.boxes.push_back(box);
            if (config_.patch.d == 1) {  // present slices as the batch: [Z][4][1][Y][X]
                const Extent slice{1, e.y, e.x};
                const std::vector<SliceRange> whole{{0, e.z}};
                for (const SliceRange& r : partial(case_index) ? runs_[case_index] : whole)
                    for (int z = r.begin; z < r.end; ++z) batch.slices.push_back(z);
                const int count = int(batch.slices.size());
                batch.images.resize({count, kModalityCount, 1, e.y, e.x});
                batch.labels.resize({count, label_channels(), 1, e.y, e.x});
                for (int item = 0; item < count; ++item) {
                    const std::size_t z = std::size_t(batch.slices[std::size_t(item)]);
                    emit(scratch.images.data() + z * slice.size(), e.voxels(), scratch.labels.data() + z * slice.size(), slice,
                         transform(slice, false, false, false, 0), batch, item);
                }
            } else {
                const Extent whole{e.z, e.y, e.x};
                batch.images.resize({1, kModalityCount, e.z, e.y, e.x});
                batch.labels.resize({1, label_channels(), e.z, e.y, e.x});
                emit(scratch.images.data(), e.voxels(), scratch.labels.data(), whole, transform(whole, false, false, false, 0),
                     batch, 0);
            }
        } catch (const std::exception& e) {
            rethrow_for(batch, 0, case_index, e);
        }
    }

    // Flips act on output coordinates first, then the rotation maps them into the source:
    // a bijection of the patch's voxels (rotations need H == W).
    static Transform transform(Extent p, bool flip_x, bool flip_y, bool flip_z, int quarter_turns) {
        auto source_index = [&](std::ptrdiff_t d, std::ptrdiff_t h, std::ptrdiff_t w) {
            if (flip_z) d = p.d - 1 - d;
            if (flip_y) h = p.h - 1 - h;
            if (flip_x) w = p.w - 1 - w;
            std::ptrdiff_t sh = h, sw = w;
            switch (quarter_turns) {
            case 1: sh = w, sw = p.w - 1 - h; break;
            case 2: sh = p.h - 1 - h, sw = p.w - 1 - w; break;
            case 3: sh = p.h - 1 - w, sw = h; break;
            default: break;
            }
            return (d * p.h + sh) * p.w + sw;
        };
        const std::ptrdiff_t origin = source_index(0, 0, 0);
        return {origin, source_index(1, 0, 0) - origin, source_index(0, 1, 0) - origin, source_index(0, 0, 1) - origin};
    }

    // Writes one item: 4 image channels (source channel stride `channel_stride`) and its labels
    // in the configured format, through the index map `t`.
    void emit(const float* images, std::size_t channel_stride, const std::uint8_t* labels, Extent p, const Transform& t,
              Batch& batch, int item) const {
        for (int c = 0; c < kModalityCount; ++c)
            permute(images + std::size_t(c) * channel_stride, batch.images.channel(item, c), p, t);
        std::uint8_t* out = batch.labels.channel(item, 0);
        permute(labels, out, p, t);
        if (config_.labels == LabelFormat::regions) {
            // Region masks from the class indices now in channel 0: WT {1,2,3}, TC {1,3}, ET {3}.
            std::uint8_t* whole = out;
            std::uint8_t* core = batch.labels.channel(item, int(Region::tumour_core));
            std::uint8_t* enhancing = batch.labels.channel(item, int(Region::enhancing));
            for (std::size_t v = 0, size = p.size(); v < size; ++v) {
                const std::uint8_t cls = whole[v];
                core[v] = cls == 1 || cls == 3;
                enhancing[v] = cls == 3;
                whole[v] = cls != 0;
            }
        }
    }

    template <class T>
    static void permute(const T* source, T* out, Extent p, const Transform& t) {
        for (int d = 0; d < p.d; ++d)
            for (int h = 0; h < p.h; ++h) {
                const T* row = source + (t.offset + d * t.step_d + h * t.step_h);
                if (t.step_w == 1) std::copy(row, row + p.w, out);
                else if (t.step_w == -1) std::reverse_copy(row - (p.w - 1), row + 1, out);
                else
                    for (int w = 0; w < p.w; ++w) out[w] = row[w * t.step_w];
                out += p.w;
            }
    }

    void augment_intensity(Batch& batch, int item, SplitMix64& rng) const {
        const Augmentation& aug = config_.augmentation;
        const std::size_t size = batch.images.shape().spatial();
        for (int c = 0; c < kModalityCount; ++c) {
            const float scale = float(rng.uniform(1.0 - aug.scale, 1.0 + aug.scale));
            const float shift = float(rng.uniform(-aug.shift, aug.shift));
            const bool gamma_on = rng.bernoulli(aug.gamma_probability);
            const float gamma = float(rng.log_uniform(aug.gamma_range[0], aug.gamma_range[1]));
            float* x = batch.images.channel(item, c);
            if (gamma_on && gamma != 1.0f) {
                // Gamma over the patch's own range, so z-scored (negative) values work too.
                const auto [lo_it, hi_it] = std::minmax_element(x, x + size);
                const float lo = *lo_it, range = *hi_it - *lo_it;
                if (range > 0) {
                    const float inv_range = 1.0f / range;
                    for (std::size_t v = 0; v < size; ++v)
                        x[v] = lo + range * std::pow((x[v] - lo) * inv_range, gamma);
                }
            }
            if (scale != 1.0f || shift != 0.0f)
                for (std::size_t v = 0; v < size; ++v) x[v] = x[v] * scale + shift;
        }
    }

    // Assembled from part of a volume: runs_ says which slices hold data.
    bool partial(std::size_t case_index) const { return !runs_[case_index].empty(); }

    // Validation's centre patch of a partial case: around the present slice nearest the middle,
    // inside its run when the run is deep enough.
    int centre_patch_z(std::size_t case_index, int depth) const {
        const int middle = source_.extent(case_index).z / 2;
        const SliceRange* best = nullptr;
        int best_z = 0;
        for (const SliceRange& r : runs_[case_index]) {
            const int z = std::clamp(middle, r.begin, r.end - 1);
            const bool deep_enough = r.size() >= depth, best_deep = best && best->size() >= depth;
            if (!best || (deep_enough && !best_deep) || (deep_enough == best_deep && std::abs(z - middle) < std::abs(best_z - middle)))
                best = &r, best_z = z;
        }
        return best->size() >= depth ? std::clamp(best_z - depth / 2, best->begin, best->end - depth)
                                     : best->begin + best->size() / 2 - depth / 2;
    }

    const CaseSource& source_;
    const LoaderConfig config_;
    std::size_t batches_per_epoch_ = 0;
    std::vector<std::vector<SliceRange>> runs_;  // per case: CaseSource::present_slices (empty: a whole volume)
    std::vector<std::size_t> drawable_;        // training: cases a patch can be cut from
    std::vector<std::pair<std::size_t, std::string>> left_out_;

    std::mutex mutex_;
    std::condition_variable work_cv_, ready_cv_;
    std::vector<Slot> slots_;
    std::uint64_t next_to_claim_ = 0, next_to_consume_ = 0;
    bool stop_ = false;
    std::vector<std::thread> workers_;
    Scratch inline_scratch_;  // workers == 0
};

}  // namespace lightunet::data

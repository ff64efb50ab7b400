// The 2D networks of the BraTS program (both heads), compiled in a translation unit of their own.
#include "models.hpp"
#include "pipeline.hpp"

namespace brats {

int train_2d(const brats_cli::Options& o, const RunInfo& run) {
    return run.labels == "regions" ? train_with_optimizer<slice2d_regions>(o, run) : train_with_optimizer<slice2d_classes>(o, run);
}

int predict_2d(const brats_cli::Options& o, const RunInfo& run) {
    return run.labels == "regions" ? Pipeline<slice2d_regions>::predict(o, run) : Pipeline<slice2d_classes>::predict(o, run);
}

}  // namespace brats

// The 3D networks of the BraTS program (both heads), compiled in a translation unit of their own.
#include "models.hpp"
#include "pipeline.hpp"

namespace brats {

int train_3d(const brats_cli::Options& o, const RunInfo& run) {
    return run.labels == "regions" ? train_with_optimizer<patch3d_regions>(o, run) : train_with_optimizer<patch3d_classes>(o, run);
}

int predict_3d(const brats_cli::Options& o, const RunInfo& run) {
    return run.labels == "regions" ? Pipeline<patch3d_regions>::predict(o, run) : Pipeline<patch3d_classes>::predict(o, run);
}

}  // namespace brats

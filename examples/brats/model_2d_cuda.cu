// The 2D plain networks of the BraTS program on CUDA (--device cuda), compiled by nvcc.
#include "models.hpp"
#include "pipeline.hpp"

namespace brats {

int train_2d_cuda(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<slice2d_regions, slice2d_classes, false>(
        run, [&]<UNetConfig C>() { return train_with_optimizer<C, lightunet::cuda>(o, run); });
}

int predict_2d_cuda(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<slice2d_regions, slice2d_classes, false>(
        run, [&]<UNetConfig C>() { return Pipeline<C, lightunet::cuda>::predict(o, run); });
}

}  // namespace brats

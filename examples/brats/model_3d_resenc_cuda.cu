// The 3D residual-encoder networks of the BraTS program on CUDA (--device cuda), compiled by nvcc.
#include "models.hpp"
#include "pipeline.hpp"

namespace brats {

int train_3d_resenc_cuda(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<patch3d_regions, patch3d_classes, true>(
        run, [&]<UNetConfig C>() { return train_with_optimizer<C, lightunet::cuda>(o, run); });
}

int predict_3d_resenc_cuda(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<patch3d_regions, patch3d_classes, true>(
        run, [&]<UNetConfig C>() { return Pipeline<C, lightunet::cuda>::predict(o, run); });
}

}  // namespace brats

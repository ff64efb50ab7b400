// The 3D residual-encoder networks of the BraTS program (both heads, with and without deep
// supervision), compiled in a translation unit of their own.
#include "models.hpp"
#include "pipeline.hpp"

namespace brats {

int train_3d_resenc(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<patch3d_regions, patch3d_classes, true>(run, [&]<UNetConfig C>() { return train_with_optimizer<C>(o, run); });
}

int predict_3d_resenc(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<patch3d_regions, patch3d_classes, true>(run, [&]<UNetConfig C>() { return Pipeline<C>::predict(o, run); });
}

int export_3d_resenc(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<patch3d_regions, patch3d_classes, true>(run, [&]<UNetConfig C>() { return Pipeline<C>::export_onnx(o, run); });
}

double training_step_seconds_3d_resenc(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision, int timed) {
    return with_configuration<patch3d_regions, patch3d_classes, true>(
        run, [&]<UNetConfig C>() { return Pipeline<C>::training_step_seconds(o, run, precision, timed); });
}

}  // namespace brats

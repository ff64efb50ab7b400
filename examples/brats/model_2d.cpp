// The 2D plain networks of the BraTS program (both heads, with and without deep
// supervision), compiled in a translation unit of their own.
#include "models.hpp"
#include "pipeline.hpp"

namespace brats {

int train_2d(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<slice2d_regions, slice2d_classes, false>(run, [&]<UNetConfig C>() { return train_with_optimizer<C>(o, run); });
}

int predict_2d(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<slice2d_regions, slice2d_classes, false>(run, [&]<UNetConfig C>() { return Pipeline<C>::predict(o, run); });
}

int export_2d(const brats_cli::Options& o, const RunInfo& run) {
    return with_configuration<slice2d_regions, slice2d_classes, false>(run, [&]<UNetConfig C>() { return Pipeline<C>::export_onnx(o, run); });
}

double training_step_seconds_2d(const brats_cli::Options& o, const RunInfo& run, lightunet::Precision precision, int timed) {
    return with_configuration<slice2d_regions, slice2d_classes, false>(
        run, [&]<UNetConfig C>() { return Pipeline<C>::training_step_seconds(o, run, precision, timed); });
}

}  // namespace brats

#include <lightunet/lightunet.hpp>
#ifdef LIGHTUNET_CONSUMER_XTENSOR
#include <lightunet/interop/xtensor.hpp>
#endif
#ifdef LIGHTUNET_CONSUMER_ONNX
#include <lightunet/io/onnx_export.hpp>
#endif
#ifdef LIGHTUNET_CONSUMER_MPI
#include <type_traits>

#include <lightunet/dist/mpi.hpp>
#endif
constexpr lightunet::UNetConfig tiny{.dims = 2, .in_channels = 1, .classes = 2, .widths = {4, 8}};
int main() {
    lightunet::UNet<tiny> net(42);
    static_assert(decltype(net)::parameter_count > 0);
    lightunet::Tensor<float> x(lightunet::Shape{1, 1, 1, 8, 8});
    const auto& y = net.predict(x);
#ifdef LIGHTUNET_CONSUMER_XTENSOR
    const auto probabilities = lightunet::as_xtensor(y);  // [1][2][1][8][8], the model's own memory
    if (probabilities.data() != y.data() || probabilities.shape()[1] != 2) return 1;
#endif
#ifdef LIGHTUNET_CONSUMER_ONNX
    // The optional component: the export links and its model passes the checker (to_onnx checks).
    if (lightunet::to_onnx(net).graph().node_size() == 0) return 1;
#endif
#ifdef LIGHTUNET_CONSUMER_MPI
    // The optional component compiles and links against MPI (which nobody started here).
    static_assert(std::is_base_of_v<lightunet::dist::Collective, lightunet::dist::MpiCollective>);
    int mpi_started = 1;
    if (MPI_Initialized(&mpi_started) != MPI_SUCCESS || mpi_started) return 1;
#endif
#ifdef LIGHTUNET_CONSUMER_CPU_TARGETS
    // The optional component: the model ran the kernels chosen for this CPU at run time.
    if (lightunet::Kernels<lightunet::cpu>::target().find("chosen at run time") == std::string::npos) return 1;
#endif
    return y.size() == 2 * 64 ? 0 : 1;
}

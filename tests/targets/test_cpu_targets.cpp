// One program, kernels for several instruction sets (backend/cpu/cpu_targets.hpp): what it
// carries, which it chooses, and the workspace sizes that must fit every one of them.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include <lightunet/backend/cpu/kernels.hpp>
#include <lightunet/model/unet.hpp>

#include "../test_support.hpp"

using namespace lightunet;
using namespace lightunet::cpu_kernels;

TEST_CASE("the program carries SSE4.2, AVX2 and AVX-512 kernels, narrowest first", "[targets]") {
    const auto targets = carried_cpu_targets();
    REQUIRE(targets.size() == 3);
    CHECK(std::string(targets[0]->name) == "sse4.2");
    CHECK(std::string(targets[1]->name) == "avx2");
    CHECK(std::string(targets[2]->name) == "avx512");
    CHECK(targets[0]->geometry == sse4_2_geometry);
    CHECK(targets[1]->geometry == avx2_geometry);
    CHECK(targets[2]->geometry == avx512_geometry);
    // Each target's kernels are its own functions, not one copy shared by all.
    CHECK(targets[0]->f32.conv_forward != targets[1]->f32.conv_forward);
    CHECK(targets[1]->f32.conv_forward != targets[2]->f32.conv_forward);
    CHECK(targets[0]->f64.norm_act_backward != targets[2]->f64.norm_act_backward);
    // Every CPU these tests run on runs the oldest.
    CHECK(cpu_runs(*targets[0]));
}

TEST_CASE("the selected target is LIGHTUNET_CPU_TARGET's, else the widest this CPU runs", "[targets]") {
    const CpuTarget& selected = selected_cpu_target();
    CHECK(cpu_runs(selected));
    CHECK(&selected_cpu_target() == &selected);  // chosen once
    CHECK_THAT(Kernels<cpu>::target(), Catch::StartsWith(selected.name));
    const char* wanted = std::getenv("LIGHTUNET_CPU_TARGET");
    if (wanted && *wanted) {
        CHECK(std::string(selected.name) == wanted);
    } else {
        const auto targets = carried_cpu_targets();
        for (auto t = targets.rbegin(); t != targets.rend(); ++t)
            if (cpu_runs(**t)) {
                CHECK(*t == &selected);
                break;
            }
    }
}

TEST_CASE("a dispatching program sizes workspaces for the largest need of any target", "[targets]") {
    // Shapes of both BraTS networks, where the targets' register tiles and vector widths make
    // their scratch differ: the facade's size is the largest, never smaller than any target's.
    const ConvProblem problems[] = {{{1, 160, 192}, 1, 3, 3, 4, 24},   {{1, 160, 192}, 1, 3, 3, 24, 24},
                                    {{1, 20, 24}, 1, 3, 3, 192, 384},  {{1, 240, 240}, 1, 3, 3, 64, 32},
                                    {{64, 64, 64}, 3, 3, 3, 16, 16},   {{8, 8, 8}, 3, 3, 3, 256, 256},
                                    {{1, 15, 15}, 1, 3, 3, 512, 512},  {{1, 60, 60}, 1, 1, 1, 3, 32}};
    for (const ConvProblem& p : problems) {
        INFO(p.extent.d << "x" << p.extent.h << "x" << p.extent.w << ", " << p.cin << " -> " << p.cout);
        const std::size_t sizes[3][3] = {
            {conv_workspace_size<float, sse4_2_geometry>(p), conv_workspace_size<float, avx2_geometry>(p),
             conv_workspace_size<float, avx512_geometry>(p)},
            {conv_prepared_size<float, sse4_2_geometry>(p), conv_prepared_size<float, avx2_geometry>(p),
             conv_prepared_size<float, avx512_geometry>(p)},
            {conv_workspace_size<double, sse4_2_geometry>(p), conv_workspace_size<double, avx2_geometry>(p),
             conv_workspace_size<double, avx512_geometry>(p)}};
        CHECK(Kernels<cpu>::conv_workspace_size<float>(p) == *std::max_element(sizes[0], sizes[0] + 3));
        CHECK(Kernels<cpu>::conv_prepared_size<float>(p) == *std::max_element(sizes[1], sizes[1] + 3));
        CHECK(Kernels<cpu>::conv_workspace_size<double>(p) == *std::max_element(sizes[2], sizes[2] + 3));
    }
    // ... and at compile time, which the models' memory plans need.
    constexpr ConvProblem p{{1, 160, 192}, 1, 3, 3, 24, 24};
    static_assert(Kernels<cpu>::conv_workspace_size<float>(p) >= conv_workspace_size<float, avx512_geometry>(p));
    static_assert(Kernels<cpu>::conv_workspace_size<float>(p) >= conv_workspace_size<float, sse4_2_geometry>(p));
}

// Catch2's main for the tests of a program that carries kernels for several instruction sets
// (lightunet::cpu_targets). ctest runs it once per target, naming it in LIGHTUNET_CPU_TARGET; on
// a CPU that cannot run that target it reports SKIPPED (exit status 77) instead of failing.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <lightunet/backend/cpu/cpu_targets.hpp>

int main(int argc, char* argv[]) {
    using namespace lightunet::cpu_kernels;
    if (const char* wanted = std::getenv("LIGHTUNET_CPU_TARGET"); wanted && *wanted)
        for (const CpuTarget* t : carried_cpu_targets())
            if (std::string(wanted) == t->name && !cpu_runs(*t)) {
                std::printf("SKIPPED: this CPU does not run %s (%s)\n", t->name, t->level);
                return 77;
            }
    try {
        std::printf("CPU kernels: %s\n", selected_cpu_target().name);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return Catch::Session().run(argc, argv);
}

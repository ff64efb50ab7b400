// lightunet::cpu_targets: which carried target this process runs (cpu_targets.hpp). Compiled
// for the baseline of the program, like the code that calls it.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "../cpu_targets.hpp"

namespace lightunet::cpu_kernels {

namespace {
// Built on first use, not as a namespace-scope array: code that runs while the program's statics
// are initialised (a benchmark's registration asking which bf16 kernels run) may call
// selected_cpu_target() before this file's statics are, and found the array still null.
std::span<const CpuTarget* const> carried() {
    static const CpuTarget* const targets[] = {&sse4_2_target(), &avx2_target(), &avx512_target()};
    return targets;
}

// __builtin_cpu_supports also checks that the operating system saves the wider registers.
bool runs_level(const std::string& level) {
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
    if (level == "x86-64-v2") return __builtin_cpu_supports("x86-64-v2");
    if (level == "x86-64-v3") return __builtin_cpu_supports("x86-64-v3");
    if (level == "x86-64-v4") return __builtin_cpu_supports("x86-64-v4");
#else
    __builtin_cpu_init();
    const bool v2 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("popcnt");
    const bool v3 = v2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
    if (level == "x86-64-v2") return v2;
    if (level == "x86-64-v3") return v3;
    if (level == "x86-64-v4") return v4;
#endif
    return false;
}

std::string carried_names() {
    std::string names;
    for (const CpuTarget* t : carried()) names += std::string(names.empty() ? "" : ", ") + t->name;
    return names;
}

const CpuTarget& choose() {
    if (const char* wanted = std::getenv("LIGHTUNET_CPU_TARGET"); wanted && *wanted) {
        for (const CpuTarget* t : carried()) {
            if (std::string(wanted) != t->name) continue;
            if (!cpu_runs(*t))
                throw std::runtime_error(std::string("LIGHTUNET_CPU_TARGET=") + wanted + ": this CPU does not run " + t->level +
                                         " instructions");
            return *t;
        }
        throw std::runtime_error(std::string("LIGHTUNET_CPU_TARGET=") + wanted + " names no target of this program (it carries " +
                                 carried_names() + ")");
    }
    const auto targets = carried();
    for (auto t = targets.rbegin(); t != targets.rend(); ++t)
        if (cpu_runs(**t)) return **t;
    throw std::runtime_error("this CPU runs none of the kernel targets of this program (" + carried_names() +
                             "; the oldest needs x86-64-v2: SSE4.2, SSSE3, POPCNT)");
}
}  // namespace

std::span<const CpuTarget* const> carried_cpu_targets() { return carried(); }

bool cpu_runs(const CpuTarget& target) { return runs_level(target.level); }

const CpuTarget& selected_cpu_target() {
    static const CpuTarget& selected = choose();
    return selected;
}

}  // namespace lightunet::cpu_kernels

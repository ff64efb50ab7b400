#pragma once
// BENCHMARK_MAIN with the CPU kernels that ran in the report's context ("cpu_kernels": the
// target a dispatching build chose at run time, or the compile target's architecture), so
// that every figure names its instruction set.
#include <benchmark/benchmark.h>

#include <lightunet/backend/cpu/kernels.hpp>

#define LIGHTUNET_BENCHMARK_MAIN()                                                                 \
    int main(int argc, char** argv) {                                                              \
        benchmark::Initialize(&argc, argv);                                                        \
        if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;                          \
        benchmark::AddCustomContext("cpu_kernels", lightunet::Kernels<lightunet::cpu>::target());   \
        benchmark::AddCustomContext("bf16_kernels", lightunet::Kernels<lightunet::cpu>::bf16_kernels()); \
        benchmark::RunSpecifiedBenchmarks();                                                       \
        benchmark::Shutdown();                                                                     \
        return 0;                                                                                  \
    }

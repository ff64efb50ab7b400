# lightunet_target_options(<target> [PORTABLE] [SANITIZE])
#
# Applies the flags of lightunet's own executables (tests, benchmarks, examples): -Wall -Wextra,
# -march=native when LIGHTUNET_NATIVE unless PORTABLE (a program that links lightunet::cpu_targets
# and runs on any x86-64-v2 CPU), and with SANITIZE, ASan + UBSan when LIGHTUNET_SANITIZE.
# Not installed, and never applied to the interface target that users link.
function(lightunet_target_options target)
    cmake_parse_arguments(PARSE_ARGV 1 arg "PORTABLE;SANITIZE" "" "")
    # nvcc takes host-compiler flags through -Xcompiler (targets with .cu sources: brats).
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra> $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
    if(LIGHTUNET_NATIVE AND NOT arg_PORTABLE)
        target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=native> $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-march=native>)
    endif()
    if(arg_SANITIZE AND LIGHTUNET_SANITIZE)
        set(flags -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
        target_compile_options(${target} PRIVATE ${flags})
        target_link_options(${target} PRIVATE ${flags})
        # GCC 12 reports false -Wmaybe-uninitialized under ASan (in libstdc++'s <regex>, which
        # Catch2 uses); the Release build keeps that warning.
        target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
        # GCC 12 under ASan also calls the `__m512 __Y = __Y;` of its own _mm512_undefined_ps
        # (avx512fintrin.h, inlined into xsimd's AVX-512 haddp) uninitialized: GCC bug 105593,
        # fixed in GCC 13. The Release build keeps -Wuninitialized.
        target_compile_options(${target} PRIVATE
            $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-uninitialized>)
    endif()
endfunction()

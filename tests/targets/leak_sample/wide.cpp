// Compiled with -march=x86-64-v3 and linked first: its AVX copy of sum_of_squares is the one
// the program keeps, so main's baseline call runs AVX code. check_isa_leaks.sh must say so.
#include "shared.hpp"
float wide_sum(const float* x, int n) { return sum_of_squares(x, n); }

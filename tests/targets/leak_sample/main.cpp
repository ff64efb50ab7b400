#include "shared.hpp"
int main(int argc, char**) {
    const float x[3] = {1.0f, 2.0f, float(argc)};
    return int(sum_of_squares(x, 3) + wide_sum(x, 3)) == 0;
}

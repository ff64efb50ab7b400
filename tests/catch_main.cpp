// The one translation unit that holds Catch2's main; every tests/test_*.cpp only includes
// <catch2/catch.hpp>.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

# cmake -DBUILD_DIR=<lightunet build> -DPREFIX=<dir> [-DCONFIG=<cfg>] -P stage_install.cmake
# Installs the lightunet build tree into a fresh PREFIX, for the find_package consumer test.
foreach(var BUILD_DIR PREFIX)
    if(NOT DEFINED ${var})
        message(FATAL_ERROR "stage_install.cmake: ${var} is not set")
    endif()
endforeach()
file(REMOVE_RECURSE "${PREFIX}")
set(config_args)
if(CONFIG)
    set(config_args --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
    message(FATAL_ERROR "cmake --install failed: ${result}")
endif()
foreach(f include/lightunet/lightunet.hpp share/cmake/lightunet/lightunetConfig.cmake
             share/cmake/lightunet/lightunetConfigVersion.cmake share/cmake/lightunet/lightunetTargets.cmake)
    if(NOT EXISTS "${PREFIX}/${f}")
        message(FATAL_ERROR "install is missing ${f}")
    endif()
endforeach()

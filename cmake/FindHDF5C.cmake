# Finds the HDF5 C library and defines HDF5C::hdf5. CMake's FindHDF5 compiles a C probe, which
# fails in projects (ours, our users') that enable only CXX; this looks for the files directly,
# Debian's serial build first.
include(FindPackageHandleStandardArgs)
find_path(HDF5C_INCLUDE_DIR hdf5.h PATH_SUFFIXES hdf5/serial hdf5)
find_library(HDF5C_LIBRARY NAMES hdf5_serial hdf5 PATH_SUFFIXES hdf5/serial)
find_package_handle_standard_args(HDF5C REQUIRED_VARS HDF5C_LIBRARY HDF5C_INCLUDE_DIR)
if(HDF5C_FOUND AND NOT TARGET HDF5C::hdf5)
    add_library(HDF5C::hdf5 UNKNOWN IMPORTED)
    set_target_properties(HDF5C::hdf5 PROPERTIES
        IMPORTED_LOCATION "${HDF5C_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${HDF5C_INCLUDE_DIR}")
endif()
mark_as_advanced(HDF5C_INCLUDE_DIR HDF5C_LIBRARY)

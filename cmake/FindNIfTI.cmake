# Finds niftilib's NIfTI-1 I/O library (Debian: libniftiio-dev, libnifti2-dev) and defines
# NIfTI::niftiio. Debian 12's own NIFTIConfig.cmake names files under /usr/lib that the
# package installs under /usr/lib/<multiarch>, so it cannot be used.
include(FindPackageHandleStandardArgs)
find_path(NIfTI_INCLUDE_DIR nifti1_io.h PATH_SUFFIXES nifti)
find_library(NIfTI_IO_LIBRARY NAMES niftiio)
find_library(NIfTI_ZNZ_LIBRARY NAMES znz)
find_package(ZLIB QUIET)
find_package_handle_standard_args(NIfTI REQUIRED_VARS NIfTI_IO_LIBRARY NIfTI_ZNZ_LIBRARY NIfTI_INCLUDE_DIR ZLIB_FOUND)
if(NIfTI_FOUND AND NOT TARGET NIfTI::niftiio)
    add_library(NIfTI::znz UNKNOWN IMPORTED)
    set_target_properties(NIfTI::znz PROPERTIES
        IMPORTED_LOCATION "${NIfTI_ZNZ_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${NIfTI_INCLUDE_DIR}"
        INTERFACE_COMPILE_DEFINITIONS HAVE_ZLIB
        INTERFACE_LINK_LIBRARIES ZLIB::ZLIB)
    add_library(NIfTI::niftiio UNKNOWN IMPORTED)
    set_target_properties(NIfTI::niftiio PROPERTIES
        IMPORTED_LOCATION "${NIfTI_IO_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${NIfTI_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES "NIfTI::znz;m")
endif()
mark_as_advanced(NIfTI_INCLUDE_DIR NIfTI_IO_LIBRARY NIfTI_ZNZ_LIBRARY)

# Stand-in for an installed 3D Slicer's CMake package, for the installed-layout test only.
# It defines the variables and macros DRDMSlicer's CMake files use, with Slicer's install semantics:
# a scripted module's SCRIPTS and RESOURCES are copied to the build tree and installed under
# Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR at their relative paths; nothing else is installed.
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 10)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.10/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")

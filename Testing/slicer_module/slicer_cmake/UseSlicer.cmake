# Stand-in for Slicer's UseSlicer.cmake: the macros a scripted extension calls.

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(_install_dir ${MY_INSTALL_DIR})
  if(NOT MY_NO_INSTALL_SUBDIR)
    get_filename_component(_subdir ${MY_DESTINATION_DIR} NAME)
    set(_install_dir ${MY_INSTALL_DIR}/${_subdir})
  endif()
  foreach(_file IN LISTS MY_SCRIPTS MY_RESOURCES)
    if(IS_ABSOLUTE ${_file})
      set(_src ${_file})
      file(RELATIVE_PATH _file ${MY_SOURCE_DIR} ${_file})
    else()
      set(_src ${MY_SOURCE_DIR}/${_file})
    endif()
    if(NOT EXISTS ${_src})
      message(FATAL_ERROR "ctkMacroCompilePythonScript(${MY_TARGET_NAME}): no file ${_src}")
    endif()
    get_filename_component(_rel_dir ${_file} DIRECTORY)
    file(COPY ${_src} DESTINATION ${MY_DESTINATION_DIR}/${_rel_dir})
    install(FILES ${_src} DESTINATION ${_install_dir}/${_rel_dir} COMPONENT Runtime)
  endforeach()
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "VERBOSE;WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS ${MY_SLICER_SCRIPTS}
    RESOURCES ${MY_SLICER_RESOURCES}
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    NO_INSTALL_SUBDIR
    )
endmacro()

function(slicer_add_python_unittest)
endfunction()

# Runs a command and fails unless it exits with the expected status AND its output says the
# expected thing. For tests of error paths: ctest's WILL_FAIL passes on any failure (a crash, a
# missing file) and PASS_REGULAR_EXPRESSION ignores the exit status; this checks both.
#
#   cmake -DEXIT=<status> -DMATCH=<regex> [-DNO_MATCH=<regex>] [-DWORKDIR=<folder>]
#         -P tests/expect_exit.cmake -- <command> [args...]
#
# EXIT: the exit status the command must return (a number).
# MATCH: a CMake regular expression that stdout and stderr together must match ('.' also
#        matches a newline, so "a.*b" spans lines).
# NO_MATCH: optional; a regular expression the output must not match.
# WORKDIR: optional; created and used as the command's working directory.
cmake_minimum_required(VERSION 3.20)

if(NOT DEFINED EXIT OR NOT DEFINED MATCH)
    message(FATAL_ERROR "expect_exit.cmake: set -DEXIT=<status> and -DMATCH=<regex>")
endif()
set(command "")
set(after_separator FALSE)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
    if(after_separator)
        list(APPEND command "${CMAKE_ARGV${i}}")
    elseif(CMAKE_ARGV${i} STREQUAL "--")
        set(after_separator TRUE)
    endif()
endforeach()
if(NOT command)
    message(FATAL_ERROR "expect_exit.cmake: no command after --")
endif()

set(workdir_args "")
if(DEFINED WORKDIR)
    file(MAKE_DIRECTORY "${WORKDIR}")
    set(workdir_args WORKING_DIRECTORY "${WORKDIR}")
endif()
execute_process(COMMAND ${command} ${workdir_args} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(JOIN " " shown ${command})
set(output "${out}${err}")
set(problems "")
if(NOT status STREQUAL "${EXIT}")
    string(APPEND problems "exited with '${status}', expected ${EXIT}\n")
endif()
if(NOT output MATCHES "${MATCH}")
    string(APPEND problems "the output does not match '${MATCH}'\n")
endif()
if(DEFINED NO_MATCH AND output MATCHES "${NO_MATCH}")
    string(APPEND problems "the output matches '${NO_MATCH}', which it must not\n")
endif()
if(problems)
    message(FATAL_ERROR "${shown}\n${problems}--- stdout ---\n${out}--- stderr ---\n${err}")
endif()
message(STATUS "${shown}: exit ${status}, output matches '${MATCH}'")

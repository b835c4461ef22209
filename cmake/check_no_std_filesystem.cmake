# Fails when a program needs a std::filesystem symbol from a shared library.
# Usage: cmake -DNM=/usr/bin/nm -DFILE=<program> -P check_no_std_filesystem.cmake
#
# The torch wheel's libtorch.so exports its own copy of std::filesystem (built with an older libstdc++). A
# program of ours that references std::filesystem may have those references bound to libtorch's copy, depending
# on link order and toolchain, and some of its functions then crash (remove_all jumped to address 0 after
# `minipuzzle prune` on the GPU host: exit 139, issue 18). Our code uses mp::fs (minipuzzle/fs.h) instead; this
# check runs after every link so that no std::filesystem use can come back unnoticed.
execute_process(COMMAND "${NM}" -D --undefined-only "${FILE}" OUTPUT_VARIABLE undefined RESULT_VARIABLE rc
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "check_no_std_filesystem: ${NM} failed on ${FILE}: ${err}")
endif()
# Itanium mangling of std::filesystem (St10filesystem) and of libc++'s std::__fs::filesystem.
string(REGEX MATCHALL "[^\n]*(St10filesystem|St3__fs10filesystem)[^\n]*" hits "${undefined}")
if(hits)
  list(LENGTH hits n)
  list(GET hits 0 first)
  string(STRIP "${first}" first)
  # One unwrapped line first (FATAL_ERROR text is re-wrapped), which the test of this check looks for.
  message(NOTICE "check_no_std_filesystem: refused ${FILE}: ${n} std::filesystem symbol(s)")
  message(FATAL_ERROR "${FILE} needs ${n} std::filesystem symbol(s) from a shared library (first: ${first}). "
    "libtorch.so exports its own std::filesystem, which can be bound instead of libstdc++'s and crash: use "
    "mp::fs (include/minipuzzle/fs.h) instead of std::filesystem, including through headers (CLI11 is built "
    "with CLI11_HAS_FILESYSTEM=0 for this reason).")
endif()

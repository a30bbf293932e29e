# Rewrites a CUDA source for emulated_cuda.h: every `kernel<<<config>>>(arguments)` becomes
# `::emulated_cuda::launch("kernel", {config}, <a lambda calling kernel>)(arguments)`, so that a
# plain C++ compiler builds it (the lambda lets kernel templates deduce their arguments, as a
# launch does). A kernel is named by an identifier and at most one <...> of template arguments.
#   cmake -DINPUT=in.cu -DOUTPUT=out.cpp -P translate_launches.cmake
file(READ "${INPUT}" source)
set(kernel "([A-Za-z_][A-Za-z0-9_:]*(<[^<>;]*>)?)")
string(REGEX REPLACE "${kernel}[ \t\r\n]*<<<([^;]*)>>>[ \t\r\n]*\\("
       "::emulated_cuda::launch(\"\\1\", ::emulated_cuda::LaunchConfig(\\3), [](auto&... emulated_arguments) { \\1(emulated_arguments...); })("
       translated "${source}")
string(FIND "${translated}" "<<<" left)
if(NOT left EQUAL -1)
  message(FATAL_ERROR "${INPUT}: a kernel launch this script cannot rewrite is left")
endif()
file(WRITE "${OUTPUT}.tmp" "#line 1 \"${INPUT}\"\n${translated}")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")

# Rewrites a CUDA source for emulated_cuda.h, line for line (diagnostics keep their line numbers):
# - every `kernel<<<config>>>(arguments)` becomes `::emulated_cuda::launch("kernel",
#   {config}, <a lambda calling kernel>)(arguments)`, so that a plain C++ compiler builds it (the
#   lambda lets kernel templates deduce their arguments, as a launch does). A kernel is named by
#   an identifier and at most one <...> of template arguments;
# - every `__shared__ T name[...];` becomes a static followed by
#   `::emulated_cuda::fresh_shared(&name, sizeof(name));`, which fills it with 0xFF bytes when a
#   block first reaches it: shared memory starts each block holding garbage, as on a GPU, not
#   what the last block left.
#   cmake -DINPUT=in.cu -DOUTPUT=out.cpp -P translate_launches.cmake
file(READ "${INPUT}" source)
set(kernel "([A-Za-z_][A-Za-z0-9_:]*(<[^<>;]*>)?)")
string(REGEX REPLACE "${kernel}([ \t\r\n]*)<<<([^;]*)>>>([ \t\r\n]*)\\("
       "::emulated_cuda::launch(\"\\1\", ::emulated_cuda::LaunchConfig(\\4), [](auto&... emulated_arguments) { \\1(emulated_arguments...); })\\3\\5("
       translated "${source}")
string(REGEX REPLACE "__shared__([^;]*[^A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)[ \t]*((\\[[^;]*\\])?)[ \t]*;"
       "static\\1\\2\\3; ::emulated_cuda::fresh_shared(&\\2, sizeof(\\2));"
       translated "${translated}")
# What is left outside comments must be no launch and no shared declaration.
string(REGEX REPLACE "//[^\n]*" "" code "${translated}")
foreach(left "<<<" "__shared__")
  string(FIND "${code}" "${left}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "${INPUT}: a ${left} this script cannot rewrite is left")
  endif()
endforeach()
file(WRITE "${OUTPUT}.tmp" "#line 1 \"${INPUT}\"\n${translated}")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")

// Stands in for CUDA's <cuda_runtime.h> in the emulated build (emulated_cuda.h).
#pragma once
#include "emulated_cuda.h"

// Stands in for CUDA's <cuda_bf16.h> in the emulated build (emulated_cuda.h).
#pragma once
#include "emulated_cuda.h"

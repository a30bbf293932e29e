// Argument checks of the CUDA operator adapters (*_launch.cpp, compiled only into a CUDA build).
// Value checks are shared with the CPU kernels (../cpu/checks.h, ../cpu/mask_checks.h), so both
// raise the same errors.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "../cpu/mask_checks.h"

namespace diffmask_fast {
namespace cuda {

using cpu::check_dim;
using cpu::check_dtype;
using cpu::check_floating;
using cpu::check_integer;
using cpu::check_mask_inputs;
using cpu::check_score_table_layout;
using cpu::check_seed_tensor;
using cpu::check_similarity_operands;
using cpu::check_word_inputs;

inline void check_cuda_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cuda(), op, ": ", name, " must be a CUDA tensor for the CUDA kernel, got a tensor on ",
                    t.device());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& reference, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device() == reference.device(), op, ": all tensors must be on the same device, got ", name,
                    " on ", t.device(), " and the others on ", reference.device());
}

inline void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(status));
}

// A workspace of `bytes` bytes from the caching allocator, on `like`'s device.
inline at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

}  // namespace cuda
}  // namespace diffmask_fast

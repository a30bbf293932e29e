// Host entry points of the CUDA kernels of diffmask_fast.
//
// Torch-free: raw device pointers, sizes and a stream in, a cudaError_t out. The kernels are
// compiled by nvcc from csrc/cuda/*.cu, which include only the CUDA runtime and csrc/core, so
// they build (and are compile-checked by CMake) without a CUDA build of torch. The adapters
// that register them as torch operators are csrc/cuda/*_launch.cpp, compiled only into a CUDA
// build of the extension. Every entry point is asynchronous on `stream`: none synchronizes
// and none allocates; workspaces come from the caller.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "similarity_plan.h"

namespace diffmask_fast {
namespace cuda {

// ---- max_anchor_similarity ---------------------------------------------------------------------

// One block of products, c[i, j] = sum over t < depth of a[i, t] * b[j, t] (i < rows, j < cols):
// float32 or float64 operands into c of the same type, or bfloat16 operands into float32 c
// (float32 accumulation). Rows have unit stride and the given leading dimensions.
enum class ProductType : int { kFloat32 = 0, kFloat64 = 1, kBfloat16 = 2 };

struct ProductBlock {
  ProductType type = ProductType::kFloat32;
  const void* a = nullptr;
  int64_t lda = 0;  // may be 0 (every row the same)
  const void* b = nullptr;
  int64_t ldb = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t depth = 0;
  void* c = nullptr;
  int64_t ldc = 0;
};

// The matrix-product routine of the blocked method: enqueues one block on `stream` (the
// extension passes torch's cuBLAS products, the C++ tests a plain kernel).
using ProductFunction = cudaError_t (*)(const ProductBlock& block, cudaStream_t stream, void* context);

struct SimilarityProblem {
  const void* embeddings = nullptr;  // [n, d] rows, row stride `ld` elements, unit inner stride
  int64_t n = 0;
  int64_t d = 0;
  int64_t ld = 0;
  const void* anchors = nullptr;  // [k, d] contiguous, k >= 1
  int64_t k = 0;
  bool float64 = false;  // embeddings and anchors are double (else float)
  Precision precision = Precision::kFloat32;  // ignored for float64 (always computed in float64)
  // The blocked method's products; without a routine the fused kernel searches every K (float32
  // and lower inputs only: float64 needs one).
  ProductFunction product = nullptr;
  void* product_context = nullptr;
  float* values = nullptr;     // [n] max cosine
  int64_t* indices = nullptr;  // [n] first anchor reaching it
};

// The plan of a problem (similarity_plan.h); cudaErrorInvalidValue for sizes no plan fits.
cudaError_t plan_max_anchor_similarity(const SimilarityProblem& problem, SimilarityPlan* plan,
                                       const BlockLimits& limits = BlockLimits());

// Runs a planned problem; `workspace` holds plan.workspace_bytes bytes, 256-byte aligned. Errors
// of the product routine are returned as they come, before anything else is launched.
cudaError_t max_anchor_similarity(const SimilarityProblem& problem, const SimilarityPlan& plan, void* workspace,
                                  cudaStream_t stream);

// Whether the bfloat16 precisions run on `device`: their products need compute capability 8.0
// or newer, and a build with no kernel for the device runs no precision at all.
enum class Bf16Support { kSupported, kOldGpu, kNoKernelForDevice };
Bf16Support bf16_support(int device);

// ---- sample_without_replacement --------------------------------------------------------------

// Problems found in the inputs, per row, in status[2 * row] (position, or -1) and
// status[2 * row + 1] (one of these codes).
enum SampleStatus : int64_t {
  kSampleOk = 0,
  kSampleNegativeWeight = 1,
  kSampleNaNWeight = 2,
  kSampleInfiniteWeight = 3,
  kSampleNegativeCount = 4,
};

struct SampleProblem {
  const void* weights = nullptr;  // [rows, cols] contiguous
  bool float64 = false;           // weights are double (else float)
  int64_t rows = 0;
  int64_t cols = 0;
  const int64_t* counts = nullptr;  // [rows]
  uint64_t seed = 0;
  bool* selected = nullptr;  // [rows, cols], every entry written
  int64_t* status = nullptr;  // [rows, 2]
};

size_t sample_workspace_bytes(const SampleProblem& problem);

// Successive sampling of min(counts[r], #positive weights) positions of each row, with the CPU
// kernel's random streams and keys: identical results for the same seed. Rows with a problem
// (see SampleStatus) select nothing.
cudaError_t sample_without_replacement(const SampleProblem& problem, void* workspace, cudaStream_t stream);

// ---- difference_mask -------------------------------------------------------------------------

struct MaskProblem {
  const int64_t* input_ids = nullptr;  // [rows, length]
  const bool* never_word = nullptr;    // [rows, length]
  int64_t rows = 0;
  int64_t length = 0;
  const bool* starts_word = nullptr;  // [vocabulary]
  int64_t vocabulary = 0;
  const int64_t* table_keys = nullptr;  // [capacity], a power of two (or 0)
  const float* table_values = nullptr;  // [capacity]
  int64_t capacity = 0;
  const int64_t* random_token_ids = nullptr;  // [n_random]
  int64_t n_random = 0;
  double mlm_probability = 0.25;
  int64_t weighting = 0;  // 0 similarity, 1 rank
  double uniform_mix = 0.0;
  double unknown_score = 0.0;
  int64_t mask_token_id = 0;
  double mask_replace_prob = 0.8;
  double random_replace_prob = 0.1;
  // The seed: *seed_device when set (a device scalar, so the seed can change from step to step
  // without a host round trip), seed_value otherwise.
  const int64_t* seed_device = nullptr;
  int64_t seed_value = 0;

  // Outputs.
  int64_t* masked_ids = nullptr;    // [rows, length]
  int64_t* labels = nullptr;        // [rows, length]
  int64_t* masked_words = nullptr;  // [rows]
  int64_t* n_words = nullptr;       // [rows], may be null
  int64_t* missed_words = nullptr;  // [rows] words absent from the table, may be null
  // Optional, for the miss list of the synchronizing variant: at the first token of every word
  // absent from the table its hash and its end (one past its last token); 0 elsewhere.
  int64_t* miss_hash = nullptr;  // [rows, length]
  int64_t* miss_end = nullptr;   // [rows, length]
  // Optional: the first token of each row whose id is outside [0, vocabulary) and that is not
  // never_word (-1 if none). Such tokens are treated as never_word either way.
  int64_t* bad_position = nullptr;  // [rows]
  int64_t* bad_score = nullptr;     // [rows]: first token of a word whose table score is not finite, or -1
};

size_t mask_workspace_bytes(const MaskProblem& problem);

// Difference-Masking of every row (core::mask_row's algorithm and random streams: identical
// results for the same seed).
cudaError_t difference_mask(const MaskProblem& problem, void* workspace, cudaStream_t stream);

// ---- score table -----------------------------------------------------------------------------

// values[i] = table value of queries[i], or default_value (found[i] = false) when absent.
// default_value comes as the caller gave it and is rounded to float on the device: rounded on
// the host, a caller flushing denormals (torch.set_flush_denormal) read 1e-40 as 0.
cudaError_t score_table_lookup(const int64_t* keys, const float* table_values, int64_t capacity,
                               const int64_t* queries, int64_t n, double default_value, float* values, bool* found,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace diffmask_fast

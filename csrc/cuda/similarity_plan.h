// How the CUDA path of max_anchor_similarity cuts a problem and lays out its workspace.
//
// Plain C++ (no CUDA headers): the host C++ tests check this arithmetic without a GPU, and
// kernels.h includes it for the kernels' entry points.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace diffmask_fast {
namespace cuda {

// How the dot products are computed (norms, sums and the final division are always float32, or
// float64 for float64 inputs).
enum class Precision : int {
  kFloat32 = 0,  // float32 products: the CPU kernel's results up to rounding
  kBf16x3 = 1,   // each factor split into two bfloat16s (v = hi + lo); hi*hi + hi*lo + lo*hi
  kBf16 = 2,     // both factors rounded to bfloat16
};

enum class SimilarityMethod : int {
  // One kernel: a tiled product whose epilogue keeps each row's max. For few anchors it reads
  // every embedding once (the search is bound by reading them); for more, it is the fallback
  // where no matrix-product routine computes float32 products. Float32 for every precision.
  kFused = 0,
  // Blocks of the [rows x anchors] product by a matrix-product routine (cuBLAS, through torch),
  // each reduced to per-row (max, first arg max) and merged into the rows' running best. Only
  // one block of products ever exists: memory O(block), never rows x anchors.
  kBlocked = 1,
};

// Anchors up to which the fused kernel runs when a product routine is at hand (its small tile
// holds all of them).
constexpr int64_t kFusedMaxAnchors = 32;

// The sizes of the blocked method's blocks (the tests pass small ones to get many blocks).
struct BlockLimits {
  int64_t anchors = 4096;              // anchors per block of products
  size_t bytes = size_t{1} << 27;      // 128 MiB: the most one block of products, or the
                                       // bfloat16 operands of its rows, may take
};

// Where the workspace holds what (byte offsets from its start, each 256-byte aligned) and the
// blocks. Arrays a method does not use are empty (zero bytes at their offset).
struct SimilarityPlan {
  SimilarityMethod method = SimilarityMethod::kFused;
  int64_t depth = 0;         // inner dimension of the products: d, or 3 d for kBf16x3
  int64_t operand_ld = 0;    // row stride of the bfloat16 operands: depth rounded up to 8 (16 bytes)
  int64_t row_block = 0;     // rows per block of products
  int64_t anchor_block = 0;  // anchors per block of products
  size_t units = 0;          // [k, d] anchors at unit length (float, or double)
  size_t anchor_operand = 0;  // [k, operand_ld] bfloat16 (the bfloat16 precisions)
  size_t row_operand = 0;    // [row_block, operand_ld] bfloat16 (the bfloat16 precisions)
  size_t norms = 0;          // [n] squared norms of the rows
  size_t best_value = 0;     // [n] running max dot product per row
  size_t best_index = 0;     // [n] int32, its first anchor (-1: none yet)
  size_t products = 0;       // [row_block, anchor_block] one block of products (float, or double)
  size_t workspace_bytes = 0;
};

namespace plan_detail {

inline size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace plan_detail

// What the plan depends on.
struct SimilaritySizes {
  int64_t n = 0;  // rows
  int64_t d = 0;  // values per row and per anchor
  int64_t k = 0;  // anchors
  bool float64 = false;
  Precision precision = Precision::kFloat32;
  // A matrix-product routine is at hand; without one the fused kernel searches every K (float64
  // always has one).
  bool products = true;
  // Rows closer than d apart (expanded, overlapping): the product routine copies each block of
  // them, so blocks are bounded for that copy too.
  bool strided_rows = false;
};

// The plan of a problem. False when no plan fits the sizes (n < 0, d < 1, k < 1, k beyond the
// int32 indices of the running best, or float64 without a product routine).
inline bool plan_similarity(const SimilaritySizes& sizes, const BlockLimits& limits, SimilarityPlan* plan) {
  using plan_detail::aligned;
  const int64_t n = sizes.n, d = sizes.d, k = sizes.k;
  if (n < 0 || d < 1 || k < 1 || k > 0x7FFFFFFF || limits.anchors < 1 || limits.bytes < 1 ||
      (sizes.float64 && !sizes.products)) {
    return false;
  }
  SimilarityPlan out;
  const size_t element = sizes.float64 ? sizeof(double) : sizeof(float);
  const size_t bfloat16 = 2;
  const bool blocked = sizes.float64 || (sizes.products && k > kFusedMaxAnchors);
  const bool operands = blocked && !sizes.float64 && sizes.precision != Precision::kFloat32;
  out.method = blocked ? SimilarityMethod::kBlocked : SimilarityMethod::kFused;
  out.depth = operands && sizes.precision == Precision::kBf16x3 ? 3 * d : d;
  out.operand_ld = (out.depth + 7) / 8 * 8;
  if (blocked) {
    out.anchor_block = std::min(k, limits.anchors);
    int64_t rows = static_cast<int64_t>(limits.bytes / (static_cast<size_t>(out.anchor_block) * element));
    if (operands) {
      rows = std::min(rows, static_cast<int64_t>(limits.bytes / (static_cast<size_t>(out.operand_ld) * bfloat16)));
    } else if (sizes.strided_rows) {
      rows = std::min(rows, static_cast<int64_t>(limits.bytes / (static_cast<size_t>(d) * element)));
    }
    rows = std::min(rows, n);
    out.row_block = rows > 0 ? rows : 1;
  }
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at += aligned(bytes);
    return offset;
  };
  const size_t operand_row = bfloat16 * static_cast<size_t>(out.operand_ld);
  out.units = take(element * static_cast<size_t>(k) * static_cast<size_t>(d));
  out.anchor_operand = take(operands ? operand_row * static_cast<size_t>(k) : 0);
  out.row_operand = take(operands ? operand_row * static_cast<size_t>(out.row_block) : 0);
  out.norms = take(element * static_cast<size_t>(n));
  out.best_value = take(element * static_cast<size_t>(n));
  out.best_index = take(sizeof(int32_t) * static_cast<size_t>(n));
  out.products = take(blocked ? element * static_cast<size_t>(out.row_block) * static_cast<size_t>(out.anchor_block) : 0);
  out.workspace_bytes = at;
  *plan = out;
  return true;
}

}  // namespace cuda
}  // namespace diffmask_fast

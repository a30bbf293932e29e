// The CUDA path's plan of max_anchor_similarity (csrc/cuda/similarity_plan.h), without a GPU:
// which method, block sizes within their limits, and a workspace whose arrays are aligned, in
// order and apart.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "check.h"
#include "cuda/similarity_plan.h"

using namespace diffmask_fast::cuda;

namespace {

struct Array {
  size_t offset;
  size_t bytes;
};

SimilaritySizes sizes_of(int64_t n, int64_t d, int64_t k, bool float64 = false,
                         Precision precision = Precision::kFloat32) {
  SimilaritySizes sizes;
  sizes.n = n;
  sizes.d = d;
  sizes.k = k;
  sizes.float64 = float64;
  sizes.precision = precision;
  return sizes;
}

void check_plan(const SimilaritySizes& sizes, const BlockLimits& limits) {
  const int64_t n = sizes.n, d = sizes.d, k = sizes.k;
  const bool float64 = sizes.float64;
  SimilarityPlan plan;
  CHECK(plan_similarity(sizes, limits, &plan));
  const size_t element = float64 ? 8 : 4;
  const bool blocked = plan.method == SimilarityMethod::kBlocked;
  CHECK(blocked == (float64 || (sizes.products && k > kFusedMaxAnchors)));
  const bool bf16 = blocked && !float64 && sizes.precision != Precision::kFloat32;
  CHECK(plan.depth == (bf16 && sizes.precision == Precision::kBf16x3 ? 3 * d : d));
  CHECK(plan.operand_ld >= plan.depth && plan.operand_ld % 8 == 0 && plan.operand_ld - plan.depth < 8);
  if (blocked) {
    CHECK(plan.anchor_block >= 1 && plan.anchor_block <= k && plan.anchor_block <= limits.anchors);
    CHECK(plan.anchor_block == (k < limits.anchors ? k : limits.anchors));
    CHECK(plan.row_block >= 1 && (n == 0 || plan.row_block <= n));
    // Within the limit unless one row alone exceeds it.
    const size_t products = static_cast<size_t>(plan.row_block) * plan.anchor_block * element;
    CHECK(products <= limits.bytes || plan.row_block == 1);
    if (bf16) {
      CHECK(static_cast<size_t>(plan.row_block) * plan.operand_ld * 2 <= limits.bytes || plan.row_block == 1);
    } else if (sizes.strided_rows) {  // torch copies each block of such rows
      CHECK(static_cast<size_t>(plan.row_block) * d * element <= limits.bytes || plan.row_block == 1);
    }
    // As many rows as the limits allow.
    const size_t more = static_cast<size_t>(plan.row_block + 1);
    CHECK(plan.row_block >= n || more * plan.anchor_block * element > limits.bytes ||
          (bf16 && more * plan.operand_ld * 2 > limits.bytes) ||
          (!bf16 && sizes.strided_rows && more * d * element > limits.bytes));
  } else {
    CHECK(plan.row_block == 0 && plan.anchor_block == 0);
  }
  const size_t operands_rows = bf16 ? static_cast<size_t>(plan.row_block) * plan.operand_ld * 2 : 0;
  const std::vector<Array> arrays = {
      {plan.units, element * k * d},
      {plan.anchor_operand, bf16 ? static_cast<size_t>(k) * plan.operand_ld * 2 : 0},
      {plan.row_operand, operands_rows},
      {plan.norms, element * n},
      {plan.best_value, element * n},
      {plan.best_index, 4 * static_cast<size_t>(n)},
      {plan.products, blocked ? static_cast<size_t>(plan.row_block) * plan.anchor_block * element : 0},
  };
  size_t end = 0;
  for (const Array& array : arrays) {
    CHECK(array.offset % 256 == 0);
    CHECK(array.offset >= end);  // in order, apart
    end = array.offset + array.bytes;
  }
  CHECK(end <= plan.workspace_bytes && plan.workspace_bytes - end < 256);
}

void test_plans() {
  const BlockLimits standard;
  BlockLimits tiny;
  tiny.anchors = 5;
  tiny.bytes = 300;
  for (const BlockLimits& limits : {standard, tiny}) {
    for (bool float64 : {false, true}) {
      for (Precision precision : {Precision::kFloat32, Precision::kBf16x3, Precision::kBf16}) {
        for (int64_t n : {0, 1, 7, 32768, 1000003}) {
          for (int64_t k : {1, 20, 32, 33, 1000, 4096, 4097, 100000}) {
            for (int64_t d : {1, 13, 768}) {
              for (bool products : {true, false}) {
                for (bool strided_rows : {false, true}) {
                  SimilaritySizes sizes = sizes_of(n, d, k, float64, precision);
                  sizes.products = products || float64;  // float64 needs a product routine
                  sizes.strided_rows = strided_rows;
                  check_plan(sizes, limits);
                }
              }
            }
          }
        }
      }
    }
  }
}

void test_blocks_of_the_benchmark_shapes() {
  SimilarityPlan plan;
  // 32,768 rows of 768 against 100,000 anchors: 4,096 anchors x 8,192 rows (128 MiB of float32).
  CHECK(plan_similarity(sizes_of(32768, 768, 100000), BlockLimits(), &plan));
  CHECK(plan.method == SimilarityMethod::kBlocked && plan.anchor_block == 4096 && plan.row_block == 8192);
  CHECK(plan.depth == 768 && plan.anchor_operand == plan.row_operand);  // no bfloat16 operands
  CHECK(plan.workspace_bytes < size_t{460} << 20);  // the 100,000 unit anchors and one block
  // K = 1,000: one block holds every row.
  CHECK(plan_similarity(sizes_of(32768, 768, 1000), BlockLimits(), &plan));
  CHECK(plan.anchor_block == 1000 && plan.row_block == 32768);
  // bf16x3 rows: 3 x 768 bfloat16 each, 128 MiB of them at most.
  CHECK(plan_similarity(sizes_of(1000000, 768, 1000, false, Precision::kBf16x3), BlockLimits(), &plan));
  CHECK(plan.depth == 2304 && plan.operand_ld == 2304 && plan.row_block == (int64_t{1} << 27) / (2304 * 2));
  // Operand rows 16-byte aligned: d = 13 gives depth 39 in rows of 40.
  CHECK(plan_similarity(sizes_of(100, 13, 1000, false, Precision::kBf16x3), BlockLimits(), &plan));
  CHECK(plan.depth == 39 && plan.operand_ld == 40);
  // K = 20: the fused kernel, no blocks; without a product routine, for any K.
  CHECK(plan_similarity(sizes_of(32768, 768, 20, false, Precision::kBf16), BlockLimits(), &plan));
  CHECK(plan.method == SimilarityMethod::kFused && plan.row_block == 0 && plan.products == plan.workspace_bytes);
  SimilaritySizes without = sizes_of(32768, 768, 100000);
  without.products = false;
  CHECK(plan_similarity(without, BlockLimits(), &plan));
  CHECK(plan.method == SimilarityMethod::kFused && plan.products == plan.workspace_bytes);
  // Expanded rows: torch copies each block of them, so a block of 33 anchors holds far fewer
  // rows than the 2^27 / (33 x 4) its products alone would allow.
  SimilaritySizes expanded = sizes_of(1000000, 768, 33);
  expanded.strided_rows = true;
  CHECK(plan_similarity(expanded, BlockLimits(), &plan));
  CHECK(plan.row_block == (int64_t{1} << 27) / (768 * 4));
}

void test_sizes_no_plan_fits() {
  SimilarityPlan plan;
  CHECK(!plan_similarity(sizes_of(-1, 8, 3), BlockLimits(), &plan));
  CHECK(!plan_similarity(sizes_of(5, 0, 3), BlockLimits(), &plan));
  CHECK(!plan_similarity(sizes_of(5, 8, 0), BlockLimits(), &plan));
  CHECK(!plan_similarity(sizes_of(5, 8, int64_t{1} << 31), BlockLimits(), &plan));
  BlockLimits none;
  none.anchors = 0;
  CHECK(!plan_similarity(sizes_of(5, 8, 40), none, &plan));
  SimilaritySizes float64 = sizes_of(5, 8, 40, true);
  float64.products = false;  // float64 has no fused kernel
  CHECK(!plan_similarity(float64, BlockLimits(), &plan));
}

}  // namespace

int main() {
  test_plans();
  test_blocks_of_the_benchmark_shapes();
  test_sizes_no_plan_fits();
  TEST_MAIN_END();
}

// CPU kernels of score_table_insert and score_table_lookup.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../core/score_table.h"
#include "checks.h"
#include "denormals.h"

namespace diffmask_fast {
namespace cpu {

namespace {

void score_table_insert_cpu(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& new_keys,
                            const at::Tensor& new_values) {
  constexpr const char* kOp = "score_table_insert";
  const KeepDenormals keep_denormals;  // on this thread too: see max_anchor_similarity_cpu
  check_score_table(keys, values, kOp, "keys", "values");
  TORCH_CHECK_VALUE(keys.is_contiguous() && values.is_contiguous(), kOp,
                    ": keys and values are updated in place and must be contiguous");
  TORCH_CHECK_VALUE(!keys.requires_grad() && !values.requires_grad(), kOp,
                    ": keys and values are updated in place, which no gradient flows through; they must not "
                    "require grad");
  check_cpu(new_keys, kOp, "new_keys");
  check_cpu(new_values, kOp, "new_values");
  check_dtype(new_keys, kOp, "new_keys", at::kLong);
  check_dtype(new_values, kOp, "new_values", at::kFloat);
  TORCH_CHECK_VALUE(new_keys.dim() == 1 && new_values.dim() == 1 && new_keys.size(0) == new_values.size(0), kOp,
                    ": new_keys and new_values must be 1-D of the same length, got shapes ", new_keys.sizes(),
                    " and ", new_values.sizes());
  const int64_t m = new_keys.size(0);
  if (m == 0) {
    return;
  }
  // Pairs are read while slots are written: pairs that share memory with the table (a view of
  // it) are copied first, so that no pair reads a value an earlier one wrote.
  const auto shares_table = [&](const at::Tensor& t) {
    return at::get_overlap_status(t, keys) != at::MemOverlapStatus::No ||
           at::get_overlap_status(t, values) != at::MemOverlapStatus::No;
  };
  const at::Tensor k = shares_table(new_keys) ? new_keys.clone() : new_keys.contiguous();
  const at::Tensor v = shares_table(new_values) ? new_values.clone() : new_values.contiguous();
  const core::InsertResult result = core::table_insert(keys.data_ptr<int64_t>(), values.data_ptr<float>(),
                                                       keys.size(0), k.data_ptr<int64_t>(), v.data_ptr<float>(), m);
  switch (result.status) {
    case core::InsertStatus::kZeroKey:
      TORCH_CHECK_VALUE(false, kOp, ": new_keys[", result.position, "] is 0, which marks empty slots; word_hash never ",
                        "returns 0");
      break;
    case core::InsertStatus::kNonFiniteValue:
      TORCH_CHECK_VALUE(false, kOp, ": new_values[", result.position, "] = ", v.data_ptr<float>()[result.position],
                        " is not finite");
      break;
    case core::InsertStatus::kFull:
      TORCH_CHECK_VALUE(false, kOp, ": the table (capacity ", keys.size(0), ") is full; nothing was inserted. ",
                        "Grow it first (ScoreHashTable.insert keeps the load at most 1/2)");
      break;
    default:
      break;
  }
}

std::tuple<at::Tensor, at::Tensor> score_table_lookup_cpu(const at::Tensor& keys, const at::Tensor& values,
                                                          const at::Tensor& queries, double default_value) {
  constexpr const char* kOp = "score_table_lookup";
  // default_value is rounded to float32 here: a caller flushing denormals read 1e-40 as 0.
  const KeepDenormals keep_denormals;
  check_score_table(keys, values, kOp, "keys", "values");
  check_cpu(queries, kOp, "queries");
  check_dtype(queries, kOp, "queries", at::kLong);
  const at::Tensor table_keys = keys.contiguous();
  const at::Tensor table_values = values.contiguous();
  const at::Tensor q = queries.contiguous();
  at::Tensor found_values = at::empty(queries.sizes(), values.options());
  at::Tensor found = at::empty(queries.sizes(), queries.options().dtype(at::kBool));
  const int64_t n = q.numel();
  const int64_t capacity = table_keys.size(0);
  const int64_t* key_data = table_keys.data_ptr<int64_t>();
  const float* value_data = table_values.data_ptr<float>();
  const int64_t* query_data = q.data_ptr<int64_t>();
  float* out_values = found_values.data_ptr<float>();
  bool* out_found = found.data_ptr<bool>();
  const float fallback = static_cast<float>(default_value);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = core::table_find(key_data, capacity, query_data[i]);
      out_found[i] = slot >= 0;
      out_values[i] = slot >= 0 ? value_data[slot] : fallback;
    }
  });
  return {found_values, found};
}

// The insert writes into keys and values: their version counters advance, as a built-in in-place
// op's do, so that autograd refuses a backward pass that saved them before the write. Tensors
// made under inference_mode have no version counter (and no backward pass saves them): a table
// grown in an evaluation stays writable afterwards, as before.
void score_table_insert_bumping_versions(const at::Tensor& keys, const at::Tensor& values,
                                         const at::Tensor& new_keys, const at::Tensor& new_values) {
  static const auto insert = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("diffmask_fast::score_table_insert", "")
                                 .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    insert.call(keys, values, new_keys, new_values);
  }
  for (const at::Tensor* table : {&keys, &values}) {
    if (!table->is_inference()) {
      table->unsafeGetTensorImpl()->bump_version();
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("score_table_insert", &score_table_insert_cpu);
  m.impl("score_table_lookup", &score_table_lookup_cpu);
}

TORCH_LIBRARY_IMPL(diffmask_fast, ADInplaceOrView, m) {
  m.impl("score_table_insert", &score_table_insert_bumping_versions);
}

}  // namespace cpu
}  // namespace diffmask_fast

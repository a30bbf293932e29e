// Argument checks of difference_mask_device, shared by its CPU kernel and its CUDA adapter so
// both raise the same errors.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <utility>

#include "checks.h"

namespace diffmask_fast {
namespace cpu {

// Checks of difference_mask_device (any device): tensor layouts and option values. The tensors'
// devices are the caller's to check.
inline void check_mask_arguments(const char* op, const at::Tensor& input_ids, const at::Tensor& never_word,
                                 const at::Tensor& starts_word, const at::Tensor& table_keys,
                                 const at::Tensor& table_values, const at::Tensor& random_token_ids,
                                 double mlm_probability, int64_t weighting, double uniform_mix, double unknown_score,
                                 double mask_replace_prob, double random_replace_prob, const at::Tensor& seed) {
  check_dim(input_ids, op, "input_ids", 2);
  check_dtype(input_ids, op, "input_ids", at::kLong);
  check_dtype(never_word, op, "never_word", at::kBool);
  TORCH_CHECK_VALUE(never_word.sizes() == input_ids.sizes(), op, ": never_word must have the shape of input_ids ",
                    input_ids.sizes(), ", got ", never_word.sizes());
  check_dim(starts_word, op, "starts_word", 1);
  check_dtype(starts_word, op, "starts_word", at::kBool);
  check_dim(table_keys, op, "table_keys", 1);
  check_dim(table_values, op, "table_values", 1);
  check_dtype(table_keys, op, "table_keys", at::kLong);
  check_dtype(table_values, op, "table_values", at::kFloat);
  const int64_t capacity = table_keys.size(0);
  TORCH_CHECK_VALUE(capacity == table_values.size(0), op, ": table_keys and table_values must have the same length, got ",
                    capacity, " and ", table_values.size(0));
  TORCH_CHECK_VALUE(capacity == 0 || (capacity & (capacity - 1)) == 0, op,
                    ": the table capacity (length of table_keys) must be a power of two, got ", capacity);
  check_dim(random_token_ids, op, "random_token_ids", 1);
  check_dtype(random_token_ids, op, "random_token_ids", at::kLong);
  check_dtype(seed, op, "seed", at::kLong);
  TORCH_CHECK_VALUE(seed.numel() == 1, op, ": seed must hold one int64 value, got shape ", seed.sizes());
  for (const auto& [value, name] : {std::pair<double, const char*>{mlm_probability, "mlm_probability"},
                                    {uniform_mix, "uniform_mix"},
                                    {mask_replace_prob, "mask_replace_prob"},
                                    {random_replace_prob, "random_replace_prob"}}) {
    TORCH_CHECK_VALUE(value >= 0.0 && value <= 1.0, op, ": ", name, " must be in [0, 1], got ", value);
  }
  TORCH_CHECK_VALUE(mask_replace_prob + random_replace_prob <= 1.0 + 1e-12, op,
                    ": mask_replace_prob + random_replace_prob must be at most 1, got ", mask_replace_prob, " + ",
                    random_replace_prob);
  TORCH_CHECK_VALUE(weighting == 0 || weighting == 1, op, ": weighting must be 0 (similarity) or 1 (rank), got ",
                    weighting);
  TORCH_CHECK_VALUE(std::isfinite(unknown_score), op, ": unknown_score must be finite, got ", unknown_score);
  TORCH_CHECK_VALUE(random_replace_prob == 0.0 || random_token_ids.numel() > 0, op,
                    ": random_token_ids is empty but random_replace_prob = ", random_replace_prob,
                    " > 0; pass the ids random replacements are drawn from");
}

}  // namespace cpu
}  // namespace diffmask_fast

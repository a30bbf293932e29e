// Argument checks of the word and masking ops (group_words, difference_mask,
// difference_mask_device), shared by the CPU kernels and the CUDA adapters so both raise the same
// errors. Devices are the caller's to check.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <sstream>
#include <string>
#include <utility>

#include "checks.h"

namespace diffmask_fast {
namespace cpu {

// input_ids int64 [B, L], never_word bool [B, L], starts_word bool [V].
inline void check_word_inputs(const char* op, const at::Tensor& input_ids, const at::Tensor& never_word,
                              const at::Tensor& starts_word) {
  check_dim(input_ids, op, "input_ids", 2);
  check_dtype(input_ids, op, "input_ids", at::kLong);
  check_dtype(never_word, op, "never_word", at::kBool);
  TORCH_CHECK_VALUE(never_word.sizes() == input_ids.sizes(), op, ": never_word must have the shape of input_ids ",
                    input_ids.sizes(), ", got ", never_word.sizes());
  check_dim(starts_word, op, "starts_word", 1);
  check_dtype(starts_word, op, "starts_word", at::kBool);
}

// A number in the fewest digits that read back as it (as Python's repr writes it): a stream's
// six digits printed 1.0000001 as 1 and 0.70000001 + 0.3 as 0.7 + 0.3, hiding what was refused.
inline std::string shortest_text(double value) {
  for (int digits = 6; digits < 17; ++digits) {
    std::ostringstream text;
    text << std::setprecision(digits) << value;
    // strtod, not stod: stod throws on a subnormal value (1e-310), which it reads as out of range.
    if (!std::isfinite(value) || std::strtod(text.str().c_str(), nullptr) == value) return text.str();
  }
  std::ostringstream text;
  text << std::setprecision(17) << value;
  return text.str();
}

// The word inputs, the score table, the random-replacement ids and the options of a masking op.
inline void check_mask_inputs(const char* op, const at::Tensor& input_ids, const at::Tensor& never_word,
                              const at::Tensor& starts_word, const at::Tensor& table_keys,
                              const at::Tensor& table_values, const at::Tensor& random_token_ids,
                              double mlm_probability, int64_t weighting, double uniform_mix, double unknown_score,
                              double mask_replace_prob, double random_replace_prob) {
  check_word_inputs(op, input_ids, never_word, starts_word);
  check_score_table_layout(table_keys, table_values, op, "table_keys", "table_values");
  check_dim(random_token_ids, op, "random_token_ids", 1);
  check_dtype(random_token_ids, op, "random_token_ids", at::kLong);
  for (const auto& [value, name] : {std::pair<double, const char*>{mlm_probability, "mlm_probability"},
                                    {uniform_mix, "uniform_mix"},
                                    {mask_replace_prob, "mask_replace_prob"},
                                    {random_replace_prob, "random_replace_prob"}}) {
    TORCH_CHECK_VALUE(value >= 0.0 && value <= 1.0, op, ": ", name, " must be in [0, 1], got ",
                      shortest_text(value));
  }
  TORCH_CHECK_VALUE(mask_replace_prob + random_replace_prob <= 1.0 + 1e-12, op,
                    ": mask_replace_prob + random_replace_prob must be at most 1, got ",
                    shortest_text(mask_replace_prob), " + ", shortest_text(random_replace_prob));
  TORCH_CHECK_VALUE(weighting == 0 || weighting == 1, op, ": weighting must be 0 (similarity) or 1 (rank), got ",
                    weighting);
  TORCH_CHECK_VALUE(std::isfinite(unknown_score), op, ": unknown_score must be finite, got ",
                    shortest_text(unknown_score));
  TORCH_CHECK_VALUE(random_replace_prob == 0.0 || random_token_ids.numel() > 0, op,
                    ": random_token_ids is empty but random_replace_prob = ", shortest_text(random_replace_prob),
                    " > 0; pass the ids random replacements are drawn from");
}

// The error of difference_mask (CPU and CUDA alike) for a word whose table score is NaN or infinite.
inline std::string non_finite_score_message(int64_t row, int64_t position) {
  return c10::str("the score in table_values of the word at input_ids[", row, ", ", position,
                  "] is not finite (NaN or infinite); scores must be finite (ScoreHashTable and "
                  "score_table_insert make sure of it)");
}

// The seed tensor of difference_mask_device: one int64 value.
inline void check_seed_tensor(const char* op, const at::Tensor& seed) {
  check_dtype(seed, op, "seed", at::kLong);
  TORCH_CHECK_VALUE(seed.numel() == 1, op, ": seed must hold one int64 value, got shape ", seed.sizes());
}

}  // namespace cpu
}  // namespace diffmask_fast

// CPU kernel of difference_mask: the fused per-batch masking step, parallel over rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../core/masking.h"
#include "checks.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "difference_mask";

void check_probability(double p, const char* name) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, kOp, ": ", name, " must be in [0, 1], got ", p);
}

// Distinct hashes of the misses, first occurrence in row-major order, as rows
// (hash, row, begin, end).
at::Tensor collect_misses(const std::vector<std::vector<core::Miss>>& row_misses, const at::TensorOptions& options) {
  size_t total = 0;
  for (const auto& misses : row_misses) {
    total += misses.size();
  }
  if (total == 0) {
    return at::empty({0, 4}, options);
  }
  int64_t capacity = 16;
  while (capacity < static_cast<int64_t>(2 * total)) {
    capacity *= 2;
  }
  std::vector<int64_t> seen(static_cast<size_t>(capacity), 0);  // hashes are never 0
  std::vector<int64_t> rows;
  rows.reserve(4 * total);
  const uint64_t mask = static_cast<uint64_t>(capacity - 1);
  for (size_t b = 0; b < row_misses.size(); ++b) {
    for (const core::Miss& miss : row_misses[b]) {
      uint64_t slot = core::table_home_slot(miss.hash, capacity);
      bool fresh = true;
      while (seen[slot] != 0) {
        if (seen[slot] == miss.hash) {
          fresh = false;
          break;
        }
        slot = (slot + 1) & mask;
      }
      if (fresh) {
        seen[slot] = miss.hash;
        rows.insert(rows.end(), {miss.hash, static_cast<int64_t>(b), miss.begin, miss.end});
      }
    }
  }
  const int64_t m = static_cast<int64_t>(rows.size() / 4);
  at::Tensor out = at::empty({m, 4}, options);
  std::copy(rows.begin(), rows.end(), out.data_ptr<int64_t>());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> difference_mask_cpu(
    const at::Tensor& input_ids, const at::Tensor& never_word, const at::Tensor& starts_word,
    const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& random_token_ids,
    double mlm_probability, int64_t weighting, double uniform_mix, double unknown_score, int64_t mask_token_id,
    double mask_replace_prob, double random_replace_prob, int64_t seed) {
  check_cpu(input_ids, kOp, "input_ids");
  check_cpu(never_word, kOp, "never_word");
  check_cpu(starts_word, kOp, "starts_word");
  check_cpu(random_token_ids, kOp, "random_token_ids");
  check_dim(input_ids, kOp, "input_ids", 2);
  check_dtype(input_ids, kOp, "input_ids", at::kLong);
  check_dtype(never_word, kOp, "never_word", at::kBool);
  TORCH_CHECK_VALUE(never_word.sizes() == input_ids.sizes(), kOp, ": never_word must have the shape of input_ids ",
                    input_ids.sizes(), ", got ", never_word.sizes());
  check_dim(starts_word, kOp, "starts_word", 1);
  check_dtype(starts_word, kOp, "starts_word", at::kBool);
  check_score_table(table_keys, table_values, kOp, "table_keys", "table_values");
  check_dim(random_token_ids, kOp, "random_token_ids", 1);
  check_dtype(random_token_ids, kOp, "random_token_ids", at::kLong);
  check_probability(mlm_probability, "mlm_probability");
  check_probability(uniform_mix, "uniform_mix");
  check_probability(mask_replace_prob, "mask_replace_prob");
  check_probability(random_replace_prob, "random_replace_prob");
  TORCH_CHECK_VALUE(mask_replace_prob + random_replace_prob <= 1.0 + 1e-12, kOp,
                    ": mask_replace_prob + random_replace_prob must be at most 1, got ", mask_replace_prob, " + ",
                    random_replace_prob);
  TORCH_CHECK_VALUE(weighting == core::kWeightingSimilarity || weighting == core::kWeightingRank, kOp,
                    ": weighting must be 0 (similarity) or 1 (rank), got ", weighting);
  TORCH_CHECK_VALUE(std::isfinite(unknown_score), kOp, ": unknown_score must be finite, got ", unknown_score);
  TORCH_CHECK_VALUE(random_replace_prob == 0.0 || random_token_ids.numel() > 0, kOp,
                    ": random_token_ids is empty but random_replace_prob = ", random_replace_prob,
                    " > 0; pass the ids random replacements are drawn from");

  const int64_t B = input_ids.size(0);
  const int64_t L = input_ids.size(1);
  const int64_t V = starts_word.size(0);
  const at::Tensor ids = input_ids.contiguous();
  const at::Tensor never = never_word.contiguous();
  const at::Tensor starts = starts_word.contiguous();
  const at::Tensor keys = table_keys.contiguous();
  const at::Tensor values = table_values.contiguous();
  const at::Tensor random_ids = random_token_ids.contiguous();
  const auto long_options = input_ids.options().dtype(at::kLong);
  at::Tensor masked_ids = at::empty({B, L}, long_options);
  at::Tensor labels = at::empty({B, L}, long_options);
  at::Tensor masked_words = at::empty({B}, long_options);

  const core::MaskParams params{mlm_probability,  weighting,         uniform_mix,        unknown_score,
                                 mask_token_id,    mask_replace_prob, random_replace_prob};
  const core::TableView table{keys.data_ptr<int64_t>(), values.data_ptr<float>(), keys.size(0)};

  const int64_t* id_data = ids.data_ptr<int64_t>();
  const bool* never_data = never.data_ptr<bool>();
  const bool* starts_data = starts.data_ptr<bool>();
  const int64_t* random_data = random_ids.data_ptr<int64_t>();
  const int64_t n_random = random_ids.numel();
  int64_t* out_ids = masked_ids.data_ptr<int64_t>();
  int64_t* out_labels = labels.data_ptr<int64_t>();
  int64_t* out_words = masked_words.data_ptr<int64_t>();
  std::vector<std::vector<core::Miss>> row_misses(static_cast<size_t>(B));
  std::vector<int64_t> bad_position(static_cast<size_t>(B), -1);

  at::parallel_for(0, B, grain_for(L, 2048), [&](int64_t begin, int64_t end) {
    core::RowScratch scratch(L);
    for (int64_t b = begin; b < end; ++b) {
      const core::Stream stream(static_cast<uint64_t>(seed), static_cast<uint64_t>(b));
      const core::RowResult result =
          core::mask_row(id_data + b * L, never_data + b * L, L, starts_data, V, table, random_data, n_random, params,
                         stream, scratch, out_ids + b * L, out_labels + b * L, &row_misses[b]);
      out_words[b] = result.masked_words;
      bad_position[b] = result.bad_position;
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    if (bad_position[b] >= 0) {
      const int64_t l = bad_position[b];
      TORCH_CHECK_VALUE(false, kOp, ": input_ids[", b, ", ", l, "] = ", id_data[b * L + l],
                        " is outside the vocabulary of starts_word, [0, ", V, ")");
    }
  }
  return {masked_ids, labels, masked_words, collect_misses(row_misses, long_options)};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("difference_mask", &difference_mask_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

// CPU kernel of difference_mask: the fused per-batch masking step, parallel over rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../core/masking.h"
#include "mask_batch.h"
#include "denormals.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "difference_mask";

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
  // unknown_score is rounded to float32 on this thread: kept when denormal, as the rows read it.
  const KeepDenormals keep_denormals;
  const MaskBatch batch =
      prepare_mask_batch(kOp, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids,
                         mlm_probability, weighting, uniform_mix, unknown_score, mask_token_id, mask_replace_prob,
                         random_replace_prob);
  const int64_t B = batch.rows;
  const int64_t L = batch.length;
  const int64_t V = batch.vocabulary;
  std::vector<std::vector<core::Miss>> row_misses(static_cast<size_t>(B));
  std::vector<int64_t> bad_position(static_cast<size_t>(B), -1);
  std::vector<int64_t> bad_score_position(static_cast<size_t>(B), -1);

  at::parallel_for(0, B, grain_for(L, 2048), [&](int64_t begin, int64_t end) {
    KeepDenormals keep_denormals;
    core::RowScratch scratch(L);
    for (int64_t b = begin; b < end; ++b) {
      const core::Stream stream(static_cast<uint64_t>(seed), static_cast<uint64_t>(b));
      const core::RowResult result =
          core::mask_row(batch.id_data + b * L, batch.never_data + b * L, L, batch.starts_data, V, batch.table,
                         batch.random_data, batch.n_random, batch.params, stream, scratch, batch.out_ids + b * L,
                         batch.out_labels + b * L, &row_misses[b]);
      batch.out_words[b] = result.masked_words;
      bad_position[b] = result.bad_position;
      bad_score_position[b] = result.bad_score_position;
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    if (bad_position[b] >= 0) {
      const int64_t l = bad_position[b];
      TORCH_CHECK_VALUE(false, kOp, ": input_ids[", b, ", ", l, "] = ", batch.id_data[b * L + l],
                        " is outside the vocabulary of starts_word, [0, ", V, ")");
    }
    TORCH_CHECK_VALUE(bad_score_position[b] < 0, kOp, ": ", non_finite_score_message(b, bad_score_position[b]));
  }
  return {batch.masked_ids, batch.labels, batch.masked_words,
          collect_misses(row_misses, input_ids.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("difference_mask", &difference_mask_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

// CPU kernel of difference_mask_device: the rows of difference_mask (core::mask_row, same seed,
// same result) with outputs of fixed size, for a compiled training step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../core/masking.h"
#include "mask_batch.h"
#include "denormals.h"

namespace diffmask_fast {
namespace cpu {
namespace {

// Words per row and words absent from the table per row instead of the miss list, and ids
// outside the vocabulary treated as never_word instead of raising.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> difference_mask_device_cpu(
    const at::Tensor& input_ids, const at::Tensor& never_word, const at::Tensor& starts_word,
    const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& random_token_ids,
    double mlm_probability, int64_t weighting, double uniform_mix, double unknown_score, int64_t mask_token_id,
    double mask_replace_prob, double random_replace_prob, const at::Tensor& seed) {
  constexpr const char* kDeviceOp = "difference_mask_device";
  const KeepDenormals keep_denormals;  // on this thread too: see difference_mask_cpu
  check_cpu(seed, kDeviceOp, "seed");
  check_seed_tensor(kDeviceOp, seed);
  const MaskBatch batch =
      prepare_mask_batch(kDeviceOp, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids,
                         mlm_probability, weighting, uniform_mix, unknown_score, mask_token_id, mask_replace_prob,
                         random_replace_prob);
  const int64_t B = batch.rows;
  const int64_t L = batch.length;
  const int64_t V = batch.vocabulary;
  const auto long_options = input_ids.options().dtype(at::kLong);
  at::Tensor n_words = at::empty({B}, long_options);
  at::Tensor missed_words = at::empty({B}, long_options);
  int64_t* out_n_words = n_words.data_ptr<int64_t>();
  int64_t* out_missed = missed_words.data_ptr<int64_t>();
  const uint64_t seed_value = static_cast<uint64_t>(seed.reshape({-1})[0].item<int64_t>());

  at::parallel_for(0, B, grain_for(L, 2048), [&](int64_t begin, int64_t end) {
    KeepDenormals keep_denormals;
    core::RowScratch scratch(L);
    std::unique_ptr<bool[]> excluded(new bool[static_cast<size_t>(std::max<int64_t>(L, 1))]);
    std::vector<core::Miss> misses;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* row_ids = batch.id_data + b * L;
      for (int64_t l = 0; l < L; ++l) {
        excluded[l] = batch.never_data[b * L + l] || row_ids[l] < 0 || row_ids[l] >= V;
      }
      misses.clear();
      const core::Stream stream(seed_value, static_cast<uint64_t>(b));
      const core::RowResult result =
          core::mask_row(row_ids, excluded.get(), L, batch.starts_data, V, batch.table, batch.random_data,
                         batch.n_random, batch.params, stream, scratch, batch.out_ids + b * L,
                         batch.out_labels + b * L, &misses);
      batch.out_words[b] = result.masked_words;
      out_missed[b] = static_cast<int64_t>(misses.size());
      int64_t n = 0;
      for (int64_t l = L - 1; l >= 0; --l) {
        if (scratch.word_index[l] >= 0) {
          n = scratch.word_index[l] + 1;
          break;
        }
      }
      out_n_words[b] = n;
    }
  });
  return {batch.masked_ids, batch.labels, batch.masked_words, n_words, missed_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("difference_mask_device", &difference_mask_device_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

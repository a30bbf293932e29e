// The checked, contiguous inputs and the fresh outputs of a CPU masking kernel
// (difference_mask, difference_mask_device): what both do before their rows differ.
#pragma once

#include <ATen/ATen.h>

#include "../core/masking.h"
#include "mask_checks.h"

namespace diffmask_fast {
namespace cpu {

struct MaskBatch {
  int64_t rows, length, vocabulary;
  at::Tensor ids, never, starts, keys, values, random_ids;  // contiguous inputs, kept alive here
  at::Tensor masked_ids, labels, masked_words;              // outputs: [B, L], [B, L], [B]
  core::MaskParams params;
  core::TableView table;
  // the tensors' data
  const int64_t* id_data;
  const bool* never_data;
  const bool* starts_data;
  const int64_t* random_data;
  int64_t n_random;
  int64_t* out_ids;
  int64_t* out_labels;
  int64_t* out_words;
};

inline MaskBatch prepare_mask_batch(const char* op, const at::Tensor& input_ids, const at::Tensor& never_word,
                                    const at::Tensor& starts_word, const at::Tensor& table_keys,
                                    const at::Tensor& table_values, const at::Tensor& random_token_ids,
                                    double mlm_probability, int64_t weighting, double uniform_mix,
                                    double unknown_score, int64_t mask_token_id, double mask_replace_prob,
                                    double random_replace_prob) {
  for (const auto& [tensor, name] : {std::pair<const at::Tensor*, const char*>{&input_ids, "input_ids"},
                                     {&never_word, "never_word"},
                                     {&starts_word, "starts_word"},
                                     {&table_keys, "table_keys"},
                                     {&table_values, "table_values"},
                                     {&random_token_ids, "random_token_ids"}}) {
    check_cpu(*tensor, op, name);
  }
  check_mask_inputs(op, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids,
                    mlm_probability, weighting, uniform_mix, unknown_score, mask_replace_prob, random_replace_prob);
  MaskBatch batch;
  batch.rows = input_ids.size(0);
  batch.length = input_ids.size(1);
  batch.vocabulary = starts_word.size(0);
  batch.ids = input_ids.contiguous();
  batch.never = never_word.contiguous();
  batch.starts = starts_word.contiguous();
  batch.keys = table_keys.contiguous();
  batch.values = table_values.contiguous();
  batch.random_ids = random_token_ids.contiguous();
  const auto long_options = input_ids.options().dtype(at::kLong);
  batch.masked_ids = at::empty({batch.rows, batch.length}, long_options);
  batch.labels = at::empty({batch.rows, batch.length}, long_options);
  batch.masked_words = at::empty({batch.rows}, long_options);
  batch.params = core::MaskParams{mlm_probability, weighting,         uniform_mix,        unknown_score,
                                  mask_token_id,   mask_replace_prob, random_replace_prob};
  batch.table = core::TableView{batch.keys.data_ptr<int64_t>(), batch.values.data_ptr<float>(), batch.keys.size(0)};
  batch.id_data = batch.ids.data_ptr<int64_t>();
  batch.never_data = batch.never.data_ptr<bool>();
  batch.starts_data = batch.starts.data_ptr<bool>();
  batch.random_data = batch.random_ids.data_ptr<int64_t>();
  batch.n_random = batch.random_ids.numel();
  batch.out_ids = batch.masked_ids.data_ptr<int64_t>();
  batch.out_labels = batch.labels.data_ptr<int64_t>();
  batch.out_words = batch.masked_words.data_ptr<int64_t>();
  return batch;
}

}  // namespace cpu
}  // namespace diffmask_fast

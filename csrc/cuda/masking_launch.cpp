// CUDA adapters of difference_mask_device, difference_mask and score_table_lookup.
//
// difference_mask_device is the op of the training step: outputs of fixed size, the seed read
// on the device, nothing copied to the host, so it neither synchronizes nor breaks CUDA graph
// capture. difference_mask keeps the CPU op's contract (an error for ids outside the vocabulary,
// the list of distinct missing words, whose length depends on the data) and so synchronizes once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "kernels.h"
#include "launch_checks.h"

namespace diffmask_fast {
namespace cuda {
namespace {

struct MaskInputs {
  at::Tensor ids, never, starts, keys, values, random_ids;
};

MaskInputs prepare(const char* op, const at::Tensor& input_ids, const at::Tensor& never_word,
                   const at::Tensor& starts_word, const at::Tensor& table_keys, const at::Tensor& table_values,
                   const at::Tensor& random_token_ids) {
  check_cuda_tensor(input_ids, op, "input_ids");
  check_same_device(never_word, input_ids, op, "never_word");
  check_same_device(starts_word, input_ids, op, "starts_word");
  check_same_device(table_keys, input_ids, op, "table_keys");
  check_same_device(table_values, input_ids, op, "table_values");
  check_same_device(random_token_ids, input_ids, op, "random_token_ids");
  TORCH_CHECK_VALUE(input_ids.size(1) < std::numeric_limits<int32_t>::max(), op,
                    ": rows must be shorter than 2^31 - 1 tokens, got ", input_ids.size(1));
  return {input_ids.contiguous(), never_word.contiguous(), starts_word.contiguous(), table_keys.contiguous(),
          table_values.contiguous(), random_token_ids.contiguous()};
}

// The outputs both masking ops share, allocated on the device of input_ids and wired into `p`.
struct MaskOutputs {
  at::Tensor masked_ids, labels, masked_words;
};

MaskOutputs allocate_outputs(const MaskInputs& in, MaskProblem& p) {
  const auto long_options = in.ids.options().dtype(at::kLong);
  const int64_t B = in.ids.size(0);
  const int64_t L = in.ids.size(1);
  MaskOutputs out{at::empty({B, L}, long_options), at::empty({B, L}, long_options), at::empty({B}, long_options)};
  p.masked_ids = out.masked_ids.data_ptr<int64_t>();
  p.labels = out.labels.data_ptr<int64_t>();
  p.masked_words = out.masked_words.data_ptr<int64_t>();
  return out;
}

MaskProblem problem_of(const MaskInputs& in, double mlm_probability, int64_t weighting, double uniform_mix,
                       double unknown_score, int64_t mask_token_id, double mask_replace_prob,
                       double random_replace_prob) {
  MaskProblem p;
  p.input_ids = in.ids.data_ptr<int64_t>();
  p.never_word = in.never.data_ptr<bool>();
  p.rows = in.ids.size(0);
  p.length = in.ids.size(1);
  p.starts_word = in.starts.data_ptr<bool>();
  p.vocabulary = in.starts.size(0);
  p.table_keys = in.keys.data_ptr<int64_t>();
  p.table_values = in.values.data_ptr<float>();
  p.capacity = in.keys.size(0);
  p.random_token_ids = in.random_ids.data_ptr<int64_t>();
  p.n_random = in.random_ids.size(0);
  p.mlm_probability = mlm_probability;
  p.weighting = weighting;
  p.uniform_mix = uniform_mix;
  p.unknown_score = unknown_score;
  p.mask_token_id = mask_token_id;
  p.mask_replace_prob = mask_replace_prob;
  p.random_replace_prob = random_replace_prob;
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> difference_mask_device_cuda(
    const at::Tensor& input_ids, const at::Tensor& never_word, const at::Tensor& starts_word,
    const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& random_token_ids,
    double mlm_probability, int64_t weighting, double uniform_mix, double unknown_score, int64_t mask_token_id,
    double mask_replace_prob, double random_replace_prob, const at::Tensor& seed) {
  constexpr const char* kOp = "difference_mask_device";
  check_mask_inputs(kOp, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids,
                    mlm_probability, weighting, uniform_mix, unknown_score, mask_replace_prob, random_replace_prob);
  check_seed_tensor(kOp, seed);
  TORCH_CHECK_VALUE(seed.device().is_cpu() || seed.device() == input_ids.device(), kOp,
                    ": seed must be on the device of input_ids (or on the CPU), got ", seed.device());
  const MaskInputs in =
      prepare(kOp, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids);
  const c10::cuda::CUDAGuard guard(input_ids.device());  // after prepare has checked it is a CUDA device
  const int64_t B = in.ids.size(0);
  const auto long_options = input_ids.options().dtype(at::kLong);
  MaskProblem p = problem_of(in, mlm_probability, weighting, uniform_mix, unknown_score, mask_token_id,
                             mask_replace_prob, random_replace_prob);
  const MaskOutputs out = allocate_outputs(in, p);
  at::Tensor n_words = at::empty({B}, long_options);
  at::Tensor missed_words = at::empty({B}, long_options);
  at::Tensor seed_on_device;
  if (seed.device().is_cpu()) {
    p.seed_value = seed.reshape({-1})[0].item<int64_t>();  // a host value: no copy, no synchronization
  } else {
    seed_on_device = seed.reshape({-1}).contiguous();
    p.seed_device = seed_on_device.data_ptr<int64_t>();
  }
  p.n_words = n_words.data_ptr<int64_t>();
  p.missed_words = missed_words.data_ptr<int64_t>();
  const at::Tensor scratch = workspace(mask_workspace_bytes(p), input_ids);
  check_launch(difference_mask(p, scratch.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()), kOp);
  return {out.masked_ids, out.labels, out.masked_words, n_words, missed_words};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> difference_mask_cuda(
    const at::Tensor& input_ids, const at::Tensor& never_word, const at::Tensor& starts_word,
    const at::Tensor& table_keys, const at::Tensor& table_values, const at::Tensor& random_token_ids,
    double mlm_probability, int64_t weighting, double uniform_mix, double unknown_score, int64_t mask_token_id,
    double mask_replace_prob, double random_replace_prob, int64_t seed) {
  constexpr const char* kOp = "difference_mask";
  check_mask_inputs(kOp, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids,
                    mlm_probability, weighting, uniform_mix, unknown_score, mask_replace_prob, random_replace_prob);
  const MaskInputs in =
      prepare(kOp, input_ids, never_word, starts_word, table_keys, table_values, random_token_ids);
  const c10::cuda::CUDAGuard guard(input_ids.device());  // after prepare has checked it is a CUDA device
  const int64_t B = in.ids.size(0);
  const int64_t L = in.ids.size(1);
  const auto long_options = input_ids.options().dtype(at::kLong);
  MaskProblem p = problem_of(in, mlm_probability, weighting, uniform_mix, unknown_score, mask_token_id,
                             mask_replace_prob, random_replace_prob);
  const MaskOutputs out = allocate_outputs(in, p);
  if (B == 0 || L == 0) {
    out.masked_words.zero_();
    return {out.masked_ids, out.labels, out.masked_words, at::empty({0, 4}, long_options)};
  }
  at::Tensor miss_hash = at::empty({B, L}, long_options);
  at::Tensor miss_end = at::empty({B, L}, long_options);
  at::Tensor bad = at::empty({2, B}, long_options);  // out-of-range ids, then non-finite scores
  p.seed_value = seed;
  p.miss_hash = miss_hash.data_ptr<int64_t>();
  p.miss_end = miss_end.data_ptr<int64_t>();
  p.bad_position = bad[0].data_ptr<int64_t>();
  p.bad_score = bad[1].data_ptr<int64_t>();
  const at::Tensor scratch = workspace(mask_workspace_bytes(p), input_ids);
  check_launch(difference_mask(p, scratch.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()), kOp);

  // Ids outside the vocabulary and non-finite scores: the CPU op's errors, for the first row
  // that has one.
  const at::Tensor bad_host = bad.cpu();  // synchronizes
  const int64_t* bad_data = bad_host.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    if (bad_data[b] >= 0) {
      const int64_t l = bad_data[b];
      TORCH_CHECK_VALUE(false, kOp, ": input_ids[", b, ", ", l, "] = ", in.ids[b][l].item<int64_t>(),
                        " is outside the vocabulary of starts_word, [0, ", in.starts.size(0), ")");
    }
    TORCH_CHECK_VALUE(bad_data[B + b] < 0, kOp, ": ", cpu::non_finite_score_message(b, bad_data[B + b]));
  }

  // Misses: one row (hash, row, begin, end) per distinct missing word, at its first occurrence
  // in row-major order, as the CPU op lists them.
  const at::Tensor flat = miss_hash.reshape({-1});
  const at::Tensor positions = at::nonzero(flat).reshape({-1});
  if (positions.numel() == 0) {
    return {out.masked_ids, out.labels, out.masked_words, at::empty({0, 4}, long_options)};
  }
  const at::Tensor hashes = flat.index_select(0, positions);
  const auto unique = at::_unique(hashes, /*sorted=*/true, /*return_inverse=*/true);
  const at::Tensor& inverse = std::get<1>(unique);
  at::Tensor first = at::full({std::get<0>(unique).size(0)}, std::numeric_limits<int64_t>::max(), long_options);
  first.scatter_reduce_(0, inverse, positions, "amin", /*include_self=*/true);
  first = std::get<0>(first.sort());
  const at::Tensor rows = at::div(first, L, "floor");
  const at::Tensor begins = first - rows * L;
  const at::Tensor ends = miss_end.reshape({-1}).index_select(0, first);
  const at::Tensor misses = at::stack({flat.index_select(0, first), rows, begins, ends}, 1);
  return {out.masked_ids, out.labels, out.masked_words, misses};
}

std::tuple<at::Tensor, at::Tensor> score_table_lookup_cuda(const at::Tensor& keys, const at::Tensor& values,
                                                           const at::Tensor& queries, double default_value) {
  constexpr const char* kOp = "score_table_lookup";
  check_cuda_tensor(queries, kOp, "queries");
  check_same_device(keys, queries, kOp, "keys");
  check_same_device(values, queries, kOp, "values");
  check_score_table_layout(keys, values, kOp, "keys", "values");
  check_dtype(queries, kOp, "queries", at::kLong);
  const int64_t capacity = keys.size(0);
  const c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor k = keys.contiguous();
  const at::Tensor v = values.contiguous();
  const at::Tensor q = queries.contiguous();
  at::Tensor found_values = at::empty(queries.sizes(), values.options());
  at::Tensor found = at::empty(queries.sizes(), queries.options().dtype(at::kBool));
  check_launch(score_table_lookup(k.data_ptr<int64_t>(), v.data_ptr<float>(), capacity, q.data_ptr<int64_t>(),
                                  q.numel(), default_value, found_values.data_ptr<float>(),
                                  found.data_ptr<bool>(), c10::cuda::getCurrentCUDAStream().stream()),
               kOp);
  return {found_values, found};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CUDA, m) {
  m.impl("difference_mask_device", &difference_mask_device_cuda);
  m.impl("difference_mask", &difference_mask_cuda);
  m.impl("score_table_lookup", &score_table_lookup_cuda);
}

}  // namespace cuda
}  // namespace diffmask_fast

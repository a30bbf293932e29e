// CPU kernel of group_words.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../core/words.h"
#include "mask_checks.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "group_words";

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_words_cpu(const at::Tensor& input_ids,
                                                                const at::Tensor& never_word,
                                                                const at::Tensor& starts_word) {
  check_cpu(input_ids, kOp, "input_ids");
  check_cpu(never_word, kOp, "never_word");
  check_cpu(starts_word, kOp, "starts_word");
  check_word_inputs(kOp, input_ids, never_word, starts_word);
  const int64_t B = input_ids.size(0);
  const int64_t L = input_ids.size(1);
  const int64_t V = starts_word.size(0);

  const at::Tensor ids = input_ids.contiguous();
  const at::Tensor never = never_word.contiguous();
  const at::Tensor starts = starts_word.contiguous();
  const auto long_options = input_ids.options().dtype(at::kLong);
  at::Tensor word_index = at::empty({B, L}, long_options);
  at::Tensor n_words = at::empty({B}, long_options);
  // Hashes land in a [B, L] buffer first; the output is [B, max words].
  std::vector<int64_t> hashes(static_cast<size_t>(B * L));
  std::vector<int64_t> bad_position(static_cast<size_t>(B), -1);

  const int64_t* id_data = ids.data_ptr<int64_t>();
  const bool* never_data = never.data_ptr<bool>();
  const bool* starts_data = starts.data_ptr<bool>();
  int64_t* index_data = word_index.data_ptr<int64_t>();
  int64_t* count_data = n_words.data_ptr<int64_t>();
  at::parallel_for(0, B, grain_for(L), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> word_begin(static_cast<size_t>(L)), word_end(static_cast<size_t>(L));
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = core::group_row(id_data + b * L, never_data + b * L, L, starts_data, V, index_data + b * L,
                                        word_begin.data(), word_end.data(), hashes.data() + b * L);
      if (n < 0) {
        bad_position[b] = -n - 1;
        count_data[b] = 0;
      } else {
        count_data[b] = n;
      }
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    if (bad_position[b] >= 0) {
      const int64_t l = bad_position[b];
      TORCH_CHECK_VALUE(false, kOp, ": input_ids[", b, ", ", l, "] = ", id_data[b * L + l],
                        " is outside the vocabulary of starts_word, [0, ", V, ")");
    }
  }
  int64_t W = 0;
  for (int64_t b = 0; b < B; ++b) {
    W = std::max(W, count_data[b]);
  }
  at::Tensor word_hash = at::zeros({B, W}, long_options);
  int64_t* hash_data = word_hash.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    std::copy(hashes.data() + b * L, hashes.data() + b * L + count_data[b], hash_data + b * W);
  }
  return {word_index, word_hash, n_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("group_words", &group_words_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

// Difference-Masking of one tokenized row: words -> scores -> weights -> budget -> successive
// sampling of words -> whole-word mask -> 80/10/10 replacement (README, "Choices").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "rng.h"
#include "sampling.h"
#include "score_table.h"
#include "words.h"

namespace diffmask_fast {
namespace core {

constexpr int64_t kIgnoreLabel = -100;

enum Weighting : int64_t { kWeightingSimilarity = 0, kWeightingRank = 1 };

// Words to mask among n: p*n rounded up with probability frac(p*n) (u uniform in [0, 1)),
// so the expectation is exactly p*n; capped at n.
DIFFMASK_FAST_HD inline int64_t masking_budget(int64_t n, double p, double u) {
  const double expected = mul_rn(p, static_cast<double>(n));
  const double whole = floor(expected);
  int64_t budget = static_cast<int64_t>(whole) + (u < expected - whole ? 1 : 0);
#if defined(__CUDA_ARCH__)
  return budget < n ? budget : n;
#else
  return std::min(budget, n);
#endif
}

// Order-preserving 32-bit key of a float (-0 and +0 share a key, as they compare equal).
inline uint32_t ordered_float_bits(float f) {
  if (f == 0.0f) {
    f = 0.0f;
  }
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits ^ ((bits >> 31) != 0 ? 0xFFFFFFFFu : 0x80000000u);
}

// Ranks of scores[0, n) (lowest = 1); tied scores share their average rank.
//
// Scores are float32 table values in practice, and then (key << 32 | position) words are sorted
// by a 4-pass LSD radix sort on the key, ~5x faster than a comparison sort at n ~ 400. Scores
// that are not float32 values (an unknown_score such as 0.1) fall back to std::sort. `items`,
// `keys` and `buffer` are scratch for n entries each.
inline void rank_weights(const double* scores, int64_t n, KeyIndex* items, uint64_t* keys, uint64_t* buffer,
                         double* ranks) {
  bool float32_exact = n < (int64_t(1) << 32);
  for (int64_t i = 0; i < n && float32_exact; ++i) {
    float32_exact = static_cast<double>(static_cast<float>(scores[i])) == scores[i];
  }
  if (float32_exact) {
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = (static_cast<uint64_t>(ordered_float_bits(static_cast<float>(scores[i]))) << 32) |
                static_cast<uint64_t>(i);
    }
    uint64_t* from = keys;
    uint64_t* to = buffer;
    for (int shift = 32; shift < 64; shift += 8) {  // stable passes, least significant digit first
      int64_t offset[257] = {0};
      for (int64_t i = 0; i < n; ++i) {
        ++offset[((from[i] >> shift) & 0xFF) + 1];
      }
      for (int d = 0; d < 256; ++d) {
        offset[d + 1] += offset[d];
      }
      for (int64_t i = 0; i < n; ++i) {
        to[offset[(from[i] >> shift) & 0xFF]++] = from[i];
      }
      std::swap(from, to);
    }
    int64_t i = 0;
    while (i < n) {
      int64_t j = i;
      while (j + 1 < n && (from[j + 1] >> 32) == (from[i] >> 32)) {
        ++j;
      }
      const double rank = static_cast<double>(i + j) / 2.0 + 1.0;
      for (int64_t t = i; t <= j; ++t) {
        ranks[from[t] & 0xFFFFFFFFu] = rank;
      }
      i = j + 1;
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    items[i] = {scores[i], i};
  }
  std::sort(items, items + n, key_index_less);
  int64_t i = 0;
  while (i < n) {
    int64_t j = i;
    while (j + 1 < n && items[j + 1].key == items[i].key) {
      ++j;
    }
    const double rank = static_cast<double>(i + j) / 2.0 + 1.0;
    for (int64_t t = i; t <= j; ++t) {
      ranks[items[t].index] = rank;
    }
    i = j + 1;
  }
}

// (1 - lambda) * w / sum(w) + lambda / n; uniform when sum(w) is 0. No-op for lambda <= 0.
inline void mix_with_uniform(double* weights, int64_t n, double lambda) {
  if (!(lambda > 0) || n == 0) {
    return;
  }
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    total += weights[i];
  }
  const double uniform = lambda / static_cast<double>(n);
  if (total > 0) {
    for (int64_t i = 0; i < n; ++i) {
      weights[i] = (1 - lambda) * weights[i] / total + uniform;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      weights[i] = 1.0 / static_cast<double>(n);
    }
  }
}

enum Replacement : int { kKeep = 0, kMaskToken = 1, kRandomToken = 2 };

// BERT's rule for one masked token from a uniform u in [0, 1).
DIFFMASK_FAST_HD inline Replacement replacement_for(double u, double mask_replace_prob, double random_replace_prob) {
  if (u < mask_replace_prob) {
    return kMaskToken;
  }
  if (u < mask_replace_prob + random_replace_prob) {
    return kRandomToken;
  }
  return kKeep;
}

struct MaskParams {
  double mlm_probability = 0.25;
  int64_t weighting = kWeightingSimilarity;
  double uniform_mix = 0.0;
  double unknown_score = 0.0;
  int64_t mask_token_id = 0;
  double mask_replace_prob = 0.8;
  double random_replace_prob = 0.1;
};

struct TableView {
  const int64_t* keys;
  const float* values;
  int64_t capacity;
};

// A word whose hash is not in the table: its hash and half-open token range in the row.
struct Miss {
  int64_t hash;
  int64_t begin;
  int64_t end;
};

// Per-thread buffers, sized once for rows of up to L tokens so rows allocate nothing.
struct RowScratch {
  std::vector<int64_t> word_index, word_begin, word_end, word_hash;
  std::vector<double> scores, weights;
  std::vector<KeyIndex> items;
  std::vector<uint64_t> sort_keys, sort_buffer;
  std::vector<unsigned char> chosen;

  explicit RowScratch(int64_t L)
      : word_index(L), word_begin(L), word_end(L), word_hash(L), scores(L), weights(L), items(L),
        sort_keys(L), sort_buffer(L), chosen(L) {}
};

struct RowResult {
  int64_t masked_words;             // words chosen; -1 on error
  int64_t bad_position;             // first token with an out-of-range id, -1 if none
  int64_t bad_score_position = -1;  // first token of a word whose table score is not finite
};

// Masks one row. Writes out_ids and out_labels (L entries each) and appends the row's words
// that are missing from the table to `misses` (every occurrence, in token order). All random
// draws come from `stream`, one sub-stream per purpose, numbered by word or token position.
inline RowResult mask_row(const int64_t* ids, const bool* never_word, int64_t L, const bool* starts_word,
                          int64_t V, const TableView& table, const int64_t* random_ids,
                          int64_t n_random_ids, const MaskParams& params, const Stream& stream,
                          RowScratch& s, int64_t* out_ids, int64_t* out_labels, std::vector<Miss>* misses) {
  const int64_t n = group_row(ids, never_word, L, starts_word, V, s.word_index.data(), s.word_begin.data(),
                              s.word_end.data(), s.word_hash.data());
  if (n < 0) {
    return {-1, -n - 1};
  }

  // Scores: look each word up, prefetching a few words ahead (tables are often larger than
  // the caches and each look-up is otherwise a dependent miss). A score that is not finite is
  // reported (difference_mask refuses it) and taken as unknown_score (difference_mask_device
  // leaves table checks to its callers, and the CUDA kernel does the same).
  int64_t bad_score_position = -1;
  constexpr int64_t kPrefetchDistance = 8;
  const int64_t* hashes = s.word_hash.data();
#if defined(__GNUC__) || defined(__clang__)
  if (table.capacity > 0) {
    for (int64_t w = 0; w < std::min(n, kPrefetchDistance); ++w) {
      const uint64_t slot = table_home_slot(hashes[w], table.capacity);
      __builtin_prefetch(table.keys + slot);
      __builtin_prefetch(table.values + slot);
    }
  }
#endif
  for (int64_t w = 0; w < n; ++w) {
#if defined(__GNUC__) || defined(__clang__)
    if (table.capacity > 0 && w + kPrefetchDistance < n) {
      const uint64_t slot = table_home_slot(hashes[w + kPrefetchDistance], table.capacity);
      __builtin_prefetch(table.keys + slot);
      __builtin_prefetch(table.values + slot);
    }
#endif
    const int64_t slot = table_find(table.keys, table.capacity, hashes[w]);
    if (slot >= 0) {
      s.scores[w] = static_cast<double>(table.values[slot]);
      if (!std::isfinite(s.scores[w])) {
        s.scores[w] = params.unknown_score;  // NaN would break the rank weighting's sort
        if (bad_score_position < 0) {
          bad_score_position = s.word_begin[w];
        }
      }
    } else {
      s.scores[w] = params.unknown_score;
      if (misses != nullptr) {
        misses->push_back({hashes[w], s.word_begin[w], s.word_end[w]});
      }
    }
  }

  // Weights.
  double* weights = s.weights.data();
  if (params.weighting == kWeightingRank) {
    rank_weights(s.scores.data(), n, s.items.data(), s.sort_keys.data(), s.sort_buffer.data(), weights);
  } else {
    for (int64_t w = 0; w < n; ++w) {
      weights[w] = std::max(s.scores[w], 0.0);
    }
  }
  mix_with_uniform(weights, n, params.uniform_mix);

  // Budget and choice of words.
  const int64_t budget = masking_budget(n, params.mlm_probability, to_unit(stream.sub(Purpose::kBudget).at(0)));
  std::fill(s.chosen.begin(), s.chosen.begin() + n, static_cast<unsigned char>(0));
  KeyIndex* items = s.items.data();
  const int64_t drawn = successive_sample(weights, n, budget, stream.sub(Purpose::kSampling), items);
  for (int64_t j = 0; j < drawn; ++j) {
    s.chosen[items[j].index] = 1;
  }
  if (drawn < budget) {
    // Every positive-weight word is taken; the rest uniformly among the zero-weight words.
    int64_t zero = 0;
    for (int64_t w = 0; w < n; ++w) {
      if (!(weights[w] > 0)) {
        items[zero++].index = w;
      }
    }
    const int64_t extra = std::min(budget - drawn, zero);
    uniform_subset(items, zero, extra, stream.sub(Purpose::kFill));
    for (int64_t j = 0; j < extra; ++j) {
      s.chosen[items[j].index] = 1;
    }
  }

  // Whole-word mask and replacement.
  const Stream replace = stream.sub(Purpose::kReplace);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t id = ids[l];
    const int64_t w = s.word_index[l];
    if (w < 0 || !s.chosen[w]) {
      out_ids[l] = id;
      out_labels[l] = kIgnoreLabel;
      continue;
    }
    out_labels[l] = id;
    const uint64_t counter = 2 * static_cast<uint64_t>(l);
    switch (replacement_for(to_unit(replace.at(counter)), params.mask_replace_prob, params.random_replace_prob)) {
      case kMaskToken:
        out_ids[l] = params.mask_token_id;
        break;
      case kRandomToken:
        out_ids[l] = random_ids[to_index(replace.at(counter + 1), n_random_ids)];
        break;
      default:
        out_ids[l] = id;
        break;
    }
  }
  return {budget, -1, bad_score_position};
}

}  // namespace core
}  // namespace diffmask_fast

// Weighted sampling without replacement.
//
// Successive sampling (draw one item with probability proportional to weight, remove it, repeat)
// is implemented with Efraimidis-Spirakis keys: item i gets key E_i / w_i with E_i ~ Exp(1), and
// the k smallest keys are the sample. By the memorylessness of the exponential race the chosen
// set has exactly the successive-sampling distribution, and it takes one pass plus a selection
// (O(n)) instead of k passes. Zero weights get no key and are never drawn.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "rng.h"

namespace diffmask_fast {
namespace core {

struct KeyIndex {
  double key;
  int64_t index;
};

// Strict weak order on (key, index): deterministic even if two keys are equal.
inline bool key_index_less(const KeyIndex& a, const KeyIndex& b) {
  return a.key < b.key || (a.key == b.key && a.index < b.index);
}

// Moves the k smallest items of items[0, n) by (key, index) to items[0, k), in no particular
// order; items[k, n) are left unspecified. Keys must be non-negative (+0, not -0), so their IEEE
// bit patterns order like the keys.
//
// Radix select without data-dependent branches: each pass histograms the next byte of the keys
// that share the prefix found so far, which fixes one more byte of the k-th smallest key; once
// the prefix singles out exactly the k smallest, one pass compacts them to the front. Two or
// three passes at n ~ 400, several times faster than std::nth_element on random keys, whose
// comparisons mispredict. Exact ties at the k-th key (64 equal bits) fall back to nth_element.
inline void select_smallest(KeyIndex* items, int64_t n, int64_t k) {
  if (k <= 0 || k >= n) {
    return;
  }
  auto bits_of = [](double key) {
    uint64_t bits;
    std::memcpy(&bits, &key, sizeof bits);
    return bits;
  };
  uint64_t prefix = 0;  // the top (64 - level) bits of the k-th smallest key
  int level = 64;
  int64_t need = k;     // how many keys with that prefix are among the k smallest
  bool exact = false;   // whether exactly `need` keys have the prefix
  while (level > 0) {
    const int shift = level - 8;
    int64_t count[256] = {0};
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t bits = bits_of(items[i].key);
      const bool match = level == 64 || (bits >> level) == prefix;
      count[(bits >> shift) & 0xFF] += match;
    }
    uint64_t digit = 0;
    while (count[digit] < need) {
      need -= count[digit];
      ++digit;
    }
    prefix = (level == 64 ? 0 : prefix << 8) | digit;
    level = shift;
    if (count[digit] == need) {
      exact = true;
      break;
    }
  }
  if (!exact) {
    std::nth_element(items, items + k, items + n, key_index_less);
    return;
  }
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {  // stable in-place compaction: kept <= i
    const uint64_t bits = bits_of(items[i].key);
    items[kept] = items[i];
    kept += (level == 64 ? 0 : bits >> level) <= prefix;
  }
}

enum class WeightProblem { kNone = 0, kNegative, kNaN, kInfinite };

inline const char* weight_problem_name(WeightProblem problem) {
  switch (problem) {
    case WeightProblem::kNegative:
      return "negative";
    case WeightProblem::kNaN:
      return "NaN";
    case WeightProblem::kInfinite:
      return "infinite";
    default:
      return "valid";
  }
}

// The first weight that is negative, NaN or infinite: its position (or -1) and what is wrong.
template <typename T>
inline int64_t find_bad_weight(const T* weights, int64_t n, WeightProblem* problem) {
  for (int64_t i = 0; i < n; ++i) {
    const double w = static_cast<double>(weights[i]);
    if (std::isnan(w)) {
      *problem = WeightProblem::kNaN;
      return i;
    }
    if (std::isinf(w)) {
      *problem = WeightProblem::kInfinite;
      return i;
    }
    if (w < 0) {
      *problem = WeightProblem::kNegative;
      return i;
    }
  }
  *problem = WeightProblem::kNone;
  return -1;
}

// Successive sampling of min(count, #positive weights) positions of weights[0, n).
//
// The weights must be finite and non-negative (see find_bad_weight). `scratch` holds at least n
// items; on return scratch[0, k) hold the chosen positions in their `index` fields, and k is
// returned. The key of position i uses draw i of `stream`, so it does not depend on the other
// weights.
template <typename T>
inline int64_t successive_sample(const T* weights, int64_t n, int64_t count, const Stream& stream,
                                 KeyIndex* scratch) {
  int64_t positive = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<double>(weights[i]) > 0) {
      scratch[positive++].index = i;
    }
  }
  const int64_t k = std::min<int64_t>(std::max<int64_t>(count, 0), positive);
  if (k == 0 || k == positive) {
    return k;  // nothing to choose between
  }
  const LogTable& table = log_table();
  double largest_overflowed = 0;
  int64_t finite = 0;
  for (int64_t j = 0; j < positive; ++j) {
    const int64_t i = scratch[j].index;
    const double weight = static_cast<double>(weights[i]);
    scratch[j].key = to_exponential(stream.at(static_cast<uint64_t>(i)), table) / weight;
    if (std::isinf(scratch[j].key)) {
      largest_overflowed = std::max(largest_overflowed, weight);
    } else {
      ++finite;
    }
  }
  if (finite < k) {
    // Weights so small (subnormal float64) that E / w overflows: such keys would tie at infinity.
    // Every finite key is below every overflowed one, so all finite items are drawn (key 0); the
    // rest are ordered by the keys of their weights scaled by the power of two that brings the
    // largest of them into [1, 2), which is exact and keeps their order. The CUDA kernels
    // (device::successive_sampling_keys) do the same.
    const int shift = -std::ilogb(largest_overflowed);
    for (int64_t j = 0; j < positive; ++j) {
      const int64_t i = scratch[j].index;
      scratch[j].key = std::isinf(scratch[j].key)
                           ? to_exponential(stream.at(static_cast<uint64_t>(i)), table) /
                                 std::ldexp(static_cast<double>(weights[i]), shift)
                           : 0.0;
    }
  }
  select_smallest(scratch, positive, k);
  return k;
}

// A uniformly random k-subset of the m items in items[0, m) (by their `index` fields), moved to
// items[0, k). The key of an item uses the draw numbered by its index.
inline void uniform_subset(KeyIndex* items, int64_t m, int64_t k, const Stream& stream) {
  if (k <= 0 || k >= m) {
    return;
  }
  for (int64_t j = 0; j < m; ++j) {
    items[j].key = to_unit(stream.at(static_cast<uint64_t>(items[j].index)));
  }
  select_smallest(items, m, k);
}

}  // namespace core
}  // namespace diffmask_fast

// Row kernels of the max-cosine search: squared norms, first arg max, duplicate anchors.
//
// The dot products themselves come from a BLAS matrix product on row blocks; these kernels
// make the passes over a block that is still in cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "rng.h"

namespace diffmask_fast {
namespace core {

// A cosine as the op returns it: the quotient of a rounded dot product and a rounded norm can
// pass +-1 by a few ulps (an anchor against itself gives 1.0000013), which no cosine does. NaN
// stays NaN.
DIFFMASK_FAST_HD inline float cosine_in_range(double quotient) {
  const float value = static_cast<float>(quotient);
  return value > 1.0f ? 1.0f : (value < -1.0f ? -1.0f : value);
}

// Sum of squares with eight independent accumulators (vectorizes without -ffast-math and
// loses less precision than one running sum).
template <typename T>
inline T squared_norm(const T* x, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      acc[j] += x[i + j] * x[i + j];
    }
  }
  for (; i < n; ++i) {
    acc[i & 7] += x[i] * x[i];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Sum of squares of n values with stride `step`, accumulated in double: exact enough, and free of
// the float32 overflow (norms above ~4e9) and underflow (below ~1e-19) of squared_norm<float>.
template <typename T>
inline double squared_norm_double(const T* x, int64_t n, int64_t step = 1) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i * step]);
    acc += v * v;
  }
  return acc;
}

// The largest |x[i]| in double; +infinity when the row holds NaN or infinity.
template <typename T>
inline double largest_magnitude(const T* x, int64_t n, int64_t step = 1) {
  double largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::abs(static_cast<double>(x[i * step]));
    if (!(v <= std::numeric_limits<double>::max())) {
      return std::numeric_limits<double>::infinity();  // NaN or infinity
    }
    largest = std::max(largest, v);
  }
  return largest;
}

// The power of two that brings the largest |x[i]| of a finite, non-zero row into [1, 2); 0 for a
// zero row or one holding NaN or infinity (which no scaling helps).
template <typename T>
inline int rescaling_shift(const T* x, int64_t n, int64_t step = 1) {
  const double largest = largest_magnitude(x, n, step);
  return largest > 0 && largest <= std::numeric_limits<double>::max() ? -std::ilogb(largest) : 0;
}

// Sum of squares of x * 2^shift in double.
template <typename T>
inline double squared_norm_double_scaled(const T* x, int64_t n, int shift, int64_t step = 1) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::ldexp(static_cast<double>(x[i * step]), shift);
    acc += v * v;
  }
  return acc;
}

// Whether a float32 sum of squares may have overflowed or underflowed (or the row is zero or
// NaN): such rows are measured again with squared_norm_double.
template <typename T>
inline bool squared_norm_out_of_range(T norm2) {
  return !(norm2 >= std::numeric_limits<T>::min() && norm2 <= std::numeric_limits<T>::max());
}

// Index of the first maximum of s[0, n) (n >= 1). NaN entries never win; if every entry is NaN
// the result is 0.
template <typename T>
inline int64_t first_argmax(const T* s, int64_t n) {
  const T lowest = -std::numeric_limits<T>::infinity();
  T lane[8] = {lowest, lowest, lowest, lowest, lowest, lowest, lowest, lowest};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      lane[j] = s[i + j] > lane[j] ? s[i + j] : lane[j];
    }
  }
  for (; i < n; ++i) {
    lane[i & 7] = s[i] > lane[i & 7] ? s[i] : lane[i & 7];
  }
  T best = lane[0];
  for (int j = 1; j < 8; ++j) {
    best = lane[j] > best ? lane[j] : best;
  }
  for (i = 0; i < n; ++i) {
    if (s[i] == best) {
      return i;
    }
  }
  return 0;
}

// A 64-bit key of a row's bits: rows with identical bits have equal keys. Four independent
// chains over interleaved words, joined at the end, so the mixing of one word does not wait for
// the previous one (a single chain bounds keying 10^6 rows of 384 floats at about a second).
template <typename T>
inline uint64_t row_key(const T* row, int64_t D) {
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(row);
  uint64_t lane[4] = {kGolden, kGolden + 1, kGolden + 2, kGolden + 3};
  const size_t size = static_cast<size_t>(D) * sizeof(T);
  size_t b = 0;
  for (; b + 32 <= size; b += 32) {
    for (int j = 0; j < 4; ++j) {
      uint64_t word;
      std::memcpy(&word, bytes + b + 8 * j, 8);
      lane[j] = mix64(lane[j] ^ word);
    }
  }
  for (; b + 8 <= size; b += 8) {
    uint64_t word;
    std::memcpy(&word, bytes + b, 8);
    lane[0] = mix64(lane[0] ^ word);
  }
  for (; b < size; ++b) {
    lane[0] = mix64(lane[0] ^ bytes[b]);
  }
  return mix64(mix64(mix64(lane[0] ^ lane[1]) ^ lane[2]) ^ lane[3]);
}

// For each of K rows of D values, the index of the first row with identical bits, so exact
// duplicates can be searched once and ties still resolve to the smallest index. `keyed` holds
// the (row_key, k) pair of every row k, which callers may compute in parallel; it is sorted in
// place. Returns the number of distinct rows; `first[k] == k` marks the first occurrence.
template <typename T>
inline int64_t first_identical_keyed_rows(const T* rows, int64_t D, std::vector<std::pair<uint64_t, int64_t>>& keyed,
                                          int64_t* first) {
  const int64_t K = static_cast<int64_t>(keyed.size());
  std::sort(keyed.begin(), keyed.end());
  for (int64_t k = 0; k < K; ++k) {
    first[k] = k;
  }
  int64_t distinct = K;
  for (size_t a = 0; a < keyed.size();) {
    size_t b = a + 1;
    while (b < keyed.size() && keyed[b].first == keyed[a].first) {
      ++b;
    }
    // keyed[a, b) share a key and are sorted by index; compare each with earlier ones.
    for (size_t x = a + 1; x < b; ++x) {
      const int64_t kx = keyed[x].second;
      for (size_t y = a; y < x; ++y) {
        const int64_t ky = keyed[y].second;
        if (first[ky] == ky &&
            std::memcmp(rows + kx * D, rows + ky * D, static_cast<size_t>(D) * sizeof(T)) == 0) {
          first[kx] = ky;
          --distinct;
          break;
        }
      }
    }
    a = b;
  }
  return distinct;
}

}  // namespace core
}  // namespace diffmask_fast

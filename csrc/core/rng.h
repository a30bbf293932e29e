// Counter-based random numbers.
//
// Every draw is a pure function of (seed, stream, counter), so a row of a batch gets the same
// numbers whichever thread processes it and however many threads there are. The generator is
// splitmix64 (Steele, Lea and Flood 2014): the counter is advanced by the golden-ratio increment
// and passed through the 64-bit finalizer, which passes BigCrush per stream.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "portable.h"

namespace diffmask_fast {
namespace core {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// The splitmix64 finalizer: a bijection on 64-bit words with full avalanche.
DIFFMASK_FAST_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Purposes of the sub-streams of one row, so that e.g. the replacement draws do not depend on
// how many keys the sampling consumed.
enum class Purpose : uint64_t {
  kSampling = 1,
  kBudget = 2,
  kFill = 3,
  kReplace = 4,
};

// One independent stream of 64-bit words. Draw i is mix64(key + (i + 1) * golden).
struct Stream {
  uint64_t key;

  DIFFMASK_FAST_HD Stream(uint64_t seed, uint64_t stream_id)
      : key(mix64(mix64(seed ^ 0x2545F4914F6CDD1DULL) + kGolden * (stream_id + 1))) {}

  DIFFMASK_FAST_HD explicit Stream(uint64_t raw_key) : key(raw_key) {}

  // The sub-stream of this stream for one purpose.
  DIFFMASK_FAST_HD Stream sub(Purpose purpose) const {
    return Stream(mix64(key ^ (0xD1B54A32D192ED03ULL * static_cast<uint64_t>(purpose))));
  }

  DIFFMASK_FAST_HD uint64_t at(uint64_t counter) const { return mix64(key + kGolden * (counter + 1)); }
};

// Uniform double in [0, 1) from the top 53 bits.
DIFFMASK_FAST_HD inline double to_unit(uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Uniform double in (0, 1]: never zero, so its logarithm is finite.
DIFFMASK_FAST_HD inline double to_unit_open_zero(uint64_t bits) {
  return static_cast<double>((bits >> 11) + 1) * 0x1.0p-53;
}

// Uniform integer in [0, n) for n >= 1 (bias below 2^-53 * n, negligible for n < 2^32).
DIFFMASK_FAST_HD inline int64_t to_index(uint64_t bits, int64_t n) {
  int64_t i = static_cast<int64_t>(mul_rn(to_unit(bits), static_cast<double>(n)));
  return i < n ? i : n - 1;
}

// Natural logarithm by the atanh series: slow (one division) but accurate to ~1e-15 relative,
// from IEEE arithmetic alone. Used to build the table of fast_log and in tests.
DIFFMASK_FAST_HD inline double series_log(double x) {
  const uint64_t bits = bits_of(x);
  int64_t exponent = static_cast<int64_t>((bits >> 52) & 0x7FF) - 1023;
  double m = double_of((bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL);  // m in [1, 2)
  if (m > 1.4142135623730951) {
    m *= 0.5;
    exponent += 1;
  }
  // log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716.
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double p = 1.0 / 19.0;
  p = add_rn(mul_rn(p, s2), 1.0 / 17.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 15.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 13.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 11.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 9.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 7.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 5.0);
  p = add_rn(mul_rn(p, s2), 1.0 / 3.0);
  p = add_rn(mul_rn(p, s2), 1.0);
  return add_rn(mul_rn(static_cast<double>(exponent), 0.6931471805599453), mul_rn(mul_rn(2.0, s), p));
}

// Table of fast_log. Arguments are reduced to z in [0.707, 1.414) (the bit pattern minus
// kOffset splits into exponent and table index), and the table holds, for each of the 256
// sub-intervals of z, an expansion point c (its left end; 1 for the interval below 1), 1 / c
// and log c. Since 1 is an expansion point, log is exact at 1 and accurate in relative terms
// near it. Built once from IEEE arithmetic:
// results do not depend on the C library, nor on the processor (CUDA kernels build the same
// table in shared memory with LogTable::fill).
struct LogTable {
  static constexpr int kBits = 8;
  static constexpr uint64_t kOffset = 0x3FE6A00000000000ULL;  // 0.70703125
  // The interval just below 1 is expanded around its right end, 1, instead: then z - 1 is exact
  // and log stays accurate in relative terms right up to 1.
  static constexpr int kBelowOne = static_cast<int>(((0x3FF0000000000000ULL - kOffset) >> (52 - kBits)) - 1);
  double left[1 << kBits];
  double inverse[1 << kBits];
  double log_left[1 << kBits];

  LogTable() {
    for (int i = 0; i < (1 << kBits); ++i) {
      left[i] = double_of(kOffset + (static_cast<uint64_t>(i) << (52 - kBits)));
    }
    left[kBelowOne] = 1.0;
    for (int i = 0; i < (1 << kBits); ++i) {
      inverse[i] = 1.0 / left[i];
      log_left[i] = series_log(left[i]);
    }
  }

  // Entry i alone, equal to the constructor's. A CUDA block fills a table in shared memory this
  // way, one entry per thread (a __shared__ object cannot run a constructor).
  DIFFMASK_FAST_HD void fill(int i) {
    left[i] = i == kBelowOne ? 1.0 : double_of(kOffset + (static_cast<uint64_t>(i) << (52 - kBits)));
    inverse[i] = 1.0 / left[i];
    log_left[i] = series_log(left[i]);
  }
};

inline const LogTable& log_table() {
  static const LogTable table;
  return table;
}

// Natural logarithm of a positive, finite, normal double, without a division:
// x = 2^k z, log x = k log 2 + log c + log1p(z / c - 1) with c the expansion point of z's table
// interval, |z / c - 1| < 2^-8, where a degree-6 series is exact to ~3e-18. z - c is exact, so
// the error stays relative even next to 1: about 1e-15 |log x|.
DIFFMASK_FAST_HD inline double fast_log(double x, const LogTable& table) {
  const uint64_t bits = bits_of(x);
  const uint64_t shifted = bits - LogTable::kOffset;
  const int i = static_cast<int>((shifted >> (52 - LogTable::kBits)) & ((1u << LogTable::kBits) - 1));
  const int64_t k = static_cast<int64_t>(shifted) >> 52;
  const double z = double_of(bits - (shifted & 0xFFF0000000000000ULL));
  const double r = mul_rn(sub_rn(z, table.left[i]), table.inverse[i]);  // z - c is exact (Sterbenz)
  // Degree-6 series of log1p(r) by Horner's rule, from the innermost term out.
  double q = mul_rn(r, -1.0 / 6);
  q = mul_rn(r, add_rn(1.0 / 5, q));
  q = mul_rn(r, add_rn(-1.0 / 4, q));
  q = mul_rn(r, add_rn(1.0 / 3, q));
  q = mul_rn(r, add_rn(-1.0 / 2, q));
  const double series = mul_rn(r, add_rn(1.0, q));
  return add_rn(add_rn(mul_rn(static_cast<double>(k), 0.6931471805599453), table.log_left[i]), series);
}

// Exp(1) variate from 64 random bits; never negative (0 - 0 is +0, not -0).
DIFFMASK_FAST_HD inline double to_exponential(uint64_t bits, const LogTable& table) {
  return 0.0 - fast_log(to_unit_open_zero(bits), table);
}

}  // namespace core
}  // namespace diffmask_fast

// Successive sampling with Efraimidis-Spirakis keys: exact counts, zero weights, and inclusion
// frequencies against exact enumeration of the successive-sampling law.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "core/sampling.h"

using namespace diffmask_fast::core;

// Exact inclusion probabilities of successive sampling, by enumerating ordered draws.
static void enumerate(const std::vector<double>& w, std::vector<bool>& taken, int left, double probability,
                      std::vector<double>& inclusion) {
  if (left == 0) return;
  double total = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (!taken[i]) total += w[i];
  }
  if (total <= 0) return;
  for (size_t i = 0; i < w.size(); ++i) {
    if (taken[i] || w[i] <= 0) continue;
    const double p = probability * w[i] / total;
    inclusion[i] += p;
    taken[i] = true;
    enumerate(w, taken, left - 1, p, inclusion);
    taken[i] = false;
  }
}

static std::vector<double> exact_inclusion(const std::vector<double>& w, int k) {
  std::vector<double> inclusion(w.size(), 0.0);
  std::vector<bool> taken(w.size(), false);
  enumerate(w, taken, k, 1.0, inclusion);
  return inclusion;
}

static void test_counts_and_zeros() {
  const int n = 50;
  std::vector<KeyIndex> scratch(n);
  for (uint64_t trial = 0; trial < 500; ++trial) {
    const Stream s(trial, 3);
    std::vector<float> w(n);
    int positive = 0;
    for (int i = 0; i < n; ++i) {
      const double u = to_unit(s.sub(Purpose::kFill).at(i));
      w[i] = u < 0.3 ? 0.0f : static_cast<float>(u);
      positive += w[i] > 0;
    }
    for (int64_t count : {0, 1, 5, 20, 35, 49, 50, 80}) {
      const int64_t k = successive_sample(w.data(), n, count, s, scratch.data());
      CHECK(k == std::min<int64_t>(count, positive));
      std::vector<int> seen(n, 0);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = scratch[j].index;
        CHECK(i >= 0 && i < n);
        CHECK(w[i] > 0);  // zero weights never drawn
        ++seen[i];
      }
      for (int i = 0; i < n; ++i) CHECK(seen[i] <= 1);  // without replacement
    }
  }
  // Empty and all-zero rows.
  std::vector<double> zeros(8, 0.0);
  CHECK(successive_sample(zeros.data(), 8, 3, Stream(1, 1), scratch.data()) == 0);
  CHECK(successive_sample(zeros.data(), 0, 3, Stream(1, 1), scratch.data()) == 0);
  CHECK(successive_sample(zeros.data(), 8, -2, Stream(1, 1), scratch.data()) == 0);
}

static void test_determinism() {
  std::vector<double> w = {0.5, 1.0, 0.0, 3.0, 2.0, 0.25, 1.0, 4.0};
  std::vector<KeyIndex> a(8), b(8);
  const int64_t ka = successive_sample(w.data(), 8, 3, Stream(99, 4), a.data());
  const int64_t kb = successive_sample(w.data(), 8, 3, Stream(99, 4), b.data());
  CHECK(ka == kb);
  std::vector<int64_t> ia, ib;
  for (int64_t j = 0; j < ka; ++j) ia.push_back(a[j].index), ib.push_back(b[j].index);
  std::sort(ia.begin(), ia.end());
  std::sort(ib.begin(), ib.end());
  CHECK(ia == ib);
}

static void test_inclusion_matches_enumeration() {
  const std::vector<std::vector<double>> cases = {
      {1.0, 2.0, 3.0, 4.0, 0.0},
      {0.1, 0.1, 5.0, 1.0, 1.0, 0.0},
      {1.0, 1.0, 1.0, 1.0},
      {10.0, 0.01, 0.5, 2.0, 0.0, 3.0},
  };
  const int trials = 100000;
  for (size_t c = 0; c < cases.size(); ++c) {
    const std::vector<double>& w = cases[c];
    const int n = static_cast<int>(w.size());
    std::vector<KeyIndex> scratch(n);
    for (int k = 1; k < n; ++k) {
      const std::vector<double> exact = exact_inclusion(w, k);
      std::vector<int> hits(n, 0);
      for (int t = 0; t < trials; ++t) {
        const int64_t drawn = successive_sample(w.data(), n, k, Stream(1000 + c * 10 + k, t), scratch.data());
        for (int64_t j = 0; j < drawn; ++j) ++hits[scratch[j].index];
      }
      for (int i = 0; i < n; ++i) {
        const double p = std::min(1.0, std::max(0.0, exact[i]));
        const double se = std::sqrt(p * (1 - p) / trials);
        CHECK_NEAR(hits[i] / static_cast<double>(trials), p, 5 * se + 1e-9);
      }
    }
  }
}

static void test_uniform_subset() {
  const int m = 6, trials = 60000;
  std::vector<KeyIndex> items(m);
  std::vector<int> hits(m, 0);
  for (int t = 0; t < trials; ++t) {
    for (int j = 0; j < m; ++j) items[j].index = j * 3;  // arbitrary ids
    uniform_subset(items.data(), m, 2, Stream(7, t));
    for (int j = 0; j < 2; ++j) ++hits[items[j].index / 3];
  }
  for (int j = 0; j < m; ++j) {
    const double p = 2.0 / m;
    CHECK_NEAR(hits[j] / static_cast<double>(trials), p, 5 * std::sqrt(p * (1 - p) / trials));
  }
}

// select_smallest against a full sort, with ties (equal keys resolve by index), zeros, infinities.
static void test_select_smallest() {
  const Stream s(31, 4);
  for (int trial = 0; trial < 2000; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(s.at(3 * trial) % 300);
    std::vector<KeyIndex> items(n);
    const uint64_t flavour = s.at(3 * trial + 1) % 4;
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t bits = s.at(trial * 1000 + i + 7);
      double key = to_exponential(bits, log_table()) / (0.001 + to_unit(bits * 3 + 1));
      if (flavour == 1) key = static_cast<double>(bits % 5);                 // many exact ties
      if (flavour == 2) key = bits % 7 == 0 ? std::numeric_limits<double>::infinity() : key;
      if (flavour == 3) key = std::ldexp(1.0, static_cast<int>(bits % 40) - 20) * (1 + (bits >> 60));
      items[i] = {key, i * 3 + 1};
    }
    std::vector<KeyIndex> sorted = items;  // by key, then position: ties go to the smaller position
    std::sort(sorted.begin(), sorted.end(), [](const KeyIndex& a, const KeyIndex& b) {
      return a.key != b.key ? a.key < b.key : a.index < b.index;
    });
    const int64_t k = static_cast<int64_t>(s.at(3 * trial + 2) % (n + 1));
    select_smallest(items.data(), n, k);
    std::vector<int64_t> got, want;
    for (int64_t j = 0; j < k; ++j) {
      got.push_back(items[j].index);
      want.push_back(sorted[j].index);
    }
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    CHECK(got == want);
  }
}

// Keys that tie exactly: the weight E_i * m of position i (E_i its exponential draw, m a power of
// two) gives the key E_i / (E_i * m) = 1 / m. The tied positions taken are the first ones.
static void test_ties_go_to_the_smallest_positions() {
  CHECK(key_index_less({1.0, 0}, {1.0, 2}) && !key_index_less({1.0, 2}, {1.0, 0}));
  CHECK(key_index_less({0.5, 9}, {1.0, 0}));
  const Stream stream(77, 3);
  const int64_t n = 50;
  std::vector<double> w(n);
  for (int64_t i = 0; i < n; ++i) {
    w[i] = to_exponential(stream.at(static_cast<uint64_t>(i)), log_table()) * (i % 4 == 3 ? 2.0 : 1.0);
  }
  std::vector<KeyIndex> scratch(n);
  for (int64_t count : {1, 12, 13, 20, 49}) {  // 12 keys 0.5 (positions 3, 7, ...), then keys 1 by position
    const int64_t k = successive_sample(w.data(), n, count, stream, scratch.data());
    CHECK(k == count);
    std::vector<int64_t> got, want;
    for (int64_t j = 0; j < k; ++j) got.push_back(scratch[j].index);
    for (int64_t i = 3; i < n && static_cast<int64_t>(want.size()) < count; i += 4) want.push_back(i);
    for (int64_t i = 0; i < n && static_cast<int64_t>(want.size()) < count; ++i) {
      if (i % 4 != 3) want.push_back(i);
    }
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    CHECK(got == want);
  }
}

static void test_bad_weights() {
  WeightProblem problem;
  std::vector<double> ok = {0.0, 1.0, 2.5};
  CHECK(find_bad_weight(ok.data(), 3, &problem) == -1 && problem == WeightProblem::kNone);
  std::vector<double> negative = {0.0, -1.0, std::nan("")};
  CHECK(find_bad_weight(negative.data(), 3, &problem) == 1 && problem == WeightProblem::kNegative);
  std::vector<float> nan = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  CHECK(find_bad_weight(nan.data(), 2, &problem) == 1 && problem == WeightProblem::kNaN);
  std::vector<double> inf = {std::numeric_limits<double>::infinity()};
  CHECK(find_bad_weight(inf.data(), 1, &problem) == 0 && problem == WeightProblem::kInfinite);
  std::vector<double> negative_zero = {-0.0};
  CHECK(find_bad_weight(negative_zero.data(), 1, &problem) == -1);
}

int main() {
  test_counts_and_zeros();
  test_determinism();
  test_inclusion_matches_enumeration();
  test_uniform_subset();
  test_select_smallest();
  test_ties_go_to_the_smallest_positions();
  test_bad_weights();
  TEST_MAIN_END();
}

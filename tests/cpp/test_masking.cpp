// Budget rounding, rank weights, uniform mix, 80/10/10 replacement and whole-row masking.
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "check.h"
#include "core/masking.h"

using namespace diffmask_fast::core;

static void test_budget() {
  CHECK(masking_budget(0, 0.25, 0.0) == 0);
  CHECK(masking_budget(8, 0.25, 0.999) == 2);  // exact product: never rounded up
  CHECK(masking_budget(10, 0.25, 0.49) == 3);  // 2.5: up when u < 0.5
  CHECK(masking_budget(10, 0.25, 0.5) == 2);
  CHECK(masking_budget(3, 1.0, 0.0) == 3);     // capped at n
  CHECK(masking_budget(7, 0.0, 0.0) == 0);
  // The mean over uniform u is p * n.
  const Stream s(2, 2);
  const int trials = 100000;
  double total = 0;
  for (int t = 0; t < trials; ++t) total += masking_budget(13, 0.15, to_unit(s.at(t)));
  const double expected = 0.15 * 13;  // 1.95: 1 or 2, variance 0.95 * 0.05
  CHECK_NEAR(total / trials, expected, 6 * std::sqrt(0.95 * 0.05 / trials));
}

static void check_ranks(const std::vector<double>& scores) {
  const int64_t n = static_cast<int64_t>(scores.size());
  std::vector<KeyIndex> items(n);
  std::vector<uint64_t> keys(n), buffer(n);
  std::vector<double> ranks(n);
  rank_weights(scores.data(), n, items.data(), keys.data(), buffer.data(), ranks.data());
  for (int64_t i = 0; i < n; ++i) {  // definition: 1 + #smaller + (#equal - 1) / 2
    double smaller = 0, equal = 0;
    for (int64_t j = 0; j < n; ++j) {
      smaller += scores[j] < scores[i];
      equal += scores[j] == scores[i];
    }
    CHECK(ranks[i] == 1 + smaller + (equal - 1) / 2);
  }
}

static void test_rank_weights() {
  const std::vector<double> scores = {0.3, -1.0, 0.3, 2.0, 0.3, -1.0};
  std::vector<KeyIndex> items(6);
  std::vector<uint64_t> keys(6), buffer(6);
  std::vector<double> ranks(6);
  rank_weights(scores.data(), 6, items.data(), keys.data(), buffer.data(), ranks.data());
  const std::vector<double> expected = {4.0, 1.5, 4.0, 6.0, 4.0, 1.5};
  CHECK(ranks == expected);
  rank_weights(scores.data(), 0, items.data(), keys.data(), buffer.data(), ranks.data());  // empty: no-op
  // float32 values (radix path) with ties, signed zeros, extremes; then non-float32 values.
  const Stream s(8, 8);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<double> values;
    for (int i = 0; i < 300; ++i) {
      const uint64_t bits = s.at(trial * 1000 + i);
      values.push_back(static_cast<double>(static_cast<float>(static_cast<int64_t>(bits % 41) - 20) / 7.0f));
    }
    values.push_back(-0.0);
    values.push_back(0.0);
    values.push_back(static_cast<double>(3.0e38f));  // float32 values, or the radix path is never taken
    values.push_back(static_cast<double>(-3.0e38f));
    values.push_back(static_cast<double>(1e-40f));  // a float32 denormal
    check_ranks(values);
    values.push_back(0.1);  // not a float32 value: comparison sort
    check_ranks(values);
  }
}

static void test_mix() {
  std::vector<double> w = {1.0, 3.0, 0.0, 0.0};
  mix_with_uniform(w.data(), 4, 0.2);
  CHECK_NEAR(w[0], 0.8 * 0.25 + 0.05, 1e-15);
  CHECK_NEAR(w[1], 0.8 * 0.75 + 0.05, 1e-15);
  CHECK_NEAR(w[2], 0.05, 1e-15);
  std::vector<double> zero = {0.0, 0.0};
  mix_with_uniform(zero.data(), 2, 0.3);
  CHECK(zero[0] == 0.5 && zero[1] == 0.5);
  std::vector<double> untouched = {2.0, 0.0};
  mix_with_uniform(untouched.data(), 2, 0.0);
  CHECK(untouched[0] == 2.0 && untouched[1] == 0.0);
}

static void test_replacement_proportions() {
  const Stream s(3, 3);
  const int trials = 200000;
  int counts[3] = {0, 0, 0};
  for (int t = 0; t < trials; ++t) ++counts[replacement_for(to_unit(s.at(t)), 0.8, 0.1)];
  const double p[3] = {0.1, 0.8, 0.1};
  for (int k = 0; k < 3; ++k) {
    CHECK_NEAR(counts[k] / static_cast<double>(trials), p[k], 5 * std::sqrt(p[k] * (1 - p[k]) / trials));
  }
  CHECK(replacement_for(0.0, 0.0, 0.0) == kKeep);
  CHECK(replacement_for(0.999, 0.0, 1.0) == kRandomToken);
}

static void test_mask_row() {
  // 12 tokens, vocabulary 20: even ids start words, odd ids continue them.
  const int64_t V = 20, L = 12;
  bool starts[V];
  for (int64_t v = 0; v < V; ++v) starts[v] = v % 2 == 0;
  const int64_t ids[L] = {0, 2, 3, 4, 6, 7, 7, 8, 10, 12, 13, 0};
  bool never[L] = {true, false, false, false, false, false, false, false, false, false, false, true};
  // Words: [2 3] [4] [6 7 7] [8] [10] [12 13] -> 6 words.
  const int64_t word_ranges[6][2] = {{1, 3}, {3, 4}, {4, 7}, {7, 8}, {8, 9}, {9, 11}};
  // Table knows words 0 and 2 only (hash of their ids), with positive scores.
  std::vector<int64_t> keys(16, 0);
  std::vector<float> values(16, 0.0f);
  const int64_t w0[] = {2, 3}, w2[] = {6, 7, 7};
  const int64_t known[] = {word_hash(w0, 2), word_hash(w2, 3)};
  const float known_scores[] = {0.5f, 0.7f};
  CHECK(table_insert(keys.data(), values.data(), 16, known, known_scores, 2).status == InsertStatus::kOk);
  const TableView table{keys.data(), values.data(), 16};
  const int64_t random_ids[] = {15, 17};
  MaskParams params;
  params.mlm_probability = 0.5;
  params.mask_token_id = 99;
  RowScratch scratch(L);
  int64_t out_ids[L], labels[L];
  int masked_word_counts[6] = {0, 0, 0, 0, 0, 0};
  const int trials = 20000;
  int token_kinds[3] = {0, 0, 0};
  for (int t = 0; t < trials; ++t) {
    std::vector<Miss> misses;
    const RowResult r = mask_row(ids, never, L, starts, V, table, random_ids, 2, params, Stream(11, t), scratch,
                                 out_ids, labels, &misses);
    CHECK(r.bad_position == -1);
    CHECK(r.masked_words == 3);  // 0.5 * 6 exactly
    CHECK(misses.size() == 4);
    for (const Miss& m : misses) CHECK(m.hash != known[0] && m.hash != known[1] && m.begin < m.end);
    CHECK(labels[0] == kIgnoreLabel && out_ids[0] == 0 && labels[11] == kIgnoreLabel && out_ids[11] == 0);
    int words = 0;
    for (int w = 0; w < 6; ++w) {
      const int64_t b = word_ranges[w][0], e = word_ranges[w][1];
      const bool masked = labels[b] != kIgnoreLabel;
      for (int64_t l = b; l < e; ++l) {
        CHECK((labels[l] != kIgnoreLabel) == masked);  // whole words only
        if (masked) {
          CHECK(labels[l] == ids[l]);
          if (out_ids[l] == 99) ++token_kinds[kMaskToken];
          else if (out_ids[l] == ids[l]) ++token_kinds[kKeep];
          else {
            CHECK(out_ids[l] == 15 || out_ids[l] == 17);
            ++token_kinds[kRandomToken];
          }
        } else {
          CHECK(out_ids[l] == ids[l]);
        }
      }
      words += masked;
      masked_word_counts[w] += masked;
    }
    CHECK(words == 3);
  }
  // Two positive-weight words, budget 3: both always chosen, plus one of the four others.
  CHECK(masked_word_counts[0] == trials && masked_word_counts[2] == trials);
  for (int w : {1, 3, 4, 5}) {
    CHECK_NEAR(masked_word_counts[w] / static_cast<double>(trials), 0.25, 5 * std::sqrt(0.25 * 0.75 / trials));
  }
  const int total = token_kinds[0] + token_kinds[1] + token_kinds[2];
  CHECK_NEAR(token_kinds[kMaskToken] / static_cast<double>(total), 0.8, 0.01);
  CHECK_NEAR(token_kinds[kRandomToken] / static_cast<double>(total), 0.1, 0.01);

  // Out-of-range id.
  const int64_t bad_ids[3] = {2, 25, 3};
  bool no_never[3] = {false, false, false};
  RowScratch small(3);
  const RowResult bad = mask_row(bad_ids, no_never, 3, starts, V, table, random_ids, 2, params, Stream(1, 1), small,
                                 out_ids, labels, nullptr);
  CHECK(bad.masked_words == -1 && bad.bad_position == 1);

  // Same stream, same row: same result.
  int64_t again_ids[L], again_labels[L];
  mask_row(ids, never, L, starts, V, table, random_ids, 2, params, Stream(5, 5), scratch, out_ids, labels, nullptr);
  mask_row(ids, never, L, starts, V, table, random_ids, 2, params, Stream(5, 5), scratch, again_ids, again_labels,
           nullptr);
  for (int64_t l = 0; l < L; ++l) CHECK(out_ids[l] == again_ids[l] && labels[l] == again_labels[l]);
}

int main() {
  test_budget();
  test_rank_weights();
  test_mix();
  test_replacement_proportions();
  test_mask_row();
  TEST_MAIN_END();
}

// Word grouping and word hashes.
#include <cstdint>
#include <set>
#include <vector>

#include "check.h"
#include "core/words.h"

using namespace diffmask_fast::core;

struct Grouped {
  int64_t n;
  std::vector<int64_t> index, begin, end, hash;
};

static Grouped group(const std::vector<int64_t>& ids, const std::vector<int>& never, const std::vector<bool>& starts) {
  const int64_t L = static_cast<int64_t>(ids.size());
  bool never_bool[64];
  bool starts_bool[64];
  for (int64_t l = 0; l < L; ++l) never_bool[l] = never[l] != 0;
  for (size_t v = 0; v < starts.size(); ++v) starts_bool[v] = starts[v];
  Grouped g;
  g.index.assign(L, -7);
  g.begin.assign(L, -7);
  g.end.assign(L, -7);
  g.hash.assign(L, -7);
  g.n = group_row(ids.data(), never_bool, L, starts_bool, static_cast<int64_t>(starts.size()), g.index.data(),
                  g.begin.data(), g.end.data(), g.hash.data());
  return g;
}

static void test_grouping() {
  // Vocabulary of 6 ids; ids 0, 1, 4 start words, 2, 3, 5 continue them.
  const std::vector<bool> starts = {true, true, false, false, true, false};
  // [CLS] a ##b ##c d [SEP] ##e  f  [PAD]
  const std::vector<int64_t> ids = {0, 1, 2, 3, 4, 0, 5, 4, 0};
  const std::vector<int> never = {1, 0, 0, 0, 0, 1, 0, 0, 1};
  const Grouped g = group(ids, never, starts);
  CHECK(g.n == 4);
  const std::vector<int64_t> expected_index = {-1, 0, 0, 0, 1, -1, 2, 3, -1};
  CHECK(g.index == expected_index);
  CHECK(g.begin[0] == 1 && g.end[0] == 4);
  CHECK(g.begin[1] == 4 && g.end[1] == 5);
  CHECK(g.begin[2] == 6 && g.end[2] == 7);  // a continuation after a special token starts a word
  CHECK(g.begin[3] == 7 && g.end[3] == 8);
  const int64_t abc[] = {1, 2, 3};
  CHECK(g.hash[0] == word_hash(abc, 3));
  const int64_t d[] = {4};
  CHECK(g.hash[1] == word_hash(d, 1));

  // First token of the row starts a word even when it is a continuation; word reaches the end.
  const Grouped h = group({2, 3, 2}, {0, 0, 0}, starts);
  CHECK(h.n == 1 && h.begin[0] == 0 && h.end[0] == 3);

  // All never-word: no words. Empty row: no words.
  CHECK(group({0, 0}, {1, 1}, starts).n == 0);
  CHECK(group({}, {}, starts).n == 0);

  // Out-of-range ids are reported with their position, unless the token is never-word.
  CHECK(group({1, 6, 2}, {0, 0, 0}, starts).n == -(1 + 1));
  CHECK(group({1, -1}, {0, 0}, starts).n == -(1 + 1));
  CHECK(group({99, 1}, {1, 0}, starts).n == 1);
}

static void test_hash() {
  // Pinned values: ops.word_hash in Python computes the same function.
  const int64_t one[] = {1};
  const int64_t three[] = {1, 2, 3};
  const int64_t two[] = {2023, 1011};
  CHECK(word_hash(one, 1) == -1956407806741107680LL);
  CHECK(word_hash(three, 3) == -1523445386344781784LL);
  CHECK(word_hash(two, 2) == 3372616544029739992LL);
  // Order matters; no collisions among all words of up to 3 ids from a small vocabulary.
  const int64_t ab[] = {5, 6};
  const int64_t ba[] = {6, 5};
  CHECK(word_hash(ab, 2) != word_hash(ba, 2));
  std::set<int64_t> seen;
  int64_t count = 0;
  for (int64_t a = 0; a < 40; ++a) {
    const int64_t w1[] = {a};
    seen.insert(word_hash(w1, 1));
    ++count;
    for (int64_t b = 0; b < 40; ++b) {
      const int64_t w2[] = {a, b};
      seen.insert(word_hash(w2, 2));
      ++count;
      for (int64_t c = 0; c < 40; ++c) {
        const int64_t w3[] = {a, b, c};
        const int64_t h = word_hash(w3, 3);
        CHECK(h != 0);
        seen.insert(h);
        ++count;
      }
    }
  }
  CHECK(static_cast<int64_t>(seen.size()) == count);
  CHECK(word_hash_finish(0) == 1);
}

int main() {
  test_grouping();
  test_hash();
  TEST_MAIN_END();
}

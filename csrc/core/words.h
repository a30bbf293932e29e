// Words of a tokenized sequence and their hashes.
//
// A token starts a word when it is not a never-word token (special token, padding) and either
// its id is flagged in `starts_word`, it is the first token of the row, or the token before it
// is a never-word token. The word's identity for score look-ups is a 64-bit hash of its token
// ids, so words are scored without decoding them.
#pragma once

#include <cstdint>

#include "rng.h"

namespace diffmask_fast {
namespace core {

// Word hash: h = golden; for each id: h = mix64(h ^ id); a final 0 becomes 1, because 0 marks
// empty slots of the score table. Each step is a bijection of h ^ id, so two words of equal
// length that differ in one id never collide.
constexpr uint64_t kWordHashSeed = kGolden;

DIFFMASK_FAST_HD inline uint64_t word_hash_step(uint64_t h, int64_t id) {
  return mix64(h ^ static_cast<uint64_t>(id));
}

DIFFMASK_FAST_HD inline int64_t word_hash_finish(uint64_t h) {
  return h == 0 ? 1 : static_cast<int64_t>(h);
}

DIFFMASK_FAST_HD inline int64_t word_hash(const int64_t* ids, int64_t n) {
  uint64_t h = kWordHashSeed;
  for (int64_t i = 0; i < n; ++i) {
    h = word_hash_step(h, ids[i]);
  }
  return word_hash_finish(h);
}

// Groups one row of L tokens into words.
//
// Writes word_index[l] (the word of token l, -1 for never-word tokens) and, for each word w,
// word_begin[w], word_end[w] (half-open token range) and word_hash[w]; these three need room
// for L words. Returns the number of words, or -(l + 1) for the first token l that is not a
// never-word token and whose id is outside [0, V). Never-word tokens are not looked up, so
// they may hold any id.
inline int64_t group_row(const int64_t* ids, const bool* never_word, int64_t L, const bool* starts_word,
                         int64_t V, int64_t* word_index, int64_t* word_begin, int64_t* word_end,
                         int64_t* word_hash) {
  int64_t n = 0;
  bool in_word = false;
  uint64_t h = kWordHashSeed;
  for (int64_t l = 0; l < L; ++l) {
    if (never_word[l]) {
      word_index[l] = -1;
      if (in_word) {
        word_end[n - 1] = l;
        word_hash[n - 1] = word_hash_finish(h);
        in_word = false;
      }
      continue;
    }
    const int64_t id = ids[l];
    if (id < 0 || id >= V) {
      return -(l + 1);
    }
    if (!in_word || starts_word[id]) {
      if (in_word) {
        word_end[n - 1] = l;
        word_hash[n - 1] = word_hash_finish(h);
      }
      word_begin[n] = l;
      h = kWordHashSeed;
      ++n;
      in_word = true;
    }
    h = word_hash_step(h, id);
    word_index[l] = n - 1;
  }
  if (in_word) {
    word_end[n - 1] = L;
    word_hash[n - 1] = word_hash_finish(h);
  }
  return n;
}

}  // namespace core
}  // namespace diffmask_fast

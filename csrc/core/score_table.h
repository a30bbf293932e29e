// Word-hash -> score table: open addressing with linear probing.
//
// The table is two flat arrays (keys, values) of a power-of-two capacity so that it can live in
// plain tensors, be pickled and be shared by DataLoader workers. Key 0 marks an empty slot.
// Keys are hashed once more (mix64) before probing, so even small or patterned keys spread.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "rng.h"

namespace diffmask_fast {
namespace core {

DIFFMASK_FAST_HD inline bool is_power_of_two(int64_t x) {
  return x > 0 && (x & (x - 1)) == 0;
}

DIFFMASK_FAST_HD inline uint64_t table_home_slot(int64_t key, int64_t capacity) {
  return mix64(static_cast<uint64_t>(key)) & static_cast<uint64_t>(capacity - 1);
}

// The slot holding `key`, or -1 when it is absent (key 0 is always absent).
DIFFMASK_FAST_HD inline int64_t table_find(const int64_t* keys, int64_t capacity, int64_t key) {
  if (key == 0 || capacity <= 0) {
    return -1;
  }
  const uint64_t mask = static_cast<uint64_t>(capacity - 1);
  uint64_t slot = table_home_slot(key, capacity);
  for (int64_t probe = 0; probe < capacity; ++probe) {
    const int64_t k = keys[slot];
    if (k == key) {
      return static_cast<int64_t>(slot);
    }
    if (k == 0) {
      return -1;
    }
    slot = (slot + 1) & mask;
  }
  return -1;
}

enum class InsertStatus { kOk = 0, kZeroKey, kNonFiniteValue, kFull };

struct InsertResult {
  InsertStatus status;
  int64_t position;  // offending entry of new_keys / new_values, -1 when not applicable
};

// Inserts m (key, value) pairs in order; an existing key gets the new value (so the last of
// repeated keys wins). Keys must be non-zero and values finite. When an entry finds no free
// slot, everything inserted by this call is undone and kFull is returned: the table is never
// left half-updated.
template <typename V>
inline InsertResult table_insert(int64_t* keys, V* values, int64_t capacity, const int64_t* new_keys,
                                 const V* new_values, int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    if (new_keys[i] == 0) {
      return {InsertStatus::kZeroKey, i};
    }
    if (!std::isfinite(static_cast<double>(new_values[i]))) {
      return {InsertStatus::kNonFiniteValue, i};
    }
  }
  struct Undo {
    int64_t slot;
    bool was_empty;
    V old_value;
  };
  std::vector<Undo> undo;
  const uint64_t mask = static_cast<uint64_t>(capacity - 1);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t key = new_keys[i];
    uint64_t slot = table_home_slot(key, capacity);
    int64_t target = -1;
    for (int64_t probe = 0; probe < capacity; ++probe) {
      const int64_t k = keys[slot];
      if (k == key || k == 0) {
        target = static_cast<int64_t>(slot);
        break;
      }
      slot = (slot + 1) & mask;
    }
    if (target < 0) {
      for (auto it = undo.rbegin(); it != undo.rend(); ++it) {
        if (it->was_empty) {
          keys[it->slot] = 0;
        }
        values[it->slot] = it->old_value;
      }
      return {InsertStatus::kFull, i};
    }
    undo.push_back({target, keys[target] == 0, values[target]});
    keys[target] = key;
    values[target] = new_values[i];
  }
  return {InsertStatus::kOk, -1};
}

}  // namespace core
}  // namespace diffmask_fast

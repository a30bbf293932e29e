// CUDA kernels of difference_mask (one thread block per row) and score_table_lookup.
//
// A row goes through the steps of core::mask_row with the same random streams and the same
// arithmetic (csrc/core is compiled for the device too), so a row masked here equals the row the
// CPU kernel masks with the same seed, bit for bit:
//   1. words: word starts by a block-wide scan, each word's hash by the thread at its start;
//   2. scores from the open-addressing table (absent words score unknown_score and are counted);
//   3. weights: max(score, 0), or ranks (counted against every other word of the row);
//      the uniform mix sums the weights in order, as the CPU does;
//   4. budget; successive sampling = the k smallest exponential keys E / w (radix select), then
//      the uniform fill among zero-weight words;
//   5. whole-word spread and the 80/10/10 replacement, one thread per token.
#include <climits>

#include "../core/masking.h"
#include "device_common.cuh"
#include "kernels.h"

namespace diffmask_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Per-row scratch in the caller's workspace: [rows, length] arrays, 8-byte ones first.
struct RowWorkspace {
  int64_t* hash;
  double* score;
  double* weight;
  uint64_t* key;
  int32_t* word_of;
  int32_t* begin;
  int32_t* end;
  uint8_t* chosen;
};

__host__ __device__ inline size_t mask_workspace_size(int64_t rows, int64_t length) {
  const size_t cells = static_cast<size_t>(rows) * static_cast<size_t>(length);
  return cells * (4 * sizeof(int64_t) + 3 * sizeof(int32_t) + sizeof(uint8_t));
}

__device__ inline RowWorkspace row_workspace(void* base, int64_t rows, int64_t length, int64_t row) {
  const size_t cells = static_cast<size_t>(rows) * static_cast<size_t>(length);
  const size_t at = static_cast<size_t>(row) * static_cast<size_t>(length);
  unsigned char* p = static_cast<unsigned char*>(base);
  RowWorkspace ws;
  ws.hash = reinterpret_cast<int64_t*>(p) + at;
  p += cells * sizeof(int64_t);
  ws.score = reinterpret_cast<double*>(p) + at;
  p += cells * sizeof(double);
  ws.weight = reinterpret_cast<double*>(p) + at;
  p += cells * sizeof(double);
  ws.key = reinterpret_cast<uint64_t*>(p) + at;
  p += cells * sizeof(uint64_t);
  ws.word_of = reinterpret_cast<int32_t*>(p) + at;
  p += cells * sizeof(int32_t);
  ws.begin = reinterpret_cast<int32_t*>(p) + at;
  p += cells * sizeof(int32_t);
  ws.end = reinterpret_cast<int32_t*>(p) + at;
  p += cells * sizeof(int32_t);
  ws.chosen = p + at;
  return ws;
}

struct MaskShared {
  device::LogTableStorage log_table;
  device::BlockScratch<long long> scan;
  device::SelectScratch select;
  double tile[kThreads];
  double total;
  unsigned long long largest_bits;  // scratch of device::successive_sampling_keys
  int bad;
  int bad_score;
};

__global__ void __launch_bounds__(kThreads) difference_mask_kernel(const MaskProblem p, void* workspace) {
  __shared__ MaskShared sh;
  const int64_t row = blockIdx.x;
  const int64_t L = p.length;
  const int64_t V = p.vocabulary;
  const int64_t* ids = p.input_ids + row * L;
  const bool* never = p.never_word + row * L;
  const bool* starts = p.starts_word;
  const RowWorkspace ws = row_workspace(workspace, p.rows, L, row);
  if (threadIdx.x == 0) {
    sh.bad = INT_MAX;
    sh.bad_score = INT_MAX;
  }
  const core::LogTable& table = device::fill_log_table(sh.log_table);  // ends with a barrier
  const uint64_t seed = static_cast<uint64_t>(p.seed_device != nullptr ? *p.seed_device : p.seed_value);
  const core::Stream stream(seed, static_cast<uint64_t>(row));

  // Tokens that belong to no word: never_word, and ids outside the vocabulary.
  auto excluded = [&](int64_t l) {
    if (never[l]) {
      return true;
    }
    const int64_t id = ids[l];
    return id < 0 || id >= V;
  };

  // 1. Words: a token starts one when it is not excluded and is first in the row, follows an
  //    excluded token, or its id starts words. Block-wide scans number the starts in order.
  long long offset = 0;
  for (int64_t base = 0; base < L; base += kThreads) {
    const int64_t l = base + threadIdx.x;
    bool outside = true;
    bool start = false;
    if (l < L) {
      outside = excluded(l);
      start = !outside && (l == 0 || excluded(l - 1) || starts[ids[l]]);
      if (!never[l] && outside) {
        atomicMin(&sh.bad, static_cast<int>(l));
      }
    }
    long long total;
    const long long rank = device::block_exclusive_scan<long long>(start ? 1 : 0, sh.scan, &total);
    if (l < L) {
      const long long w = offset + rank + (start ? 1 : 0) - 1;
      ws.word_of[l] = outside ? -1 : static_cast<int32_t>(w);
      if (p.miss_hash != nullptr) {
        p.miss_hash[row * L + l] = 0;
        p.miss_end[row * L + l] = 0;
      }
      if (start) {
        // The word's tokens run until the next excluded token or word start.
        uint64_t h = core::kWordHashSeed;
        int64_t e = l;
        do {
          h = core::word_hash_step(h, ids[e]);
          ++e;
        } while (e < L && !excluded(e) && !starts[ids[e]]);
        ws.begin[w] = static_cast<int32_t>(l);
        ws.end[w] = static_cast<int32_t>(e);
        ws.hash[w] = core::word_hash_finish(h);
      }
    }
    offset += total;
  }
  const int64_t n = offset;
  __syncthreads();

  // 2. Scores, and the weights of the similarity weighting (std::max(s, 0.0), -0.0 included).
  const bool rank_weighting = p.weighting == core::kWeightingRank;
  long long misses = 0;
  for (int64_t w = threadIdx.x; w < n; w += kThreads) {
    const int64_t h = ws.hash[w];
    const int64_t slot = core::table_find(p.table_keys, p.capacity, h);
    double s;
    if (slot >= 0) {
      s = static_cast<double>(p.table_values[slot]);
      if (!isfinite(s)) {  // as core::mask_row: reported, and scored as an unknown word
        s = p.unknown_score;
        atomicMin(&sh.bad_score, ws.begin[w]);
      }
    } else {
      s = p.unknown_score;
      ++misses;
      if (p.miss_hash != nullptr) {
        p.miss_hash[row * L + ws.begin[w]] = h;
        p.miss_end[row * L + ws.begin[w]] = ws.end[w];
      }
    }
    ws.score[w] = s;
    if (!rank_weighting) {
      ws.weight[w] = s < 0.0 ? 0.0 : s;
    }
  }
  misses = device::block_sum<long long>(misses, sh.scan);

  // 3. Rank weights: 1 + #smaller + (#equal - 1) / 2, as core::rank_weights, by comparing every
  //    pair of words through shared-memory tiles.
  if (rank_weighting) {
    for (int64_t base = 0; base < n; base += kThreads) {
      const int64_t w = base + threadIdx.x;
      const double mine = w < n ? ws.score[w] : 0.0;
      long long smaller = 0;
      long long equal = 0;
      for (int64_t tile = 0; tile < n; tile += kThreads) {
        __syncthreads();
        if (tile + threadIdx.x < n) {
          sh.tile[threadIdx.x] = ws.score[tile + threadIdx.x];
        }
        __syncthreads();
        const int count = static_cast<int>(n - tile < kThreads ? n - tile : kThreads);
        if (w < n) {
          for (int j = 0; j < count; ++j) {
            const double other = sh.tile[j];
            smaller += other < mine;
            equal += other == mine;
          }
        }
      }
      if (w < n) {
        const long long first = smaller;
        const long long last = smaller + equal - 1;
        ws.weight[w] = core::add_rn(static_cast<double>(first + last) / 2.0, 1.0);
      }
    }
    __syncthreads();
  }

  // Uniform mix: (1 - lambda) * w / sum(w) + lambda / n, the sum taken in word order.
  if (p.uniform_mix > 0 && n > 0) {
    if (threadIdx.x == 0) {
      double total = 0;
      for (int64_t w = 0; w < n; ++w) {
        total += ws.weight[w];
      }
      sh.total = total;
    }
    __syncthreads();
    const double total = sh.total;
    const double lambda = p.uniform_mix;
    const double uniform = lambda / static_cast<double>(n);
    for (int64_t w = threadIdx.x; w < n; w += kThreads) {
      ws.weight[w] = total > 0
                         ? core::add_rn(core::mul_rn(core::sub_rn(1.0, lambda), ws.weight[w]) / total, uniform)
                         : 1.0 / static_cast<double>(n);
    }
    __syncthreads();
  }

  // 4. Budget and choice of words.
  long long positive = 0;
  for (int64_t w = threadIdx.x; w < n; w += kThreads) {
    positive += ws.weight[w] > 0;
  }
  positive = device::block_sum<long long>(positive, sh.scan);
  const int64_t budget = core::masking_budget(n, p.mlm_probability,
                                              core::to_unit(stream.sub(core::Purpose::kBudget).at(0)));
  const long long drawn = budget < positive ? budget : positive;
  if (drawn > 0 && drawn < positive) {
    device::successive_sampling_keys(n, drawn, [&](int64_t w) { return ws.weight[w]; },
                                     stream.sub(core::Purpose::kSampling), table, ws.key, sh.scan, &sh.largest_bits);
    const device::Selection selection = device::select_smallest(ws.key, n, drawn, sh.select);
    device::apply_selection(ws.key, n, selection, sh.select,
                            [&](int64_t i, bool selected) { ws.chosen[i] = selected ? 1 : 0; });
  } else {
    for (int64_t w = threadIdx.x; w < n; w += kThreads) {
      ws.chosen[w] = drawn > 0 && ws.weight[w] > 0 ? 1 : 0;
    }
  }
  __syncthreads();
  if (drawn < budget) {
    // Every positive-weight word is taken; the rest uniformly among the zero-weight words.
    const long long zero = n - positive;
    const long long extra = budget - drawn < zero ? budget - drawn : zero;
    if (extra >= zero) {
      for (int64_t w = threadIdx.x; w < n; w += kThreads) {
        if (!(ws.weight[w] > 0)) {
          ws.chosen[w] = 1;
        }
      }
    } else if (extra > 0) {
      const core::Stream fill = stream.sub(core::Purpose::kFill);
      for (int64_t w = threadIdx.x; w < n; w += kThreads) {
        ws.key[w] = ws.weight[w] > 0 ? device::kExcludedKey : core::bits_of(core::to_unit(fill.at(static_cast<uint64_t>(w))));
      }
      __syncthreads();
      const device::Selection selection = device::select_smallest(ws.key, n, extra, sh.select);
      device::apply_selection(ws.key, n, selection, sh.select, [&](int64_t i, bool selected) {
        if (selected) {
          ws.chosen[i] = 1;
        }
      });
    }
    __syncthreads();
  }

  // 5. Whole-word mask and replacement.
  const core::Stream replace = stream.sub(core::Purpose::kReplace);
  int64_t* out_ids = p.masked_ids + row * L;
  int64_t* out_labels = p.labels + row * L;
  for (int64_t l = threadIdx.x; l < L; l += kThreads) {
    const int64_t id = ids[l];
    const int32_t w = ws.word_of[l];
    if (w < 0 || !ws.chosen[w]) {
      out_ids[l] = id;
      out_labels[l] = core::kIgnoreLabel;
      continue;
    }
    out_labels[l] = id;
    const uint64_t counter = 2 * static_cast<uint64_t>(l);
    switch (core::replacement_for(core::to_unit(replace.at(counter)), p.mask_replace_prob, p.random_replace_prob)) {
      case core::kMaskToken:
        out_ids[l] = p.mask_token_id;
        break;
      case core::kRandomToken:
        out_ids[l] = p.random_token_ids[core::to_index(replace.at(counter + 1), p.n_random)];
        break;
      default:
        out_ids[l] = id;
        break;
    }
  }
  if (threadIdx.x == 0) {
    p.masked_words[row] = budget;
    if (p.n_words != nullptr) {
      p.n_words[row] = n;
    }
    if (p.missed_words != nullptr) {
      p.missed_words[row] = misses;
    }
    if (p.bad_position != nullptr) {
      p.bad_position[row] = sh.bad == INT_MAX ? -1 : sh.bad;
    }
    if (p.bad_score != nullptr) {
      p.bad_score[row] = sh.bad_score == INT_MAX ? -1 : sh.bad_score;
    }
  }
}

__global__ void score_table_lookup_kernel(const int64_t* keys, const float* table_values, int64_t capacity,
                                          const int64_t* queries, int64_t n, double default_value, float* values,
                                          bool* found) {
  const float absent = static_cast<float>(default_value);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t slot = core::table_find(keys, capacity, queries[i]);
    found[i] = slot >= 0;
    values[i] = slot >= 0 ? table_values[slot] : absent;
  }
}

}  // namespace

size_t mask_workspace_bytes(const MaskProblem& problem) {
  return mask_workspace_size(problem.rows, problem.length);
}

cudaError_t difference_mask(const MaskProblem& problem, void* workspace, cudaStream_t stream) {
  if (problem.rows <= 0) {
    return cudaSuccess;
  }
  if (problem.length >= INT_MAX || problem.rows > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  difference_mask_kernel<<<static_cast<unsigned>(problem.rows), kThreads, 0, stream>>>(problem, workspace);
  return cudaGetLastError();
}

cudaError_t score_table_lookup(const int64_t* keys, const float* table_values, int64_t capacity,
                               const int64_t* queries, int64_t n, double default_value, float* values, bool* found,
                               cudaStream_t stream) {
  if (n <= 0) {
    return cudaSuccess;
  }
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads < 65536 ? (n + threads - 1) / threads : 65536;
  score_table_lookup_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(keys, table_values, capacity,
                                                                                   queries, n, default_value, values,
                                                                                   found);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace diffmask_fast

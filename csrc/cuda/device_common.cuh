// Block-wide building blocks of the CUDA kernels: reductions, scans, the exponential-key table
// and an exact radix select of the k smallest 64-bit keys. Torch-free: CUDA runtime and
// csrc/core only.
#pragma once

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "../core/rng.h"

namespace diffmask_fast {
namespace cuda {
namespace device {

constexpr int kWarp = 32;

// Key of an item that must never be selected: above the bit pattern of every non-negative double.
constexpr uint64_t kExcludedKey = ~0ULL;

// ---- reductions and scans ------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarp; offset *= 2) {
    const T other = __shfl_up_sync(0xFFFFFFFFu, v, offset);
    if (lane >= offset) {
      v += other;
    }
  }
  return v;
}

// core::rescaling_shift of a row read by one warp: the power of two that brings its largest |x|
// into [1, 2), or 0 for a zero row or one holding NaN or infinity. Every lane gets the result.
template <typename T>
__device__ int warp_rescaling_shift(const T* x, int64_t n, int lane) {
  double largest = 0;
  int finite = 1;
  for (int64_t i = lane; i < n; i += kWarp) {
    const double v = fabs(static_cast<double>(x[i]));
    finite &= v <= DBL_MAX;
    largest = fmax(largest, v);
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    largest = fmax(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
    finite &= __shfl_xor_sync(0xffffffffu, finite, offset);
  }
  return finite && largest > 0 ? -ilogb(largest) : 0;
}

// Scratch of the block-wide reductions and scans: one slot per warp plus a total.
template <typename T>
struct BlockScratch {
  T warp[kWarp];
  T total;
};

// Sum over the block; every thread gets the result. Starts and ends with a barrier, so the
// scratch may be reused right away.
template <typename T>
__device__ T block_sum(T v, BlockScratch<T>& scratch) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) {
    scratch.warp[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? scratch.warp[lane] : T(0);
    w = warp_sum(w);
    if (lane == 0) {
      scratch.total = w;
    }
  }
  __syncthreads();
  return scratch.total;
}

// Exclusive prefix sum over the block in thread order; *total gets the block's sum. Starts and
// ends with a barrier.
template <typename T>
__device__ T block_exclusive_scan(T v, BlockScratch<T>& scratch, T* total) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  const T inclusive = warp_inclusive_scan(v, lane);
  __syncthreads();
  if (lane == kWarp - 1) {
    scratch.warp[warp] = inclusive;
  }
  __syncthreads();
  if (warp == 0) {
    const T w = lane < warps ? scratch.warp[lane] : T(0);
    const T scanned = warp_inclusive_scan(w, lane);
    if (lane < warps) {
      scratch.warp[lane] = scanned - w;  // exclusive offset of each warp
    }
    if (lane == kWarp - 1) {
      scratch.total = scanned;
    }
  }
  __syncthreads();
  const T result = scratch.warp[warp] + inclusive - v;
  *total = scratch.total;
  __syncthreads();
  return result;
}

// ---- the table of fast_log -------------------------------------------------------------------

// core::LogTable in shared memory (a __shared__ object cannot run its constructor): the block
// fills it entry by entry with the host's arithmetic, so keys match the CPU kernels bit for bit.
struct alignas(8) LogTableStorage {
  unsigned char bytes[sizeof(core::LogTable)];

  __device__ core::LogTable& table() { return *reinterpret_cast<core::LogTable*>(bytes); }
};

// Fills the table; ends with a barrier.
__device__ inline const core::LogTable& fill_log_table(LogTableStorage& storage) {
  core::LogTable& table = storage.table();
  for (int i = threadIdx.x; i < (1 << core::LogTable::kBits); i += blockDim.x) {
    table.fill(i);
  }
  __syncthreads();
  return table;
}

// ---- radix select ----------------------------------------------------------------------------

struct SelectScratch {
  int histogram[256];
  BlockScratch<long long> scan;
  unsigned long long prefix;
  long long need;
  int digit;
  int level;
  int exact;
};

// Outcome of select_smallest: an item with key `bits` and position i is among the k smallest
// by (key, position) iff selected(bits, rank) where rank counts the items before i whose key
// equals the threshold (needed only when ties reach the k-th key, i.e. !exact).
struct Selection {
  uint64_t prefix;  // the top (64 - level) bits of the k-th smallest key
  int level;
  long long need;   // how many of the keys with that prefix are among the k smallest
  bool exact;       // exactly `need` keys have the prefix: all of them are selected

  __device__ bool below(uint64_t bits) const { return (level == 64 ? 0 : bits >> level) < prefix; }
  __device__ bool at(uint64_t bits) const { return (level == 64 ? 0 : bits >> level) == prefix; }
};

// The k smallest of keys[0, n) (0 < k < number of keys other than kExcludedKey), by the bits of
// the keys (non-negative doubles order like their bit patterns), ties by position: the same set
// as core::select_smallest. Each pass histograms the next byte of the keys that share the
// prefix found so far; it stops as soon as the prefix singles out exactly the k smallest, so
// random keys take two or three passes. Every thread of the block must call it.
__device__ inline Selection select_smallest(const uint64_t* keys, int64_t n, long long k, SelectScratch& s) {
  uint64_t prefix = 0;
  int level = 64;
  long long need = k;
  bool exact = false;
  const int lane = threadIdx.x % kWarp;
  while (level > 0) {
    const int shift = level - 8;
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      s.histogram[d] = 0;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const uint64_t bits = keys[i];
      if (level == 64 || (bits >> level) == prefix) {
        atomicAdd(&s.histogram[(bits >> shift) & 0xFF], 1);
      }
    }
    __syncthreads();
    if (threadIdx.x < kWarp) {
      // Lane j owns digits [8j, 8j + 8): find the digit where the running count reaches `need`.
      int counts[8];
      long long own = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        counts[t] = s.histogram[lane * 8 + t];
        own += counts[t];
      }
      const long long inclusive = warp_inclusive_scan(own, lane);
      const long long before = inclusive - own;
      if (before < need && need <= inclusive) {
        long long left = need - before;
        int t = 0;
        while (counts[t] < left) {
          left -= counts[t];
          ++t;
        }
        s.digit = lane * 8 + t;
        s.need = left;
        s.exact = counts[t] == left;
      }
    }
    __syncthreads();
    prefix = (level == 64 ? 0 : prefix << 8) | static_cast<uint64_t>(s.digit);
    need = s.need;
    exact = s.exact != 0;
    level = shift;
    __syncthreads();  // s is rewritten by the next pass
    if (exact) {
      break;
    }
  }
  return Selection{prefix, level, need, exact};
}

// Writes out[i] = whether item i is selected (keys[i] among the k smallest), for a selection
// found by select_smallest; `chosen(i, selected)` receives each decision. Ties at the threshold
// (when !exact) go to the smallest positions, in rounds of blockDim.x consecutive positions.
template <typename Chosen>
__device__ void apply_selection(const uint64_t* keys, int64_t n, const Selection& sel, SelectScratch& s,
                                Chosen chosen) {
  if (sel.exact) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const uint64_t bits = keys[i];
      chosen(i, sel.below(bits) || sel.at(bits));
    }
    return;
  }
  long long taken = 0;  // ties taken in earlier rounds
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const uint64_t bits = i < n ? keys[i] : kExcludedKey;
    const bool tie = i < n && sel.at(bits);
    long long round_total;
    const long long rank = block_exclusive_scan<long long>(tie ? 1 : 0, s.scan, &round_total);
    if (i < n) {
      chosen(i, sel.below(bits) || (tie && taken + rank < sel.need));
    }
    taken += round_total;
  }
}

// ---- keys of successive sampling -------------------------------------------------------------

// Writes the keys of successive sampling of k items among those with weight_of(i) > 0 (the
// others get kExcludedKey), as core::successive_sample: E_i / w_i with E_i from draw i of
// `stream`. When fewer than k keys are finite (weights so small that E / w overflows), the
// finite ones get key 0 (they are all drawn) and the overflowed ones the keys of their weights
// scaled by the power of two that brings the largest of them into [1, 2). `largest_bits` is a
// __shared__ word of scratch. Every thread of the block must call it; ends with a barrier.
template <typename WeightOf>
__device__ void successive_sampling_keys(int64_t n, long long k, WeightOf weight_of, const core::Stream& stream,
                                         const core::LogTable& table, uint64_t* key, BlockScratch<long long>& scan,
                                         unsigned long long* largest_bits) {
  if (threadIdx.x == 0) {
    *largest_bits = 0;
  }
  __syncthreads();
  long long finite = 0;
  double largest_overflowed = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double weight = weight_of(i);
    if (weight > 0) {
      const double value = core::to_exponential(stream.at(static_cast<uint64_t>(i)), table) / weight;
      if (isinf(value)) {
        largest_overflowed = fmax(largest_overflowed, weight);
      } else {
        ++finite;
      }
      key[i] = core::bits_of(value);
    } else {
      key[i] = kExcludedKey;
    }
  }
  if (largest_overflowed > 0) {  // positive doubles order as their bits
    atomicMax(largest_bits, static_cast<unsigned long long>(core::bits_of(largest_overflowed)));
  }
  finite = block_sum<long long>(finite, scan);  // its barriers publish the keys and largest_bits
  if (finite < k) {  // the same for every thread of the block
    const int shift = -ilogb(core::double_of(*largest_bits));
    const uint64_t overflowed = core::bits_of(static_cast<double>(INFINITY));
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      if (key[i] == kExcludedKey) {
        continue;
      }
      key[i] = key[i] == overflowed
                   ? core::bits_of(core::to_exponential(stream.at(static_cast<uint64_t>(i)), table) /
                                   ldexp(weight_of(i), shift))
                   : 0;
    }
    __syncthreads();
  }
}

}  // namespace device
}  // namespace cuda
}  // namespace diffmask_fast

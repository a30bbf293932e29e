// CUDA kernels of max_anchor_similarity: a tiled matrix product whose epilogue keeps a running
// max and first arg max per row instead of writing the products out.
//
// A thread block owns a tile of rows and walks a range of anchor tiles. For each anchor tile it
// computes the [rows x anchors] dot products in registers (CUDA-core FMAs, or tensor cores for
// the TF32 / bfloat16 precisions), reduces them to one (max, arg max) per row and merges that into
// the row's running best. When there are few row tiles, the anchor tiles are split into groups
// that run in parallel and a last kernel merges the groups' (max, arg max): memory is O(groups x
// rows), never rows x anchors. The squared norms of the rows are summed while the first anchor
// tile streams them in, so each embedding is read once when one anchor tile covers all anchors
// (K <= 32 with the small-K tiles) and the search runs at the speed of reading the embeddings.
//
// Anchors are scaled to unit length first (a zero anchor stays zero: cosine 0); a row's cosine
// is its best dot product over the square root of its squared norm, as on the CPU.
#include <cuda_bf16.h>
#include <mma.h>

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "../core/similarity.h"
#include "device_common.cuh"
#include "kernels.h"

namespace diffmask_fast {
namespace cuda {
namespace {

// ---- (max, first arg max) bookkeeping ---------------------------------------------------------

// Whether candidate (v, i) beats (best_v, best_i); index -1 means "none". NaN values never become
// candidates (callers skip them), so this is a strict order: larger value, then smaller index.
template <typename T>
__device__ __forceinline__ bool better(T v, int i, T best_v, int best_i) {
  return i >= 0 && (best_i < 0 || v > best_v || (v == best_v && i < best_i));
}

template <typename T>
__device__ __forceinline__ void merge(T& best_v, int& best_i, T v, int i) {
  if (better(v, i, best_v, best_i)) {
    best_v = v;
    best_i = i;
  }
}

// Butterfly merge among groups of kWidth consecutive lanes (kWidth a power of two up to 32):
// every lane of a group ends with the group's best.
template <int kWidth, typename T>
__device__ __forceinline__ void merge_lanes(T& v, int& i) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset /= 2) {
    const T other_v = __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    const int other_i = __shfl_xor_sync(0xFFFFFFFFu, i, offset);
    merge(v, i, other_v, other_i);
  }
}

template <int kWidth, typename T>
__device__ __forceinline__ T sum_lanes(T v) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  }
  return v;
}

// Four consecutive values from 16-byte aligned shared memory.
__device__ __forceinline__ void load4(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}

__device__ __forceinline__ void load4(const double* p, double* out) {
  const double2 v0 = *reinterpret_cast<const double2*>(p);
  const double2 v1 = *reinterpret_cast<const double2*>(p + 2);
  out[0] = v0.x;
  out[1] = v0.y;
  out[2] = v1.x;
  out[3] = v1.y;
}

// ---- anchors to unit length -------------------------------------------------------------------

template <typename T>
__global__ void normalize_anchors_kernel(const T* __restrict__ anchors, int64_t k, int64_t d, T* __restrict__ units) {
  const int64_t anchor = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / device::kWarp;
  const int lane = threadIdx.x % device::kWarp;
  if (anchor >= k) {
    return;  // the whole warp
  }
  const T* a = anchors + anchor * d;
  // In double, as the CPU kernel: a float32 sum of squares over- or underflows (norms beyond
  // about 4e9 or below 1e-19), and the anchors are normalized once.
  double squares = 0;
  for (int64_t j = lane; j < d; j += device::kWarp) {
    squares += static_cast<double>(a[j]) * static_cast<double>(a[j]);
  }
  squares = device::warp_sum(squares);
  // Float64 values beyond ~1e154 or below ~1e-154 over- or underflow even the double sum: such
  // rows are scaled by a power of two first (exact), as the CPU kernel does.
  int shift = 0;
  if (!(squares >= DBL_MIN && squares <= DBL_MAX)) {
    shift = device::warp_rescaling_shift(a, d, lane);
    if (shift != 0) {
      squares = 0;
      for (int64_t j = lane; j < d; j += device::kWarp) {
        const double v = ldexp(static_cast<double>(a[j]), shift);
        squares += v * v;
      }
      squares = device::warp_sum(squares);
    }
  }
  const double norm = sqrt(squares);
  const double scale = norm > 0 ? 1.0 / norm : 0.0;  // NaN anchors keep their NaNs and never win
  for (int64_t j = lane; j < d; j += device::kWarp) {
    units[anchor * d + j] = static_cast<T>(ldexp(static_cast<double>(a[j]), shift) * scale);
  }
}

// ---- CUDA-core kernel ---------------------------------------------------------------------------
//
// Tile of BM rows x BN anchors, BK dimensions per step, double-buffered in shared memory (stored
// transposed, [BK][BM + 4], so a thread reads its TM rows and TN anchors as float4s without bank
// conflicts), next step's values prefetched into registers during the FMAs. Thread (ty, tx) owns
// rows {g * BM / (TM / 4) + 4 ty + r} and anchors {h * BN / (TN / 4) + 4 tx + c}. Rows of a
// thread's row group are spread over the TX consecutive lanes that share ty, which merge their
// per-row best by shuffles.
template <typename T, int BM, int BN, int BK, int TM, int TN, int kMinBlocks>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), kMinBlocks)
    simt_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t ld, const T* __restrict__ units, int64_t k,
                int64_t tiles_per_group, T* __restrict__ part_value, int32_t* __restrict__ part_index,
                T* __restrict__ norms) {
  constexpr int TX = BN / TN;
  constexpr int TY = BM / TM;
  constexpr int kThreads = TX * TY;
  constexpr int P = kThreads / BM;  // loader threads per row
  constexpr int EA = BK / P;        // values each loads per step
  constexpr int Q = kThreads / BN;  // loader threads per anchor
  constexpr int EB = BK / Q;
  constexpr int kPad = 4;
  static_assert(kThreads % BM == 0 && BK % P == 0 && kThreads % BN == 0 && BK % Q == 0, "loader layout");
  static_assert(TM % 4 == 0 && TN % 4 == 0 && 32 % TX == 0 && 32 % P == 0, "thread layout");
  __shared__ __align__(16) T As[2][BK][BM + kPad];
  __shared__ __align__(16) T Bs[2][BK][BN + kPad];
  // Running best of each row over the anchor tiles seen so far. Row r is only ever touched by
  // the tx == 0 lane of its row group, so it needs no barrier; keeping it here rather than in
  // registers leaves the registers to the accumulators.
  __shared__ T run_v[BM];
  __shared__ int run_i[BM];

  const int tid = threadIdx.x;
  const int tx = tid % TX;
  const int ty = tid / TX;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t anchor_tiles = (k + BN - 1) / BN;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_group;
  const int64_t tile_end = tile_begin + tiles_per_group < anchor_tiles ? tile_begin + tiles_per_group : anchor_tiles;
  const bool want_norms = blockIdx.y == 0;

  const int a_row = tid / P;
  const int a_k = (tid % P) * EA;
  const int b_row = tid / Q;
  const int b_k = (tid % Q) * EB;
  const int64_t a_global = row0 + a_row;
  const bool a_ok = a_global < n;
  const T* a_src = x + (a_ok ? a_global : 0) * ld;
  const int64_t chunks = (d + BK - 1) / BK;

  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = (i / 4) * (BM / (TM / 4)) + ty * 4 + (i % 4);
      run_v[r] = 0;
      run_i[r] = -1;
    }
  }
  T squares = 0;  // of this thread's share of row a_row, on the first anchor tile

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t col0 = tile * BN;
    const int64_t b_global = col0 + b_row;
    const bool b_ok = b_global < k;
    const T* b_src = units + (b_ok ? b_global : 0) * d;
    const bool first = want_norms && tile == tile_begin;

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        acc[i][j] = 0;
      }
    }
    T ra[EA];
    T rb[EB];
    auto load = [&](int64_t chunk) {
      const int64_t k0 = chunk * BK;
      if (k0 + BK <= d) {  // a full step: only the row and anchor bounds matter
#pragma unroll
        for (int e = 0; e < EA; ++e) {
          ra[e] = a_ok ? a_src[k0 + a_k + e] : T(0);
        }
#pragma unroll
        for (int e = 0; e < EB; ++e) {
          rb[e] = b_ok ? b_src[k0 + b_k + e] : T(0);
        }
        return;
      }
#pragma unroll
      for (int e = 0; e < EA; ++e) {
        const int64_t kk = k0 + a_k + e;
        ra[e] = a_ok && kk < d ? a_src[kk] : T(0);
      }
#pragma unroll
      for (int e = 0; e < EB; ++e) {
        const int64_t kk = k0 + b_k + e;
        rb[e] = b_ok && kk < d ? b_src[kk] : T(0);
      }
    };
    auto store = [&](int buffer) {
#pragma unroll
      for (int e = 0; e < EA; ++e) {
        As[buffer][a_k + e][a_row] = ra[e];
        if (first) {
          squares += ra[e] * ra[e];
        }
      }
#pragma unroll
      for (int e = 0; e < EB; ++e) {
        Bs[buffer][b_k + e][b_row] = rb[e];
      }
    };

    load(0);
    store(0);
    __syncthreads();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int buffer = static_cast<int>(chunk & 1);
      if (chunk + 1 < chunks) {
        load(chunk + 1);
      }
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        T a[TM];
        T b[TN];
#pragma unroll
        for (int g = 0; g < TM / 4; ++g) {
          load4(&As[buffer][kk][g * (BM / (TM / 4)) + ty * 4], a + 4 * g);
        }
#pragma unroll
        for (int h = 0; h < TN / 4; ++h) {
          load4(&Bs[buffer][kk][h * (BN / (TN / 4)) + tx * 4], b + 4 * h);
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < TN; ++j) {
            acc[i][j] += a[i] * b[j];
          }
        }
      }
      if (chunk + 1 < chunks) {
        store(buffer ^ 1);
      }
      __syncthreads();
    }

    // Epilogue: each row's best anchor of this tile, merged into its running best.
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      T best_v = 0;
      int best_i = -1;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t col = col0 + (j / 4) * (BN / (TN / 4)) + tx * 4 + (j % 4);
        const T v = acc[i][j];
        if (col < k && !isnan(v)) {
          merge(best_v, best_i, v, static_cast<int>(col));
        }
      }
      merge_lanes<TX>(best_v, best_i);
      if (tx == 0) {
        const int r = (i / 4) * (BM / (TM / 4)) + ty * 4 + (i % 4);
        merge(run_v[r], run_i[r], best_v, best_i);
      }
    }
  }

  if (want_norms) {
    const T total = sum_lanes<P>(squares);
    if (tid % P == 0 && a_ok) {
      norms[a_global] = total;
    }
  }
  if (tx == 0) {
    const int64_t base = static_cast<int64_t>(blockIdx.y) * n;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = (i / 4) * (BM / (TM / 4)) + ty * 4 + (i % 4);
      if (row0 + r < n) {
        part_value[base + row0 + r] = run_v[r];
        part_index[base + row0 + r] = run_i[r];
      }
    }
  }
}

// ---- tensor-core kernel (TF32 or bfloat16 inputs, float32 accumulation) -------------------------
//
// Tile of 128 rows x 64 anchors, 32 dimensions per step; eight warps, each a 32 x 32 block of
// 16 x 16 WMMA fragments. The accumulators go through shared memory to the epilogue, where two
// threads share a row.
constexpr int kWmmaRows = 128;
constexpr int kWmmaAnchors = 64;
constexpr int kWmmaThreads = 256;

template <bool kBf16>
__global__ void __launch_bounds__(kWmmaThreads, 1)
    wmma_kernel(const float* __restrict__ x, int64_t n, int64_t d, int64_t ld, const float* __restrict__ units,
                int64_t k, int64_t tiles_per_group, float* __restrict__ part_value, int32_t* __restrict__ part_index,
                float* __restrict__ norms) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  // Staged inputs: TF32 fragments load float and round, bfloat16 ones load bfloat16.
  using Element = typename std::conditional<kBf16, __nv_bfloat16, float>::type;
  using Precision = typename std::conditional<kBf16, __nv_bfloat16, wmma::precision::tf32>::type;
  constexpr int BM = kWmmaRows, BN = kWmmaAnchors, BK = 32;
  constexpr int kStep = kBf16 ? 16 : 8;               // k of one MMA
  constexpr int kPitch = BK + (kBf16 ? 8 : 4);         // staged rows, in elements (16-byte multiple)
  constexpr int kPitchC = BN + 4;                      // accumulator rows, in floats
  constexpr size_t kStageA = sizeof(Element) * BM * kPitch;
  constexpr size_t kStageB = sizeof(Element) * BN * kPitch;
  constexpr size_t kTileC = sizeof(float) * BM * kPitchC;
  constexpr int P = kWmmaThreads / BM, EA = BK / P;
  constexpr int Q = kWmmaThreads / BN, EB = BK / Q;
  // The staged inputs and the accumulator tile are never live together: one buffer holds both.
  __shared__ __align__(128) unsigned char smem[kStageA + kStageB > kTileC ? kStageA + kStageB : kTileC];
  Element (*stage_a)[kPitch] = reinterpret_cast<Element (*)[kPitch]>(smem);
  Element (*stage_b)[kPitch] = reinterpret_cast<Element (*)[kPitch]>(smem + kStageA);
  float (*tile_c)[kPitchC] = reinterpret_cast<float (*)[kPitchC]>(smem);
  auto to_element = [](float v) -> Element {
    if constexpr (kBf16) {
      return __float2bfloat16_rn(v);
    } else {
      return v;  // rounded to TF32 when loaded into fragments
    }
  };

  const int tid = threadIdx.x;
  const int warp = tid / device::kWarp;
  const int warp_m = warp % 4;  // rows [32 warp_m, +32)
  const int warp_n = warp / 4;  // anchors [32 warp_n, +32)
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t anchor_tiles = (k + BN - 1) / BN;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_group;
  const int64_t tile_end = tile_begin + tiles_per_group < anchor_tiles ? tile_begin + tiles_per_group : anchor_tiles;
  const bool want_norms = blockIdx.y == 0;

  const int a_row = tid / P;  // also the row this thread (with its neighbour) reduces
  const int a_k = (tid % P) * EA;
  const int b_row = tid / Q;
  const int b_k = (tid % Q) * EB;
  const int64_t a_global = row0 + a_row;
  const bool a_ok = a_global < n;
  const float* a_src = x + (a_ok ? a_global : 0) * ld;
  const int64_t chunks = (d + BK - 1) / BK;

  float run_v = 0;
  int run_i = -1;
  float squares = 0;  // of this thread's share of row a_row, on the first anchor tile

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t col0 = tile * BN;
    const int64_t b_global = col0 + b_row;
    const bool b_ok = b_global < k;
    const float* b_src = units + (b_ok ? b_global : 0) * d;
    const bool first = want_norms && tile == tile_begin;

    wmma::fragment<wmma::accumulator, 16, 16, kStep, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fill_fragment(acc[i][j], 0.0f);
      }
    }
    float ra[EA];
    float rb[EB];
    auto load = [&](int64_t chunk) {
      const int64_t k0 = chunk * BK;
#pragma unroll
      for (int e = 0; e < EA; ++e) {
        const int64_t kk = k0 + a_k + e;
        ra[e] = a_ok && kk < d ? a_src[kk] : 0.0f;
      }
#pragma unroll
      for (int e = 0; e < EB; ++e) {
        const int64_t kk = k0 + b_k + e;
        rb[e] = b_ok && kk < d ? b_src[kk] : 0.0f;
      }
    };
    load(0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      __syncthreads();  // the previous step's fragments (or the last epilogue) are read
#pragma unroll
      for (int e = 0; e < EA; ++e) {
        stage_a[a_row][a_k + e] = to_element(ra[e]);
        if (first) {
          squares += ra[e] * ra[e];
        }
      }
#pragma unroll
      for (int e = 0; e < EB; ++e) {
        stage_b[b_row][b_k + e] = to_element(rb[e]);
      }
      __syncthreads();
      if (chunk + 1 < chunks) {
        load(chunk + 1);  // in flight during the MMAs
      }
#pragma unroll
      for (int kk = 0; kk < BK; kk += kStep) {
        wmma::fragment<wmma::matrix_b, 16, 16, kStep, Precision, wmma::col_major> b_frag[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::load_matrix_sync(b_frag[j], &stage_b[warp_n * 32 + j * 16][kk], kPitch);
          if constexpr (!kBf16) {
#pragma unroll
            for (int t = 0; t < b_frag[j].num_elements; ++t) {
              b_frag[j].x[t] = wmma::__float_to_tf32(b_frag[j].x[t]);
            }
          }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, kStep, Precision, wmma::row_major> a_frag;
          wmma::load_matrix_sync(a_frag, &stage_a[warp_m * 32 + i * 16][kk], kPitch);
          if constexpr (!kBf16) {
#pragma unroll
            for (int t = 0; t < a_frag.num_elements; ++t) {
              a_frag.x[t] = wmma::__float_to_tf32(a_frag.x[t]);
            }
          }
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            wmma::mma_sync(acc[i][j], a_frag, b_frag[j], acc[i][j]);
          }
        }
      }
    }
    __syncthreads();  // the staged inputs are dead; the accumulators take their place
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::store_matrix_sync(&tile_c[warp_m * 32 + i * 16][warp_n * 32 + j * 16], acc[i][j], kPitchC,
                                wmma::mem_row_major);
      }
    }
    __syncthreads();
    float best_v = 0;
    int best_i = -1;
    const int half = tid % P;
#pragma unroll 8
    for (int j = 0; j < BN / P; ++j) {
      const int c = half * (BN / P) + j;
      const int64_t col = col0 + c;
      const float v = tile_c[a_row][c];
      if (col < k && !isnan(v)) {
        merge(best_v, best_i, v, static_cast<int>(col));
      }
    }
    merge_lanes<P>(best_v, best_i);
    merge(run_v, run_i, best_v, best_i);
  }

  if (want_norms) {
    const float total = sum_lanes<P>(squares);
    if (tid % P == 0 && a_ok) {
      norms[a_global] = total;
    }
  }
  if (tid % P == 0 && a_ok) {
    const int64_t at = static_cast<int64_t>(blockIdx.y) * n + a_global;
    part_value[at] = run_v;
    part_index[at] = run_i;
  }
#else
  __trap();  // the host never launches it below compute capability 8.0
#endif
}

// ---- merge of the groups and the final division by the norm -----------------------------------

// Whether a sum of squares may have over- or underflowed (or is zero or NaN): measured again.
__device__ __forceinline__ bool out_of_range(float x) { return !(x >= FLT_MIN && x <= FLT_MAX); }
__device__ __forceinline__ bool out_of_range(double x) { return !(x >= DBL_MIN && x <= DBL_MAX); }

// The best (dot product, first anchor) of row ``e`` scaled by 2^shift against the unit anchors,
// in double: products of float32 values beyond ~1e19 overflow and those below ~1e-19 lose digits
// to subnormals, so a row whose sum of squares left the range is searched again here, as the CPU
// kernel does. One thread, K x D products: slow, and rare.
template <typename T>
__device__ void rescaled_row_max(const T* __restrict__ e, int shift, const T* __restrict__ units, int64_t k,
                                 int64_t d, double& best_v, int& best_i) {
  best_v = 0;
  best_i = -1;
  for (int64_t anchor = 0; anchor < k; ++anchor) {
    const T* u = units + anchor * d;
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) {
      dot += ldexp(static_cast<double>(e[j]), shift) * static_cast<double>(u[j]);
    }
    if (!isnan(dot)) {
      merge(best_v, best_i, dot, static_cast<int>(anchor));
    }
  }
}

template <typename T>
__global__ void finish_kernel(const T* __restrict__ part_value, const int32_t* __restrict__ part_index,
                              int64_t groups, int64_t n, const T* __restrict__ norms,
                              const T* __restrict__ embeddings, int64_t d, int64_t ld, const T* __restrict__ units,
                              int64_t k, float* __restrict__ values, int64_t* __restrict__ indices) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T merged_v = 0;
    int best_i = -1;
    for (int64_t g = 0; g < groups; ++g) {
      merge(merged_v, best_i, part_value[g * n + row], part_index[g * n + row]);
    }
    double best_v = static_cast<double>(merged_v);
    double norm = sqrt(static_cast<double>(norms[row]));
    if (out_of_range(norms[row])) {
      // Rare: a sum of squares out of range (float32 beyond ~1.8e19 or below ~1e-38), or a zero
      // or non-finite row, measured again by this thread in double, scaled by a power of two
      // so that float64 values beyond ~1e154 or below ~1e-154 do not over- or underflow it, and
      // searched again scaled (its products over- or underflowed too).
      const T* e = embeddings + row * ld;
      double largest = 0;
      for (int64_t j = 0; j < d; ++j) {
        largest = fmax(largest, fabs(static_cast<double>(e[j])));  // NaN: fmax keeps the other
      }
      bool finite = largest <= DBL_MAX;
      for (int64_t j = 0; finite && j < d; ++j) {
        finite = isfinite(static_cast<double>(e[j]));
      }
      const int shift = finite && largest > 0 ? -ilogb(largest) : 0;
      double squares = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double v = ldexp(static_cast<double>(e[j]), shift);
        squares += v * v;
      }
      norm = finite ? sqrt(squares) : NAN;  // of the scaled row, as the dot products below
      if (finite && largest > 0) {
        rescaled_row_max(e, shift, units, k, d, best_v, best_i);
      }
    }
    float value;
    int64_t index;
    if (!isfinite(norm)) {
      value = NAN;  // NaN or infinity in the row, as the CPU kernel
      index = 0;
    } else if (norm > 0) {
      // Every product NaN (all anchors NaN): NaN at anchor 0, as the CPU kernel.
      value = best_i < 0 ? NAN : core::cosine_in_range(best_v / norm);
      index = best_i < 0 ? 0 : best_i;
    } else {
      value = 0.0f;  // zero vector: similarity 0 to every anchor
      index = 0;
    }
    values[row] = value;
    indices[row] = index;
  }
}

// ---- plans ------------------------------------------------------------------------------------

enum Kernel : int { kSimtSmall = 0, kSimtLarge = 1, kSimtDouble = 2, kWmmaTf32 = 3, kWmmaBf16 = 4 };

// CUDA-core tiles: (type, BM, BN, BK, TM, TN, blocks per multiprocessor). Small: 64 x 32 for
// K <= 32 (one anchor tile, so the embeddings stream through once; 16 dimensions per step keep
// enough loads in flight to approach the memory bandwidth). Large: 128 x 128 with 8 x 8 per
// thread. Double: 64 x 64 with 4 x 4 per thread. First knobs if a GPU runs them below target:
// BK (more bytes in flight per step) and the blocks per multiprocessor (register budget).
#define DIFFMASK_FAST_SIMT_SMALL float, 64, 32, 16, 4, 4, 4
#define DIFFMASK_FAST_SIMT_LARGE float, 128, 128, 8, 8, 8, 2
#define DIFFMASK_FAST_SIMT_DOUBLE double, 64, 64, 8, 4, 4, 2

struct KernelShape {
  int rows;
  int anchors;
  int threads;
  const void* function;
};

KernelShape shape_of(int kernel) {
  switch (kernel) {
    case kSimtSmall:
      return {64, 32, 128, reinterpret_cast<const void*>(&simt_kernel<DIFFMASK_FAST_SIMT_SMALL>)};
    case kSimtLarge:
      return {128, 128, 256, reinterpret_cast<const void*>(&simt_kernel<DIFFMASK_FAST_SIMT_LARGE>)};
    case kSimtDouble:
      return {64, 64, 256, reinterpret_cast<const void*>(&simt_kernel<DIFFMASK_FAST_SIMT_DOUBLE>)};
    case kWmmaTf32:
      return {kWmmaRows, kWmmaAnchors, kWmmaThreads, reinterpret_cast<const void*>(&wmma_kernel<false>)};
    default:
      return {kWmmaRows, kWmmaAnchors, kWmmaThreads, reinterpret_cast<const void*>(&wmma_kernel<true>)};
  }
}

size_t align256(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

struct Workspace {
  void* units;
  void* norms;
  void* part_value;
  int32_t* part_index;
};

Workspace carve(const SimilarityProblem& p, const SimilarityPlan& plan, void* base, size_t* total) {
  const size_t element = p.float64 ? sizeof(double) : sizeof(float);
  unsigned char* at = static_cast<unsigned char*>(base);
  Workspace w;
  size_t offset = 0;
  w.units = at + offset;
  offset += align256(element * static_cast<size_t>(p.k) * static_cast<size_t>(p.d));
  w.norms = at + offset;
  offset += align256(element * static_cast<size_t>(p.n));
  w.part_value = at + offset;
  offset += align256(element * static_cast<size_t>(plan.groups) * static_cast<size_t>(p.n));
  w.part_index = reinterpret_cast<int32_t*>(at + offset);
  offset += align256(sizeof(int32_t) * static_cast<size_t>(plan.groups) * static_cast<size_t>(p.n));
  *total = offset;
  return w;
}

template <typename T, int BM, int BN, int BK, int TM, int TN, int kMinBlocks>
void launch_simt(const SimilarityProblem& p, const SimilarityPlan& plan, const Workspace& w, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.groups));
  constexpr int kThreads = (BM / TM) * (BN / TN);
  simt_kernel<T, BM, BN, BK, TM, TN, kMinBlocks><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(p.embeddings), p.n, p.d, p.ld, static_cast<const T*>(w.units), p.k, plan.tiles_per_group,
      static_cast<T*>(w.part_value), w.part_index, static_cast<T*>(w.norms));
}

template <bool kBf16>
void launch_wmma(const SimilarityProblem& p, const SimilarityPlan& plan, const Workspace& w, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.groups));
  wmma_kernel<kBf16><<<grid, kWmmaThreads, 0, stream>>>(
      static_cast<const float*>(p.embeddings), p.n, p.d, p.ld, static_cast<const float*>(w.units), p.k,
      plan.tiles_per_group, static_cast<float*>(w.part_value), w.part_index, static_cast<float*>(w.norms));
}

template <typename T>
void launch_prologue_epilogue(const SimilarityProblem& p, const SimilarityPlan& plan, const Workspace& w,
                              cudaStream_t stream, bool prologue) {
  const int threads = 256;
  if (prologue) {
    const int64_t blocks = (p.k * device::kWarp + threads - 1) / threads;
    normalize_anchors_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        static_cast<const T*>(p.anchors), p.k, p.d, static_cast<T*>(w.units));
  } else {
    const int64_t needed = (p.n + threads - 1) / threads;
    const int64_t blocks = needed < 65536 ? needed : 65536;
    finish_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        static_cast<const T*>(w.part_value), w.part_index, plan.groups, p.n, static_cast<const T*>(w.norms),
        static_cast<const T*>(p.embeddings), p.d, p.ld, static_cast<const T*>(w.units), p.k, p.values, p.indices);
  }
}

// A failed runtime query leaves its error as CUDA's "last error", which the next launch check of
// any torch op would report as its own: the error is read back here, so the caller alone sees it.
cudaError_t cleared(cudaError_t status) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
  }
  return status;
}

}  // namespace

TensorCoreSupport tensor_core_support(int device) {
  // The code that runs must have been compiled for this device at all (else no kernel of the
  // extension runs on it), and for compute capability 8.0 or later: a build for older
  // architectures only (say TORCH_CUDA_ARCH_LIST=7.5+PTX) runs PTX whose tensor-core body is a
  // trap. ptxVersion is the virtual architecture the kernel was compiled for.
  int current = 0;
  cudaFuncAttributes attributes;
  if (cleared(cudaGetDevice(&current)) != cudaSuccess || cleared(cudaSetDevice(device)) != cudaSuccess) {
    return TensorCoreSupport::kOldGpuOrBuild;
  }
  const cudaError_t status = cleared(cudaFuncGetAttributes(&attributes, wmma_kernel<false>));
  cleared(cudaSetDevice(current));
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    return TensorCoreSupport::kNoKernelForDevice;
  }
  int major = 0;
  if (cleared(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess ||
      major < 8 || status != cudaSuccess || attributes.ptxVersion < 80) {
    return TensorCoreSupport::kOldGpuOrBuild;
  }
  return TensorCoreSupport::kSupported;
}

cudaError_t plan_max_anchor_similarity(const SimilarityProblem& p, int device, SimilarityPlan* plan) {
  if (p.n < 0 || p.d < 1 || p.k < 1 || p.k > 0x7FFFFFFF) {
    return cudaErrorInvalidValue;
  }
  SimilarityPlan out;
  if (p.float64) {
    out.kernel = kSimtDouble;
  } else if (p.precision == Precision::kTf32) {
    out.kernel = kWmmaTf32;
  } else if (p.precision == Precision::kBf16) {
    out.kernel = kWmmaBf16;
  } else {
    out.kernel = p.k <= 32 ? kSimtSmall : kSimtLarge;
  }
  const KernelShape shape = shape_of(out.kernel);
  out.block_rows = shape.rows;
  out.block_anchors = shape.anchors;
  out.row_tiles = (p.n + shape.rows - 1) / shape.rows;
  out.anchor_tiles = (p.k + shape.anchors - 1) / shape.anchors;
  if (out.row_tiles > 0x7FFFFFFF) {
    return cudaErrorInvalidValue;
  }

  int multiprocessors = 0;
  cudaError_t status = cleared(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  if (status != cudaSuccess) {
    return status;
  }
  int per_multiprocessor = 0;
  status = cleared(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, shape.function, shape.threads, 0));
  if (status != cudaSuccess) {
    return status;
  }
  const int64_t slots = static_cast<int64_t>(multiprocessors) * (per_multiprocessor > 0 ? per_multiprocessor : 1);

  // Groups of anchor tiles: the fewest that minimize (waves of blocks) x (tiles per block).
  int64_t best_groups = 1;
  int64_t best_cost = -1;
  const int64_t row_tiles = out.row_tiles > 0 ? out.row_tiles : 1;
  int64_t limit = out.anchor_tiles < 8 * slots ? out.anchor_tiles : 8 * slots;
  limit = limit < 65535 ? limit : 65535;
  for (int64_t groups = 1; groups <= limit; ++groups) {
    const int64_t per_group = (out.anchor_tiles + groups - 1) / groups;
    const int64_t waves = (row_tiles * groups + slots - 1) / slots;
    const int64_t cost = waves * per_group;
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best_groups = groups;
    }
  }
  out.tiles_per_group = (out.anchor_tiles + best_groups - 1) / best_groups;
  out.groups = (out.anchor_tiles + out.tiles_per_group - 1) / out.tiles_per_group;
  carve(p, out, nullptr, &out.workspace_bytes);
  *plan = out;
  return cudaSuccess;
}

cudaError_t max_anchor_similarity(const SimilarityProblem& p, const SimilarityPlan& plan, void* workspace,
                                  cudaStream_t stream) {
  if (p.n == 0) {
    return cudaSuccess;
  }
  size_t total = 0;
  const Workspace w = carve(p, plan, workspace, &total);
  if (p.float64) {
    launch_prologue_epilogue<double>(p, plan, w, stream, true);
  } else {
    launch_prologue_epilogue<float>(p, plan, w, stream, true);
  }
  switch (plan.kernel) {
    case kSimtSmall:
      launch_simt<DIFFMASK_FAST_SIMT_SMALL>(p, plan, w, stream);
      break;
    case kSimtLarge:
      launch_simt<DIFFMASK_FAST_SIMT_LARGE>(p, plan, w, stream);
      break;
    case kSimtDouble:
      launch_simt<DIFFMASK_FAST_SIMT_DOUBLE>(p, plan, w, stream);
      break;
    case kWmmaTf32:
      launch_wmma<false>(p, plan, w, stream);
      break;
    default:
      launch_wmma<true>(p, plan, w, stream);
      break;
  }
  if (p.float64) {
    launch_prologue_epilogue<double>(p, plan, w, stream, false);
  } else {
    launch_prologue_epilogue<float>(p, plan, w, stream, false);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace diffmask_fast

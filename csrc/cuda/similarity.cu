// CUDA kernels of max_anchor_similarity, by one of two methods (similarity_plan.h):
//
// - Fused, for few anchors (K <= 32): a tiled product whose epilogue keeps a running max and
//   first arg max per row instead of writing the products out. The squared norms of the rows are
//   summed while the tile streams them in, so every embedding is read once and the search runs
//   at the speed of reading the embeddings.
// - Blocked, for more: blocks of the [rows x anchors] product by the caller's matrix-product
//   routine (torch's cuBLAS in the extension: a hand-written product reaches a fraction of its
//   rate, above all on tensor cores), each reduced by a kernel that merges its per-row (max,
//   first arg max) into the rows' running best. Memory: one block, never rows x anchors. The
//   bfloat16 precisions first write the operands in bfloat16 (the anchors once, the rows block
//   by block, their squared norms summed on the way).
// - Without a product routine (the extension passes none where torch's float32 products could be
//   TF32), the fused kernel searches every K, with larger tiles beyond 32 anchors.
//
// Anchors are scaled to unit length first (a zero anchor stays zero: cosine 0); a row's cosine
// is its best dot product over the square root of its squared norm, as on the CPU.
#include <cuda_bf16.h>

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

// ---- fused kernel ---------------------------------------------------------------------------------
//
// Tile of BM rows x BN anchors, BK dimensions per step, double-buffered in shared memory (stored
// transposed, [BK][BM + 4], so a thread reads its TM rows and TN anchors as float4s without bank
// conflicts), next step's values prefetched into registers during the FMAs. Thread (ty, tx) owns
// rows {g * BM / (TM / 4) + 4 ty + r} and anchors {h * BN / (TN / 4) + 4 tx + c}. Rows of a
// thread's row group are spread over the TX consecutive lanes that share ty, which merge their
// per-row best by shuffles. Loading, thread t reads dimension t % BK of rows t / BK + e kThreads
// / BK (and anchors alike): the BK consecutive lanes that share a row read consecutive addresses,
// so every load instruction of a warp reads whole 32-byte sectors (one value per lane from 32 /
// BK rows), where BK values of one row per thread made each instruction touch a sector per lane.
template <typename T, int BM, int BN, int BK, int TM, int TN, int kMinBlocks>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), kMinBlocks)
    simt_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t ld, const T* __restrict__ units, int64_t k,
                T* __restrict__ best_value, int32_t* __restrict__ best_index, T* __restrict__ norms) {
  constexpr int TX = BN / TN;
  constexpr int TY = BM / TM;
  constexpr int kThreads = TX * TY;
  constexpr int kPassRows = kThreads / BK;  // rows (or anchors) loaded per pass of all threads
  constexpr int EA = BM / kPassRows;        // passes (values each thread loads) per step: rows
  constexpr int EB = BN / kPassRows;        // anchors
  constexpr int kPad = 4;
  static_assert(kThreads % BK == 0 && BM % kPassRows == 0 && BN % kPassRows == 0 && 32 % BK == 0, "loader layout");
  static_assert(TM % 4 == 0 && TN % 4 == 0 && 32 % TX == 0, "thread layout");
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

  const int load_k = tid % BK;    // the dimension this thread loads
  const int load_row = tid / BK;  // its first row (and anchor) of the tile; then every kPassRows
  const int64_t rows_left = n - row0 - load_row;  // pass e loads a row when e * kPassRows < rows_left
  const T* a_src = x + (row0 + load_row) * ld + load_k;
  const int64_t a_pass = static_cast<int64_t>(kPassRows) * ld;
  const int64_t chunks = (d + BK - 1) / BK;

  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = (i / 4) * (BM / (TM / 4)) + ty * 4 + (i % 4);
      run_v[r] = 0;
      run_i[r] = -1;
    }
  }
  T squares[EA];  // of this thread's values of each of its rows, on the first anchor tile
#pragma unroll
  for (int e = 0; e < EA; ++e) {
    squares[e] = 0;
  }

  for (int64_t tile = 0; tile < anchor_tiles; ++tile) {
    const int64_t col0 = tile * BN;
    const int64_t anchors_left = k - col0 - load_row;
    const T* b_src = units + (col0 + load_row) * d + load_k;
    const int64_t b_pass = static_cast<int64_t>(kPassRows) * d;
    const bool first = tile == 0;

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
      const bool in_row = k0 + load_k < d;
#pragma unroll
      for (int e = 0; e < EA; ++e) {
        ra[e] = in_row && e * kPassRows < rows_left ? a_src[e * a_pass + k0] : T(0);
      }
#pragma unroll
      for (int e = 0; e < EB; ++e) {
        rb[e] = in_row && e * kPassRows < anchors_left ? b_src[e * b_pass + k0] : T(0);
      }
    };
    auto store = [&](int buffer) {
#pragma unroll
      for (int e = 0; e < EA; ++e) {
        As[buffer][load_k][load_row + e * kPassRows] = ra[e];
        if (first) {
          squares[e] += ra[e] * ra[e];
        }
      }
#pragma unroll
      for (int e = 0; e < EB; ++e) {
        Bs[buffer][load_k][load_row + e * kPassRows] = rb[e];
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

  // The BK lanes that loaded a row sum its squares.
#pragma unroll
  for (int e = 0; e < EA; ++e) {
    const T total = sum_lanes<BK>(squares[e]);
    if (load_k == 0 && e * kPassRows < rows_left) {
      norms[row0 + load_row + e * kPassRows] = total;
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = (i / 4) * (BM / (TM / 4)) + ty * 4 + (i % 4);
      if (row0 + r < n) {
        best_value[row0 + r] = run_v[r];
        best_index[row0 + r] = run_i[r];
      }
    }
  }
}

// ---- blocked method: operands and squared norms of the rows, merge of a block of products -------

// Squared norms of rows [0, n) of x (when `norms` is set) and, for the bfloat16 precisions, their
// bfloat16 operands (when `operand` is set, rows `operand_ld` apart): kBf16 the rounded values;
// kBf16x3 splits each value v into hi = bf16(v) and lo = bf16(v - hi) (v - hi is exact in
// float32) and writes rows as [hi | lo | hi] and anchors as [lo | hi | hi], so that one product
// of depth 3 d sums hi*lo + lo*hi + hi*hi: the small cross terms first, before the large ones
// make the running sum coarse. One warp per row.
template <typename T>
__global__ void prepare_rows_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t ld, T* __restrict__ norms,
                                    __nv_bfloat16* __restrict__ operand, int64_t operand_ld, Precision precision,
                                    bool anchor_side) {
  const int lane = threadIdx.x % device::kWarp;
  const int64_t first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / device::kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / device::kWarp;
  const bool split = precision == Precision::kBf16x3;
  for (int64_t row = first; row < n; row += stride) {
    const T* values = x + row * ld;
    T squares = 0;
    for (int64_t j = lane; j < d; j += device::kWarp) {
      const T v = values[j];
      squares += v * v;
      if constexpr (std::is_same<T, float>::value) {
        if (operand != nullptr) {
          __nv_bfloat16* out = operand + row * operand_ld;
          const __nv_bfloat16 hi = __float2bfloat16_rn(v);
          if (split) {
            const __nv_bfloat16 lo = __float2bfloat16_rn(v - __bfloat162float(hi));
            out[j] = anchor_side ? lo : hi;
            out[d + j] = anchor_side ? hi : lo;
            out[2 * d + j] = hi;
          } else {
            out[j] = hi;
          }
        }
      }
    }
    if (norms != nullptr) {
      squares = device::warp_sum(squares);
      if (lane == 0) {
        norms[row] = squares;
      }
    }
  }
}

// Merges a block of products (rows [0, rows) of `products`, anchors col0 + [0, cols)) into the
// rows' running best: the block's max (NaN never wins) and first arg max per row, then merged
// with the best of earlier blocks (`first`: there is none). Blocks come in anchor order, so ties
// go to the smaller index across blocks too. One warp per row.
template <typename T>
__global__ void merge_block_kernel(const T* __restrict__ products, int64_t rows, int64_t cols, int64_t ldc,
                                   int64_t col0, bool first, T* __restrict__ best_value,
                                   int32_t* __restrict__ best_index) {
  const int lane = threadIdx.x % device::kWarp;
  const int64_t begin = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / device::kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / device::kWarp;
  for (int64_t row = begin; row < rows; row += stride) {
    const T* block = products + row * ldc;
    T v = 0;
    int i = -1;
#pragma unroll 4
    for (int64_t c = lane; c < cols; c += device::kWarp) {
      const T product = block[c];
      if (!isnan(product)) {
        merge(v, i, product, static_cast<int>(col0 + c));
      }
    }
    merge_lanes<device::kWarp>(v, i);
    if (lane == 0) {
      if (!first) {
        T earlier_v = best_value[row];
        int earlier_i = best_index[row];
        merge(earlier_v, earlier_i, v, i);
        v = earlier_v;
        i = earlier_i;
      }
      best_value[row] = v;
      best_index[row] = i;
    }
  }
}

// ---- the final division by the norm ---------------------------------------------------------------

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
__global__ void finish_kernel(const T* __restrict__ best_value, const int32_t* __restrict__ best_index, int64_t n,
                              const T* __restrict__ norms, const T* __restrict__ embeddings, int64_t d, int64_t ld,
                              const T* __restrict__ units, int64_t k, float* __restrict__ values,
                              int64_t* __restrict__ indices) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int best_i = best_index[row];
    double best_v = static_cast<double>(best_value[row]);
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

// ---- host side -----------------------------------------------------------------------------------

// The fused kernel's float32 tiles (rows, anchors, dimensions per step, rows and anchors per
// thread, blocks per multiprocessor). Small: 64 x 32 for K <= 32 (one tile covers the anchors,
// so the embeddings stream through once; 16 dimensions per step keep enough loads in flight to
// approach the memory bandwidth). Large: 128 x 128 with 8 x 8 per thread, for more anchors where
// no product routine computes float32 products.
template <int BM, int BN, int BK, int TM, int TN, int kMinBlocks>
struct FusedTile {
  static constexpr int kRows = BM;
  static constexpr int kBlockThreads = (BM / TM) * (BN / TN);  // simt_kernel's launch bounds

  static void launch(const SimilarityProblem& p, const float* units, float* best_value, int32_t* best_index,
                     float* norms, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>((p.n + kRows - 1) / kRows));
    simt_kernel<float, BM, BN, BK, TM, TN, kMinBlocks><<<grid, kBlockThreads, 0, stream>>>(
        static_cast<const float*>(p.embeddings), p.n, p.d, p.ld, units, p.k, best_value, best_index, norms);
  }
};
using SmallTile = FusedTile<64, 32, 16, 4, 4, 4>;
using LargeTile = FusedTile<128, 128, 8, 8, 8, 2>;
static_assert(kFusedMaxAnchors <= 32, "the small tile holds every anchor");

constexpr int kThreads = 256;  // of the other kernels

struct Workspace {
  void* units;
  __nv_bfloat16* anchor_operand;
  __nv_bfloat16* row_operand;
  void* norms;
  void* best_value;
  int32_t* best_index;
  void* products;
};

Workspace carve(const SimilarityPlan& plan, void* base) {
  unsigned char* at = static_cast<unsigned char*>(base);
  return {at + plan.units,
          reinterpret_cast<__nv_bfloat16*>(at + plan.anchor_operand),
          reinterpret_cast<__nv_bfloat16*>(at + plan.row_operand),
          at + plan.norms,
          at + plan.best_value,
          reinterpret_cast<int32_t*>(at + plan.best_index),
          at + plan.products};
}

// Blocks for one warp per item, grid-stride beyond a million warps.
unsigned warp_blocks(int64_t items) {
  const int64_t warps_per_block = kThreads / device::kWarp;
  const int64_t needed = (items + warps_per_block - 1) / warps_per_block;
  return static_cast<unsigned>(needed < (int64_t{1} << 17) ? (needed > 0 ? needed : 1) : (int64_t{1} << 17));
}

template <typename T>
cudaError_t run_blocked(const SimilarityProblem& p, const SimilarityPlan& plan, const Workspace& w,
                        cudaStream_t stream) {
  const bool bf16 = !p.float64 && p.precision != Precision::kFloat32;
  const T* x = static_cast<const T*>(p.embeddings);
  const T* units = static_cast<const T*>(w.units);
  T* norms = static_cast<T*>(w.norms);
  T* products = static_cast<T*>(w.products);
  if (bf16) {
    prepare_rows_kernel<T><<<warp_blocks(p.k), kThreads, 0, stream>>>(
        units, p.k, p.d, p.d, nullptr, w.anchor_operand, plan.operand_ld, p.precision, /*anchor_side=*/true);
  }
  ProductBlock block;
  block.type = p.float64 ? ProductType::kFloat64 : (bf16 ? ProductType::kBfloat16 : ProductType::kFloat32);
  block.depth = plan.depth;
  block.c = products;
  for (int64_t row0 = 0; row0 < p.n; row0 += plan.row_block) {
    const int64_t rows = p.n - row0 < plan.row_block ? p.n - row0 : plan.row_block;
    prepare_rows_kernel<T><<<warp_blocks(rows), kThreads, 0, stream>>>(
        x + row0 * p.ld, rows, p.d, p.ld, norms + row0, bf16 ? w.row_operand : nullptr, plan.operand_ld, p.precision,
        /*anchor_side=*/false);
    block.a = bf16 ? static_cast<const void*>(w.row_operand) : static_cast<const void*>(x + row0 * p.ld);
    block.lda = bf16 ? plan.operand_ld : p.ld;
    block.rows = rows;
    for (int64_t col0 = 0; col0 < p.k; col0 += plan.anchor_block) {
      const int64_t cols = p.k - col0 < plan.anchor_block ? p.k - col0 : plan.anchor_block;
      // A launch error must reach the caller as ours, not as the product routine's.
      cudaError_t status = cudaGetLastError();
      if (status != cudaSuccess) {
        return status;
      }
      block.b = bf16 ? static_cast<const void*>(w.anchor_operand + col0 * plan.operand_ld)
                     : static_cast<const void*>(units + col0 * p.d);
      block.ldb = bf16 ? plan.operand_ld : p.d;
      block.cols = cols;
      block.ldc = cols;
      status = p.product(block, stream, p.product_context);
      if (status != cudaSuccess) {
        return status;
      }
      merge_block_kernel<T><<<warp_blocks(rows), kThreads, 0, stream>>>(
          products, rows, cols, cols, col0, col0 == 0, static_cast<T*>(w.best_value) + row0, w.best_index + row0);
    }
  }
  return cudaGetLastError();
}

template <typename T>
void normalize_anchors(const SimilarityProblem& p, const Workspace& w, cudaStream_t stream) {
  const int64_t blocks = (p.k * device::kWarp + kThreads - 1) / kThreads;
  normalize_anchors_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(p.anchors), p.k, p.d, static_cast<T*>(w.units));
}

template <typename T>
void finish(const SimilarityProblem& p, const Workspace& w, cudaStream_t stream) {
  const int64_t needed = (p.n + kThreads - 1) / kThreads;
  const int64_t blocks = needed < 65536 ? needed : 65536;
  finish_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(w.best_value), w.best_index, p.n, static_cast<const T*>(w.norms),
      static_cast<const T*>(p.embeddings), p.d, p.ld, static_cast<const T*>(w.units), p.k, p.values, p.indices);
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

Bf16Support bf16_support(int device) {
  // The extension must hold code for this device at all (else none of its kernels runs on it).
  int current = 0;
  cudaFuncAttributes attributes;
  if (cleared(cudaGetDevice(&current)) != cudaSuccess || cleared(cudaSetDevice(device)) != cudaSuccess) {
    return Bf16Support::kOldGpu;
  }
  const cudaError_t status = cleared(cudaFuncGetAttributes(&attributes, merge_block_kernel<float>));
  cleared(cudaSetDevice(current));
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    return Bf16Support::kNoKernelForDevice;
  }
  int major = 0;
  if (cleared(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess ||
      major < 8 || status != cudaSuccess) {
    return Bf16Support::kOldGpu;
  }
  return Bf16Support::kSupported;
}

cudaError_t plan_max_anchor_similarity(const SimilarityProblem& p, SimilarityPlan* plan, const BlockLimits& limits) {
  SimilaritySizes sizes;
  sizes.n = p.n;
  sizes.d = p.d;
  sizes.k = p.k;
  sizes.float64 = p.float64;
  sizes.precision = p.precision;
  sizes.products = p.product != nullptr;
  sizes.strided_rows = p.n > 1 && p.ld < p.d;
  return plan_similarity(sizes, limits, plan) ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t max_anchor_similarity(const SimilarityProblem& p, const SimilarityPlan& plan, void* workspace,
                                  cudaStream_t stream) {
  if (p.n == 0) {
    return cudaSuccess;
  }
  const bool blocked = plan.method == SimilarityMethod::kBlocked;
  if ((blocked && p.product == nullptr) || (!blocked && p.float64)) {
    return cudaErrorInvalidValue;
  }
  const bool small = p.k <= kFusedMaxAnchors;
  const int64_t tile_rows = small ? SmallTile::kRows : LargeTile::kRows;
  if (!blocked && (p.n + tile_rows - 1) / tile_rows > 0x7FFFFFFF) {
    return cudaErrorInvalidValue;
  }
  const Workspace w = carve(plan, workspace);
  if (p.float64) {
    normalize_anchors<double>(p, w, stream);
    const cudaError_t status = run_blocked<double>(p, plan, w, stream);
    if (status != cudaSuccess) {
      return status;
    }
    finish<double>(p, w, stream);
    return cudaGetLastError();
  }
  normalize_anchors<float>(p, w, stream);
  if (blocked) {
    const cudaError_t status = run_blocked<float>(p, plan, w, stream);
    if (status != cudaSuccess) {
      return status;
    }
  } else {
    const auto launch = small ? &SmallTile::launch : &LargeTile::launch;
    launch(p, static_cast<const float*>(w.units), static_cast<float*>(w.best_value), w.best_index,
           static_cast<float*>(w.norms), stream);
  }
  finish<float>(p, w, stream);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace diffmask_fast

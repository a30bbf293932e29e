// Dot products of embedding rows with anchors, near the FMA peak of the CPU.
//
// BLAS is tuned for large, square-ish products: with K ~ 20 anchors a product [rows, D] x [D, K]
// runs far below peak, and the search would take several times the time needed to read the
// embeddings. Here the anchors are packed once into panels ([D][W] floats, zero-padded), and a
// register-blocked micro-kernel walks R rows at a time along D: per step it loads one panel row,
// broadcasts one value of each of the R rows and executes R * W / lanes FMAs. Panel padding
// costs FMAs, so with AVX-512 the anchors are covered by 32- and 16-wide panels and a last few
// (K mod 16 <= 8) by a kernel that vectorizes along D instead (one horizontal sum per dot
// product, no padding). The first panel pass also prefetches the caller's next block, so memory
// streams in under the arithmetic.
//
// With 32-wide panels (many anchors) the block is packed once (each group of 12 rows as
// [D][12], one stream of broadcasts instead of 12 strided rows that share a few L1 sets) and
// D is walked in slices: a 24 KiB slice of a panel stays in L1 while every row group of the
// block multiplies it, and the next slice is prefetched meanwhile. 12 rows x 32 columns keep 24
// accumulators in the 32 zmm registers (14 loads per 24 FMAs, against 10 per 16 for 8 rows).
//
// Wheels are built for baseline x86-64, so the AVX2 and AVX-512 variants are compiled with
// function-level target attributes and chosen at run time (detect_isa). Other compilers and
// architectures get Isa::kNone, and callers use BLAS.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "similarity.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define DIFFMASK_FAST_X86_KERNELS 1
#include <immintrin.h>
#else
#define DIFFMASK_FAST_X86_KERNELS 0
#endif

namespace diffmask_fast {
namespace core {

enum class Isa { kNone = 0, kAvx2 = 1, kAvx512 = 2 };

inline Isa detect_isa() {
#if DIFFMASK_FAST_X86_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kNone;
}

// Packs anchors [first, first + count) of a row-major [K, D] matrix into one panel [D][W],
// zero-padded to W columns, appended to `packed`.
inline void pack_panel(const float* anchors, int64_t first, int64_t count, int64_t D, int64_t W,
                       std::vector<float>& packed) {
  const size_t base = packed.size();
  packed.resize(base + static_cast<size_t>(D * W), 0.0f);
  for (int64_t c = 0; c < count; ++c) {
    const float* anchor = anchors + (first + c) * D;
    for (int64_t d = 0; d < D; ++d) {
      packed[base + static_cast<size_t>(d * W + c)] = anchor[d];
    }
  }
}

#if DIFFMASK_FAST_X86_KERNELS

// GCC 12's AVX-512 headers seed some intrinsics with _mm512_undefined_*(), which trips
// -W(maybe-)uninitialized once inlined; the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define DIFFMASK_FAST_AVX512 __attribute__((target("avx512f")))
#define DIFFMASK_FAST_AVX2 __attribute__((target("avx2,fma")))

// ---- AVX-512 ---------------------------------------------------------------------------------

// Sum of the 16 lanes.
DIFFMASK_FAST_AVX512 inline float hsum_avx512(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 s = _mm512_castps512_ps128(v);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x1));
  return _mm_cvtss_f32(s);
}

// R rows x 16V columns over d in [d0, d1): R * V accumulators of 16 lanes, zeroed when d0 == 0
// and otherwise loaded from `out`, the sums over [0, d0): each lane is one chain of FMAs in the
// order of d however D is cut, so results do not depend on the cut (nor on R or V).
//
// The rows are read at x[r * ldx + d], or with PACKED at xp[d * R + r] (pack_rows_avx512), a
// single stream instead of R strided ones whose cache lines all fall in a few L1 sets. With a
// non-zero `prefetch` (in floats), the rows of x that far ahead are prefetched into L2, so the
// caller's next block streams in under the arithmetic; a non-null `prefetch_panel` is read ahead
// into L1 at the pace of `panel` (the next slice of the panels, while this one is reused).
template <int R, int V, bool PACKED>
DIFFMASK_FAST_AVX512 inline void micro_avx512(const float* x, int64_t ldx, const float* xp, int64_t d0, int64_t d1,
                                              const float* panel, float* out, int64_t ldo, int64_t prefetch,
                                              const float* prefetch_panel) {
  constexpr int W = 16 * V;
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      acc[r][v] = d0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(out + r * ldo + 16 * v);
    }
  }
  for (int64_t d = d0; d < d1; ++d) {
    if (prefetch != 0 && (d & 15) == 0) {
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(x + prefetch + r * ldx + d), _MM_HINT_T1);
      }
    }
    if (prefetch_panel != nullptr) {
      for (int v = 0; v < V; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch_panel + d * W + 16 * v), _MM_HINT_T0);
      }
    }
    __m512 a[V];
    for (int v = 0; v < V; ++v) {
      a[v] = _mm512_loadu_ps(panel + d * W + 16 * v);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(PACKED ? xp[d * R + r] : x[r * ldx + d]);
      for (int v = 0; v < V; ++v) {
        acc[r][v] = _mm512_fmadd_ps(b, a[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
    }
  }
}

// R rows x KB anchors (row-major, leading dimension D), vectorized along D.
template <int R, int KB>
DIFFMASK_FAST_AVX512 inline void rowdot_avx512(const float* x, int64_t ldx, int64_t D, const float* a, float* out,
                                               int64_t ldo) {
  __m512 acc[R][KB];
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < KB; ++k) {
      acc[r][k] = _mm512_setzero_ps();
    }
  }
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    __m512 xv[R];
    for (int r = 0; r < R; ++r) {
      xv[r] = _mm512_loadu_ps(x + r * ldx + d);
    }
    for (int k = 0; k < KB; ++k) {
      const __m512 av = _mm512_loadu_ps(a + k * D + d);
      for (int r = 0; r < R; ++r) {
        acc[r][k] = _mm512_fmadd_ps(xv[r], av, acc[r][k]);
      }
    }
  }
  if (d < D) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (D - d)) - 1u);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) {
      xv[r] = _mm512_maskz_loadu_ps(mask, x + r * ldx + d);
    }
    for (int k = 0; k < KB; ++k) {
      const __m512 av = _mm512_maskz_loadu_ps(mask, a + k * D + d);
      for (int r = 0; r < R; ++r) {
        acc[r][k] = _mm512_fmadd_ps(xv[r], av, acc[r][k]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < KB; ++k) {
      out[r * ldo + k] = hsum_avx512(acc[r][k]);
    }
  }
}

template <int R>
DIFFMASK_FAST_AVX512 inline void rowdot_anchors_avx512(const float* x, int64_t ldx, int64_t D, const float* a,
                                                       int64_t K, float* out, int64_t ldo) {
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    rowdot_avx512<R, 4>(x, ldx, D, a + k * D, out + k, ldo);
  }
  switch (K - k) {
    case 3:
      rowdot_avx512<R, 3>(x, ldx, D, a + k * D, out + k, ldo);
      break;
    case 2:
      rowdot_avx512<R, 2>(x, ldx, D, a + k * D, out + k, ldo);
      break;
    case 1:
      rowdot_avx512<R, 1>(x, ldx, D, a + k * D, out + k, ldo);
      break;
    default:
      break;
  }
}

// Rows per register block of the 32-wide kernel (24 accumulators, 2 panel vectors, 1 broadcast of
// the 32 zmm registers; 14 loads per 24 FMAs), and the step along D: a 32-wide panel slice of
// kKSlice rows (24 KiB) stays in L1 while every row group of a block walks it.
constexpr int kRows32 = 12;
constexpr int64_t kKSlice = 192;

// Row groups as panel_avx512 walks them: kRows32 rows at a time, then 8, 4 and 1. The group
// that starts at row r has group_size(rows, r) rows.
inline int64_t group_size(int64_t rows, int64_t r) {
  const int64_t full = rows / kRows32 * kRows32;
  if (r < full) {
    return kRows32;
  }
  const int64_t left = rows - r;
  return left >= 8 ? 8 : left >= 4 ? 4 : 1;
}

// The 16 x 16 floats of t transposed in place (t[j] lane i <- t[i] lane j): 32-bit and 64-bit
// interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles.
DIFFMASK_FAST_AVX512 inline void transpose16_avx512(__m512 t[16]) {
  __m512 u[16];
  for (int k = 0; k < 16; k += 2) {
    u[k] = _mm512_unpacklo_ps(t[k], t[k + 1]);      // per 128-bit lane: a0 b0 a1 b1
    u[k + 1] = _mm512_unpackhi_ps(t[k], t[k + 1]);  // a2 b2 a3 b3
  }
  __m512 v[16];  // v[4k + c], 128-bit lane L: column 4L + c of rows 4k .. 4k + 3
  for (int k = 0; k < 16; k += 4) {
    const __m512d lo0 = _mm512_castps_pd(u[k]), hi0 = _mm512_castps_pd(u[k + 1]);
    const __m512d lo1 = _mm512_castps_pd(u[k + 2]), hi1 = _mm512_castps_pd(u[k + 3]);
    v[k] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
    v[k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
    v[k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
    v[k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 w0 = _mm512_shuffle_f32x4(v[c], v[4 + c], 0x44);  // lanes 0, 1 of each
    const __m512 w1 = _mm512_shuffle_f32x4(v[c], v[4 + c], 0xEE);  // lanes 2, 3
    const __m512 w2 = _mm512_shuffle_f32x4(v[8 + c], v[12 + c], 0x44);
    const __m512 w3 = _mm512_shuffle_f32x4(v[8 + c], v[12 + c], 0xEE);
    t[c] = _mm512_shuffle_f32x4(w0, w2, 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(w0, w2, 0xDD);
    t[8 + c] = _mm512_shuffle_f32x4(w1, w3, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(w1, w3, 0xDD);
  }
}

// Rows [0, rows) for panel_avx512, row r read at row_at(r): each row group of g rows (first row
// r) as [D][g] at xp + r * D. 16 values of up to 16 rows are transposed in registers at a time
// (a scalar copy, one value per store, takes as long as a 32-wide panel's arithmetic).
template <typename RowAt>
DIFFMASK_FAST_AVX512 inline void pack_rows_at_avx512(RowAt row_at, int64_t rows, int64_t D, float* xp) {
  for (int64_t r = 0, g; r < rows; r += g) {
    g = group_size(rows, r);
    float* dst = xp + r * D;
    const float* src[kRows32];
    for (int64_t i = 0; i < g; ++i) {
      src[i] = row_at(r + i);
    }
    const __mmask16 lanes = static_cast<__mmask16>((1u << g) - 1u);
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
      __m512 t[16];
      for (int64_t i = 0; i < 16; ++i) {
        t[i] = i < g ? _mm512_loadu_ps(src[i] + d) : _mm512_setzero_ps();
      }
      transpose16_avx512(t);
      for (int64_t j = 0; j < 16; ++j) {
        _mm512_mask_storeu_ps(dst + (d + j) * g, lanes, t[j]);
      }
    }
    for (; d < D; ++d) {
      for (int64_t i = 0; i < g; ++i) {
        dst[d * g + i] = src[i][d];
      }
    }
  }
}

// Rows [0, rows) of x (leading dimension ldx) packed for panel_avx512.
DIFFMASK_FAST_AVX512 inline void pack_rows_avx512(const float* x, int64_t rows, int64_t ldx, int64_t D, float* xp) {
  pack_rows_at_avx512([x, ldx](int64_t r) { return x + r * ldx; }, rows, D, xp);
}

// Rows x + at[r] * ldx (r < rows) packed as pack_rows_avx512 packs rows in place: a gather and a
// pack in one pass, for callers whose rows are scattered (the IVF list scan, cpu/ivf.cpp).
DIFFMASK_FAST_AVX512 inline void gather_pack_rows_avx512(const float* x, const int64_t* at, int64_t rows, int64_t ldx,
                                                         int64_t D, float* xp) {
  pack_rows_at_avx512([x, at, ldx](int64_t r) { return x + at[r] * ldx; }, rows, D, xp);
}

// One panel of 16V columns against rows packed by pack_rows_avx512 (x and ldx: the same rows in
// place, for `prefetch`), D in slices of kKSlice; the first row group of each slice prefetches
// the next slice (the panels are contiguous: the next slice of this panel, or the first of the
// next one).
template <int V>
DIFFMASK_FAST_AVX512 inline void panel_avx512(const float* x, int64_t rows, int64_t ldx, const float* xp, int64_t D,
                                              const float* panel, float* out, int64_t ldo, int64_t prefetch) {
  for (int64_t d0 = 0; d0 < D; d0 += kKSlice) {
    const int64_t d1 = std::min(D, d0 + kKSlice);
    const float* next_slice = panel + (d1 - d0) * 16 * V;
    for (int64_t r = 0, g; r < rows; r += g) {
      g = group_size(rows, r);
      const float* pf = r == 0 ? next_slice : nullptr;
      const float* rx = x + r * ldx;
      const float* rxp = xp + r * D;
      float* o = out + r * ldo;
      if (g == kRows32) {
        micro_avx512<kRows32, V, true>(rx, ldx, rxp, d0, d1, panel, o, ldo, prefetch, pf);
      } else if (g == 8) {
        micro_avx512<8, V, true>(rx, ldx, rxp, d0, d1, panel, o, ldo, prefetch, pf);
      } else if (g == 4) {
        micro_avx512<4, V, true>(rx, ldx, rxp, d0, d1, panel, o, ldo, prefetch, pf);
      } else {
        micro_avx512<1, V, true>(rx, ldx, rxp, d0, d1, panel, o, ldo, prefetch, pf);
      }
    }
  }
}

// One 16-wide panel against rows in place (R = 16, 4, 1 rows per register block) over the whole
// of D: for few anchors (no 32-wide panel) packing the rows would cost more than it saves.
DIFFMASK_FAST_AVX512 inline void panel16_avx512(const float* x, int64_t rows, int64_t ldx, int64_t D,
                                                const float* panel, float* out, int64_t ldo, int64_t prefetch) {
  int64_t r = 0;
  for (; r + 16 <= rows; r += 16) {
    micro_avx512<16, 1, false>(x + r * ldx, ldx, nullptr, 0, D, panel, out + r * ldo, ldo, prefetch, nullptr);
  }
  for (; r + 4 <= rows; r += 4) {
    micro_avx512<4, 1, false>(x + r * ldx, ldx, nullptr, 0, D, panel, out + r * ldo, ldo, prefetch, nullptr);
  }
  for (; r < rows; ++r) {
    micro_avx512<1, 1, false>(x + r * ldx, ldx, nullptr, 0, D, panel, out + r * ldo, ldo, prefetch, nullptr);
  }
}

DIFFMASK_FAST_AVX512 inline void rowdots_avx512(const float* x, int64_t rows, int64_t ldx, int64_t D,
                                                const float* anchors, int64_t K, float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    rowdot_anchors_avx512<4>(x + r * ldx, ldx, D, anchors, K, out + r * ldo, ldo);
  }
  for (; r < rows; ++r) {
    rowdot_anchors_avx512<1>(x + r * ldx, ldx, D, anchors, K, out + r * ldo, ldo);
  }
}

DIFFMASK_FAST_AVX512 inline void squared_norms_avx512(const float* x, int64_t rows, int64_t ldx, int64_t D,
                                                      float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
      const __m512 v0 = _mm512_loadu_ps(row + d), v1 = _mm512_loadu_ps(row + d + 16);
      a0 = _mm512_fmadd_ps(v0, v0, a0);
      a1 = _mm512_fmadd_ps(v1, v1, a1);
    }
    for (; d + 16 <= D; d += 16) {
      const __m512 v = _mm512_loadu_ps(row + d);
      a0 = _mm512_fmadd_ps(v, v, a0);
    }
    if (d < D) {
      const __mmask16 mask = static_cast<__mmask16>((1u << (D - d)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(mask, row + d);
      a1 = _mm512_fmadd_ps(v, v, a1);
    }
    out[r] = hsum_avx512(_mm512_add_ps(a0, a1));
  }
}

// core::first_argmax (similarity.h) of n floats: the first index of the largest non-NaN value, 0
// when every value is NaN. Max over 16 lanes (vmaxps keeps its second operand unless the first is
// larger, so NaNs never enter, as in the scalar loop), then the first index equal to the max.
DIFFMASK_FAST_AVX512 inline int64_t first_argmax_avx512(const float* s, int64_t n) {
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = lowest, m1 = lowest;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(s + i), m0);
    m1 = _mm512_max_ps(_mm512_loadu_ps(s + i + 16), m1);
  }
  for (; i + 16 <= n; i += 16) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(s + i), m0);
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
    m1 = _mm512_max_ps(_mm512_mask_loadu_ps(lowest, mask, s + i), m1);
  }
  const float best = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  const __m512 b = _mm512_set1_ps(best);
  for (i = 0; i + 16 <= n; i += 16) {
    const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i), b, _CMP_EQ_OQ);
    if (hit != 0) {
      return i + __builtin_ctz(hit);
    }
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(mask, _mm512_maskz_loadu_ps(mask, s + i), b, _CMP_EQ_OQ);
    if (hit != 0) {
      return i + __builtin_ctz(hit);
    }
  }
  return 0;
}

// ---- AVX2 ------------------------------------------------------------------------------------

// R rows x 16 columns: 2R accumulators of 8 lanes.
template <int R>
DIFFMASK_FAST_AVX2 inline void micro16_avx2(const float* x, int64_t ldx, int64_t D, const float* panel, float* out,
                                            int64_t ldo) {
  __m256 lo[R], hi[R];
  for (int r = 0; r < R; ++r) {
    lo[r] = _mm256_setzero_ps();
    hi[r] = _mm256_setzero_ps();
  }
  for (int64_t d = 0; d < D; ++d) {
    const __m256 a_lo = _mm256_loadu_ps(panel + d * 16);
    const __m256 a_hi = _mm256_loadu_ps(panel + d * 16 + 8);
    for (int r = 0; r < R; ++r) {
      const __m256 v = _mm256_broadcast_ss(x + r * ldx + d);
      lo[r] = _mm256_fmadd_ps(v, a_lo, lo[r]);
      hi[r] = _mm256_fmadd_ps(v, a_hi, hi[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(out + r * ldo, lo[r]);
    _mm256_storeu_ps(out + r * ldo + 8, hi[r]);
  }
}

DIFFMASK_FAST_AVX2 inline void panel16_avx2(const float* x, int64_t rows, int64_t ldx, int64_t D, const float* panel,
                                            float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    micro16_avx2<4>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo);
  }
  for (; r < rows; ++r) {
    micro16_avx2<1>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo);
  }
}

DIFFMASK_FAST_AVX2 inline void squared_norms_avx2(const float* x, int64_t rows, int64_t ldx, int64_t D, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
      const __m256 v0 = _mm256_loadu_ps(row + d), v1 = _mm256_loadu_ps(row + d + 8);
      a0 = _mm256_fmadd_ps(v0, v0, a0);
      a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; d + 8 <= D; d += 8) {
      const __m256 v = _mm256_loadu_ps(row + d);
      a0 = _mm256_fmadd_ps(v, v, a0);
    }
    const __m256 sum = _mm256_add_ps(a0, a1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x1));
    float total = _mm_cvtss_f32(s);
    for (; d < D; ++d) {
      total += row[d] * row[d];
    }
    out[r] = total;
  }
}

#undef DIFFMASK_FAST_AVX512
#undef DIFFMASK_FAST_AVX2

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // DIFFMASK_FAST_X86_KERNELS

// Anchors [K, D] laid out for one ISA. Output column k of `dots` is anchor k for k < K; columns
// up to `columns` are padding.
struct AnchorPanels {
  Isa isa = Isa::kNone;
  int64_t K = 0;
  int64_t D = 0;
  int64_t wide = 0;        // panels of 32 columns (AVX-512)
  int64_t narrow = 0;      // panels of 16 columns
  int64_t tail_begin = 0;  // anchors [tail_begin, K) by dot products along D (AVX-512)
  int64_t columns = 0;     // width of an output row, >= K
  std::vector<float> packed;  // wide panels, then narrow panels
  std::vector<float> tail;    // row-major anchors of the tail

  AnchorPanels() = default;

  // `row_dot_tail` false: no row-dot tail, the last anchors padded into a panel instead, so that
  // on AVX-512 dots() reads only the packed rows (gather_pack_rows), never the rows in place.
  AnchorPanels(Isa isa_, const float* anchors, int64_t K_, int64_t D_, bool row_dot_tail = true)
      : isa(isa_), K(K_), D(D_) {
    if (isa == Isa::kAvx512) {
      const int64_t rest = K % 16;
      // A short tail goes to row dots.
      const int64_t covered = rest > 8 || (rest > 0 && !row_dot_tail) ? K - rest + 16 : K - rest;
      wide = covered / 32;
      narrow = (covered % 32) / 16;
      tail_begin = std::min(covered, K);
    } else {
      wide = 0;
      narrow = (K + 15) / 16;
      tail_begin = K;
    }
    int64_t first = 0;
    for (int64_t p = 0; p < wide; ++p, first += 32) {
      pack_panel(anchors, first, std::min<int64_t>(32, K - first), D, 32, packed);
    }
    for (int64_t p = 0; p < narrow; ++p, first += 16) {
      pack_panel(anchors, first, std::min<int64_t>(16, K - first), D, 16, packed);
    }
    tail.assign(anchors + tail_begin * D, anchors + K * D);
    columns = std::max(K, 32 * wide + 16 * narrow);
  }

  // Whether dots() reads the rows packed (pack_rows): then a caller that multiplies the same rows
  // with several tiles packs them once and passes them to each.
  bool wants_packed_rows() const { return isa == Isa::kAvx512 && wide > 0; }

  // Whether dots() can take rows packed by gather_pack_rows alone (any width, no row-dot tail),
  // reading nothing else of x.
  bool reads_only_packed_rows() const { return isa == Isa::kAvx512 && tail_begin >= K; }

  // Rows x + at[r] * ldx (r < rows) packed as pack_rows packs rows in place, into `packed_rows`
  // (resized). Requires isa == kAvx512.
  void gather_pack_rows(const float* x, const int64_t* at, int64_t rows, int64_t ldx,
                        std::vector<float>& packed_rows) const {
#if DIFFMASK_FAST_X86_KERNELS
    packed_rows.resize(static_cast<size_t>(rows * D));
    gather_pack_rows_avx512(x, at, rows, ldx, D, packed_rows.data());
#else
    (void)x, (void)at, (void)rows, (void)ldx, (void)packed_rows;
#endif
  }

  // Rows [0, rows) of x laid out for the 32-wide kernels, into `packed_rows` (resized).
  void pack_rows(const float* x, int64_t rows, int64_t ldx, std::vector<float>& packed_rows) const {
#if DIFFMASK_FAST_X86_KERNELS
    if (isa == Isa::kAvx512) {
      packed_rows.resize(static_cast<size_t>(rows * D));
      pack_rows_avx512(x, rows, ldx, D, packed_rows.data());
    }
#else
    (void)x, (void)rows, (void)ldx, (void)packed_rows;
#endif
  }

  // dots[r * ldo + k] = x_r . anchor_k for r < rows, k < K (ldo >= columns). Requires isa != kNone.
  // A non-zero `prefetch` (in floats; rows + prefetch must be readable) asks the first pass to
  // prefetch the rows that far ahead, i.e. the caller's next block. `packed_rows`: the same rows
  // from pack_rows, or null (then dots packs them itself where it needs them).
  void dots(const float* x, int64_t rows, int64_t ldx, float* out, int64_t ldo, int64_t prefetch = 0,
            const float* packed_rows = nullptr) const {
#if DIFFMASK_FAST_X86_KERNELS
    const float* panel = packed.data();
    int64_t column = 0;
    if (isa == Isa::kAvx512) {
      std::vector<float> own;
      if (wide > 0 && packed_rows == nullptr) {
        pack_rows(x, rows, ldx, own);
        packed_rows = own.data();
      }
      for (int64_t p = 0; p < wide; ++p, panel += 32 * D, column += 32) {
        panel_avx512<2>(x, rows, ldx, packed_rows, D, panel, out + column, ldo, prefetch);
        prefetch = 0;
      }
      for (int64_t p = 0; p < narrow; ++p, panel += 16 * D, column += 16) {
        if (packed_rows != nullptr) {
          panel_avx512<1>(x, rows, ldx, packed_rows, D, panel, out + column, ldo, prefetch);
        } else {
          panel16_avx512(x, rows, ldx, D, panel, out + column, ldo, prefetch);
        }
        prefetch = 0;
      }
      if (tail_begin < K) {
        rowdots_avx512(x, rows, ldx, D, tail.data(), K - tail_begin, out + tail_begin, ldo);
      }
    } else if (isa == Isa::kAvx2) {
      for (int64_t p = 0; p < narrow; ++p, panel += 16 * D, column += 16) {
        panel16_avx2(x, rows, ldx, D, panel, out + column, ldo);
      }
    }
    (void)prefetch;
#else
    (void)x, (void)rows, (void)ldx, (void)out, (void)ldo, (void)prefetch, (void)packed_rows;
#endif
  }

  // core::first_argmax(s, n), vectorized where the ISA allows.
  int64_t first_argmax(const float* s, int64_t n) const {
#if DIFFMASK_FAST_X86_KERNELS
    if (isa == Isa::kAvx512) {
      return first_argmax_avx512(s, n);
    }
#endif
    return core::first_argmax(s, n);
  }

  // out[r] = |x_r|^2. Requires isa != kNone.
  void squared_norms(const float* x, int64_t rows, int64_t ldx, float* out) const {
#if DIFFMASK_FAST_X86_KERNELS
    if (isa == Isa::kAvx512) {
      squared_norms_avx512(x, rows, ldx, D, out);
    } else if (isa == Isa::kAvx2) {
      squared_norms_avx2(x, rows, ldx, D, out);
    }
#else
    (void)x, (void)rows, (void)ldx, (void)out;
#endif
  }
};

}  // namespace core
}  // namespace diffmask_fast

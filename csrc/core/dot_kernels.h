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
// Wheels are built for baseline x86-64, so the AVX2 and AVX-512 variants are compiled with
// function-level target attributes and chosen at run time (detect_isa). Other compilers and
// architectures get Isa::kNone, and callers use BLAS.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

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

// R rows x 32 columns: 2R accumulators of 16 lanes.
//
// With a non-zero `prefetch` (in floats), the same rows that far ahead are prefetched into L2
// while the kernel computes, so the next block streams in under the arithmetic.
template <int R>
DIFFMASK_FAST_AVX512 inline void micro32_avx512(const float* x, int64_t ldx, int64_t D, const float* panel, float* out,
                                                int64_t ldo, int64_t prefetch) {
  __m512 lo[R], hi[R];
  for (int r = 0; r < R; ++r) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < D; ++d) {
    if (prefetch != 0 && (d & 15) == 0) {
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(x + prefetch + r * ldx + d), _MM_HINT_T1);
      }
    }
    const __m512 a_lo = _mm512_loadu_ps(panel + d * 32);
    const __m512 a_hi = _mm512_loadu_ps(panel + d * 32 + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 v = _mm512_set1_ps(x[r * ldx + d]);
      lo[r] = _mm512_fmadd_ps(v, a_lo, lo[r]);
      hi[r] = _mm512_fmadd_ps(v, a_hi, hi[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(out + r * ldo, lo[r]);
    _mm512_storeu_ps(out + r * ldo + 16, hi[r]);
  }
}

// R rows x 16 columns: R accumulators; `prefetch` as in micro32_avx512.
template <int R>
DIFFMASK_FAST_AVX512 inline void micro16_avx512(const float* x, int64_t ldx, int64_t D, const float* panel, float* out,
                                                int64_t ldo, int64_t prefetch) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < D; ++d) {
    if (prefetch != 0 && (d & 15) == 0) {
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(x + prefetch + r * ldx + d), _MM_HINT_T1);
      }
    }
    const __m512 a = _mm512_loadu_ps(panel + d * 16);
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + d]), a, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(out + r * ldo, acc[r]);
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

DIFFMASK_FAST_AVX512 inline void panel32_avx512(const float* x, int64_t rows, int64_t ldx, int64_t D,
                                                const float* panel, float* out, int64_t ldo, int64_t prefetch) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    micro32_avx512<8>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo, prefetch);
  }
  for (; r < rows; ++r) {
    micro32_avx512<1>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo, prefetch);
  }
}

DIFFMASK_FAST_AVX512 inline void panel16_avx512(const float* x, int64_t rows, int64_t ldx, int64_t D,
                                                const float* panel, float* out, int64_t ldo, int64_t prefetch) {
  int64_t r = 0;
  for (; r + 16 <= rows; r += 16) {
    micro16_avx512<16>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo, prefetch);
  }
  for (; r + 4 <= rows; r += 4) {
    micro16_avx512<4>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo, prefetch);
  }
  for (; r < rows; ++r) {
    micro16_avx512<1>(x + r * ldx, ldx, D, panel, out + r * ldo, ldo, prefetch);
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

  AnchorPanels(Isa isa_, const float* anchors, int64_t K_, int64_t D_) : isa(isa_), K(K_), D(D_) {
    if (isa == Isa::kAvx512) {
      const int64_t rest = K % 16;
      const int64_t covered = rest > 8 ? K - rest + 16 : K - rest;  // a short tail goes to row dots
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

  // dots[r * ldo + k] = x_r . anchor_k for r < rows, k < K (ldo >= columns). Requires isa != kNone.
  // A non-zero `prefetch` (in floats; rows + prefetch must be readable) asks the first pass to
  // prefetch the rows that far ahead, i.e. the caller's next block.
  void dots(const float* x, int64_t rows, int64_t ldx, float* out, int64_t ldo, int64_t prefetch = 0) const {
#if DIFFMASK_FAST_X86_KERNELS
    const float* panel = packed.data();
    int64_t column = 0;
    if (isa == Isa::kAvx512) {
      for (int64_t p = 0; p < wide; ++p, panel += 32 * D, column += 32) {
        panel32_avx512(x, rows, ldx, D, panel, out + column, ldo, prefetch);
        prefetch = 0;
      }
      for (int64_t p = 0; p < narrow; ++p, panel += 16 * D, column += 16) {
        panel16_avx512(x, rows, ldx, D, panel, out + column, ldo, prefetch);
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
    (void)x, (void)rows, (void)ldx, (void)out, (void)ldo, (void)prefetch;
#endif
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

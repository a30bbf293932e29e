// Row kernels of the similarity search.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "check.h"
#include "core/dot_kernels.h"
#include "core/similarity.h"

using namespace diffmask_fast::core;

static void test_squared_norm() {
  for (int n : {0, 1, 3, 8, 13, 385}) {
    std::vector<float> x(n);
    double expected = 0;
    for (int i = 0; i < n; ++i) {
      x[i] = static_cast<float>(std::sin(i + 1.0));
      expected += static_cast<double>(x[i]) * x[i];
    }
    CHECK_NEAR(squared_norm(x.data(), n), expected, 1e-5 * (1 + expected));
  }
}

static void test_first_argmax() {
  const std::vector<float> a = {0.1f, 0.5f, 0.2f, 0.5f, -1.0f};
  CHECK(first_argmax(a.data(), 5) == 1);  // ties: smallest index
  std::vector<double> b(37, -2.0);
  b[20] = 3.0;
  b[30] = 3.0;
  CHECK(first_argmax(b.data(), 37) == 20);
  b[3] = std::nan("");
  CHECK(first_argmax(b.data(), 37) == 20);  // NaN never wins
  std::vector<float> all_nan(9, std::numeric_limits<float>::quiet_NaN());
  CHECK(first_argmax(all_nan.data(), 9) == 0);
  const float one[] = {-5.0f};
  CHECK(first_argmax(one, 1) == 0);
  std::vector<float> equal(16, 0.25f);
  CHECK(first_argmax(equal.data(), 16) == 0);
  // The vectorized variant (AnchorPanels::first_argmax) agrees on rows of every length mod 32,
  // with NaNs, infinities, signed zeros and ties.
  const AnchorPanels vectorized(detect_isa(), nullptr, 0, 1);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float pool[] = {nan, -inf, inf, 0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 1.0f, nan, -inf, -2.0f};
  uint32_t state = 12345;
  for (int64_t n = 1; n <= 70; ++n) {
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<float> s(static_cast<size_t>(n));
      const int spread = 1 + trial % 12;  // trial 0: all NaN
      for (auto& v : s) {
        state = state * 1664525u + 1013904223u;
        v = pool[(state >> 8) % static_cast<uint32_t>(spread)];
      }
      CHECK(vectorized.first_argmax(s.data(), n) == first_argmax(s.data(), n));
    }
  }
}

// first_identical_keyed_rows with the rows keyed one after another: the plain form it must equal.
template <typename T>
static int64_t first_identical_rows(const T* rows, int64_t K, int64_t D, int64_t* first) {
  std::vector<std::pair<uint64_t, int64_t>> keyed(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    keyed[static_cast<size_t>(k)] = {row_key(rows + k * D, D), k};
  }
  return first_identical_keyed_rows(rows, D, keyed, first);
}

static void test_identical_rows() {
  const int64_t K = 6, D = 3;
  const std::vector<float> rows = {1, 2, 3,  0, 0, 0,  1, 2, 3,  4, 5, 6,  0, 0, 0,  1, 2, 3};
  std::vector<int64_t> first(K);
  CHECK(first_identical_rows(rows.data(), K, D, first.data()) == 3);
  const std::vector<int64_t> expected = {0, 1, 0, 3, 1, 0};
  CHECK(first == expected);
  std::vector<int64_t> single(1);
  CHECK(first_identical_rows(rows.data(), 1, D, single.data()) == 1 && single[0] == 0);
}

// The key of a row's bits: equal for equal bits, and (for these rows) different when any one bit
// of any word differs, whichever of the four interleaved chains or the tail reads it.
static void test_row_keys() {
  for (int64_t D : {1, 2, 3, 8, 9, 16, 17, 384, 385}) {
    std::vector<float> row(static_cast<size_t>(D));
    for (int64_t d = 0; d < D; ++d) {
      row[d] = static_cast<float>(std::sin(d + 0.5));
    }
    const std::vector<float> same = row;
    const uint64_t key = row_key(row.data(), D);
    CHECK(row_key(same.data(), D) == key);
    for (int64_t d = 0; d < D; ++d) {
      std::vector<float> other = row;
      other[d] = std::nextafter(other[d], 2.0f);
      CHECK(row_key(other.data(), D) != key);
    }
    std::vector<double> wide(static_cast<size_t>(D), 0.25);  // rows of another element size
    std::vector<double> wide_other = wide;
    wide_other[static_cast<size_t>(D) - 1] = -0.25;
    CHECK(row_key(wide.data(), D) != row_key(wide_other.data(), D));
  }
  // Keyed by the caller (in any order), rows group as first_identical_rows groups them.
  const int64_t K = 5, D = 2;
  const std::vector<float> rows = {1, 2,  3, 4,  1, 2,  -0.0f, 0,  0, 0};
  std::vector<std::pair<uint64_t, int64_t>> keyed;
  for (int64_t k = K - 1; k >= 0; --k) {
    keyed.push_back({row_key(rows.data() + k * D, D), k});
  }
  std::vector<int64_t> first(K), expected(K);
  CHECK(first_identical_keyed_rows(rows.data(), D, keyed, first.data()) ==
        first_identical_rows(rows.data(), K, D, expected.data()));
  CHECK(first == expected);
  CHECK(first[2] == 0 && first[4] == 4);  // -0.0 and 0.0 differ in their bits
}

// Packed-panel dot products against a double-precision loop, for every shape class: K with and
// without a row-dot tail, wide and narrow panels, D not a multiple of 16, ragged row counts, row
// strides larger than D, prefetching on.
static void test_panel_dots() {
  const Isa isa = detect_isa();
  if (isa == Isa::kNone) {
    std::printf("no AVX2/AVX-512: panel kernels not exercised\n");
    return;
  }
  std::vector<Isa> isas = {isa};
#if DIFFMASK_FAST_X86_KERNELS  // x86 feature names: other compilers' builtins refuse them
  if (isa == Isa::kAvx512 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isas.push_back(Isa::kAvx2);
  }
#endif
  for (Isa which : isas) {
    for (int64_t K : {1, 3, 8, 9, 16, 20, 28, 32, 45, 64, 100}) {
      for (int64_t D : {1, 3, 13, 16, 47, 385}) {
        for (int64_t rows : {37, 61}) {  // row groups of 12 and 1; of 12, 8, 4 and 1
          const int64_t ldx = D + 5, next = 40;
          std::vector<float> x(static_cast<size_t>((rows + next) * ldx));
          std::vector<float> anchors(static_cast<size_t>(K * D));
          for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * i + 1.0));
          for (size_t i = 0; i < anchors.size(); ++i) anchors[i] = static_cast<float>(std::cos(0.91 * i + 0.5));
          const AnchorPanels panels(which, anchors.data(), K, D);
          CHECK(panels.columns >= K);
          std::vector<float> out(static_cast<size_t>(rows * panels.columns), -1.0f), norms(rows);
          panels.dots(x.data(), rows, ldx, out.data(), panels.columns, next * ldx);
          panels.squared_norms(x.data(), rows, ldx, norms.data());
          for (int64_t r = 0; r < rows; ++r) {
            double norm = 0;
            for (int64_t d = 0; d < D; ++d) norm += static_cast<double>(x[r * ldx + d]) * x[r * ldx + d];
            CHECK_NEAR(norms[r], norm, 1e-4 * (1 + norm));
            for (int64_t k = 0; k < K; ++k) {
              double dot = 0;
              for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(x[r * ldx + d]) * anchors[k * D + d];
              CHECK_NEAR(out[r * panels.columns + k], dot, 1e-4 * (1 + std::sqrt(static_cast<double>(D))));
            }
          }
        }
      }
    }
  }
}

#if DIFFMASK_FAST_X86_KERNELS
// The packed layout written out: each row group of g rows (group_size) as [D][g].
static std::vector<float> packed_layout(const std::vector<const float*>& row, int64_t D) {
  const int64_t rows = static_cast<int64_t>(row.size());
  std::vector<float> layout(static_cast<size_t>(rows * D));
  for (int64_t r = 0, g; r < rows; r += g) {
    g = group_size(rows, r);
    for (int64_t i = 0; i < g; ++i) {
      for (int64_t d = 0; d < D; ++d) layout[r * D + d * g + i] = row[r + i][d];
    }
  }
  return layout;
}
#endif

// Panels without a row-dot tail against rows gathered straight into the packed layout (the IVF
// list scan): scattered and repeated row indices, every K mod 16, D with and without a remainder
// of 16, ragged row counts; the packed rows, gathered or in place, are the layout written out.
static void test_gathered_panel_dots() {
#if DIFFMASK_FAST_X86_KERNELS
  if (detect_isa() != Isa::kAvx512) {
    std::printf("no AVX-512: gathered packing not exercised\n");
    return;
  }
  const int64_t pool = 50;
  for (int64_t K : {1, 7, 9, 16, 17, 31, 33, 79, 80}) {
    for (int64_t D : {1, 15, 16, 17, 40, 384}) {
      for (int64_t rows : {1, 5, 12, 37, 61}) {
        const int64_t ldx = D + 3;
        std::vector<float> x(static_cast<size_t>(std::max(pool, rows) * ldx)), anchors(static_cast<size_t>(K * D));
        for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.61 * i + 0.2));
        for (size_t i = 0; i < anchors.size(); ++i) anchors[i] = static_cast<float>(std::cos(0.43 * i + 0.7));
        std::vector<int64_t> at(static_cast<size_t>(rows));
        for (int64_t r = 0; r < rows; ++r) at[r] = (r * 17 + 3) % pool;  // scattered, repeating past 50 rows
        const AnchorPanels panels(Isa::kAvx512, anchors.data(), K, D, /*row_dot_tail=*/false);
        CHECK(panels.reads_only_packed_rows());
        CHECK(panels.columns >= K && panels.columns % 16 == 0);
        std::vector<float> packed, in_place;
        std::vector<const float*> gathered_rows, rows_in_place;
        for (int64_t r = 0; r < rows; ++r) {
          gathered_rows.push_back(x.data() + at[r] * ldx);
          rows_in_place.push_back(x.data() + r * ldx);
        }
        panels.gather_pack_rows(x.data(), at.data(), rows, ldx, packed);
        CHECK(packed == packed_layout(gathered_rows, D));
        panels.pack_rows(x.data(), rows, ldx, in_place);
        CHECK(in_place == packed_layout(rows_in_place, D));
        std::vector<float> out(static_cast<size_t>(rows * panels.columns), -1.0f);
        panels.dots(packed.data(), rows, D, out.data(), panels.columns, 0, packed.data());
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t k = 0; k < K; ++k) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(x[at[r] * ldx + d]) * anchors[k * D + d];
            CHECK_NEAR(out[r * panels.columns + k], dot, 1e-4 * (1 + std::sqrt(static_cast<double>(D))));
          }
        }
      }
    }
  }
#else
  std::printf("not an x86 build: gathered packing not exercised\n");
#endif
}

int main() {
  test_panel_dots();
  test_gathered_panel_dots();
  test_squared_norm();
  test_first_argmax();
  test_identical_rows();
  test_row_keys();
  TEST_MAIN_END();
}

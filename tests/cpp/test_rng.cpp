// Counter-based streams: determinism, independence of streams, distributions, fast_log.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "check.h"
#include "core/rng.h"

using namespace diffmask_fast::core;

static void test_determinism() {
  const Stream a(42, 7), b(42, 7), c(42, 8), d(43, 7);
  for (uint64_t i = 0; i < 1000; ++i) {
    CHECK(a.at(i) == b.at(i));
  }
  int equal_c = 0, equal_d = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    equal_c += a.at(i) == c.at(i);
    equal_d += a.at(i) == d.at(i);
  }
  CHECK(equal_c == 0);
  CHECK(equal_d == 0);
  // Sub-streams differ from each other and from their parent.
  const Stream s1 = a.sub(Purpose::kSampling), s2 = a.sub(Purpose::kBudget);
  CHECK(s1.key != s2.key && s1.key != a.key);
  CHECK(a.sub(Purpose::kSampling).key == s1.key);
  // Known value: pins the stream definition so results stay reproducible across releases.
  CHECK(mix64(0) == 0);
  CHECK(mix64(1) != 1);
  const Stream pinned(12345, 7);
  CHECK(pinned.at(0) == 4306903351893520185ULL && pinned.at(1) == 2539801671059368422ULL);
  CHECK(pinned.sub(Purpose::kSampling).at(0) == 968797568999701568ULL);
  CHECK(to_exponential(pinned.at(0), log_table()) == 0x1.74652b414b39dp+0);
}

static void test_uniforms() {
  const Stream s(123, 0);
  const int n = 200000;
  double sum = 0, sum_exp = 0, sum_exp2 = 0;
  std::vector<int> histogram(10, 0);
  for (int i = 0; i < n; ++i) {
    const double u = to_unit(s.at(i));
    CHECK(u >= 0.0 && u < 1.0);
    const double v = to_unit_open_zero(s.at(i));
    CHECK(v > 0.0 && v <= 1.0);
    sum += u;
    const double e = to_exponential(s.at(i), log_table());
    CHECK(e >= 0.0 && std::isfinite(e));
    sum_exp += e;
    sum_exp2 += e * e;
    const int64_t k = to_index(s.at(i), 10);
    CHECK(k >= 0 && k < 10);
    ++histogram[k];
  }
  // Means within 6 standard errors.
  CHECK_NEAR(sum / n, 0.5, 6 * std::sqrt(1.0 / 12 / n));
  CHECK_NEAR(sum_exp / n, 1.0, 6 * std::sqrt(1.0 / n));
  CHECK_NEAR(sum_exp2 / n, 2.0, 6 * std::sqrt(20.0 / n));
  for (int k = 0; k < 10; ++k) {
    CHECK_NEAR(histogram[k], n / 10.0, 6 * std::sqrt(n * 0.1 * 0.9));
  }
  CHECK(to_index(~0ULL, 7) == 6);
  CHECK(to_index(0, 7) == 0);
}

static void test_fast_log() {
  const LogTable& table = log_table();
  double worst = 0, worst_series = 0;
  const Stream s(5, 5);
  for (int i = 0; i < 400000; ++i) {
    // Uniform draws, and draws just below 1 where log is tiny.
    const double x = i % 2 ? to_unit_open_zero(s.at(i)) : 1.0 - std::ldexp(static_cast<double>(s.at(i) >> 40), -60);
    const double reference = std::log(x);
    if (reference == 0.0) continue;
    worst = std::max(worst, std::fabs(fast_log(x, table) - reference) / std::fabs(reference));
    worst_series = std::max(worst_series, std::fabs(series_log(x) - reference) / std::fabs(reference));
  }
  CHECK(worst < 2e-15);  // about 4e-16: the rounding of the last operations
  CHECK(worst_series < 2e-15);
  CHECK(fast_log(1.0, table) == 0.0);
  CHECK(series_log(1.0) == 0.0);
  CHECK_NEAR(fast_log(0x1.0p-53, table), -53 * std::log(2.0), 1e-12);
  CHECK_NEAR(fast_log(2.0, table), std::log(2.0), 1e-15);
  CHECK_NEAR(fast_log(1e300, table), std::log(1e300), 1e-10);
  CHECK_NEAR(fast_log(1.9999999999999998, table), std::log(1.9999999999999998), 1e-15);
  CHECK(to_exponential(~0ULL, table) >= 0.0);  // u = 1: E = 0
}

// CUDA kernels build the table entry by entry with LogTable::fill (in shared memory); it must
// equal the constructor's table bit for bit, or GPU and CPU keys would differ.
static void test_log_table_fill() {
  static LogTable filled;  // constructed, then overwritten entry by entry
  for (int i = 0; i < (1 << LogTable::kBits); ++i) {
    filled.left[i] = filled.inverse[i] = filled.log_left[i] = -1.0;
  }
  for (int i = 0; i < (1 << LogTable::kBits); ++i) {
    filled.fill(i);
  }
  const LogTable& table = log_table();
  CHECK(std::memcmp(filled.left, table.left, sizeof table.left) == 0);
  CHECK(std::memcmp(filled.inverse, table.inverse, sizeof table.inverse) == 0);
  CHECK(std::memcmp(filled.log_left, table.log_left, sizeof table.log_left) == 0);
}

int main() {
  test_determinism();
  test_uniforms();
  test_fast_log();
  test_log_table_fill();
  TEST_MAIN_END();
}

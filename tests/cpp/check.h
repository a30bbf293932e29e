// A minimal test harness: CHECK records a failure with its location and goes on; main returns
// the number of failures, so ctest reports any.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace diffmask_fast_test {
inline int& failures() {
  static int count = 0;
  return count;
}
}  // namespace diffmask_fast_test

#define CHECK(condition)                                                             \
  do {                                                                               \
    if (!(condition)) {                                                              \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      ++diffmask_fast_test::failures();                                              \
    }                                                                                \
  } while (0)

#define CHECK_NEAR(a, b, tolerance)                                                                        \
  do {                                                                                                     \
    const double check_a_ = static_cast<double>(a), check_b_ = static_cast<double>(b);                     \
    if (!(std::fabs(check_a_ - check_b_) <= (tolerance))) {                                                \
      std::fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.17g vs %s = %.17g (tolerance %g)\n", __FILE__, \
                   __LINE__, #a, check_a_, #b, check_b_, static_cast<double>(tolerance));                  \
      ++diffmask_fast_test::failures();                                                                    \
    }                                                                                                      \
  } while (0)

#define TEST_MAIN_END()                                                              \
  do {                                                                               \
    if (diffmask_fast_test::failures() == 0) std::printf("all checks passed\n");     \
    else std::fprintf(stderr, "%d check(s) failed\n", diffmask_fast_test::failures()); \
    return diffmask_fast_test::failures() == 0 ? 0 : 1;                              \
  } while (0)

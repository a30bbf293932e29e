// What lets the core algorithms compile both for the host and for CUDA devices, with
// bit-identical results on both.
//
// DIFFMASK_FAST_HD marks a function callable from host and device code; it is empty for a plain
// C++ compiler, so the CPU build sees exactly the functions it always saw.
//
// Floating-point contraction: nvcc fuses a * b + c into one FMA by default (one rounding instead
// of two), and so does GCC wherever the target has FMA (aarch64, -march=native), so the host
// build passes -ffp-contract=off (setup.py, CMakeLists.txt). Wherever a
// product feeds a sum in code that both sides must evaluate identically (the random streams, the
// logarithm of the exponential keys, the masking budget), the operations go through mul_rn /
// add_rn / sub_rn: plain operators on the host, the never-contracted __dmul_rn / __dadd_rn /
// __dsub_rn intrinsics on the device. Division and square root are correctly rounded on both.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DIFFMASK_FAST_HD __host__ __device__
#else
#define DIFFMASK_FAST_HD
#endif

namespace diffmask_fast {
namespace core {

DIFFMASK_FAST_HD inline uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

DIFFMASK_FAST_HD inline double double_of(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

DIFFMASK_FAST_HD inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

DIFFMASK_FAST_HD inline double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

DIFFMASK_FAST_HD inline double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

}  // namespace core
}  // namespace diffmask_fast

// Denormal floats read as themselves inside the kernels, whatever the caller's floating-point
// mode. torch.set_flush_denormal(True) sets the flush-to-zero and denormals-are-zero flags of
// the calling thread only: rows computed there would read a weight of 1e-40 as 0 while rows on
// the pool's threads would not, so results would change with the thread count.
#pragma once

#if defined(__x86_64__) || defined(_M_X64) || defined(__SSE__)
#include <xmmintrin.h>
#define DIFFMASK_FAST_HAS_MXCSR 1
#endif

namespace diffmask_fast {
namespace cpu {

class KeepDenormals {
 public:
  KeepDenormals() {
#ifdef DIFFMASK_FAST_HAS_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ & ~kFlushBits);
#endif
  }
  ~KeepDenormals() {
#ifdef DIFFMASK_FAST_HAS_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  KeepDenormals(const KeepDenormals&) = delete;
  KeepDenormals& operator=(const KeepDenormals&) = delete;

 private:
#ifdef DIFFMASK_FAST_HAS_MXCSR
  static constexpr unsigned int kFlushBits = 0x8040u;  // FTZ (bit 15) and DAZ (bit 6)
  unsigned int saved_ = 0;
#endif
};

}  // namespace cpu
}  // namespace diffmask_fast

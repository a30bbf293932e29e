// Which CPU the packed-panel kernels (core/dot_kernels.h) run on, and how many anchors they take
// there before BLAS does better: shared by the kernels that multiply rows with anchors.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "../core/dot_kernels.h"

namespace diffmask_fast {
namespace cpu {

inline const char* isa_name(core::Isa isa) {
  switch (isa) {
    case core::Isa::kAvx512:
      return "avx512";
    case core::Isa::kAvx2:
      return "avx2";
    default:
      return "none";
  }
}

// The kernels $DIFFMASK_FAST_CPU_KERNELS allows, by name: "avx2" or "none" (BLAS alone) run the
// narrower paths on a wider CPU, so that one machine can test them all; unset, or any other
// value, allows every kernel (the Python loader refuses other values before the operators run).
inline core::Isa allowed_isa() {
  const char* named = std::getenv("DIFFMASK_FAST_CPU_KERNELS");
  for (const core::Isa narrower : {core::Isa::kNone, core::Isa::kAvx2}) {
    if (named != nullptr && std::strcmp(named, isa_name(narrower)) == 0) {
      return narrower;
    }
  }
  return core::Isa::kAvx512;
}

// The kernels the operators run: the widest this CPU has, within what the environment allows
// (read once, at the first call).
inline core::Isa cpu_isa() {
  static const core::Isa isa = std::min(core::detect_isa(), allowed_isa());
  return isa;
}

// Largest K searched with the packed-panel kernels. With AVX-512 they run near the FMA peak for
// any K (on the AMD EPYC of benchmarks/RESULTS.md: 101% of torch.mm's float32 rate at K = 1000,
// about 1.1x the BLAS route's). With AVX2 (half the lanes and registers) they ran 1.2x the BLAS
// route's rate at K = 128 on that CPU capped to AVX2 (DIFFMASK_FAST_CPU_KERNELS=avx2), but were
// never timed past it, nor with an AVX2-only CPU's own caches and BLAS: BLAS takes over above it.
inline int64_t max_panel_anchors(core::Isa isa) {
  switch (isa) {
    case core::Isa::kAvx512:
      return std::numeric_limits<int64_t>::max();
    case core::Isa::kAvx2:
      return 128;
    default:
      return 0;
  }
}

}  // namespace cpu
}  // namespace diffmask_fast

// Which CPU the packed-panel kernels (core/dot_kernels.h) run on, and how many anchors they take
// there before BLAS does better: shared by the kernels that multiply rows with anchors.
#pragma once

#include <cstdint>
#include <limits>

#include "../core/dot_kernels.h"

namespace diffmask_fast {
namespace cpu {

inline core::Isa cpu_isa() {
  static const core::Isa isa = core::detect_isa();
  return isa;
}

// Largest K searched with the packed-panel kernels. With AVX-512 they run near the FMA peak for
// any K (2.3x MKL's rate at K = 1000 on an AMD EPYC, where MKL does not use AVX-512). The AVX2
// kernels (half the lanes and registers) have not been timed against BLAS on an AVX2-only
// machine, so BLAS takes over early there.
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

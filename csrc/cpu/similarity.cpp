// CPU kernel of max_anchor_similarity.
//
// Anchors are normalized (and exact duplicates merged) once; embeddings are processed in row
// blocks that stay in a core's cache while a few passes read them: squared norms, the dot
// products with every anchor, then the first arg max per row. The full [N, K] similarity
// matrix is never materialized, embeddings are read from memory once, and conversion from
// half precision or odd strides happens per block, in cache.
//
// The dot products come from the packed-panel kernels of core/dot_kernels.h where the CPU has
// AVX2 or AVX-512 (float32 compute), otherwise from BLAS (at::mm) per block: float64 inputs,
// transposed embeddings (BLAS reads them in place), other CPUs, very large K. Blocks have a
// fixed size, so panel results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../core/dot_kernels.h"
#include "../core/similarity.h"
#include "checks.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "max_anchor_similarity";

// Largest K searched with the packed-panel kernels. With AVX-512 they run near the FMA peak for
// any K (2.3x MKL's rate at K = 1000 on an AMD EPYC, where MKL does not use AVX-512), so BLAS
// is kept only for very large K, whose panels would duplicate a large anchor matrix. The AVX2
// kernels (half the lanes and registers) have not been timed against BLAS on an AVX2-only
// machine, so BLAS takes over early there.
int64_t max_panel_anchors(core::Isa isa) {
  switch (isa) {
    case core::Isa::kAvx512:
      return 8192;
    case core::Isa::kAvx2:
      return 128;
    default:
      return 0;
  }
}

// Rows per block: ~256 KiB of embeddings (a per-core L2 share holds the block while several
// passes read it), fewer when the [rows, K] score tile would pass 1 MiB.
int64_t block_rows(int64_t D, int64_t K, int64_t element_size) {
  int64_t rows = (256 * 1024) / std::max<int64_t>(D * element_size, 1);
  rows = std::min(rows, (1024 * 1024) / std::max<int64_t>(K * element_size, 1));
  rows = std::max<int64_t>(16, std::min<int64_t>(rows, 1024));
  return rows / 8 * 8;
}

core::Isa cpu_isa() {
  static const core::Isa isa = core::detect_isa();
  return isa;
}

template <typename T>
void max_anchor_similarity_impl(const at::Tensor& embeddings, const at::Tensor& anchors, at::Tensor& values,
                                at::Tensor& indices) {
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const int64_t K = anchors.size(0);
  const int64_t D = anchors.size(1);
  const int64_t N = values.numel();

  // Unit anchors (zero anchors stay zero: cosine 0); exact duplicates are searched once, and
  // column j of the search stands for anchor column_anchor[j] (ascending), so ties still go to
  // the smallest index.
  const at::Tensor a = anchors.to(dtype).contiguous();
  const T* a_data = a.data_ptr<T>();
  std::vector<T> unit(static_cast<size_t>(K * D));
  for (int64_t k = 0; k < K; ++k) {  // in double: a float32 sum of squares over- or underflows
    const double norm = std::sqrt(core::squared_norm_double(a_data + k * D, D));
    const double scale = norm > 0 ? 1.0 / norm : 0.0;
    for (int64_t d = 0; d < D; ++d) {
      unit[k * D + d] = static_cast<T>(static_cast<double>(a_data[k * D + d]) * scale);
    }
  }
  std::vector<int64_t> first(static_cast<size_t>(K));
  const int64_t distinct = core::first_identical_rows(unit.data(), K, D, first.data());
  std::vector<int64_t> column_anchor;
  column_anchor.reserve(static_cast<size_t>(distinct));
  at::Tensor u = at::empty({distinct, D}, a.options());
  T* u_data = u.data_ptr<T>();
  for (int64_t k = 0; k < K; ++k) {
    if (first[k] == k) {
      std::copy(unit.data() + k * D, unit.data() + (k + 1) * D, u_data + column_anchor.size() * D);
      column_anchor.push_back(k);
    }
  }

  const core::Isa isa = cpu_isa();
  core::AnchorPanels panels;  // empty unless the panel kernels are used
  bool use_panels = false;
  if constexpr (std::is_same<T, float>::value) {
    if (isa != core::Isa::kNone && distinct <= max_panel_anchors(isa)) {
      panels = core::AnchorPanels(isa, u_data, distinct, D);
      use_panels = true;
    }
  }
  const at::Tensor u_t = u.t();  // [D, distinct]; BLAS reads it transposed, no copy

  const at::Tensor e = embeddings.reshape({N, D});  // a view unless the leading dims cannot be flattened
  const int64_t rows_per_block = block_rows(D, std::max(distinct, panels.columns), sizeof(T));
  const int64_t n_blocks = (N + rows_per_block - 1) / rows_per_block;
  float* value_data = values.data_ptr<float>();
  int64_t* index_data = indices.data_ptr<int64_t>();
  const bool same_dtype = e.scalar_type() == dtype;

  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    at::Tensor buffer;       // converted or compacted rows, [rows_per_block, D]
    at::Tensor blas_scores;  // [rows_per_block, distinct]
    std::vector<float> panel_scores(use_panels ? static_cast<size_t>(rows_per_block * panels.columns) : 0);
    std::vector<T> norms(static_cast<size_t>(rows_per_block));
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t r0 = block * rows_per_block;
      const int64_t rows = std::min(rows_per_block, N - r0);
      at::Tensor x = e.narrow(0, r0, rows);
      const bool row_major = same_dtype && (D == 1 || x.stride(1) == 1) && (rows == 1 || x.stride(0) >= D);
      // Transposed embeddings: BLAS reads them in place, cheaper than a transposing copy.
      const bool column_major = same_dtype && !row_major && x.stride(0) == 1 && x.stride(1) >= rows;
      if (!row_major && !column_major) {
        if (!buffer.defined()) {
          buffer = at::empty({rows_per_block, D}, a.options());
        }
        at::Tensor converted = buffer.narrow(0, 0, rows);
        converted.copy_(x);
        x = converted;
      }
      const T* x_data = x.data_ptr<T>();
      const T* s_data = nullptr;
      int64_t s_columns = distinct;
      bool done = false;
      if constexpr (std::is_same<T, float>::value) {
        if (use_panels && !column_major) {
          const int64_t ld = rows == 1 ? D : x.stride(0);
          // Norms first: their sequential pass streams the block into cache at full memory
          // bandwidth, and the strided passes of the dot kernels then hit the cache.
          panels.squared_norms(x_data, rows, ld, norms.data());
          // Prefetch this thread's next block (when it is read in place) under the arithmetic.
          const bool prefetch = row_major && block + 1 < block_end && r0 + 2 * rows_per_block <= N;
          panels.dots(x_data, rows, ld, panel_scores.data(), panels.columns, prefetch ? rows_per_block * ld : 0);
          s_data = panel_scores.data();
          s_columns = panels.columns;
          done = true;
        }
      }
      if (!done) {
        if (!blas_scores.defined()) {
          blas_scores = at::empty({rows_per_block, distinct}, a.options());
        }
        at::Tensor tile = blas_scores.narrow(0, 0, rows);
        at::mm_out(tile, x, u_t);
        s_data = tile.data_ptr<T>();
        if (column_major) {
          const int64_t ld = x.stride(1);
          std::fill(norms.begin(), norms.begin() + rows, T(0));
          for (int64_t d = 0; d < D; ++d) {
            const T* column = x_data + d * ld;
            for (int64_t r = 0; r < rows; ++r) {
              norms[r] += column[r] * column[r];
            }
          }
        } else {
          const int64_t ld = rows == 1 ? D : x.stride(0);
          for (int64_t r = 0; r < rows; ++r) {
            norms[r] = core::squared_norm(x_data + r * ld, D);
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T* s_row = s_data + r * s_columns;
        const int64_t j = core::first_argmax(s_row, distinct);
        double norm2 = static_cast<double>(norms[r]);
        if (core::squared_norm_out_of_range(norms[r])) {  // rare: measured again in double
          const int64_t row_step = column_major ? 1 : (rows == 1 ? D : x.stride(0));
          const int64_t step = column_major ? x.stride(1) : 1;
          norm2 = core::squared_norm_double(x_data + r * row_step, D, step);
        }
        float value;
        int64_t index;
        if (norm2 > 0) {
          value = static_cast<float>(static_cast<double>(s_row[j]) / std::sqrt(norm2));
          index = column_anchor[j];
        } else if (norm2 == 0) {
          value = 0.0f;  // zero vector: similarity 0 to every anchor
          index = 0;
        } else {
          value = static_cast<float>(norm2);  // NaN in the row propagates
          index = column_anchor[j];
        }
        value_data[r0 + r] = value;
        index_data[r0 + r] = index;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_anchor_similarity_cpu(const at::Tensor& embeddings, const at::Tensor& anchors) {
  // No gradient flows through the op: its own tensor calls (at::mm_out) must not see inputs
  // that require grad as autograd inputs.
  const at::AutoDispatchBelowADInplaceOrView no_autograd;
  check_cpu(embeddings, kOp, "embeddings");
  check_cpu(anchors, kOp, "anchors");
  check_similarity_operands(embeddings, anchors, kOp);
  const auto out_shape = embeddings.sizes().slice(0, embeddings.dim() - 1);
  at::Tensor values = at::empty(out_shape, embeddings.options().dtype(at::kFloat));
  at::Tensor indices = at::empty(out_shape, embeddings.options().dtype(at::kLong));
  if (values.numel() == 0) {
    return {values, indices};
  }
  if (embeddings.scalar_type() == at::kDouble) {
    max_anchor_similarity_impl<double>(embeddings, anchors, values, indices);
  } else {
    max_anchor_similarity_impl<float>(embeddings, anchors, values, indices);
  }
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("max_anchor_similarity", &max_anchor_similarity_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

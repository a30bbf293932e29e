// CPU kernel of max_anchor_similarity.
//
// Anchors are normalized (and exact duplicates merged) once and cut into tiles of columns;
// embeddings are processed in row blocks that stay in a core's cache while every tile is
// multiplied with them: squared norms, then per tile the dot products and their first arg max,
// folded into a running maximum per row. Neither the [N, K] similarity matrix nor a [block, K]
// slice of it is materialized, embeddings are read from memory once, each anchor tile once per
// row block (so large K costs arithmetic, not memory traffic), and conversion from half
// precision or odd strides happens per block, in cache.
//
// The dot products come from the packed-panel kernels of core/dot_kernels.h where the CPU has
// AVX2 or AVX-512 (float32 compute), otherwise from BLAS (at::mm) per block and tile: float64
// inputs, other CPUs, many anchors on AVX2. Blocks and tiles have fixed sizes, and tiles are
// whole numbers of panels, so on the panel route results depend neither on the number of
// threads nor on K's tiling, and a row's result not on the other rows either. BLAS picks its
// kernels by block shape, and may split a product of long rows across the threads it is given
// (MKL does, inside a parallel region too, and torch exposes no way to stop it): there a row's
// value can move with the batch it is in and with the thread count, by a few units of float32
// rounding on the scale of 1 (the products' scale: a small cosine moves by several of its own
// last places), and the nearest anchor only at such a near tie.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../core/dot_kernels.h"
#include "../core/similarity.h"
#include "checks.h"
#include "denormals.h"
#include "panel_choice.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "max_anchor_similarity";

// Rows per block: ~256 KiB of embeddings, which a per-core L2 share holds while the norms and
// every anchor tile read them. `large`: float32 rows for the 32-wide panel kernels (many
// anchors), ~768 KiB, three times fewer passes over the anchors (which large K streams from L3
// or memory) for each row; the rows, packed, still stay in a 2 MiB L2.
int64_t block_rows(int64_t D, int64_t element_size, bool large = false) {
  const int64_t rows = (large ? 768 * 1024 : 256 * 1024) / std::max<int64_t>(D * element_size, 1);
  return std::max<int64_t>(16, std::min<int64_t>(rows, large ? 3072 : 1024)) / 8 * 8;
}

// Anchors from which the float32 panel search takes the large blocks: enough 32-wide panels
// for the anchor stream to matter. Small K (few panels, or a 16-wide one and row dots) keeps
// the small blocks, where the norms pass streams the block in under little arithmetic.
constexpr int64_t kLargeBlockAnchors = 256;

// Anchors per tile: the [rows, tile] score tile stays within 1 MiB. A multiple of 32, a whole
// number of the widest panels, so every column is computed by the same kernel however K is cut.
int64_t tile_anchors(int64_t rows, int64_t element_size) {
  const int64_t tile = (1024 * 1024) / std::max<int64_t>(rows * element_size, 1);
  return std::max<int64_t>(32, tile / 32 * 32);
}

// 0 for -0.0 (and any other value as it is): -0.0 == 0.0, so rows that differ only in the sign of
// a zero are one anchor, which the bitwise duplicate check must see.
template <typename T>
T positive_zero(T value) {
  return value == T(0) ? T(0) : value;
}

// Row k of `a` ([K, D], contiguous, of type S) divided by its norm, into `unit` as T, zeros
// positive. A zero row stays zero (cosine 0); a NaN row keeps its NaNs and never wins.
template <typename S, typename T>
void unit_row(const S* row, int64_t D, T* unit) {
  const double norm2 = core::squared_norm_double(row, D);  // in double: a float32 sum over- or underflows
  if (norm2 >= std::numeric_limits<double>::min() && std::isfinite(norm2)) {
    const double scale = 1.0 / std::sqrt(norm2);
    for (int64_t d = 0; d < D; ++d) {
      unit[d] = positive_zero(static_cast<T>(static_cast<double>(row[d]) * scale));
    }
    return;
  }
  // Float64 values beyond ~1e154 or below ~1e-154 over- or underflow even the double sum: such
  // rows are scaled by a power of two first (exact), as the CUDA kernel does.
  const int shift = core::rescaling_shift(row, D);
  const double norm = std::sqrt(core::squared_norm_double_scaled(row, D, shift));
  const double scale = norm > 0 ? 1.0 / norm : 0.0;
  for (int64_t d = 0; d < D; ++d) {
    unit[d] = positive_zero(static_cast<T>(std::ldexp(static_cast<double>(row[d]), shift) * scale));
  }
}

// Unit anchors with exact duplicates searched once: returns the distinct rows, [distinct, D], of
// type T, and column_anchor[j], the (ascending) anchor index column j stands for, so ties still
// go to the smallest index. Float64 anchors are normalized as they are and only their unit rows
// rounded to T: values beyond float32's range (1e300, 1e-300) have unit rows that T holds.
// Rows are normalized and keyed in parallel, and duplicates compacted in place: at 10^6 anchors
// this preparation, done on every call, would otherwise outweigh the search of a few queries.
template <typename T>
at::Tensor distinct_unit_anchors(const at::Tensor& anchors, at::ScalarType dtype,
                                 std::vector<int64_t>& column_anchor) {
  const int64_t K = anchors.size(0);
  const int64_t D = anchors.size(1);
  const bool wider = anchors.scalar_type() == at::kDouble && dtype != at::kDouble;
  const at::Tensor a = (wider ? anchors : anchors.to(dtype)).contiguous();
  at::Tensor u = at::empty({K, D}, a.options().dtype(dtype));
  T* u_data = u.data_ptr<T>();
  std::vector<std::pair<uint64_t, int64_t>> keyed(static_cast<size_t>(K));
  at::parallel_for(0, K, 1024, [&](int64_t begin, int64_t end) {
    KeepDenormals keep_denormals;  // rows normalized on the caller's thread as on the pool's
    for (int64_t k = begin; k < end; ++k) {
      if (wider) {
        unit_row(a.data_ptr<double>() + k * D, D, u_data + k * D);
      } else {
        unit_row(a.data_ptr<T>() + k * D, D, u_data + k * D);
      }
      keyed[static_cast<size_t>(k)] = {core::row_key(u_data + k * D, D), k};
    }
  });
  std::vector<int64_t> first(static_cast<size_t>(K));
  const int64_t distinct = core::first_identical_keyed_rows(u_data, D, keyed, first.data());
  column_anchor.clear();
  column_anchor.reserve(static_cast<size_t>(distinct));
  for (int64_t k = 0; k < K; ++k) {
    if (first[k] == k) {  // moved down to its column: never onto a row still to be read
      if (static_cast<int64_t>(column_anchor.size()) != k) {
        std::copy(u_data + k * D, u_data + (k + 1) * D, u_data + column_anchor.size() * D);
      }
      column_anchor.push_back(k);
    }
  }
  return distinct == K ? u : u.narrow(0, 0, distinct);
}

// Columns [first, first + count) of the distinct anchors; `panels` is empty on the BLAS route.
struct AnchorTile {
  int64_t first = 0;
  int64_t count = 0;
  core::AnchorPanels panels;
};

// The first maximum of each row so far, over the tiles already searched (NaN: none yet).
template <typename T>
struct RunningMax {
  std::vector<T> value;
  std::vector<int64_t> column;

  explicit RunningMax(int64_t rows) : value(static_cast<size_t>(rows)), column(static_cast<size_t>(rows)) {}

  void reset(int64_t rows) {
    std::fill(value.begin(), value.begin() + rows, std::numeric_limits<T>::quiet_NaN());
    std::fill(column.begin(), column.begin() + rows, int64_t{0});
  }

  // Fold in a tile's scores: a later tile wins only with a strictly larger value, and NaN never
  // wins, exactly as core::first_argmax over the whole row.
  // `argmax(s, n)`: core::first_argmax or an equivalent (AnchorPanels::first_argmax).
  template <typename ArgMax>
  void fold(const T* scores, int64_t rows, int64_t ld, int64_t first, int64_t count, ArgMax&& argmax) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* s_row = scores + r * ld;
      const int64_t j = argmax(s_row, count);
      const T v = s_row[j];
      if (!std::isnan(v) && (std::isnan(value[r]) || v > value[r])) {
        value[r] = v;
        column[r] = first + j;
      }
    }
  }

  void fold(const T* scores, int64_t rows, int64_t ld, int64_t first, int64_t count) {
    fold(scores, rows, ld, first, count, [](const T* s, int64_t n) { return core::first_argmax(s, n); });
  }
};

template <typename T>
void max_anchor_similarity_impl(const at::Tensor& embeddings, const at::Tensor& anchors, at::Tensor& values,
                                at::Tensor& indices) {
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const int64_t D = anchors.size(1);
  const int64_t N = values.numel();

  std::vector<int64_t> column_anchor;
  at::Tensor u = distinct_unit_anchors<T>(anchors, dtype, column_anchor);
  const int64_t distinct = u.size(0);

  const core::Isa isa = cpu_isa();
  const bool use_panels = std::is_same<T, float>::value && isa != core::Isa::kNone &&
                          distinct <= max_panel_anchors(isa);
  const int64_t rows_per_block = block_rows(D, sizeof(T), use_panels && distinct >= kLargeBlockAnchors);
  const int64_t per_tile = tile_anchors(rows_per_block, sizeof(T));
  std::vector<AnchorTile> tiles;
  int64_t tile_columns = 0;  // width of a score tile
  for (int64_t first = 0; first < distinct; first += per_tile) {
    AnchorTile tile;
    tile.first = first;
    tile.count = std::min(per_tile, distinct - first);
    tiles.push_back(std::move(tile));
  }
  if constexpr (std::is_same<T, float>::value) {
    if (use_panels) {  // packed in parallel: each tile's panels are its own copy
      at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          AnchorTile& tile = tiles[static_cast<size_t>(t)];
          tile.panels = core::AnchorPanels(isa, u.data_ptr<float>() + tile.first * D, tile.count, D);
        }
      });
    }
  }
  for (const AnchorTile& tile : tiles) {
    tile_columns = std::max(tile_columns, use_panels ? tile.panels.columns : tile.count);
  }
  if (use_panels) {
    u = at::Tensor();  // the panels hold their own copy
  }
  const at::Tensor u_t = use_panels ? at::Tensor() : u.t();  // [D, distinct]; BLAS reads it transposed

  const at::Tensor e = embeddings.reshape({N, D});  // a view unless the leading dims cannot be flattened
  const int64_t n_blocks = (N + rows_per_block - 1) / rows_per_block;
  float* value_data = values.data_ptr<float>();
  int64_t* index_data = indices.data_ptr<int64_t>();
  const bool same_dtype = e.scalar_type() == dtype;

  // (first maximum dot, its column, squared norm) of a row whose float sum of squares is out of
  // range: (NaN, 0, NaN) when it holds NaN or infinity, (0, 0, 0) when it is zero, and otherwise
  // the search of the row scaled so that its largest value is in [1, 2), for values so large or
  // small that products over- or underflow (in float32 or float64). Slow (one row against every
  // tile), and rare.
  auto rescaled_row_max = [&](const T* row, int64_t step) {
    const double largest = core::largest_magnitude(row, D, step);
    if (!std::isfinite(largest)) {
      const double nan = std::numeric_limits<double>::quiet_NaN();
      return std::make_tuple(static_cast<T>(nan), int64_t{0}, nan);
    }
    if (largest == 0) {
      return std::make_tuple(T(0), int64_t{0}, 0.0);
    }
    const int shift = -std::ilogb(largest);
    at::Tensor scaled = at::empty({1, D}, e.options().dtype(dtype));
    T* scaled_data = scaled.data_ptr<T>();
    for (int64_t d = 0; d < D; ++d) {
      scaled_data[d] = static_cast<T>(std::ldexp(static_cast<double>(row[d * step]), shift));
    }
    RunningMax<T> one(1);
    one.reset(1);
    std::vector<float> panel_row(use_panels ? static_cast<size_t>(tile_columns) : 0);
    for (const AnchorTile& tile : tiles) {
      if constexpr (std::is_same<T, float>::value) {
        if (use_panels) {
          tile.panels.dots(scaled_data, 1, D, panel_row.data(), tile_columns);
          one.fold(panel_row.data(), 1, tile_columns, tile.first, tile.count);
          continue;
        }
      }
      const at::Tensor scores = at::mm(scaled, u_t.narrow(1, tile.first, tile.count));
      one.fold(scores.data_ptr<T>(), 1, scores.stride(0), tile.first, tile.count);
    }
    return std::make_tuple(one.value[0], one.column[0], core::squared_norm_double(scaled_data, D));
  };

  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    KeepDenormals keep_denormals;
    at::Tensor buffer;       // converted or compacted rows, [rows_per_block, D]
    at::Tensor blas_scores;  // [rows_per_block, tile_columns]
    std::vector<float> panel_scores(use_panels ? static_cast<size_t>(rows_per_block * tile_columns) : 0);
    std::vector<float> packed_rows;  // the block laid out for the wide panel kernels, once for every tile
    std::vector<T> norms(static_cast<size_t>(rows_per_block));
    RunningMax<T> best(rows_per_block);
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t r0 = block * rows_per_block;
      const int64_t rows = std::min(rows_per_block, N - r0);
      at::Tensor x = e.narrow(0, r0, rows);
      const bool row_major = same_dtype && (D == 1 || x.stride(1) == 1) && (rows == 1 || x.stride(0) >= D);
      // Transposed embeddings: BLAS reads them in place, cheaper than a transposing copy.
      const bool column_major = !use_panels && same_dtype && !row_major && x.stride(0) == 1 && x.stride(1) >= rows;
      if (!row_major && !column_major) {
        if (!buffer.defined()) {
          buffer = at::empty({rows_per_block, D}, e.options().dtype(dtype));
        }
        at::Tensor converted = buffer.narrow(0, 0, rows);
        converted.copy_(x);
        x = converted;
      }
      const T* x_data = x.data_ptr<T>();
      const int64_t ld = column_major ? x.stride(1) : (rows == 1 ? D : x.stride(0));
      best.reset(rows);
      if constexpr (std::is_same<T, float>::value) {
        if (use_panels) {
          // Norms first: their sequential pass streams the block into cache at full memory
          // bandwidth, and the strided passes of the dot kernels then hit the cache.
          tiles.front().panels.squared_norms(x_data, rows, ld, norms.data());
          // Prefetch this thread's next block (when it is read in place) under the first tile.
          const bool prefetch = row_major && block + 1 < block_end && r0 + 2 * rows_per_block <= N;
          const bool packed = tiles.front().panels.wants_packed_rows();
          if (packed) {
            tiles.front().panels.pack_rows(x_data, rows, ld, packed_rows);
          }
          for (const AnchorTile& tile : tiles) {
            tile.panels.dots(x_data, rows, ld, panel_scores.data(), tile_columns,
                             prefetch && &tile == &tiles.front() ? rows_per_block * ld : 0,
                             packed && tile.panels.wants_packed_rows() ? packed_rows.data() : nullptr);
            best.fold(panel_scores.data(), rows, tile_columns, tile.first, tile.count,
                      [&](const float* s, int64_t n) { return tile.panels.first_argmax(s, n); });
          }
        }
      }
      if (!use_panels) {
        if (!blas_scores.defined()) {
          blas_scores = at::empty({rows_per_block, tile_columns}, e.options().dtype(dtype));
        }
        for (const AnchorTile& tile : tiles) {
          at::Tensor scores = blas_scores.narrow(0, 0, rows).narrow(1, 0, tile.count);
          at::mm_out(scores, x, u_t.narrow(1, tile.first, tile.count));
          best.fold(scores.data_ptr<T>(), rows, scores.stride(0), tile.first, tile.count);
        }
        if (column_major) {
          std::fill(norms.begin(), norms.begin() + rows, T(0));
          for (int64_t d = 0; d < D; ++d) {
            const T* column = x_data + d * ld;
            for (int64_t r = 0; r < rows; ++r) {
              norms[r] += column[r] * column[r];
            }
          }
        } else {
          for (int64_t r = 0; r < rows; ++r) {
            norms[r] = core::squared_norm(x_data + r * ld, D);
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        T dot = best.value[r];  // NaN when every score is NaN, as the row's first score
        int64_t j = best.column[r];
        double norm2 = static_cast<double>(norms[r]);
        if (core::squared_norm_out_of_range(norms[r])) {
          // Rare: a zero or non-finite row, or one whose dot products over- or underflowed as its
          // squares did, searched again scaled by a power of two (exact: the cosines stay).
          const int64_t row_step = column_major ? 1 : ld;
          const int64_t step = column_major ? ld : 1;
          std::tie(dot, j, norm2) = rescaled_row_max(x_data + r * row_step, step);
        }
        float value;
        int64_t index;
        if (!std::isfinite(norm2)) {
          value = std::numeric_limits<float>::quiet_NaN();  // NaN or infinity in the row
          index = 0;
        } else if (norm2 > 0) {
          value = core::cosine_in_range(static_cast<double>(dot) / std::sqrt(norm2));
          index = column_anchor[j];
        } else {
          value = 0.0f;  // zero vector: similarity 0 to every anchor
          index = 0;
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
  // Conversions on this thread (anchors.to(double) for float64 embeddings) read denormals as the
  // pool's threads do: a caller flushing them turned float32 anchors of 1e-40 into zero rows.
  const KeepDenormals keep_denormals;
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

// CPU kernels of an inverted-file (IVF) index's search: top_dots picks the lists each query
// probes (the k centroids of largest dot product), ivf_max_dot scans them.
//
// ivf_max_dot: the index keeps its vectors grouped by list (list l is vectors[offsets[l],
// offsets[l + 1])) and gives every query the lists it must scan (probes [N, P]). Scanning query
// by query reads each list once per query that probes it, a product of one row; here the scan
// goes list by list: the queries probing a list are gathered, a block at a time, and multiplied
// with the list's vectors, packed once per list, by the packed-panel kernels of
// core/dot_kernels.h (BLAS where the CPU has neither AVX-512 nor AVX2, or AVX2 and a long list).
// With AVX-512 the queries are gathered straight into the kernels' packed layout, transposed in
// registers: one copy of each gathered query, in cache. Each (query, probe) pair keeps its
// list's first maximum; a query's pairs are then reduced, ties going to the smallest position
// (or, given ids, to the smallest id: an index's lists hold its anchors in id order, list after
// list, so a tie between lists would otherwise go to the anchor of the earlier list), so results
// depend neither on the number of threads nor on the order in which the lists are scanned, on
// the panel route. BLAS may split a product of few queries and a long list across the threads
// it is given (MKL does, inside a parallel region too, and torch exposes no way to stop it), so
// there a product can move with the thread count by float32 rounding. One parallel region: the
// threads take lists, costliest first, from a shared counter.
//
// top_dots: row blocks multiplied with every centroid by the same panel kernels, and the k
// largest products of each row selected (select_top).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

#include "../core/dot_kernels.h"
#include "../core/similarity.h"
#include "checks.h"
#include "denormals.h"
#include "panel_choice.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "ivf_max_dot";
constexpr const char* kTopOp = "top_dots";

// Gathered queries per product: 256 rows of D = 384 floats (384 KiB) stay in a core's L2 with
// the list's packed vectors.
constexpr int64_t kBlockRows = 256;

// float32 CPU queries [N, D] and vectors [`rows`, D] with D >= 1: the operands of both ops.
void check_queries_and_vectors(const at::Tensor& queries, const at::Tensor& vectors, const char* op, const char* rows) {
  check_cpu(queries, op, "queries");
  check_cpu(vectors, op, "vectors");
  check_dtype(queries, op, "queries", at::kFloat);
  check_dtype(vectors, op, "vectors", at::kFloat);
  TORCH_CHECK_VALUE(queries.dim() == 2, op, ": queries must be 2-D [N, D], got shape ", queries.sizes());
  TORCH_CHECK_VALUE(vectors.dim() == 2, op, ": vectors must be 2-D [", rows, ", D], got shape ", vectors.sizes());
  TORCH_CHECK_VALUE(queries.size(1) >= 1, op, ": queries must have a positive dimension D, got shape ",
                    queries.sizes());
  TORCH_CHECK_VALUE(vectors.size(1) == queries.size(1), op, ": queries [N, D] and vectors [", rows,
                    ", D] must share D, got queries ", queries.sizes(), " and vectors ", vectors.sizes());
}

void check_arguments(const at::Tensor& queries, const at::Tensor& probes, const at::Tensor& vectors,
                     const at::Tensor& offsets) {
  check_queries_and_vectors(queries, vectors, kOp, "M");
  check_cpu(probes, kOp, "probes");
  check_cpu(offsets, kOp, "offsets");
  check_dtype(probes, kOp, "probes", at::kLong);
  check_dtype(offsets, kOp, "offsets", at::kLong);
  TORCH_CHECK_VALUE(probes.dim() == 2, kOp, ": probes must be 2-D [N, P], got shape ", probes.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1, kOp, ": offsets must be 1-D [L + 1], got shape ", offsets.sizes());
  TORCH_CHECK_VALUE(probes.size(0) == queries.size(0), kOp,
                    ": probes [N, P] must have a row for every query, got probes ", probes.sizes(), " and queries ",
                    queries.sizes());
  TORCH_CHECK_VALUE(offsets.size(0) >= 1, kOp, ": offsets must hold at least one value (offsets[0] = 0)");
}

// offsets must run from 0 to M without going down; every probe must name a list.
void check_values(const int64_t* offsets, int64_t lists, int64_t M, const int64_t* probes, int64_t pairs) {
  TORCH_CHECK_VALUE(offsets[0] == 0, kOp, ": offsets[0] must be 0, got ", offsets[0]);
  for (int64_t l = 0; l < lists; ++l) {
    TORCH_CHECK_VALUE(offsets[l + 1] >= offsets[l], kOp, ": offsets must not decrease, got offsets[", l, "] = ",
                      offsets[l], " and offsets[", l + 1, "] = ", offsets[l + 1]);
  }
  TORCH_CHECK_VALUE(offsets[lists] == M, kOp, ": offsets must end at the number of vectors (", M, "), got ",
                    offsets[lists]);
  for (int64_t i = 0; i < pairs; ++i) {
    TORCH_CHECK_VALUE(probes[i] >= 0 && probes[i] < lists, kOp, ": probes must name lists in [0, ", lists,
                      "), got ", probes[i], " at flat position ", i);
  }
}

std::tuple<at::Tensor, at::Tensor> ivf_max_dot_cpu(const at::Tensor& queries_in, const at::Tensor& probes_in,
                                                    const at::Tensor& vectors_in, const at::Tensor& offsets_in,
                                                    const std::optional<at::Tensor>& ids_in) {
  const at::AutoDispatchBelowADInplaceOrView no_autograd;
  const KeepDenormals keep_denormals;  // on this thread too: see max_anchor_similarity_cpu
  check_arguments(queries_in, probes_in, vectors_in, offsets_in);
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor probes = probes_in.contiguous();
  const at::Tensor vectors = vectors_in.contiguous();
  const at::Tensor offsets = offsets_in.contiguous();
  at::Tensor ids_tensor;
  if (ids_in.has_value()) {
    check_cpu(*ids_in, kOp, "ids");
    check_dtype(*ids_in, kOp, "ids", at::kLong);
    TORCH_CHECK_VALUE(ids_in->dim() == 1 && ids_in->size(0) == vectors.size(0), kOp,
                      ": ids must be 1-D [M], one per vector, got shape ", ids_in->sizes(), " for vectors ",
                      vectors.sizes());
    ids_tensor = ids_in->contiguous();
  }
  const int64_t* id = ids_tensor.defined() ? ids_tensor.data_ptr<int64_t>() : nullptr;
  const int64_t N = queries.size(0);
  const int64_t D = queries.size(1);
  const int64_t P = probes.size(1);
  const int64_t M = vectors.size(0);
  const int64_t lists = offsets.size(0) - 1;
  const int64_t* offset = offsets.data_ptr<int64_t>();
  const int64_t* probe = probes.data_ptr<int64_t>();
  check_values(offset, lists, M, probe, N * P);

  at::Tensor values = at::full({N}, -std::numeric_limits<float>::infinity(), queries.options());
  at::Tensor positions = at::full({N}, -1, queries.options().dtype(at::kLong));
  if (N == 0 || P == 0 || M == 0) {
    return {values, positions};
  }

  // The pairs (query n, probe p), numbered n * P + p, grouped by the list they scan.
  const int64_t pairs = N * P;
  std::vector<int64_t> first_pair(static_cast<size_t>(lists + 1), 0);
  for (int64_t i = 0; i < pairs; ++i) {
    ++first_pair[static_cast<size_t>(probe[i] + 1)];
  }
  for (int64_t l = 0; l < lists; ++l) {
    first_pair[static_cast<size_t>(l + 1)] += first_pair[static_cast<size_t>(l)];
  }
  std::vector<int64_t> pair_of(static_cast<size_t>(pairs));
  {
    std::vector<int64_t> cursor(first_pair.begin(), first_pair.end() - 1);
    for (int64_t i = 0; i < pairs; ++i) {
      pair_of[static_cast<size_t>(cursor[static_cast<size_t>(probe[i])]++)] = i;
    }
  }
  // Lists with work, costliest first: the last ones taken are the cheapest, so threads finish
  // together.
  std::vector<int64_t> work;
  for (int64_t l = 0; l < lists; ++l) {
    if (offset[l + 1] > offset[l] && first_pair[static_cast<size_t>(l + 1)] > first_pair[static_cast<size_t>(l)]) {
      work.push_back(l);
    }
  }
  auto cost = [&](int64_t l) {
    return (first_pair[static_cast<size_t>(l + 1)] - first_pair[static_cast<size_t>(l)]) * (offset[l + 1] - offset[l]);
  };
  std::stable_sort(work.begin(), work.end(), [&](int64_t a, int64_t b) { return cost(a) > cost(b); });

  // Each pair's first maximum within its list (-1: none, every product NaN).
  std::vector<float> pair_value(static_cast<size_t>(pairs), -std::numeric_limits<float>::infinity());
  std::vector<int64_t> pair_position(static_cast<size_t>(pairs), -1);
  const float* q = queries.data_ptr<float>();
  const float* v = vectors.data_ptr<float>();
  const core::Isa isa = cpu_isa();
  const int64_t jobs = static_cast<int64_t>(work.size());
  std::atomic<int64_t> next{0};

  auto scan = [&]() {
    KeepDenormals keep_denormals;
    std::vector<int64_t> query_at(static_cast<size_t>(kBlockRows));
    std::vector<float> gathered;  // the queries of a block, in place, where they are not gathered packed
    std::vector<float> packed_rows;
    std::vector<float> scores;
    for (int64_t job = next.fetch_add(1); job < jobs; job = next.fetch_add(1)) {
      const int64_t list = work[static_cast<size_t>(job)];
      const int64_t lo = offset[list];
      const int64_t size = offset[list + 1] - lo;
      const bool panels = size <= max_panel_anchors(isa);
      core::AnchorPanels packed;
      if (panels) {
        packed = core::AnchorPanels(isa, v + lo * D, size, D, /*row_dot_tail=*/false);
      }
      // AVX-512: the queries are gathered straight into the kernels' packed layout.
      const bool gather_packed = panels && packed.reads_only_packed_rows();
      const int64_t columns = panels ? packed.columns : size;
      scores.resize(static_cast<size_t>(kBlockRows * columns));
      const int64_t begin = first_pair[static_cast<size_t>(list)];
      const int64_t end = first_pair[static_cast<size_t>(list + 1)];
      for (int64_t b0 = begin; b0 < end; b0 += kBlockRows) {
        const int64_t rows = std::min(kBlockRows, end - b0);
        for (int64_t r = 0; r < rows; ++r) {
          query_at[static_cast<size_t>(r)] = pair_of[static_cast<size_t>(b0 + r)] / P;
        }
        if (gather_packed) {
          packed.gather_pack_rows(q, query_at.data(), rows, D, packed_rows);
          packed.dots(packed_rows.data(), rows, D, scores.data(), columns, 0, packed_rows.data());
        } else {
          gathered.resize(static_cast<size_t>(kBlockRows * D));
          for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(gathered.data() + r * D, q + query_at[static_cast<size_t>(r)] * D,
                        static_cast<size_t>(D) * sizeof(float));
          }
          if (panels) {  // AVX2: 16-wide panels, rows in place
            packed.dots(gathered.data(), rows, D, scores.data(), columns);
          } else {
            const at::Tensor x = at::from_blob(gathered.data(), {rows, D}, queries.options());
            at::Tensor out = at::from_blob(scores.data(), {rows, size}, queries.options());
            at::mm_out(out, x, vectors.narrow(0, lo, size).t());
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          const float* row = scores.data() + r * columns;
          const int64_t j = panels ? packed.first_argmax(row, size) : core::first_argmax(row, size);
          if (!std::isnan(row[j])) {
            const int64_t pair = pair_of[static_cast<size_t>(b0 + r)];
            pair_value[static_cast<size_t>(pair)] = row[j];
            pair_position[static_cast<size_t>(pair)] = lo + j;
          }
        }
      }
    }
  };
  at::parallel_for(0, std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), jobs)), 1,
                   [&](int64_t, int64_t) { scan(); });

  float* value_out = values.data_ptr<float>();
  int64_t* position_out = positions.data_ptr<int64_t>();
  at::parallel_for(0, N, grain_for(P), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float best = -std::numeric_limits<float>::infinity();
      int64_t at = -1;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t m = pair_position[static_cast<size_t>(n * P + p)];
        const float value = pair_value[static_cast<size_t>(n * P + p)];
        if (m < 0) {
          continue;
        }
        if (at < 0 || value > best ||
            (value == best && (id != nullptr ? id[m] < id[at] || (id[m] == id[at] && m < at) : m < at))) {
          best = value;
          at = m;
        }
      }
      value_out[n] = best;
      position_out[n] = at;
    }
  });
  return {values, positions};
}

// top_dots: rows per block (their products with every vector stay in L2 for the selection).
constexpr int64_t kTopBlockRows = 64;

// NaN ranks with -inf, below every other value.
inline float rank_value(float value) {
  return std::isnan(value) ? -std::numeric_limits<float>::infinity() : value;
}

// Buffers of select_top, reused from row to row.
struct Selection {
  std::vector<float> sample, values, kth;
  std::vector<int64_t> positions;
};

// Values sampled (evenly spaced) to find a threshold below the k-th largest.
constexpr int64_t kSelectionSample = 256;

// The k largest of s[0, n) by value (NaN as -inf, ties to the smaller index), written
// to out in increasing index order. A threshold a little below the k-th largest, taken from an
// evenly spaced sample, keeps the values at or above it (about 2k and more, in index order); the
// k-th largest is found among them and one pass takes what is above it and, in index order,
// what equals it until k are taken. If the sample put the threshold too high (fewer than k
// values kept), every value is kept instead: the result is the same, only slower.
void select_top(const float* s, int64_t n, int64_t k, Selection& w, int64_t* out) {
  if (k == 0) {
    return;
  }
  float threshold = -std::numeric_limits<float>::infinity();
  if (n >= 4 * kSelectionSample && 4 * k <= n) {
    w.sample.resize(static_cast<size_t>(kSelectionSample));
    for (int64_t i = 0; i < kSelectionSample; ++i) {
      w.sample[static_cast<size_t>(i)] = rank_value(s[i * n / kSelectionSample]);
    }
    // Twice the sample rank of the k-th largest, and some: about 2k values lie above it.
    const int64_t rank = std::min(kSelectionSample - 1, 2 * (k * kSelectionSample / n) + 8);
    std::nth_element(w.sample.begin(), w.sample.begin() + rank, w.sample.end(), std::greater<float>());
    threshold = w.sample[static_cast<size_t>(rank)];
  }
  w.values.resize(static_cast<size_t>(n));
  w.positions.resize(static_cast<size_t>(n));
  int64_t kept = 0;
  for (int attempt = 0;; ++attempt) {
    kept = 0;
    for (int64_t i = 0; i < n; ++i) {  // without branches: every value written, the kept ones advance
      const float value = rank_value(s[i]);
      w.values[static_cast<size_t>(kept)] = value;
      w.positions[static_cast<size_t>(kept)] = i;
      kept += value >= threshold;
    }
    if (kept >= k || attempt > 0) {
      break;
    }
    threshold = -std::numeric_limits<float>::infinity();  // an unlucky sample: keep every value
  }
  w.kth.assign(w.values.begin(), w.values.begin() + kept);
  std::nth_element(w.kth.begin(), w.kth.begin() + (k - 1), w.kth.end(), std::greater<float>());
  const float kth = w.kth[static_cast<size_t>(k - 1)];
  int64_t above = 0;
  for (int64_t c = 0; c < kept; ++c) {
    above += w.values[static_cast<size_t>(c)] > kth;
  }
  int64_t ties = k - above;  // values equal to the k-th largest that are taken: the first ones
  int64_t taken = 0;
  for (size_t c = 0; c < static_cast<size_t>(kept) && taken < k; ++c) {
    if (w.values[c] > kth || (w.values[c] == kth && ties-- > 0)) {
      out[taken++] = w.positions[c];
    }
  }
}

at::Tensor top_dots_cpu(const at::Tensor& queries_in, const at::Tensor& vectors_in, int64_t k) {
  const at::AutoDispatchBelowADInplaceOrView no_autograd;
  const KeepDenormals keep_denormals;  // on this thread too: see max_anchor_similarity_cpu
  check_queries_and_vectors(queries_in, vectors_in, kTopOp, "C");
  TORCH_CHECK_VALUE(k >= 0 && k <= vectors_in.size(0), kTopOp, ": k must be in [0, C] = [0, ", vectors_in.size(0),
                    "], got ", k);
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor vectors = vectors_in.contiguous();
  const int64_t N = queries.size(0);
  const int64_t D = queries.size(1);
  const int64_t C = vectors.size(0);
  at::Tensor indices = at::empty({N, k}, queries.options().dtype(at::kLong));
  if (N == 0 || k == 0) {
    return indices;
  }
  const core::Isa isa = cpu_isa();
  const bool panels = C <= max_panel_anchors(isa);
  core::AnchorPanels packed;
  if (panels) {
    // No row-dot tail: every column computed by the same kernel, so equal vectors tie exactly.
    packed = core::AnchorPanels(isa, vectors.data_ptr<float>(), C, D, /*row_dot_tail=*/false);
  }
  const int64_t columns = panels ? packed.columns : C;
  const float* q = queries.data_ptr<float>();
  int64_t* out = indices.data_ptr<int64_t>();
  const int64_t blocks = (N + kTopBlockRows - 1) / kTopBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    KeepDenormals keep_denormals;
    std::vector<float> scores(static_cast<size_t>(kTopBlockRows * columns));
    std::vector<float> packed_rows;
    Selection work;
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t r0 = block * kTopBlockRows;
      const int64_t rows = std::min(kTopBlockRows, N - r0);
      const float* x = q + r0 * D;
      if (panels) {
        const bool pack = packed.wants_packed_rows();
        if (pack) {
          packed.pack_rows(x, rows, D, packed_rows);
        }
        packed.dots(x, rows, D, scores.data(), columns, 0, pack ? packed_rows.data() : nullptr);
      } else {
        at::Tensor product = at::from_blob(scores.data(), {rows, C}, queries.options());
        at::mm_out(product, queries.narrow(0, r0, rows), vectors.t());
      }
      for (int64_t r = 0; r < rows; ++r) {
        select_top(scores.data() + r * columns, C, k, work, out + (r0 + r) * k);
      }
    }
  });
  return indices;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("ivf_max_dot", &ivf_max_dot_cpu);
  m.impl("top_dots", &top_dots_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

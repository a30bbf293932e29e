// The CUDA kernels (csrc/cuda, torch-free) against the CPU algorithms of csrc/core: masking and
// sampling must match bit for bit for the same seed, similarities within float32 rounding.
// Exits with 77 (reported as skipped by ctest) when no CUDA device is present.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "check.h"
#include "core/masking.h"
#include "cuda/kernels.h"

using namespace diffmask_fast;

namespace {

#define CUDA_OK(call)                                                                                     \
  do {                                                                                                    \
    const cudaError_t status_ = (call);                                                                   \
    if (status_ != cudaSuccess) {                                                                         \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(status_)); \
      std::exit(1);                                                                                       \
    }                                                                                                     \
  } while (0)

// A device copy of a host vector, freed with the object.
template <typename T>
struct DeviceArray {
  T* data = nullptr;
  size_t size = 0;

  explicit DeviceArray(size_t n) : size(n) { CUDA_OK(cudaMalloc(&data, (n > 0 ? n : 1) * sizeof(T))); }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    if (!host.empty()) {
      CUDA_OK(cudaMemcpy(data, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(data); }

  std::vector<T> host() const {
    std::vector<T> out(size);
    if (size > 0) {
      CUDA_OK(cudaMemcpy(out.data(), data, size * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return out;
  }
};

// bool arrays live in byte vectors (std::vector<bool> is packed) and are copied to bool[] for core.
std::unique_ptr<bool[]> as_bools(const std::vector<unsigned char>& v) {
  std::unique_ptr<bool[]> out(new bool[v.size() + 1]);
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i] != 0;
  return out;
}

struct Random {
  core::Stream stream;
  uint64_t counter = 0;
  explicit Random(uint64_t seed) : stream(seed, 99) {}
  double unit() { return core::to_unit(stream.at(counter++)); }
  int64_t index(int64_t n) { return core::to_index(stream.at(counter++), n); }
};

// seed_on_device: the seed as a device scalar (the training step's) or a value (the op's);
// nonpositive_scores: every score in the table 0 or negative, so that similarity weights sum to 0.
void test_masking(uint64_t seed, int64_t B, int64_t L, const core::MaskParams& params, bool seed_on_device = true,
                  bool nonpositive_scores = false) {
  Random rng(seed);
  const int64_t V = 700;
  std::vector<int64_t> ids(B * L);
  std::vector<unsigned char> never(B * L), starts(V);
  for (int64_t v = 0; v < V; ++v) starts[v] = rng.unit() < 0.6;
  for (int64_t i = 0; i < B * L; ++i) {
    ids[i] = rng.index(V);
    never[i] = rng.unit() < 0.08 || (i % L == 0 && i / L % 3 != 2);  // a leading special token, or a word
    if (never[i] && rng.unit() < 0.3) ids[i] = V + 5;  // out of range, under never_word
  }
  if (B > 1) {
    for (int64_t l = 0; l < L; ++l) never[L + l] = 1;  // an empty row
  }
  // Table: about 70% of the words of the batch, some scores zero or negative.
  int64_t capacity = 1;
  while (capacity < 4 * B * L + 2) capacity *= 2;
  std::vector<int64_t> keys(capacity, 0);
  std::vector<float> values(capacity, 0.0f);
  {
    std::vector<int64_t> index(L), begin(L), end(L), hash(L);
    std::vector<int64_t> new_keys;
    std::vector<float> new_values;
    const std::unique_ptr<bool[]> nb = as_bools(never), sb = as_bools(starts);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = core::group_row(ids.data() + b * L, nb.get() + b * L, L, sb.get(), V, index.data(), begin.data(),
                                        end.data(), hash.data());
      for (int64_t w = 0; w < n; ++w) {
        if (rng.unit() < 0.7) {
          new_keys.push_back(hash[w]);
          const double u = rng.unit();
          const float score = u < 0.1 ? 0.0f : static_cast<float>(2 * rng.unit() - 0.5);
          new_values.push_back(nonpositive_scores ? -std::fabs(score) : score);
        }
      }
    }
    const core::InsertResult inserted = core::table_insert(keys.data(), values.data(), capacity, new_keys.data(),
                                                           new_values.data(), static_cast<int64_t>(new_keys.size()));
    CHECK(inserted.status == core::InsertStatus::kOk);
  }
  // A few scores that are not finite (reported per row as bad_score) and a few ids outside the
  // vocabulary that no never_word covers (reported as bad_position; masked as never_word).
  for (int64_t c = 0; c < capacity; ++c) {
    if (keys[c] != 0 && rng.unit() < 0.05) values[c] = rng.unit() < 0.5 ? NAN : INFINITY;
  }
  std::vector<int64_t> cpu_bad(B, -1);
  for (int64_t i = 0; i < B * L; ++i) {
    if (!never[i] && rng.unit() < 0.01) {
      const double u = rng.unit();
      ids[i] = u < 0.3 ? -3 : u < 0.6 ? V : V + 9;  // V: the first id past the vocabulary
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t l = 0; l < L && cpu_bad[b] < 0; ++l) {
      const int64_t id = ids[b * L + l];
      if (!never[b * L + l] && (id < 0 || id >= V)) cpu_bad[b] = l;
    }
  }
  std::vector<int64_t> random_ids;
  for (int64_t v = 100; v < 200; ++v) random_ids.push_back(v);

  // CPU: core::mask_row per row, ids outside the vocabulary treated as never_word.
  std::vector<int64_t> cpu_ids(B * L), cpu_labels(B * L), cpu_words(B), cpu_missed(B), cpu_bad_score(B);
  std::vector<int64_t> cpu_miss_hash(B * L, 0), cpu_miss_end(B * L, 0);  // at each missing word's first token
  core::RowScratch scratch(L);
  std::unique_ptr<bool[]> excluded(new bool[L + 1]);
  const std::unique_ptr<bool[]> starts_host = as_bools(starts);
  const core::TableView table{keys.data(), values.data(), capacity};
  std::vector<core::Miss> misses;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t id = ids[b * L + l];
      excluded[l] = never[b * L + l] != 0 || id < 0 || id >= V;
    }
    misses.clear();
    const core::RowResult r = core::mask_row(ids.data() + b * L, excluded.get(), L, starts_host.get(), V, table,
                                             random_ids.data(), static_cast<int64_t>(random_ids.size()), params,
                                             core::Stream(seed, static_cast<uint64_t>(b)), scratch,
                                             cpu_ids.data() + b * L, cpu_labels.data() + b * L, &misses);
    cpu_words[b] = r.masked_words;
    cpu_missed[b] = static_cast<int64_t>(misses.size());
    cpu_bad_score[b] = r.bad_score_position;
    for (const core::Miss& miss : misses) {
      cpu_miss_hash[b * L + miss.begin] = miss.hash;
      cpu_miss_end[b * L + miss.begin] = miss.end;
    }
  }

  // GPU.
  DeviceArray<int64_t> d_ids(ids), d_keys(keys), d_random(random_ids);
  DeviceArray<unsigned char> d_never(never), d_starts(starts);
  DeviceArray<float> d_values(values);
  DeviceArray<int64_t> d_out(B * L), d_labels(B * L), d_words(B), d_n(B), d_missed(B);
  DeviceArray<int64_t> d_seed(std::vector<int64_t>{static_cast<int64_t>(seed)});
  cuda::MaskProblem p;
  p.input_ids = d_ids.data;
  p.never_word = reinterpret_cast<const bool*>(d_never.data);
  p.rows = B;
  p.length = L;
  p.starts_word = reinterpret_cast<const bool*>(d_starts.data);
  p.vocabulary = V;
  p.table_keys = d_keys.data;
  p.table_values = d_values.data;
  p.capacity = capacity;
  p.random_token_ids = d_random.data;
  p.n_random = static_cast<int64_t>(random_ids.size());
  p.mlm_probability = params.mlm_probability;
  p.weighting = params.weighting;
  p.uniform_mix = params.uniform_mix;
  p.unknown_score = params.unknown_score;
  p.mask_token_id = params.mask_token_id;
  p.mask_replace_prob = params.mask_replace_prob;
  p.random_replace_prob = params.random_replace_prob;
  p.seed_device = seed_on_device ? d_seed.data : nullptr;
  p.seed_value = seed_on_device ? -1 : static_cast<int64_t>(seed);
  p.masked_ids = d_out.data;
  p.labels = d_labels.data;
  p.masked_words = d_words.data;
  p.n_words = d_n.data;
  p.missed_words = d_missed.data;
  DeviceArray<int64_t> d_miss_hash(B * L), d_miss_end(B * L), d_bad(B), d_bad_score(B);
  p.miss_hash = d_miss_hash.data;
  p.miss_end = d_miss_end.data;
  p.bad_position = d_bad.data;
  p.bad_score = d_bad_score.data;
  DeviceArray<unsigned char> workspace(cuda::mask_workspace_bytes(p));
  CUDA_OK(cuda::difference_mask(p, workspace.data, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  CHECK(d_out.host() == cpu_ids);
  CHECK(d_labels.host() == cpu_labels);
  CHECK(d_words.host() == cpu_words);
  CHECK(d_missed.host() == cpu_missed);
  CHECK(d_miss_hash.host() == cpu_miss_hash);
  CHECK(d_miss_end.host() == cpu_miss_end);
  CHECK(d_bad.host() == cpu_bad);
  CHECK(d_bad_score.host() == cpu_bad_score);
}

// sample_without_replacement of rows x cols device weights (float32 or float64), one count per
// row: the selection, and each row's (position, code) in *status.
std::vector<unsigned char> sample_on_device(const void* weights, bool float64, int64_t rows, int64_t cols,
                                            const std::vector<int64_t>& counts, uint64_t seed,
                                            std::vector<int64_t>* status) {
  DeviceArray<int64_t> d_counts(counts), d_status(2 * rows);
  DeviceArray<unsigned char> d_selected(rows * cols);
  cuda::SampleProblem p;
  p.weights = weights;
  p.float64 = float64;
  p.rows = rows;
  p.cols = cols;
  p.counts = d_counts.data;
  p.seed = seed;
  p.selected = reinterpret_cast<bool*>(d_selected.data);
  p.status = d_status.data;
  DeviceArray<unsigned char> workspace(cuda::sample_workspace_bytes(p));
  CUDA_OK(cuda::sample_without_replacement(p, workspace.data, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  *status = d_status.host();
  return d_selected.host();
}

// mixed_scales (float64): weights scaled by 1, 1e-310 or 1e-320 at random, so that keys E / w
// overflow beside finite ones in the same row.
void test_sampling(uint64_t seed, int64_t B, int64_t N, bool float64, bool mixed_scales = false) {
  Random rng(seed);
  std::vector<double> w(B * N);
  std::vector<int64_t> counts(B);
  const double scales[3] = {1.0, 1e-310, 1e-320};
  for (int64_t i = 0; i < B * N; ++i) {
    const double u = rng.unit();
    w[i] = u < 0.3 ? 0.0 : (float64 ? rng.unit() : static_cast<double>(static_cast<float>(rng.unit())));
    if (mixed_scales) {
      w[i] *= scales[rng.index(3)];
    }
  }
  for (int64_t b = 0; b < B; ++b) counts[b] = rng.index(N + 3);
  std::vector<unsigned char> expected(B * N, 0);
  std::vector<core::KeyIndex> scratch(N + 1);
  for (int64_t b = 0; b < B; ++b) {
    const core::Stream stream(seed, static_cast<uint64_t>(b));
    const int64_t k = core::successive_sample(w.data() + b * N, N, counts[b], stream, scratch.data());
    for (int64_t j = 0; j < k; ++j) expected[b * N + scratch[j].index] = 1;
  }
  std::vector<float> wf(w.begin(), w.end());
  DeviceArray<double> d_w64(float64 ? w : std::vector<double>());
  DeviceArray<float> d_w32(float64 ? std::vector<float>() : wf);
  std::vector<int64_t> status;
  const void* weights = float64 ? static_cast<const void*>(d_w64.data) : static_cast<const void*>(d_w32.data);
  CHECK(sample_on_device(weights, float64, B, N, counts, seed, &status) == expected);
  for (int64_t code : status) CHECK(code == 0 || code == -1);
}

// Rows whose keys tie exactly: a weight E_i * m (E_i the exponential of draw i of the row's
// stream, m a power of two) gives the key E_i / (E_i * m) = 1 / m exactly. Ties at the k-th key go
// to the smallest positions, as core::key_index_less orders them, across several rounds of a
// block's threads (600 positions).
void test_sampling_ties() {
  const uint64_t seed = 5;
  const int64_t B = 3, N = 600;
  const std::vector<int64_t> counts = {400, 3, 590};
  const core::LogTable& table = core::log_table();
  std::vector<double> w(B * N);
  std::vector<unsigned char> expected(B * N, 0);
  for (int64_t b = 0; b < B; ++b) {
    const core::Stream stream(seed, static_cast<uint64_t>(b));
    std::vector<int64_t> by_key[3];  // positions of keys 0.5, 1 and 2, in order
    for (int64_t i = 0; i < N; ++i) {
      const double e = core::to_exponential(stream.at(static_cast<uint64_t>(i)), table);
      CHECK(e > 0 && std::isfinite(e));
      const int group = b == 1 ? 1 : i % 5 == 0 ? 0 : i % 7 == 0 ? 2 : 1;
      w[b * N + i] = e * (group == 0 ? 2.0 : group == 1 ? 1.0 : 0.5);
      by_key[group].push_back(i);
    }
    int64_t left = counts[b];
    for (const std::vector<int64_t>& positions : by_key) {
      for (size_t j = 0; j < positions.size() && left > 0; ++j, --left) expected[b * N + positions[j]] = 1;
    }
  }
  // The k-th key is a tie in every row: 280 of row 0's 412 keys 1, 3 of row 1's 600, 58 of row 2's 68 keys 2.
  std::vector<core::KeyIndex> scratch(N);
  for (int64_t b = 0; b < B; ++b) {
    const core::Stream stream(seed, static_cast<uint64_t>(b));
    const int64_t k = core::successive_sample(w.data() + b * N, N, counts[b], stream, scratch.data());
    std::vector<unsigned char> chosen(N, 0);
    for (int64_t j = 0; j < k; ++j) chosen[scratch[j].index] = 1;
    CHECK(std::equal(chosen.begin(), chosen.end(), expected.begin() + b * N));
  }
  DeviceArray<double> d_w(w);
  std::vector<int64_t> status;
  CHECK(sample_on_device(d_w.data, true, B, N, counts, seed, &status) == expected);
}

// Each row's first problem as core::find_bad_weight names it, a negative count before any; a row
// with a problem selects nothing. No rows: nothing to launch.
void test_sampling_status() {
  const std::vector<float> w = {0.5f, 1.0f, NAN, 2.0f, -1.0f, INFINITY, 0.5f, 0.5f, 0.5f,
                                0.5f, INFINITY, 0.5f, NAN, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<int64_t> counts = {1, 1, -2, 1, -1, 2};
  DeviceArray<float> d_w(w);
  DeviceArray<int64_t> d_counts(counts), d_status(12);
  DeviceArray<unsigned char> d_selected(std::vector<unsigned char>(18, 7));
  cuda::SampleProblem p;
  p.weights = d_w.data;
  p.rows = 6;
  p.cols = 3;
  p.counts = d_counts.data;
  p.selected = reinterpret_cast<bool*>(d_selected.data);
  p.status = d_status.data;
  DeviceArray<unsigned char> workspace(cuda::sample_workspace_bytes(p));
  CUDA_OK(cuda::sample_without_replacement(p, workspace.data, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<int64_t> status = d_status.host();
  CHECK(status[0] == 2 && status[1] == cuda::kSampleNaNWeight);
  CHECK(status[2] == 1 && status[3] == cuda::kSampleNegativeWeight);  // row 1: -1 at 1 before inf at 2
  CHECK(status[4] == -1 && status[5] == cuda::kSampleNegativeCount);
  CHECK(status[6] == 1 && status[7] == cuda::kSampleInfiniteWeight);
  CHECK(status[8] == -1 && status[9] == cuda::kSampleNegativeCount);  // the count first, as the CPU op checks it
  CHECK(status[10] == -1 && status[11] == cuda::kSampleOk);
  const std::vector<unsigned char> selected = d_selected.host();
  CHECK(std::count(selected.begin(), selected.begin() + 15, 0) == 15);
  CHECK(selected[15] + selected[16] + selected[17] == 2 && selected[15] <= 1 && selected[16] <= 1 && selected[17] <= 1);
  p.rows = 0;
  CHECK(cuda::sample_without_replacement(p, workspace.data, nullptr) == cudaSuccess);
  CUDA_OK(cudaDeviceSynchronize());
}

// The blocked method's products by a plain kernel (the extension passes torch's cuBLAS): one
// thread per product, summed in the output's type.
template <typename In, typename Out>
__global__ void plain_product_kernel(const In* a, int64_t lda, const In* b, int64_t ldb, int64_t rows, int64_t cols,
                                     int64_t depth, Out* c, int64_t ldc) {
  for (int64_t at = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; at < rows * cols;
       at += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = at / cols;
    const int64_t j = at % cols;
    Out sum = 0;
    for (int64_t t = 0; t < depth; ++t) {
      sum += static_cast<Out>(a[i * lda + t]) * static_cast<Out>(b[j * ldb + t]);
    }
    c[i * ldc + j] = sum;
  }
}

struct ProductCalls {
  int blocks = 0;
  bool failing = false;  // the routine fails (as torch's would with an error)
};

cudaError_t plain_product(const cuda::ProductBlock& block, cudaStream_t stream, void* context) {
  ProductCalls& calls = *static_cast<ProductCalls*>(context);
  ++calls.blocks;
  if (calls.failing) {
    return cudaErrorNotSupported;
  }
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((block.rows * block.cols + 255) / 256, 4096));
  switch (block.type) {
    case cuda::ProductType::kFloat32:
      plain_product_kernel<<<grid, 256, 0, stream>>>(static_cast<const float*>(block.a), block.lda,
                                                       static_cast<const float*>(block.b), block.ldb, block.rows,
                                                       block.cols, block.depth, static_cast<float*>(block.c), block.ldc);
      break;
    case cuda::ProductType::kFloat64:
      plain_product_kernel<<<grid, 256, 0, stream>>>(static_cast<const double*>(block.a), block.lda,
                                                       static_cast<const double*>(block.b), block.ldb, block.rows,
                                                       block.cols, block.depth, static_cast<double*>(block.c),
                                                       block.ldc);
      break;
    case cuda::ProductType::kBfloat16:
      plain_product_kernel<<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(block.a), block.lda,
                                                       static_cast<const __nv_bfloat16*>(block.b), block.ldb,
                                                       block.rows, block.cols, block.depth,
                                                       static_cast<float*>(block.c), block.ldc);
      break;
  }
  return cudaGetLastError();
}

// n contiguous rows of d values against k anchors, the results into values and indices.
cuda::SimilarityProblem contiguous_problem(const void* x, const void* anchors, int64_t n, int64_t d, int64_t k,
                                           float* values, int64_t* indices) {
  cuda::SimilarityProblem p;
  p.embeddings = x;
  p.n = n;
  p.d = d;
  p.ld = d;
  p.anchors = anchors;
  p.k = k;
  p.values = values;
  p.indices = indices;
  return p;
}

// Plans and runs `p` with the plain product routine (counting its calls in `calls`) or without one.
cuda::SimilarityPlan run_similarity(cuda::SimilarityProblem& p, bool with_products, ProductCalls& calls,
                                    const cuda::BlockLimits& limits) {
  if (with_products) {
    p.product = &plain_product;
    p.product_context = &calls;
  }
  cuda::SimilarityPlan plan;
  CUDA_OK(cuda::plan_max_anchor_similarity(p, &plan, limits));
  DeviceArray<unsigned char> workspace(plan.workspace_bytes);
  CUDA_OK(cuda::max_anchor_similarity(p, plan, workspace.data, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  return plan;
}

// The cosine of `row` with anchor `anchor` of `anchors`, or with the nearest anchor (anchor -1),
// in double; 0 for a zero row.
template <typename T>
double reference_cosine(const T* row, const std::vector<T>& anchors, int64_t d, int64_t k, int64_t anchor) {
  double norm = 0;
  for (int64_t j = 0; j < d; ++j) norm += static_cast<double>(row[j]) * row[j];
  norm = std::sqrt(norm);
  double best = -2;
  for (int64_t a_i = anchor < 0 ? 0 : anchor; a_i < (anchor < 0 ? k : anchor + 1); ++a_i) {
    double dot = 0, anchor_norm = 0;
    for (int64_t j = 0; j < d; ++j) {
      dot += static_cast<double>(row[j]) * anchors[a_i * d + j];
      anchor_norm += static_cast<double>(anchors[a_i * d + j]) * anchors[a_i * d + j];
    }
    best = std::max(best, norm > 0 ? dot / (norm * std::sqrt(anchor_norm)) : 0.0);
  }
  return best;
}

template <typename T>
void test_similarity(uint64_t seed, int64_t n, int64_t d, int64_t k, cuda::Precision precision, double tolerance,
                     const cuda::BlockLimits& limits = cuda::BlockLimits(), bool duplicates = false,
                     bool with_products = true) {
  Random rng(seed);
  std::vector<T> x(n * d), a(k * d);
  for (auto& v : x) v = static_cast<T>(2 * rng.unit() - 1);
  for (auto& v : a) v = static_cast<T>(2 * rng.unit() - 1);
  for (int64_t j = 0; j < d; ++j) x[j] = 0;  // a zero embedding
  if (duplicates && k >= 3) {
    for (int64_t j = 0; j < d; ++j) a[(k - 1) * d + j] = a[1 * d + j];  // ties go to anchor 1
    for (int64_t r = 1; r < n; r += 7) {
      for (int64_t j = 0; j < d; ++j) x[r * d + j] = a[1 * d + j] * 2;  // exactly anchor 1's direction
    }
  }
  if (n > 2) {
    x[2 * d] = std::numeric_limits<T>::quiet_NaN();  // a NaN embedding: (NaN, 0)
  }
  DeviceArray<T> d_x(x), d_a(a);
  DeviceArray<float> d_values(n);
  DeviceArray<int64_t> d_indices(n);
  cuda::SimilarityProblem p = contiguous_problem(d_x.data, d_a.data, n, d, k, d_values.data, d_indices.data);
  p.float64 = std::is_same<T, double>::value;
  p.precision = precision;
  ProductCalls calls;
  const cuda::SimilarityPlan plan = run_similarity(p, with_products, calls, limits);
  CHECK((plan.method == cuda::SimilarityMethod::kBlocked) == (p.float64 || (with_products && k > 32)));
  const bool blocked = plan.method == cuda::SimilarityMethod::kBlocked;
  const int64_t expected_blocks =
      blocked ? ((n + plan.row_block - 1) / plan.row_block) * ((k + plan.anchor_block - 1) / plan.anchor_block) : 0;
  CHECK(calls.blocks == expected_blocks);
  const std::vector<float> values = d_values.host();
  const std::vector<int64_t> indices = d_indices.host();
  double worst = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (r == 2) {
      CHECK(std::isnan(values[r]) && indices[r] == 0);
      continue;
    }
    const double best = reference_cosine(x.data() + r * d, a, d, k, -1);
    worst = std::max(worst, std::fabs(values[r] - best));
    CHECK(indices[r] >= 0 && indices[r] < k);
    if (indices[r] >= 0 && indices[r] < k) {
      CHECK(reference_cosine(x.data() + r * d, a, d, k, indices[r]) >= best - 2 * tolerance);
    }
    if (duplicates && k >= 3 && r % 7 == 1) CHECK(indices[r] == 1);
  }
  CHECK(values[0] == 0.0f && indices[0] == 0);
  if (!(worst <= tolerance)) {
    std::fprintf(stderr, "similarity n=%lld d=%lld k=%lld precision=%d float64=%d: max error %g > %g\n",
                 static_cast<long long>(n), static_cast<long long>(d), static_cast<long long>(k),
                 static_cast<int>(precision), static_cast<int>(p.float64), worst, tolerance);
    CHECK(false);
  }
}

// Rows `ld` values apart: contiguous (ld = d), padded (ld > d; the padding is NaN and must never
// be read) or one row seen n times (ld = 0, as an expanded tensor), by either method.
template <typename T>
void test_similarity_layout(uint64_t seed, int64_t n, int64_t d, int64_t k, int64_t ld, cuda::Precision precision,
                            double tolerance, bool with_products,
                            const cuda::BlockLimits& limits = cuda::BlockLimits()) {
  Random rng(seed);
  std::vector<T> x(ld == 0 ? d : (n - 1) * ld + d, std::numeric_limits<T>::quiet_NaN()), a(k * d);
  for (int64_t r = 0; r < (ld == 0 ? 1 : n); ++r) {
    for (int64_t j = 0; j < d; ++j) x[r * ld + j] = static_cast<T>(2 * rng.unit() - 1);
  }
  for (auto& v : a) v = static_cast<T>(2 * rng.unit() - 1);
  DeviceArray<T> d_x(x), d_a(a);
  DeviceArray<float> d_values(n);
  DeviceArray<int64_t> d_indices(n);
  cuda::SimilarityProblem p = contiguous_problem(d_x.data, d_a.data, n, d, k, d_values.data, d_indices.data);
  p.ld = ld;
  p.float64 = std::is_same<T, double>::value;
  p.precision = precision;
  ProductCalls calls;
  run_similarity(p, with_products, calls, limits);
  const std::vector<float> values = d_values.host();
  const std::vector<int64_t> indices = d_indices.host();
  int wrong = 0;
  for (int64_t r = 0; r < n; ++r) {
    const T* row = x.data() + r * ld;
    const double best = reference_cosine(row, a, d, k, -1);
    wrong += !(std::fabs(values[r] - best) <= tolerance);
    wrong += !(indices[r] >= 0 && indices[r] < k);
    if (indices[r] >= 0 && indices[r] < k) wrong += !(reference_cosine(row, a, d, k, indices[r]) >= best - 2 * tolerance);
  }
  if (wrong > 0) {
    std::fprintf(stderr, "similarity seed=%llu n=%lld d=%lld k=%lld ld=%lld precision=%d float64=%d products=%d: "
                 "%d wrong\n", static_cast<unsigned long long>(seed), static_cast<long long>(n),
                 static_cast<long long>(d), static_cast<long long>(k), static_cast<long long>(ld),
                 static_cast<int>(precision), static_cast<int>(p.float64), static_cast<int>(with_products), wrong);
    CHECK(wrong == 0);
  }
}

// Bounds of the precisions (unit roundoff u = 2^-8 for bfloat16; bf16x3 3 u^2; sums of depth
// terms in float32), for values in [-1, 1].
double precision_bound(cuda::Precision precision, int64_t d, bool float64) {
  const double u = std::ldexp(1.0, -8), sums = static_cast<double>(d) * std::ldexp(1.0, -24);
  if (float64) return 1e-7;  // computed in float64, returned in float32 (a rounding of up to 3e-8)
  switch (precision) {
    case cuda::Precision::kBf16x3:
      return 3 * u * u + 3 * sums;
    case cuda::Precision::kBf16:
      return 2 * u + sums;
    default:
      return 1e-5;
  }
}

// Scale does not change a cosine: rows and anchors multiplied by powers of two far from 1 (float32
// rows whose squares overflow, or whose sum of squares is subnormal or 0; float64 anchors and rows
// near 1e+-200 and below) give the cosines of the values they hold.
template <typename T>
void test_similarity_scales(int64_t k, bool with_products) {
  const bool float64 = std::is_same<T, double>::value;
  const int64_t n = 7, d = 96;
  const std::vector<int> exponents =
      float64 ? std::vector<int>{0, 660, -660, -1000} : std::vector<int>{0, 66, -70, -83};
  const double tolerance = precision_bound(cuda::Precision::kFloat32, d, float64);
  Random rng(40 + k);
  std::vector<double> x(n * d), a(k * d);
  for (auto& v : x) v = 2 * rng.unit() - 1;
  for (auto& v : a) v = 2 * rng.unit() - 1;
  // values in T scaled by 2^exponent, and what the scaled values hold, scaled back exactly
  auto scale = [](const std::vector<double>& values, int exponent, std::vector<T>& scaled,
                  std::vector<double>& held) {
    scaled.resize(values.size());
    held.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      scaled[i] = static_cast<T>(std::ldexp(static_cast<double>(static_cast<T>(values[i])), exponent));
      held[i] = std::ldexp(static_cast<double>(scaled[i]), -exponent);
    }
  };
  for (int row_exponent : exponents) {
    for (int anchor_exponent : exponents) {
      std::vector<T> scaled_x, scaled_a;
      std::vector<double> held_x, held_a;
      scale(x, row_exponent, scaled_x, held_x);
      scale(a, anchor_exponent, scaled_a, held_a);
      DeviceArray<T> d_x(scaled_x), d_a(scaled_a);
      DeviceArray<float> d_values(n);
      DeviceArray<int64_t> d_indices(n);
      cuda::SimilarityProblem p = contiguous_problem(d_x.data, d_a.data, n, d, k, d_values.data, d_indices.data);
      p.float64 = float64;
      ProductCalls calls;
      run_similarity(p, with_products, calls, cuda::BlockLimits());
      const std::vector<float> values = d_values.host();
      const std::vector<int64_t> indices = d_indices.host();
      int wrong = 0;
      for (int64_t r = 0; r < n; ++r) {
        const double best = reference_cosine(held_x.data() + r * d, held_a, d, k, -1);
        wrong += !(std::fabs(values[r] - best) <= tolerance) || !(indices[r] >= 0 && indices[r] < k) ||
                 !(reference_cosine(held_x.data() + r * d, held_a, d, k, indices[r]) >= best - 2 * tolerance);
      }
      if (wrong > 0) {
        std::fprintf(stderr, "similarity of rows scaled by 2^%d, anchors by 2^%d (k=%lld float64=%d products=%d): "
                     "%d wrong\n", row_exponent, anchor_exponent, static_cast<long long>(k), static_cast<int>(float64),
                     static_cast<int>(with_products), wrong);
        CHECK(wrong == 0);
      }
    }
  }
}

// A zero anchor is at cosine 0 from every row, so the nearest for rows opposite every other
// anchor; anchors that are all NaN leave every row at (NaN, 0).
template <typename T>
void test_similarity_degenerate_anchors(int64_t k, bool with_products) {
  const int64_t n = 5, d = 24;
  Random rng(50 + k);
  std::vector<T> direction(d), x(n * d), a(k * d, T(0));
  for (auto& v : direction) v = static_cast<T>(2 * rng.unit() - 1);
  for (int64_t j = 0; j < d; ++j) {
    for (int64_t c = 0; c + 1 < k; ++c) a[c * d + j] = direction[j] * static_cast<T>(c + 1);  // the last is zero
    for (int64_t r = 0; r < n; ++r) x[r * d + j] = -direction[j] * static_cast<T>(r + 1);
  }
  for (bool nan_anchors : {false, true}) {
    if (nan_anchors) std::fill(a.begin(), a.end(), std::numeric_limits<T>::quiet_NaN());
    DeviceArray<T> d_x(x), d_a(a);
    DeviceArray<float> d_values(n);
    DeviceArray<int64_t> d_indices(n);
    cuda::SimilarityProblem p = contiguous_problem(d_x.data, d_a.data, n, d, k, d_values.data, d_indices.data);
    p.float64 = std::is_same<T, double>::value;
    ProductCalls calls;
    run_similarity(p, with_products, calls, cuda::BlockLimits());
    const std::vector<float> values = d_values.host();
    const std::vector<int64_t> indices = d_indices.host();
    for (int64_t r = 0; r < n; ++r) {
      CHECK(nan_anchors ? std::isnan(values[r]) && indices[r] == 0 : values[r] == 0.0f && indices[r] == k - 1);
    }
  }
}

// A random similarity problem: shape, row layout, type, precision, method and block sizes.
void fuzz_similarity(uint64_t seed) {
  Random rng(seed);
  const int64_t n = 1 + rng.index(rng.unit() < 0.2 ? 3 : 260);
  const int64_t d = 1 + rng.index(rng.unit() < 0.2 ? 4 : 100);
  const int64_t k = 1 + rng.index(rng.unit() < 0.5 ? 40 : 120);
  const double layout = rng.unit();
  const int64_t ld = n == 1 || layout < 0.6 ? d : layout < 0.8 ? d + 1 + rng.index(9) : 0;
  const bool float64 = rng.unit() < 0.25;
  const bool with_products = float64 || rng.unit() < 0.8;
  const cuda::Precision precision = static_cast<cuda::Precision>(rng.index(3));
  cuda::BlockLimits limits;
  if (rng.unit() < 0.6) {  // small blocks: many, ragged
    limits.anchors = 1 + rng.index(20);
    limits.bytes = static_cast<size_t>(1 + rng.index(64 * d)) * 8;
  }
  const double tolerance = precision_bound(precision, d, float64);
  if (float64) {
    test_similarity_layout<double>(seed, n, d, k, ld, precision, tolerance, with_products, limits);
  } else {
    test_similarity_layout<float>(seed, n, d, k, ld, precision, tolerance, with_products, limits);
  }
}

// Random rows of random lengths, masked with random parameters; random sampling problems.
void fuzz_masking_and_sampling(uint64_t seed) {
  Random rng(seed);
  core::MaskParams params;
  params.mask_token_id = 3;
  params.mlm_probability = rng.unit() < 0.1 ? 1.0 : 0.01 + 0.9 * rng.unit();
  params.weighting = rng.unit() < 0.3 ? core::kWeightingRank : core::kWeightingSimilarity;
  params.uniform_mix = rng.unit() < 0.5 ? 0.0 : rng.unit();
  params.unknown_score = rng.unit() < 0.5 ? 0.0 : rng.unit() < 0.5 ? 1e-310 : rng.unit();
  params.mask_replace_prob = rng.unit();
  params.random_replace_prob = (1 - params.mask_replace_prob) * rng.unit();
  test_masking(seed, 1 + rng.index(6), 1 + rng.index(rng.unit() < 0.3 ? 8 : 700), params);
  const bool float64 = rng.unit() < 0.5;
  test_sampling(seed, 1 + rng.index(5), 1 + rng.index(rng.unit() < 0.3 ? 8 : 1500), float64,
                float64 && rng.unit() < 0.3);
}

// A failing product routine: its error comes back, and nothing is written after it.
void test_similarity_product_error() {
  const int64_t n = 40, d = 8, k = 50;
  std::vector<float> x(n * d, 1.0f), a(k * d, 1.0f);
  DeviceArray<float> d_x(x), d_a(a), d_values(std::vector<float>(n, -7.0f));
  DeviceArray<int64_t> d_indices(std::vector<int64_t>(n, -7));
  cuda::SimilarityProblem p = contiguous_problem(d_x.data, d_a.data, n, d, k, d_values.data, d_indices.data);
  ProductCalls calls;
  calls.failing = true;
  p.product = &plain_product;
  p.product_context = &calls;
  cuda::SimilarityPlan plan;
  CUDA_OK(cuda::plan_max_anchor_similarity(p, &plan));
  CHECK(plan.method == cuda::SimilarityMethod::kBlocked);
  DeviceArray<unsigned char> workspace(plan.workspace_bytes);
  CHECK(cuda::max_anchor_similarity(p, plan, workspace.data, nullptr) == cudaErrorNotSupported);
  CHECK(calls.blocks == 1);
  CUDA_OK(cudaDeviceSynchronize());
  CHECK(d_values.host() == std::vector<float>(n, -7.0f));
  p.product = nullptr;  // the blocked method needs a product routine
  CHECK(cuda::max_anchor_similarity(p, plan, workspace.data, nullptr) == cudaErrorInvalidValue);
  p.float64 = true;  // and float64 has no other method
  CHECK(cuda::plan_max_anchor_similarity(p, &plan) == cudaErrorInvalidValue);
}

void test_lookup() {
  std::vector<int64_t> keys(64, 0);
  std::vector<float> values(64, 0.0f);
  const std::vector<int64_t> new_keys = {3, 17, -5, 1LL << 60};
  const std::vector<float> new_values = {0.5f, -1.0f, 2.0f, 3.0f};
  core::table_insert(keys.data(), values.data(), 64, new_keys.data(), new_values.data(), 4);
  CHECK(keys[0] == 0);  // free: a key whose probe starts there is stored there
  int64_t at_slot_0 = 1;
  while (core::table_home_slot(at_slot_0, 64) != 0) ++at_slot_0;
  const float value_0 = 4.0f;
  core::table_insert(keys.data(), values.data(), 64, &at_slot_0, &value_0, 1);
  CHECK(core::table_find(keys.data(), 64, at_slot_0) == 0);
  const std::vector<int64_t> queries = {3, 4, -5, 1LL << 60, 0, at_slot_0};
  DeviceArray<int64_t> d_keys(keys), d_queries(queries);
  DeviceArray<float> d_values(values), d_out(queries.size());
  DeviceArray<unsigned char> d_found(queries.size());
  CUDA_OK(cuda::score_table_lookup(d_keys.data, d_values.data, 64, d_queries.data, 6, -7.0f, d_out.data,
                                   reinterpret_cast<bool*>(d_found.data), nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  CHECK((d_out.host() == std::vector<float>{0.5f, -7.0f, 2.0f, 3.0f, -7.0f, 4.0f}));
  CHECK((d_found.host() == std::vector<unsigned char>{1, 0, 1, 1, 0, 1}));
  // The default is rounded to float on the device: a denormal stays one.
  CUDA_OK(cuda::score_table_lookup(d_keys.data, d_values.data, 64, d_queries.data, 6, 1e-40, d_out.data,
                                   reinterpret_cast<bool*>(d_found.data), nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  CHECK(d_out.host()[1] == static_cast<float>(1e-40) && d_out.host()[1] != 0.0f);
}

}  // namespace

// --quick: one seed and the smaller sizes, for the slow checkers of compute-sanitizer.
int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  core::MaskParams defaults;
  defaults.mask_token_id = 3;
  core::MaskParams rank = defaults;
  rank.weighting = core::kWeightingRank;
  rank.uniform_mix = 0.3;
  rank.mlm_probability = 0.4;
  core::MaskParams mixed = defaults;
  mixed.uniform_mix = 0.5;
  mixed.unknown_score = 0.1;
  mixed.mask_replace_prob = 0.6;
  mixed.random_replace_prob = 0.3;
  core::MaskParams everything = defaults;
  everything.mlm_probability = 1.0;
  core::MaskParams tiny_unknown = defaults;  // keys E / w of unknown words overflow
  tiny_unknown.unknown_score = 1e-310;
  tiny_unknown.mlm_probability = 0.6;
  const std::vector<uint64_t> seeds = quick ? std::vector<uint64_t>{1} : std::vector<uint64_t>{1, 2, 0xDEADBEEF};
  for (uint64_t seed : seeds) {
    for (const core::MaskParams& params : {defaults, rank, mixed, everything, tiny_unknown}) {
      test_masking(seed, quick ? 5 : 33, 300, params);
      if (!quick) test_masking(seed, 1, 8192, params);
      test_masking(seed, 2, 1, params);
    }
    test_masking(seed, quick ? 5 : 33, 300, mixed, /*seed_on_device=*/false);
    core::MaskParams mixed_unscored = mixed;  // weights summing to 0: the uniform part alone
    mixed_unscored.unknown_score = 0.0;
    test_masking(seed, quick ? 5 : 33, 300, mixed_unscored, true, /*nonpositive_scores=*/true);
    for (bool float64 : {false, true}) {
      test_sampling(seed, 20, 1, float64);
      test_sampling(seed, quick ? 3 : 20, 513, float64);
      if (!quick) test_sampling(seed, 3, 8192, float64);
    }
    test_sampling(seed, quick ? 3 : 20, 513, true, true);
  }
  test_sampling_status();
  test_sampling_ties();
  const double float32 = precision_bound(cuda::Precision::kFloat32, 96, false);
  for (int64_t k : {1, 5, 32, 33, 300}) {  // fused up to 32 anchors, blocked beyond
    test_similarity<float>(k, quick ? 200 : 1000, 96, k, cuda::Precision::kFloat32, float32, cuda::BlockLimits(), true);
  }
  // Many blocks of rows and of anchors, ragged at both ends; float64; the bfloat16 precisions
  // within their documented bounds (precision_bound).
  cuda::BlockLimits small;
  small.anchors = 7;
  small.bytes = 7 * 30 * sizeof(float);
  test_similarity<float>(11, quick ? 101 : 301, 40, 45, cuda::Precision::kFloat32, float32, small, true);
  const double float64 = precision_bound(cuda::Precision::kFloat32, 40, true);
  test_similarity<double>(12, quick ? 101 : 301, 40, 45, cuda::Precision::kFloat32, float64, small, true);
  test_similarity<double>(13, 50, 17, 3, cuda::Precision::kFloat32, float64);  // float64 is always blocked
  for (const cuda::BlockLimits& limits : {cuda::BlockLimits(), small}) {
    test_similarity<float>(14, quick ? 150 : 700, 96, 70, cuda::Precision::kBf16x3,
                           precision_bound(cuda::Precision::kBf16x3, 96, false), limits);
    test_similarity<float>(15, quick ? 150 : 700, 96, 70, cuda::Precision::kBf16,
                           precision_bound(cuda::Precision::kBf16, 96, false), limits);
  }
  test_similarity<float>(16, 300, 96, 20, cuda::Precision::kBf16, float32);  // few anchors: fused, float32
  for (int64_t k : {33, 300}) {  // no product routine: the fused kernel's large tiles, ragged
    test_similarity<float>(17, quick ? 150 : 700, 70, k, cuda::Precision::kFloat32, float32, cuda::BlockLimits(), true,
                           /*with_products=*/false);
  }
  for (bool with_products : {true, false}) {
    for (int64_t k : {7, 40}) {  // padded rows; one row, expanded
      test_similarity_layout<float>(18, quick ? 70 : 300, 37, k, 41, cuda::Precision::kFloat32, float32, with_products);
      test_similarity_layout<float>(19, quick ? 70 : 300, 37, k, 0, cuda::Precision::kFloat32, float32, with_products);
    }
  }
  cuda::BlockLimits few_rows;  // expanded rows bound the blocks (the product routine copies them)
  few_rows.anchors = 16;
  few_rows.bytes = 16 * 37 * sizeof(float);
  test_similarity_layout<float>(20, 100, 37, 40, 0, cuda::Precision::kFloat32, float32, true, few_rows);
  // Fresh random problems every run (DIFFMASK_TEST_SEED repeats a run's).
  const char* fixed = std::getenv("DIFFMASK_TEST_SEED");
  const uint64_t run_seed = fixed != nullptr ? std::strtoull(fixed, nullptr, 0) : std::random_device()();
  std::printf("random problems of seed %llu\n", static_cast<unsigned long long>(run_seed));
  for (uint64_t i = 0; i < (quick ? 4 : 40); ++i) {
    fuzz_similarity(run_seed * 1000 + i);
    fuzz_masking_and_sampling(run_seed * 1000 + i);
  }
  for (bool with_products : {true, false}) {  // fused below 33 anchors; blocked above with products
    for (int64_t k : {2, 40}) {
      test_similarity_scales<float>(k, with_products);
      test_similarity_degenerate_anchors<float>(k, with_products);
    }
  }
  for (int64_t k : {2, 40}) {  // float64 is always blocked
    test_similarity_scales<double>(k, true);
    test_similarity_degenerate_anchors<double>(k, true);
  }
  test_similarity_product_error();
  test_lookup();
  TEST_MAIN_END();
}

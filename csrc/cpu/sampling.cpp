// CPU kernel of sample_without_replacement.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../core/sampling.h"
#include "checks.h"
#include "denormals.h"

namespace diffmask_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "sample_without_replacement";

at::Tensor sample_without_replacement_cpu(const at::Tensor& weights, const at::Tensor& counts, int64_t seed) {
  const KeepDenormals keep_denormals;  // on this thread too: see max_anchor_similarity_cpu
  check_cpu(weights, kOp, "weights");
  check_cpu(counts, kOp, "counts");
  check_dim(weights, kOp, "weights", 2);
  check_floating(weights, kOp, "weights");
  check_integer(counts, kOp, "counts");
  const int64_t B = weights.size(0);
  const int64_t N = weights.size(1);
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == B, kOp, ": counts must have shape [", B,
                    "] (one count per row of weights), got shape ", counts.sizes());

  const at::Tensor count = counts.to(at::kLong).contiguous();
  const int64_t* count_data = count.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(count_data[b] >= 0, kOp, ": counts must be non-negative, got counts[", b, "] = ",
                      count_data[b]);
  }

  at::Tensor w = weights;
  if (w.scalar_type() != at::kFloat && w.scalar_type() != at::kDouble) {
    w = w.to(at::kFloat);  // half / bfloat16: exact in float32
  }
  w = w.contiguous();
  at::Tensor selected = at::zeros({B, N}, weights.options().dtype(at::kBool));
  if (B == 0 || N == 0) {
    return selected;
  }
  bool* out = selected.data_ptr<bool>();
  std::vector<int64_t> bad_position(static_cast<size_t>(B), -1);
  std::vector<core::WeightProblem> bad_kind(static_cast<size_t>(B), core::WeightProblem::kNone);

  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "sample_without_replacement_cpu", [&] {
    const scalar_t* data = w.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_for(N), [&](int64_t begin, int64_t end) {
      KeepDenormals keep_denormals;
      std::vector<core::KeyIndex> scratch(static_cast<size_t>(N));
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* row = data + b * N;
        core::WeightProblem problem;
        const int64_t bad = core::find_bad_weight(row, N, &problem);
        if (bad >= 0) {
          bad_position[b] = bad;
          bad_kind[b] = problem;
          continue;
        }
        const core::Stream stream(static_cast<uint64_t>(seed), static_cast<uint64_t>(b));
        const int64_t k = core::successive_sample(row, N, count_data[b], stream, scratch.data());
        bool* out_row = out + b * N;
        for (int64_t j = 0; j < k; ++j) {
          out_row[scratch[j].index] = true;
        }
      }
    });
  });

  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(bad_position[b] < 0, kOp, ": weights must be finite and non-negative, but weights[", b, ", ",
                      bad_position[b], "] is ", core::weight_problem_name(bad_kind[b]));
  }
  return selected;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("sample_without_replacement", &sample_without_replacement_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

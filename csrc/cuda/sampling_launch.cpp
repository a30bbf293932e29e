// CUDA adapter of sample_without_replacement.
//
// The kernel finds invalid inputs (negative counts, negative / NaN / infinite weights) itself;
// raising them as the CPU kernel does takes one small copy of per-row status codes to the host,
// so this op synchronizes with its stream once per call. (difference_mask_device, the op of the
// training step, never does.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "kernels.h"
#include "launch_checks.h"

namespace diffmask_fast {
namespace cuda {
namespace {

constexpr const char* kOp = "sample_without_replacement";

const char* problem_name(int64_t code) {
  switch (code) {
    case kSampleNegativeWeight:
      return "negative";
    case kSampleNaNWeight:
      return "NaN";
    case kSampleInfiniteWeight:
      return "infinite";
    default:
      return "valid";
  }
}

at::Tensor sample_without_replacement_cuda(const at::Tensor& weights, const at::Tensor& counts, int64_t seed) {
  check_cuda_tensor(weights, kOp, "weights");
  check_same_device(counts, weights, kOp, "counts");
  check_dim(weights, kOp, "weights", 2);
  check_floating(weights, kOp, "weights");
  check_integer(counts, kOp, "counts");
  const int64_t B = weights.size(0);
  const int64_t N = weights.size(1);
  // The radix select counts a row's keys in 32-bit bins.
  TORCH_CHECK_VALUE(N < std::numeric_limits<int32_t>::max(), kOp,
                    ": rows must hold fewer than 2^31 - 1 weights on CUDA, got ", N);
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == B, kOp, ": counts must have shape [", B,
                    "] (one count per row of weights), got shape ", counts.sizes());
  const c10::cuda::CUDAGuard guard(weights.device());
  at::Tensor selected = at::empty({B, N}, weights.options().dtype(at::kBool));
  if (B == 0) {
    return selected;
  }
  const at::Tensor count = counts.to(at::kLong).contiguous();
  at::Tensor w = weights;
  if (w.scalar_type() != at::kFloat && w.scalar_type() != at::kDouble) {
    w = w.to(at::kFloat);  // half / bfloat16: exact in float32
  }
  w = w.contiguous();
  at::Tensor status = at::empty({B, 2}, weights.options().dtype(at::kLong));

  SampleProblem problem;
  problem.weights = w.data_ptr();
  problem.float64 = w.scalar_type() == at::kDouble;
  problem.rows = B;
  problem.cols = N;
  problem.counts = count.data_ptr<int64_t>();
  problem.seed = static_cast<uint64_t>(seed);
  problem.selected = selected.data_ptr<bool>();
  problem.status = status.data_ptr<int64_t>();
  const at::Tensor scratch = workspace(sample_workspace_bytes(problem), weights);
  check_launch(sample_without_replacement(problem, scratch.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
               kOp);

  const at::Tensor report = status.cpu();  // synchronizes
  const int64_t* codes = report.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    if (codes[2 * b + 1] == kSampleNegativeCount) {
      TORCH_CHECK_VALUE(false, kOp, ": counts must be non-negative, got counts[", b, "] = ", count[b].item<int64_t>());
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t code = codes[2 * b + 1];
    TORCH_CHECK_VALUE(code == kSampleOk, kOp, ": weights must be finite and non-negative, but weights[", b, ", ",
                      codes[2 * b], "] is ", problem_name(code));
  }
  return selected;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CUDA, m) {
  m.impl("sample_without_replacement", &sample_without_replacement_cuda);
}

}  // namespace cuda
}  // namespace diffmask_fast

// CUDA adapters of max_anchor_similarity and max_anchor_similarity_precision: argument checks,
// layouts, workspace, current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels.h"
#include "launch_checks.h"

namespace diffmask_fast {
namespace cuda {
namespace {

constexpr const char* kOp = "max_anchor_similarity";

Precision parse_precision(c10::string_view precision) {
  if (precision == "highest") {
    return Precision::kFloat32;
  }
  if (precision == "high") {
    return Precision::kTf32;
  }
  TORCH_CHECK_VALUE(precision == "medium", kOp, ": precision must be 'highest', 'high' or 'medium', got '", precision,
                    "'");
  return Precision::kBf16;
}

// Anchors in the compute type. Float64 anchors for float32 compute are divided by their largest
// magnitude first: rows at 1e300 or 1e-300 then round to float32 as rows near unit scale, where a
// plain cast makes them infinite (NaN anchors) or zero. The kernel normalizes them after.
at::Tensor anchors_in(const at::Tensor& anchors, at::ScalarType dtype) {
  if (anchors.scalar_type() != at::kDouble || dtype == at::kDouble) {
    return anchors.to(dtype).contiguous();
  }
  const at::Tensor largest = anchors.abs().amax(1, /*keepdim=*/true);  // NaN rows stay NaN
  return (anchors / at::where(largest > 0, largest, at::ones_like(largest))).to(dtype).contiguous();
}

std::tuple<at::Tensor, at::Tensor> max_anchor_similarity_precision_cuda(const at::Tensor& embeddings,
                                                                         const at::Tensor& anchors,
                                                                         c10::string_view precision) {
  const Precision mode = parse_precision(precision);
  check_cuda_tensor(embeddings, kOp, "embeddings");
  check_same_device(anchors, embeddings, kOp, "anchors");
  check_similarity_operands(embeddings, anchors, kOp);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const auto out_shape = embeddings.sizes().slice(0, embeddings.dim() - 1);
  at::Tensor values = at::empty(out_shape, embeddings.options().dtype(at::kFloat));
  at::Tensor indices = at::empty(out_shape, embeddings.options().dtype(at::kLong));
  const int64_t n = values.numel();
  if (n == 0) {
    return {values, indices};
  }
  const int64_t d = anchors.size(1);
  const bool float64 = embeddings.scalar_type() == at::kDouble;
  const at::ScalarType dtype = float64 ? at::kDouble : at::kFloat;  // half / bfloat16: exact in float32
  if (mode != Precision::kFloat32 && !float64) {
    const TensorCoreSupport support = tensor_core_support(embeddings.device().index());
    TORCH_CHECK_VALUE(support != TensorCoreSupport::kNoKernelForDevice, kOp,
                      ": this build of the extension has no kernels for this GPU (no precision runs on it); "
                      "rebuild it for the GPU's architecture (TORCH_CUDA_ARCH_LIST)");
    TORCH_CHECK_VALUE(support == TensorCoreSupport::kSupported, kOp, ": precision '", precision,
                      "' needs a GPU of compute capability 8.0 or newer and an extension built for one "
                      "(TORCH_CUDA_ARCH_LIST 8.0 or later); use 'highest'");
  }
  at::Tensor e = embeddings.reshape({n, d});  // a view unless the leading dims cannot be flattened
  if (e.scalar_type() != dtype) {
    e = e.to(dtype);
  }
  if (d > 1 && e.stride(1) != 1) {
    e = e.contiguous();  // the kernels read rows with unit stride (any row stride, even 0)
  }
  const at::Tensor a = anchors_in(anchors, dtype);

  SimilarityProblem problem;
  problem.embeddings = e.data_ptr();
  problem.n = n;
  problem.d = d;
  problem.ld = n > 1 ? e.stride(0) : d;
  problem.anchors = a.data_ptr();
  problem.k = a.size(0);
  problem.float64 = float64;
  problem.precision = mode;
  problem.values = values.data_ptr<float>();
  problem.indices = indices.data_ptr<int64_t>();
  SimilarityPlan plan;
  check_launch(plan_max_anchor_similarity(problem, embeddings.device().index(), &plan), kOp);
  const at::Tensor scratch = workspace(plan.workspace_bytes, embeddings);
  check_launch(max_anchor_similarity(problem, plan, scratch.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
               kOp);
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> max_anchor_similarity_cuda(const at::Tensor& embeddings, const at::Tensor& anchors) {
  return max_anchor_similarity_precision_cuda(embeddings, anchors, "highest");
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CUDA, m) {
  m.impl("max_anchor_similarity", &max_anchor_similarity_cuda);
  m.impl("max_anchor_similarity_precision", &max_anchor_similarity_precision_cuda);
}

}  // namespace cuda
}  // namespace diffmask_fast

// CUDA adapters of max_anchor_similarity and max_anchor_similarity_precision: argument checks,
// layouts, workspace, current stream, and the blocked method's matrix products (torch's cuBLAS).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <limits>

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
    return Precision::kBf16x3;
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

// Odd 64-bit multipliers of a row hash, one per dimension, mixed from the dimensions' positions on
// the device (multipliers copied from the host would make the host wait for the stream).
at::Tensor hash_multipliers(int64_t d, int64_t salt, const at::TensorOptions& longs) {
  at::Tensor x = at::arange(1, d + 1, longs).mul(salt);
  x = x.bitwise_xor(x.bitwise_right_shift(31)).mul(static_cast<int64_t>(0x9E3779B97F4A7C15ULL));
  return x.bitwise_xor(x.bitwise_right_shift(29)).bitwise_or(1);  // products wrap: any fixed hash will do
}

// The anchors with each later copy of an earlier anchor (equal bit for bit but for the sign of
// zeros, as the CPU op takes copies) made a NaN row, which never wins a row's max. cuBLAS
// computes blocks of other widths in other orders, so a copy in a later block could beat the
// first copy by a rounding, where the CPU op (which searches each distinct anchor once) and the
// ties of one block name the first. Rows are told apart by two 64-bit hashes of their bits, a
// chunk of rows at a time; no host synchronization.
at::Tensor later_copies_as_nan(const at::Tensor& anchors) {
  constexpr int64_t kChunkRows = 4096;
  const int64_t k = anchors.size(0);
  const auto longs = anchors.options().dtype(at::kLong);
  const at::ScalarType bits_type = anchors.element_size() == 8 ? at::kLong : at::kInt;
  const at::Tensor multipliers[2] = {hash_multipliers(anchors.size(1), 0x2545F4914F6CDD1DLL, longs),
                                     hash_multipliers(anchors.size(1), 0x5851F42D4C957F2DLL, longs)};
  at::Tensor hashes = at::empty({2, k}, longs);
  for (int64_t start = 0; start < k; start += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, k - start);
    // -0.0 + 0.0 is 0.0: a zero's sign leaves the bits alone.
    const at::Tensor bits = anchors.narrow(0, start, rows).add(0.0).view(bits_type).to(at::kLong);
    for (int64_t h = 0; h < 2; ++h) {
      hashes[h].narrow(0, start, rows).copy_(bits.mul(multipliers[h]).sum(1));
    }
  }
  const auto [keys, order] = at::sort(hashes[0], /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor second = hashes[1].index_select(0, order);
  const at::Tensor repeats = keys.narrow(0, 1, k - 1)
                                 .eq(keys.narrow(0, 0, k - 1))
                                 .logical_and_(second.narrow(0, 1, k - 1).eq(second.narrow(0, 0, k - 1)));
  at::Tensor later_copy = at::zeros({k}, anchors.options().dtype(at::kBool));
  later_copy.index_put_({order.narrow(0, 1, k - 1)}, repeats);  // a stable sort puts the first copy first
  return anchors.masked_fill(later_copy.unsqueeze(1), std::numeric_limits<double>::quiet_NaN());
}

// One block of the blocked method's products through torch, on torch's current stream (the one
// the kernels run on): float32 with TF32 off (a thread-local guard), float64, or bfloat16
// operands summed into float32.
cudaError_t product_with_torch(const ProductBlock& block, cudaStream_t stream, void* context) {
  const at::Device device = *static_cast<const at::Device*>(context);
  TORCH_INTERNAL_ASSERT(stream == c10::cuda::getCurrentCUDAStream(device.index()).stream(),
                        "the products must run on the stream of the kernels");
  const at::ScalarType operand_type = block.type == ProductType::kFloat64   ? at::kDouble
                                      : block.type == ProductType::kBfloat16 ? at::kBFloat16
                                                                              : at::kFloat;
  const at::ScalarType out_type = block.type == ProductType::kFloat64 ? at::kDouble : at::kFloat;
  const auto operands = at::TensorOptions().dtype(operand_type).device(device);
  const at::Tensor a = at::from_blob(const_cast<void*>(block.a), {block.rows, block.depth}, {block.lda, 1}, operands);
  const at::Tensor b = at::from_blob(const_cast<void*>(block.b), {block.cols, block.depth}, {block.ldb, 1}, operands);
  at::Tensor c = at::from_blob(block.c, {block.rows, block.cols}, {block.ldc, 1}, operands.dtype(out_type));
  if (block.type == ProductType::kBfloat16) {
    at::mm_out(c, a, b.t(), at::kFloat);
  } else {
    const at::NoTF32Guard full_float32;
    at::mm_out(c, a, b.t());
  }
  return cudaSuccess;
}

// Whether torch may round float32 matrix products to TF32. Torch 2.10 and later read the
// per-backend precision (torch.backends.cuda.matmul.fp32_precision) in their own cuBLAS calls, and
// their legacy getter raises once that has been set without the legacy API.
bool tf32_allowed(const at::Context& context) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
  return context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) == at::Float32Precision::TF32;
#else
  return context.allowTF32CuBLAS();
#endif
}

// Whether torch computes float32 products in float32 under the guard above. Its cuBLASLt path
// takes TF32 from torch's global setting alone, so where torch prefers cuBLASLt and allows TF32
// the fused kernel searches instead (slower, never TF32).
bool float32_products_exact() {
  at::Context& context = at::globalContext();
  return context.blasPreferredBackend() != at::BlasBackend::Cublaslt || !tf32_allowed(context);
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
    const Bf16Support support = bf16_support(embeddings.device().index());
    TORCH_CHECK_VALUE(support != Bf16Support::kNoKernelForDevice, kOp,
                      ": this build of the extension has no kernels for this GPU (no precision runs on it); "
                      "rebuild it for the GPU's architecture (TORCH_CUDA_ARCH_LIST)");
    TORCH_CHECK_VALUE(support == Bf16Support::kSupported, kOp, ": precision '", precision,
                      "' needs a GPU of compute capability 8.0 or newer (its products are bfloat16 "
                      "tensor-core products); use 'highest'");
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
  at::Device device = embeddings.device();
  if (float64 || mode != Precision::kFloat32 || float32_products_exact()) {
    problem.product = &product_with_torch;
    problem.product_context = &device;
  }
  SimilarityPlan plan;
  check_launch(plan_max_anchor_similarity(problem, &plan), kOp);
  at::Tensor searched = a;
  if (plan.method == SimilarityMethod::kBlocked && problem.k > plan.anchor_block) {
    searched = later_copies_as_nan(a);  // copies in blocks apart
    problem.anchors = searched.data_ptr();
  }
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

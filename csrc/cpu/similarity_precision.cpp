// CPU kernel of max_anchor_similarity_precision: the CPU computes every precision in float32
// (float64 for float64 inputs), which meets each one's error bound, so this is
// max_anchor_similarity after a check of the precision's name.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

namespace diffmask_fast {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> max_anchor_similarity_precision_cpu(const at::Tensor& embeddings,
                                                                        const at::Tensor& anchors,
                                                                        c10::string_view precision) {
  TORCH_CHECK_VALUE(precision == "highest" || precision == "high" || precision == "medium",
                    "max_anchor_similarity: precision must be 'highest', 'high' or 'medium', got '", precision, "'");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("diffmask_fast::max_anchor_similarity", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>();
  return op.call(embeddings, anchors);
}

}  // namespace

TORCH_LIBRARY_IMPL(diffmask_fast, CPU, m) {
  m.impl("max_anchor_similarity_precision", &max_anchor_similarity_precision_cpu);
}

}  // namespace cpu
}  // namespace diffmask_fast

// Argument checks shared by the CPU kernels. Messages name the op and the argument and say
// what was expected and what was given; they raise TypeError (dtype) or ValueError (everything
// else) in Python.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>

namespace diffmask_fast {
namespace cpu {

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor for the CPU kernel, got a tensor on ",
                    t.device());
}

// A dtype as Python spells it ("torch.int64", not ATen's "Long"), as the Python wrappers' messages
// do: a direct call of an op gets the same words.
inline std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    default: return c10::toString(type);
  }
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* name, at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, op, ": ", name, " must have dtype ", dtype_name(expected), ", got ",
                   dtype_name(t.scalar_type()));
}

inline void check_dim(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
                   " must be a floating tensor (float32, float64, float16 or bfloat16), got ", dtype_name(s));
}

inline void check_integer(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), op, ": ", name,
                   " must be an integer tensor, got ", dtype_name(t.scalar_type()));
}

// max_anchor_similarity's operands, on any device: floating embeddings [..., D] and anchors [K, D]
// with K, D >= 1.
inline void check_similarity_operands(const at::Tensor& embeddings, const at::Tensor& anchors, const char* op) {
  check_floating(embeddings, op, "embeddings");
  check_floating(anchors, op, "anchors");
  TORCH_CHECK_VALUE(anchors.dim() == 2, op, ": anchors must be 2-D [K, D], got shape ", anchors.sizes());
  TORCH_CHECK_VALUE(anchors.size(0) >= 1, op, ": anchors must hold at least one anchor (K >= 1), got shape ",
                    anchors.sizes());
  TORCH_CHECK_VALUE(anchors.size(1) >= 1, op, ": anchors must have a positive dimension D, got shape ",
                    anchors.sizes());
  TORCH_CHECK_VALUE(embeddings.dim() >= 1, op, ": embeddings must be [..., D], got a 0-D tensor");
  TORCH_CHECK_VALUE(embeddings.size(-1) == anchors.size(1), op,
                    ": embeddings [..., D] and anchors [K, D] must share D, got embeddings ", embeddings.sizes(),
                    " and anchors ", anchors.sizes());
}

// A score table is keys int64 [C] and values float32 [C], C a power of two (or 0: empty). The
// layout alone, on any device:
inline void check_score_table_layout(const at::Tensor& keys, const at::Tensor& values, const char* op,
                                     const char* keys_name, const char* values_name) {
  check_dim(keys, op, keys_name, 1);
  check_dim(values, op, values_name, 1);
  check_dtype(keys, op, keys_name, at::kLong);
  check_dtype(values, op, values_name, at::kFloat);
  const int64_t capacity = keys.size(0);
  TORCH_CHECK_VALUE(capacity == values.size(0), op, ": ", keys_name, " and ", values_name,
                    " must have the same length, got ", capacity, " and ", values.size(0));
  TORCH_CHECK_VALUE((capacity & (capacity - 1)) == 0, op, ": the table capacity (length of ", keys_name,
                    ") must be a power of two, got ", capacity);
}

// ...and a table for the CPU kernels.
inline void check_score_table(const at::Tensor& keys, const at::Tensor& values, const char* op, const char* keys_name,
                              const char* values_name) {
  check_cpu(keys, op, keys_name);
  check_cpu(values, op, values_name);
  check_score_table_layout(keys, values, op, keys_name, values_name);
}

// Rows per parallel chunk so that a chunk has at least ~`work` elements.
inline int64_t grain_for(int64_t row_length, int64_t work = 4096) {
  return std::max<int64_t>(1, work / std::max<int64_t>(row_length, 1));
}

}  // namespace cpu
}  // namespace diffmask_fast

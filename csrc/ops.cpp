// Schemas of every diffmask_fast operator (the one TORCH_LIBRARY block) and the Python module
// `diffmask_fast._C`, whose import loads this library and so registers the operators.
// Kernels live in cpu/ (always) and cuda/ (when built with CUDA); fake kernels in ops.py.
#include <Python.h>

#include <torch/library.h>

#include "cpu/panel_choice.h"

#ifndef DIFFMASK_FAST_TORCH_VERSION
#define DIFFMASK_FAST_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(diffmask_fast, m) {
  // Max cosine similarity over anchors [K, D] for each embedding [..., D], and the first arg max.
  m.def("max_anchor_similarity(Tensor embeddings, Tensor anchors) -> (Tensor values, Tensor indices)");
  // The same with the precision of the dot products: "highest" (float32, the op above), "high"
  // (bf16x3: each factor as two bfloat16s, three tensor-core products) or "medium" (bfloat16
  // tensor cores); the reduced ones apply on CUDA devices of compute capability 8.0 and newer
  // for more than 32 anchors, the CPU computes all three in float32.
  m.def(
      "max_anchor_similarity_precision(Tensor embeddings, Tensor anchors, str precision) -> "
      "(Tensor values, Tensor indices)");
  // The k vectors [C, D] of largest dot product with each query [N, D] (NaN ranked as -inf, ties
  // to the smaller index), in increasing index order: the lists an inverted-file index probes.
  m.def("top_dots(Tensor queries, Tensor vectors, int k) -> Tensor");
  // The list scan of an inverted-file index: for each query [N, D], the largest dot product with
  // the vectors of the lists it probes (probes [N, P]; list l is vectors[offsets[l], offsets[l + 1]))
  // and the first position reaching it (given ids [M], the position of the smallest id among
  // the lists' first); (-inf, -1) where those lists hold no vector.
  m.def(
      "ivf_max_dot(Tensor queries, Tensor probes, Tensor vectors, Tensor offsets, Tensor? ids=None) -> "
      "(Tensor values, Tensor positions)");
  // Successive sampling of min(counts[b], #positive) positions per row of weights [B, N].
  m.def("sample_without_replacement(Tensor weights, Tensor counts, int seed) -> Tensor");
  // Word of each token, word hashes [B, W] and word counts [B].
  m.def(
      "group_words(Tensor input_ids, Tensor never_word, Tensor starts_word) -> "
      "(Tensor word_index, Tensor word_hash, Tensor n_words)");
  // Open-addressing hash table held in two tensors.
  m.def("score_table_insert(Tensor(a!) keys, Tensor(b!) values, Tensor new_keys, Tensor new_values) -> ()");
  m.def(
      "score_table_lookup(Tensor keys, Tensor values, Tensor queries, float default_value) -> "
      "(Tensor values, Tensor found)");
  // The whole per-batch Difference-Masking step.
  m.def(
      "difference_mask(Tensor input_ids, Tensor never_word, Tensor starts_word, Tensor table_keys, "
      "Tensor table_values, Tensor random_token_ids, float mlm_probability, int weighting, float uniform_mix, "
      "float unknown_score, int mask_token_id, float mask_replace_prob, float random_replace_prob, int seed) -> "
      "(Tensor masked_ids, Tensor labels, Tensor masked_words, Tensor misses)");
  // The same step with outputs of fixed size, for use inside a compiled training step: no miss
  // list (misses are counted per row), the seed a one-element int64 tensor (which may live on the
  // device and change from step to step), ids outside the vocabulary treated as never_word
  // instead of raising. Never synchronizes with the host.
  m.def(
      "difference_mask_device(Tensor input_ids, Tensor never_word, Tensor starts_word, Tensor table_keys, "
      "Tensor table_values, Tensor random_token_ids, float mlm_probability, int weighting, float uniform_mix, "
      "float unknown_score, int mask_token_id, float mask_replace_prob, float random_replace_prob, Tensor seed) -> "
      "(Tensor masked_ids, Tensor labels, Tensor masked_words, Tensor n_words, Tensor missed_words)");
}

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "Compiled operators of diffmask_fast, registered under torch.ops.diffmask_fast.",
      -1,
      nullptr,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
  // The torch release this library was compiled against; the loader refuses a mismatch.
  if (PyModule_AddStringConstant(module, "torch_version", DIFFMASK_FAST_TORCH_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
#ifdef DIFFMASK_FAST_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  // The CPU kernels the operators run ("avx512", "avx2" or "none": BLAS), fixed from here on.
  if (PyModule_AddStringConstant(module, "cpu_kernels",
                                 diffmask_fast::cpu::isa_name(diffmask_fast::cpu::cpu_isa())) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

"""Compiled operators of diffmask_fast and their Python wrappers.

The operators live in ``torch.ops.diffmask_fast`` (schemas in ``csrc/ops.cpp``, CPU kernels in
``csrc/cpu``). The wrappers here check shapes, dtypes and devices before dispatch so mistakes are
reported in terms of the caller's arguments; the kernels check values (NaN, negative weights,
out-of-range ids) while they read them. Fake kernels make the operators traceable by
``torch.compile``; they are registered only once the compiled library is loaded.

Importing this module loads the extension and fails with instructions to rebuild when it is
missing or was built for another torch.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import numpy as np
import torch

from . import _extension

_extension.load()
_ops = torch.ops.diffmask_fast

__all__ = [
    "max_anchor_similarity",
    "ivf_max_dot",
    "top_dots",
    "sample_without_replacement",
    "group_words",
    "word_hash",
    "score_table_insert",
    "score_table_lookup",
    "ScoreHashTable",
    "difference_mask",
    "difference_mask_device",
    "WEIGHTINGS",
    "PRECISIONS",
    "Words",
    "DifferenceMaskOutput",
    "DeviceMaskOutput",
]

#: Word weighting schemes of difference_mask and their codes in the operator schema.
WEIGHTINGS = {"similarity": 0, "rank": 1}

#: Precisions of max_anchor_similarity's dot products, named as in torch.set_float32_matmul_precision:
#: "highest" float32 (float64 for float64 inputs); on CUDA devices of compute capability >= 8.0,
#: "high" splits each float32 factor into two bfloat16s and sums three of their four products
#: ("bf16x3", which torch's "high" also allows) and "medium" rounds the factors to bfloat16, on
#: the tensor cores with float32 accumulation. The CPU computes every precision in float32.
PRECISIONS = ("highest", "high", "medium")

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_INT64_MASK = (1 << 64) - 1
_WORD_HASH_SEED = 0x9E3779B97F4A7C15


# ----------------------------------------------------------------------------------------------
# Argument checks (shared by the wrappers and the fake kernels)
# ----------------------------------------------------------------------------------------------


def _check_tensor(op: str, name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_dtype(op: str, name: str, tensor: torch.Tensor, expected: torch.dtype) -> None:
    if tensor.dtype != expected:
        raise TypeError(f"{op}: {name} must have dtype {expected}, got {tensor.dtype}")


def _check_ndim(op: str, name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if tensor.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")


def _check_devices(op: str, **tensors: torch.Tensor) -> None:
    """All tensors on one device, and a kernel for that device was compiled."""
    devices = {tensor.device for tensor in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {tensor.device}" for name, tensor in tensors.items())
        raise ValueError(f"{op}: all tensors must be on the same device, got {where}")
    (device,) = devices
    # While torch.compile traces a caller, the fake kernel runs this check on the traced values.
    compiled = device.type in ("cpu", "meta") or torch.compiler.is_compiling() or _extension.has_kernel(op, device.type)
    if not compiled:
        raise ValueError(
            f"{op}: no {device.type} kernel is compiled into diffmask_fast._C; move the tensors to the CPU "
            "(or rebuild with DIFFMASK_FAST_CUDA=1 for CUDA)"
        )


def _check_probability(op: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{op}: {name} must be in [0, 1], got {value}")


#: The largest finite float32: a score beyond it would become infinite in the ops' float32 tables.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _check_float32_value(op: str, name: str, value: float) -> None:
    """Refuse a score that is NaN, infinite, or beyond float32's range (it would turn into inf).
    Traced values (torch.compile with dynamic shapes makes floats symbolic) are checked eagerly."""
    if torch.compiler.is_compiling():
        return
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{op}: {name} must be a finite float32 value, got {value}")


def _check_similarity_args(embeddings: torch.Tensor, anchors: torch.Tensor, precision: str = "highest") -> None:
    op = "max_anchor_similarity"
    if precision not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, got {precision!r}")
    _check_tensor(op, "embeddings", embeddings)
    _check_tensor(op, "anchors", anchors)
    for name, tensor in (("embeddings", embeddings), ("anchors", anchors)):
        if tensor.dtype not in _FLOATING:
            raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {tensor.dtype}")
    _check_ndim(op, "anchors", anchors, 2, "[K, D]")
    if anchors.shape[0] < 1:
        raise ValueError(f"{op}: anchors must hold at least one anchor (K >= 1), got shape {tuple(anchors.shape)}")
    if anchors.shape[1] < 1:
        raise ValueError(f"{op}: anchors must have a positive dimension D, got shape {tuple(anchors.shape)}")
    if embeddings.ndim < 1:
        raise ValueError(f"{op}: embeddings must be [..., D], got a 0-D tensor")
    if embeddings.shape[-1] != anchors.shape[1]:
        raise ValueError(
            f"{op}: embeddings [..., D] and anchors [K, D] must share D, got embeddings {tuple(embeddings.shape)} "
            f"and anchors {tuple(anchors.shape)}"
        )
    _check_devices(op, embeddings=embeddings, anchors=anchors)


def _check_queries_and_vectors(op: str, queries, vectors, rows: str) -> None:
    """float32 queries [N, D] and vectors [``rows``, D] with D >= 1, the operands of the IVF ops."""
    _check_tensor(op, "queries", queries)
    _check_tensor(op, "vectors", vectors)
    _check_dtype(op, "queries", queries, torch.float32)
    _check_dtype(op, "vectors", vectors, torch.float32)
    _check_ndim(op, "queries", queries, 2, "[N, D]")
    _check_ndim(op, "vectors", vectors, 2, f"[{rows}, D]")
    if queries.shape[1] < 1:
        raise ValueError(f"{op}: queries must have a positive dimension D, got shape {tuple(queries.shape)}")
    if vectors.shape[1] != queries.shape[1]:
        raise ValueError(f"{op}: queries [N, D] and vectors [{rows}, D] must share D, got queries "
                         f"{tuple(queries.shape)} and vectors {tuple(vectors.shape)}")


def _check_top_dots_args(queries, vectors, k) -> None:
    op = "top_dots"
    _check_queries_and_vectors(op, queries, vectors, "C")
    if isinstance(k, bool) or not isinstance(k, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{op}: k must be an integer, got {type(k).__name__}")
    if not torch.compiler.is_compiling() and not 0 <= k <= vectors.shape[0]:
        raise ValueError(f"{op}: k must be in [0, C] = [0, {vectors.shape[0]}], got {k}")
    _check_devices(op, queries=queries, vectors=vectors)


def _check_ivf_args(queries, probes, vectors, offsets, ids=None) -> None:
    op = "ivf_max_dot"
    _check_tensor(op, "probes", probes)
    _check_tensor(op, "offsets", offsets)
    _check_queries_and_vectors(op, queries, vectors, "M")
    _check_dtype(op, "probes", probes, torch.int64)
    _check_dtype(op, "offsets", offsets, torch.int64)
    _check_ndim(op, "probes", probes, 2, "[N, P]")
    _check_ndim(op, "offsets", offsets, 1, "[L + 1]")
    if ids is not None:
        _check_tensor(op, "ids", ids)
        _check_dtype(op, "ids", ids, torch.int64)
        if ids.shape != (vectors.shape[0],):
            raise ValueError(f"{op}: ids must be 1-D [M], one per vector, got shape {tuple(ids.shape)} for vectors "
                             f"{tuple(vectors.shape)}")
        _check_devices(op, vectors=vectors, ids=ids)
    if probes.shape[0] != queries.shape[0]:
        raise ValueError(f"{op}: probes [N, P] must have a row for every query, got probes "
                         f"{tuple(probes.shape)} and queries {tuple(queries.shape)}")
    if offsets.shape[0] < 1:
        raise ValueError(f"{op}: offsets must hold at least one value (offsets[0] = 0)")
    _check_devices(op, queries=queries, probes=probes, vectors=vectors, offsets=offsets)


def _check_ids_increase_within_lists(ids: torch.Tensor, offsets: torch.Tensor) -> None:
    """Refuse ``ids`` that do not increase within a list: ties inside a list go to the first
    vector, which is the smallest id only so (it was a silently different answer)."""
    if ids.numel() < 2:
        return
    falls = torch.nonzero(ids[1:] <= ids[:-1]).flatten() + 1  # positions whose id is not above the one before
    list_starts = offsets[(offsets > 0) & (offsets < ids.numel())]
    falls = falls[~torch.isin(falls, list_starts)]
    if falls.numel():
        m = int(falls[0])
        raise ValueError(f"ivf_max_dot: ids must increase within every list, got ids[{m - 1}] = {int(ids[m - 1])} "
                         f"then ids[{m}] = {int(ids[m])} in one list")


def _check_sampling_args(weights: torch.Tensor, counts: torch.Tensor) -> None:
    op = "sample_without_replacement"
    _check_tensor(op, "weights", weights)
    _check_tensor(op, "counts", counts)
    _check_ndim(op, "weights", weights, 2, "[B, N]")
    if weights.dtype not in _FLOATING:
        raise TypeError(f"{op}: weights must be a floating tensor, got {weights.dtype}")
    if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
        raise TypeError(f"{op}: counts must be an integer tensor, got {counts.dtype}")
    if counts.dtype in (torch.uint32, torch.uint64):  # read as int64, a count past 2**63 would turn negative
        raise TypeError(f"{op}: counts must be a signed integer tensor (int64 holds any count), got {counts.dtype}")
    if counts.shape != (weights.shape[0],):
        raise ValueError(
            f"{op}: counts must have shape [{weights.shape[0]}] (one count per row of weights), "
            f"got shape {tuple(counts.shape)}"
        )
    _check_devices(op, weights=weights, counts=counts)


def _check_token_args(op: str, input_ids: torch.Tensor, never_word: torch.Tensor, starts_word: torch.Tensor) -> None:
    _check_tensor(op, "input_ids", input_ids)
    _check_tensor(op, "never_word", never_word)
    _check_tensor(op, "starts_word", starts_word)
    _check_ndim(op, "input_ids", input_ids, 2, "[B, L]")
    _check_dtype(op, "input_ids", input_ids, torch.int64)
    _check_dtype(op, "never_word", never_word, torch.bool)
    if never_word.shape != input_ids.shape:
        raise ValueError(
            f"{op}: never_word must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(never_word.shape)}"
        )
    _check_ndim(op, "starts_word", starts_word, 1, "[V] (one flag per token id)")
    _check_dtype(op, "starts_word", starts_word, torch.bool)


def _check_table(op: str, keys: torch.Tensor, values: torch.Tensor, keys_name: str, values_name: str) -> None:
    _check_tensor(op, keys_name, keys)
    _check_tensor(op, values_name, values)
    _check_ndim(op, keys_name, keys, 1, "[capacity]")
    _check_ndim(op, values_name, values, 1, "[capacity]")
    _check_dtype(op, keys_name, keys, torch.int64)
    _check_dtype(op, values_name, values, torch.float32)
    if keys.shape != values.shape:
        raise ValueError(
            f"{op}: {keys_name} and {values_name} must have the same length, got {keys.shape[0]} and {values.shape[0]}"
        )
    capacity = keys.shape[0]
    if capacity != 0 and capacity & (capacity - 1):
        raise ValueError(f"{op}: the table capacity (length of {keys_name}) must be a power of two, got {capacity}")


def _check_insert_args(keys, values, new_keys, new_values) -> None:
    op = "score_table_insert"
    _check_table(op, keys, values, "keys", "values")
    _check_tensor(op, "new_keys", new_keys)
    _check_tensor(op, "new_values", new_values)
    _check_dtype(op, "new_keys", new_keys, torch.int64)
    _check_dtype(op, "new_values", new_values, torch.float32)
    if new_keys.ndim != 1 or new_values.ndim != 1 or new_keys.shape != new_values.shape:
        raise ValueError(
            f"{op}: new_keys and new_values must be 1-D of the same length, got shapes {tuple(new_keys.shape)} "
            f"and {tuple(new_values.shape)}"
        )
    if not (keys.is_contiguous() and values.is_contiguous()):
        raise ValueError(f"{op}: keys and values are updated in place and must be contiguous")
    if keys.requires_grad or values.requires_grad:
        raise ValueError(f"{op}: keys and values are updated in place, which no gradient flows through; "
                         "they must not require grad")
    _check_devices(op, keys=keys, values=values, new_keys=new_keys, new_values=new_values)


def _check_lookup_args(keys, values, queries) -> None:
    op = "score_table_lookup"
    _check_table(op, keys, values, "keys", "values")
    _check_tensor(op, "queries", queries)
    _check_dtype(op, "queries", queries, torch.int64)
    _check_devices(op, keys=keys, values=values, queries=queries)


def _check_mask_args(
    input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, weighting,
    uniform_mix, unknown_score, mask_replace_prob, random_replace_prob, op: str = "difference_mask",
) -> None:
    _check_token_args(op, input_ids, never_word, starts_word)
    _check_table(op, table_keys, table_values, "table_keys", "table_values")
    _check_tensor(op, "random_token_ids", random_token_ids)
    _check_ndim(op, "random_token_ids", random_token_ids, 1, "[R]")
    _check_dtype(op, "random_token_ids", random_token_ids, torch.int64)
    _check_probability(op, "mlm_probability", mlm_probability)
    _check_probability(op, "uniform_mix", uniform_mix)
    _check_probability(op, "mask_replace_prob", mask_replace_prob)
    _check_probability(op, "random_replace_prob", random_replace_prob)
    # As the kernels add them, in float64: NumPy float32 shares add in float32, where 0.9 and 0.1
    # sum to exactly 1 but their doubles do not.
    mask_share, random_share = (float(v) if isinstance(v, np.generic) else v for v in (mask_replace_prob,
                                                                                       random_replace_prob))
    if mask_share + random_share > 1.0 + 1e-12:
        raise ValueError(f"{op}: mask_replace_prob + random_replace_prob must be at most 1, got {mask_share} + "
                         f"{random_share}")
    if weighting not in WEIGHTINGS.values():
        raise ValueError(f"{op}: weighting must be 0 (similarity) or 1 (rank), got {weighting}")
    _check_float32_value(op, "unknown_score", unknown_score)
    if random_replace_prob > 0 and random_token_ids.shape[0] == 0:
        raise ValueError(
            f"{op}: random_token_ids is empty but random_replace_prob = {random_replace_prob} > 0; pass the ids "
            "random replacements are drawn from"
        )
    _check_devices(
        op, input_ids=input_ids, never_word=never_word, starts_word=starts_word, table_keys=table_keys,
        table_values=table_values, random_token_ids=random_token_ids,
    )


def _check_seed_tensor(op: str, seed, input_ids: torch.Tensor) -> None:
    _check_tensor(op, "seed", seed)
    _check_dtype(op, "seed", seed, torch.int64)
    if seed.numel() != 1:
        raise ValueError(f"{op}: seed must hold one int64 value, got shape {tuple(seed.shape)}")
    if seed.device != input_ids.device and seed.device.type != "cpu":
        raise ValueError(f"{op}: seed must be on the device of input_ids ({input_ids.device}) or on the CPU, got {seed.device}")


def _as_integer(value) -> int | None:
    """``value`` (an integer, numpy's included, or a one-element integer tensor) as an int; None
    for anything else: 1.7 or True would be taken as 1, silently."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool and not value.is_complex():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _integer_seed(op: str, seed) -> int:
    """``seed`` as an int64 value; TypeError for what is no integer."""
    value = _as_integer(seed)
    if value is None:
        raise TypeError(f"{op}: seed must be an integer, got {type(seed).__name__} {seed!r}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{op}: seed must fit in a signed 64-bit integer, got {value}")
    return value


def _token_id(op: str, mask_token_id) -> int:
    """``mask_token_id`` as an int, refused unless it is an integer id of int64 (a float or an
    id beyond int64 would otherwise fail in the op's binding with a contradictory message)."""
    token_id = _as_integer(mask_token_id)
    if token_id is None:
        raise TypeError(f"{op}: mask_token_id must be an integer token id, got {type(mask_token_id).__name__} "
                        f"{mask_token_id!r}")
    if not 0 <= token_id < 2**63:
        raise ValueError(f"{op}: mask_token_id must be a token id in [0, 2**63), got {token_id}")
    return token_id


@torch.compiler.disable  # a graph break, also where dynamo would trace int() as a symbolic int the op refuses
def _draw_seed(generator: torch.Generator | None) -> int:
    """A 64-bit seed from ``generator`` (the global torch RNG when None), so torch.manual_seed
    makes the compiled sampling reproducible."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator, device=device))


def _chosen_seed(op: str, seed, generator: torch.Generator | None) -> int:
    """``seed`` as an int64 value, else one drawn from ``generator``; both at once are refused
    (one of them would be ignored)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = f" (pass an integer seed as seed={generator!r})" if _as_integer(generator) is not None else ""
        raise TypeError(f"{op}: generator must be a torch.Generator, got {type(generator).__name__} "
                        f"{generator!r:.60}{hint}")
    if seed is None:
        return _draw_seed(generator)
    if generator is not None:
        raise ValueError(f"{op}: give seed or generator, not both")
    return _integer_seed(op, seed)


# ----------------------------------------------------------------------------------------------
# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors
# ----------------------------------------------------------------------------------------------


@torch.library.register_fake("diffmask_fast::max_anchor_similarity")
def _max_anchor_similarity_fake(embeddings, anchors):
    _check_similarity_args(embeddings, anchors)
    shape = embeddings.shape[:-1]
    return embeddings.new_empty(shape, dtype=torch.float32), embeddings.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("diffmask_fast::max_anchor_similarity_precision")
def _max_anchor_similarity_precision_fake(embeddings, anchors, precision):
    _check_similarity_args(embeddings, anchors, precision)
    shape = embeddings.shape[:-1]
    return embeddings.new_empty(shape, dtype=torch.float32), embeddings.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("diffmask_fast::top_dots")
def _top_dots_fake(queries, vectors, k):
    _check_top_dots_args(queries, vectors, k)
    return queries.new_empty((queries.shape[0], k), dtype=torch.int64)


@torch.library.register_fake("diffmask_fast::ivf_max_dot")
def _ivf_max_dot_fake(queries, probes, vectors, offsets, ids=None):
    _check_ivf_args(queries, probes, vectors, offsets, ids)
    n = queries.shape[0]
    return queries.new_empty((n,), dtype=torch.float32), queries.new_empty((n,), dtype=torch.int64)


@torch.library.register_fake("diffmask_fast::sample_without_replacement")
def _sample_without_replacement_fake(weights, counts, seed):
    _check_sampling_args(weights, counts)
    return weights.new_empty(weights.shape, dtype=torch.bool)


@torch.library.register_fake("diffmask_fast::group_words")
def _group_words_fake(input_ids, never_word, starts_word):
    _check_token_args("group_words", input_ids, never_word, starts_word)
    _check_devices("group_words", input_ids=input_ids, never_word=never_word, starts_word=starts_word)
    batch = input_ids.shape[0]
    max_words = torch.library.get_ctx().new_dynamic_size()
    return (
        input_ids.new_empty(input_ids.shape),
        input_ids.new_empty((batch, max_words)),
        input_ids.new_empty((batch,)),
    )


@torch.library.register_fake("diffmask_fast::score_table_insert")
def _score_table_insert_fake(keys, values, new_keys, new_values):
    _check_insert_args(keys, values, new_keys, new_values)
    return None


@torch.library.register_fake("diffmask_fast::score_table_lookup")
def _score_table_lookup_fake(keys, values, queries, default_value):
    _check_lookup_args(keys, values, queries)
    return queries.new_empty(queries.shape, dtype=torch.float32), queries.new_empty(queries.shape, dtype=torch.bool)


@torch.library.register_fake("diffmask_fast::difference_mask")
def _difference_mask_fake(
    input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, weighting,
    uniform_mix, unknown_score, mask_token_id, mask_replace_prob, random_replace_prob, seed,
):
    _check_mask_args(
        input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, weighting,
        uniform_mix, unknown_score, mask_replace_prob, random_replace_prob,
    )
    misses = torch.library.get_ctx().new_dynamic_size()
    return (
        input_ids.new_empty(input_ids.shape),
        input_ids.new_empty(input_ids.shape),
        input_ids.new_empty((input_ids.shape[0],)),
        input_ids.new_empty((misses, 4)),
    )


@torch.library.register_fake("diffmask_fast::difference_mask_device")
def _difference_mask_device_fake(
    input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, weighting,
    uniform_mix, unknown_score, mask_token_id, mask_replace_prob, random_replace_prob, seed,
):
    op = "difference_mask_device"
    _check_mask_args(
        input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, weighting,
        uniform_mix, unknown_score, mask_replace_prob, random_replace_prob, op=op,
    )
    _check_seed_tensor(op, seed, input_ids)
    rows = (input_ids.shape[0],)
    return (
        input_ids.new_empty(input_ids.shape),
        input_ids.new_empty(input_ids.shape),
        input_ids.new_empty(rows),
        input_ids.new_empty(rows),
        input_ids.new_empty(rows),
    )


# ----------------------------------------------------------------------------------------------
# Similarity
# ----------------------------------------------------------------------------------------------


def max_anchor_similarity(
    embeddings: torch.Tensor, anchors: torch.Tensor, precision: str = "highest"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest anchor by cosine similarity (eq. 4 with ``max``) for every embedding.

    embeddings [..., D] and anchors [K, D] (K >= 1), float32/float64/float16/bfloat16, any strides,
    one device. Returns (values [...] float32, indices [...] int64): the max cosine over anchors,
    within [-1, 1], and the first anchor reaching it. Zero vectors (embeddings or anchors) have
    cosine 0, so a zero embedding gets (0, 0). Computed in float32 (float64 inputs in float64) in
    row blocks, so memory stays O(block x K) for any number of embeddings (on CUDA: the unit
    anchors, their bfloat16 parts for "high" and "medium", a running max per row and one block
    of at most 128 MiB of products). An embedding
    holding NaN or infinity gets (NaN, 0); anchors holding NaN or infinity are never chosen unless
    every anchor does. Rows whose values are so large or small that float32 products over- or
    underflow are searched again scaled by a power of two.

    ``precision`` (see PRECISIONS) trades accuracy for speed on CUDA devices of compute capability
    8.0 or newer (older ones refuse "high" and "medium"), for more than 32 anchors (up to 32 the
    search is bound by reading the embeddings, and every precision computes in float32). With bfloat16's unit roundoff
    u = 2^-8: "medium" rounds both factors of every product to bfloat16, so a cosine errs by at
    most 2u plus the float32 bound D * 2^-24 of "highest" (~8e-3 at D = 768); "high" writes each
    factor v as hi + lo (hi = v rounded to bfloat16, lo = the rest rounded) and sums
    hi*hi + hi*lo + lo*hi, which errs by at most 3u^2 plus 3 D * 2^-24 (~2e-4 at D = 768, finer
    than TF32's 2^-10). Products are exact and summed in float32, and norms come from the float32
    values. Rounding errors mostly cancel, so typical errors are smaller: for isotropic vectors
    at D = 768 about 6e-5 ("medium") and 1e-7 ("high"), for embeddings with a shared direction
    and a few large dimensions (as transformers' are) about ten times that. Anchors closer than
    the error to the best may be chosen instead of it. The CPU computes every precision in float32.
    """
    _check_similarity_args(embeddings, anchors, precision)
    embeddings, anchors = embeddings.detach(), anchors.detach()  # no gradient flows through the search
    if precision == "highest":
        return _ops.max_anchor_similarity(embeddings, anchors)
    return _ops.max_anchor_similarity_precision(embeddings, anchors, precision)


def top_dots(queries: torch.Tensor, vectors: torch.Tensor, k: int) -> torch.Tensor:
    """The k vectors of largest dot product with each query: the lists an inverted-file index
    probes, given its centroids.

    queries [N, D] and vectors [C, D] float32, 0 <= k <= C. Returns indices [N, k] int64, each row
    in increasing order: the k largest products in float32, a NaN product ranked as -inf, equal
    products to the smaller index (so the result does not depend on threads or blocking; every
    product of a row comes from the same kernel, so copies of a vector tie exactly). CPU only.
    """
    _check_top_dots_args(queries, vectors, k)
    return _ops.top_dots(queries.detach(), vectors.detach(), int(k))


def ivf_max_dot(queries: torch.Tensor, probes: torch.Tensor, vectors: torch.Tensor,
                offsets: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The list scan of an inverted-file index: for each query, the largest dot product with the
    vectors of the lists it probes, and where that vector is.

    queries [N, D] and vectors [M, D] float32; vectors are grouped by list, list l being
    vectors[offsets[l]:offsets[l + 1]] (offsets [L + 1] int64, from 0 to M, never decreasing);
    probes [N, P] int64 names the lists each query scans (in [0, L); a list named twice is scanned
    once more, to no effect). Returns (values [N] float32, positions [N] int64): the largest dot
    product in float32 and the smallest position m reaching it; (-inf, -1) for a query whose
    lists hold no vector, or only vectors whose products are NaN (NaN never wins). On AVX-512
    every product comes from the same kernel, so copies of a vector tie exactly; where lists are
    multiplied by BLAS (other CPUs, long lists on AVX2) a copy's product can differ in the last
    bit with the length of its list. CPU only.

    Given ``ids`` [M] int64 (what each vector stands for, increasing within every list), a tie
    between lists goes to the smaller id instead: ``AnchorIndex`` passes its anchor ids, so that
    ties go to the first anchor, as in the exact op. It scans its IVF lists with this op: the
    queries probing a list are multiplied with it together, a cached block at a time, instead of
    one query at a time.
    """
    _check_ivf_args(queries, probes, vectors, offsets, ids)
    result = _ops.ivf_max_dot(queries.detach(), probes, vectors.detach(), offsets, ids)  # checks the offsets first
    if ids is not None and not torch.compiler.is_compiling():  # data-dependent: no traced graph takes it
        _check_ids_increase_within_lists(ids, offsets)
    return result


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def sample_without_replacement(
    weights: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None = None, *, seed: int | None = None
) -> torch.Tensor:
    """Successive sampling without replacement, proportional to weight, independently per row.

    weights [B, N] floating, finite and non-negative (checked: ValueError otherwise); counts [B]
    integer, non-negative. Returns bool [B, N] with exactly min(counts[b], #positive weights in
    row b) positions set in row b; zero weights are never drawn (unlike torch.multinomial).
    Inclusion is not proportional to weight: it is the law of drawing one item at a time with
    probability proportional to weight among those left. ``seed`` (int64) fixes the draw; without
    it the seed is drawn from ``generator`` (the global torch RNG when None), so
    ``torch.manual_seed`` makes results reproducible. Drawing reads a tensor's value, which
    ``torch.compile`` treats as a graph break: under ``fullgraph=True`` pass ``seed``.
    """
    _check_sampling_args(weights, counts)
    return _ops.sample_without_replacement(weights.detach(), counts, _chosen_seed("sample_without_replacement",
                                                                                  seed, generator))


# ----------------------------------------------------------------------------------------------
# Words
# ----------------------------------------------------------------------------------------------


class Words(NamedTuple):
    word_index: torch.Tensor  #: [B, L] int64, word of each token within its row, -1 for never-word tokens
    word_hash: torch.Tensor  #: [B, W] int64, hash of word w of row b, 0 beyond n_words[b]
    n_words: torch.Tensor  #: [B] int64


def group_words(input_ids: torch.Tensor, never_word: torch.Tensor, starts_word: torch.Tensor) -> Words:
    """Words of a tokenized batch and their hashes (see word_hash), without decoding tokens.

    input_ids [B, L] int64; never_word [B, L] bool flags special tokens and padding, which belong
    to no word; starts_word [V] bool flags the token ids that begin a word. A token starts a word
    when it is not never_word and its id is flagged, or it is first in its row, or follows a
    never_word token. Ids of never_word tokens are not looked up; other ids must be in [0, V).
    W is the largest word count of the batch.
    """
    _check_token_args("group_words", input_ids, never_word, starts_word)
    _check_devices("group_words", input_ids=input_ids, never_word=never_word, starts_word=starts_word)
    return Words(*_ops.group_words(input_ids, never_word, starts_word))


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _INT64_MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _INT64_MASK
    return z ^ (z >> 31)


def word_hash(token_ids: Sequence[int]) -> int:
    """The 64-bit hash group_words and difference_mask give a word, as a signed int64.

    h = 0x9E3779B97F4A7C15; for each id: h = splitmix64_finalizer(h ^ id); 0 becomes 1 (0 marks
    empty table slots). Lets callers insert scores for known words without running the op.
    """
    given = list(token_ids)
    ids = [_as_integer(i) for i in given]
    if None in ids:
        raise TypeError(f"word_hash: token ids must be integers, got {given[ids.index(None)]!r}")
    if not ids:
        raise ValueError("word_hash: a word has at least one token")
    outside = next((i for i in ids if not -(2**63) <= i < 2**63), None)
    if outside is not None:  # int64 ids, as in the ops' tensors; a wider one would wrap onto another id
        raise ValueError(f"word_hash: token ids are int64 values, got {outside}")
    h = _WORD_HASH_SEED
    for token_id in ids:
        h = _mix64(h ^ (token_id & _INT64_MASK))
    if h == 0:
        h = 1
    return h - (1 << 64) if h >= 1 << 63 else h


# ----------------------------------------------------------------------------------------------
# Score table
# ----------------------------------------------------------------------------------------------


def score_table_insert(
    keys: torch.Tensor, values: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor
) -> None:
    """Insert or overwrite (key, value) pairs in an open-addressing table, in place.

    keys int64 [C] and values float32 [C] (C a power of two, key 0 = empty slot); new_keys int64
    [M] non-zero, new_values float32 [M] finite. Raises ValueError, leaving the table unchanged,
    when a key is 0, a value is not finite, or the table fills up (ScoreHashTable grows instead).
    Keep the table at most half full, as ScoreHashTable does: linear probing looks an absent key
    up by scanning to the next empty slot, which in a nearly full table is most of it.
    """
    _check_insert_args(keys, values, new_keys, new_values)
    _ops.score_table_insert(keys, values, new_keys, new_values)


def score_table_lookup(
    keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, default_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Look queries (int64, any shape) up: (values float32, found bool), both of the queries' shape;
    ``default_value`` where a key is absent."""
    _check_lookup_args(keys, values, queries)
    default_value = float(default_value)
    _check_float32_value("score_table_lookup", "default_value", default_value)
    # No gradient flows through a look-up: detached, as the other ops' inputs (else autograd's
    # fallback marked the result as needing one and backward left the values' grad None).
    return _ops.score_table_lookup(keys, values.detach(), queries, default_value)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _word_hashes(hashes, where: str) -> torch.Tensor:
    """Hashes as an int64 tensor. Floats and booleans are refused rather than truncated: 2.5
    would silently become the hash 2, another word's."""
    if isinstance(hashes, np.generic):  # a numpy scalar as an array: torch takes np.uint64 arrays only
        hashes = np.asarray(hashes)
    try:
        tensor = torch.as_tensor(hashes)
    except (OverflowError, RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: hashes must be int64 word hashes ({error})") from None
    if tensor.numel() and (tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"{where}: hashes must be integers (int64 word hashes), got {tensor.dtype}")
    return tensor.to(torch.int64)


class ScoreHashTable:
    """Word hash -> score, held in two CPU tensors that difference_mask reads directly.

    Grows by doubling (and rehashing) so the load stays at most 1/2, which keeps linear probing
    short. Picklable by value: each DataLoader worker gets a copy of its own.
    """

    def __init__(self, capacity: int = 1024):
        capacity = _next_power_of_two(max(int(capacity), 2))
        self.keys = torch.zeros(capacity, dtype=torch.int64)
        self.values = torch.zeros(capacity, dtype=torch.float32)
        self._size = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[0]

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"ScoreHashTable(size={self._size}, capacity={self.capacity})"

    def __contains__(self, key) -> bool:
        """Whether one word hash is in the table, read as ``insert`` and ``lookup`` read hashes (an
        unsigned one by its bits); anything that is no single integer hash is not."""
        try:
            hashes = _word_hashes(key, "ScoreHashTable")
        except (TypeError, ValueError):
            return False  # a float, a boolean (True is no hash 1), text, None, or an integer beyond 64 bits
        return hashes.numel() == 1 and bool(self.lookup(hashes.reshape(1))[1][0])

    def __getstate__(self) -> dict:
        # As numpy arrays, copied: torch's multiprocessing pickler would move the tensors to shared
        # memory, and DataLoader workers started by spawn would all write into one table, each
        # counting only its own words, until it overflowed.
        return {"keys": self.keys.numpy().copy(), "values": self.values.numpy().copy(), "size": self._size}

    def __setstate__(self, state: dict) -> None:
        self.keys = torch.from_numpy(state["keys"])
        self.values = torch.from_numpy(state["values"])
        self._size = state["size"]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) for difference_mask's table_keys and table_values."""
        return self.keys, self.values

    def insert(self, hashes, scores) -> None:
        """Insert or overwrite hashes (int64, non-zero) with scores (finite); grows as needed."""
        hashes = _word_hashes(hashes, "ScoreHashTable.insert").reshape(-1).contiguous()
        scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1).contiguous()
        if hashes.shape != scores.shape:
            raise ValueError(
                f"ScoreHashTable.insert: {hashes.numel()} hashes but {scores.numel()} scores; they must pair up"
            )
        if hashes.numel() == 0:
            return
        if bool((hashes == 0).any()):
            raise ValueError("ScoreHashTable.insert: hash 0 marks empty slots and cannot be inserted")
        if not bool(torch.isfinite(scores).all()):  # a finite 1e39 is float32's infinity
            raise ValueError("ScoreHashTable.insert: scores must be finite float32 values (|score| <= 3.4e38)")
        _, present = score_table_lookup(self.keys, self.values, torch.unique(hashes))
        size = self._size + int((~present).sum())
        if 2 * size > self.capacity:
            self._rehash(_next_power_of_two(2 * size))
        score_table_insert(self.keys, self.values, hashes, scores)
        self._size = size

    def lookup(self, hashes, default: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores float32, found bool) for hashes of any shape; ``default`` where absent."""
        return score_table_lookup(self.keys, self.values, _word_hashes(hashes, "ScoreHashTable.lookup"), default)

    def _rehash(self, capacity: int) -> None:
        occupied = self.keys != 0
        keys, values = self.keys[occupied], self.values[occupied]
        self.keys = torch.zeros(capacity, dtype=torch.int64)
        self.values = torch.zeros(capacity, dtype=torch.float32)
        score_table_insert(self.keys, self.values, keys, values)


# ----------------------------------------------------------------------------------------------
# Difference-Masking of a batch
# ----------------------------------------------------------------------------------------------


class DifferenceMaskOutput(NamedTuple):
    masked_ids: torch.Tensor  #: [B, L] int64, input_ids after 80/10/10 replacement
    labels: torch.Tensor  #: [B, L] int64, original id at masked tokens, -100 elsewhere
    masked_words: torch.Tensor  #: [B] int64, words masked per row
    misses: torch.Tensor  #: [M, 4] int64 rows (hash, row, start, end) of distinct words absent from the table


def difference_mask(
    input_ids: torch.Tensor,
    never_word: torch.Tensor,
    starts_word: torch.Tensor,
    table_keys: torch.Tensor,
    table_values: torch.Tensor,
    random_token_ids: torch.Tensor,
    *,
    mask_token_id: int,
    mlm_probability: float = 0.25,
    weighting: str = "similarity",
    uniform_mix: float = 0.0,
    unknown_score: float = 0.0,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> DifferenceMaskOutput:
    """Difference-Masking of a padded batch in one pass (reference.mask_sequence per row).

    input_ids [B, L] int64, never_word [B, L] bool, starts_word [V] bool: words as in group_words.
    A word's score is table_values at its hash in the table (table_keys int64 [C], table_values
    float32 [C], e.g. ScoreHashTable.tensors()), or ``unknown_score`` when absent. Weights are
    ``similarity`` (max(s, 0)) or ``rank``, mixed with uniform by ``uniform_mix``; the budget is
    mlm_probability * n_words rounded stochastically; words are drawn by successive sampling and
    every token of a drawn word is masked and replaced 80/10/10 (random ids from
    random_token_ids [R] int64). ``mask_token_id`` and the random ids are written as given, not
    checked against the vocabulary (the collators take them from the tokenizer).

    ``misses`` lists one occurrence of every distinct absent word; insert their scores and call
    again with the same ``seed`` to get exactly the result of a warm table. ``seed`` (int64)
    defaults to a draw from ``generator`` (the global torch RNG when None); the draw is a graph
    break for ``torch.compile``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"difference_mask: weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
    code = WEIGHTINGS[weighting]
    mlm_probability, uniform_mix, unknown_score = float(mlm_probability), float(uniform_mix), float(unknown_score)
    mask_replace_prob, random_replace_prob = float(mask_replace_prob), float(random_replace_prob)
    _check_mask_args(
        input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, code,
        uniform_mix, unknown_score, mask_replace_prob, random_replace_prob,
    )
    seed = _chosen_seed("difference_mask", seed, generator)
    return DifferenceMaskOutput(
        *_ops.difference_mask(
            input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, code,
            uniform_mix, unknown_score, _token_id("difference_mask", mask_token_id), mask_replace_prob,
            random_replace_prob, seed,
        )
    )


class DeviceMaskOutput(NamedTuple):
    masked_ids: torch.Tensor  #: [B, L] int64, input_ids after 80/10/10 replacement
    labels: torch.Tensor  #: [B, L] int64, original id at masked tokens, -100 elsewhere
    masked_words: torch.Tensor  #: [B] int64, words masked per row
    n_words: torch.Tensor  #: [B] int64, words per row
    missed_words: torch.Tensor  #: [B] int64, words per row whose hash is absent from the table (scored unknown_score)


def difference_mask_device(
    input_ids: torch.Tensor,
    never_word: torch.Tensor,
    starts_word: torch.Tensor,
    table_keys: torch.Tensor,
    table_values: torch.Tensor,
    random_token_ids: torch.Tensor,
    *,
    mask_token_id: int,
    seed: torch.Tensor | int,
    mlm_probability: float = 0.25,
    weighting: str = "similarity",
    uniform_mix: float = 0.0,
    unknown_score: float = 0.0,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> DeviceMaskOutput:
    """difference_mask for the training step: outputs of fixed size, no host round trip.

    Same arguments and, for the same seed, the same masked_ids, labels and masked_words as
    difference_mask (on the CPU and on CUDA alike). The differences, all so that the op can run
    inside a compiled or graph-captured training step on the GPU without synchronizing:

    - ``seed`` is a one-element int64 tensor, on the device of input_ids (read by the kernel, so
      a training loop can advance it in place, e.g. ``seed.add_(1)``, without a host round trip)
      or on the CPU; a Python int is taken as a CPU tensor. A CUDA graph captures a CPU seed's
      value, so every replay would draw the same masks: under graph capture give a device seed
      (DifferenceMasker does).
    - ``table_values`` must be finite (ScoreTable and score_table_insert make sure of it): the
      op does not check them (difference_mask raises ValueError); a word whose score is NaN or
      infinite scores ``unknown_score``.
    - Words absent from the table score ``unknown_score`` and are counted per row
      (``missed_words``) instead of listed: warm the table beforehand (DifferenceMasker.warm).
    - Ids outside [0, V) that are not never_word belong to no word and are never masked (the
      other op raises ValueError, which needs a synchronization on CUDA).
    """
    op = "difference_mask_device"
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{op}: weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
    code = WEIGHTINGS[weighting]
    mlm_probability, uniform_mix, unknown_score = float(mlm_probability), float(uniform_mix), float(unknown_score)
    mask_replace_prob, random_replace_prob = float(mask_replace_prob), float(random_replace_prob)
    _check_mask_args(
        input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, code,
        uniform_mix, unknown_score, mask_replace_prob, random_replace_prob, op=op,
    )
    if not isinstance(seed, torch.Tensor):
        seed = torch.tensor([_integer_seed(op, seed)], dtype=torch.int64)
    _check_seed_tensor(op, seed, input_ids)
    return DeviceMaskOutput(
        *_ops.difference_mask_device(
            input_ids, never_word, starts_word, table_keys, table_values, random_token_ids, mlm_probability, code,
            uniform_mix, unknown_score, _token_id(op, mask_token_id), mask_replace_prob, random_replace_prob, seed,
        )
    )

"""The compiled operators against diffmask_fast.reference, plus argument checks and opcheck.

Inputs are fresh random draws on every run; each test's seed is printed and appears in its
assertion messages. Set DIFFMASK_FAST_TEST_SEED to replay one.
"""

from __future__ import annotations

import functools
import importlib
import math
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import op_cases
from diffmask_fast import reference

from diffmask_fast import _extension, ops  # a missing extension fails the suite rather than skipping it


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# max_anchor_similarity
# ----------------------------------------------------------------------------------------------


def cosine_matrix(embeddings: torch.Tensor, anchors: torch.Tensor) -> np.ndarray:
    """All cosines in float64 with the reference's zero-vector rule: [..., K]."""
    e = embeddings.detach().double().numpy()
    a = anchors.detach().double().numpy()
    dots = e @ a.T
    norms = np.linalg.norm(e, axis=-1, keepdims=True) * np.linalg.norm(a, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0.0)


def check_against_cosines(values, indices, embeddings, anchors, atol, message):
    """Values equal the max cosine; each index reaches the max (within atol: near-ties may go
    either way in float32) and is the first anchor with exactly that cosine."""
    cos = cosine_matrix(embeddings, anchors)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64, message
    assert values.shape == embeddings.shape[:-1] and indices.shape == embeddings.shape[:-1], message
    best = cos.max(axis=-1)
    np.testing.assert_allclose(values.numpy(), best, atol=atol, rtol=0, err_msg=message)
    chosen = np.take_along_axis(cos, indices.numpy()[..., None], axis=-1)[..., 0]
    assert np.all(chosen >= best - atol), message


@pytest.mark.parametrize(
    "n, d, k",
    [(1, 1, 1), (1, 3, 2), (7, 13, 5), (33, 385, 20), (50, 64, 100), (5, 768, 33), (300, 24, 17), (20, 8, 8)],
)
def test_similarity_matches_reference(seed, n, d, k):
    g = generator(seed)
    embeddings = torch.randn(n, d, generator=g)
    anchors = torch.randn(k, d, generator=g)
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    message = f"seed={seed} n={n} d={d} k={k}"
    if n * d * k <= 300_000:
        ref_values, ref_indices = reference.max_anchor_similarity(embeddings.numpy(), anchors.numpy())
        np.testing.assert_allclose(values.numpy(), ref_values, atol=1e-5, rtol=0, err_msg=message)
    check_against_cosines(values, indices, embeddings, anchors, 1e-5, message)


@pytest.mark.parametrize("k", [1, 20, 129, 1000])
def test_similarity_many_rows_and_anchors(seed, k):
    g = generator(seed)
    embeddings = torch.randn(2000, 96, generator=g)
    anchors = torch.randn(k, 96, generator=g)
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    check_against_cosines(values, indices, embeddings, anchors, 1e-5, f"seed={seed} k={k}")


def test_similarity_blas_paths(seed):
    """float64 inputs, transposed embeddings and very many anchors take the BLAS route."""
    g = generator(seed)
    message = f"seed={seed}"
    e64 = torch.randn(40, 19, generator=g, dtype=torch.float64)
    a64 = torch.randn(6, 19, generator=g, dtype=torch.float64)
    values, indices = ops.max_anchor_similarity(e64, a64)
    ref_values, ref_indices = reference.max_anchor_similarity(e64.numpy(), a64.numpy())
    np.testing.assert_allclose(values.numpy(), ref_values, atol=1e-6, err_msg=message)
    np.testing.assert_array_equal(indices.numpy(), ref_indices, err_msg=message)

    transposed = torch.randn(48, 3000, generator=g).t()  # [3000, 48], column-major
    anchors = torch.randn(20, 48, generator=g)
    values, indices = ops.max_anchor_similarity(transposed, anchors)
    check_against_cosines(values, indices, transposed, anchors, 1e-5, message)

    many = torch.randn(8200, 8, generator=g)
    embeddings = torch.randn(30, 8, generator=g)
    values, indices = ops.max_anchor_similarity(embeddings, many)
    check_against_cosines(values, indices, embeddings, many, 1e-5, message)


@pytest.mark.parametrize("k, dtype", [(1537, torch.float32), (20000, torch.float32), (3500, torch.float64)])
def test_similarity_across_anchor_tiles(seed, k, dtype):
    """Many anchors are searched in tiles of columns (1,536 at D = 384 in float32, 1,632 in
    float64) with a running maximum: the first maximum still wins across tiles, and a maximum in
    the first, the last or a one-column tile is found."""
    g = generator(seed)
    message = f"seed={seed} k={k} {dtype}"
    anchors = torch.randn(k, 384, generator=g, dtype=dtype)
    anchors[k - 2] = anchors[1]  # an exact duplicate in the last tile: the first index wins
    embeddings = torch.randn(200, 384, generator=g, dtype=dtype)
    planted = {0: k - 2, 1: k - 1, 2: 1536, 3: 1535, 4: k // 2}  # near these anchors
    for row, anchor in planted.items():
        embeddings[row] = anchors[anchor] * 2 + 1e-3 * embeddings[row]
    embeddings[5, 7] = float("nan")
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    assert indices[0] == 1, f"{message}: the duplicate in a later tile won the tie"
    for row, anchor in planted.items():
        first = next(j for j in range(k) if torch.equal(anchors[j], anchors[anchor]))
        assert indices[row] == first, f"{message}: row {row} found anchor {int(indices[row])}, not {first}"
    assert torch.isnan(values[5]), message
    keep = torch.ones(200, dtype=torch.bool)
    keep[5] = False
    check_against_cosines(values[keep], indices[keep], embeddings[keep], anchors, 1e-5, message)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_similarity_half_precision(seed, dtype):
    g = generator(seed)
    embeddings = torch.randn(64, 40, generator=g).to(dtype)
    anchors = torch.randn(9, 40, generator=g).to(dtype)
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    # Compared on the same (upcast) values; the op computes in float32.
    check_against_cosines(values, indices, embeddings.float(), anchors.float(), 1e-4, f"seed={seed} {dtype}")
    mixed_values, _ = ops.max_anchor_similarity(embeddings, anchors.float())
    torch.testing.assert_close(mixed_values, values, atol=1e-5, rtol=0)
    # The embeddings' type sets the compute type: float32 rows with float64 anchors are float32 work.
    single = ops.max_anchor_similarity(embeddings.float(), anchors.float())
    wider = ops.max_anchor_similarity(embeddings.float(), anchors.double())
    assert torch.equal(single[0], wider[0]) and torch.equal(single[1], wider[1])


def test_similarity_strides_and_batch_dims(seed):
    g = generator(seed)
    message = f"seed={seed}"
    anchors = torch.randn(2 * 11, 13, generator=g)[::2]  # non-contiguous anchors
    base = torch.randn(6, 40, 26, generator=g)
    cases = {
        "column slice": base[..., ::2],  # inner stride 2
        "row slice": base.reshape(-1, 26)[::3, :13],  # row stride > D
        "permuted batch": base[..., :13].permute(1, 0, 2),  # leading dims not flattenable as a view
        "batch dims": base[..., 13:].reshape(2, 3, 40, 13),
    }
    for name, embeddings in cases.items():
        values, indices = ops.max_anchor_similarity(embeddings, anchors)
        check_against_cosines(values, indices, embeddings, anchors, 1e-5, f"{message} {name}")
    expanded = torch.randn(1, 13, generator=g).expand(50, 13)  # row stride 0
    values, indices = ops.max_anchor_similarity(expanded, anchors)
    assert torch.all(indices == indices[0]), message
    if _extension.load().cpu_kernels == "none":
        # BLAS sums a row's products in an order set by its place in the block. Each order is within
        # D units of rounding (2^-24) of the exact cosine, an error relative to |row| |anchor| = 1,
        # not to the cosine: a small cosine may move by several of its own units in the last place.
        bound = 2 * expanded.shape[-1] * 2.0 ** -24
        torch.testing.assert_close(values, values[:1].expand(50), atol=bound, rtol=0, msg=message)
    else:  # panels: a row's result never depends on the other rows
        assert torch.all(values == values[0]), message


def test_similarity_empty_and_shapes():
    anchors = torch.randn(4, 7)
    for shape in [(0, 7), (3, 0, 7), (7,), (2, 1, 7)]:
        values, indices = ops.max_anchor_similarity(torch.randn(shape), anchors)
        assert values.shape == shape[:-1] and indices.shape == shape[:-1]
        assert values.dtype == torch.float32 and indices.dtype == torch.int64


def test_similarity_zero_vectors_and_ties(seed):
    g = generator(seed)
    message = f"seed={seed}"
    anchors = torch.randn(12, 10, generator=g)
    anchors[7] = anchors[2]  # duplicate: ties go to the smaller index
    anchors[9] = anchors[2] * 4.0  # same direction: normalizes to the same unit vector
    anchors[4] = 0.0  # zero anchor: cosine 0
    embeddings = torch.randn(30, 10, generator=g)
    embeddings[0] = 0.0
    embeddings[1] = anchors[2] * 3
    embeddings[2] = -anchors.sum(0)
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    assert values[0] == 0 and indices[0] == 0, message
    assert indices[1] == 2 and abs(values[1] - 1) < 1e-6, message
    ref_values, ref_indices = reference.max_anchor_similarity(embeddings.numpy(), anchors.numpy())
    np.testing.assert_allclose(values.numpy(), ref_values, atol=1e-5, err_msg=message)
    # Exact duplicates tie exactly: the reference's choice (first index) is reproduced.
    assert not np.any(np.isin(indices.numpy(), [7])), message
    assert ref_indices[1] == 2 == indices[1], message
    all_zero = torch.zeros(3, 10)
    values, indices = ops.max_anchor_similarity(embeddings[:5], all_zero)
    assert torch.all(values == 0) and torch.all(indices == 0)
    # Nearest anchor is the zero one when every other cosine is negative.
    e = torch.randn(1, 10, generator=g)
    values, indices = ops.max_anchor_similarity(e, torch.stack([-e[0], torch.zeros(10), -2 * e[0]]))
    assert values.item() == 0 and indices.item() == 1, message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchors_that_differ_only_in_the_sign_of_zeros_are_one_anchor(seed, dtype):
    """-0.0 == 0.0, so such anchors tie exactly and the first wins, as in the reference; their
    bits differ, which had kept both, computed in different lanes of a panel and no longer tied."""
    g = generator(seed)
    distinct = torch.randn(60, 32, generator=g, dtype=dtype)
    distinct[torch.rand(60, 32, generator=g) < 0.5] = 0.0
    signed = torch.where(distinct == 0, torch.full_like(distinct, -0.0), distinct)
    anchors = torch.cat([distinct, signed])[torch.randperm(120, generator=g)]
    embeddings = torch.cat([anchors, anchors * 3, torch.randn(40, 32, generator=g, dtype=dtype)])
    _, indices = ops.max_anchor_similarity(embeddings, anchors)
    _, expected = reference.max_anchor_similarity(embeddings.numpy(), anchors.numpy())
    assert indices[:240].tolist() == expected[:240].tolist(), f"seed={seed} {dtype}"


def test_every_precision_on_the_cpu_is_the_float32_result(seed):
    """The CPU kernel computes every precision as "highest" (bfloat16 products are the GPU's);
    another name is refused, also when the op is called directly."""
    g = generator(seed)
    embeddings, anchors = torch.randn(30, 16, generator=g), torch.randn(7, 16, generator=g)
    expected = ops.max_anchor_similarity(embeddings, anchors)
    for precision in ("highest", "high", "medium"):
        for got in (ops.max_anchor_similarity(embeddings, anchors, precision),
                    torch.ops.diffmask_fast.max_anchor_similarity_precision(embeddings, anchors, precision)):
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), precision
    with pytest.raises(ValueError, match="precision must be 'highest', 'high' or 'medium', got 'low'"):
        torch.ops.diffmask_fast.max_anchor_similarity_precision(embeddings, anchors, "low")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_nan_propagates(dtype):
    """A NaN makes its row's cosine NaN, also beside zeros or values too small to square (rows
    measured again at another scale), and leaves every other row finite."""
    embeddings = torch.randn(6, 6, dtype=dtype)
    embeddings[1, 3] = float("nan")
    embeddings[4] = 0.0
    embeddings[4, 2] = float("nan")
    embeddings[5] = torch.finfo(dtype).tiny / 8
    embeddings[5, 0] = float("nan")
    values, indices = ops.max_anchor_similarity(embeddings, torch.randn(3, 6, dtype=dtype))
    assert torch.isnan(values[[1, 4, 5]]).all() and torch.isfinite(values[[0, 2, 3]]).all()
    assert indices[[1, 4, 5]].tolist() == [0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_anchor_holding_nan_is_never_the_nearest_wherever_it_lies(seed, dtype):
    """An anchor holding NaN loses to every other anchor, whichever lane, vector or tile of the
    kernels' running maxima it falls in (the last anchor of a block included)."""
    g = generator(seed)
    embeddings = torch.randn(40, 24, generator=g, dtype=dtype)
    for k in (2, 15, 16, 17, 31, 32, 33, 47, 48, 64, 65, 97):
        anchors = torch.randn(k, 24, generator=g, dtype=dtype)
        for position in sorted({0, k // 2, k - 2, k - 1}):
            broken = anchors.clone()
            broken[position, int(torch.randint(0, 24, (1,), generator=g))] = float("nan")
            values, indices = ops.max_anchor_similarity(embeddings, broken)
            cos = cosine_matrix(embeddings, broken)
            cos[:, position] = -np.inf
            best = cos.max(axis=-1)
            message = f"seed={seed} {dtype} k={k} NaN anchor {position}"
            np.testing.assert_allclose(values.numpy(), best, atol=1e-5, rtol=0, err_msg=message)
            assert (indices != position).all(), message
            chosen = np.take_along_axis(cos, indices.numpy()[:, None], axis=-1)[:, 0]
            assert np.all(chosen >= best - 1e-5), message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_similarity_of_scaled_copies_of_anchors_is_at_most_one(seed, dtype):
    """An embedding along an anchor has cosine exactly +-1: float rounding of the dot product
    and the norm must not carry it past (1.0000013 before). (Float64 inputs are divided in
    double and rounded to float32 once, which cannot pass 1.)"""
    g = generator(seed)
    for trial in range(20):
        d = int(torch.randint(1, 400, (1,), generator=g))
        k = 1 if trial % 2 else int(torch.randint(2, 70, (1,), generator=g))  # one anchor: -1 too
        anchors = (torch.randn(k, d, generator=g) * torch.rand(k, 1, generator=g) * 10).to(dtype)
        # Powers of two scale exactly in every format: the copies are parallel to their anchors.
        signs = torch.randint(0, 2, (200, 1), generator=g) * 2 - 1
        scales = 2.0 ** torch.randint(-3, 4, (200, 1), generator=g) * signs
        copies = (anchors[torch.randint(0, k, (200,), generator=g)] * scales).to(dtype)
        values, _ = ops.max_anchor_similarity(copies, anchors)
        message = f"seed {seed}, D {d}, K {k}, {dtype}"
        assert values.abs().max() <= 1.0, f"{message}: {values.abs().max().item()!r}"
        assert (values[scales[:, 0] > 0] >= 1 - 1e-2).all(), message  # each copy finds its anchor


@pytest.mark.parametrize("scale", [1e160, 1e-161, 1e-170, 1e300, 1e-310])  # 1e-161: subnormal sums of squares
def test_float64_similarity_of_values_whose_squares_leave_double_range(seed, scale):
    """Float64 rows and anchors so large or small that even double sums of squares over- or
    underflow: still their cosines, not NaN or the zero vector's 0."""
    g = generator(seed)
    embeddings = torch.randn(30, 16, generator=g, dtype=torch.float64)
    anchors = torch.randn(6, 16, generator=g, dtype=torch.float64)
    expected_values, expected_indices = reference.max_anchor_similarity(embeddings.numpy(), anchors.numpy())
    for e, a in ((embeddings * scale, anchors), (embeddings, anchors * scale), (embeddings * scale, anchors * scale)):
        values, indices = ops.max_anchor_similarity(e, a)
        scaled_values, scaled_indices = reference.max_anchor_similarity(e.numpy(), a.numpy())
        np.testing.assert_allclose(scaled_values, expected_values, atol=1e-12)  # the reference is scale-free too
        np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-6, err_msg=f"seed={seed} scale={scale}")
        assert np.array_equal(indices.numpy(), expected_indices), f"seed={seed} scale={scale}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float64_anchors_beyond_the_compute_types_range(seed, dtype):
    """Float64 anchors at 1e300 or 1e-300 with lower-precision embeddings: normalized as float64
    and only then rounded, so they keep their cosines (not infinity's NaN or the zero vector's 0)."""
    g = generator(seed)
    embeddings = torch.randn(40, 12, generator=g).to(dtype)
    anchors = torch.randn(7, 12, generator=g, dtype=torch.float64)
    anchors[1] *= 1e300
    anchors[3] *= 1e-300
    anchors[5] *= 1e-320  # subnormal float64
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    expected_values, expected_indices = reference.max_anchor_similarity(embeddings.double().numpy(), anchors.numpy())
    np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-5, err_msg=f"seed={seed}")
    assert np.array_equal(indices.numpy(), expected_indices), f"seed={seed}"
    assert {1, 3, 5} & set(indices.tolist()), f"seed={seed}: some row's nearest anchor is a rescaled one"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_of_non_finite_rows_follows_the_reference(seed, dtype):
    """NaN or infinity in an embedding: (NaN, 0). In an anchor: never the nearest, unless every
    anchor holds one. As reference.max_anchor_similarity says."""
    g = generator(seed)
    embeddings = torch.randn(9, 5, generator=g, dtype=dtype)
    embeddings[1, 2] = float("nan")
    embeddings[2, 0] = float("inf")
    embeddings[3, 4] = -float("inf")
    embeddings[4] = 0
    embeddings[5] = -torch.randn(5, generator=g, dtype=dtype).abs()  # ordinary anchors all far: negative cosines
    anchors = torch.randn(6, 5, generator=g, dtype=dtype).abs()
    anchors[0, 1] = float("nan")
    anchors[2, 3] = float("inf")
    anchors[4] = 0  # cosine 0: beats the negative ones for row 5, unlike a NaN anchor
    all_bad = torch.full((2, 5), float("nan"), dtype=dtype)
    all_bad[1, 0] = float("inf")
    for a in (anchors, all_bad):
        values, indices = ops.max_anchor_similarity(embeddings, a)
        expected_values, expected_indices = reference.max_anchor_similarity(embeddings.numpy(), a.numpy())
        np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-6, err_msg=f"seed={seed}")
        assert np.array_equal(indices.numpy(), expected_indices), f"seed={seed} {indices} vs {expected_indices}"
    # Every anchor holding NaN, each where the bits of its number + 1 are set (so that none are
    # merged as copies), in several tiles of columns: anchor 0 still, not a later tile's first.
    many_bad = torch.randn(300, 16, generator=g, dtype=dtype)
    bits = (torch.arange(1, 301)[:, None] >> torch.arange(16)) & 1
    many_bad[bits.bool()] = float("nan")
    values, indices = ops.max_anchor_similarity(torch.randn(4, 16, generator=g, dtype=dtype), many_bad)
    assert torch.isnan(values).all() and indices.tolist() == [0] * 4, f"seed={seed} {indices}"


@pytest.mark.parametrize("scale", [1e20, 1e-25, 3e-20, 1e19])
def test_similarity_of_vectors_whose_float32_squares_overflow_or_underflow(seed, scale):
    g = generator(seed)
    embeddings = torch.randn(40, 12, generator=g)
    anchors = torch.randn(7, 12, generator=g)
    for e, a in ((embeddings * scale, anchors), (embeddings, anchors * scale), (embeddings * scale, anchors * scale),
                 ((embeddings * scale).t().contiguous().t(), anchors)):  # the transposed (BLAS) path too
        values, indices = ops.max_anchor_similarity(e, a)
        expected_values, expected_indices = reference.max_anchor_similarity(e.double().numpy(), a.double().numpy())
        np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-6, err_msg=f"seed={seed} scale={scale}")
        assert np.array_equal(indices.numpy(), expected_indices), f"seed={seed} scale={scale}"
    # One huge anchor among ordinary ones still wins where it is nearest.
    big = anchors.clone()
    big[3] *= 1e20
    values, indices = ops.max_anchor_similarity(big[3:4] * 1e-20 + 1e-3 * embeddings[:1], big)
    assert indices.item() == 3 and values.item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("largest", [3e38, 1e-42])
def test_similarity_of_vectors_whose_float32_products_overflow_or_underflow(seed, largest):
    """Rows whose largest value is near float32's maximum (their dot products overflow) or
    subnormal (their dot products lose every digit): the cosines are still right."""
    g = generator(seed)
    anchors = torch.randn(7, 12, generator=g)
    embeddings = torch.randn(40, 12, generator=g)
    embeddings = embeddings / embeddings.abs().amax(dim=1, keepdim=True) * largest
    embeddings[5] = anchors[2] / anchors[2].abs().max() * largest  # nearest anchor: exactly 2
    for e in (embeddings, embeddings.t().contiguous().t()):
        values, indices = ops.max_anchor_similarity(e, anchors)
        expected_values, expected_indices = reference.max_anchor_similarity(e.double().numpy(), anchors.double().numpy())
        np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-5, err_msg=f"seed={seed} largest={largest}")
        assert np.array_equal(indices.numpy(), expected_indices), f"seed={seed} largest={largest}"
        assert indices[5] == 2 and values[5].item() == pytest.approx(1.0, abs=1e-5)
    values, indices = ops.max_anchor_similarity(torch.tensor([[3e38, 2.9e38]]), torch.tensor([[1.0, 0.5], [1.0, 0.95]]))
    assert indices.item() == 1 and values.item() == pytest.approx(0.99996, abs=1e-5)


@pytest.mark.parametrize("kind", ["float32", "float64", "transposed", "half", "many anchors"])
def test_similarity_and_sampling_take_inputs_that_require_grad(seed, kind):
    g = generator(seed)
    dtype = torch.float64 if kind == "float64" else torch.float32
    embeddings = torch.randn(30, 16, generator=g, dtype=dtype)
    anchors = torch.randn(9000 if kind == "many anchors" else 5, 16, generator=g, dtype=dtype)
    expected = ops.max_anchor_similarity(embeddings, anchors)
    if kind == "transposed":
        embeddings = embeddings.t().contiguous().t()
    if kind == "half":
        embeddings, anchors = embeddings.half(), anchors.half()
        expected = ops.max_anchor_similarity(embeddings, anchors)
    values, indices = ops.max_anchor_similarity(embeddings.requires_grad_(), anchors.requires_grad_())
    assert not values.requires_grad
    torch.testing.assert_close(values, expected[0])
    assert torch.equal(indices, expected[1])
    weights = torch.rand(4, 10, generator=g, dtype=torch.float64, requires_grad=True)
    chosen = ops.sample_without_replacement(weights, torch.full((4,), 3), torch.Generator().manual_seed(seed))
    assert chosen.sum().item() == 12 and not chosen.requires_grad


@pytest.mark.parametrize("k, dim", [(20, 50), (300, 200)])  # 300: 32-wide panels, packed rows, large blocks
def test_similarity_independent_of_threads(seed, k, dim):
    g = generator(seed)
    embeddings = torch.randn(3000, dim, generator=g)
    anchors = torch.randn(k, dim, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.max_anchor_similarity(embeddings, anchors)
    finally:
        torch.set_num_threads(threads)
    many = ops.max_anchor_similarity(embeddings, anchors)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1]), f"seed={seed}"


def test_similarity_errors():
    e, a = torch.randn(5, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="K >= 1"):
        ops.max_anchor_similarity(e, torch.randn(0, 4))
    with pytest.raises(ValueError, match="share D"):
        ops.max_anchor_similarity(e, torch.randn(3, 5))
    with pytest.raises(TypeError, match="embeddings must be float32"):
        ops.max_anchor_similarity(e.long(), a)
    with pytest.raises(TypeError, match="anchors must be float32"):
        ops.max_anchor_similarity(e, a.int())
    with pytest.raises(ValueError, match=r"anchors must be 2-D"):
        ops.max_anchor_similarity(e, a[None])
    with pytest.raises(ValueError, match=r"anchors must be 2-D"):
        ops.max_anchor_similarity(e, a[0])
    with pytest.raises(ValueError, match="0-D"):
        ops.max_anchor_similarity(torch.tensor(1.0), a)
    with pytest.raises(ValueError, match="same device"):
        ops.max_anchor_similarity(e.to("meta"), a)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.max_anchor_similarity(e.numpy(), a)
    # The kernel itself checks too (direct call, bypassing the wrapper).
    with pytest.raises(ValueError, match="share D"):
        torch.ops.diffmask_fast.max_anchor_similarity(e, torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating"):
        torch.ops.diffmask_fast.max_anchor_similarity(e.long(), a)


def test_similarity_meta_and_compile():
    values, indices = ops.max_anchor_similarity(torch.randn(2, 5, 4, device="meta"), torch.randn(3, 4, device="meta"))
    assert values.shape == (2, 5) and values.device.type == "meta" and indices.dtype == torch.int64

    def nearest(e, a):
        values, indices = ops.max_anchor_similarity(e, a)
        return values * 2, indices + 1

    compiled = torch.compile(nearest, backend="aot_eager", fullgraph=True)
    e, a = torch.randn(6, 5), torch.randn(3, 5)
    got, expected = compiled(e, a), nearest(e, a)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ----------------------------------------------------------------------------------------------
# sample_without_replacement
# ----------------------------------------------------------------------------------------------


def random_weights(g: torch.Generator, rows: int, n: int, zero_fraction: float = 0.3) -> torch.Tensor:
    weights = torch.rand(rows, n, generator=g, dtype=torch.float64)
    weights[torch.rand(rows, n, generator=g) < zero_fraction] = 0
    return weights


def test_sampling_exact_counts(seed):
    g = generator(seed)
    for n in (1, 2, 7, 64, 513):
        weights = random_weights(g, 40, n)
        weights[3] = 0  # an all-zero row
        counts = torch.randint(0, n + 3, (40,), generator=g)
        picked = ops.sample_without_replacement(weights, counts, generator=g)
        assert picked.dtype == torch.bool and picked.shape == weights.shape
        positives = (weights > 0).sum(1)
        expected = torch.minimum(counts, positives)
        message = f"seed={seed} n={n}"
        assert torch.equal(picked.sum(1), expected), message
        assert not torch.any(picked & (weights == 0)), message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("count_dtype", [torch.int64, torch.int32, torch.uint8])
def test_sampling_dtypes(seed, dtype, count_dtype):
    g = generator(seed)
    weights = random_weights(g, 8, 30).to(dtype)
    counts = torch.randint(0, 31, (8,), generator=g).to(count_dtype)
    picked = ops.sample_without_replacement(weights, counts, generator=g)
    assert torch.equal(picked.sum(1), torch.minimum(counts.long(), (weights > 0).sum(1))), f"seed={seed}"
    assert not torch.any(picked & (weights == 0))


def test_sampling_edge_shapes():
    assert ops.sample_without_replacement(torch.rand(0, 5), torch.zeros(0, dtype=torch.long)).shape == (0, 5)
    assert ops.sample_without_replacement(torch.rand(3, 0), torch.tensor([0, 2, 5])).shape == (3, 0)
    one = ops.sample_without_replacement(torch.tensor([[2.5]]), torch.tensor([1]))
    assert one.tolist() == [[True]]
    assert ops.sample_without_replacement(torch.tensor([[0.0]]), torch.tensor([1])).tolist() == [[False]]
    assert ops.sample_without_replacement(torch.zeros(2, 4), torch.tensor([4, 1])).sum() == 0


def test_sampling_reproducible(seed):
    g = generator(seed)
    weights = random_weights(g, 16, 100)
    counts = torch.full((16,), 10)
    first = ops.sample_without_replacement(weights, counts, generator=torch.Generator().manual_seed(seed))
    again = ops.sample_without_replacement(weights, counts, generator=torch.Generator().manual_seed(seed))
    other = ops.sample_without_replacement(weights, counts, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other), f"seed={seed}"
    torch.manual_seed(seed)
    global_first = ops.sample_without_replacement(weights, counts)
    torch.manual_seed(seed)
    assert torch.equal(global_first, ops.sample_without_replacement(weights, counts))
    # Row b depends only on (seed, b): a row's draw is the same inside a larger batch.
    op = torch.ops.diffmask_fast.sample_without_replacement
    full = op(weights, counts, 12345)
    assert torch.equal(op(weights[:5], counts[:5], 12345), full[:5])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(op(weights, counts, 12345), full)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def flush_denormals():
    """The caller's thread flushing denormals to zero (torch.set_flush_denormal), put back after."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def test_denormal_weights_count_whatever_the_callers_float_mode(flush_denormals):
    """With the caller's thread flushing denormals, rows computed there read a weight of 1e-40 as
    0 and rows on the pool's threads did not: results changed with the thread count."""
    rows = 2000
    torch.set_flush_denormal(False)
    weights = torch.tensor([[1e-40, 2e-40, 3e-40, 1.0]], dtype=torch.float32).repeat(rows, 1)
    tiny = torch.tensor([[1e-42, 2e-42, 0.0, 0.0]], dtype=torch.float32).repeat(rows, 1)
    assert (weights[:, 0] > 0).all() and (tiny[:, 0] > 0).all(), "the premise: denormal values"
    expected = ops.sample_without_replacement(weights, torch.full((rows,), 2), seed=3)
    torch.set_flush_denormal(True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        drawn = ops.sample_without_replacement(weights, torch.full((rows,), 2), seed=3)
        assert torch.equal(drawn, expected) and (drawn.sum(dim=1) == 2).all(), threads
        similarity, nearest = ops.max_anchor_similarity(tiny, torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
        torch.testing.assert_close(similarity, torch.ones(rows))


def test_the_callers_float_mode_is_put_back_after_each_op(flush_denormals):
    """The ops keep denormals while they run, and must leave the caller's thread flushing them
    as it was."""
    def flushes() -> bool:
        return (torch.tensor([1e-40]) * 1.0).item() == 0.0

    torch.set_flush_denormal(True)
    assert flushes(), "the premise"
    ops.max_anchor_similarity(torch.randn(5, 8), torch.randn(3, 8))
    assert flushes(), "after max_anchor_similarity"
    ops.sample_without_replacement(torch.rand(4, 6), torch.full((4,), 2), seed=1)
    assert flushes(), "after sample_without_replacement"


def test_anchor_preparation_keeps_denormals_whatever_the_callers_float_mode(flush_denormals, seed):
    """Anchors are normalized in parallel: with the caller's thread flushing denormals, anchors
    normalized there read as zero rows (similarity 0 to everything) while those normalized on the
    pool's threads kept their direction, so results changed with the thread count."""
    torch.set_flush_denormal(False)
    g = generator(seed)
    anchors = torch.randn(4096, 16, generator=g) * 1e-40
    assert (anchors.abs() < torch.finfo(torch.float32).tiny).all(), "the premise: denormal anchors"
    queries = torch.randn(500, 16, generator=g)
    expected = ops.max_anchor_similarity(queries, anchors)
    assert (expected[0] > 0.3).all()
    torch.set_flush_denormal(True)
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        values, indices = ops.max_anchor_similarity(queries, anchors)
        assert torch.equal(indices, expected[1]) and torch.equal(values, expected[0]), f"{threads=} {seed=}"


def test_float64_embeddings_keep_denormal_anchors_whatever_the_callers_float_mode(flush_denormals, seed):
    """Float64 embeddings take float32 anchors converted to float64 on the caller's thread: with it
    flushing denormals, anchors of 1e-40 became zero rows, all of them with one thread and some
    with more (ATen's copy runs partly on the pool's threads)."""
    torch.set_flush_denormal(False)
    g = generator(seed)
    queries = torch.randn(500, 16, generator=g, dtype=torch.float64)
    for dtype in (torch.float32, torch.bfloat16):
        anchors = (torch.randn(4096, 16, generator=g) * 1e-40).to(dtype)
        assert (anchors.float().abs() < torch.finfo(torch.float32).tiny).all(), "the premise: denormal anchors"
        expected = ops.max_anchor_similarity(queries, anchors)
        assert (expected[0] > 0.3).all()
        torch.set_flush_denormal(True)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            values, indices = ops.max_anchor_similarity(queries, anchors)
            assert torch.equal(indices, expected[1]) and torch.equal(values, expected[0]), f"{dtype} {threads=} {seed=}"
        torch.set_flush_denormal(False)
    keys, values = ops.ScoreHashTable().tensors()
    torch.set_flush_denormal(True)
    default, found = torch.ops.diffmask_fast.score_table_lookup(keys, values, torch.tensor([5]), 1e-40)
    torch.set_flush_denormal(False)  # to read it
    assert not found[0] and default[0] > 0, "a denormal default value is kept"


def test_sampling_errors():
    weights, counts = torch.rand(3, 4), torch.tensor([1, 2, 3])
    for bad, word in [(float("nan"), "NaN"), (float("inf"), "infinite"), (-0.5, "negative")]:
        for row, column in ((1, 2), (2, 0)):
            w = weights.clone()
            w[row, column] = bad
            with pytest.raises(ValueError, match=rf"weights\[{row}, {column}\] is {word}"):
                ops.sample_without_replacement(w, counts)
    with pytest.raises(TypeError, match="floating"):
        ops.sample_without_replacement(weights.long(), counts)
    with pytest.raises(ValueError, match="2-D"):
        ops.sample_without_replacement(weights[0], counts)
    with pytest.raises(ValueError, match="2-D"):
        ops.sample_without_replacement(weights[None], counts)
    with pytest.raises(ValueError, match=r"counts must have shape \[3\]"):
        ops.sample_without_replacement(weights, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        ops.sample_without_replacement(weights, counts.float())
    with pytest.raises(ValueError, match=r"non-negative, got counts\[2\] = -1"):
        ops.sample_without_replacement(weights, torch.tensor([1, 2, -1]))
    with pytest.raises(TypeError, match="counts must be a signed integer tensor"):  # 2**64 - 1 was read as -1
        ops.sample_without_replacement(weights, torch.tensor([1, 2, 2**64 - 1], dtype=torch.uint64))
    assert ops.sample_without_replacement(weights, counts.to(torch.uint8)).sum(1).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="same device"):
        ops.sample_without_replacement(weights.to("meta"), counts)
    with pytest.raises(ValueError, match="counts must have shape"):
        torch.ops.diffmask_fast.sample_without_replacement(weights, torch.tensor([1]), 0)


# ----------------------------------------------------------------------------------------------
# group_words and word_hash
# ----------------------------------------------------------------------------------------------


def synthetic_tokens(ids, starts_word: torch.Tensor, scheme: str) -> list[str]:
    """Token strings carrying the word-boundary marker that starts_word encodes."""
    marker = reference.WORD_BOUNDARY_MARKERS[scheme]
    tokens = []
    for i in ids:
        if scheme == "wordpiece":
            tokens.append(f"t{i}" if starts_word[i] else f"{marker}t{i}")
        else:
            tokens.append(f"{marker}t{i}" if starts_word[i] else f"t{i}")
    return tokens


@pytest.mark.parametrize("scheme", ["wordpiece", "byte_bpe", "sentencepiece"])
def test_group_words_matches_reference(seed, scheme):
    g = generator(seed)
    ids, never, starts = op_cases.random_batch(g, 12, 40)
    words = ops.group_words(ids, never, starts)
    assert words.word_hash.shape == (12, int(words.n_words.max()))
    for b in range(12):
        row_ids, row_never = ids[b].tolist(), never[b].tolist()
        tokens = synthetic_tokens([i if not nw else 0 for i, nw in zip(row_ids, row_never)], starts, scheme)
        groups = reference.group_words(reference.word_starts(tokens, row_never, scheme), row_never)
        message = f"seed={seed} row={b}"
        assert words.n_words[b] == len(groups), message
        expected_index = [-1] * 40
        for w, group in enumerate(groups):
            for position in group:
                expected_index[position] = w
        assert words.word_index[b].tolist() == expected_index, message
        expected_hashes = [ops.word_hash([row_ids[p] for p in group]) for group in groups]
        hashes = words.word_hash[b].tolist()
        assert hashes[: len(groups)] == expected_hashes, message
        assert all(h == 0 for h in hashes[len(groups) :]), message


def test_group_words_edges():
    starts = torch.tensor([True, False, True])
    empty = ops.group_words(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.bool), starts)
    assert empty.word_hash.shape == (0, 0) and empty.n_words.shape == (0,)
    no_words = ops.group_words(torch.tensor([[0, 1]]), torch.tensor([[True, True]]), starts)
    assert no_words.word_hash.shape == (1, 0) and no_words.word_index.tolist() == [[-1, -1]]
    # A continuation token first in the row, and after a special token, starts a word.
    words = ops.group_words(
        torch.tensor([[1, 1, 0, 1, 2, 1]]), torch.tensor([[False, False, True, False, False, False]]), starts
    )
    assert words.word_index.tolist() == [[0, 0, -1, 1, 2, 2]]
    assert words.word_hash[0].tolist() == [ops.word_hash([1, 1]), ops.word_hash([1]), ops.word_hash([2, 1])]


def test_word_hash_properties():
    assert ops.word_hash([1]) == -1956407806741107680  # pinned in the C++ tests as well
    assert ops.word_hash([1, 2, 3]) == -1523445386344781784
    assert ops.word_hash([5, 6]) != ops.word_hash([6, 5])
    assert ops.word_hash(np.array([7, 8])) == ops.word_hash([7, 8])
    hashes = {ops.word_hash([a, b]) for a in range(60) for b in range(60)}
    assert len(hashes) == 3600 and 0 not in hashes
    assert all(-(2**63) <= h < 2**63 for h in hashes)
    with pytest.raises(ValueError):
        ops.word_hash([])
    assert ops.word_hash([-1]) == ops.word_hash([2**64 - 1 - 2**64])  # int64 ids, negative ones included
    for outside in (2**63, -(2**63) - 1, 2**64 + 1):  # would wrap onto the hash of another id
        with pytest.raises(ValueError, match=f"token ids are int64 values, got {outside}"):
            ops.word_hash([3, outside])
    for not_an_id in (1.7, True, "3", None):  # 1.7 and True were hashed as the id 1
        with pytest.raises(TypeError, match="word_hash: token ids must be integers, got"):
            ops.word_hash([3, not_an_id])
    assert ops.word_hash(torch.tensor([7, 8])) == ops.word_hash((np.int32(7), 8))


def test_group_words_errors():
    ids, never, starts = torch.tensor([[1, 5, 2]]), torch.zeros(1, 3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = 5 is outside the vocabulary"):
        ops.group_words(ids, never, starts)
    with pytest.raises(ValueError, match=r"input_ids\[0, 0\] = -1"):
        ops.group_words(torch.tensor([[-1]]), torch.zeros(1, 1, dtype=torch.bool), starts)
    ops.group_words(ids, torch.tensor([[False, True, False]]), starts)  # never-word ids are not looked up
    with pytest.raises(TypeError, match="input_ids must have dtype torch.int64"):
        ops.group_words(ids.int(), never, starts)
    with pytest.raises(TypeError, match="never_word must have dtype torch.bool"):
        ops.group_words(ids, never.long(), starts)
    with pytest.raises(TypeError, match="starts_word must have dtype torch.bool"):
        ops.group_words(ids, never, starts.long())
    with pytest.raises(ValueError, match="never_word must have the shape"):
        ops.group_words(ids, never[:, :2], starts)
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        ops.group_words(ids[0], never[0], starts)
    with pytest.raises(ValueError, match="starts_word must be 1-D"):
        ops.group_words(ids, never, starts[None])
    with pytest.raises(ValueError, match="same device"):
        ops.group_words(ids, never, starts.to("meta"))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        torch.ops.diffmask_fast.group_words(ids, never, starts)


# ----------------------------------------------------------------------------------------------
# Score table
# ----------------------------------------------------------------------------------------------


def test_score_table_insert_lookup_overwrite(seed):
    g = generator(seed)
    table = ops.ScoreHashTable(capacity=4)
    keys = torch.unique(torch.randint(-(2**62), 2**62, (3000,), generator=g))
    keys = keys[keys != 0]
    scores = torch.randn(keys.numel(), generator=g)
    table.insert(keys[:1000], scores[:1000])
    table.insert(keys[1000:], scores[1000:])
    assert len(table) == keys.numel() and table.capacity >= 2 * len(table), f"seed={seed}"
    assert table.capacity & (table.capacity - 1) == 0
    one_by_one = ops.ScoreHashTable(capacity=4)
    for count, key in enumerate(keys[:40].tolist(), start=1):  # at most half full after every insert
        one_by_one.insert([key], [0.5])
        assert one_by_one.capacity >= 2 * count, (count, one_by_one.capacity)
    found_scores, found = table.lookup(keys)
    assert found.all() and torch.equal(found_scores, scores), f"seed={seed}"
    missing = torch.tensor([0, 12345678901, -5])
    missing_scores, found = table.lookup(missing, default=-2.5)
    assert not found.any() and torch.all(missing_scores == -2.5)
    for default in (1e300, -1e39, float("nan"), float("inf")):  # would become inf or NaN in float32
        with pytest.raises(ValueError, match="default_value must be a finite float32 value"):
            table.lookup(missing, default=default)
    assert table.lookup(missing, default=-3.0e38)[0].isfinite().all()
    # Overwrite, with repeats: the last value wins, the size does not change.
    table.insert(torch.tensor([keys[0], keys[0], keys[5]]), torch.tensor([1.0, 2.0, 3.0]))
    assert len(table) == keys.numel()
    assert table.lookup(keys[[0, 5]])[0].tolist() == [2.0, 3.0]
    fresh = ops.ScoreHashTable()
    fresh.insert([7, 7, 9], [1.0, 2.0, 3.0])  # a new key twice in one insert: one entry
    assert len(fresh) == 2 and fresh.lookup([7, 9])[0].tolist() == [2.0, 3.0]
    # Lookup keeps the query shape.
    shaped, shaped_found = table.lookup(keys[:12].reshape(3, 4))
    assert shaped.shape == (3, 4) and shaped_found.shape == (3, 4) and shaped_found.all()
    assert int(keys[7]) in table and 99 not in table
    table.insert([], [])
    table.insert(np.array([1, 2]), [0.5, 0.25])
    assert table.lookup([1, 2])[0].tolist() == [0.5, 0.25]


def test_score_table_insert_of_pairs_that_view_the_table(seed):
    """Pairs read from the table's own memory (a view of it) are read before any slot is written:
    each key gets the value it was given, whatever slots the earlier pairs took, and keys read
    from the values' memory are the keys they were when the call began."""
    rng = random.Random(seed)
    for _ in range(20):
        capacity = 1 << rng.randrange(3, 7)
        keys = torch.zeros(capacity, dtype=torch.long)
        values = torch.tensor([rng.uniform(-5, 5) for _ in range(capacity)], dtype=torch.float32)
        count = rng.randrange(1, capacity // 2 + 1)
        new_keys = torch.tensor(rng.sample(range(1, 10**6), count), dtype=torch.long)
        start = rng.randrange(0, capacity - count + 1)
        given = values[start:start + count].clone()
        ops.score_table_insert(keys, values, new_keys, values[start:start + count])
        assert torch.equal(ops.score_table_lookup(keys, values, new_keys)[0], given), f"seed={seed}"

        keys = torch.zeros(capacity, dtype=torch.long)
        values = torch.tensor([rng.uniform(1, 5) for _ in range(capacity)], dtype=torch.float32)  # no zero key
        count = rng.randrange(1, capacity // 4 + 1)
        start = rng.randrange(0, capacity // 2 - count + 1)
        keys_in_values = values.view(torch.long)[start:start + count]
        given_keys, given_values = keys_in_values.clone(), torch.rand(count, dtype=torch.float32) - 2
        ops.score_table_insert(keys, values, keys_in_values, given_values)
        assert torch.equal(ops.score_table_lookup(keys, values, given_keys)[0], given_values), f"seed={seed}"
        assert len(torch.unique(keys[keys != 0])) == len(torch.unique(given_keys)), f"seed={seed}"


def test_score_table_pickle(seed):
    g = generator(seed)
    table = ops.ScoreHashTable()
    keys = torch.randint(1, 2**62, (500,), generator=g)
    table.insert(keys, torch.rand(500, generator=g))
    clone = pickle.loads(pickle.dumps(table))
    assert len(clone) == len(table) and clone.capacity == table.capacity
    assert torch.equal(clone.lookup(keys)[0], table.lookup(keys)[0])
    clone.insert([77], [1.0])
    assert 77 in clone and 77 not in table


def test_score_table_finds_every_key_of_a_full_table():
    """Keys of one home slot fill a table of 4 in probe order: the last is found three slots on,
    past every other key, and a key that is absent is not found (the probe ends)."""
    def home_slot(key):
        keys, values = torch.zeros(4, dtype=torch.long), torch.zeros(4)
        ops.score_table_insert(keys, values, torch.tensor([key]), torch.tensor([1.0]))
        return int((keys != 0).nonzero()[0])

    same_home = [key for key in range(1, 200) if home_slot(key) == 0][:4]
    absent = next(key for key in range(200, 400) if home_slot(key) == 0)
    keys, values = torch.zeros(4, dtype=torch.long), torch.zeros(4)
    ops.score_table_insert(keys, values, torch.tensor(same_home), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert keys.tolist() == same_home
    found, known = ops.score_table_lookup(keys, values, torch.tensor(same_home + [absent]), default_value=-1.0)
    assert found.tolist() == [1.0, 2.0, 3.0, 4.0, -1.0] and known.tolist() == [True] * 4 + [False]


def test_score_table_errors():
    table = ops.ScoreHashTable()
    with pytest.raises(ValueError, match="hash 0"):
        table.insert([0, 5], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        table.insert([5], [float("nan")])
    with pytest.raises(ValueError, match="pair up"):
        table.insert([5, 6], [1.0])
    assert len(table) == 0
    keys, values = torch.zeros(4, dtype=torch.long), torch.zeros(4)
    ops.score_table_insert(keys, values, torch.tensor([11, 22, 33, 44]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    before = keys.clone(), values.clone()
    with pytest.raises(ValueError, match="is full"):
        ops.score_table_insert(keys, values, torch.tensor([11, 55]), torch.tensor([9.0, 5.0]))
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])  # rolled back
    with pytest.raises(ValueError, match="is full"):  # a key written twice gets back its value before the call
        ops.score_table_insert(keys, values, torch.tensor([11, 11, 55]), torch.tensor([9.0, 8.0, 5.0]))
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])
    keys_with_room, values_with_room = torch.zeros(4, dtype=torch.long), torch.zeros(4)
    ops.score_table_insert(keys_with_room, values_with_room, torch.tensor([11, 22, 33]), torch.tensor([1.0, 2.0, 3.0]))
    before_with_room = keys_with_room.clone(), values_with_room.clone()
    with pytest.raises(ValueError, match="is full"):  # the free slot taken twice is freed, its value as it was
        ops.score_table_insert(keys_with_room, values_with_room, torch.tensor([44, 44, 55]),
                               torch.tensor([9.0, 8.0, 5.0]))
    assert torch.equal(keys_with_room, before_with_room[0]) and torch.equal(values_with_room, before_with_room[1])
    with pytest.raises(ValueError, match=r"new_keys\[1\] is 0"):
        ops.score_table_insert(keys, values, torch.tensor([11, 0]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"new_values\[0\] = inf is not finite"):
        ops.score_table_insert(keys, values, torch.tensor([11]), torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match="power of two"):
        ops.score_table_lookup(torch.zeros(6, dtype=torch.long), torch.zeros(6), torch.tensor([1]))
    with pytest.raises(TypeError, match="values must have dtype torch.float32"):
        ops.score_table_lookup(keys, values.double(), torch.tensor([1]))
    with pytest.raises(TypeError, match="queries must have dtype torch.int64"):
        ops.score_table_lookup(keys, values, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="contiguous"):
        ops.score_table_insert(torch.zeros(8, dtype=torch.long)[::2], values, torch.tensor([1]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="is full"):
        torch.ops.diffmask_fast.score_table_insert(keys, values, torch.tensor([66]), torch.tensor([1.0]))


def test_score_table_takes_integer_hashes_only():
    """A float or boolean hash was truncated to another word's hash (2.5 -> 2, True -> 1)."""
    table = ops.ScoreHashTable()
    for hashes in ([2.5], [True], torch.tensor([3.0]), np.array([4.0])):
        with pytest.raises(TypeError, match="hashes must be integers"):
            table.insert(hashes, [0.5])
        with pytest.raises(TypeError, match="hashes must be integers"):
            table.lookup(hashes)
    with pytest.raises(ValueError, match="int64 word hashes"):
        table.insert([2**64], [0.5])
    assert len(table) == 0
    table.insert(np.array([7, -(2**63)], dtype=np.int64), [0.25, 0.5])
    table.insert(torch.tensor([9], dtype=torch.int16), [1.0])
    table.insert([], [])
    assert len(table) == 3 and table.lookup(np.array([[7, 9]], dtype=np.uint8))[1].all()
    assert 7 in table and np.int64(9) in table and torch.tensor(7) in table and -(2**63) in table
    assert 7.0 not in table and 2.5 not in table and "7" not in table and None not in table
    table.insert([1], [0.5])
    assert True not in table and torch.tensor(True) not in table and np.True_ not in table and 1 in table
    assert 2**64 not in table and -(2**63) - 1 not in table and 8 not in table
    table.insert(np.array([2**64 - 5], dtype=np.uint64), [0.75])  # read as its bits: the hash -5
    assert -5 in table and np.uint64(2**64 - 5) in table and torch.tensor([2**64 - 5], dtype=torch.uint64) in table
    assert np.array(2**64 - 5, dtype=np.uint64) in table and np.array([2**64 - 5], dtype=np.uint64) in table
    assert np.array([7]) in table and np.array([7, 9]) not in table and table.lookup(np.uint64(2**64 - 5))[1]


def test_score_table_insert_advances_versions_and_refuses_tensors_that_require_grad():
    keys, values = torch.zeros(8, dtype=torch.long), torch.zeros(8)
    versions = keys._version, values._version
    ops.score_table_insert(keys, values, torch.tensor([5]), torch.tensor([0.5]))
    assert keys._version > versions[0] and values._version > versions[1]
    # A product that saved the values for its backward pass sees the write, as with x.add_(1).
    weight = torch.ones(8, requires_grad=True)
    product = (weight * values).sum()
    ops.score_table_insert(keys, values, torch.tensor([6]), torch.tensor([0.75]))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.backward()
    values_needing_grad = torch.zeros(8, requires_grad=True)  # (integer keys cannot require grad)
    new_pair = torch.tensor([5]), torch.tensor([0.5])
    with pytest.raises(ValueError, match="must not require grad"):
        ops.score_table_insert(torch.zeros(8, dtype=torch.long), values_needing_grad, *new_pair)
    with pytest.raises(ValueError, match="must not require grad"):
        torch.ops.diffmask_fast.score_table_insert(torch.zeros(8, dtype=torch.long), values_needing_grad, *new_pair)
    assert not values_needing_grad.any()
    with torch.inference_mode():
        keys, values = torch.zeros(8, dtype=torch.long), torch.zeros(8)
        ops.score_table_insert(keys, values, torch.tensor([5]), torch.tensor([0.5]))
        assert values.max() == 0.5
    ops.score_table_insert(keys, values, torch.tensor([6]), torch.tensor([0.75]))  # made there, written after
    assert sorted(values.tolist())[-2:] == [0.5, 0.75]
    table = ops.ScoreHashTable(capacity=4)
    with torch.inference_mode():  # an evaluation grows the table: its tensors are inference tensors
        table.insert([1, 2, 3], [0.1, 0.2, 0.3])
    table.insert([4], [0.4])
    assert len(table) == 4 and 4 in table


# ----------------------------------------------------------------------------------------------
# difference_mask
# ----------------------------------------------------------------------------------------------

MASK_ID = 999
RANDOM_IDS = torch.arange(1000, 1013)


def masking_setup(g: torch.Generator, batch: int = 48, length: int = 64, known: float = 0.7):
    """A random batch and a table holding scores for a random share of its words."""
    ids, never, starts = op_cases.random_batch(g, batch, length)
    words = ops.group_words(ids, never, starts)
    return ids, never, starts, words, scored_table(g, words, known)


def scored_table(g: torch.Generator, words, known: float) -> ops.ScoreHashTable:
    """A table holding random scores for a random share ``known`` of the distinct words."""
    hashes = torch.unique(words.word_hash[words.word_hash != 0])
    keep = hashes[torch.rand(hashes.numel(), generator=g) < known]
    table = ops.ScoreHashTable()
    table.insert(keep, torch.randn(keep.numel(), generator=g))
    return table


def run_mask(ids, never, starts, table, seed, **kwargs):
    kwargs.setdefault("mask_token_id", MASK_ID)
    return ops.difference_mask(ids, never, starts, *table.tensors(), RANDOM_IDS, seed=seed, **kwargs)


@pytest.mark.parametrize("weighting", ["similarity", "rank"])
@pytest.mark.parametrize("uniform_mix", [0.0, 0.3])
def test_difference_mask_invariants(seed, weighting, uniform_mix):
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g)
    p = 0.3
    out = run_mask(ids, never, starts, table, seed, weighting=weighting, uniform_mix=uniform_mix, mlm_probability=p)
    message = f"seed={seed}"
    assert out.masked_ids.shape == ids.shape and out.labels.shape == ids.shape and out.masked_words.shape == (48,)
    masked = out.labels != -100
    assert torch.equal(out.labels[masked], ids[masked]), message  # labels: the original ids
    assert not torch.any(masked & never), message  # never-word tokens are never masked
    assert torch.equal(out.masked_ids[~masked], ids[~masked]), message
    replaced = out.masked_ids[masked]
    original = ids[masked]
    assert torch.all((replaced == MASK_ID) | (replaced == original) | torch.isin(replaced, RANDOM_IDS)), message
    for b in range(ids.shape[0]):
        n = int(words.n_words[b])
        index = words.word_index[b]
        chosen = set(index[masked[b]].tolist())
        for w in chosen:  # whole words only
            assert torch.all(masked[b][index == w]), f"{message} row={b} word={w}"
        assert len(chosen) == int(out.masked_words[b]), message
        expected = p * n
        assert math.floor(expected) <= len(chosen) <= min(math.floor(expected) + 1, n), message


def test_difference_mask_misses_and_warm_table(seed):
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g, known=0.5)
    first = run_mask(ids, never, starts, table, seed)
    message = f"seed={seed}"
    all_hashes = set(words.word_hash[words.word_hash != 0].tolist())
    known = set(table.keys[table.keys != 0].tolist())
    missing = all_hashes - known
    assert set(first.misses[:, 0].tolist()) == missing, message
    assert first.misses.shape == (len(missing), 4), message  # distinct hashes, one row each
    positions = {}
    for b in range(ids.shape[0]):  # first occurrence in row-major order
        for w in range(int(words.n_words[b])):
            h = int(words.word_hash[b, w])
            if h in missing and h not in positions:
                where = (words.word_index[b] == w).nonzero()[:, 0]
                positions[h] = (b, int(where[0]), int(where[-1]) + 1)
    for h, b, start, end in first.misses.tolist():
        assert positions[h] == (b, start, end), message
        assert ops.word_hash(ids[b, start:end].tolist()) == h, message
    # Learn the misses (as a caller that decodes and scores them would), run again with the
    # same seed: same result as a table that knew every word from the start.
    scores = torch.randn(first.misses.shape[0], generator=g)
    table.insert(first.misses[:, 0], scores)
    second = run_mask(ids, never, starts, table, seed)
    assert second.misses.shape == (0, 4), message
    warm = ops.ScoreHashTable(capacity=8)
    order = torch.randperm(len(table), generator=g)
    keys = table.keys[table.keys != 0][order]
    warm.insert(keys, table.lookup(keys)[0])
    third = run_mask(ids, never, starts, warm, seed)
    for a, b in zip(second, third):
        assert torch.equal(a, b), message


def test_difference_mask_reproducible(seed):
    g = generator(seed)
    ids, never, starts, _, table = masking_setup(g)
    first = run_mask(ids, never, starts, table, seed)
    again = run_mask(ids, never, starts, table, seed)
    other = run_mask(ids, never, starts, table, seed + 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.labels, other.labels), f"seed={seed}"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run_mask(ids, never, starts, table, seed)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(first, single)), f"seed={seed}"
    # A row's result depends on (seed, row) only.
    part = run_mask(ids[:7], never[:7], starts, table, seed)
    assert torch.equal(part.labels, first.labels[:7]) and torch.equal(part.masked_ids, first.masked_ids[:7])
    torch.manual_seed(seed)
    drawn = ops.difference_mask(ids, never, starts, *table.tensors(), RANDOM_IDS, mask_token_id=MASK_ID)
    torch.manual_seed(seed)
    assert torch.equal(
        drawn.labels, ops.difference_mask(ids, never, starts, *table.tensors(), RANDOM_IDS, mask_token_id=MASK_ID).labels
    )


@pytest.mark.parametrize("options", op_cases.MASKING_OPTIONS)
@pytest.mark.parametrize("batch, length", [(1, 1), (1, 512), (3, 8192), (7, 0), (0, 5), (40, 64)])
def test_difference_mask_device_equals_difference_mask(seed, options, batch, length):
    """The training-step op draws what the collator's op draws, for every option and awkward shape."""
    g = generator(seed)
    ids, never, starts, table = op_cases.masking_batch(g, batch, length, empty_rows=(0,) if batch > 1 else ())
    args = (ids, never, starts, *table.tensors(), torch.arange(1000, 1100))
    kwargs = dict(mask_token_id=5, seed=seed, **options)
    message = f"seed={seed} {options} {batch}x{length}"
    expected = ops.difference_mask(*args, **kwargs)
    got = ops.difference_mask_device(*args, **kwargs)
    for name in ("masked_ids", "labels", "masked_words"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), f"{message} {name}"
    words = ops.group_words(ids, never, starts)
    assert torch.equal(got.n_words, words.n_words), message
    in_words = torch.arange(words.word_hash.shape[1])[None, :] < words.n_words[:, None]
    missed = (~table.lookup(words.word_hash)[1] & in_words).sum(dim=1)
    assert torch.equal(got.missed_words, missed), message


def test_difference_mask_device_reads_ids_outside_the_vocabulary_as_no_word(seed):
    """Where never_word is False, an id of the vocabulary's size or a negative id (the first token
    of a row included) is masked as never_word: no word, never masked, where the CPU op raises."""
    g = generator(seed)
    ids, never, starts, table = op_cases.masking_batch(g, 5, 30)
    outside, flagged = ids.clone(), never.clone()
    chosen = torch.rand(ids.shape, generator=g) < 0.1
    chosen[:, 0] = True
    outside[chosen] = torch.where(torch.rand(ids.shape, generator=g) < 0.5, starts.numel(), -1)[chosen]
    flagged |= chosen
    never[chosen] = False
    args = (starts, *table.tensors(), RANDOM_IDS)
    options = dict(mask_token_id=MASK_ID, seed=seed, mlm_probability=0.5)
    got = ops.difference_mask_device(outside, never, *args, **options)
    expected = ops.difference_mask_device(outside, flagged, *args, **options)
    for name in ("masked_ids", "labels", "masked_words", "n_words", "missed_words"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), f"seed={seed} {name}"
    assert not (got.labels[chosen] != -100).any() and torch.equal(got.masked_ids[chosen], outside[chosen])


def test_difference_mask_device_counts_a_word_at_a_rows_first_token():
    """A row whose one word is its first token (the rest never_word) has one word, a row of no
    word none, a row of a word at its first token and one after it two."""
    ids = torch.tensor([[5, 6, 7], [5, 6, 7], [8, 6, 7]])
    never = torch.tensor([[False, True, True], [True, True, True], [False, False, True]])
    starts = torch.ones(10, dtype=torch.bool)
    table = ops.ScoreHashTable()
    table.insert([1], [0.5])
    out = ops.difference_mask_device(ids, never, starts, *table.tensors(), RANDOM_IDS, mask_token_id=MASK_ID, seed=0,
                                     mlm_probability=1.0)
    assert out.n_words.tolist() == [1, 0, 2] and out.masked_words.tolist() == [1, 0, 2]
    assert out.missed_words.tolist() == [1, 0, 2]


def test_a_uniform_mix_of_weights_that_sum_to_zero_is_the_uniform_draw(seed):
    """Where no word of a row has a positive score, similarity weights sum to 0 and the mix keeps
    its uniform part alone: every word weighs the same, so any mix draws what equal positive
    scores without a mix draw for the same seed (keys E / w in the same order)."""
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g, batch=6, length=40, known=1.0)
    keys, values = table.tensors()
    unscored, equal = torch.where(keys != 0, -values.abs(), values), torch.where(keys != 0, 1.0, values)
    options = dict(mask_token_id=MASK_ID, seed=seed)
    expected = ops.difference_mask(ids, never, starts, keys, equal, RANDOM_IDS, **options, uniform_mix=0.0)
    for mix in (0.3, 1.0):
        mixed = ops.difference_mask(ids, never, starts, keys, unscored, RANDOM_IDS, **options, uniform_mix=mix)
        assert all(torch.equal(a, b) for a, b in zip(mixed[:3], expected[:3])), f"seed={seed} mix={mix}"
    assert int(expected.masked_words.sum()) > 0


def test_difference_mask_budget_mean_and_replacement(seed):
    """Masked words average p * n; the 80/10/10 split holds (binomial bounds)."""
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g, batch=400, length=64, known=1.0)
    p = 0.23
    out = run_mask(ids, never, starts, table, seed, mlm_probability=p, mask_replace_prob=0.7, random_replace_prob=0.2)
    message = f"seed={seed}"
    n = words.n_words.double()
    frac = p * n - torch.floor(p * n)
    variance = float((frac * (1 - frac)).sum())
    assert abs(float(out.masked_words.sum()) - float((p * n).sum())) <= 5 * math.sqrt(variance) + 1e-9, message
    masked = out.labels != -100
    total = int(masked.sum())
    replaced = out.masked_ids[masked]
    for share, count in [
        (0.7, int((replaced == MASK_ID).sum())),
        (0.2, int(torch.isin(replaced, RANDOM_IDS).sum())),
        (0.1, int((replaced == ids[masked]).sum())),
    ]:
        assert abs(count - share * total) <= 5 * math.sqrt(total * share * (1 - share)), f"{message} share={share}"
    randoms = replaced[torch.isin(replaced, RANDOM_IDS)]
    assert torch.unique(randoms).numel() == RANDOM_IDS.numel(), message  # every id gets drawn


def test_difference_mask_extremes(seed):
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g)
    everything = run_mask(ids, never, starts, table, seed, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0)
    assert torch.equal(everything.labels != -100, words.word_index >= 0)
    assert torch.all(everything.masked_ids[~never] == MASK_ID)
    assert torch.equal(everything.masked_words, words.n_words)
    nothing = run_mask(ids, never, starts, table, seed, mlm_probability=0.0)
    assert torch.all(nothing.labels == -100) and torch.equal(nothing.masked_ids, ids)
    kept = run_mask(ids, never, starts, table, seed, mlm_probability=0.5, mask_replace_prob=0.0, random_replace_prob=0.0)
    assert torch.equal(kept.masked_ids, ids) and bool((kept.labels != -100).any())
    empty = ops.difference_mask(
        torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.bool), starts, *table.tensors(),
        RANDOM_IDS, mask_token_id=MASK_ID, seed=1,
    )
    assert empty.masked_ids.shape == (0, 5) and empty.misses.shape == (0, 4)
    no_table = ops.difference_mask(
        ids, never, starts, torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long),
        mask_token_id=MASK_ID, random_replace_prob=0.0, seed=3,
    )
    assert no_table.misses.shape[0] == torch.unique(words.word_hash[words.word_hash != 0]).numel()


def test_difference_mask_zero_scores_fill_uniformly(seed):
    """Words of weight 0 are drawn only once every positive word is taken, then uniformly: the
    first and the last zero-weight word of a row are filled equally often."""
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g, batch=400, known=1.0)
    keys = table.keys[table.keys != 0]
    table.insert(keys, torch.full((keys.numel(),), -1.0))  # every score negative: weight 0 ...
    positive = torch.unique(words.word_hash[:, 0][words.n_words > 0])
    table.insert(positive, torch.full((positive.numel(),), 0.5))  # ... but each row's first word
    out = run_mask(ids, never, starts, table, seed, mlm_probability=0.5)
    check_favoured_first_then_uniform(words, out, positive, f"seed={seed}")


def check_favoured_first_then_uniform(words, out, favoured: torch.Tensor, message: str) -> None:
    """Each row masks its words whose hash is in ``favoured`` first, and the rest, once those are
    all taken, uniformly: the first and the last of the rest of a row are drawn equally often
    (within 5 standard errors over the rows)."""
    observed, expected, variance = {"first": 0, "last": 0}, 0.0, 0.0
    for b in range(words.word_hash.shape[0]):
        n, k = int(words.n_words[b]), int(out.masked_words[b])
        if n == 0:
            continue
        masked = [bool((out.labels[b][words.word_index[b] == w] != -100).any()) for w in range(n)]
        is_favoured = torch.isin(words.word_hash[b, :n], favoured).tolist()
        rest = [w for w in range(n) if not is_favoured[w]]
        taken_favoured = sum(m for m, f in zip(masked, is_favoured) if f)
        assert sum(masked) == k, message
        assert taken_favoured == min(k, n - len(rest)), f"{message} row={b}"  # favoured first
        if k > n - len(rest) and len(rest) >= 2:
            share = (k - (n - len(rest))) / len(rest)
            observed["first"] += masked[rest[0]]
            observed["last"] += masked[rest[-1]]
            expected += share
            variance += share * (1 - share)
    assert variance > 0, message
    for end, count in observed.items():
        assert abs(count - expected) <= 5 * math.sqrt(variance) + 1e-9, f"{message} {end}: {count} vs {expected:.1f}"


def test_difference_mask_tiny_unknown_scores_are_drawn_uniformly(seed):
    """unknown_score = 1e-310 makes the keys E / w of unknown words overflow to infinity. Once
    the known words are taken, the unknown ones must still be drawn uniformly, not by position:
    the first and the last unknown word of a row are drawn equally often."""
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g, batch=400, known=1.0)
    known = torch.unique(words.word_hash[:, 0][words.n_words > 0])
    table = ops.ScoreHashTable()
    table.insert(known, torch.full((known.numel(),), 0.5))  # each row's first word only
    out = run_mask(ids, never, starts, table, seed, mlm_probability=0.5, unknown_score=1e-310)
    check_favoured_first_then_uniform(words, out, known, f"seed={seed}")


@pytest.mark.parametrize("where", ["middle", "first token"])
def test_difference_mask_refuses_non_finite_scores_it_reads(seed, where):
    """A table value that is NaN or infinite (written past ScoreHashTable's checks) is refused
    by difference_mask, naming the word, also a word at a row's first token; difference_mask_device
    leaves that check to callers."""
    g = generator(seed)
    ids, never, starts = op_cases.random_batch(g, 3, 40)
    if where == "first token":
        never[:, 0] = False
        ids[:, 0] = torch.randint(0, starts.numel(), (3,), generator=g)
        starts[ids[:, 0]] = True
    words = ops.group_words(ids, never, starts)
    keys, values = scored_table(g, words, known=1.0).tensors()
    row = int((words.n_words > 0).nonzero()[0])  # the first row with words (a random row may have none)
    word = 0 if where == "first token" else int(words.n_words[row]) // 2
    first = int((words.word_hash[row, : int(words.n_words[row])] == words.word_hash[row, word]).nonzero()[0])
    begin = int((words.word_index[row] == first).nonzero()[0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = values.clone()
        broken[keys == words.word_hash[row, word]] = bad
        args = dict(input_ids=ids, never_word=never, starts_word=starts, table_keys=keys, table_values=broken,
                    random_token_ids=RANDOM_IDS, mask_token_id=MASK_ID, seed=seed)
        for weighting in ("similarity", "rank"):
            with pytest.raises(ValueError, match=rf"word at input_ids\[{row}, {begin}\] is not finite"):
                ops.difference_mask(**args, weighting=weighting)
        device = ops.difference_mask_device(**args)
        as_unknown = values.clone()
        as_unknown[keys == words.word_hash[row, word]] = 0.0  # unknown_score
        expected = ops.difference_mask(**{**args, "table_values": as_unknown})
        for a, b in zip(device[:3], expected[:3]):
            assert torch.equal(a, b), f"seed={seed} {bad}"
    unread = values.clone()
    unread[keys == 0] = float("nan")  # empty slots are never read
    ops.difference_mask(ids, never, starts, keys, unread, RANDOM_IDS, mask_token_id=MASK_ID, seed=seed)


def test_difference_mask_errors():
    g = generator(0)
    ids, never, starts, _, table = masking_setup(g, batch=2, length=6)
    keys, values = table.tensors()

    def call(**kwargs):
        args = dict(
            input_ids=ids, never_word=never, starts_word=starts, table_keys=keys, table_values=values,
            random_token_ids=RANDOM_IDS, mask_token_id=MASK_ID, seed=1,
        )
        args.update(kwargs)
        return ops.difference_mask(**args)

    for name in ["mlm_probability", "uniform_mix", "mask_replace_prob", "random_replace_prob"]:
        with pytest.raises(ValueError, match=name):
            call(**{name: 1.5})
        with pytest.raises(ValueError, match=name):
            call(**{name: -0.1})
    with pytest.raises(ValueError, match="must be at most 1"):
        call(mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(ValueError, match=r"must be at most 1, got 0.9 \+ 0.10000000149011612"):
        call(mask_replace_prob=0.9, random_replace_prob=np.float32(0.1))  # 1 in float32, not in the kernels' doubles
    with pytest.raises(ValueError, match="weighting"):
        call(weighting="max")
    with pytest.raises(ValueError, match="random_token_ids is empty"):
        call(random_token_ids=torch.zeros(0, dtype=torch.long))
    call(random_token_ids=torch.zeros(0, dtype=torch.long), random_replace_prob=0.0)
    for bad_score in (float("nan"), 1e39, -1e300):  # beyond float32, the weight would be infinite
        with pytest.raises(ValueError, match="unknown_score must be a finite float32 value"):
            call(unknown_score=bad_score)
        with pytest.raises(ValueError, match="unknown_score must be a finite float32 value"):
            ops.difference_mask_device(ids, never, starts, keys, values, RANDOM_IDS, mask_token_id=MASK_ID, seed=1,
                                       unknown_score=bad_score)
    for bad_seed in (1.7, True, "3"):
        with pytest.raises(TypeError, match="seed must be an integer"):
            call(seed=bad_seed)
        with pytest.raises(TypeError, match="seed must be an integer"):
            ops.difference_mask_device(ids, never, starts, keys, values, RANDOM_IDS, mask_token_id=MASK_ID, seed=bad_seed)
    assert torch.equal(call(seed=np.int64(5)).labels, call(seed=5).labels)
    assert torch.equal(call(seed=torch.tensor(5)).labels, call(seed=5).labels)
    direct = (ids, never, starts, keys, values, RANDOM_IDS, 0.25, 0, 0.0, 0.0, MASK_ID, 0.8, 0.1)
    with pytest.raises(ValueError, match=r"difference_mask_device: seed must hold one int64 value, got shape \[2\]"):
        torch.ops.diffmask_fast.difference_mask_device(*direct, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="difference_mask_device: seed must have dtype torch.int64"):
        torch.ops.diffmask_fast.difference_mask_device(*direct, torch.tensor([1.0]))
    with pytest.raises(TypeError, match="seed must be an integer"):
        call(seed=torch.tensor(5.0))
    for bad_id, error in ((2**63, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match=r"difference_mask: mask_token_id must be an integer token id|"
                                        r"difference_mask: mask_token_id must be a token id in \[0, 2\*\*63\)"):
            call(mask_token_id=bad_id)
        with pytest.raises(error, match="difference_mask_device: mask_token_id must be"):
            ops.difference_mask_device(ids, never, starts, keys, values, RANDOM_IDS, mask_token_id=bad_id, seed=1)
    assert torch.equal(call(mask_token_id=np.int64(MASK_ID), seed=5).masked_ids,
                       call(mask_token_id=torch.tensor(MASK_ID), seed=5).masked_ids)
    with pytest.raises(TypeError, match="input_ids must have dtype torch.int64"):
        call(input_ids=ids.int())
    with pytest.raises(TypeError, match="random_token_ids must have dtype torch.int64"):
        call(random_token_ids=RANDOM_IDS.int())
    with pytest.raises(ValueError, match="power of two"):
        call(table_keys=keys[:3], table_values=values[:3])
    with pytest.raises(ValueError, match="same length"):
        call(table_values=values[:2])
    with pytest.raises(ValueError, match="same device"):
        call(never_word=never.to("meta"))
    with pytest.raises(ValueError, match="seed"):
        call(seed=2**64)
    bad = ids.clone()
    bad[1, 3] = starts.numel()
    never_bad = never.clone()
    never_bad[1, 3] = False
    with pytest.raises(ValueError, match=rf"input_ids\[1, 3\] = {starts.numel()} is outside the vocabulary"):
        call(input_ids=bad, never_word=never_bad)
    bad[0, 0], never_bad[0, 0] = -4, False  # a row's first token (text tokenized without special tokens)
    with pytest.raises(ValueError, match=r"input_ids\[0, 0\] = -4 is outside the vocabulary"):
        call(input_ids=bad, never_word=never_bad)
    with pytest.raises(ValueError, match="weighting must be 0"):
        torch.ops.diffmask_fast.difference_mask(ids, never, starts, keys, values, RANDOM_IDS, 0.2, 5, 0.0, 0.0, 1, 0.8, 0.1, 0)
    with pytest.raises(ValueError, match="mlm_probability"):
        torch.ops.diffmask_fast.difference_mask(ids, never, starts, keys, values, RANDOM_IDS, 2.0, 0, 0.0, 0.0, 1, 0.8, 0.1, 0)
    # The kernels' own messages give each number as it reads back (six digits printed 1 and 0.7)
    raw = functools.partial(torch.ops.diffmask_fast.difference_mask, ids, never, starts, keys, values, RANDOM_IDS)
    with pytest.raises(ValueError, match=r"mlm_probability must be in \[0, 1\], got 1.0000001$"):
        raw(1.0000001, 0, 0.0, 0.0, 1, 0.8, 0.1, 0)
    with pytest.raises(ValueError, match=r"must be at most 1, got 0.7000000001 \+ 0.3$"):
        raw(0.2, 0, 0.0, 0.0, 1, 0.7000000001, 0.3, 0)
    with pytest.raises(ValueError, match=r"must be at most 1, got 0.9 \+ 0.13436424411240122$"):  # 17 digits
        raw(0.2, 0, 0.0, 0.0, 1, 0.9, 0.13436424411240122, 0)
    with pytest.raises(ValueError, match=r"unknown_score must be finite, got -inf$"):
        raw(0.2, 0, 0.0, -math.inf, 1, 0.8, 0.1, 0)
    for share in (1e-07, 1e-310):  # a subnormal share too: it failed with "IndexError: stod"
        with pytest.raises(ValueError, match=f"random_replace_prob = {share!r} > 0"):
            torch.ops.diffmask_fast.difference_mask(ids, never, starts, keys, values, RANDOM_IDS[:0], 0.2, 0, 0.0, 0.0,
                                                    1, 0.8, share, 0)


# ----------------------------------------------------------------------------------------------
# Registration: opcheck, fake kernels, the loader
# ----------------------------------------------------------------------------------------------


def test_the_extension_says_whether_it_was_built_with_its_cuda_kernels():
    """``_C.with_cuda`` agrees with the kernels registered: the CUDA operators have CUDA kernels
    in a CUDA build and none in a CPU build; the others never have one."""
    module = _extension.load()
    assert {_extension.has_kernel(name, "cuda") for name in op_cases.CUDA_OPS} == {bool(module.with_cuda)}
    assert not any(_extension.has_kernel(name, "cuda") for name in op_cases.operator_names() - op_cases.CUDA_OPS)
    assert module.with_cuda in (0, 1) and module.torch_version == torch.__version__


def test_opcheck(seed):
    g = generator(seed)
    ids, never, starts, _, table = masking_setup(g, batch=3, length=10)
    keys, values = table.tensors()
    cases = [
        (torch.ops.diffmask_fast.max_anchor_similarity.default, (torch.randn(2, 3, 8, generator=g), torch.randn(4, 8, generator=g))),
        (torch.ops.diffmask_fast.sample_without_replacement.default, (torch.rand(4, 9, generator=g), torch.tensor([1, 3, 0, 9]), 7)),
        (torch.ops.diffmask_fast.score_table_lookup.default, (keys, values, torch.randint(1, 100, (5,), generator=g), -1.0)),
        (torch.ops.diffmask_fast.score_table_insert.default, (keys.clone(), values.clone(), torch.tensor([5, 6]), torch.tensor([0.5, 1.5]))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    dynamic = [
        (torch.ops.diffmask_fast.group_words.default, (ids, never, starts)),
        (
            torch.ops.diffmask_fast.difference_mask.default,
            (ids, never, starts, keys, values, RANDOM_IDS, 0.3, 0, 0.0, 0.0, MASK_ID, 0.8, 0.1, seed),
        ),
    ]
    for op, args in dynamic:  # data-dependent output sizes: no AOT dynamic-shape tracing
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_fake_kernels_on_meta():
    meta = {"device": "meta"}
    out = ops.sample_without_replacement(torch.rand(3, 4, **meta), torch.ones(3, dtype=torch.long, **meta))
    assert out.shape == (3, 4) and out.dtype == torch.bool and out.device.type == "meta"
    with pytest.raises(ValueError, match="counts must have shape"):
        ops.sample_without_replacement(torch.rand(3, 4, **meta), torch.ones(2, dtype=torch.long, **meta))
    with pytest.raises(TypeError, match="counts must be an integer tensor, got torch.bool"):
        ops.sample_without_replacement(torch.rand(3, 4, **meta), torch.ones(3, dtype=torch.bool, **meta))
    # Checks the kernels repeat are made before them too: a traced call never reaches a kernel.
    with pytest.raises(ValueError, match="K >= 1"):
        ops.max_anchor_similarity(torch.empty(3, 4, **meta), torch.empty(0, 4, **meta))
    scan = (torch.empty(3, 4, **meta), torch.zeros(2, 1, dtype=torch.long, **meta), torch.empty(5, 4, **meta),
            torch.zeros(2, dtype=torch.long, **meta))
    with pytest.raises(ValueError, match=r"probes \[N, P\] must have a row for every query"):
        ops.ivf_max_dot(*scan)


def test_the_masking_and_table_checks_hold_for_meta_tensors():
    """A traced call reaches the wrappers' checks and the fake kernels, never the CPU kernels
    that repeat them."""
    meta = {"device": "meta"}
    ids, never = torch.empty(2, 5, dtype=torch.long, **meta), torch.empty(2, 5, dtype=torch.bool, **meta)
    starts, keys = torch.empty(10, dtype=torch.bool, **meta), torch.empty(4, dtype=torch.long, **meta)
    values, random_ids = torch.empty(4, **meta), torch.empty(3, dtype=torch.long, **meta)
    seed = torch.empty(1, dtype=torch.long, **meta)

    def mask(**changed):
        arguments = {"never_word": never, "random_token_ids": random_ids, "seed": seed, **changed}
        return ops.difference_mask_device(ids, arguments.pop("never_word"), starts, keys, values,
                                          arguments.pop("random_token_ids"), mask_token_id=4, **arguments)

    assert mask().masked_ids.shape == (2, 5)
    assert mask(seed=torch.tensor([3])).masked_ids.shape == (2, 5)  # a seed on the CPU is taken on any device
    for changed, message in (({"never_word": never[:, :4]}, "never_word must have the shape of input_ids"),
                             ({"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "must be at most 1"),
                             ({"random_token_ids": random_ids[:0]}, "random_token_ids is empty"),
                             ({"seed": torch.empty(2, dtype=torch.long, **meta)}, "seed must hold one int64 value")):
        with pytest.raises(ValueError, match=message):
            mask(**changed)
    new_keys, new_values = torch.empty(2, dtype=torch.long, **meta), torch.empty(2, **meta)
    ops.score_table_insert(keys, values, new_keys, new_values)
    with pytest.raises(ValueError, match="must be contiguous"):
        ops.score_table_insert(torch.empty(8, dtype=torch.long, **meta)[::2], values, new_keys, new_values)
    with pytest.raises(ValueError, match="must not require grad"):
        ops.score_table_insert(keys, torch.empty(4, requires_grad=True, **meta), new_keys, new_values)


def test_reference_never_loads_the_extension():
    code = "import sys, diffmask_fast.reference; assert 'diffmask_fast._C' not in sys.modules; " \
           "assert 'diffmask_fast._extension' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loader_explains_how_to_rebuild(monkeypatch):
    from diffmask_fast import _extension

    real_import = importlib.import_module

    def missing(name, *args, **kwargs):
        if name == "diffmask_fast._C":
            raise ImportError("undefined symbol: _ZN3c104impl")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_extension, "_module", None)
    monkeypatch.setattr(_extension.importlib, "import_module", missing)
    with pytest.raises(ImportError, match=r"pip install --no-build-isolation -e \.") as error:
        _extension.load()
    assert "undefined symbol" in str(error.value)

    class Stale:
        torch_version = "1.0.0"

    monkeypatch.setattr(_extension.importlib, "import_module", lambda name, *a, **k: Stale())
    with pytest.raises(ImportError, match=r"built for torch 1\.0\.0.*make build"):
        _extension.load()


# ----------------------------------------------------------------------------------------------
# Draws: which random number each choice takes (laws alone cannot tell these apart)
# ----------------------------------------------------------------------------------------------

_SAMPLE = torch.ops.diffmask_fast.sample_without_replacement


def test_sampling_key_of_a_position_does_not_depend_on_the_other_weights():
    """core::successive_sample keys position i with draw i of the row's stream, so a weight that
    is 0 or so tiny it is never drawn changes nothing else. (Mutant: keys numbered by rank among
    the positive weights, stream.at(j): the same law, but every draw shifts.)"""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(64, 40, generator=g, dtype=torch.float64) + 0.1
    counts = torch.full((64,), 10)
    for position in (0, 17):
        zero, tiny = w.clone(), w.clone()
        zero[:, position] = 0.0
        tiny[:, position] = 1e-300  # key E / 1e-300 > 1e280: never among the 10 smallest
        a, b = _SAMPLE(zero, counts, 7), _SAMPLE(tiny, counts, 7)
        assert not b[:, position].any()
        assert torch.equal(a, b), f"position {position}"


def test_rows_of_a_batch_draw_independent_streams():
    """Row b uses stream (seed, b): identical rows draw different subsets. (Mutant: rows 2i and
    2i+1 share a stream, in the CPU kernel or in core::Stream.)"""
    rows, n, k = 200, 50, 10
    w = torch.linspace(1.0, 2.0, n, dtype=torch.float64).expand(rows, n).contiguous()
    picked = _SAMPLE(w, torch.full((rows,), k), 11)
    identical_pairs = sum(torch.equal(picked[i], picked[i + 1]) for i in range(0, rows, 2))
    identical_any = sum(torch.equal(picked[0], picked[i]) for i in range(1, rows))
    assert identical_pairs <= 2 and identical_any <= 2  # C(50, 10) ~ 1e10 subsets


def _single_token_rows(rows: int, middle: int):
    """Rows [1, 2 x middle, 3]: every token its own word (every id starts a word)."""
    ids = torch.tensor([[1] + [2] * middle + [3]] * rows)
    never = torch.zeros_like(ids, dtype=torch.bool)
    starts = torch.ones(4, dtype=torch.bool)
    return ids, never, starts


def _mask_rows(ids, never, starts, scores: dict[int, float], seed: int, **kwargs):
    table = ops.ScoreHashTable()
    table.insert(torch.tensor([ops.word_hash([t]) for t in scores]), torch.tensor(list(scores.values())))
    kwargs.setdefault("mlm_probability", 0.25)
    return run_mask(ids, never, starts, table, seed, **kwargs).labels != -100


def test_fill_of_zero_weight_words_keys_each_word_by_its_position():
    """Once every positive word is drawn, the rest of the budget goes to zero-weight words by
    uniform keys numbered by word position (core::uniform_subset, as the CUDA kernel does). So
    moving the one positive word from the first to the last position leaves the fill among the
    words in between unchanged whenever neither end is filled. (Mutant: keys numbered by rank
    among the zero-weight words, stream.at(j): the same law, but a different fill.)"""
    ids, never, starts = _single_token_rows(400, 18)  # 20 words: budget 5 = 1 positive + 4 filled
    first = _mask_rows(ids, never, starts, {1: 1.0, 2: -1.0, 3: -1.0}, seed=5)
    last = _mask_rows(ids, never, starts, {1: -1.0, 2: -1.0, 3: 1.0}, seed=5)
    assert first[:, 0].all() and last[:, -1].all() and (first.sum(1) == 5).all() and (last.sum(1) == 5).all()
    comparable = ~first[:, -1] & ~last[:, 0]
    assert comparable.sum() > 200
    assert torch.equal(first[comparable, 1:-1], last[comparable, 1:-1])


def test_difference_mask_rows_draw_independent_streams():
    """Identical rows are masked independently (stream (seed, row)). (Mutant: rows 2i and 2i+1
    share a stream.)"""
    ids, never, starts = _single_token_rows(200, 38)  # 40 words, budget 10
    masked = _mask_rows(ids, never, starts, {1: 0.5, 2: 1.0, 3: 2.0}, seed=3)
    identical_pairs = sum(torch.equal(masked[i], masked[i + 1]) for i in range(0, 200, 2))
    assert identical_pairs <= 2


def test_rank_weighting_ties_signed_zeros():
    """Scores -0.0 and +0.0 are equal, so under rank weighting they share the average rank 1.5
    and each of two such words is drawn first half the time. (Mutant: core::ordered_float_bits
    without its -0 -> +0 step gives ranks 1 and 2, frequencies 1/3 and 2/3. The C++ test's
    float32 trials never reach the radix path: 3.0e38 and 1e-40 are not float32 values.)"""
    ids = torch.tensor([[1, 2]] * 4000)
    never = torch.zeros_like(ids, dtype=torch.bool)
    starts = torch.ones(3, dtype=torch.bool)
    masked = _mask_rows(ids, never, starts, {1: -0.0, 2: 0.0}, seed=9, mlm_probability=0.5, weighting="rank")
    assert (masked.sum(1) == 1).all()
    assert abs(masked[:, 0].double().mean().item() - 0.5) < 0.05  # 6 standard errors


def test_rank_weighting_orders_an_unknown_score_below_its_float32_rounding(seed):
    """Table scores are float32, ``unknown_score`` a double: under rank weighting an unknown
    score of 0.1 ranks below the table's 0.1 (0.10000000149 in float32), as any lower unknown
    score does, and is not tied with it (ranks from float32 keys would tie them). Unknown words
    tie among themselves alike whether their score is a float32 value (ranked by a radix sort of
    float32 keys) or not (by a sort of doubles)."""
    g = generator(seed)
    ids, never, starts, words, table = masking_setup(g, batch=8, length=40, known=0.6)
    keys, values = table.tensors()
    others = 1 + torch.rand(values.shape, generator=g)
    scores = torch.where(keys != 0, torch.where(torch.rand(values.shape, generator=g) < 0.5, 0.1, others), values)
    options = dict(mask_token_id=MASK_ID, seed=seed, weighting="rank", mlm_probability=0.5)
    expected = ops.difference_mask(ids, never, starts, keys, scores, RANDOM_IDS, unknown_score=0.0625, **options)
    got = ops.difference_mask(ids, never, starts, keys, scores, RANDOM_IDS, unknown_score=0.1, **options)
    assert all(torch.equal(a, b) for a, b in zip(got[:3], expected[:3])), f"seed={seed}"


def test_tokens_of_a_masked_word_are_replaced_independently():
    """BERT's 80/10/10 rule is drawn per token (counter 2l and 2l + 1 of the replace stream), not
    per word. Ten-token words, all masked: all ten tokens of a word get the same treatment with
    probability 0.8^10 + 2 * 0.1^10 ~ 0.107, and the random ids of a word's tokens differ. (Mutant:
    the counter of every token is that of its word's first token.)"""
    rows, length = 2000, 10
    ids = torch.full((rows, length), 1)
    ids[:, 0] = 2  # id 2 starts a word, id 1 continues it: one word of ten tokens per row
    never = torch.zeros_like(ids, dtype=torch.bool)
    starts = torch.tensor([False, False, True])
    random_ids = torch.arange(100, 150)
    table = ops.ScoreHashTable()
    out = ops.difference_mask(ids, never, starts, *table.tensors(), random_ids, mask_token_id=0,
                              mlm_probability=1.0, seed=4)
    assert (out.labels == ids).all()
    kind = torch.where(out.masked_ids == 0, 0, torch.where(out.masked_ids == ids, 1, 2))
    uniform_rows = (kind == kind[:, :1]).all(1).double().mean().item()
    assert abs(uniform_rows - (0.8**10 + 2 * 0.1**10)) < 0.05  # ~7 standard errors
    randoms = out.masked_ids[kind == 2]
    assert randoms.numel() > 1000 and torch.unique(randoms).numel() == 50
    rows_with_two = [r for r in range(rows) if (kind[r] == 2).sum() >= 2]
    distinct = sum(torch.unique(out.masked_ids[r][kind[r] == 2]).numel() > 1 for r in rows_with_two)
    assert distinct >= 0.9 * len(rows_with_two)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_exact_tie_of_different_anchors_in_different_tiles_goes_to_the_first(dtype):
    """Anchors (1, 1, 0, 0) at index 0 and (1, -1, 0, 0) at the last index are different rows (not
    merged as duplicates) with exactly the same cosine with (c, 0, 0, 0); K = 4000 puts them in
    different tiles (64 or 128 columns). The first index wins, as reference.max_anchor_similarity
    says. (Mutant: RunningMax::fold lets a later tile win a tie, v >= value.)"""
    K, D = 4000, 4
    g = torch.Generator().manual_seed(1)
    anchors = -(torch.rand(K, D, generator=g, dtype=dtype) + 0.1)  # negative cosines with (c, 0, 0, 0)
    anchors[0] = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
    anchors[K - 1] = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=dtype)
    embeddings = torch.zeros(10, D, dtype=dtype)
    embeddings[:, 0] = torch.arange(1, 11, dtype=dtype)
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    assert indices.tolist() == [0] * 10
    assert torch.allclose(values, torch.full((10,), 0.5**0.5), atol=1e-6)


@pytest.mark.parametrize("which", ["embeddings", "anchors"])
def test_similarity_of_vectors_whose_float32_squares_are_subnormal(which):
    """Values ~1e-21: each square (~1e-42) is a float32 subnormal with a few significant bits, so
    a float32 sum of squares that is merely positive is not good enough: such rows are measured
    again in double. (Mutants: squared_norm_out_of_range accepting any positive norm2;
    squared_norm_double accumulating in float.) The existing test's scales (3e-20, 1e-25) give
    sums near FLT_MIN or zero, where both mutants pass."""
    g = torch.Generator().manual_seed(2)
    embeddings = torch.randn(40, 12, generator=g)
    anchors = torch.randn(7, 12, generator=g)
    if which == "embeddings":
        embeddings = embeddings * 1e-21
    else:
        anchors = anchors * 1e-21
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    expected_values, expected_indices = reference.max_anchor_similarity(embeddings.double().numpy(),
                                                                        anchors.double().numpy())
    np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-6)
    assert np.array_equal(indices.numpy(), expected_indices)


def test_similarity_of_column_major_float64_embeddings():
    """Transposed float64 embeddings are read by BLAS in place and their norms accumulated column
    by column. On a CPU with AVX-512 or AVX2 the existing transposed cases (float32) take the
    panel kernels, so this path was untested there. (Mutant: norms[r] = instead of +=.)"""
    g = torch.Generator().manual_seed(3)
    anchors = torch.randn(6, 19, generator=g, dtype=torch.float64)
    columns = torch.randn(19, 3000, generator=g, dtype=torch.float64)
    columns[:, 3] *= 1e200  # rows whose float64 squares over- or underflow: searched again, rescaled
    columns[:, 7] *= 1e-170
    for embeddings in (columns[:, :300].contiguous().t(),  # [300, 19], column-major, columns 300 apart
                       columns[:, :300].t(),  # columns 3,000 apart: not the number of rows
                       columns.t()):  # more rows than one block
        values, indices = ops.max_anchor_similarity(embeddings, anchors)
        expected_values, expected_indices = reference.max_anchor_similarity(embeddings.numpy(), anchors.numpy())
        np.testing.assert_allclose(values.numpy(), expected_values, atol=1e-6)
        assert np.array_equal(indices.numpy(), expected_indices)


def test_random_draws_are_pinned_across_versions():
    """A fixed (input, seed) gives fixed draws: results are reproducible across releases, not only
    within one build. Pins the whole chain: stream derivation per (seed, row), sub-streams per
    purpose, draw numbering by position. Mutants that permute draws without changing any law
    (stream id + 1 -> stream id, counter + 1 -> counter, sampling on the fill stream, keys
    numbered by rank) pass every statistical test but not this one; on a GPU machine the CPU/CUDA
    equality tests catch some of them, elsewhere nothing else does. An intended change of the
    random streams updates these values (and says so in the release notes)."""
    w = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8], [0.0, 1, 0, 1, 0.5, 0.25, 2, 0]], dtype=torch.float64)
    picked = _SAMPLE(w, torch.tensor([3, 2]), 2024)
    assert [row.nonzero().flatten().tolist() for row in picked] == [[1, 5, 6], [5, 6]]
    ids = torch.tensor([[1, 2, 3, 2, 3, 1, 2, 3, 2, 1, 3, 2]] * 3)
    never = torch.zeros_like(ids, dtype=torch.bool)
    starts = torch.ones(4, dtype=torch.bool)
    table = ops.ScoreHashTable()

    def draw():
        return ops.difference_mask(ids, never, starts, *table.tensors(), torch.arange(100, 110), mask_token_id=0,
                                   mlm_probability=0.45, seed=2024)

    table.insert(torch.tensor([ops.word_hash([1])]), torch.tensor([0.5]))
    out = draw()
    assert out.masked_words.tolist() == [5, 5, 6]
    assert out.masked_ids.tolist() == [
        [0, 2, 3, 2, 3, 103, 2, 0, 2, 0, 0, 2],
        [0, 2, 100, 2, 3, 0, 0, 3, 2, 0, 3, 2],
        [0, 2, 0, 0, 0, 0, 2, 3, 2, 1, 3, 2],
    ]
    # Words 1 and 2 positive (8 words for a budget of 5 or 6): the sampling stream chooses; above,
    # the 3 positive words are all taken and the fill stream chooses the rest.
    table.insert(torch.tensor([ops.word_hash([2])]), torch.tensor([1.5]))
    out = draw()
    assert out.masked_words.tolist() == [5, 5, 6]
    assert out.masked_ids.tolist() == [
        [1, 0, 3, 0, 3, 1, 0, 3, 0, 1, 3, 0],
        [0, 2, 3, 2, 3, 0, 0, 3, 2, 0, 3, 0],
        [1, 103, 3, 0, 3, 0, 0, 3, 2, 1, 3, 0],
    ]


def test_a_score_beyond_float32_is_named_as_such():
    """1e39 is finite, but float32's infinity: "scores must be finite" contradicted the input."""
    with pytest.raises(ValueError, match=r"finite float32 values \(\|score\| <= 3.4e38\)"):
        ops.ScoreHashTable().insert([9], [1e39])


def test_no_op_result_asks_for_a_gradient_it_would_not_get():
    """score_table_lookup of values that require grad gave a result that did too; backward then
    left the values' grad None with a warning only. Every op's result is detached."""
    keys, values = torch.zeros(8, dtype=torch.long), torch.zeros(8)
    ops.score_table_insert(keys, values, torch.tensor([7]), torch.tensor([0.5]))
    found_values, found = ops.score_table_lookup(keys, values.clone().requires_grad_(True), torch.tensor([7, 3]))
    assert found_values.tolist() == [0.5, 0.0] and found.tolist() == [True, False]
    assert not found_values.requires_grad
    embeddings, anchors = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    assert not any(t.requires_grad for t in ops.max_anchor_similarity(embeddings, anchors))

"""The CUDA kernels against the CPU kernels and diffmask_fast.reference, on fresh random inputs.

Skipped without a CUDA device or without CUDA kernels in diffmask_fast._C (set
DIFFMASK_FAST_REQUIRE_CUDA=1, as `make gpu-check` does, to fail instead of skipping). Where the
arithmetic is exact (sampling, masking: the same random streams and keys on both sides) the GPU
must reproduce the CPU bit for bit for the same seed; similarities must agree within float32
rounding, and arg maxes except at near-ties.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import pytest
import torch

import op_cases
from diffmask_fast import _extension, ops, reference

CUDA_OPS = op_cases.CUDA_OPS


def _missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    absent = sorted(name for name in CUDA_OPS if not _extension.has_kernel(name, "cuda"))
    if absent:
        return f"diffmask_fast._C has no CUDA kernels for {', '.join(absent)} (rebuild with DIFFMASK_FAST_CUDA=1)"
    return None


MISSING = _missing()
if MISSING is not None and os.environ.get("DIFFMASK_FAST_REQUIRE_CUDA") == "1":
    raise RuntimeError(f"DIFFMASK_FAST_REQUIRE_CUDA=1 but {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

CUDA = "cuda"


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# max_anchor_similarity
# ----------------------------------------------------------------------------------------------


def cosines_and_best(embeddings: torch.Tensor, anchors: torch.Tensor, chunk: int = 4096):
    """float64 max cosine, first arg max and runner-up gap per row (on the GPU, in row chunks)."""
    e = embeddings.reshape(-1, embeddings.shape[-1]).to(CUDA, torch.float64)
    a = anchors.to(CUDA, torch.float64)
    a_norm = a.norm(dim=1)
    units = torch.where(a_norm[:, None] > 0, a / a_norm.clamp_min(1e-300)[:, None], torch.zeros_like(a))
    best, index, gap = [], [], []
    for start in range(0, e.shape[0], chunk):
        x = e[start:start + chunk]
        norms = x.norm(dim=1, keepdim=True)
        cos = torch.where(norms > 0, (x @ units.T) / norms.clamp_min(1e-300), torch.zeros(1, device=CUDA, dtype=torch.float64))
        top = cos.topk(min(2, cos.shape[1]), dim=1)
        best.append(top.values[:, 0])
        index.append(top.indices[:, 0])
        gap.append(top.values[:, 0] - top.values[:, 1] if cos.shape[1] > 1 else torch.full_like(top.values[:, 0], math.inf))
    return torch.cat(best), torch.cat(index), torch.cat(gap)


def check_similarity(values, indices, embeddings, anchors, atol, message):
    assert values.dtype == torch.float32 and indices.dtype == torch.int64, message
    best, _, gap = cosines_and_best(embeddings, anchors)
    values = values.reshape(-1).double()
    indices = indices.reshape(-1)
    error = (values - best).abs()
    assert float(error.max()) <= atol, f"{message}: max error {float(error.max()):.3g}"
    # The chosen anchor reaches the max within atol (near-ties may go either way).
    e = embeddings.reshape(-1, embeddings.shape[-1]).to(CUDA, torch.float64)
    a = anchors.to(CUDA, torch.float64)
    chosen = torch.nn.functional.cosine_similarity(e, a[indices], dim=1, eps=1e-300)
    assert bool((chosen >= best - 2 * atol).all()), message
    return error, gap


@pytest.mark.parametrize(
    "n, d, k",
    [(1, 1, 1), (1, 768, 20), (7, 13, 5), (33, 385, 20), (300, 24, 33), (2000, 96, 129), (5000, 768, 1000),
     (32768, 768, 20), (2048, 64, 100_000)],
)
def test_similarity_matches_cpu_and_reference(seed, n, d, k):
    g = generator(seed)
    embeddings = torch.randn(n, d, generator=g)
    anchors = torch.randn(k, d, generator=g)
    message = f"seed={seed} n={n} d={d} k={k}"
    values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA))
    assert values.device.type == CUDA and values.shape == (n,) and indices.shape == (n,)
    _, gap = check_similarity(values, indices, embeddings, anchors, 1e-5, message)
    if n * k <= 5_000_000:
        cpu_values, cpu_indices = ops.max_anchor_similarity(embeddings, anchors)
        torch.testing.assert_close(values.cpu(), cpu_values, atol=2e-6, rtol=0, msg=message)
        clear = gap.cpu() > 1e-5  # the arg max is only defined up to rounding at near-ties
        assert torch.equal(indices.cpu()[clear], cpu_indices[clear]), message
    if n * d * k <= 300_000:
        ref_values, ref_indices = reference.max_anchor_similarity(embeddings.numpy(), anchors.numpy())
        np.testing.assert_allclose(values.cpu().numpy(), ref_values, atol=1e-5, rtol=0, err_msg=message)


def test_similarity_never_forms_the_full_matrix(seed):
    """K = 100,000 anchors for 32,768 words: far less memory than the 13 GB [N, K] matrix."""
    g = generator(seed)
    embeddings = torch.randn(32768, 768, generator=g).to(CUDA)
    anchors = torch.randn(100_000, 768, generator=g).to(CUDA)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    values, indices = ops.max_anchor_similarity(embeddings, anchors)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    assert extra < 32768 * 100_000 * 4 / 20, f"peak extra memory {extra / 2**20:.0f} MiB"
    sample = torch.randperm(32768, generator=g)[:512]
    check_similarity(values[sample.to(CUDA)], indices[sample.to(CUDA)], embeddings.cpu()[sample], anchors.cpu(), 1e-5,
                     f"seed={seed}")


def test_similarity_float64_half_and_strides(seed):
    g = generator(seed)
    message = f"seed={seed}"
    e64 = torch.randn(700, 19, generator=g, dtype=torch.float64)
    a64 = torch.randn(40, 19, generator=g, dtype=torch.float64)
    values, indices = ops.max_anchor_similarity(e64.to(CUDA), a64.to(CUDA))
    cpu_values, cpu_indices = ops.max_anchor_similarity(e64, a64)
    torch.testing.assert_close(values.cpu(), cpu_values, atol=1e-7, rtol=0)
    assert torch.equal(indices.cpu(), cpu_indices), message
    for dtype in (torch.float16, torch.bfloat16):
        e = torch.randn(64, 40, generator=g).to(dtype)
        a = torch.randn(9, 40, generator=g).to(dtype)
        values, indices = ops.max_anchor_similarity(e.to(CUDA), a.to(CUDA))
        check_similarity(values, indices, e.float(), a.float(), 1e-5, f"{message} {dtype}")
    anchors = check_strided_rows(g, "highest", 1e-5, message)
    for shape in [(0, 13), (3, 0, 13), (13,)]:
        values, indices = ops.max_anchor_similarity(torch.randn(shape).to(CUDA), anchors.to(CUDA))
        assert values.shape == shape[:-1] and indices.dtype == torch.int64


def check_strided_rows(g: torch.Generator, precision: str, atol: float, message: str) -> torch.Tensor:
    """Rows sliced, permuted, transposed and expanded, against few anchors (the fused kernel) and
    more (blocked products); returns the few."""
    base = torch.randn(6, 40, 26, generator=g)
    anchors = torch.randn(2 * 11, 13, generator=g)[::2]
    cases = {
        "column slice": base[..., ::2],
        "row slice": base.reshape(-1, 26)[::3, :13],
        "permuted batch": base[..., :13].permute(1, 0, 2),
        "batch dims": base[..., 13:].reshape(2, 3, 40, 13),
        "transposed": torch.randn(13, 300, generator=g).t(),
        "expanded": torch.randn(1, 13, generator=g).expand(50, 13),
    }
    more_anchors = torch.randn(40, 13, generator=g)  # beyond the fused kernel's 32: blocked products
    for name, embeddings in cases.items():
        for some in (anchors, more_anchors):
            values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), some.to(CUDA), precision)
            assert values.shape == embeddings.shape[:-1], name
            check_similarity(values, indices, embeddings, some, atol, f"{message} {name} K={len(some)} {precision}")
    return anchors


def test_similarity_zero_vectors_ties_and_nan(seed):
    g = generator(seed)
    message = f"seed={seed}"
    anchors = torch.randn(300, 10, generator=g)
    anchors[207] = anchors[2]  # duplicate: ties go to the smaller index
    anchors[209] = anchors[2] * 4.0  # same direction
    anchors[4] = 0.0
    embeddings = torch.randn(500, 10, generator=g)
    embeddings[0] = 0.0
    embeddings[1] = anchors[2] * 3.0  # exactly anchor 2's direction
    embeddings[2, 3] = float("nan")
    values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA))
    cpu_values, cpu_indices = ops.max_anchor_similarity(embeddings, anchors)
    assert values[0].item() == 0 and indices[0].item() == 0, message
    assert indices[1].item() == 2, message
    assert math.isnan(values[2].item()) and indices[2].item() == cpu_indices[2].item(), message
    keep = torch.ones(500, dtype=torch.bool)
    keep[2] = False
    torch.testing.assert_close(values.cpu()[keep], cpu_values[keep], atol=2e-6, rtol=0)
    nan_anchors = anchors.clone()
    nan_anchors[5, 0] = float("nan")
    values, indices = ops.max_anchor_similarity(embeddings[3:].to(CUDA), nan_anchors.to(CUDA))
    assert not bool((indices == 5).any()) and bool(torch.isfinite(values).all()), message


@pytest.mark.parametrize("dtype, precision", [(torch.float32, "highest"), (torch.float64, "highest"),
                                              (torch.float32, "high"), (torch.float32, "medium")])
def test_copies_of_an_anchor_in_blocks_apart_tie_to_the_first_as_on_the_cpu(seed, dtype, precision):
    """Past 4,096 anchors the products come in blocks, which cuBLAS may compute in other orders:
    a copy in a later block could beat the first by a rounding. Copies of the sign of a zero too."""
    if precision != "highest" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bfloat16 products need compute capability 8.0")
    g = generator(seed)
    k, d = 9000, 768
    anchors = torch.randn(k, d, generator=g, dtype=dtype)
    anchors[20, ::3] = 0.0
    firsts = torch.randperm(4000, generator=g)[:40]
    copies = 4200 + torch.randperm(k - 4200, generator=g)[:40]
    anchors[copies] = anchors[firsts]
    anchors[copies[0]] = torch.where(anchors[20] == 0, torch.full_like(anchors[20], -0.0), anchors[20])
    firsts[0] = 20
    embeddings = torch.cat([anchors[firsts] * 3, torch.randn(500, d, generator=g, dtype=dtype)])
    _, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA), precision)
    _, cpu_indices = ops.max_anchor_similarity(embeddings[:40], anchors)
    assert indices[:40].cpu().tolist() == cpu_indices.tolist() == firsts.tolist(), f"seed={seed} {dtype} {precision}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchors_that_differ_only_in_the_sign_of_zeros_tie_as_on_the_cpu(seed, dtype):
    """-0.0 == 0.0: such copies of an anchor score alike, and the first wins (the CPU op merges
    them; the GPU computes each the same way)."""
    g = generator(seed)
    distinct = torch.randn(300, 32, generator=g, dtype=dtype)
    distinct[torch.rand(300, 32, generator=g) < 0.5] = 0.0
    signed = torch.where(distinct == 0, torch.full_like(distinct, -0.0), distinct)
    anchors = torch.cat([distinct, signed])[torch.randperm(600, generator=g)]
    embeddings = torch.cat([anchors, anchors * 3])
    _, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA))
    _, cpu_indices = ops.max_anchor_similarity(embeddings, anchors)
    assert indices.cpu().tolist() == cpu_indices.tolist(), f"seed={seed} {dtype}"


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_similarity_of_scaled_copies_of_anchors_is_at_most_one(seed, dtype, precision):
    if precision != "highest" and (dtype != torch.float32 or torch.cuda.get_device_capability()[0] < 8):
        pytest.skip("tensor-core precisions take float32 on compute capability 8.0 and later")
    g = generator(seed)
    for k in (1, 20, 3000):  # one anchor: the negative copies reach -1 too
        anchors = (torch.randn(k, 384, generator=g) * torch.rand(k, 1, generator=g) * 10).to(dtype)
        # Powers of two scale exactly in every format: the copies are parallel to their anchors.
        signs = torch.randint(0, 2, (4000, 1), generator=g) * 2 - 1
        scales = 2.0 ** torch.randint(-3, 4, (4000, 1), generator=g) * signs
        copies = (anchors[torch.randint(0, k, (4000,), generator=g)] * scales).to(dtype)
        values, _ = ops.max_anchor_similarity(copies.to(CUDA), anchors.to(CUDA), precision)
        message = f"seed={seed} {dtype} {precision} K={k}"
        assert float(values.abs().max()) <= 1.0, f"{message}: {float(values.abs().max())!r}"
        assert bool((values.cpu()[scales[:, 0] > 0] >= 1 - 1e-2).all()), message


BF16_ROUNDOFF = 2.0**-8


@pytest.mark.parametrize(
    "precision, bound, typical",
    [  # documented bound at depth d, and typical error (a few times the expected one)
        ("high", lambda d: 3 * BF16_ROUNDOFF**2 + 3 * d * 2.0**-24,
         lambda d: 4 * BF16_ROUNDOFF**2 / math.sqrt(d) + math.sqrt(3 * d) * 2.0**-24),
        ("medium", lambda d: 2 * BF16_ROUNDOFF + d * 2.0**-24, lambda d: 4 * BF16_ROUNDOFF / math.sqrt(d)),
    ],
)
def test_similarity_tensor_core_precisions_within_documented_error(seed, precision, bound, typical):
    if torch.cuda.get_device_capability()[0] < 8:
        with pytest.raises(ValueError, match="compute capability 8.0"):
            ops.max_anchor_similarity(torch.randn(4, 8, device=CUDA), torch.randn(3, 8, device=CUDA), precision)
        return
    g = generator(seed)
    for n, d, k in [(1, 8, 1), (777, 100, 3), (4096, 768, 20), (4096, 768, 1000), (1000, 768, 20_000)]:
        embeddings = torch.randn(n, d, generator=g)
        anchors = torch.randn(k, d, generator=g)
        values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA), precision)
        message = f"seed={seed} {precision} n={n} k={k}"
        error, _ = check_similarity(values, indices, embeddings, anchors, bound(d), message)
        if n * k >= 100_000 and k > 32:  # up to 32 anchors every precision computes in float32
            assert float(error.mean()) < typical(d), f"{message}: mean {float(error.mean()):.3g}"


@contextlib.contextmanager
def tf32_allowed(api: str):
    """Torch's permission to round float32 products to TF32, given through its legacy API
    (set_float32_matmul_precision) or its per-backend one (fp32_precision, whose use makes the
    legacy getter raise), and taken back after."""
    if api == "legacy":
        setting = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(setting)
    else:
        setting = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            torch.backends.cuda.matmul.fp32_precision = setting


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_tensor_core_precisions_read_strided_rows(seed, precision):
    """The bfloat16 operands are made from the rows as laid out: tested with whole rows only."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("tensor-core precisions need compute capability 8.0")
    depth = 13  # the documented bounds (test_similarity_tensor_core_precisions_within_documented_error)
    atol = (2 * BF16_ROUNDOFF + depth * 2.0**-24 if precision == "medium"
            else 3 * BF16_ROUNDOFF**2 + 3 * depth * 2.0**-24)
    check_strided_rows(generator(seed), precision, atol, f"seed={seed}")


@pytest.mark.parametrize("api", ["legacy", "fp32_precision"])
@pytest.mark.parametrize("library", ["cublas", "cublaslt"])
def test_highest_precision_stays_float32_when_torch_allows_tf32(seed, library, api):
    """The products of "highest" go through torch's cuBLAS; torch's global permission to round
    float32 matrix products to TF32 must not reach them (errors near 1e-3 where float32 gives
    1e-6). Torch's cuBLASLt path ignores the thread's guard against TF32: where torch prefers it,
    the fused kernel searches instead."""
    if api == "fp32_precision" and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no per-backend float32 precision")
    g = generator(seed)
    embeddings = torch.randn(3000, 768, generator=g)
    anchors = torch.randn(1000, 768, generator=g)
    preferred = torch.backends.cuda.preferred_blas_library()
    try:
        torch.backends.cuda.preferred_blas_library(library)
        with tf32_allowed(api):
            values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA))
            bf16 = torch.cuda.get_device_capability()[0] >= 8  # the bfloat16 products run through either library
            if bf16:
                medium, medium_indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA), "medium")
    finally:
        torch.backends.cuda.preferred_blas_library(preferred)
    check_similarity(values, indices, embeddings, anchors, 1e-5, f"seed={seed} {library} {api}")
    if bf16:
        check_similarity(medium, medium_indices, embeddings, anchors, 2 * BF16_ROUNDOFF + 768 * 2.0**-24,
                         f"seed={seed} {library} {api} medium")


# ----------------------------------------------------------------------------------------------
# sample_without_replacement
# ----------------------------------------------------------------------------------------------


def random_weights(g, rows, n, dtype=torch.float64, zero_fraction=0.3):
    weights = torch.rand(rows, n, generator=g, dtype=torch.float64)
    weights[torch.rand(rows, n, generator=g) < zero_fraction] = 0
    return weights.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_sampling_identical_to_cpu(seed, dtype):
    g = generator(seed)
    op = torch.ops.diffmask_fast.sample_without_replacement
    for rows, n in [(1, 1), (1, 8192), (4, 8192), (64, 512), (37, 3), (5, 20_000), (3, 0)]:
        weights = random_weights(g, rows, n, dtype)
        if rows > 1 and n > 0:
            weights[1] = 0  # an all-zero row
        counts = torch.randint(0, n + 3, (rows,), generator=g)
        expected = op(weights, counts, seed)
        got = op(weights.to(CUDA), counts.to(CUDA), seed)
        assert torch.equal(got.cpu(), expected), f"seed={seed} rows={rows} n={n} {dtype}"
    ties = torch.ones(3, 1000, dtype=dtype)  # equal weights: keys still differ by position draws
    counts = torch.tensor([1, 500, 999])
    assert torch.equal(op(ties.to(CUDA), counts.to(CUDA), seed).cpu(), op(ties, counts, seed))


def test_sampling_subnormal_weights_identical_to_cpu(seed):
    """Keys E / w overflow below ~1e-307: such rows are keyed on rescaled weights, the same way."""
    g = generator(seed)
    op = torch.ops.diffmask_fast.sample_without_replacement
    weights = random_weights(g, 64, 300) * torch.tensor([1e-310, 1e-320, 1.0, 1e-300]).repeat(16)[:, None]
    counts = torch.randint(0, 303, (64,), generator=g)
    assert torch.equal(op(weights.to(CUDA), counts.to(CUDA), seed).cpu(), op(weights, counts, seed)), f"seed={seed}"


def test_similarity_of_vectors_whose_float32_squares_overflow_or_underflow(seed):
    g = generator(seed)
    for scale in (1e20, 1e-25):
        embeddings, anchors = torch.randn(300, 24, generator=g), torch.randn(40, 24, generator=g)
        for e, a in ((embeddings * scale, anchors), (embeddings, anchors * scale)):
            values, indices = ops.max_anchor_similarity(e.to(CUDA), a.to(CUDA))
            check_similarity(values, indices, e, a, 1e-5, f"seed={seed} scale={scale}")


@pytest.mark.parametrize("dtype, largest", [(torch.float32, 3e38), (torch.float32, 1e-42),
                                            (torch.float64, 1e306), (torch.float64, 1e-317)])
@pytest.mark.parametrize("k", [7, 300])
def test_similarity_of_vectors_whose_products_overflow_or_underflow_on_gpu(seed, dtype, largest, k):
    """Rows whose largest value is near the type's maximum (their dot products overflow) or
    subnormal (their dot products lose their digits) are searched again scaled, as on the CPU."""
    g = generator(seed)
    anchors = torch.randn(k, 24, generator=g, dtype=dtype)
    embeddings = torch.randn(200, 24, generator=g, dtype=dtype)
    embeddings[::3] = embeddings[::3] / embeddings[::3].abs().amax(dim=1, keepdim=True) * largest
    embeddings[6] = anchors[2] / anchors[2].abs().max() * largest  # nearest anchor: exactly 2
    values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA))
    expected_values, expected_indices = reference.max_anchor_similarity(embeddings.double().numpy(),
                                                                         anchors.double().numpy())
    np.testing.assert_allclose(values.cpu().numpy(), expected_values, atol=1e-5, err_msg=f"seed={seed}")
    # The rows searched again are searched in float64: their nearest anchors are the reference's.
    assert np.array_equal(indices.cpu().numpy()[::3], expected_indices[::3]), f"seed={seed}"
    assert indices[6] == 2 and values[6].item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_float64_anchors_beyond_the_compute_types_range_on_gpu(seed, dtype):
    """Float64 anchors at 1e300 or 1e-300 with float32 compute keep their cosines, as on the CPU."""
    g = generator(seed)
    embeddings = torch.randn(200, 24, generator=g).to(dtype)
    anchors = torch.randn(9, 24, generator=g, dtype=torch.float64)
    anchors[1] *= 1e300
    anchors[4] *= 1e-300
    anchors[6] *= 1e-320
    values, indices = ops.max_anchor_similarity(embeddings.to(CUDA), anchors.to(CUDA))
    cpu_values, cpu_indices = ops.max_anchor_similarity(embeddings, anchors)
    torch.testing.assert_close(values.cpu(), cpu_values, atol=1e-5, rtol=0)
    # The GPU rounds such anchors to float32 before normalizing them, the CPU after: unit rows
    # may differ in a last bit, so arg maxes are compared where they are defined.
    rescaled = anchors / anchors.abs().amax(1, keepdim=True)  # the same directions, norms float64 can take
    _, gap = check_similarity(values, indices, embeddings, rescaled, 1e-5, f"seed={seed}")
    clear = gap.cpu() > 1e-5
    assert torch.equal(indices.cpu()[clear], cpu_indices[clear]), f"seed={seed}"


def test_sampling_statistics_on_gpu(seed):
    rng = np.random.default_rng(seed)
    trials = 200_000
    generator_ = torch.Generator().manual_seed(seed)
    for n in (5, 6):
        weights = list(rng.gamma(0.7, size=n) + 1e-3)
        weights[rng.integers(n)] = 0.0
        for k in range(1, n + 1):
            exact = reference.successive_sampling_inclusion(weights, k)
            rows = torch.tensor(weights, dtype=torch.float64, device=CUDA).expand(trials, n)
            picked = ops.sample_without_replacement(rows, torch.full((trials,), k, device=CUDA), generator=generator_)
            frequency = picked.double().mean(0).tolist()
            for i in range(n):
                p = exact[i]
                assert abs(frequency[i] - p) <= 5 * math.sqrt(p * (1 - p) / trials) + 1e-9, (
                    f"seed={seed} weights={weights} k={k} position={i}"
                )


def test_sampling_errors_on_gpu():
    weights, counts = torch.rand(3, 4, device=CUDA), torch.tensor([1, 2, 3], device=CUDA)
    for bad, word in [(float("nan"), "NaN"), (float("inf"), "infinite"), (-0.5, "negative")]:
        w = weights.clone()
        w[1, 2] = bad
        w[2, 0] = bad  # a later row: the first row's problem is reported
        with pytest.raises(ValueError, match=rf"weights\[1, 2\] is {word}"):
            ops.sample_without_replacement(w, counts)
    with pytest.raises(ValueError, match=r"non-negative, got counts\[2\] = -1"):
        ops.sample_without_replacement(weights, torch.tensor([1, 2, -1], device=CUDA))
    with pytest.raises(ValueError, match="same device"):
        ops.sample_without_replacement(weights, counts.cpu())


# ----------------------------------------------------------------------------------------------
# difference_mask and difference_mask_device
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", op_cases.MASKING_OPTIONS)
@pytest.mark.parametrize("batch, length", [(1, 1), (1, 512), (256, 512), (3, 8192), (7, 0), (0, 5), (40, 64)])
def test_difference_mask_identical_to_cpu(seed, options, batch, length):
    g = generator(seed)
    ids, never, starts, table = op_cases.masking_batch(g, batch, length, empty_rows=(0,) if batch > 1 else ())
    random_ids = torch.arange(1000, 1100)
    args = (ids, never, starts, *table.tensors(), random_ids)
    cuda_args = tuple(t.to(CUDA) for t in args)
    kwargs = dict(mask_token_id=5, seed=seed, **options)
    message = f"seed={seed} {options} {batch}x{length}"
    expected = ops.difference_mask(*args, **kwargs)
    got = ops.difference_mask(*cuda_args, **kwargs)
    for name, a, b in zip(expected._fields, got, expected):
        assert torch.equal(a.cpu(), b), f"{message} {name}"
    device_cpu = ops.difference_mask_device(*args, **kwargs)
    device_gpu = ops.difference_mask_device(*cuda_args, **{**kwargs, "seed": torch.tensor([seed], device=CUDA)})
    for name, a, b in zip(device_cpu._fields, device_gpu, device_cpu):
        assert torch.equal(a.cpu(), b), f"{message} device {name}"
    for a, b in zip(device_cpu[:3], expected[:3]):
        assert torch.equal(a, b), message


def test_difference_mask_errors_on_gpu(seed):
    g = generator(seed)
    ids, never, starts, table = op_cases.masking_batch(g, 4, 30)
    bad = ids.clone()
    bad[2, 5] = starts.numel() + 3
    never_bad = never.clone()
    never_bad[2, 5] = False
    args = [t.to(CUDA) for t in (bad, never_bad, starts, *table.tensors(), torch.arange(10, 20))]
    with pytest.raises(ValueError, match=rf"input_ids\[2, 5\] = {starts.numel() + 3} is outside the vocabulary"):
        ops.difference_mask(*args, mask_token_id=1, seed=1)
    # The device op ignores the id instead (never masked), without a host round trip.
    out = ops.difference_mask_device(*args, mask_token_id=1, seed=torch.tensor([1], device=CUDA), mlm_probability=1.0)
    assert out.labels[2, 5].item() == -100
    with pytest.raises(ValueError, match="same device"):
        ops.difference_mask(*args[:5], args[5].cpu(), mask_token_id=1, seed=1)
    # A score that is NaN: the CPU op's error, for the same word; the device op scores it unknown.
    keys, values = table.tensors()
    words = ops.group_words(ids, never, starts)
    known = torch.isin(words.word_hash, keys[keys != 0]) & (words.word_hash != 0)
    row, column = known.nonzero()[0].tolist()  # a word the table knows (a random row may have none)
    broken = values.clone()
    broken[keys == words.word_hash[row, column]] = float("nan")
    cpu_args = (ids, never, starts, keys, broken, torch.arange(10, 20))
    with pytest.raises(ValueError) as on_cpu:
        ops.difference_mask(*cpu_args, mask_token_id=1, seed=1)
    with pytest.raises(ValueError, match="is not finite") as on_gpu:
        ops.difference_mask(*[t.to(CUDA) for t in cpu_args], mask_token_id=1, seed=1)
    assert str(on_gpu.value) == str(on_cpu.value)
    expected = ops.difference_mask_device(*cpu_args, mask_token_id=1, seed=1)
    got = ops.difference_mask_device(*[t.to(CUDA) for t in cpu_args], mask_token_id=1,
                                     seed=torch.tensor([1], device=CUDA))
    for a, b in zip(got, expected):
        assert torch.equal(a.cpu(), b), f"seed={seed}"


def test_difference_mask_device_never_synchronizes(seed):
    g = generator(seed)
    ids, never, starts, table = op_cases.masking_batch(g, 64, 128)
    args = [t.to(CUDA) for t in (ids, never, starts, *table.tensors(), torch.arange(10, 20))]
    seed_tensor = torch.tensor([seed], device=CUDA)
    op = torch.ops.diffmask_fast.difference_mask_device
    op(*args, 0.25, 0, 0.0, 0.0, 1, 0.8, 0.1, seed_tensor)  # warm-up: allocator, module loading
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = op(*args, 0.25, 0, 0.0, 0.0, 1, 0.8, 0.1, seed_tensor)
            seed_tensor.add_(1)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert out[0].shape == ids.shape


def test_score_table_lookup_on_gpu(seed):
    g = generator(seed)
    table = ops.ScoreHashTable()
    keys = torch.randint(1, 2**62, (5000,), generator=g)
    table.insert(keys, torch.randn(5000, generator=g))
    queries = torch.cat([keys[:3000], torch.randint(1, 2**62, (2000,), generator=g)]).reshape(50, 100)
    expected = ops.score_table_lookup(*table.tensors(), queries, -2.0)
    got = ops.score_table_lookup(*(t.to(CUDA) for t in table.tensors()), queries.to(CUDA), -2.0)
    assert torch.equal(got[0].cpu(), expected[0]) and torch.equal(got[1].cpu(), expected[1])


def test_a_denormal_default_score_is_kept_on_the_gpu_while_the_caller_flushes_denormals():
    """The CUDA op rounded the default to float on the calling thread, which read 1e-40 as 0
    there; the CPU op keeps it."""
    table = ops.ScoreHashTable()
    table.insert(torch.tensor([5]), torch.tensor([0.5]))
    queries = torch.tensor([5, 6, 7])
    torch.set_flush_denormal(True)
    try:
        expected = ops.score_table_lookup(*table.tensors(), queries, 1e-40)[0]
        got = ops.score_table_lookup(*(t.to(CUDA) for t in table.tensors()), queries.to(CUDA), 1e-40)[0].cpu()
    finally:
        torch.set_flush_denormal(False)
    assert expected[1].item() != 0.0 and torch.equal(got, expected)


@pytest.mark.parametrize("name", sorted(CUDA_OPS))
def test_opcheck_cuda(name, seed):
    op = getattr(torch.ops.diffmask_fast, name).default
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if name not in op_cases.DATA_DEPENDENT:
        utils += ("test_aot_dispatch_dynamic",)
    tensor_cores = torch.cuda.get_device_capability()[0] >= 8
    for args in op_cases.cases(CUDA, seed)[name]:
        if not tensor_cores and any(isinstance(a, str) and a != "highest" for a in args):
            continue
        torch.library.opcheck(op, args, test_utils=utils)


def _garbage_like(tensor: torch.Tensor) -> torch.Tensor:
    fill = True if tensor.dtype == torch.bool else -7 if not tensor.is_floating_point() else float("nan")
    return torch.full_like(tensor, fill)


@pytest.mark.parametrize("name", sorted(CUDA_OPS))
def test_ops_run_on_the_callers_stream(name, seed):
    """Inputs written on a side stream behind a long kernel: an op launched on another stream
    than the caller's reads them before they are written (they hold garbage until then)."""
    op = getattr(torch.ops.diffmask_fast, name).default
    tensor_cores = torch.cuda.get_device_capability()[0] >= 8
    for args in op_cases.cases(CUDA, seed)[name]:
        if not tensor_cores and any(isinstance(a, str) and a != "highest" for a in args):
            continue
        expected = op(*args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            late = [_garbage_like(a) if isinstance(a, torch.Tensor) else a for a in args]
            torch.cuda._sleep(50_000_000)  # tens of milliseconds
            for written, given in zip(late, args):
                if isinstance(given, torch.Tensor):
                    written.copy_(given)
            got = op(*late)
        side.synchronize()
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=f"{name} seed={seed}")


# ----------------------------------------------------------------------------------------------
# DifferenceMasker on the GPU
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def masker_pair(bert_wordpiece):
    import tokenizers_offline
    from diffmask_fast import DifferenceMasker

    lines = tokenizers_offline.sample_lines(64)
    words = {w.strip(".,;:()").lower() for line in lines for w in line.split()}
    rng = np.random.default_rng(0)
    scores = {w: float(rng.uniform(-0.2, 1.0)) for w in sorted(words)}
    enc = bert_wordpiece(lines, truncation=True, max_length=64, padding=True, return_tensors="pt")
    cpu = DifferenceMasker(bert_wordpiece, scores, seed=7)
    gpu = DifferenceMasker(bert_wordpiece, scores, seed=7)
    cpu.warm(enc["input_ids"])
    gpu.warm(enc["input_ids"])
    return cpu, gpu.to(CUDA), enc


def test_masker_on_gpu_equals_cpu_and_never_synchronizes(masker_pair):
    cpu, gpu, enc = masker_pair
    ids, attention = enc["input_ids"], enc["attention_mask"]
    ids_gpu, attention_gpu = ids.to(CUDA), attention.to(CUDA)
    for _ in range(3):
        expected = cpu(ids, attention)
        got = gpu(ids_gpu, attention_gpu)
        assert torch.equal(got[0].cpu(), expected[0]) and torch.equal(got[1].cpu(), expected[1])
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu(ids_gpu, attention_gpu)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    cpu(ids, attention)
    assert gpu.coverage() == cpu.coverage()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_masker_compiles_on_gpu(masker_pair, backend):
    cpu, gpu, enc = masker_pair
    compiled = torch.compile(gpu, fullgraph=True, backend=backend)
    ids, attention = enc["input_ids"], enc["attention_mask"]
    for _ in range(2):
        expected = cpu(ids, attention)
        got = compiled(ids.to(CUDA), attention.to(CUDA))
        assert torch.equal(got[0].cpu(), expected[0]) and torch.equal(got[1].cpu(), expected[1])


def test_masker_in_a_cuda_graph(masker_pair):
    """Captured once, replayed: each replay advances the seed on the device and draws fresh masks,
    equal to the CPU masker's for the same seeds."""
    cpu, gpu, enc = masker_pair
    ids, attention = enc["input_ids"].to(CUDA), enc["attention_mask"].to(CUDA)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        gpu(ids, attention)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_ids, static_labels = gpu(ids, attention)
    gpu.seed_state.copy_(cpu.seed_state.to(CUDA))
    previous = None
    for _ in range(3):
        graph.replay()
        expected = cpu(enc["input_ids"], enc["attention_mask"])
        assert torch.equal(static_ids.cpu(), expected[0]) and torch.equal(static_labels.cpu(), expected[1])
        if previous is not None:
            assert not torch.equal(static_labels.cpu(), previous)
        previous = static_labels.cpu().clone()


_DEVICE_ASSERTS = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]  # the package as the tests import it (built in place or installed)
import torch
from diffmask_fast import DifferenceMasker, weighted_mlm_loss
import tokenizers_offline
case = sys.argv[1]
if case == "masker":
    tokenizer = tokenizers_offline.bert_wordpiece()
    masker = DifferenceMasker(tokenizer, {{"the": 0.5}}, seed=0).to("cuda")
    ids = torch.tensor([[tokenizer.cls_token_id, len(tokenizer) + 3, tokenizer.sep_token_id]], device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # a synchronization inside the call raises
    masker(ids)
else:
    logits, labels = torch.randn(1, 2, 5, device="cuda"), torch.tensor([[1, -100]], device="cuda")
    weights = torch.tensor([[-1.0, 1.0]], device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    weighted_mlm_loss(logits, labels, weights)
torch.cuda.set_sync_debug_mode(0)
print("queued", flush=True)
torch.cuda.synchronize()
print("synchronized", flush=True)
"""


@pytest.mark.parametrize("case", ["masker", "loss"])
def test_bad_input_on_the_gpu_fails_the_device_assertion_without_a_synchronization(case, tmp_path):
    """Out-of-vocabulary ids and negative loss weights are checked on the device, without a
    synchronization in the call (sync debug mode "error" would raise), and fail by name: at the
    next synchronization, or at a launch after the assertion ran, which CUDA may report first
    (in a subprocess: the assertion leaves the CUDA context unusable)."""
    import subprocess
    import sys

    script = tmp_path / "device_asserts.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(_DEVICE_ASSERTS.format(root=os.path.dirname(tests), tests=tests))
    done = subprocess.run([sys.executable, str(script), case], capture_output=True, text=True, timeout=300)
    expected = {"masker": "input_ids hold ids outside the tokenizer's vocabulary",
                "loss": "loss_weights must be finite and non-negative where tokens are masked"}[case]
    assert done.returncode != 0 and "synchronized" not in done.stdout, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr[-2000:]
    assert "called a synchronizing CUDA operation" not in done.stderr, done.stderr[-2000:]


def test_trainer_on_gpu(tiny_bert_mlm, bert_wordpiece, tmp_path, masker_pair):
    from transformers import TrainingArguments

    from diffmask_fast import DifferenceMaskingTrainer

    _, gpu, enc = masker_pair
    train = [{"input_ids": row[row != bert_wordpiece.pad_token_id].tolist()} for row in enc["input_ids"][:32]]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                             save_strategy="no", report_to=[], logging_steps=1)
    trainer = DifferenceMaskingTrainer(model=tiny_bert_mlm.train(), args=args, train_dataset=train, eval_dataset=train[:8],
                                       masker=gpu)
    assert trainer.masker.seed_state.device.type == CUDA
    assert math.isfinite(trainer.train().training_loss)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_a_model_on_the_last_gpu_stays_there(bert_wordpiece):
    """WordEmbedder moved a model on cuda:1 to cuda:0 in place (its default device)."""
    from transformers import BertConfig, BertModel

    from diffmask_fast.embedding import WordEmbedder

    model = BertModel(BertConfig(vocab_size=len(bert_wordpiece), hidden_size=24, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=48)).eval()
    device = torch.device(CUDA, torch.cuda.device_count() - 1)
    embedder = WordEmbedder(model.to(device), bert_wordpiece, pooling="mean", progress=False)
    assert embedder.device == device and next(model.parameters()).device == device
    assert embedder.embed(["enzyme"]).shape == (1, model.config.hidden_size)


def test_a_model_on_the_gpu_is_probed_for_its_longest_input_without_a_device_assert():
    """A probe one position past the table on the GPU is a device-side assert, after which the
    process cannot use the device: the probe runs on a CPU twin, and the device still works."""
    from transformers import BertConfig, BertForMaskedLM

    from diffmask_fast.hf_loading import longest_input

    model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64)).eval().to(CUDA)
    assert longest_input(model, 80) == 64
    logits = model(input_ids=torch.randint(5, 100, (1, 64), device=CUDA)).logits
    torch.cuda.synchronize()
    assert torch.isfinite(logits).all()


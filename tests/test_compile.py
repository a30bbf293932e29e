"""Every operator under opcheck and torch.compile, on the CPU (tests/test_cuda.py repeats opcheck on
CUDA). opcheck runs the schema, fake-kernel, autograd-registration and AOT dispatch tests, with
dynamic shapes for the operators whose output sizes do not depend on the data."""

from __future__ import annotations

import pytest
import torch

import op_cases
from diffmask_fast import ops


def test_every_operator_has_cases():
    assert op_cases.operator_names() == set(op_cases.cases("cpu", 0)), (
        "a diffmask_fast operator has no opcheck cases: add them to tests/op_cases.py"
    )
    assert op_cases.supported_on("cpu") == op_cases.operator_names()  # every op has a CPU kernel


@pytest.mark.parametrize("name", sorted(op_cases.operator_names()))
def test_opcheck_cpu(name, seed):
    op = getattr(torch.ops.diffmask_fast, name).default
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if name not in op_cases.DATA_DEPENDENT:
        utils += ("test_aot_dispatch_dynamic",)
    for args in op_cases.cases("cpu", seed)[name]:
        torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_traces_the_fixed_size_ops(seed, dynamic):
    g = torch.Generator().manual_seed(seed)
    ids, never, starts, keys, values, random_ids = op_cases._batch(g, "cpu", batch=5, length=20)

    def step(ids, never, embeddings, anchors, weights, counts, seed_tensor):
        out = torch.ops.diffmask_fast.difference_mask_device(
            ids, never, starts, keys, values, random_ids, 0.3, 0, 0.0, 0.0, op_cases.MASK_ID, 0.8, 0.1, seed_tensor
        )
        similarity, nearest = ops.max_anchor_similarity(embeddings, anchors)
        chosen = torch.ops.diffmask_fast.sample_without_replacement(weights, counts, 3)
        found = ops.score_table_lookup(keys, values, out[0])[1]
        seed_tensor.add_(1)
        return out[0], out[1], out[4].sum(), similarity * 2, nearest, chosen, found

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for rows in (5, 3):
        args = (
            ids[:rows], never[:rows], torch.randn(rows, 7, 16, generator=g), torch.randn(9, 16, generator=g),
            torch.rand(rows, 30, generator=g), torch.full((rows,), 4),
        )
        seeds = torch.tensor([seed]), torch.tensor([seed])
        expected = step(*args, seeds[0])
        got = compiled(*args, seeds[1])
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
        assert int(seeds[1]) == seed + 1


def test_the_sampling_wrapper_compiles_whole_with_a_seed_and_with_a_graph_break_without(seed):
    """Drawing a seed from the RNG reads a tensor's value: a graph break, so fullgraph needs a seed."""
    g = torch.Generator().manual_seed(seed)
    weights, counts = torch.rand(4, 30, generator=g), torch.tensor([0, 3, 7, 30])

    def seeded(weights, counts):
        return ops.sample_without_replacement(weights * 2, counts, seed=seed)

    compiled = torch.compile(seeded, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(weights, counts), seeded(weights, counts))
    assert torch.equal(compiled(weights, counts).sum(1), counts)
    assert torch.equal(seeded(weights, counts), torch.ops.diffmask_fast.sample_without_replacement(weights, counts, seed))

    def drawn(weights, counts):
        return ops.sample_without_replacement(weights, counts)

    torch._dynamo.reset()
    breaking = torch.compile(drawn, backend="aot_eager")
    torch.manual_seed(seed)
    expected = drawn(weights, counts)
    torch.manual_seed(seed)
    assert torch.equal(breaking(weights, counts), expected)
    with pytest.raises(ValueError, match="give seed or generator, not both"):
        ops.sample_without_replacement(weights, counts, g, seed=1)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator, got int 42 \(pass an integer seed as "
                                        r"seed=42\)"):
        ops.sample_without_replacement(weights, counts, 42)


def test_drawing_the_seed_breaks_the_graph_where_dynamo_captures_scalars(seed):
    """With capture_scalar_outputs (what torch's graph-break message suggests) the drawn seed was
    traced as a symbolic int that the op refuses: the call failed instead of breaking the graph."""
    g = torch.Generator().manual_seed(seed)
    weights, counts = torch.rand(4, 30, generator=g), torch.tensor([0, 3, 7, 30])

    def drawn(weights, counts):
        return ops.sample_without_replacement(weights, counts)

    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(drawn, backend="aot_eager")
        torch.manual_seed(seed)
        expected = drawn(weights, counts)
        torch.manual_seed(seed)
        assert torch.equal(compiled(weights, counts), expected)
        assert not torch.equal(compiled(weights, counts), expected) or counts.sum() == 0, "a fresh draw per call"
    torch._dynamo.reset()

"""ops.top_dots and ops.ivf_max_dot, the probe selection and list scan of AnchorIndex's IVF,
against the reference on fresh random inputs: awkward list sizes (empty, shorter than a panel,
across panel widths and blocks of gathered queries), lists probed twice, k from 0 to C, NaN,
ties, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmask_fast import ops, reference

TOLERANCE = 1e-4


def random_lists(g: torch.Generator, sizes: list[int], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [sum(sizes), d], offsets [len(sizes) + 1]) of lists of the given sizes."""
    offsets = torch.tensor([0] + list(np.cumsum(sizes)), dtype=torch.int64)
    vectors = torch.randn(int(offsets[-1]), d, generator=g)
    return vectors, offsets


def assert_matches_reference(queries, probes, vectors, offsets, values, positions):
    """Values within float32 rounding of the reference; positions equal, or at a near tie a
    position whose exact product is as large (within the rounding)."""
    ref_values, ref_positions = reference.ivf_max_dot(queries.numpy(), probes.numpy(), vectors.numpy(),
                                                       offsets.numpy())
    values, positions = values.numpy(), positions.numpy()
    assert values.dtype == np.float32 and positions.dtype == np.int64
    none = ref_positions < 0
    assert (positions[none] == -1).all() and np.isneginf(values[none]).all()
    rows = np.nonzero(~none)[0]
    # Float32 products err by about sqrt(D) units of |q| |v| at most (NaN vectors never win).
    largest = np.nanmax(np.abs(vectors.numpy()), initial=0) * math.sqrt(queries.shape[1])
    scale = np.linalg.norm(queries.numpy()[rows], axis=1) * largest if len(rows) else np.zeros(1)
    np.testing.assert_allclose(values[rows], ref_values[rows], rtol=0, atol=float(TOLERANCE * max(scale.max(), 1)))
    for row in rows[positions[rows] != ref_positions[rows]]:
        chosen = positions[row]
        allowed = {m for lst in probes[row].tolist() for m in range(int(offsets[lst]), int(offsets[lst + 1]))}
        assert chosen in allowed, f"row {row}: position {chosen} is in none of its lists"
        exact = float(np.dot(queries[row].double().numpy(), vectors[chosen].double().numpy()))
        assert exact >= ref_values[row] - TOLERANCE * max(scale.max(), 1), f"row {row}: not a near tie"


@pytest.mark.parametrize("n, d, sizes, probes_per_query", [
    (1, 1, [1], 1),
    (37, 7, [0, 1, 5, 9, 0, 17, 33], 3),
    (300, 64, [3, 40, 79, 100, 16, 32, 48, 0, 8, 24], 4),
    (600, 64, [79, 0, 40], 2),  # ~400 queries a list: a block of 256 gathered queries and a rest
    (50, 100, [130, 257, 1, 31], 2),
    (20, 384, [79, 80, 81, 15], 4),
])
def test_matches_reference(seed, n, d, sizes, probes_per_query):
    g = torch.Generator().manual_seed(seed)
    vectors, offsets = random_lists(g, sizes, d)
    queries = torch.randn(n, d, generator=g)
    probes = torch.randint(0, len(sizes), (n, probes_per_query), generator=g)
    values, positions = ops.ivf_max_dot(queries, probes, vectors, offsets)
    assert_matches_reference(queries, probes, vectors, offsets, values, positions)


def test_random_shapes_match_reference(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        lists = int(torch.randint(1, 12, (1,), generator=g))
        sizes = torch.randint(0, 90, (lists,), generator=g).tolist()
        d = int(torch.randint(1, 70, (1,), generator=g))
        n = int(torch.randint(0, 80, (1,), generator=g))
        p = int(torch.randint(0, 5, (1,), generator=g))
        vectors, offsets = random_lists(g, sizes, d)
        queries = torch.randn(n, d, generator=g)
        probes = torch.randint(0, lists, (n, p), generator=g)
        values, positions = ops.ivf_max_dot(queries, probes, vectors, offsets)
        assert values.shape == positions.shape == (n,)
        assert_matches_reference(queries, probes, vectors, offsets, values, positions)


def test_independent_of_threads_and_of_probe_order(seed):
    g = torch.Generator().manual_seed(seed)
    vectors, offsets = random_lists(g, torch.randint(0, 120, (30,), generator=g).tolist(), 48)
    queries = torch.randn(700, 48, generator=g)
    probes = torch.randint(0, 30, (700, 6), generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.ivf_max_dot(queries, probes, vectors, offsets)
    finally:
        torch.set_num_threads(threads)
    many = ops.ivf_max_dot(queries, probes, vectors, offsets)
    shuffled = ops.ivf_max_dot(queries, probes[:, torch.randperm(6, generator=g)], vectors, offsets)
    for other in (many, shuffled):
        assert torch.equal(one[0], other[0]) and torch.equal(one[1], other[1])


def test_ties_go_to_the_smallest_position(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-3, 4, (4, 16), generator=g).float()  # exact products: copies tie exactly
    vectors = torch.cat([base, base, base[:2]])  # lists [0, 4), [4, 8), [8, 10): copies in every list
    offsets = torch.tensor([0, 4, 8, 10])
    queries = torch.randint(-3, 4, (50, 16), generator=g).float()
    probes = torch.tensor([[2, 1], [1, 2], [2, 2], [1, 0]] * 12 + [[0, 0], [2, 1]])
    values, positions = ops.ivf_max_dot(queries, probes, vectors, offsets)
    dots = queries @ vectors.T
    for row in range(50):
        allowed = sorted({m for lst in probes[row].tolist() for m in range(int(offsets[lst]), int(offsets[lst + 1]))})
        top = max(float(dots[row, m]) for m in allowed)
        assert positions[row] == min(m for m in allowed if float(dots[row, m]) == top)
        assert values[row] == top


def test_given_ids_ties_between_lists_go_to_the_smallest_id(seed):
    """An index's lists hold its anchors in id order list after list: a tie between lists went to
    the earlier list's anchor, not the first anchor as the exact op answers."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-3, 4, (6, 16), generator=g).float()  # exact products: copies tie exactly
    vectors = torch.cat([base[3:], base, base[:2]])  # lists [0, 3), [3, 9), [9, 11)
    offsets = torch.tensor([0, 3, 9, 11])
    ids = torch.tensor([3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1])  # what each vector stands for, increasing in a list
    queries = torch.randint(-3, 4, (60, 16), generator=g).float()
    probes = torch.randint(0, 3, (60, 2), generator=g)
    values, positions = ops.ivf_max_dot(queries, probes, vectors, offsets, ids)
    ref_values, ref_positions = reference.ivf_max_dot(queries.numpy(), probes.numpy(), vectors.numpy(),
                                                       offsets.numpy(), ids.numpy())
    assert positions.tolist() == ref_positions.tolist() and values.tolist() == ref_values.tolist()
    dots = queries @ vectors.T
    for row in range(60):
        allowed = {m for lst in probes[row].tolist() for m in range(int(offsets[lst]), int(offsets[lst + 1]))}
        top = max(float(dots[row, m]) for m in allowed)
        assert int(ids[positions[row]]) == min(int(ids[m]) for m in allowed if float(dots[row, m]) == top)
    with pytest.raises(ValueError, match=r"ids must be 1-D \[M\], one per vector, got shape \(3,\)"):
        ops.ivf_max_dot(queries, probes, vectors, offsets, ids[:3])
    with pytest.raises(TypeError, match="ids"):
        ops.ivf_max_dot(queries, probes, vectors, offsets, ids.int())
    # Within a list a tie goes to the first vector: the smallest id only where ids increase there.
    falling = ids.clone()
    falling[4], falling[5] = 2, 1  # list [3, 9) holds 0, 2, 1, ...
    with pytest.raises(ValueError, match=r"ids must increase within every list, got ids\[4\] = 2 then ids\[5\] = 1"):
        ops.ivf_max_dot(queries, probes, vectors, offsets, falling)
    with pytest.raises(ValueError, match=r"ids must increase within every list; list 1 holds \[0, 2, 1, 3, 4, 5\]"):
        reference.ivf_max_dot(queries.numpy(), probes.numpy(), vectors.numpy(), offsets.numpy(), falling.numpy())
    equal = ids.clone()
    equal[10] = 0  # list [9, 11) holds 0, 0
    with pytest.raises(ValueError, match=r"ids\[9\] = 0 then ids\[10\] = 0"):
        ops.ivf_max_dot(queries, probes, vectors, offsets, equal)
    # Bad offsets are named as such, not as ids that fall where the offsets put no list start.
    few = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):  # the ids fall at 2, inside a list
        ops.ivf_max_dot(queries[:2], few, vectors[:5], torch.tensor([1, 3, 5]), torch.tensor([3, 4, 0, 1, 2]))


def test_empty_inputs_and_lists():
    vectors, offsets = torch.randn(3, 5), torch.tensor([0, 0, 3, 3])
    queries = torch.randn(4, 5)
    values, positions = ops.ivf_max_dot(queries, torch.tensor([[0], [3], [0], [2]]).clamp_max(2), vectors, offsets)
    assert positions.tolist() == [-1, -1, -1, -1] and bool(torch.isneginf(values).all())  # lists 0 and 2 are empty
    values, positions = ops.ivf_max_dot(queries, torch.empty(4, 0, dtype=torch.int64), vectors, offsets)
    assert positions.tolist() == [-1] * 4 and bool(torch.isneginf(values).all())
    values, positions = ops.ivf_max_dot(torch.empty(0, 5), torch.empty(0, 2, dtype=torch.int64), vectors, offsets)
    assert values.shape == positions.shape == (0,)
    no_vectors = ops.ivf_max_dot(queries, torch.zeros(4, 1, dtype=torch.int64), torch.empty(0, 5), torch.tensor([0, 0]))
    assert no_vectors[1].tolist() == [-1] * 4


def test_nan_never_wins(seed):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(40, 24, generator=g)
    vectors[[3, 17, 30]] = float("nan")
    offsets = torch.tensor([0, 20, 40])
    queries = torch.randn(10, 24, generator=g)
    queries[4, 5] = float("nan")
    probes = torch.tensor([[0, 1]] * 10)
    values, positions = ops.ivf_max_dot(queries, probes, vectors, offsets)
    assert positions[4] == -1 and math.isinf(values[4]) and values[4] < 0  # every product of the NaN query is NaN
    assert set(positions.tolist()).isdisjoint({3, 17, 30})
    assert_matches_reference(queries, probes, vectors, offsets, values, positions)


def test_strided_inputs_are_read_as_they_are(seed):
    g = torch.Generator().manual_seed(seed)
    vectors, offsets = random_lists(g, [10, 50, 3], 33)
    queries = torch.randn(33, 60, generator=g).T[:, :33]  # [60, 33], column-major
    probes = torch.randint(0, 3, (2, 60), generator=g).T
    expected = ops.ivf_max_dot(queries.contiguous(), probes.contiguous(), vectors, offsets)
    found = ops.ivf_max_dot(queries, probes, vectors.T.contiguous().T, offsets)
    assert torch.equal(expected[0], found[0]) and torch.equal(expected[1], found[1])
    strided_offsets = torch.stack([offsets, torch.full_like(offsets, -1)], 1)[:, 0]
    found = ops.ivf_max_dot(queries, probes, vectors, strided_offsets)
    assert torch.equal(expected[0], found[0]) and torch.equal(expected[1], found[1])
    # Ids given as a view: copies of a vector in two lists tie, and the smaller id wins.
    copies = torch.cat([vectors[:3], vectors[:3]])
    ids = torch.tensor([7, 8, 9, 0, 1, 2])
    strided_ids = torch.stack([ids, torch.zeros_like(ids)], 1)[:, 0]
    probes = torch.tensor([[0, 1]] * 60)
    _, positions = ops.ivf_max_dot(queries, probes, copies, torch.tensor([0, 3, 6]), strided_ids)
    assert bool((positions >= 3).all()), positions  # the second list's ids are smaller


@pytest.mark.parametrize("change, error, message", [
    (dict(queries=torch.randn(3, 4, dtype=torch.float64)), TypeError, "queries must have dtype torch.float32"),
    (dict(vectors=torch.randn(5, 4).half()), TypeError, "vectors must have dtype torch.float32"),
    (dict(probes=torch.zeros(3, 2, dtype=torch.int32)), TypeError, "probes must have dtype torch.int64"),
    (dict(offsets=torch.tensor([0.0, 5.0])), TypeError, "offsets must have dtype torch.int64"),
    (dict(queries=torch.randn(3, 4, 1)), ValueError, r"queries must be 2-D \[N, D\]"),
    (dict(queries=torch.randn(3, 5)), ValueError, "must share D"),
    (dict(queries=torch.randn(3, 0), vectors=torch.randn(5, 0)), ValueError, "positive dimension D"),
    (dict(probes=torch.zeros(2, 2, dtype=torch.int64)), ValueError, "a row for every query"),
    (dict(probes=torch.zeros(3, dtype=torch.int64)), ValueError, r"probes must be 2-D \[N, P\]"),
    (dict(offsets=torch.tensor([], dtype=torch.int64)), ValueError, "at least one value"),
    (dict(offsets=torch.tensor([1, 5])), ValueError, r"offsets\[0\] must be 0"),
    (dict(offsets=torch.tensor([-2, 3, 5])), ValueError, r"offsets\[0\] must be 0, got -2"),  # read before the vectors
    (dict(offsets=torch.tensor([0, 4, 3, 5])), ValueError, "must not decrease"),
    (dict(offsets=torch.tensor([0, 6, 5])), ValueError, "must not decrease"),  # the last pair alone
    (dict(offsets=torch.tensor([0, 4])), ValueError, r"end at the number of vectors \(5\)"),
    (dict(offsets=torch.tensor([0, 2, 6])), ValueError, r"end at the number of vectors \(5\), got 6"),
    (dict(probes=torch.tensor([[0, 1], [1, 2], [0, 0]])), ValueError, r"probes must name lists in \[0, 2\), got 2"),
    (dict(probes=torch.tensor([[0, 1], [1, 0], [0, 2]])), ValueError, r"in \[0, 2\), got 2"),  # the last one
    (dict(probes=torch.tensor([[0, 1], [-1, 0], [0, 0]])), ValueError, r"in \[0, 2\), got -1"),
    (dict(queries=[[1.0] * 4] * 3), TypeError, "queries must be a torch.Tensor"),
])
def test_bad_input_is_named(change, error, message):
    arguments = dict(queries=torch.randn(3, 4), probes=torch.zeros(3, 2, dtype=torch.int64),
                     vectors=torch.randn(5, 4), offsets=torch.tensor([0, 2, 5]))
    arguments.update(change)
    with pytest.raises(error, match=message):
        ops.ivf_max_dot(**arguments)


def test_the_registered_ops_check_what_the_python_wrappers_check():
    """A direct call (``torch.ops.diffmask_fast``) meets the C++ checks alone: ids one too many, or
    k past the number of vectors, read past the end of their buffers."""
    queries, vectors = torch.randn(3, 4), torch.randn(5, 4)
    probes, offsets = torch.zeros(3, 2, dtype=torch.int64), torch.tensor([0, 2, 5])
    with pytest.raises(ValueError, match=r"ids must be 1-D \[M\], one per vector"):
        torch.ops.diffmask_fast.ivf_max_dot(queries, probes, vectors, offsets, torch.arange(6))
    with pytest.raises(ValueError, match=r"k must be in \[0, C\]"):
        torch.ops.diffmask_fast.top_dots(queries, vectors, 6)


def test_a_query_whose_products_are_all_minus_infinity_takes_the_first_vector():
    """-inf is a product (of an infinite vector), not the absence of one: the position is the
    first vector's, as the reference has it, and with ids, the smallest id's."""
    queries, vectors = torch.tensor([[1.0], [2.0]]), torch.tensor([[-math.inf], [-math.inf], [-math.inf]])
    probes, offsets = torch.tensor([[1, 0], [0, 1]]), torch.tensor([0, 1, 3])
    for ids in (None, torch.tensor([5, 0, 1])):
        values, positions = ops.ivf_max_dot(queries, probes, vectors, offsets, ids)
        ref_values, ref_positions = reference.ivf_max_dot(queries.numpy(), probes.numpy(), vectors.numpy(),
                                                           offsets.numpy(), None if ids is None else ids.numpy())
        assert positions.tolist() == ref_positions.tolist() == ([0, 0] if ids is None else [1, 1])
        assert values.tolist() == ref_values.tolist() == [-math.inf, -math.inf]


def test_ids_may_fall_at_the_start_of_a_last_list_of_one_vector():
    offsets, ids = torch.tensor([0, 2, 3]), torch.tensor([1, 2, 0])  # the last list's one id below the one before
    values, positions = ops.ivf_max_dot(torch.ones(1, 2), torch.tensor([[1]]), torch.ones(3, 2), offsets, ids)
    assert positions.tolist() == [2] and values.tolist() == [2.0]


def test_meta_tensors_give_shapes():
    values, positions = ops.ivf_max_dot(torch.empty(6, 4, device="meta"), torch.empty(6, 3, dtype=torch.int64,
                                                                                       device="meta"),
                                        torch.empty(9, 4, device="meta"), torch.empty(4, dtype=torch.int64,
                                                                                      device="meta"))
    assert values.shape == positions.shape == (6,) and values.dtype == torch.float32 and positions.dtype == torch.int64


# -- top_dots ---------------------------------------------------------------------------------


def assert_top_matches_reference(queries, vectors, k, found):
    """Rows equal the reference's, except where float32 rounding swaps vectors whose exact
    products lie within the rounding of the k-th largest."""
    expected = reference.top_dots(queries.numpy(), vectors.numpy(), k)
    found = found.numpy()
    assert found.shape == expected.shape and found.dtype == np.int64
    assert (np.diff(found, axis=1) > 0).all(), "rows must be in increasing index order, without repeats"
    dots = queries.double().numpy() @ vectors.double().numpy().T
    tolerance = TOLERANCE * math.sqrt(queries.shape[1]) * max(float(np.nanmax(np.abs(dots), initial=1)), 1)
    for row in np.nonzero((found != expected).any(axis=1))[0]:
        swapped = set(found[row]) ^ set(expected[row])
        kth = np.sort(dots[row][expected[row]])[0]
        assert all(abs(dots[row][c] - kth) <= tolerance for c in swapped), f"row {row}: {sorted(swapped)}"


@pytest.mark.parametrize("n, d, c, k", [
    (1, 1, 1, 1), (5, 3, 7, 0), (40, 17, 33, 33), (70, 64, 100, 9),
    (130, 384, 2530, 128),  # the sampled threshold (C >= 1024, k <= C / 4)
    (65, 24, 1100, 275), (3, 8, 1500, 1),
])
def test_top_dots_matches_reference(seed, n, d, c, k):
    g = torch.Generator().manual_seed(seed)
    queries, vectors = torch.randn(n, d, generator=g), torch.randn(c, d, generator=g)
    assert_top_matches_reference(queries, vectors, k, ops.top_dots(queries, vectors, k))


def test_top_dots_ties_and_nan_go_by_index(seed):
    g = torch.Generator().manual_seed(seed)
    # Small integers: every product is exact in float32 whatever the kernel's order of sums, so
    # copies tie exactly.
    base = torch.randint(-3, 4, (6, 16), generator=g).float()
    vectors = torch.cat([base] * 300)  # 1,800 vectors, every value 300 times: ties at every threshold
    vectors[torch.randint(0, 1800, (40,), generator=g)] = float("nan")
    queries = torch.randint(-3, 4, (20, 16), generator=g).float()
    for k in (1, 5, 299, 300, 301, 450, 1800):
        found = ops.top_dots(queries, vectors, k)
        assert torch.equal(found, torch.from_numpy(reference.top_dots(queries.numpy(), vectors.numpy(), k))), k


@pytest.mark.parametrize("c", [20, 37, 100, 1029])  # C mod 16 from 1 to 8: every column by the same kernel
def test_top_dots_copies_of_a_vector_tie_exactly(seed, c):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(1, 24, generator=g).repeat(c, 1)
    queries = torch.randn(64, 24, generator=g)
    assert ops.top_dots(queries, vectors, 1).flatten().tolist() == [0] * 64
    assert ops.top_dots(queries, vectors, 3).tolist() == [[0, 1, 2]] * 64


def test_top_dots_ranks_nan_as_minus_infinity():
    query = torch.tensor([[1.0]])
    for column, expected in (([float("nan"), float("-inf")], [0]), ([float("-inf"), float("nan")], [0]),
                             ([float("nan"), -1e30], [1])):
        vectors = torch.tensor(column).unsqueeze(1)
        assert ops.top_dots(query, vectors, 1)[0].tolist() == expected, column
        assert reference.top_dots(query.numpy(), vectors.numpy(), 1)[0].tolist() == expected, column


def test_top_dots_when_the_sample_threshold_keeps_too_few():
    """Every sampled point (each 8th of 2,048) above the rest: the threshold taken from the
    sample keeps 256 values, fewer than k = 300, and every value is searched instead."""
    c, k = 2048, 300
    vectors = torch.full((c, 2), -1.0)
    vectors[:: c // 256, 0] = 0.5
    queries = torch.tensor([[1.0, 0.0]])
    found = ops.top_dots(queries, vectors, k)
    assert torch.equal(found, torch.from_numpy(reference.top_dots(queries.numpy(), vectors.numpy(), k)))
    assert (found[0] % 8 == 0).sum() == 256 and found[0][found[0] % 8 != 0].max() < 60  # ties: the first ones


def test_top_dots_independent_of_threads(seed):
    g = torch.Generator().manual_seed(seed)
    queries, vectors = torch.randn(300, 48, generator=g), torch.randn(1500, 48, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.top_dots(queries, vectors, 100)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, ops.top_dots(queries, vectors, 100))
    assert torch.equal(ops.top_dots(queries[7:9], vectors, 100), one[7:9])  # a row's result is its own


@pytest.mark.parametrize("args, error, message", [
    ((torch.randn(3, 4).double(), torch.randn(5, 4), 2), TypeError, "queries must have dtype torch.float32"),
    ((torch.randn(3, 4), torch.randn(5, 4).half(), 2), TypeError, "vectors must have dtype torch.float32"),
    ((torch.randn(3, 4), torch.randn(5, 3), 2), ValueError, "must share D"),
    ((torch.randn(3), torch.randn(5, 3), 2), ValueError, r"queries must be 2-D \[N, D\]"),
    ((torch.randn(3, 0), torch.randn(5, 0), 2), ValueError, "positive dimension D"),
    ((torch.randn(3, 4), torch.randn(5, 4), 6), ValueError, r"k must be in \[0, C\] = \[0, 5\], got 6"),
    ((torch.randn(3, 4), torch.randn(5, 4), -1), ValueError, "k must be in"),
    ((torch.randn(3, 4), torch.randn(5, 4), 2.0), TypeError, "k must be an integer"),
    ((torch.randn(3, 4), torch.randn(5, 4), True), TypeError, "k must be an integer"),
])
def test_top_dots_bad_input_is_named(args, error, message):
    with pytest.raises(error, match=message):
        ops.top_dots(*args)


def test_top_dots_meta_shapes():
    found = ops.top_dots(torch.empty(6, 4, device="meta"), torch.empty(9, 4, device="meta"), 3)
    assert found.shape == (6, 3) and found.dtype == torch.int64

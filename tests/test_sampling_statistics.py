"""Distributions of the compiled sampling against the exact laws of diffmask_fast.reference.

Frequencies over many independent rows (one call, identical rows) must lie within 5 binomial
standard errors (plus 1e-9 for probabilities 0 and 1) of the exact probability: with ~10^2
comparisons per run a correct implementation fails with probability below 10^-4. Inputs are
fresh random draws each run; the seed is printed and in every message (replay with
DIFFMASK_FAST_TEST_SEED).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmask_fast import reference

from diffmask_fast import ops  # a missing extension fails the suite rather than skipping it

ROWS = 200_000


def within_binomial(frequency: float, probability: float, trials: int) -> bool:
    probability = min(max(probability, 0.0), 1.0)
    return abs(frequency - probability) <= 5 * math.sqrt(probability * (1 - probability) / trials) + 1e-9


def random_weight_vector(rng: np.random.Generator, n: int) -> list[float]:
    """Positive weights of varied size, one zero and one tie."""
    weights = list(rng.gamma(0.7, size=n) + 1e-3)
    weights[rng.integers(n)] = 0.0
    i, j = rng.choice(n, size=2, replace=False)
    if weights[i] > 0 and weights[j] > 0:
        weights[j] = weights[i]
    return weights


def test_inclusion_matches_successive_sampling(seed):
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    for n in (5, 6, 6):
        weights = random_weight_vector(rng, n)
        for k in range(1, n + 1):
            exact = reference.successive_sampling_inclusion(weights, k)
            rows = torch.tensor(weights, dtype=torch.float64).expand(ROWS, n)
            picked = ops.sample_without_replacement(rows, torch.full((ROWS,), k), generator=generator)
            frequency = picked.double().mean(0).tolist()
            for i in range(n):
                assert within_binomial(frequency[i], exact[i], ROWS), (
                    f"seed={seed} weights={weights} k={k} position={i}: {frequency[i]:.5f} vs exact {exact[i]:.5f}"
                )


def test_inclusion_float32_extreme_ratios(seed):
    """Weights spanning six orders of magnitude, in float32."""
    rng = np.random.default_rng(seed)
    weights = list(10.0 ** rng.uniform(-3, 3, size=5))
    exact = reference.successive_sampling_inclusion(weights, 2)
    rows = torch.tensor(weights, dtype=torch.float32).expand(ROWS, 5)
    frequency = ops.sample_without_replacement(rows, torch.full((ROWS,), 2), torch.Generator().manual_seed(seed))
    frequency = frequency.double().mean(0).tolist()
    for i in range(5):
        # float32 rounding of the weights moves the law by ~1e-7, far inside the bound
        assert within_binomial(frequency[i], exact[i], ROWS), f"seed={seed} weights={weights} position={i}"


@pytest.mark.parametrize("scale", [1e-310, 1e-320, 1e-300])
def test_inclusion_of_subnormal_float64_weights(seed, scale):
    """Keys E / w overflow for weights below ~1e-307; the law must not change with the scale
    (1e-300, a normal number whose keys do not overflow, is the control)."""
    rng = np.random.default_rng(seed)
    scaled = torch.tensor(rng.uniform(1, 8, size=5), dtype=torch.float64) * scale
    picked = ops.sample_without_replacement(scaled.expand(ROWS, 5), torch.full((ROWS,), 2),
                                            torch.Generator().manual_seed(seed))
    exact = reference.successive_sampling_inclusion(scaled.tolist(), 2)  # the subnormals as stored
    frequency = picked.double().mean(0).tolist()
    for i in range(5):
        assert within_binomial(frequency[i], exact[i], ROWS), f"seed={seed} scale={scale} position={i}"


def test_inclusion_of_weights_spanning_the_whole_float64_range(seed):
    """Normal weights beside subnormal ones: the keys E / w of the subnormal ones overflow. Once
    the normal ones are drawn, the rest must follow the law among the tiny weights, not their
    positions; a row of huge weights (whose sum overflows) is the other end."""
    rng = np.random.default_rng(seed)
    for normal in (1, 2):
        tiny = list(rng.uniform(1, 8, size=3) * 1e-320)
        weights = list(rng.uniform(0.5, 2, size=normal)) + tiny
        order = rng.permutation(len(weights))
        weights = [weights[i] for i in order]
        for k in (normal + 1, normal + 2):
            exact = reference.successive_sampling_inclusion(weights, k)
            rows = torch.tensor(weights, dtype=torch.float64).expand(ROWS, len(weights))
            picked = ops.sample_without_replacement(rows, torch.full((ROWS,), k), torch.Generator().manual_seed(seed))
            frequency = picked.double().mean(0).tolist()
            for i in range(len(weights)):
                assert within_binomial(frequency[i], exact[i], ROWS), f"seed={seed} weights={weights} k={k} position={i}"
    huge = list(rng.uniform(0.2, 1, size=4) * 1.7e308)
    exact = reference.successive_sampling_inclusion(huge, 2)
    picked = ops.sample_without_replacement(torch.tensor(huge, dtype=torch.float64).expand(ROWS, 4),
                                            torch.full((ROWS,), 2), torch.Generator().manual_seed(seed))
    frequency = picked.double().mean(0).tolist()
    for i in range(4):
        assert within_binomial(frequency[i], exact[i], ROWS), f"seed={seed} weights={huge} position={i}"


def exact_word_inclusion(scores, p, weighting, uniform_mix) -> list[float]:
    """P(word i is masked) under reference.mask_sequence: stochastic budget, successive sampling
    over positive weights, then a uniform draw among zero-weight words."""
    n = len(scores)
    weights = reference.word_weights(scores, weighting, uniform_mix)
    positive = sum(w > 0 for w in weights)
    zero = n - positive
    expected = p * n
    low = math.floor(expected)
    budgets = {min(low, n): 1 - (expected - low)}
    if expected - low > 0:
        budgets[min(low + 1, n)] = budgets.get(min(low + 1, n), 0) + expected - low
    inclusion = [0.0] * n
    for budget, probability in budgets.items():
        drawn = reference.successive_sampling_inclusion(weights, budget)
        extra = max(budget - positive, 0)
        for i in range(n):
            inclusion[i] += probability * (drawn[i] if weights[i] > 0 else (extra / zero if zero else 0.0))
    return inclusion


def one_sequence(rng: np.random.Generator):
    """A short wordpiece sequence: [CLS] + 7 distinct words of 1-3 tokens + [SEP], with word
    scores including a negative, a zero and a tie."""
    vocabulary = 64
    starts = torch.zeros(vocabulary, dtype=torch.bool)
    starts[:32] = True  # ids < 32 start words, ids >= 32 continue them
    ids, never, groups = [1], [True], []
    for first in rng.choice(np.arange(2, 32), size=7, replace=False):  # distinct words
        length = int(rng.integers(1, 4))
        group = list(range(len(ids), len(ids) + length))
        ids.append(int(first))
        ids.extend(int(rng.integers(32, 64)) for _ in range(length - 1))
        never.extend([False] * length)
        groups.append(group)
    ids.append(0)
    never.append(True)
    scores = list(rng.normal(size=7).round(3))
    scores[int(rng.integers(7))] = -0.7
    scores[int(rng.integers(7))] = 0.0
    scores[5] = scores[2]
    return ids, never, groups, starts, scores


@pytest.mark.parametrize(
    "weighting, uniform_mix, p, no_positive_score",
    [("similarity", 0.0, 0.4, False), ("similarity", 0.25, 0.3, False), ("rank", 0.0, 0.5, False),
     ("similarity", 0.0, 0.9, False), ("rank", 0.3, 0.4, False), ("similarity", 0.5, 0.3, True)],
)
def test_difference_mask_word_frequencies(seed, weighting, uniform_mix, p, no_positive_score):
    rng = np.random.default_rng(seed)
    ids, never, groups, starts, scores = one_sequence(rng)
    if no_positive_score:  # every weight zero: only the uniform mix tells the words apart
        scores = [-abs(s) for s in scores]
    table = ops.ScoreHashTable()
    hashes = [ops.word_hash([ids[i] for i in group]) for group in groups]
    table.insert(hashes, scores)
    rows = 100_000
    batch = torch.tensor(ids).expand(rows, len(ids)).contiguous()
    never_word = torch.tensor(never).expand(rows, len(ids)).contiguous()
    out = ops.difference_mask(
        batch, never_word, starts, *table.tensors(), torch.arange(2, 32), mask_token_id=99,
        mlm_probability=p, weighting=weighting, uniform_mix=uniform_mix, seed=seed,
    )
    masked = out.labels != -100
    exact = exact_word_inclusion([float(np.float32(s)) for s in scores], p, weighting, uniform_mix)
    message = f"seed={seed} scores={scores} weighting={weighting} mix={uniform_mix} p={p}"
    for w, group in enumerate(groups):
        frequency = masked[:, group[0]].double().mean().item()
        assert within_binomial(frequency, exact[w], rows), f"{message} word={w}: {frequency:.5f} vs {exact[w]:.5f}"
        assert torch.equal(masked[:, group].all(1), masked[:, group].any(1)), message

    # The same law from the reference implementation itself, simulated (fewer runs: it is slow).
    runs = 3000
    tokens = [("[CLS]" if i == 0 else "[SEP]") if nw else (f"t{t}" if t < 32 else f"##t{t}") for i, (t, nw) in enumerate(zip(ids, never))]
    score_of = {tuple(ids[i] for i in group): float(np.float32(s)) for group, s in zip(groups, scores)}
    counts = np.zeros(len(groups))
    simulation = np.random.default_rng(seed + 1)
    for _ in range(runs):
        _, _, mask = reference.mask_sequence(
            tokens, ids, never, "wordpiece", lambda word: score_of[tuple(word)], 99, list(range(2, 32)), simulation,
            mlm_probability=p, weighting=weighting, uniform_mix=uniform_mix,
        )
        counts += [mask[group[0]] for group in groups]
    fused = masked[:, [group[0] for group in groups]].double().mean(0).numpy()
    simulated = counts / runs
    for w in range(len(groups)):
        # Two-sample bound: the simulation's standard error dominates.
        q = min(max(exact[w], 0.0), 1.0)
        bound = 5 * math.sqrt(q * (1 - q) * (1 / runs + 1 / rows)) + 1e-9
        assert abs(simulated[w] - fused[w]) <= bound, f"{message} word={w}: reference {simulated[w]} vs op {fused[w]}"


def test_replacement_and_budget_statistics(seed):
    rng = np.random.default_rng(seed)
    ids, never, groups, starts, scores = one_sequence(rng)
    table = ops.ScoreHashTable()
    table.insert([ops.word_hash([ids[i] for i in group]) for group in groups], scores)
    rows = 50_000
    batch = torch.tensor(ids).expand(rows, len(ids)).contiguous()
    never_word = torch.tensor(never).expand(rows, len(ids)).contiguous()
    p, mask_share, random_share = 0.35, 0.6, 0.25
    random_ids = torch.arange(100, 110)
    out = ops.difference_mask(
        batch, never_word, starts, *table.tensors(), random_ids, mask_token_id=99, mlm_probability=p,
        mask_replace_prob=mask_share, random_replace_prob=random_share, seed=seed,
    )
    message = f"seed={seed}"
    expected = p * len(groups)  # 2.45: 2 or 3 words
    frac = expected - math.floor(expected)
    assert set(out.masked_words.unique().tolist()) <= {math.floor(expected), math.floor(expected) + 1}, message
    assert within_binomial((out.masked_words == math.floor(expected) + 1).double().mean().item(), frac, rows), message
    masked = out.labels != -100
    total = int(masked.sum())
    replaced = out.masked_ids[masked]
    kept = batch[masked]
    for share, count in [
        (mask_share, int((replaced == 99).sum())),
        (random_share, int(torch.isin(replaced, random_ids).sum())),
        (1 - mask_share - random_share, int((replaced == kept).sum())),
    ]:
        assert within_binomial(count / total, share, total), f"{message} share={share}"
    drawn = replaced[torch.isin(replaced, random_ids)]
    histogram = torch.bincount(drawn - 100, minlength=10).double()
    for count in histogram.tolist():  # uniform over random_token_ids
        assert within_binomial(count / drawn.numel(), 0.1, drawn.numel()), message


@pytest.mark.parametrize("op", ["difference_mask", "difference_mask_device"])
def test_words_missing_from_the_table_score_unknown_score(seed, op):
    rng = np.random.default_rng(seed)
    ids, never, groups, starts, scores = one_sequence(rng)
    known = [w for w in range(len(groups)) if w not in (1, 4)]  # words 1 and 4 are not in the table
    table = ops.ScoreHashTable()
    table.insert([ops.word_hash([ids[i] for i in groups[w]]) for w in known], [scores[w] for w in known])
    unknown_score, p = 0.4, 0.4
    rows = 100_000
    batch = torch.tensor(ids).expand(rows, len(ids)).contiguous()
    never_word = torch.tensor(never).expand(rows, len(ids)).contiguous()
    out = getattr(ops, op)(batch, never_word, starts, *table.tensors(), torch.arange(2, 32), mask_token_id=99,
                           mlm_probability=p, unknown_score=unknown_score, seed=seed)
    if op == "difference_mask":
        assert sorted(out.misses[:, 1:3].tolist()) == [[0, groups[1][0]], [0, groups[4][0]]]  # listed once each
    else:
        assert torch.all(out.missed_words == 2)
    masked = out.labels != -100
    effective = [float(np.float32(s)) if w in known else unknown_score for w, s in enumerate(scores)]
    exact = exact_word_inclusion(effective, p, "similarity", 0.0)
    for w, group in enumerate(groups):
        frequency = masked[:, group[0]].double().mean().item()
        assert within_binomial(frequency, exact[w], rows), (
            f"seed={seed} op={op} scores={effective} word={w}: {frequency:.5f} vs exact {exact[w]:.5f}")

"""The collator's per-word masking law against the exact law of diffmask_fast.reference.

For random short sentences (few words, so the exact inclusion probabilities can be enumerated),
on every tokenizer family, with score tables that hold positive, zero, negative and missing words
(``unknown_score``), under every weighting and with and without ``uniform_mix``: how often each
word is masked (its tokens carry labels) must match

    (1 - f) * inclusion(floor(p n)) + f * inclusion(floor(p n) + 1),   f = frac(p n),

where inclusion(k) is successive sampling of k words over ``reference.word_weights`` (enumerated
by ``reference.successive_sampling_inclusion``), the budget left over once every positive-weight
word is taken being spread uniformly over the zero-weight words (``reference.choose_words``).

Each count is compared with its exact binomial law: a two-sided exact p-value below 1e-6 divided
by the number of comparisons in the test fails it, so a correct implementation fails a test
with probability below 1e-6. Inputs are fresh each run (the ``seed`` fixture; replay with
DIFFMASK_FAST_TEST_SEED=<seed>).

Power (exact, law_checks.power_against_bias, at 20,000 rows and ~30 comparisons): a word whose
masking probability is off by 10% (relative) fails the test with probability at least 0.999
when that probability is 0.28 or more, and by 20% when it is 0.095 or more. Planted errors
move several words by more than that and fail the cases they touch: negative scores not
clipped (the similarity cases), ranks counted from 0 (the rank cases), a mix without its
(1 - uniform_mix) factor (the mixed cases), the budget rounded up with probability
1 - frac(p n) (every case), unknown_score ignored (wherever it is positive, or under rank).
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest
import torch

import tokenizers_offline
from law_checks import binomial_p_value, words_of
from diffmask_fast import reference
from diffmask_fast.collator import DifferenceMaskingCollator
from diffmask_fast.scoring import ScoreTable
from diffmask_fast.tokenization import word_boundaries

TOKENIZERS = ["bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram", "word_level_whitespace",
              "minilm_tokenizer"]

#: False-failure probability allowed per test (split over its comparisons).
ALPHA = 1e-6
SENTENCES = 4
ROWS = 20_000  # per sentence
MAX_WORDS = 8  # keeps the enumeration of successive sampling cheap


def exact_inclusion(scores: list[float], p: float, weighting: str, uniform_mix: float) -> np.ndarray:
    """Probability that each word of one sequence is masked: stochastic-rounding budget, then
    successive sampling over positive weights, the rest uniformly over zero-weight words."""
    n = len(scores)
    weights = reference.word_weights(scores, weighting, uniform_mix)
    positive = np.array([w > 0 for w in weights])

    def for_budget(k: int) -> np.ndarray:
        k = min(k, n)
        inclusion = np.array(reference.successive_sampling_inclusion(weights, k))
        left = k - int(positive.sum())
        if left > 0:
            inclusion[~positive] += left / int((~positive).sum())
        return inclusion

    low = math.floor(p * n)
    fraction = p * n - low
    exact = (1 - fraction) * for_budget(low)
    if fraction > 0:
        exact += fraction * for_budget(low + 1)
    return exact


@functools.lru_cache(maxsize=None)
def _plain_words() -> tuple[str, ...]:
    words = {w.lower() for line in tokenizers_offline.training_lines() for w in line.split()}
    return tuple(sorted(w for w in words if w.isascii() and w.isalpha() and len(w) >= 2))


def word_pool(tokenizer) -> list[str]:
    """Plain lowercase words the tokenizer encodes without its unknown token."""
    unknown = tokenizer.unk_token_id
    return [w for w in _plain_words() if unknown not in tokenizer(w, add_special_tokens=False)["input_ids"]]


def random_sentence(tokenizer, pool: list[str], rng: random.Random, boundaries=None):
    """(text, ids, groups, keys) of a sentence of 3 to MAX_WORDS words: plain words, sometimes a
    repeated word (tied scores), a capital or punctuation (normalized away)."""
    boundaries = word_boundaries(tokenizer) if boundaries is None else boundaries
    for _ in range(1000):
        words = rng.sample(pool, rng.randint(2, 6))
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        if rng.random() < 0.5:
            words[-1] += rng.choice([".", ",", ";"])
        text = " ".join(words)
        ids = tokenizer(text)["input_ids"]
        groups, decoded = words_of(tokenizer, ids, boundaries)
        if 3 <= len(groups) <= MAX_WORDS:
            return text, ids, groups, [reference.normalize_word(w) for w in decoded]
    raise AssertionError("no short sentence found")


def random_table(keys: list[str], rng: random.Random) -> tuple[dict, float]:
    """Scores for ``keys``: each one missing, zero, negative or positive (every kind present
    when there are enough keys), one positive score tied with another; and an unknown_score,
    negative or positive."""
    keys = sorted(keys)
    rng.shuffle(keys)
    kinds = ["missing", "zero", "negative", "positive"] + [
        rng.choice(["missing", "zero", "negative", "positive", "positive"]) for _ in keys[4:]]
    scores = {}
    for key, kind in zip(keys, kinds):
        if kind == "zero":
            scores[key] = 0.0
        elif kind == "negative":
            scores[key] = rng.uniform(-1.0, -0.01)
        elif kind == "positive":
            scores[key] = rng.uniform(0.02, 1.0)
    positive = [k for k in scores if scores[k] > 0]
    if len(positive) >= 2:
        first, second = rng.sample(positive, 2)
        scores[second] = scores[first]
    unknown = rng.choice([rng.uniform(-1.0, -0.01), rng.uniform(0.02, 1.0)])
    return scores, unknown


@pytest.mark.parametrize("weighting, mixed", [("similarity", False), ("rank", False), ("similarity", True),
                                              ("rank", True)])
@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
def test_word_frequencies_match_the_exact_law(request, tokenizer_name, weighting, mixed, seed):
    tokenizer = request.getfixturevalue(tokenizer_name)
    rng = random.Random(seed)
    pool = word_pool(tokenizer)
    boundaries = word_boundaries(tokenizer)
    sentences = [random_sentence(tokenizer, pool, rng, boundaries) for _ in range(SENTENCES)]
    scores, unknown = random_table(list({k for s in sentences for k in s[3]}), rng)
    p = rng.uniform(0.1, 0.6)
    uniform_mix = rng.uniform(0.05, 0.95) if mixed else 0.0
    table = ScoreTable(scores, unknown_score=unknown)
    collator = DifferenceMaskingCollator(tokenizer, table, mlm_probability=p, weighting=weighting,
                                         uniform_mix=uniform_mix, seed=seed)
    batch = collator([ids for _, ids, _, _ in sentences for _ in range(ROWS)])
    labels, masked_ids = batch["labels"], batch["input_ids"]
    setting = (f"seed={seed} weighting={weighting} uniform_mix={uniform_mix:.4f} p={p:.4f} "
               f"unknown_score={unknown:.4f} scores={scores}")
    comparisons = sum(len(groups) + 1 for _, _, groups, _ in sentences)
    for index, (text, ids, groups, keys) in enumerate(sentences):
        message = f"{setting} text={text!r} keys={keys}"
        rows = slice(index * ROWS, (index + 1) * ROWS)
        original = torch.tensor(ids)
        chosen = labels[rows, : len(ids)] != -100
        # Whole words only; never a token of no word (special tokens) nor padding; labels hold
        # the original ids where something is masked; the rest is unchanged.
        in_word = torch.zeros(len(ids), dtype=torch.bool)
        for group in groups:
            in_word[group] = True
            assert (chosen[:, group] == chosen[:, group[:1]]).all(), f"{message}: word {group} masked in part"
        assert not chosen[:, ~in_word].any(), f"{message}: a token of no word masked"
        assert (labels[rows, len(ids):] == -100).all(), message
        assert (labels[rows, : len(ids)][chosen] == original.expand_as(chosen)[chosen]).all(), message
        kept = masked_ids[rows, : len(ids)][~chosen]
        assert (kept == original.expand_as(chosen)[~chosen]).all(), message
        # The budget: floor or ceil of p * n words, ceil with probability frac(p * n).
        n = len(groups)
        word_flags = chosen[:, [g[0] for g in groups]]
        counts = word_flags.sum(1)
        low = math.floor(p * n)
        assert ((counts == low) | (counts == min(low + 1, n))).all(), f"{message}: budgets {counts.unique().tolist()}"
        ceil_rows = int((counts == low + 1).sum())
        assert binomial_p_value(ceil_rows, ROWS, p * n - low) >= ALPHA / comparisons, (
            f"{message}: {ceil_rows}/{ROWS} rows rounded p*n={p * n:.4f} up")
        # Each word's frequency against the exact law.
        word_scores = [float(np.float32(scores.get(k, unknown))) for k in keys]  # the table holds float32
        exact = exact_inclusion(word_scores, p, weighting, uniform_mix)
        observed = word_flags.sum(0).tolist()
        for w in range(n):
            assert binomial_p_value(observed[w], ROWS, exact[w]) >= ALPHA / comparisons, (
                f"{message}: word {w} ({keys[w]!r}, score {word_scores[w]:.4f}) masked in "
                f"{observed[w]}/{ROWS} rows, exact probability {exact[w]:.5f}; all: "
                f"{[round(o / ROWS, 4) for o in observed]} vs {np.round(exact, 4).tolist()}")

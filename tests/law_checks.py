"""What the masking tests check against: words as the reference groups them, and the exact
two-sided binomial p-value of an observed count."""

from __future__ import annotations

from scipy.stats import binom

from diffmask_fast import reference
from diffmask_fast.tokenization import decode_words, word_boundaries


def words_of(tokenizer, ids):
    """Reference grouping of one encoded sequence: (groups of positions, decoded words)."""
    boundaries = word_boundaries(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    never = [bool(boundaries.never_word[i]) for i in ids]
    groups = reference.group_words(reference.word_starts(tokens, never, boundaries.scheme), never)
    return groups, decode_words(tokenizer, [[ids[i] for i in g] for g in groups])


def binomial_p_value(successes: int, trials: int, probability: float) -> float:
    """Two-sided exact p-value of ``successes`` in ``trials`` under Binomial(trials, probability)."""
    if probability <= 0.0:
        return 1.0 if successes == 0 else 0.0
    if probability >= 1.0:
        return 1.0 if successes == trials else 0.0
    lower = binom.cdf(successes, trials, probability)
    upper = binom.sf(successes - 1, trials, probability)
    return float(min(1.0, 2.0 * min(lower, upper)))

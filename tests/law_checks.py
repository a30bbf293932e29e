"""What the masking tests check against: words as the reference groups them, the exact
two-sided binomial p-value of an observed count, and the exact power of that test, so that a
test can size its sample to see a given bias rather than assert that it does."""

from __future__ import annotations

import math

from scipy.stats import binom, norm

from diffmask_fast import reference
from diffmask_fast.tokenization import decode_words, word_boundaries


def words_of(tokenizer, ids, boundaries=None):
    """Reference grouping of one encoded sequence: (groups of positions, decoded words).
    ``boundaries``: the tokenizer's ``word_boundaries``, when the caller has them (building them
    takes ~0.1 s for a 30k vocabulary)."""
    if boundaries is None:
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


def binomial_acceptance(trials: int, probability: float, alpha: float) -> tuple[int, int]:
    """The counts ``[low, high]`` that pass ``binomial_p_value(count, trials, probability) >= alpha``
    (an interval: the lower tail grows with the count, the upper one shrinks)."""
    if probability <= 0.0:
        return 0, 0
    if probability >= 1.0:
        return trials, trials
    low = max(int(binom.ppf(alpha / 2, trials, probability)) - 1, 0)
    while low < trials and binomial_p_value(low, trials, probability) < alpha:
        low += 1
    while low > 0 and binomial_p_value(low - 1, trials, probability) >= alpha:
        low -= 1
    high = min(int(binom.isf(alpha / 2, trials, probability)) + 1, trials)
    while high > low and binomial_p_value(high, trials, probability) < alpha:
        high -= 1
    while high < trials and binomial_p_value(high + 1, trials, probability) >= alpha:
        high += 1
    return low, high


def detection_power(trials: int, probability: float, actual: float, alpha: float) -> float:
    """Exact probability that a count drawn from Binomial(trials, actual) fails the check
    ``binomial_p_value(count, trials, probability) >= alpha``."""
    low, high = binomial_acceptance(trials, probability, alpha)
    actual = min(max(actual, 0.0), 1.0)
    return float(1.0 - (binom.cdf(high, trials, actual) - binom.cdf(low - 1, trials, actual)))


def power_against_bias(trials: int, probability: float, alpha: float, relative: float = 0.1) -> float:
    """The smaller of the exact powers against a rate ``relative`` above and below ``probability``
    (the one above capped at 1)."""
    return min(detection_power(trials, probability, probability * (1 + relative), alpha),
               detection_power(trials, probability, probability * (1 - relative), alpha))


def trials_to_detect(probability: float, alpha: float, relative: float = 0.1, power: float = 0.999) -> int:
    """Trials (within 1% of the fewest) after which a rate off by ``relative`` either way fails
    the exact two-sided check at ``alpha`` with probability at least ``power``: a normal
    approximation to start, grown until the exact power (``power_against_bias``) reaches it."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    z_alpha, z_power = float(norm.isf(alpha / 2)), float(norm.isf(1 - power))
    shifted = probability * (1 - relative), min(probability * (1 + relative), 1.0)
    spread = z_alpha * math.sqrt(probability * (1 - probability)) + z_power * max(
        math.sqrt(q * (1 - q)) for q in shifted)
    trials = max(math.ceil((spread / (relative * probability)) ** 2), 1)
    while power_against_bias(trials, probability, alpha, relative) < power:
        trials = math.ceil(trials * 1.01)
    return trials

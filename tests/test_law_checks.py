"""The statistical helpers the masking tests size and judge their samples with (law_checks):
the acceptance interval and power of the exact binomial check against brute force, so that a
test claiming to see a 10% bias with probability 0.999 really does."""

from __future__ import annotations

import random

import pytest
from scipy.stats import binom

from law_checks import (binomial_acceptance, binomial_p_value, detection_power, power_against_bias,
                        trials_to_detect)


def test_acceptance_and_power_match_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(40):
        trials = rng.randint(1, 150)
        probability = rng.choice([rng.random(), rng.random() ** 6, 1 - rng.random() ** 6])
        alpha = rng.choice([1e-7, 1e-3, 0.05, 0.5])
        passing = [k for k in range(trials + 1) if binomial_p_value(k, trials, probability) >= alpha]
        low, high = binomial_acceptance(trials, probability, alpha)
        message = f"seed={seed} trials={trials} probability={probability!r} alpha={alpha}"
        assert passing == list(range(low, high + 1)), message
        actual = rng.random()
        failing = sum(binom.pmf(k, trials, actual) for k in range(trials + 1) if not low <= k <= high)
        assert detection_power(trials, probability, actual, alpha) == pytest.approx(failing, abs=1e-9), message


@pytest.mark.parametrize("probability", [0.03, 0.0999, 0.25, 0.5, 0.8, 0.9])
def test_trials_to_detect_reach_the_power_they_promise(probability):
    alpha = 1e-6 / 3
    trials = trials_to_detect(probability, alpha)
    assert power_against_bias(trials, probability, alpha) >= 0.999
    assert power_against_bias(int(trials * 0.9), probability, alpha) < 0.999  # and not many more
    # Both ways, a rate 10% off at that many trials fails the check as often as promised.
    for actual in (probability * 1.1, probability * 0.9):
        assert detection_power(trials, probability, min(actual, 1.0), alpha) >= 0.999

"""What chance looks like when a ranking of ``k`` options ignores which one is correct.

A ranking that cannot tell the correct option from the others puts it at a uniformly
random rank, so its AP@3 is 1, 1/2, 1/3 (each with probability 1/k) or 0: the mean
is ``H(min(k, 3)) / k`` (0.367 for 5 options, 0.458 for 4), and a set of ``n``
questions scores within ``1.96 * sd / sqrt(n)`` of it 95% of the time. Ties are scored
by their expectation, so a feature that is equal on every option scores chance exactly:

>>> tie_aware_ap(np.array([[3.0, 3.0, 1.0, 1.0]]), np.array([0])).tolist()
[0.75]
>>> round(chance_map_at_3(5), 4)
0.3667
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sciqa.metrics import K

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def _harmonic_top(m: np.ndarray, power: int = 1) -> np.ndarray:
    """``sum(1 / r**power for r in 1..min(m, K))``, elementwise."""
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, K + 1) ** power)])
    return table[np.minimum(m, K)]


def tie_aware_ap(scores: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """Expected average precision at 3 per question when ties are broken at random."""
    correct = scores[np.arange(len(scores)), answer][:, None]
    better = (scores > correct).sum(axis=1)
    tied = (scores == correct).sum(axis=1)  # the correct option included
    return (_harmonic_top(better + tied) - _harmonic_top(better)) / tied


def tie_aware_top1(scores: np.ndarray, answer: np.ndarray) -> np.ndarray:
    correct = scores[np.arange(len(scores)), answer][:, None]
    return np.where((scores > correct).any(axis=1), 0.0, 1.0 / (scores == correct).sum(axis=1))


def chance_map_at_3(n_options: int) -> float:
    """MAP@3 of a ranking that ignores the options: ``H(min(k, 3)) / k``."""
    return float(_harmonic_top(np.array(n_options)) / n_options)


def chance_sd(n_options: int) -> float:
    """Standard deviation of one question's AP@3 when the correct rank is uniform."""
    second = float(_harmonic_top(np.array(n_options), power=2) / n_options)
    return math.sqrt(second - chance_map_at_3(n_options) ** 2)


# --- tests against chance ---------------------------------------------------------


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with integer ``df`` (closed form, no scipy).

    >>> round(chi2_sf(9.4877, 4), 4)
    0.05
    """
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total, term = 0.0, math.sqrt(x)
    for i in range(1, (df - 1) // 2 + 1):
        total += term
        term *= x / (2 * i + 1)
    return min(1.0, math.erfc(math.sqrt(half)) + math.sqrt(2 / math.pi) * math.exp(-half) * total)


def compare_to_chance(ap: np.ndarray, n_options: int) -> dict[str, Any]:
    """Where a baseline's MAP@3 stands against chance: the 95% band of the mean AP of
    ``len(ap)`` questions whose correct option sits at a uniformly random rank."""
    chance = chance_map_at_3(n_options)
    spread = chance_sd(n_options) / math.sqrt(len(ap))
    z = (float(ap.mean()) - chance) / spread
    verdict = "above chance" if z > Z95 else "below chance" if z < -Z95 else "at chance"
    return {
        "chance": round(chance, 4),
        "chance_band95": [round(chance - Z95 * spread, 4), round(chance + Z95 * spread, 4)],
        "z": round(z, 2),
        "p_value": round(math.erfc(abs(z) / math.sqrt(2)), 4),
        "verdict": verdict,
    }

"""MAP@3 with bootstrap 95% intervals, and paired intervals for "A minus B".

A MAP@3 on a few hundred questions moves by several points from one draw of
questions to the next, so a single number cannot say whether an ensemble beat its
best member. The percentile bootstrap resamples questions with replacement and
reads the interval off the resampled means. A paired bootstrap draws the same
questions for both systems, so what they share (easy and hard questions) cancels
and the interval of the difference is much narrower than the two intervals
side by side suggest.

>>> aps = average_precisions(["A", "B", "C", "D"], ["A B C", "A B C", "A B C", "A B C"])
>>> aps.tolist() == [1.0, 0.5, 1 / 3, 0.0]
True
>>> ci = bootstrap_interval(aps, n_resamples=2000, seed=0)
>>> round(ci.estimate, 4), ci.low <= ci.estimate <= ci.high
(0.4583, True)
>>> paired_bootstrap(aps, aps).as_dict()["high"]
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sciqa.metrics import K, average_precision_at_3

N_RESAMPLES = 10_000  # enough for stable 2.5/97.5 percentiles (Efron & Tibshirani: >= 1000)
CONFIDENCE = 0.95
SEED = 0
_CELLS_PER_BLOCK = 4_000_000  # resampled indices held at once (~32 MB of int64)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_questions: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (for differences)."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        pct = f"{self.confidence:.0%}"
        return f"{self.estimate:.4f} ({pct} CI {self.low:.4f} to {self.high:.4f})"


def average_precisions(labels: Sequence[str], top3: Sequence[str | Sequence[str]]) -> np.ndarray:
    """Per-question AP@3 (1, 1/2, 1/3 or 0); its mean is MAP@3."""
    if len(labels) != len(top3):
        raise ValueError(f"{len(labels)} labels but {len(top3)} predictions")
    return np.array(
        [average_precision_at_3(y, p) for y, p in zip(labels, top3, strict=True)], dtype=np.float64
    )


def average_precisions_from_logits(logits: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Per-question AP@3 straight from ``(n, n_options)`` scores and answer indices.

    Ranks ties as :func:`sciqa.metrics.top3_letters` does (a stable sort: an
    earlier option wins a tie), so both paths give the same MAP@3.

    >>> logits = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    >>> average_precisions_from_logits(logits, np.array([2, 1])).tolist()
    [0.5, 0.5]
    """
    scores = np.asarray(logits, dtype=np.float64)
    answers = np.asarray(answers, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(answers):
        raise ValueError(
            f"expected logits (n, n_options) for {len(answers)} answers, got {scores.shape}"
        )
    if ((answers < 0) | (answers >= scores.shape[1])).any():
        raise ValueError(f"answer indices must lie in 0..{scores.shape[1] - 1}")
    rows = np.arange(len(scores))
    truth = scores[rows, answers][:, None]
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (scores > truth) | ((scores == truth) & (columns < answers[:, None]))
    rank = ahead.sum(axis=1) + 1
    return np.where(rank <= K, 1.0 / rank, 0.0)


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` with-replacement draws of the rows of ``values``.

    ``values`` is ``(n,)`` or ``(n, m)``: the columns share each draw (a paired
    bootstrap over several systems). Drawn in blocks so memory stays bounded.
    """
    rng = np.random.default_rng(seed)
    n = len(values)
    block = max(1, _CELLS_PER_BLOCK // n)
    means = np.empty((n_resamples, *values.shape[1:]), dtype=np.float64)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        draws = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[draws].mean(axis=1)
    return means


def _check(values: np.ndarray, n_resamples: int, confidence: float) -> None:
    if len(values) == 0:
        raise ValueError("no questions to resample")
    if not np.isfinite(values).all():
        raise ValueError("per-question scores contain NaN or inf")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _interval(point: float, means: np.ndarray, confidence: float, n: int) -> Interval:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(
        estimate=float(point),
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=len(means),
        n_questions=n,
    )


def bootstrap_interval(
    per_question: np.ndarray | Sequence[float],
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Mean of ``per_question`` scores with its percentile-bootstrap interval.

    The same ``seed`` gives the same interval, so reports are reproducible.
    """
    values = np.asarray(per_question, dtype=np.float64)
    _check(values, n_resamples, confidence)
    means = _resampled_means(values, n_resamples, seed)
    return _interval(values.mean(), means, confidence, len(values))


def paired_bootstrap(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Mean of ``a - b`` over the same questions, resampling questions jointly.

    ``a`` and ``b`` are per-question scores of two systems aligned on question;
    an interval above 0 says A beats B beyond what the choice of questions explains.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same questions: shapes {a.shape} and {b.shape}")
    return bootstrap_interval(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed)


def bootstrap_many(
    per_question: np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> list[Interval]:
    """One interval per column of ``(n_questions, n_systems)`` scores, from shared draws.

    Sharing the draws keeps the systems' intervals comparable and costs one
    resampling pass instead of one per system.
    """
    values = np.asarray(per_question, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected (n_questions, n_systems) scores, got shape {values.shape}")
    _check(values, n_resamples, confidence)
    means = _resampled_means(values, n_resamples, seed)
    return [
        _interval(values[:, j].mean(), means[:, j], confidence, len(values))
        for j in range(values.shape[1])
    ]

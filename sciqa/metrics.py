"""MAP@3 as scored by Kaggle's "LLM Science Exam", and the logits -> letters helper.

Each question has exactly one correct letter, so average precision at 3 reduces to
``1/k`` where ``k`` is the rank (1..3) of the first occurrence of the label among the
first three predicted letters, and 0 when it is not there. A letter repeated after
the hit earns nothing more ("each label counted once").

>>> map_at_3(["A"], ["B A C"])
0.5
>>> top3_letters([[0.1, 2.0, -1.0, 0.5, 0.3]])
['B D E']
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

K = 3


def _as_letters(prediction: str | Sequence[str]) -> list[str]:
    return prediction.split() if isinstance(prediction, str) else list(prediction)


def _check_lengths(labels: Sequence[str], predictions: Sequence[object]) -> None:
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if len(labels) == 0:
        raise ValueError("no questions to score")


def average_precision_at_3(label: str, prediction: str | Sequence[str]) -> float:
    """Score one question: 1, 1/2, 1/3 for a hit at rank 1, 2, 3; else 0."""
    for rank, letter in enumerate(_as_letters(prediction)[:K], start=1):
        if letter == label:
            return 1.0 / rank
    return 0.0


def map_at_3(labels: Sequence[str], top3: Sequence[str | Sequence[str]]) -> float:
    """Mean over questions of :func:`average_precision_at_3`.

    ``top3`` holds, per question, the predicted letters best first, either as a
    Kaggle string ``"B A D"`` or a list ``["B", "A", "D"]``.
    """
    _check_lengths(labels, top3)
    return float(np.mean([average_precision_at_3(y, p) for y, p in zip(labels, top3, strict=True)]))


def accuracy(labels: Sequence[str], top3: Sequence[str | Sequence[str]]) -> float:
    """Share of questions whose first predicted letter is the label."""
    _check_lengths(labels, top3)
    return float(np.mean([_as_letters(p)[:1] == [y] for y, p in zip(labels, top3, strict=True)]))


def top3_letters(logits: np.ndarray | Sequence[Sequence[float]], k: int = K) -> list[str]:
    """Turn ``(n, n_options)`` scores into Kaggle strings of the ``k`` best letters.

    Ties keep option order (a stable sort), so equal scores never shuffle letters
    between runs. Fewer than ``k`` options give all of them.
    """
    scores = np.asarray(logits, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"expected logits of shape (n, n_options), got {scores.shape}")
    if scores.shape[1] > len(string.ascii_uppercase):
        raise ValueError(f"{scores.shape[1]} options is more than there are letters")
    if np.isnan(scores).any():
        raise ValueError("logits contain NaN")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    letters = np.array(list(string.ascii_uppercase[: scores.shape[1]]))
    return [" ".join(row) for row in letters[order]]


def softmax(scores: np.ndarray | Sequence[Sequence[float]], temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature``; all-NaN rows (not scored) stay NaN.

    >>> softmax([[0.0, 0.0]]).tolist()
    [[0.5, 0.5]]
    """
    z = np.asarray(scores, dtype=np.float64) / temperature
    top = np.max(np.nan_to_num(z, nan=-np.inf), axis=1, keepdims=True)
    exp = np.exp(z - np.where(np.isfinite(top), top, 0))
    return exp / exp.sum(axis=1, keepdims=True)

"""Ensembling is data: a weighted mean of aligned per-model logits.

``mode="probs"`` averages softmax probabilities (what most LLM Science Exam teams did;
a confident model cannot drown the others by the scale of its logits) and returns their
log, so the result is again a logits array; ``mode="logits"`` averages raw logits;
``mode="zscore"`` standardises each model's scores per question (mean 0, std 1 over the
options) first, for members on unrelated scales such as a causal LM's log-probability
per character next to an encoder's logits.
A NaN row means "this model did not score this question" (the cascade, an interrupted
model): the mean then uses the models that did, with their weights renormalised.

>>> combine([np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])], [1, 1], "logits").tolist()
[[0.5, 0.5]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infer.errors import InferError
from sciqa.metrics import softmax


def combine(arrays: Sequence[np.ndarray], weights: Sequence[float], mode: str) -> np.ndarray:
    """Weighted mean of ``(n, n_options)`` arrays; all-NaN rows stay NaN."""
    if not arrays:
        raise ValueError("nothing to combine")
    return mix(member_space(arrays, mode), weights, mode).astype(np.float32)


def member_space(arrays: Sequence[np.ndarray], mode: str) -> np.ndarray:
    """``(m, n, c)`` float64 member scores in the space ``mode`` averages them in."""
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    if mode == "probs":
        return np.stack([softmax(a) for a in stack])
    if mode == "zscore":
        return np.stack([zscore(a) for a in stack])
    if mode == "logits":
        return stack
    raise ValueError(f"unknown ensemble mode {mode!r}; use 'probs', 'logits' or 'zscore'")


def mix(space: np.ndarray, weights: Sequence[float], mode: str) -> np.ndarray:
    """Weighted mean over members of :func:`member_space` scores, float64; a member's NaN
    row leaves it out of that question's mean, and ``probs`` comes back as log-probs."""
    w = np.asarray(weights, dtype=np.float64)[:, None]  # (m, 1)
    scored = ~np.isnan(space).any(axis=2)  # (m, n): which model scored which question
    w_rows = w * scored
    total = w_rows.sum(axis=0)  # (n,)
    mean = (
        np.einsum("mn,mnc->nc", w_rows, np.nan_to_num(space)) / np.where(total, total, 1)[:, None]
    )
    mean[total == 0] = np.nan
    if mode == "probs":
        with np.errstate(divide="ignore"):
            mean = np.log(np.clip(mean, 1e-12, None))
    return mean


def zscore(scores: np.ndarray) -> np.ndarray:
    """Each row shifted to mean 0 and scaled to std 1; constant rows become all 0.

    >>> zscore(np.array([[1.0, 3.0], [2.0, 2.0]])).tolist()
    [[-1.0, 1.0], [0.0, 0.0]]
    """
    centred = scores - scores.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    return centred / np.where(std > 0, std, 1.0)


def tta_mean(passes: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of one model's TTA passes (already mapped back to the original letters)."""
    return np.mean(np.stack(passes), axis=0).astype(np.float32)


def margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per question: low = unsure.

    >>> margin(np.log(np.array([[0.5, 0.3, 0.2]]))).round(3).tolist()
    [0.2]
    """
    probs = np.sort(softmax(np.asarray(logits, dtype=np.float64)), axis=1)
    return probs[:, -1] - probs[:, -2]


def parse_weights(text: str, n_models: int, names: Sequence[str]) -> list[float]:
    """``"equal"`` or ``"w1,w2,..."`` (one non-negative number per model, not all 0)."""
    if text == "equal":
        return [1.0] * n_models
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise InferError(
            f"--weights {text!r}: expected 'auto', 'stack', 'select', 'equal' or numbers like "
            "1,0.5,2"
        ) from None
    if len(weights) != n_models:
        raise InferError(
            f"--weights {text!r}: {len(weights)} weight(s) for {n_models} model(s) "
            f"({', '.join(names)}); give one per model, in that order"
        )
    if any(w < 0 or not np.isfinite(w) for w in weights) or not any(weights):
        raise InferError(f"--weights {text!r}: weights must be finite, >= 0 and not all 0")
    return weights

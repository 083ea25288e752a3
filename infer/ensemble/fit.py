"""Ensemble weights fitted on out-of-fold logits, and an honest choice between fits.

Three ways to weight members from their OOF logits, and the plain references:

- ``best``: the single member with the highest OOF MAP@3 (weight 1, the rest 0);
- ``equal``: every member weight 1;
- ``greedy``: Caruana-style selection with replacement on MAP@3 (``--weights auto``);
- ``stack``: logistic stacking: non-negative weights (on the simplex) and one temperature
  that minimise the cross-entropy of the combined scores on the OOF labels, shrunk towards
  equal weights. It fits the same combination infer applies (``infer.ensemble``), so the
  weights are used as they are.

Weights fitted and scored on the same OOF questions flatter the ensemble: with a few
hundred questions greedy selection finds noise. ``select`` therefore runs **nested
cross-validation**: the OOF questions are split into ``folds`` outer folds, each method is
fitted on the other folds and scored on the held-out one, and the method whose held-out
MAP@3 (pooled over the outer folds) is highest is refitted on all OOF questions. Ties go to
the simpler method (the order above).

>>> y = np.array([0, 1])
>>> a = np.array([[2.0, 0.0], [0.0, 2.0]]); b = np.array([[0.0, 2.0], [2.0, 0.0]])
>>> fit_weights("best", [a, b], y, "logits").tolist()
[1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.ensemble.combine import combine, member_space, mix

METHODS = ("best", "equal", "greedy", "stack")
STACK_L2 = 1e-3  # pull of the stacking weights' logits towards equal weights
MAX_LOGIT = 10.0  # bound on a stacking weight's logit: exp(-20) is as good as 0


def _log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    shifted = scores - scores.max(axis=1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=1))
    return float((logz - shifted[np.arange(len(labels)), labels]).mean())


def map3_from_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    """MAP@3 of ``(n, c)`` scores against label indices, ties in option order.

    The mean of the core's per-question AP@3 (:mod:`sciqa.evaluation.intervals`), so weight fitting
    and ``sciqa eval`` rank ties the same way.

    >>> map3_from_logits(np.array([[0.1, 2.0, -1.0]]), np.array([0]))
    0.5
    """
    from sciqa.evaluation.intervals import average_precisions_from_logits

    return float(average_precisions_from_logits(logits, labels).mean())


def greedy_weights(
    arrays: Sequence[np.ndarray], labels: np.ndarray, mode: str, rounds: int
) -> tuple[np.ndarray, float]:
    """Copy counts (as weights) and the MAP@3 they reach on ``labels``."""
    m = len(arrays)
    singles = [map3_from_logits(a, labels) for a in arrays]
    counts = np.zeros(m)
    counts[int(np.argmax(singles))] = 1
    best_counts, best_score = counts.copy(), max(singles)
    for _ in range(rounds - 1):
        trials = []
        for i in range(m):
            trial = counts.copy()
            trial[i] += 1
            trials.append(map3_from_logits(combine(arrays, trial, mode), labels))
        pick = int(np.argmax(trials))
        counts[pick] += 1
        if trials[pick] > best_score:  # strict: ties keep the smaller ensemble
            best_counts, best_score = counts.copy(), trials[pick]
    return best_counts / best_counts.sum(), best_score


def stack_weights(
    arrays: Sequence[np.ndarray], labels: np.ndarray, mode: str, l2: float = STACK_L2
) -> tuple[np.ndarray, float]:
    """Simplex weights and temperature minimising OOF cross-entropy (plus ``l2``)."""
    from scipy.optimize import minimize

    features = member_space(arrays, mode)
    m = len(arrays)

    def objective(params: np.ndarray) -> float:
        theta, temperature = params[:m], np.exp(params[m])
        weights = np.exp(theta - theta.max())
        loss = _log_loss(temperature * mix(features, weights, mode), labels)
        return loss + l2 * float(((theta - theta.mean()) ** 2).sum())

    start = np.zeros(m + 1)
    bounds = [(-MAX_LOGIT, MAX_LOGIT)] * m + [(-5.0, 5.0)]
    result = minimize(objective, start, method="L-BFGS-B", bounds=bounds)
    theta = result.x[:m]
    weights = np.exp(theta - theta.max())
    return weights / weights.sum(), float(np.exp(result.x[m]))


def fit_weights(
    method: str, arrays: Sequence[np.ndarray], labels: np.ndarray, mode: str, rounds: int = 50
) -> np.ndarray:
    """Weights (summing to 1) of one method, fitted on ``arrays`` against ``labels``."""
    m = len(arrays)
    if method == "best":
        weights = np.zeros(m)
        weights[int(np.argmax([map3_from_logits(a, labels) for a in arrays]))] = 1.0
        return weights
    if method == "equal":
        return np.full(m, 1.0 / m)
    if method == "greedy":
        return greedy_weights(arrays, labels, mode, rounds)[0]
    if method == "stack":
        return stack_weights(arrays, labels, mode)[0]
    raise ValueError(f"unknown weighting method {method!r}; use one of {', '.join(METHODS)}")


def outer_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Outer fold of each of ``n`` questions: a seeded shuffle cut into ``folds`` parts.

    >>> np.bincount(outer_folds(10, 3, 0)).tolist()
    [4, 3, 3]
    """
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=int)
    for k, part in enumerate(np.array_split(order, folds)):
        fold[part] = k
    return fold


@dataclass
class Selection:
    """What nested cross-validation found, and the weights refitted on all OOF rows."""

    method: str
    weights: np.ndarray
    nested_map_at_3: dict[str, float]  # method -> held-out MAP@3 pooled over outer folds
    held_out_scores: dict[str, np.ndarray]  # method -> (n, c) held-out combined scores

    def report(self) -> dict[str, Any]:
        return {
            "chosen": self.method,
            "nested_cv_map_at_3": {k: round(v, 6) for k, v in self.nested_map_at_3.items()},
        }


def select_weights(
    arrays: Sequence[np.ndarray],
    labels: np.ndarray,
    mode: str,
    *,
    folds: int = 5,
    seed: int = 0,
    rounds: int = 50,
    methods: Sequence[str] = METHODS,
) -> Selection:
    """Nested CV over ``methods``; the winner is refitted on every OOF question."""

    n = len(labels)
    if n < 2 * folds:
        raise ValueError(f"{n} OOF questions are too few for {folds} outer folds")
    fold = outer_folds(n, folds, seed)
    nested: dict[str, float] = {}
    held: dict[str, np.ndarray] = {}
    for method in methods:
        scores = np.zeros(np.asarray(arrays[0]).shape, dtype=np.float64)
        for k in range(folds):
            inner, outer = fold != k, fold == k
            w = fit_weights(method, [a[inner] for a in arrays], labels[inner], mode, rounds)
            scores[outer] = combine([a[outer] for a in arrays], w, mode)
        held[method] = scores
        nested[method] = map3_from_logits(scores, labels)
    best = max(methods, key=lambda m: (nested[m], -list(methods).index(m)))
    weights = fit_weights(best, arrays, labels, mode, rounds)
    return Selection(best, weights, nested, held)

"""Confidence cascade: cheap models score every question, expensive ones only the unsure.

With ``infer.cascade_cheap = k`` and ``infer.cascade_fraction = f < 1``, the ``k`` models
with the smallest weight files run on all questions; the rest run only on the share
``f`` of questions where the cheap ensemble's margin (top-1 minus top-2 probability) is
lowest. The final ensemble averages, per question, the models that scored it.

>>> escalate(np.log(np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])), 0.5).tolist()
[1, 2]
"""

from __future__ import annotations

import math

import numpy as np

from infer.ensemble.combine import margin
from infer.models import ModelSpec


def split_models(specs: list[ModelSpec], n_cheap: int) -> tuple[list[ModelSpec], list[ModelSpec]]:
    """(cheap, expensive): the ``n_cheap`` smallest by weight bytes, file order on ties."""
    ranked = sorted(range(len(specs)), key=lambda i: (specs[i].weight_bytes, i))
    cheap = set(ranked[:n_cheap])
    return (
        [s for i, s in enumerate(specs) if i in cheap],
        [s for i, s in enumerate(specs) if i not in cheap],
    )


def escalate(cheap_logits: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted row indices of the ``ceil(fraction * n)`` lowest-margin questions."""
    n = len(cheap_logits)
    count = min(n, math.ceil(fraction * n))
    order = np.argsort(margin(cheap_logits), kind="stable")
    return np.sort(order[:count])

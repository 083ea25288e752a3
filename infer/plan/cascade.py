"""Confidence cascade: cheap models score every question, expensive ones only the unsure.

With ``infer.cascade_cheap = k`` and ``infer.cascade_fraction = f < 1``, the ``k`` models
with the smallest weight files run on all questions; the rest run only on the share
``f`` of questions where the cheap ensemble's margin (top-1 minus top-2 probability) is
lowest. ``infer.cascade_expensive`` names the expensive stage instead (e.g. an
``llm:`` member). The final ensemble averages, per question, the models that scored it.

>>> escalate(np.log(np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])), 0.5).tolist()
[1, 2]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.ensemble.combine import margin
from infer.models import ModelSpec
from sciqa.config import InferConfig


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


@dataclass(frozen=True)
class Step:
    """One member in the run's order, and how many questions it is planned to score."""

    spec: ModelSpec
    n_rows: int


@dataclass
class Cascade:
    """The run's order: the cheap stage, then the expensive stage on the escalated rows.

    Without a cascade every member is in the expensive stage and scores every question.
    """

    cheap: list[ModelSpec]
    expensive: list[ModelSpec]
    fraction: float
    rows: np.ndarray | None = None  # the escalated questions, once chosen
    cheap_logits: np.ndarray | None = None  # the cheap stage's ensemble they came from

    @classmethod
    def plan(cls, specs: list[ModelSpec], cfg: InferConfig) -> Cascade:
        """The members with a weight, each stage by weight, highest first (a budget cut
        drops the least important work; file order on ties)."""
        active = [s for s in specs if s.weight > 0]
        by_weight = sorted(active, key=lambda s: -s.weight)
        named = set(cfg.cascade_expensive)
        if named:
            # Named members (e.g. llm:default) are the expensive stage, the rest are cheap.
            expensive = [s for s in by_weight if s.name in named or s.arg in named]
            cheap = [s for s in by_weight if s not in expensive]
            on = bool(cheap) and bool(expensive)
        else:
            on = 0 < cfg.cascade_cheap < len(active)
            cheap, expensive = split_models(by_weight, cfg.cascade_cheap) if on else ([], [])
        if not on or cfg.cascade_fraction >= 1:
            return cls([], by_weight, 1.0)
        return cls(cheap, expensive, cfg.cascade_fraction)

    def steps(self, n_questions: int) -> list[Step]:
        """Cheap members on every question, then the expensive ones on their share."""
        n_escalated = math.ceil(self.fraction * n_questions) if self.cheap else n_questions
        return [Step(s, n_questions) for s in self.cheap] + [
            Step(s, n_escalated) for s in self.expensive
        ]

    def opens_expensive(self, spec: ModelSpec) -> bool:
        """``spec`` is the first of the expensive stage: the rows are chosen now."""
        return bool(self.cheap) and spec is self.expensive[0]

    def escalate(self, cheap_ensemble: np.ndarray | None) -> None:
        """Choose the escalated rows from the cheap stage's ensemble (none when a cheap
        member left questions unscored: the expensive stage then scores them all)."""
        if cheap_ensemble is not None and not np.isnan(cheap_ensemble).any():
            self.rows = escalate(cheap_ensemble, self.fraction)
            self.cheap_logits = cheap_ensemble

    def report(self) -> dict[str, Any] | None:
        """The manifest's ``cascade``, once rows were escalated."""
        if self.rows is None:
            return None
        return {
            "cheap": [s.name for s in self.cheap],
            "expensive": [s.name for s in self.expensive],
            "fraction": self.fraction,
            "escalated": len(self.rows),
        }

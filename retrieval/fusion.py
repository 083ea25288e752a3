"""Reciprocal-rank fusion of ranked hit lists (Cormack et al., 2009).

A passage's fused score is ``sum(weight / (rrf_k + rank))`` over the retrievers that
returned it, rank counted from 1. Ranks, not raw scores, are combined, so cosine and BM25
scales never need calibrating.

>>> hits = fuse({"dense": ([7, 3], [0.9, 0.8]), "bm25": ([3, 5], [12.0, 9.0])},
...             {"dense": 1.0, "bm25": 1.0}, rrf_k=60)
>>> [h.row for h in hits]
[3, 7, 5]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Hit:
    """One fused candidate: passage row, fused score and each retriever's raw score."""

    row: int
    fused: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)


def fuse(
    ranked: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    weights: Mapping[str, float],
    rrf_k: int,
) -> list[Hit]:
    """Fuse ``{retriever: (rows best first, scores)}``; rows < 0 (no hit) are skipped.

    Ties in the fused score keep the order in which passages were first seen, with
    retrievers visited in ``ranked``'s order, so results are deterministic.
    """
    hits: dict[int, Hit] = {}
    for name, (rows, scores) in ranked.items():
        weight = weights.get(name, 1.0)
        rank = 0
        for row, score in zip(rows, scores, strict=True):
            if row < 0 or math.isnan(score):
                continue
            rank += 1
            hit = hits.setdefault(int(row), Hit(int(row)))
            hit.fused += weight / (rrf_k + rank)
            hit.scores[name] = float(score)
    return sorted(hits.values(), key=lambda h: -h.fused)

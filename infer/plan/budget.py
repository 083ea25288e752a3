"""The time budget: measure, estimate, and plan what fits.

Costs are measured, not guessed: the first batch of every model (its longest questions)
is timed, giving seconds per padded token; the model's load time is timed too. A model
not yet run is estimated from a measured one, scaled by the size of its weight files.
The plan keeps every model with every TTA pass when that fits; otherwise it drops TTA
passes first (all models alike), then the models with the lowest weight.

>>> parse_duration("8h30m")
30600.0
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from infer.errors import InferError

_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*([hms]?)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"8h30m"``, ``"45m"``, ``"90s"``, ``"1.5h"`` or ``"3600"``."""
    cleaned = text.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(cleaned):
        if match.start() != pos or (not match.group(2) and match.end() != len(cleaned)):
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned or total <= 0:
        raise InferError(f"time budget {text!r}: expected a positive duration like 8h30m or 90s")
    return total


class Budget:
    """Wall-clock deadline; ``seconds=None`` never expires."""

    def __init__(
        self,
        seconds: float | None,
        margin: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.seconds = seconds
        self.clock = clock
        self.started = clock()
        self.usable = None if seconds is None else seconds * (1 - margin)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return float("inf") if self.usable is None else self.usable - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass
class Measured:
    seconds_per_token: float
    load_seconds: float
    weight_bytes: int


class CostModel:
    """Per-model costs from warm-up timings; unmeasured models scale by weight bytes."""

    def __init__(self) -> None:
        self.measured: dict[str, Measured] = {}

    def observe(
        self, name: str, tokens: int, seconds: float, load_seconds: float, weight_bytes: int
    ) -> None:
        self.measured[name] = Measured(seconds / max(tokens, 1), load_seconds, weight_bytes)

    def estimate(self, name: str, weight_bytes: int, tokens: int) -> tuple[float, float] | None:
        """(load seconds, seconds per pass) or None before any model was measured."""
        if name in self.measured:
            m = self.measured[name]
            return m.load_seconds, m.seconds_per_token * tokens
        if not self.measured:
            return None
        # The largest measured model is the most pessimistic reference.
        ref = max(self.measured.values(), key=lambda m: m.weight_bytes)
        scale = weight_bytes / ref.weight_bytes
        return ref.load_seconds * scale, ref.seconds_per_token * scale * tokens


@dataclass
class Candidate:
    name: str
    weight: float
    load_seconds: float  # 0 once loaded
    pass_seconds: float
    done_passes: int = 0  # passes already finished (or cached)
    credit: float = 0.0  # seconds of the current pass already spent (the warm-up batch)


def make_plan(candidates: list[Candidate], max_passes: int, remaining: float) -> dict[str, int]:
    """Passes per model (0 = dropped) that fit in ``remaining`` seconds.

    >>> c = [Candidate("a", 2.0, 1, 10), Candidate("b", 1.0, 1, 10)]
    >>> make_plan(c, 2, 100), make_plan(c, 2, 30), make_plan(c, 2, 15), make_plan(c, 2, 5)
    ({'a': 2, 'b': 2}, {'a': 1, 'b': 1}, {'a': 1, 'b': 0}, {'a': 0, 'b': 0})
    """

    def cost(c: Candidate, passes: int) -> float:
        todo = max(passes - c.done_passes, 0)
        return (c.load_seconds + todo * c.pass_seconds - c.credit) if todo else 0.0

    kept = list(candidates)
    for passes in range(max_passes, 0, -1):
        if sum(cost(c, passes) for c in kept) <= remaining:
            return {c.name: passes if c in kept else 0 for c in candidates}
    # Even one pass each does not fit: drop the lowest weights (later ones on ties).
    by_weight = sorted(kept, key=lambda c: (-c.weight, candidates.index(c)))
    while by_weight and sum(cost(c, 1) for c in by_weight) > remaining:
        # A model that alone exceeds the time left goes first, whatever its weight.
        too_big = [c for c in by_weight if cost(c, 1) > remaining]
        by_weight.remove(too_big[-1] if too_big else by_weight[-1])
    return {c.name: 1 if c in by_weight else 0 for c in candidates}

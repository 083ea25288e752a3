"""One member's run: its TTA passes from the cache, or loaded and scored within the plan.

Each pass's logits are cached under a key of questions + model + pass + rows, so a
re-run reads what is already done and never loads a member whose passes all are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from infer.encodings import Encodings
from infer.models import ModelSpec
from infer.plan.planner import Pending, Planner
from infer.predictors.base import BatchTiming, Interrupted, Predictor
from infer.predictors.cached import CachedPredictor, PassKey
from infer.predictors.families import Loading, family_of, member_devices, not_split, open_member

log = logging.getLogger(__name__)

# Loads a member on its devices: families.open_member, or a test's fake.
OpenMember = Callable[[ModelSpec, Any, Loading], Predictor]


class Members:
    """How this run makes a member ready to score: its inputs, its cache key, its load."""

    def __init__(
        self,
        encodings: Encodings,
        loading: Loading,
        out_dir: Path,
        open_member: OpenMember = open_member,
    ):
        self.encodings, self.loading, self.out_dir = encodings, loading, out_dir
        self._open_member = open_member

    def cache_key(self, spec: ModelSpec) -> PassKey:
        model = [self.encodings.questions.hash, spec.fingerprint()]
        inputs = family_of(spec).cache_inputs(spec, self.loading)
        n_questions = len(self.encodings.questions.ids)
        return PassKey(self.out_dir, spec.name, model, inputs, n_questions)

    def open(self, spec: ModelSpec, tokenizer: Any) -> Predictor:
        """``spec`` loaded on its devices."""
        return self._open_member(spec, tokenizer, self.loading)

    def tokens(self, spec: ModelSpec, n_rows: int, rows: np.ndarray | None) -> int:
        """Padded tokens of one pass of ``spec`` on its busiest device (the planner's)."""
        n_devices = len(member_devices(spec, self.loading))
        return self.encodings.tokens(spec, n_rows, rows, n_devices)

    def notes(self, spec: ModelSpec) -> dict[str, Any]:
        """What the manifest adds about a loaded member: why it was not split over the
        devices, how many contexts were cut to fit."""
        notes: dict[str, Any] = {}
        if reason := not_split(spec, self.loading):
            notes["not_split"] = reason
        if cut := self.encodings.context_cut(spec):
            notes["context_cut"] = cut
        return notes


class Watch:
    """A member's ``on_batch``: its first batch re-plans it, every batch checks the budget.

    ``passes``: how many of its passes still fit; ``load_seconds``: set once it loads.
    """

    def __init__(self, planner: Planner, pending: Pending, passes: int, written: bool):
        self.planner, self.pending, self.passes, self.written = planner, pending, passes, written
        self.load_seconds = 0.0
        self.timed = False

    def __call__(self, timing: BatchTiming) -> None:
        if not self.timed:
            self.timed = True
            fits = self.planner.measure(
                self.pending, timing.tokens, timing.seconds, self.load_seconds, self.written
            )
            if fits == 0:
                raise Interrupted("does not fit the time budget")
            self.passes = min(self.passes, fits)
        if self.planner.spent(self.written):
            raise Interrupted("time budget spent")


class MemberRun:
    """The passes of ``pending.first``: as many of ``passes`` as the budget leaves."""

    def __init__(
        self, members: Members, planner: Planner, pending: Pending, passes: int, written: bool
    ):
        self.members, self.spec, self.rows = members, pending.first, pending.rows
        self.watch = Watch(planner, pending, passes, written)
        self.warm_up = planner.budgeted
        self.began = 0.0  # when it started loading

    def run(self) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Its passes (in the original option order) and its manifest record."""
        spec, clock = self.spec, self.members.loading.clock
        predictor = CachedPredictor(self._load, self.members.cache_key(spec))
        passes: list[np.ndarray] = []
        status = "done"
        try:
            planned = self.members.encodings.perms[: self.watch.passes]
            for k, perm in enumerate(planned):
                if k >= self.watch.passes:  # its first batch re-planned it down
                    break
                encoded = partial(self.members.encodings.encoded, spec, k)
                desc = f"{spec.name} pass {k + 1}"
                passes.append(
                    predictor.logits(perm, encoded, rows=self.rows, desc=desc, on_batch=self.watch)
                )
        except Interrupted as exc:
            status = f"stopped: {exc}"
            log.info("%s: %s after %d pass(es)", spec.name, status, len(passes))
        finally:
            predictor.close()
        if predictor.predictor is None:  # every pass came from the cache
            return passes, {"status": "cached", "passes": len(passes), "seconds": 0.0}
        record = {
            "status": status if passes else f"skipped ({status})",
            "passes": len(passes),
            "seconds": round(clock() - self.began, 2),
            "load_seconds": round(self.watch.load_seconds, 2),
            "devices": predictor.predictor.report(),
        }
        return passes, record | self.members.notes(spec)

    def _load(self) -> Predictor:
        """Load the member, timed; with a budget, warm it up with one untimed question
        (lazy kernel set-up would inflate the first timed batch, and every estimate)."""
        clock = self.members.loading.clock
        encodings = self.members.encodings
        tokenizer = encodings.prepare(self.spec)  # what it cannot encode fails before it loads
        self.began = clock()
        predictor = self.members.open(self.spec, tokenizer)
        self.watch.load_seconds = clock() - self.began
        if self.warm_up:
            try:
                enc = encodings.encoded(self.spec, 0)
                predictor.warm_up(enc.features, enc.lengths)
            except BaseException:
                predictor.close()
                raise
        return predictor

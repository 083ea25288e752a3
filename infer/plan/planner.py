"""Re-planning as the run measures its costs: TTA passes per member within the budget.

Until a member has been timed, every member gets every pass. A member's first batch is
timed (and its load), which makes a plan for it and the members after it, all
estimated from the measured costs (:mod:`infer.plan.budget`); from then on the plan is
remade before each member loads. Once ``submission.csv`` exists, a spent budget stops
the member between two batches; before that, the first member always finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.errors import BudgetError
from infer.models import ModelSpec
from infer.plan.budget import Budget, Candidate, CostModel, make_plan
from infer.plan.cascade import Step

log = logging.getLogger(__name__)

# Padded tokens of one pass of a member over n_rows questions (rows: which, once known).
Tokens = Callable[[ModelSpec, int, np.ndarray | None], int]


@dataclass(frozen=True)
class Pending:
    """The members still to run, the first one next, and the cascade's escalated
    questions once they are chosen (the steps that score fewer questions score those)."""

    steps: list[Step]
    rows: np.ndarray | None

    @property
    def first(self) -> ModelSpec:
        return self.steps[0].spec


class Planner:
    """Plans for the :class:`Pending` members: ``tokens`` estimates a member's pass."""

    def __init__(self, budget: Budget, n_passes: int, n_questions: int, tokens: Tokens):
        self.budget, self.n_passes, self.n_questions = budget, n_passes, n_questions
        self.tokens = tokens
        self.costs = CostModel()
        self.plans: list[dict[str, Any]] = []  # every plan made, for the manifest
        self.overran = False  # the budget ran out before anything was written

    @property
    def budgeted(self) -> bool:
        """A time budget is set (members warm up before their first timed batch)."""
        return self.budget.usable is not None

    def passes(self, pending: Pending) -> int:
        """Passes for the next member before it loads (0: it does not fit)."""
        if not self.costs.measured or not self.budgeted:
            return self.n_passes
        return self.replan(pending)[pending.first.name]

    def replan(self, pending: Pending, *, credit: float | None = None) -> dict[str, int]:
        """Passes per pending member; ``credit``: the first one is loaded, that many
        seconds into its first pass."""
        candidates = []
        for step in pending.steps:
            spec = step.spec
            rows = pending.rows if step.n_rows != self.n_questions else None
            tokens = self.tokens(spec, step.n_rows, rows)
            estimate = self.costs.estimate(spec.name, spec.weight_bytes, tokens)
            if estimate is None:
                return {s.spec.name: self.n_passes for s in pending.steps}
            load, per_pass = estimate
            if credit is not None and step is pending.steps[0]:
                candidates.append(Candidate(spec.name, spec.weight, 0.0, per_pass, credit=credit))
            else:
                candidates.append(Candidate(spec.name, spec.weight, load, per_pass))
        plan = make_plan(candidates, self.n_passes, self.budget.remaining())
        self.plans.append({"at_seconds": round(self.budget.elapsed(), 2), "passes": plan})
        log.info("plan (%.0fs left): %s", self.budget.remaining(), plan)
        return plan

    def measure(
        self, pending: Pending, tokens: int, seconds: float, load_seconds: float, written: bool
    ) -> int:
        """Time the next member by its first batch (``tokens`` padded tokens in
        ``seconds``) and its load, and re-plan: how many passes it keeps (0: none fit).

        Raises :class:`BudgetError` when no member fits and nothing was written."""
        spec = pending.first
        self.costs.observe(spec.name, tokens, seconds, load_seconds, spec.weight_bytes)
        if not self.budgeted:
            return self.n_passes
        plan = self.replan(pending, credit=seconds)
        if not any(plan.values()) and not written:
            measured = self.costs.measured[spec.name]
            per_pass = measured.seconds_per_token * self.tokens(spec, self.n_questions, None)
            raise BudgetError(
                f"time budget {self.budget.seconds:g}s is too small for even one model: "
                f"{spec.name} needs about {load_seconds + per_pass:.0f}s (load "
                f"{load_seconds:.1f}s + {per_pass:.1f}s per pass) and "
                f"{max(self.budget.remaining(), 0):.0f}s are left; nothing was written"
            )
        return plan.get(spec.name, 0)

    def spent(self, written: bool) -> bool:
        """After every batch: stop now? Yes once the budget is spent and a submission
        exists; before that, the member finishes (said once)."""
        if self.budget.expired() and written:
            return True
        if self.budget.expired() and not self.overran:
            self.overran = True
            log.warning("time budget spent before the first model finished; finishing it")
        return False

"""The inference loop: members one at a time, within the budget, outputs after each.

Order: the cascade's cheap members first (they score every question), then the others
by weight, highest first, so a budget cut drops the least important work. After every
finished member the ensemble logits and ``submission.csv`` are rewritten atomically
(:class:`~infer.outputs.Results`), so killing the process at any moment leaves a
complete, valid submission of the members finished so far. Just before the first of
them, the run takes OUT_DIR over from the run before it (:mod:`infer.takeover`). A
member's passes come from the logits cache when a previous run scored them
(:mod:`infer.member`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from infer.member import MemberRun, Members
from infer.outputs import Results
from infer.plan.cascade import Cascade
from infer.plan.planner import Pending, Planner

log = logging.getLogger(__name__)


class Runner:
    """Runs the members of ``results`` in the ``cascade``'s order, re-planned by the
    ``planner``; calls ``on_first_output(self)`` once, before the first finished member's
    outputs are written, and ``on_progress(self)`` after each finished member.

    ``results``, ``planner`` (its plans) and ``cascade`` (its escalation) are what the
    run has done so far.
    """

    def __init__(
        self,
        members: Members,
        planner: Planner,
        results: Results,
        cascade: Cascade,
        on_progress: Callable[[Runner], None],
        on_first_output: Callable[[Runner], None] = lambda runner: None,
    ):
        self.members, self.planner, self.results = members, planner, results
        self.cascade, self.on_progress = cascade, on_progress
        self.on_first_output = on_first_output
        self.output_started = False

    def run(self) -> None:
        devices = self.members.loading.devices
        if len(devices) > 1:
            log.info("questions split over %s, one model copy each", list(map(str, devices)))
        for spec in self.results.specs:
            if spec.weight == 0:
                self.results.records[spec.name] = {"status": "skipped: weight 0"}
        steps = self.cascade.steps(len(self.results.ids))
        for i, step in enumerate(steps):
            if self.cascade.opens_expensive(step.spec):
                self.cascade.escalate(self.results.ensemble())
            passes, record = self._run_member(Pending(steps[i:], self.cascade.rows))
            self.results.records[step.spec.name] = record
            if passes:
                if not self.output_started:
                    self.on_first_output(self)
                    self.output_started = True
                self.results.add(step.spec, passes)
                self.on_progress(self)

    def _run_member(self, pending: Pending) -> tuple[list[np.ndarray], dict[str, Any]]:
        planned = self.planner.passes(pending)
        if planned == 0:
            log.info("%s: skipped, does not fit the time budget", pending.first.name)
            return [], {"status": "skipped: does not fit the time budget"}
        written = self.results.written
        return MemberRun(self.members, self.planner, pending, planned, written).run()

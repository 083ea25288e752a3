"""``sciqa infer``: questions + model dirs -> OUT_DIR/submission.csv (and logits, scores).

Example::

    sciqa infer runs/demo/arc_challenge_ctx.csv runs/demo/train --out runs/demo/infer --tta 2
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infer.ensemble.combine import parse_weights
from infer.ensemble.oof import fit_auto_weights
from infer.errors import InferError
from infer.models import ModelSpec, check_letters, expand_model_dirs
from infer.outputs import Results
from infer.plan.budget import Budget, parse_duration
from infer.plan.cascade import Cascade
from infer.plan.planner import Planner
from infer.plan.tta import rotations
from infer.questions import Questions
from sciqa.config import SciqaConfig
from sciqa.errors import SciqaError
from sciqa.io import write_json
from sciqa.layouts import Layout
from sciqa.outdir import OutLock, check_out_dir
from sciqa.runs import FINISHED, SCORES, STOPPED, SUBMISSION

if TYPE_CHECKING:
    from infer.member import OpenMember
    from infer.runner import Runner
    from infer.summary import Manifest

FITTED = ("auto", "stack", "select")  # --weights fitted on the runs' oof.parquet

log = logging.getLogger(__name__)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """Plans, skips and warnings go to stderr (the table goes to stdout)."""
    logger = logging.getLogger("infer")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("infer: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _force_offline() -> None:
    # Before transformers is imported: it reads these once. Never touch the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@dataclass
class _Job:
    """What the arguments ask for, parsed and checked before anything is loaded."""

    questions: Path
    asked: Questions
    specs: list[ModelSpec]
    perms: list[np.ndarray]
    budget: Budget
    fit_report: dict | None


def run_infer(
    questions: Path,
    model_dirs: list[str],
    out_dir: Path,
    config: SciqaConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    open_member: OpenMember | None = None,
) -> dict[str, Any]:
    """Run the ensemble and write OUT_DIR; returns the scores/summary dict.

    ``open_member`` loads a member on its devices (default: its family's way,
    :func:`infer.predictors.families.open_member`); tests pass a fake.
    """
    _force_offline()
    _log_to_stderr()
    check_out_dir(out_dir)
    cfg = config.infer
    # Every argument is parsed before the clock starts or anything is loaded.
    budget_seconds = parse_duration(cfg.time_budget) if cfg.time_budget else None
    budget = Budget(budget_seconds, cfg.budget_margin if budget_seconds else 0.0, clock)
    asked = Questions.read(questions, Layout.of(config))
    specs = expand_model_dirs(model_dirs, max_length=cfg.max_length, use_context=cfg.use_context)
    check_letters(specs, asked.letters, str(questions))
    perms = rotations(len(asked.letters), cfg.tta)
    fit_report = _set_weights(specs, asked.letters, config, out_dir)
    job = _Job(questions, asked, specs, perms, budget, fit_report)
    with OutLock(out_dir):
        return _run(job, out_dir, config, clock, open_member)


def _run(
    job: _Job,
    out_dir: Path,
    config: SciqaConfig,
    clock: Callable[[], float],
    open_member: OpenMember | None,
) -> dict[str, Any]:
    """The members, run into OUT_DIR (which this run holds the lock of)."""
    cfg, asked = config.infer, job.asked
    # Imported only now: they import transformers, which must see the offline switch.
    from tqdm.contrib.logging import logging_redirect_tqdm

    from infer.encodings import Encodings
    from infer.member import Members
    from infer.predictors import families
    from infer.runner import Runner
    from infer.summary import Manifest, Summary
    from infer.takeover import RunId, take_over

    loading = families.Loading.resolve(cfg, config.causal_lm, clock)
    encodings = Encodings(asked, job.perms, cfg.batch_size, config.causal_lm)
    members = Members(encodings, loading, out_dir, open_member or families.open_member)
    planner = Planner(job.budget, len(job.perms), len(asked.ids), members.tokens)
    results = Results(out_dir, asked.ids, job.specs, cfg.ensemble)
    run_id = RunId.of(job.questions, job.specs, members, cfg)
    summary = Summary(asked, loading, job.fit_report)
    manifest = Manifest(out_dir, config, job.questions, summary, run_id)

    def take_over_out_dir(runner: Runner) -> None:
        take_over(out_dir, run_id)
        manifest.write(runner)

    cascade = Cascade.plan(job.specs, cfg)
    runner = Runner(members, planner, results, cascade, manifest.write, take_over_out_dir)
    try:
        # Log lines print above the progress bars instead of being glued to them.
        with logging_redirect_tqdm(loggers=[logging.getLogger("infer")]):
            runner.run()
        if not results.written:
            raise InferError(
                f"no model finished within the time budget; {out_dir / SUBMISSION} "
                "was not written (raise --time-budget)"
            )
        result = manifest.summary(runner)
        if asked.answers is not None:
            write_json(result, out_dir / SCORES)
        manifest.write(runner, FINISHED)
    except BaseException:
        if runner.output_started:
            _mark_stopped(manifest, runner)
        raise
    return result


def _mark_stopped(manifest: Manifest, runner: Runner) -> None:
    """Say in the manifest that the run ended early, if the disk still lets us."""
    try:
        manifest.write(runner, STOPPED)
    except (OSError, SciqaError) as exc:
        log.warning("%s: could not mark the run stopped (%s)", manifest.out_dir, exc)


def _set_weights(
    specs: list[ModelSpec], letters: list[str], config: SciqaConfig, out_dir: Path
) -> dict | None:
    """Give every member its ``infer.weights`` weight; the fit's report when the weights
    are fitted on OOF predictions (zero-shot members are scored for it in OUT_DIR/oof/)."""
    cfg = config.infer
    if cfg.weights in FITTED:

        def zero_shot(members: list[ModelSpec], questions: Path) -> dict:
            from infer.ensemble.zero_shot import score_orphans

            log.info("scoring %s on %s for the weight fit", [m.name for m in members], questions)
            return score_orphans(members, questions, out_dir, config)

        values, report = fit_auto_weights(specs, letters, cfg, config.seed, zero_shot)
    else:
        values, report = parse_weights(cfg.weights, len(specs), [s.name for s in specs]), None
    for spec, value in zip(specs, values, strict=True):
        spec.weight = value
    return report

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
from pathlib import Path
from typing import Any

from infer.errors import InferError
from infer.models import check_letters, expand_model_dirs
from infer.plan.budget import Budget, parse_duration
from sciqa.config import SciqaConfig
from sciqa.io import read_questions, write_json
from sciqa.runs import ENSEMBLE, SCORES, SUBMISSION, write_run_files
from sciqa.schema import ANSWER, option_letters

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


def run_infer(
    questions: Path,
    model_dirs: list[str],
    out_dir: Path,
    config: SciqaConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run the ensemble and write OUT_DIR; returns the scores/summary dict."""
    _force_offline()
    _log_to_stderr()
    cfg = config.infer
    weights, budget_text, passes = cfg.weights, cfg.time_budget, cfg.tta
    # Parse every argument before the clock starts or anything is loaded.
    budget_seconds = parse_duration(budget_text) if budget_text else None
    budget = Budget(budget_seconds, cfg.budget_margin if budget_seconds else 0.0, clock)

    frame = read_questions(questions)
    letters = option_letters(frame.columns)
    specs = expand_model_dirs(model_dirs, max_length=cfg.max_length, use_context=cfg.use_context)
    check_letters(specs, letters, str(questions))

    from infer.ensemble.combine import parse_weights
    from infer.plan.tta import rotations

    perms = rotations(len(letters), passes)
    fit_report = None
    if weights in ("auto", "stack", "select"):
        from infer.ensemble.oof import fit_auto_weights

        values, fit_report = fit_auto_weights(specs, letters, cfg, config.seed)
    else:
        values = parse_weights(weights, len(specs), [s.name for s in specs])
    for spec, value in zip(specs, values, strict=True):
        spec.weight = value

    from infer import outputs
    from infer.runner import Runner

    labelled = ANSWER in frame.columns and frame[ANSWER].astype(bool).all()
    answers = frame[ANSWER].tolist() if labelled else None

    def summary(runner: Runner) -> dict[str, Any]:
        rows = []
        for spec in specs:
            row: dict[str, Any] = {
                "model": spec.name,
                "path": str(spec.path),
                "weight": spec.weight,
            }
            row.update(runner.runs.get(spec.name, {"status": "not run"}))
            if spec.name in runner.logits and answers is not None:
                row.update(outputs.score(runner.logits[spec.name], answers))
            rows.append(row)
        ensemble = runner.ensemble()
        if ensemble is not None:
            row = {"model": ENSEMBLE, "weight": None}
            row["seconds"] = round(sum(r.get("seconds", 0) for r in runner.runs.values()), 2)
            if answers is not None:
                row.update(outputs.score(ensemble, answers))
            rows.append(row)
        result: dict[str, Any] = {
            "questions": len(frame),
            "options": len(letters),
            "labelled": bool(labelled),
            "ensemble_mode": cfg.ensemble,
            "tta": len(perms),
            "models": rows,
            "weights_fit": fit_report,
            "time_budget_seconds": budget_seconds,
            "elapsed_seconds": round(budget.elapsed(), 2),
            "plans": runner.plans,
            "device": str(runner.device),
            "devices": [str(d) for d in runner.devices],
            "dtype": str(runner.dtype).replace("torch.", ""),
        }
        if runner.cascade is not None:
            result["cascade"] = _cascade_report(runner, answers)
        return result

    def on_progress(runner: Runner) -> None:
        # After every model: the manifest says what is done so far (a kill keeps it true).
        write_run_files(out_dir, "infer", config, inputs=[questions], extra=summary(runner))

    runner = Runner(
        frame, letters, specs, cfg, out_dir, budget, perms,
        outputs.questions_hash(frame, letters), on_progress, clock, config.causal_lm,
    )  # fmt: skip
    from tqdm.contrib.logging import logging_redirect_tqdm

    # Log lines print above the progress bars instead of being glued to them.
    with logging_redirect_tqdm(loggers=[logging.getLogger("infer")]):
        runner.run()
    if not runner.written:
        raise InferError(
            f"no model finished within the time budget; {out_dir / SUBMISSION} "
            "was not written (raise --time-budget)"
        )
    result = summary(runner)
    if labelled:
        write_json(result, out_dir / SCORES)
    on_progress(runner)
    return result


def _cascade_report(runner: Any, answers: list[str] | None) -> dict[str, Any]:
    from infer import outputs

    info = runner.cascade
    report = {k: info[k] for k in ("cheap", "expensive", "fraction", "escalated")}
    if answers is not None:
        rows = info["rows"]
        final = runner.ensemble()
        sub = [answers[i] for i in rows]
        report["map_at_3_cheap_only"] = outputs.score(info["cheap_logits"], answers)["map_at_3"]
        report["map_at_3_final"] = outputs.score(final, answers)["map_at_3"]
        report["escalated_map_at_3_before"] = outputs.score(info["cheap_logits"][rows], sub).get(
            "map_at_3"
        )
        report["escalated_map_at_3_after"] = outputs.score(final[rows], sub).get("map_at_3")
    return report

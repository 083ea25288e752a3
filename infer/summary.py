"""What a run reports: ``manifest.json`` after every member, ``scores.json`` at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infer.outputs import Results, score
from infer.plan.cascade import Cascade
from infer.predictors.families import Loading
from infer.questions import Questions
from infer.runner import Runner
from infer.takeover import RunId
from sciqa.config import SciqaConfig
from sciqa.runs import ENSEMBLE, RUNNING, write_run_files


class Summary:
    """The run so far as one dict: per member, the ensemble, the plans, the cascade;
    with MAP@3 and accuracy where the questions are labelled."""

    def __init__(self, questions: Questions, loading: Loading, fit_report: dict | None):
        self.questions, self.loading, self.fit_report = questions, loading, fit_report

    def __call__(self, runner: Runner) -> dict[str, Any]:
        questions, loading, budget = self.questions, self.loading, runner.planner.budget
        result: dict[str, Any] = {
            "questions": len(questions.frame),
            "options": len(questions.letters),
            "labelled": questions.answers is not None,
            "ensemble_mode": runner.results.mode,
            "tta": runner.planner.n_passes,
            "models": self._models(runner.results),
            "weights_fit": self.fit_report,
            "time_budget_seconds": budget.seconds,
            "elapsed_seconds": round(budget.elapsed(), 2),
            "plans": runner.planner.plans,
            "device": str(loading.devices[0]),
            "devices": [str(d) for d in loading.devices],
            "dtype": str(loading.dtype).replace("torch.", ""),
        }
        cascade = runner.cascade.report()
        if cascade is not None:
            result["cascade"] = cascade | self._cascade_scores(runner.cascade, runner.results)
        return result

    def _models(self, results: Results) -> list[dict[str, Any]]:
        """A row per member, then the ensemble's."""
        answers = self.questions.answers
        rows = []
        for spec in results.specs:
            row: dict[str, Any] = {
                "model": spec.name,
                "path": str(spec.path),
                "weight": spec.weight,
            }
            row.update(results.records.get(spec.name, {"status": "not run"}))
            if spec.name in results.logits and answers is not None:
                row.update(score(results.logits[spec.name], answers))
            rows.append(row)
        ensemble = results.ensemble()
        if ensemble is not None:
            row = {"model": ENSEMBLE, "weight": None}
            row["seconds"] = round(sum(r.get("seconds", 0) for r in results.records.values()), 2)
            if answers is not None:
                row.update(score(ensemble, answers))
            rows.append(row)
        return rows

    def _cascade_scores(self, cascade: Cascade, results: Results) -> dict[str, Any]:
        """MAP@3 before and after the expensive stage, overall and on the escalated rows."""
        answers = self.questions.answers
        if answers is None:
            return {}
        rows, cheap, final = cascade.rows, cascade.cheap_logits, results.ensemble()
        assert rows is not None and cheap is not None and final is not None
        sub = [answers[i] for i in rows]
        return {
            "map_at_3_cheap_only": score(cheap, answers)["map_at_3"],
            "map_at_3_final": score(final, answers)["map_at_3"],
            "escalated_map_at_3_before": score(cheap[rows], sub).get("map_at_3"),
            "escalated_map_at_3_after": score(final[rows], sub).get("map_at_3"),
        }


class Manifest:
    """OUT_DIR's ``manifest.json`` and ``config.yaml``: :meth:`write` when the run takes
    OUT_DIR over, after every member and at the end keeps them true to what is done,
    whenever the run is killed.

    ``status``: ``running`` until the run ends, then ``finished``, or ``stopped`` when
    it ended on an error or Ctrl-C (a killed run leaves ``running``).
    """

    def __init__(
        self,
        out_dir: Path,
        config: SciqaConfig,
        questions: Path,
        summary: Summary,
        run_id: RunId,
    ):
        self.out_dir, self.config, self.questions = out_dir, config, questions
        self.summary, self.run_id = summary, run_id

    def write(self, runner: Runner, status: str = RUNNING) -> None:
        extra = {"status": status, **self.run_id.manifest(), **self.summary(runner)}
        write_run_files(self.out_dir, "infer", self.config, inputs=[self.questions], extra=extra)

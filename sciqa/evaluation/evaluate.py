"""Score a submission against labelled questions, joined on ``id``; with bootstrap
intervals, against another submission (paired), or every member of a run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sciqa.errors import SchemaError
from sciqa.evaluation.intervals import (
    N_RESAMPLES,
    SEED,
    average_precisions,
    bootstrap_interval,
    paired_bootstrap,
)
from sciqa.layouts import Layout
from sciqa.metrics import accuracy, map_at_3
from sciqa.runs import ENSEMBLE, RUNNING, STOPPED
from sciqa.schema import ANSWER, ID, option_letters
from sciqa.submission import PREDICTION, first_unknown_letter

_SHOWN_IDS = 3


@dataclass(frozen=True)
class EvalResult:
    n_questions: int
    map_at_3: float
    accuracy: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _some(ids: pd.Series) -> str:
    shown = ", ".join(repr(i) for i in ids.iloc[:_SHOWN_IDS])
    return shown + (", ..." if len(ids) > _SHOWN_IDS else "")


def join_submission(
    submission: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    submission_source: str = "submission",
    labels_source: str = "labels",
) -> tuple[list[str], list[str]]:
    """Answers and predictions in ``labels``' row order, after checking the ids match.

    Every labelled id needs exactly one prediction and every predicted id must be
    labelled: a partial submission would silently inflate or deflate the score.
    """
    missing = labels.loc[~labels[ID].isin(submission[ID]), ID]
    if len(missing):
        raise SchemaError(
            f"{submission_source}: no prediction for {len(missing)} of {len(labels)} "
            f"labelled ids in {labels_source} ({_some(missing)})"
        )
    extra = submission.loc[~submission[ID].isin(labels[ID]), ID]
    if len(extra):
        raise SchemaError(
            f"{submission_source}: {len(extra)} ids are not in {labels_source} "
            f"({_some(extra)}); are these the right files?"
        )
    allowed = set(option_letters(labels.columns))
    joined = labels[[ID, ANSWER]].merge(submission[[ID, PREDICTION]], on=ID, how="left")
    for row_id, prediction in zip(joined[ID], joined[PREDICTION], strict=True):
        bad = first_unknown_letter(prediction, allowed)
        if bad is not None:
            raise SchemaError(
                f"{submission_source}: id={row_id}, column 'prediction': "
                f"{bad!r} is not an option in {labels_source} "
                f"({', '.join(sorted(allowed))})"
            )
    return joined[ANSWER].tolist(), joined[PREDICTION].tolist()


def score_submission(
    submission: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    submission_source: str = "submission",
    labels_source: str = "labels",
) -> EvalResult:
    """MAP@3 and top-1 accuracy of validated ``submission`` on validated ``labels``."""
    answers, predictions = join_submission(
        submission, labels, submission_source=submission_source, labels_source=labels_source
    )
    return EvalResult(
        n_questions=len(answers),
        map_at_3=map_at_3(answers, predictions),
        accuracy=accuracy(answers, predictions),
    )


def _score_file(
    path: Path, labels: pd.DataFrame, labels_path: Path, n_resamples: int, seed: int
) -> tuple[dict[str, Any], Any]:
    from sciqa.evaluation.report.data import ci_dict
    from sciqa.submission import read_submission

    answers, predictions = join_submission(
        read_submission(path), labels, submission_source=str(path), labels_source=str(labels_path)
    )
    aps = average_precisions(answers, predictions)
    ci = bootstrap_interval(aps, n_resamples=n_resamples, seed=seed)
    result = EvalResult(
        len(answers), map_at_3(answers, predictions), accuracy(answers, predictions)
    )
    return {**result.as_dict(), "map_at_3_ci": ci_dict(ci, seed)}, aps


def evaluate_submission(
    submission: Path,
    labels_path: Path,
    *,
    against: Path | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    layout: Layout | None = None,
) -> dict[str, Any]:
    """``sciqa eval SUBMISSION LABELS [--against OTHER]``: scores with a 95% bootstrap
    interval; with ``against``, the paired interval of SUBMISSION minus OTHER."""
    from sciqa.evaluation.report.data import diff_dict
    from sciqa.io import read_questions

    labels = read_questions(labels_path, require_answer=True, layout=layout)
    result, aps = _score_file(submission, labels, labels_path, n_resamples, seed)
    if against is not None:
        other, other_aps = _score_file(against, labels, labels_path, n_resamples, seed)
        diff = paired_bootstrap(aps, other_aps, n_resamples=n_resamples, seed=seed)
        result["against"] = {
            "submission": str(against),
            **other,
            "difference": diff_dict(diff, seed),
        }
    return result


def evaluate_dir(
    paths: list[Path],
    labels: Path,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    layout: Layout | None = None,
) -> dict[str, Any]:
    """``sciqa eval INFER_DIR LABELS``: every member's and the ensemble's MAP@3 with its
    interval, and the paired interval of the ensemble minus its best member.

    The top-level keys are the ensemble's (what scoring its submission.csv gives).
    """
    from sciqa.evaluation.evidence import load_evidence
    from sciqa.evaluation.report.data import ensemble_minus_best, system_scores

    ev = load_evidence(paths, labels, layout)
    systems = system_scores(ev, n_resamples=n_resamples, seed=seed)
    final = systems[-1]
    result = {
        "n_questions": final["questions"],
        "map_at_3": final["map_at_3"],
        "accuracy": final["accuracy"],
        "map_at_3_ci": final["map_at_3_ci"],
        "model": final["model"],
        "models": systems,
        "ensemble_minus_best": ensemble_minus_best(ev, n_resamples=n_resamples, seed=seed),
    }
    status = ev.manifest.get("status") if ev.kind == "infer" else None
    if status in (RUNNING, STOPPED):
        planned = [r for r in ev.manifest.get("models", []) if r.get("model") != ENSEMBLE]
        result["unfinished"] = (
            f"{paths[0]}: the sciqa infer run that wrote it did not finish (status {status!r}, "
            f"{len(ev.members)} of {len(planned)} members scored); these are the scores of "
            "its partial ensemble (rerun the same sciqa infer command to finish it)"
        )
    return result


def _interval_text(ci: dict[str, Any], signed: bool = False) -> str:
    fmt = "+.4f" if signed else ".4f"
    pct = f"{ci['confidence']:.0%}"
    return f"{pct} interval {ci['low']:{fmt}} to {ci['high']:{fmt}}"


def _side_of_zero(ci: dict[str, Any]) -> str:
    return "above 0" if ci["low"] > 0 else "below 0" if ci["high"] < 0 else "includes 0"


def format_eval(result: dict[str, Any], name: str) -> list[str]:
    """The lines ``sciqa eval`` prints; the first keeps its historical form."""
    ci = result["map_at_3_ci"]
    lines = [f"note: {result['unfinished']}"] if "unfinished" in result else []
    if "models" in result:
        from sciqa.evaluation.report.data import verdict

        lines.append("| model | weight | questions | MAP@3 | 95% interval | accuracy |")
        lines.append("|---|---:|---:|---:|---|---:|")
        for row in result["models"]:
            weight = f"{row['weight']:.3f}" if row["weight"] is not None else "-"
            if "map_at_3" in row:
                c = row["map_at_3_ci"]
                scores = f"{row['map_at_3']:.4f} | {c['low']:.4f} to {c['high']:.4f} | "
                scores += f"{row['accuracy']:.4f}"
            else:
                scores = "- | - | -"
            lines.append(f"| {row['model']} | {weight} | {row['questions']} | {scores} |")
        lines.append(verdict(result["ensemble_minus_best"]))
    lines.append(
        f"MAP@3 {result['map_at_3']:.4f}  accuracy {result['accuracy']:.4f}  "
        f"questions {result['n_questions']}"
    )
    lines.append(
        f"MAP@3 {_interval_text(ci)} (bootstrap over questions, "
        f"{ci['n_resamples']} resamples, seed {ci['seed']})"
    )
    if "against" in result:
        other = result["against"]
        diff = other["difference"]
        lines.append(
            f"against {other['submission']}: MAP@3 {other['map_at_3']:.4f}  "
            f"accuracy {other['accuracy']:.4f}  {_interval_text(other['map_at_3_ci'])}"
        )
        lines.append(
            f"{name} minus {other['submission']}: {diff['estimate']:+.4f} MAP@3, paired "
            f"{_interval_text(diff, signed=True)}, {_side_of_zero(diff)}"
        )
    return lines

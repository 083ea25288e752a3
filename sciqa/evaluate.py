"""Score a submission against labelled questions, joined on ``id``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from sciqa.errors import SchemaError
from sciqa.metrics import accuracy, map_at_3
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


def score_submission(
    submission: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    submission_source: str = "submission",
    labels_source: str = "labels",
) -> EvalResult:
    """MAP@3 and top-1 accuracy of validated ``submission`` on validated ``labels``.

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
    answers = joined[ANSWER].tolist()
    predictions = joined[PREDICTION].tolist()
    return EvalResult(
        n_questions=len(joined),
        map_at_3=map_at_3(answers, predictions),
        accuracy=accuracy(answers, predictions),
    )

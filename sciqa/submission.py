"""Kaggle submission files: ``id,prediction`` with 1 to 3 distinct space-separated letters,
best first (MAP@3 scores the first three, each letter once).

>>> make_submission(["q1"], ["B A D"]).to_dict("records")
[{'id': 'q1', 'prediction': 'B A D'}]
"""

from __future__ import annotations

import os
import string
from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd

from sciqa.errors import SchemaError
from sciqa.io import read_table, write_table
from sciqa.metrics import K
from sciqa.schema import ID, describe_missing, describe_row

PREDICTION = "prediction"
COLUMNS = (ID, PREDICTION)
_LETTERS = set(string.ascii_uppercase)


def make_submission(ids: Sequence[object], predictions: Sequence[str]) -> pd.DataFrame:
    """Build a submission frame; ids become strings so joins on ``id`` are exact."""
    if len(ids) != len(predictions):
        raise ValueError(f"{len(ids)} ids but {len(predictions)} predictions")
    return pd.DataFrame({ID: [str(i) for i in ids], PREDICTION: list(predictions)})


def first_unknown_letter(prediction: str, allowed: Collection[str]) -> str | None:
    """The first token of ``prediction`` not in ``allowed``, or None if all are."""
    return next((token for token in prediction.split() if token not in allowed), None)


def prediction_problem(prediction: str) -> str | None:
    """What is wrong with one prediction, or None when it is 1 to ``K`` distinct letters.

    >>> prediction_problem("B A D") is None, prediction_problem("A A C")
    (True, "'A A C' repeats 'A'; give each letter once, best first, e.g. 'B A D'")
    """
    letters = prediction.split()
    if not letters:
        return f"empty prediction; give 1 to {K} option letters, best first, e.g. 'B A D'"
    bad = first_unknown_letter(prediction, _LETTERS)
    if bad is not None:
        return f"{bad!r} is not an option letter; expected e.g. 'B A D'"
    if len(letters) > K:
        return f"{prediction!r} has {len(letters)} letters; give at most {K}, best first"
    repeated = next((x for i, x in enumerate(letters) if x in letters[:i]), None)
    if repeated is not None:
        return (
            f"{prediction!r} repeats {repeated!r}; give each letter once, best first, e.g. 'B A D'"
        )
    return None


def validate_submission(frame: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
    """Check columns, unique ids and every prediction (:func:`prediction_problem`);
    return a normalised copy."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: {describe_missing(missing, frame.columns)}")
    frame = frame.reset_index(drop=True).copy()
    frame[ID] = frame[ID].astype(str)
    frame[PREDICTION] = frame[PREDICTION].fillna("").astype(str).str.strip()
    duplicated = frame[ID].duplicated()
    if duplicated.any():
        pos = int(duplicated.to_numpy().argmax())
        raise SchemaError(
            f"{source}: row {pos + 1}, column 'id': duplicate id {frame[ID].iat[pos]!r}"
        )
    for pos, prediction in enumerate(frame[PREDICTION]):
        problem = prediction_problem(prediction)
        if problem is not None:
            raise SchemaError(
                f"{source}: {describe_row(pos, frame[ID].iat[pos])}, column 'prediction': {problem}"
            )
    return frame


def read_submission(path: str | os.PathLike[str]) -> pd.DataFrame:
    return validate_submission(read_table(path), str(path))


def write_submission(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    return write_table(validate_submission(frame, str(path))[list(COLUMNS)], path)

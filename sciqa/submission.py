"""Kaggle submission files: ``id,prediction`` with up to three space-separated letters.

>>> make_submission(["q1"], ["B A D"]).to_dict("records")
[{'id': 'q1', 'prediction': 'B A D'}]
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sciqa.errors import SchemaError
from sciqa.io import read_table, write_table

ID = "id"
PREDICTION = "prediction"
COLUMNS = (ID, PREDICTION)
_LETTERS = set(string.ascii_uppercase)


def make_submission(ids: Sequence[object], predictions: Sequence[str]) -> pd.DataFrame:
    """Build a submission frame; ids become strings so joins on ``id`` are exact."""
    if len(ids) != len(predictions):
        raise ValueError(f"{len(ids)} ids but {len(predictions)} predictions")
    return pd.DataFrame({ID: [str(i) for i in ids], PREDICTION: list(predictions)})


def validate_submission(frame: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
    """Check columns, unique ids and letter-only predictions; return normalised copy."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in frame.columns) or "no columns"
        raise SchemaError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; found {found}"
        )
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
        bad = [t for t in prediction.split() if t not in _LETTERS]
        if bad:
            raise SchemaError(
                f"{source}: row {pos + 1} (id={frame[ID].iat[pos]}), column 'prediction': "
                f"{bad[0]!r} is not an option letter; expected e.g. 'B A D'"
            )
    return frame


def read_submission(path: str | os.PathLike[str]) -> pd.DataFrame:
    return validate_submission(read_table(path), str(path))


def write_submission(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    return write_table(validate_submission(frame, str(path))[list(COLUMNS)], path)

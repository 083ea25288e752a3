"""k-fold splits: stratified by answer letter, grouped by ``source_id``.

Questions generated from one Wikipedia chunk share a ``source_id``; they must never
straddle train and validation, or validation MAP@3 flatters the model. Rows without a
``source_id`` are their own group.

>>> import pandas as pd
>>> frame = pd.DataFrame({"id": list("abcdef"), "answer": list("ABABAB")})
>>> [len(v) for _, v in fold_indices(frame, 3, seed=0)]
[2, 2, 2]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from sciqa.errors import SciqaError
from sciqa.schema import ANSWER, ID, SOURCE_ID


def groups_of(frame: pd.DataFrame) -> np.ndarray:
    """One group label per row: its ``source_id``, or its own ``id`` when blank/absent."""
    ids = "id:" + frame[ID].astype(str)
    if SOURCE_ID not in frame.columns:
        return ids.to_numpy()
    source = frame[SOURCE_ID].fillna("").astype(str).str.strip()
    return np.where(source != "", "src:" + source, ids)


def fold_indices(
    frame: pd.DataFrame, folds: int, *, seed: int, source: str = "questions"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(train_rows, valid_rows)`` positions for each of ``folds`` folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = groups_of(frame)
    n_groups = len(set(groups))
    if folds < 2:
        raise SciqaError(f"--folds {folds}: k-fold needs at least 2 folds (or --folds 1 --valid)")
    if n_groups < folds:
        raise SciqaError(
            f"{source}: {len(frame)} questions in {n_groups} source_id groups is fewer than "
            f"--folds {folds}; lower --folds or add questions"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        splits = list(splitter.split(np.zeros(len(frame)), frame[ANSWER].to_numpy(), groups))
    except ValueError as exc:  # e.g. fewer questions with some answer letter than folds
        raise SciqaError(
            f"{source}: cannot split into {folds} folds: {exc}; lower --folds"
        ) from None
    for fold, (train, valid) in enumerate(splits):
        if len(valid) == 0 or len(train) == 0:
            side = "validation" if len(valid) == 0 else "training"
            raise SciqaError(
                f"{source}: fold {fold} of {folds} has no {side} rows; "
                "lower --folds or add questions"
            )
        yield train, valid

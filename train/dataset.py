"""Questions -> rows of features for a fold's collator, with their lengths.

A backend's ``encode_batch`` turns a frame of questions into per-row columns: the
collator's keys plus ``length`` and the ``overlong`` (and ``cut``) flags;
``train.tokenized`` maps it over a whole table once, through a cache, and a
:class:`Split` is the rows of one side of a fold. The encoder path's encoding is
:func:`sciqa.scoring.mc_encoding.encode_questions`, shared with ``infer`` so both stages
feed the model identical inputs.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pandas as pd

from sciqa.scoring.mc_encoding import encode_questions

LENGTH = "length"  # tokens of the longest sequence of a question: drives length grouping
OVERLONG = "overlong"  # the question and an option alone exceed max_length
CUT = "cut"  # its context was cut to fit max_length (causal path; the encoder's is silent)


@dataclass
class Split:
    """Encoded rows of one side of a fold, in the frame's order."""

    ids: list[str]
    features: Sequence[dict[str, Any]]  # a list, or a datasets.Dataset (its rows are dicts)
    lengths: list[int]  # longest option sequence per question: drives length grouping
    overlong: int = 0  # questions flagged OVERLONG
    cut: int = 0  # questions flagged CUT

    def __len__(self) -> int:
        return len(self.features)


def as_columns(features: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-question feature dicts -> one list per key (what ``Dataset.map`` returns)."""
    keys = list(features[0]) if features else []
    return {key: [feature[key] for feature in features] for key in keys}


def flags(n: int, rows: Sequence[int]) -> list[bool]:
    """``[i in rows for i in range(n)]``.

    >>> flags(3, [2])
    [False, False, True]
    """
    marked = set(rows)
    return [i in marked for i in range(n)]


def code_digest(*modules: ModuleType) -> str:
    """sha256 of the modules' source: a cached encoding is stale once its code changes."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def mc_columns(
    tokenizer: Any,
    frame: pd.DataFrame,
    *,
    max_length: int,
    use_context: bool,
    letters: list[str],
) -> dict[str, list[Any]]:
    """The encoder path's columns for ``frame``: ``input_ids`` etc. (one list per
    option), ``labels``, ``length`` and ``overlong``."""
    encoded = encode_questions(
        tokenizer, frame, max_length, use_context=use_context, letters=letters
    )
    columns = as_columns(encoded.features)
    columns[LENGTH] = encoded.lengths
    columns[OVERLONG] = flags(len(frame), encoded.overlong_rows)
    return columns

"""Questions -> features for ``DataCollatorForMultipleChoice``, with their lengths.

The encoding itself is :func:`sciqa.scoring.mc_encoding.encode_questions`, shared with ``infer``
so both stages feed the model identical inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sciqa.schema import ID
from sciqa.scoring.mc_encoding import encode_questions

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Encoded rows of one side of a fold, in the frame's order."""

    ids: list[str]
    features: list[dict[str, Any]]
    lengths: list[int]  # longest option sequence per question: drives length grouping

    def __len__(self) -> int:
        return len(self.features)


def encode_split(
    tokenizer: Any,
    frame: pd.DataFrame,
    *,
    max_length: int,
    use_context: bool,
    letters: list[str],
    name: str,
) -> Split:
    encoded = encode_questions(
        tokenizer, frame, max_length, use_context=use_context, letters=letters
    )
    if encoded.overlong:
        log.warning(
            "%s: %d question(s) do not fit train.max_length=%d even without context; "
            "their question/option text was truncated",
            name,
            encoded.overlong,
            max_length,
        )
    return Split(frame[ID].astype(str).tolist(), encoded.features, encoded.lengths)

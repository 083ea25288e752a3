"""Turn questions into multiple-choice model inputs, the same way in ``train`` and ``infer``.

Each option becomes one sequence pair: first segment = the question, then the context;
second segment = the option. Truncation is ``only_first`` from the right, so only the
context (which comes last in the first segment) is ever cut; the question and the option
are kept whole. Rows where even the question + option do not fit are counted, and
truncated as a last resort, so the caller can report them.

The tokenizer is passed in, so this module needs no transformers import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sciqa.schema import ANSWER, CONTEXT, PROMPT, option_letters

# Between the question and its context; plain text so every tokenizer handles it.
CONTEXT_SEPARATOR = "\n\n"


@dataclass
class EncodedQuestions:
    """One feature per question for ``transformers.DataCollatorForMultipleChoice``.

    ``features[i]`` maps ``input_ids`` (and the tokenizer's other keys) to a list with
    one token list per option; ``labels`` (option index) is set when answers exist.
    """

    features: list[dict[str, Any]]
    n_options: int
    overlong: int = 0  # questions where question + option alone exceeded max_length
    lengths: list[int] = field(default_factory=list)  # longest option sequence per question
    overlong_rows: list[int] = field(default_factory=list)  # their row positions, sorted


def first_segment(prompt: str, context: str | None) -> str:
    """The question first, context after it, so right-truncation only cuts context.

    >>> first_segment("Why is the sky blue?", "Rayleigh scattering ...")
    'Why is the sky blue?\\n\\nRayleigh scattering ...'
    """
    context = (context or "").strip()
    return f"{prompt}{CONTEXT_SEPARATOR}{context}" if context else prompt


def encode_questions(
    tokenizer: Any,
    frame: pd.DataFrame,
    max_length: int,
    *,
    use_context: bool = True,
    letters: Sequence[str] | None = None,
) -> EncodedQuestions:
    """Tokenize every (question [+ context], option) pair of a schema-valid ``frame``."""
    letters = list(letters or option_letters(frame.columns))
    n_options = len(letters)
    contexts = (
        frame[CONTEXT].fillna("").astype(str).tolist()
        if use_context and CONTEXT in frame.columns
        else [""] * len(frame)
    )
    firsts = [first_segment(p, c) for p, c in zip(frame[PROMPT].astype(str), contexts, strict=True)]
    seconds = frame[letters].astype(str).to_numpy()

    # Question + option length without context: decides which rows can keep both whole.
    bare = tokenizer(
        [p for p in frame[PROMPT].astype(str) for _ in range(n_options)],
        seconds.ravel().tolist(),
        truncation=False,
    )["input_ids"]
    overlong_rows = {i // n_options for i, ids in enumerate(bare) if len(ids) > max_length}

    encoded = (
        tokenizer(
            [f for f in firsts for _ in range(n_options)],
            seconds.ravel().tolist(),
            truncation="only_first",
            max_length=max_length,
        )
        if not overlong_rows
        else _encode_with_fallback(tokenizer, firsts, seconds, max_length, overlong_rows)
    )

    answers = frame[ANSWER].tolist() if ANSWER in frame.columns else None
    index = {letter: i for i, letter in enumerate(letters)}
    features, lengths = [], []
    for row in range(len(frame)):
        span = slice(row * n_options, (row + 1) * n_options)
        feature = {key: list(values[span]) for key, values in encoded.items()}
        if answers is not None and answers[row]:
            feature["labels"] = index[answers[row]]
        features.append(feature)
        lengths.append(max(len(ids) for ids in feature["input_ids"]))
    return EncodedQuestions(features, n_options, len(overlong_rows), lengths, sorted(overlong_rows))


def _encode_with_fallback(
    tokenizer: Any,
    firsts: list[str],
    seconds: Any,
    max_length: int,
    overlong_rows: set[int],
) -> dict[str, list]:
    """Like the batched call, but rows too long even without context use longest_first."""
    n_options = seconds.shape[1]
    merged: dict[str, list] = {}
    for row, first in enumerate(firsts):
        strategy = "longest_first" if row in overlong_rows else "only_first"
        part = tokenizer(
            [first] * n_options,
            seconds[row].tolist(),
            truncation=strategy,
            max_length=max_length,
        )
        for key, values in part.items():
            merged.setdefault(key, []).extend(values)
    return merged

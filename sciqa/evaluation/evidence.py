"""What a run left behind, aligned on question ids: the input of ``sciqa eval DIR`` and
``sciqa report``.

Two kinds of directory are read, through the files the stages write (never their code):

- a ``sciqa infer`` OUT_DIR: ``logits/ids.json``, ``logits/<model>.npy`` per member,
  ``logits/ensemble.npy`` and ``manifest.json`` (weights, budget plans, what ran);
- one or more ``sciqa train`` run dirs: ``oof.parquet`` (each question scored by the
  fold that held it out), ``fold_<i>/metrics.json``; several runs trained on the same
  questions become the members of an equal-weight ensemble of probabilities.

Labels come from ``--labels FILE``, else from the run's own files (``oof.parquet``'s
``answer``; the questions file that infer's manifest names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sciqa.errors import SciqaError
from sciqa.hf_datasets import is_dataset_source
from sciqa.io import read_questions, read_table
from sciqa.layouts import Layout
from sciqa.metrics import softmax
from sciqa.runs import ENSEMBLE, FOLD_METRICS, FOLD_PREFIX, LOGIT_IDS, LOGITS, MANIFEST, OOF
from sciqa.schema import ANSWER, ID, SOURCE, option_letters

FOLD = "fold"


class EvidenceError(SciqaError):
    """A directory that cannot be scored; the message names the file and what to do."""


@dataclass
class Member:
    name: str
    logits: np.ndarray  # (n, n_options) float64; an all-NaN row = not scored
    weight: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # infer's manifest row: status, passes...

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.logits).any(axis=1)


@dataclass
class Evidence:
    kind: Literal["infer", "train"]
    sources: list[Path]  # the directories read
    ids: list[str]
    letters: list[str]
    answers: np.ndarray  # (n,) index of the correct option
    members: list[Member]
    ensemble: Member | None  # None for a single train run
    ensemble_note: str = ""  # how the ensemble was formed
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. source -> (n,) labels
    manifest: dict[str, Any] = field(default_factory=dict)  # infer's, or the first run's
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved config.yaml
    folds: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # run -> metrics

    @property
    def systems(self) -> list[Member]:
        """The members, then the ensemble when there is one."""
        return self.members + ([self.ensemble] if self.ensemble is not None else [])


def load_evidence(
    paths: list[Path], labels: Path | None = None, layout: Layout | None = None
) -> Evidence:
    """An infer OUT_DIR, or one or more train run dirs, as :class:`Evidence`; ``layout``
    reads ``labels`` (questions a run names are read in the run's own layout)."""
    if not paths:
        raise EvidenceError("no directory given")
    for path in paths:
        if not path.is_dir():
            raise EvidenceError(f"{path}: not a directory")
    infer_dirs = [p for p in paths if (p / LOGITS / LOGIT_IDS).is_file()]
    if infer_dirs:
        if len(paths) > 1:
            raise EvidenceError(
                f"{infer_dirs[0]} is a sciqa infer OUT dir: report one at a time "
                "(several directories are for sciqa train runs on the same questions)"
            )
        return load_infer_dir(paths[0], labels, layout)
    return load_train_runs(paths, labels, layout)


# --- labels ---------------------------------------------------------------------------


def _read_labels(path: Path, what: str, layout: Layout | None) -> pd.DataFrame:
    frame = read_questions(path, layout=layout)
    if ANSWER not in frame.columns or not frame[ANSWER].astype(bool).all():
        raise EvidenceError(
            f"{path}: {what} has no 'answer' on every row; pass --labels FILE with the answers"
        )
    return frame.set_index(ID)


def _align_labels(frame: pd.DataFrame, ids: list[str], source: Path) -> pd.DataFrame:
    missing = [i for i in ids if i not in frame.index]
    if missing:
        raise EvidenceError(
            f"{source}: no label for {len(missing)} of {len(ids)} scored ids "
            f"(e.g. {missing[0]!r}); are these the right labels?"
        )
    return frame.loc[ids]


def _answer_indices(answers: pd.Series, letters: list[str], source: Path) -> np.ndarray:
    index = {letter: i for i, letter in enumerate(letters)}
    bad = [a for a in answers if a not in index]
    if bad:
        raise EvidenceError(
            f"{source}: answer {bad[0]!r} is not one of the scored options {', '.join(letters)}"
        )
    return np.array([index[a] for a in answers], dtype=np.int64)


def _groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    if SOURCE not in frame.columns:
        return {}
    values = frame[SOURCE].astype(str).replace("", "(none)").to_numpy()
    return {SOURCE: values}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvidenceError(f"{path}: cannot be read as JSON ({exc})") from None


def _read_config(directory: Path) -> dict[str, Any]:
    import yaml

    path = directory / "config.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


# --- sciqa infer OUT_DIR ----------------------------------------------------------------


def _manifest_questions(out: Path, manifest: dict[str, Any]) -> Path:
    inputs = manifest.get("inputs") or []
    if not inputs:
        raise EvidenceError(
            f"{out / MANIFEST}: names no questions file; pass --labels FILE with the answers"
        )
    path = Path(inputs[0]["path"] if isinstance(inputs[0], dict) else inputs[0])
    if not (path.is_file() or is_dataset_source(path)):
        raise EvidenceError(
            f"{out / MANIFEST}: its questions file {path} is not here; pass --labels FILE"
        )
    return path


def load_infer_dir(out: Path, labels: Path | None = None, layout: Layout | None = None) -> Evidence:
    """Members (``logits/<model>.npy``), ensemble and manifest of a ``sciqa infer`` run."""
    logits_dir = out / LOGITS
    ids_path = logits_dir / LOGIT_IDS
    ids = [str(i) for i in json.loads(ids_path.read_text(encoding="utf-8"))]
    manifest_path = out / MANIFEST
    manifest = _read_json(manifest_path) if manifest_path.is_file() else {}
    if labels is None:
        labels, layout = _manifest_questions(out, manifest), Layout.of_dump(_read_config(out))
    labels_path = labels
    frame = _align_labels(_read_labels(labels_path, "the labels", layout), ids, labels_path)
    letters = option_letters(frame.reset_index().columns)
    answers = _answer_indices(frame[ANSWER], letters, labels_path)

    rows = {r["model"]: r for r in manifest.get("models", []) if "model" in r}
    files = {p.stem: p for p in sorted(logits_dir.glob("*.npy"))}
    ordered = [n for n in rows if n in files and n != ENSEMBLE]
    ordered += [n for n in files if n not in ordered and n != ENSEMBLE]
    if not ordered:
        raise EvidenceError(
            f"{logits_dir}: no member logits (<model>.npy); did sciqa infer finish a model?"
        )
    members = [
        Member(
            n, _load_logits(files[n], ids, letters), rows.get(n, {}).get("weight"), rows.get(n, {})
        )
        for n in ordered
    ]
    ensemble = None
    if ENSEMBLE in files:
        ensemble = Member(
            ENSEMBLE, _load_logits(files[ENSEMBLE], ids, letters), None, rows.get(ENSEMBLE, {})
        )
    mode = manifest.get("ensemble_mode", "?")
    return Evidence(
        kind="infer",
        sources=[out],
        ids=ids,
        letters=letters,
        answers=answers,
        members=members,
        ensemble=ensemble,
        ensemble_note=f"sciqa infer's weighted mean ({mode} mode), logits/ensemble.npy",
        groups=_groups(frame),
        manifest=manifest,
        config=_read_config(out),
    )


def _load_logits(path: Path, ids: list[str], letters: list[str]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EvidenceError(f"{path}: cannot be read as a .npy array ({exc})") from None
    if array.ndim != 2 or array.shape[0] != len(ids):
        raise EvidenceError(
            f"{path}: shape {array.shape} does not match the {len(ids)} ids in "
            f"{path.parent / LOGIT_IDS}; its rows belong to another run (re-run sciqa infer)"
        )
    if array.shape[1] != len(letters):
        raise EvidenceError(
            f"{path}: {array.shape[1]} options per question but the labels have "
            f"{len(letters)} ({letters[0]}-{letters[-1]}); are these the right labels?"
        )
    return array.astype(np.float64)


# --- sciqa train run dirs ---------------------------------------------------------------


def _oof(run: Path) -> pd.DataFrame:
    path = run / OOF
    if not path.is_file():
        if any(run.glob(f"{FOLD_PREFIX}*")):
            raise EvidenceError(f"{path}: not written yet; no fold of this run has finished")
        raise EvidenceError(
            f"{run}: neither a sciqa infer OUT dir (logits/{LOGIT_IDS}) nor a sciqa train run dir "
            f"({OOF}); nothing to report"
        )
    frame = read_table(path)
    if ID not in frame.columns:
        raise EvidenceError(f"{path}: no 'id' column; re-run sciqa train")
    frame[ID] = frame[ID].astype(str)
    dup = frame[ID][frame[ID].duplicated()]
    if len(dup):
        raise EvidenceError(f"{path}: id {dup.iat[0]!r} appears twice; each question is OOF once")
    return frame.set_index(ID)


def _train_labels(run: Path, ids: list[str]) -> pd.DataFrame | None:
    """The labelled questions file in the run's manifest that holds every OOF id."""
    manifest = run / MANIFEST
    if not manifest.is_file():
        return None
    wanted = set(ids)
    for entry in _read_json(manifest).get("inputs", []):
        path = Path(entry.get("path", "") if isinstance(entry, dict) else entry)
        if not (path.is_file() or is_dataset_source(path)):
            continue
        try:
            frame = read_questions(path, layout=Layout.of_dump(_read_config(run))).set_index(ID)
        except SciqaError:
            continue
        if wanted <= set(frame.index):
            return frame.loc[ids]
    return None


def _fold_metrics(run: Path) -> dict[int, dict[str, Any]]:
    found = {}
    for path in sorted(run.glob(f"{FOLD_PREFIX}*/{FOLD_METRICS}")):
        suffix = path.parent.name.removeprefix(FOLD_PREFIX)
        if suffix.isdigit():
            found[int(suffix)] = _read_json(path)
    return dict(sorted(found.items()))


def _member_names(runs: list[Path]) -> list[str]:
    names = [run.resolve().name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [str(run) for run in runs]


def load_train_runs(
    runs: list[Path], labels: Path | None = None, layout: Layout | None = None
) -> Evidence:
    """Each run's out-of-fold logits as one member, aligned on the first run's ids."""
    frames = [_oof(run) for run in runs]
    first = frames[0]
    ids = first.index.tolist()
    for run, frame in zip(runs[1:], frames[1:], strict=True):
        differ = set(frame.index) ^ set(ids)
        if differ:
            raise EvidenceError(
                f"{run / OOF}: covers {len(frame)} questions and {runs[0] / OOF} {len(ids)}, "
                f"{len(differ)} ids differ (e.g. {sorted(differ)[0]!r}); members must be "
                "scored on the same questions"
            )
    letters = option_letters(first.columns)
    if labels is not None:
        label_frame = _align_labels(_read_labels(labels, "the labels", layout), ids, labels)
    else:
        label_frame = _train_labels(runs[0], ids)
        if ANSWER in first.columns and first[ANSWER].astype(bool).all():
            answers = first[ANSWER].astype(str)
            label_frame = (
                label_frame.assign(**{ANSWER: answers})
                if label_frame is not None
                else answers.to_frame()
            )
        elif label_frame is None or ANSWER not in label_frame.columns:
            raise EvidenceError(
                f"{runs[0] / OOF}: has no 'answer' column and the run's manifest names no "
                "labelled questions file with its ids; pass --labels FILE"
            )
    answers = _answer_indices(label_frame[ANSWER].astype(str), letters, runs[0] / OOF)
    names = _member_names(runs)
    members = []
    for run, name, frame in zip(runs, names, frames, strict=True):
        missing = [c for c in letters if c not in frame.columns]
        if missing:
            raise EvidenceError(f"{run / OOF}: no logit column(s) {missing} for the options")
        member = Member(name, frame.loc[ids, letters].to_numpy(np.float64), 1.0 / len(runs))
        member.info = {"folds": frame.loc[ids, FOLD].to_numpy() if FOLD in frame else None}
        members.append(member)
    ensemble, note = None, ""
    if len(members) > 1:
        probs = np.mean([softmax(m.logits) for m in members], axis=0)
        ensemble = Member(ENSEMBLE, np.log(np.clip(probs, 1e-12, None)))
        note = "equal-weight mean of the runs' out-of-fold probabilities"
    manifest_path = runs[0] / MANIFEST
    return Evidence(
        kind="train",
        sources=list(runs),
        ids=ids,
        letters=letters,
        answers=answers,
        members=members,
        ensemble=ensemble,
        ensemble_note=note,
        groups=_groups(label_frame),
        manifest=_read_json(manifest_path) if manifest_path.is_file() else {},
        config=_read_config(runs[0]),
        folds={name: _fold_metrics(run) for run, name in zip(runs, names, strict=True)},
    )


def runs_behind(ev: Evidence) -> list[Path]:
    """The ``sciqa train`` run dirs whose folds are members of an infer ensemble."""
    runs: list[Path] = []
    for member in ev.members:
        path = member.info.get("path")
        run = Path(path).parent if path else None
        if run is not None and (run / OOF).is_file() and run not in runs:
            runs.append(run)
    return runs


def oof_evidence(ev: Evidence) -> tuple[Evidence | None, str]:
    """The out-of-fold logits of the runs behind an infer ensemble, when there are two or
    more on the same questions; else None and why not."""
    runs = runs_behind(ev)
    if len(runs) < 2:
        return None, f"{len(runs)} train run(s) with oof.parquet behind the members"
    try:
        return load_train_runs(runs), ""
    except SciqaError as exc:
        return None, str(exc)

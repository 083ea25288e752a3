"""What ``sciqa infer`` leaves in OUT_DIR, every file written atomically.

::

    OUT_DIR/submission.csv          id,prediction  (top-3 letters, Kaggle format)
    OUT_DIR/logits/ids.json         question ids, the row order of every .npy below
    OUT_DIR/logits/<model>.npy      (n, n_options) float32, TTA-averaged; NaN = not scored
    OUT_DIR/logits/ensemble.npy     the weighted ensemble (log-probabilities in probs mode)
    OUT_DIR/scores.json             MAP@3 / accuracy per model and ensemble (labelled input)
    OUT_DIR/config.yaml, manifest.json
    OUT_DIR/cache/                  per-pass logits keyed by questions+model+pass (resume)
    OUT_DIR/previous/               the files above but cache/ of the run before (takeover)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from infer.ensemble.combine import combine, tta_mean
from infer.models import ModelSpec
from sciqa.io import atomic_path, write_json
from sciqa.metrics import accuracy, map_at_3, top3_letters
from sciqa.runs import ENSEMBLE, LOGIT_IDS, LOGITS, SUBMISSION
from sciqa.submission import make_submission, write_submission

CACHE = "cache"  # infer's own: per-pass logits for resuming


def cache_path(out_dir: Path, name: str, key_parts: list[str]) -> Path:
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:20]
    return out_dir / CACHE / f"{name}-{key}.npy"


def save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def write_logits(out_dir: Path, ids: list[str], name: str, logits: np.ndarray) -> None:
    ids_path = out_dir / LOGITS / LOGIT_IDS
    if not ids_path.is_file() or json.loads(ids_path.read_text(encoding="utf-8")) != ids:
        write_json(ids, ids_path)
    save_npy(logits, out_dir / LOGITS / f"{name}.npy")


def write_predictions(out_dir: Path, ids: list[str], ensemble: np.ndarray) -> Path:
    """``submission.csv`` from ensemble logits; every id gets 3 letters."""
    if np.isnan(ensemble).any():
        raise ValueError("ensemble has unscored questions; cannot write a complete submission")
    return write_submission(make_submission(ids, top3_letters(ensemble)), out_dir / SUBMISSION)


class Results:
    """What the run has finished so far, written to OUT_DIR after every member.

    A finished member's logits are written, then the ensemble of all finished members and
    ``submission.csv`` (each file atomically), so killing the process at any moment
    leaves a complete, valid submission of the members finished so far.
    """

    def __init__(self, out_dir: Path, ids: list[str], specs: list[ModelSpec], mode: str):
        self.out_dir, self.ids, self.specs, self.mode = out_dir, ids, specs, mode
        self.logits: dict[str, np.ndarray] = {}  # per member: its TTA passes averaged
        self.records: dict[str, dict[str, Any]] = {}  # per member: status, passes, seconds...
        self.written = False  # submission.csv holds a complete ensemble

    def ensemble(self) -> np.ndarray | None:
        """The weighted ensemble of the members finished so far (``infer.ensemble``)."""
        done = [s for s in self.specs if s.name in self.logits]
        if not done:
            return None
        return combine([self.logits[s.name] for s in done], [s.weight for s in done], self.mode)

    def add(self, spec: ModelSpec, passes: list[np.ndarray]) -> None:
        """A finished member: its logits, then the ensemble and the submission."""
        self.logits[spec.name] = tta_mean(passes)
        write_logits(self.out_dir, self.ids, spec.name, self.logits[spec.name])
        ensemble = self.ensemble()
        if ensemble is not None and not np.isnan(ensemble).any():
            write_logits(self.out_dir, self.ids, ENSEMBLE, ensemble)
            write_predictions(self.out_dir, self.ids, ensemble)
            self.written = True


def score(logits: np.ndarray, answers: list[str]) -> dict[str, float | int]:
    """MAP@3 and accuracy over the questions this array scored (non-NaN rows)."""
    rows = ~np.isnan(logits).any(axis=1)
    if not rows.any():
        return {"questions": 0}
    predicted = top3_letters(logits[rows])
    labels = [a for a, keep in zip(answers, rows, strict=True) if keep]
    return {
        "map_at_3": map_at_3(labels, predicted),
        "accuracy": accuracy(labels, predicted),
        "questions": int(rows.sum()),
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table of the per-model and ensemble rows."""
    header = "| model | weight | passes | questions | seconds | MAP@3 | accuracy |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m3 = f"{r['map_at_3']:.4f}" if "map_at_3" in r else "-"
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        weight = f"{r['weight']:.3f}" if r.get("weight") is not None else "-"
        lines.append(
            f"| {r['model']} | {weight} | {r.get('passes', '-')} | {r.get('questions', '-')} "
            f"| {secs} | {m3} | {acc} |"
        )
    return "\n".join(lines)

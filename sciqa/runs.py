"""Run directories: every stage run writes ``config.yaml`` and ``manifest.json`` beside
its outputs, so a result can always be traced to its inputs, code and libraries.

>>> file_digest.__name__
'file_digest'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sciqa.config import SciqaConfig, dump_config
from sciqa.hf_datasets import describe, is_dataset_source
from sciqa.io import write_json, write_text

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
# The train -> infer contract: a train RUN_DIR holds fold_<i>/ model dirs and oof.parquet.
FOLD_PREFIX = "fold_"
MODEL_INFO = "sciqa_model.json"  # in a fold: how its inputs were encoded
MODEL_FORMAT = "sciqa-mc/1"  # MODEL_INFO's "format"; a reader refuses any other
FOLD_METRICS = "metrics.json"  # written last in a fold: its presence marks it finished
OOF = "oof.parquet"  # out-of-fold logits (id, fold, one column per letter, answer)
# The infer -> eval/report/pack contract: a sciqa infer OUT_DIR.
SUBMISSION = "submission.csv"  # id,prediction (top-3 letters, Kaggle format)
SCORES = "scores.json"  # MAP@3 / accuracy per member and ensemble (labelled questions)
LOGITS = "logits"  # LOGITS/<member>.npy: (n, n_options) float32, rows in LOGIT_IDS order
LOGIT_IDS = "ids.json"  # LOGITS/LOGIT_IDS: the question ids of every row
ENSEMBLE = "ensemble"  # LOGITS/ENSEMBLE.npy: the weighted ensemble; a reserved member name
# MANIFEST's "status" in an OUT_DIR: RUNNING while the run writes it (and after a kill),
# then FINISHED, or STOPPED when the run ended on an error or Ctrl-C.
RUNNING, FINISHED, STOPPED = "running", "finished", "stopped"
# Libraries whose versions change results; absent ones are simply left out.
TRACKED_LIBRARIES = (
    "sciqa",
    "numpy",
    "pandas",
    "torch",
    "transformers",
    "sentence-transformers",
    "accelerate",
    "peft",
    "faiss-cpu",
    "bm25s",
    "openai",
)


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, as ``sha256:<hex>``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def input_digest(source: str | os.PathLike[str]) -> str:
    """What a fingerprint holds of an input: a file's sha256, or a ``datasets`` input's
    fingerprint (an ``hf:`` name or a save_to_disk folder, :mod:`sciqa.hf_datasets`)."""
    if is_dataset_source(source):
        return describe(os.fspath(source))["fingerprint"]
    return file_digest(source)


def describe_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Path, size and sha256 of each input file (folders: each file inside, sorted); a
    ``datasets`` input is one entry with its rows and fingerprint."""
    described = []
    for path in map(Path, paths):
        if is_dataset_source(path):
            described.append(describe(os.fspath(path)))
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            described.append(
                {"path": str(file), "bytes": file.stat().st_size, "sha256": file_digest(file)}
            )
    return described


def git_sha() -> str | None:
    """Commit of the sciqa checkout, with ``-dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def library_versions(names: Iterable[str] = TRACKED_LIBRARIES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_run_files(
    run_dir: str | os.PathLike[str],
    stage: str,
    config: SciqaConfig,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/config.yaml`` (resolved config) and ``run_dir/manifest.json``.

    The manifest holds the stage, time, git SHA, host, library versions, the inputs'
    hashes and whatever the stage adds in ``extra`` (row counts, timings, device...).
    Both files are written atomically; returns the manifest path.
    """
    run_dir = Path(run_dir)
    write_text(dump_config(config), run_dir / CONFIG)
    manifest = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "libraries": library_versions(),
        "inputs": describe_inputs(inputs),
        **(extra or {}),
    }
    return write_json(manifest, run_dir / MANIFEST)

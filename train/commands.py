"""``sciqa train``: read questions, split into folds, train each, write the run dir.

>>> from train.commands import fold_plan
>>> fold_plan(5, None), fold_plan(5, 2)
([0, 1, 2, 3, 4], [2])
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from sciqa.config import SciqaConfig
from sciqa.errors import SciqaError
from sciqa.io import read_questions
from sciqa.runs import file_digest, write_run_files
from sciqa.schema import ANSWER, option_letters
from train import run_dir as layout

if TYPE_CHECKING:
    from train.dataset import Split

log = logging.getLogger("train")
# Keys that change nothing in the trained model, so a rerun with other values resumes.
NOT_FINGERPRINTED = ("logging_steps", "dataloader_workers", "eval_batch_size", "report_to")
# causal_lm keys that only matter to infer (or only to where layers sit), same reason.
CAUSAL_NOT_FINGERPRINTED = ("batch_size", "prefix_cache", "device_map")


class FoldBackend(Protocol):
    """One model family's part of a fold: ``train.model.EncoderBackend`` (multiple-choice
    encoders) or ``train.causal.CausalBackend`` (causal LMs scoring options)."""

    family: str  # sciqa_model.json "family", what infer dispatches on
    tokenizer: Any

    def encode(self, frame: pd.DataFrame, name: str) -> Split: ...

    def load_model(self) -> Any: ...

    def fold_options(self) -> dict[str, Any]: ...  # extra train.trainer.train_fold kwargs

    def save(self, model: Any, directory: Path) -> None: ...

    def model_info(self) -> dict[str, Any]: ...  # sciqa_model.json keys of this family


def fold_plan(folds: int, only: int | None) -> list[int]:
    """Folds this invocation trains: all of them, or just ``--fold I``."""
    if only is None:
        return list(range(folds))
    if not 0 <= only < folds:
        raise SciqaError(f"--fold {only}: out of range; with --folds {folds} use 0..{folds - 1}")
    return [only]


def load_labelled(path: Path, letters: list[str] | None = None) -> pd.DataFrame:
    """A schema-valid questions file where every row has an answer."""
    frame = read_questions(path, require_answer=True)
    found = option_letters(frame.columns)
    if letters is not None and found != letters:
        raise SciqaError(
            f"{path}: options {'/'.join(found)} but the training file has {'/'.join(letters)}; "
            "train and validation need the same option count"
        )
    return frame


def fingerprint(
    config: SciqaConfig,
    folds: int,
    questions: Path,
    valid: Path | None,
    *,
    causal: bool = False,
) -> dict[str, Any]:
    train = config.train.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED))
    stamp = {
        "train": train,
        "backbone": config.models.backbone,
        "seed": config.seed,
        "folds": folds,
        "questions": file_digest(questions),
        "valid": file_digest(valid) if valid is not None else None,
    }
    if causal:  # only then: encoder runs keep their fingerprint and still resume
        exclude = set(CAUSAL_NOT_FINGERPRINTED)
        stamp["causal_lm"] = config.causal_lm.model_dump(mode="json", exclude=exclude)
    return stamp


def split_rows(
    frame: pd.DataFrame, folds: int, valid: pd.DataFrame | None, seed: int, source: str
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """``(train_frame, valid_frame)`` per fold; ``--folds 1`` trains on all of ``frame``."""
    if folds == 1:
        if valid is None:
            raise SciqaError("--folds 1 trains on everything and needs --valid FILE to validate on")
        return [(frame, valid)]
    if valid is not None:
        raise SciqaError(
            "--valid FILE goes with --folds 1 (a full fit); k folds validate on their own rows"
        )
    from train.folds import fold_indices

    return [
        (frame.iloc[tr].reset_index(drop=True), frame.iloc[va].reset_index(drop=True))
        for tr, va in fold_indices(frame, folds, seed=seed, source=source)
    ]


def run_train(
    questions: Path,
    out: Path,
    config: SciqaConfig,
    *,
    fold: int | None = None,
    valid: Path | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train the planned folds into ``out``; returns the metrics of the folds trained now."""
    from accelerate import PartialState

    _log_to_stderr()
    from train.trackers import check_trackers

    check_trackers(config.train.report_to)  # before anything is loaded or written
    folds = config.train.folds
    if folds < 1:
        raise SciqaError(f"train.folds (--folds) = {folds}: must be at least 1")
    plan = fold_plan(folds, fold)
    frame = load_labelled(questions)
    letters = option_letters(frame.columns)
    valid_frame = load_labelled(valid, letters) if valid is not None else None
    splits = split_rows(frame, folds, valid_frame, config.seed, str(questions))

    import torch

    # Joins the torchrun/accelerate process group when there is one (gloo on CPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    print_ = log.info if state.is_main_process else log.debug
    with state.main_process_first():  # llm:default converts its GGUF once, on rank 0
        backend = make_backend(config, frame, letters)
    stamp = fingerprint(config, folds, questions, valid, causal=backend.family == "causal_lm")
    inputs = [questions] + ([valid] if valid is not None else [])
    with state.main_process_first():
        # Rank 0 checks and writes first; the others then see its fingerprint and agree.
        layout.check_run_dir(out, stamp, overwrite=overwrite and state.is_main_process)
        if state.is_main_process:
            if overwrite:
                layout.clear_run_dir(out)
            extra = {
                "fingerprint": stamp,
                "family": backend.family,
                "n_questions": len(frame),
                "folds": folds,
            }
            write_run_files(out, "train", config, inputs=inputs, extra=extra)

    trained = []
    for index in plan:
        if layout.is_finished(out, index):
            print_("fold %d: finished already (%s), skipped", index, layout.fold_dir(out, index))
            continue
        trained.append(train_one(index, splits[index], config, backend, letters, out, state))
        state.wait_for_everyone()

    if state.is_main_process:
        oof = layout.collect_oof(out)
        labels = pd.concat([frame, valid_frame]) if valid_frame is not None else frame
        folds_done = {f: layout.read_metrics(out, f) for f in layout.finished_folds(out)}
        oof_score = oof_scores(oof, labels, letters)
        extra = {
            "fingerprint": stamp,
            "family": backend.family,
            "n_questions": len(frame),
            "n_valid_file": len(valid_frame) if valid_frame is not None else None,
            "folds": folds,
            "finished_folds": sorted(folds_done),
            "oof_rows": 0 if oof is None else len(oof),
            "oof": oof_score,
            "world_size": state.num_processes,
            "device": str(state.device),
            "fold_metrics": {str(f): _summary(m) for f, m in folds_done.items()},
        }
        write_run_files(out, "train", config, inputs=inputs, extra=extra)
        print(summary_table(folds_done, oof_score, folds))
    return trained


def make_backend(config: SciqaConfig, frame: pd.DataFrame, letters: list[str]) -> FoldBackend:
    """The causal-LM backend when ``models.backbone`` is one (``llm:...`` or a folder whose
    config is ``*ForCausalLM``), else the multiple-choice encoder one; either checks its
    settings here, before the run dir is touched."""
    from train.causal import CausalBackend, causal_backbone_path

    path = causal_backbone_path(config.models.backbone)
    if path is not None:
        return CausalBackend(path, config, frame, letters)
    from train.model import EncoderBackend

    return EncoderBackend(config, letters)


def _log_to_stderr() -> None:
    """One line per fold and per evaluation on stderr, unless logging is set up already."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def oof_scores(
    oof: pd.DataFrame | None, labels: pd.DataFrame, letters: list[str]
) -> dict[str, float] | None:
    """MAP@3 and accuracy of the out-of-fold logits over all finished folds."""
    if oof is None:
        return None
    from sciqa.metrics import accuracy, map_at_3, top3_letters
    from sciqa.schema import ID

    answers = labels.drop_duplicates(ID).set_index(ID)[ANSWER].loc[oof[ID]].tolist()
    top3 = top3_letters(oof[letters].to_numpy())
    return {"map_at_3": map_at_3(answers, top3), "accuracy": accuracy(answers, top3)}


def summary_table(
    folds_done: dict[int, dict[str, Any]], oof: dict[str, float] | None, folds: int
) -> str:
    """Per-fold MAP@3 as a markdown table, then the out-of-fold score."""
    lines = [
        "| fold | MAP@3 | accuracy | best epoch | valid | train s |",
        "|---|---|---|---|---|---|",
    ]
    for fold, m in folds_done.items():
        lines.append(
            f"| {fold} | {m['map_at_3']:.4f} | {m['accuracy']:.4f} | {m['best_epoch']} "
            f"| {m['n_valid']} | {m['train_seconds'] or 0:.0f} |"
        )
    if oof is not None:
        done = f"{len(folds_done)}/{folds} folds"
        lines.append(f"| OOF ({done}) | {oof['map_at_3']:.4f} | {oof['accuracy']:.4f} | | | |")
    return "\n".join(lines)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("map_at_3", "accuracy", "best_epoch", "train_seconds", "samples_per_second")
    return {k: metrics[k] for k in keys}


def train_one(
    index: int,
    split: tuple[pd.DataFrame, pd.DataFrame],
    config: SciqaConfig,
    backend: FoldBackend,
    letters: list[str],
    out: Path,
    state: Any,
) -> dict[str, Any]:
    """Encode, train, save and score one fold; rank 0 writes its directory."""
    from transformers import set_seed

    from train.trackers import tracking_env
    from train.trainer import train_fold

    train_cfg = config.train
    train_frame, valid_frame = split
    fold_dir = layout.fold_dir(out, index)
    label = f"fold {index}"
    train_split = backend.encode(train_frame, f"{label} train")
    valid_split = backend.encode(valid_frame, f"{label} valid")
    if state.is_main_process:
        log.info("%s: %d train / %d valid questions", label, len(train_split), len(valid_split))

    set_seed(config.seed)  # a new head (or LoRA) starts the same in every process
    model = backend.load_model()
    started = time.perf_counter()
    with tracking_env(train_cfg.report_to, out, label.replace(" ", "_")):
        outcome = train_fold(
            model,
            backend.tokenizer,
            train_split,
            valid_split,
            train=train_cfg,
            letters=letters,
            output_dir=fold_dir / layout.CHECKPOINTS,
            seed=config.seed,
            label=label,
            **backend.fold_options(),
        )
    metrics = {"fold": index, **outcome.metrics, "wall_seconds": time.perf_counter() - started}
    if outcome.is_main:
        backend.save(outcome.model, fold_dir)
        layout.write_model_info(
            fold_dir,
            {
                "n_options": len(letters),
                "letters": letters,
                "fold": index,
                "backbone": config.models.backbone,
                **backend.model_info(),  # family, max_length, use_context (+ prompt)
            },
        )
        oof = layout.oof_frame(
            valid_split.ids, index, outcome.valid_logits, letters, valid_frame[ANSWER].tolist()
        )
        from sciqa.io import write_json, write_table

        write_table(oof, fold_dir / layout.FOLD_OOF)
        shutil.rmtree(fold_dir / layout.CHECKPOINTS, ignore_errors=True)
        write_json(metrics, fold_dir / layout.FOLD_METRICS)  # last: marks the fold finished
        log.info(
            "%s: MAP@3 %.4f  accuracy %.4f  best epoch %s  %.0fs",
            label,
            metrics["map_at_3"],
            metrics["accuracy"],
            metrics["best_epoch"],
            metrics["wall_seconds"],
        )
    return metrics

"""``sciqa train``: read questions, split into folds, train each, write the run dir.

>>> from train.commands import fold_plan
>>> fold_plan(5, None), fold_plan(5, 2)
([0, 1, 2, 3, 4], [2])
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from sciqa.config import CausalLMConfig, SciqaConfig, TrainConfig
from sciqa.errors import SciqaError
from sciqa.io import follow_umask, read_questions
from sciqa.layouts import AUTO, Layout
from sciqa.outdir import OutLock, check_out_dir, fresh_partial, partial_dir
from sciqa.runs import input_digest, write_run_files
from sciqa.schema import ANSWER, ID, option_letters
from train import run_dir as layout

if TYPE_CHECKING:
    from train.dataset import Split
    from train.tokenized import TokenizedTables

log = logging.getLogger("train")
# Keys that change nothing in the trained model, so a rerun with other values resumes.
NOT_FINGERPRINTED = ("logging_steps", "dataloader_workers", "eval_batch_size", "report_to")
NOT_FINGERPRINTED += ("tokenize_cache",)
# causal_lm keys that only matter to infer (or only to where layers sit), same reason.
CAUSAL_NOT_FINGERPRINTED = ("batch_size", "prefix_cache", "shared_head", "onednn_fp32")
CAUSAL_NOT_FINGERPRINTED += ("device_map",)


class FoldBackend(Protocol):
    """One model family's part of a fold: ``train.model.EncoderBackend`` (multiple-choice
    encoders) or ``train.causal.CausalBackend`` (causal LMs scoring options)."""

    family: str  # sciqa_model.json "family", what infer dispatches on
    tokenizer: Any

    # Per-row columns of a frame (train.dataset): what train.tokenized maps and caches.
    def encode_batch(self, frame: pd.DataFrame) -> dict[str, list[Any]]: ...

    def encoding_key(self) -> dict[str, Any]: ...  # settings + code the token ids depend on

    def report(self, split: Split, name: str) -> None: ...  # log its overlong/cut rows

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


def check_valid(folds: int, has_valid: bool) -> None:
    """``--valid FILE`` goes with ``--folds 1`` and only with it."""
    if folds == 1 and not has_valid:
        raise SciqaError("--folds 1 trains on everything and needs --valid FILE to validate on")
    if folds > 1 and has_valid:
        raise SciqaError(
            f"--valid FILE goes with --folds 1 (a full fit); the {folds} folds validate on "
            "their own rows: drop --valid or use --folds 1"
        )


def load_labelled(
    path: Path, letters: list[str] | None = None, reading: Layout | None = None
) -> pd.DataFrame:
    """Schema-valid questions (a file, a save_to_disk folder or hf:NAME) where every row
    has an answer."""
    frame = read_questions(path, require_answer=True, layout=reading)
    found = option_letters(frame.columns)
    if letters is not None and found != letters:
        raise SciqaError(
            f"{path}: options {'/'.join(found)} but the training file has {'/'.join(letters)}; "
            "train and validation need the same option count"
        )
    return frame


def fingerprint(
    train: TrainConfig,
    backbone: str,
    seed: int,
    questions: Sequence[Path],
    valid: Path | None,
    *,
    causal_lm: CausalLMConfig | None = None,
    reading: Layout | None = None,
) -> dict[str, Any]:
    """What the trained models depend on; a run dir resumes only with the same.

    ``causal_lm`` is given for causal-LM runs only, and ``reading`` (the questions'
    layout) joins only when it is not the default: runs that need neither keep their
    fingerprint and still resume."""
    stamp = {
        "train": train.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED)),
        "backbone": backbone,
        "seed": seed,
        "folds": train.folds,
        # One input: its digest alone, as before several were accepted (old runs resume).
        "questions": (
            input_digest(questions[0])
            if len(questions) == 1
            else [input_digest(q) for q in questions]
        ),
        "valid": input_digest(valid) if valid is not None else None,
    }
    if reading is not None and (reading.preset != AUTO or reading.columns):
        stamp["layout"] = {"preset": reading.preset, "columns": dict(reading.columns)}
    if causal_lm is not None:
        exclude = set(CAUSAL_NOT_FINGERPRINTED)
        stamp["causal_lm"] = causal_lm.model_dump(mode="json", exclude=exclude)
    return stamp


def split_rows(
    frame: pd.DataFrame, folds: int, valid: pd.DataFrame | None, seed: int, source: str
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """``(train_frame, valid_frame)`` per fold; ``--folds 1`` trains on all of ``frame``."""
    check_valid(folds, valid is not None)
    if valid is not None:
        return [(frame, valid)]
    from train.folds import fold_indices

    return [
        (frame.iloc[tr].reset_index(drop=True), frame.iloc[va].reset_index(drop=True))
        for tr, va in fold_indices(frame, folds, seed=seed, source=source)
    ]


@dataclass
class TrainData:
    """A run's labelled questions (and ``--valid`` file), split into its folds."""

    questions: list[Path]
    valid: Path | None
    frame: pd.DataFrame
    valid_frame: pd.DataFrame | None
    letters: list[str]
    splits: list[tuple[pd.DataFrame, pd.DataFrame]]  # (train, valid) rows per fold

    @property
    def inputs(self) -> list[Path]:
        return [*self.questions] + ([self.valid] if self.valid is not None else [])

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The tables every fold's training and validation rows are taken from."""
        return self.frame, self.frame if self.valid_frame is None else self.valid_frame

    @property
    def labels(self) -> pd.DataFrame:
        """Every labelled row an out-of-fold logit can belong to."""
        if self.valid_frame is None:
            return self.frame
        return pd.concat([self.frame, self.valid_frame])


def load_data(
    questions: Sequence[Path],
    valid: Path | None,
    folds: int,
    seed: int,
    reading: Layout | None = None,
) -> TrainData:
    """Read and check the questions inputs (one table, in order) and the ``--valid``
    input, and split them into folds."""
    questions = list(questions)
    frame = load_labelled(questions[0], reading=reading)
    letters = option_letters(frame.columns)
    if len(questions) > 1:
        frame = _concat(frame, questions, letters, reading)
    valid_frame = load_labelled(valid, letters, reading) if valid is not None else None
    source = ",".join(str(q) for q in questions)
    splits = split_rows(frame, folds, valid_frame, seed, source)
    return TrainData(questions, valid, frame, valid_frame, letters, splits)


def _concat(
    first: pd.DataFrame, questions: list[Path], letters: list[str], reading: Layout | None
) -> pd.DataFrame:
    """Several training inputs as one table: the same options, each id once."""
    frames, owner = [first], dict.fromkeys(first[ID], questions[0])
    for path in questions[1:]:
        frame = load_labelled(path, reading=reading)
        found = option_letters(frame.columns)
        if found != letters:
            raise SciqaError(
                f"{path}: options {'/'.join(found)} but {questions[0]} has "
                f"{'/'.join(letters)}; training files need the same option count "
                "(sciqa gen --set gen.n_options=N writes N)"
            )
        for qid in frame[ID]:
            if qid in owner:
                raise SciqaError(
                    f"{path}: id {qid!r} is also in {owner[qid]}; ids must be unique across "
                    "the training files"
                )
            owner[qid] = path
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_train(
    questions: Path | Sequence[Path],
    out: Path,
    config: SciqaConfig,
    *,
    fold: int | None = None,
    valid: Path | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train the planned folds into ``out``; returns the metrics of the folds trained now."""
    train, backbone, seed = config.train, config.models.backbone, config.seed
    # The argument and data checks come before torch/transformers, which take seconds to
    # import: a wrong flag or file fails at once.
    check_out_dir(out)
    plan = fold_plan(train.folds, fold)
    check_valid(train.folds, valid is not None)
    questions = [questions] if isinstance(questions, Path) else list(questions)
    reading = Layout.of(config)  # `layout` is the run dir's module here
    data = load_data(questions, valid, train.folds, seed, reading)

    from accelerate import PartialState

    _log_to_stderr()
    from train.trackers import check_trackers

    check_trackers(train.report_to)  # before any model is loaded or file written
    import torch

    # Joins the torchrun/accelerate process group when there is one (gloo on CPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    print_ = log.info if state.is_main_process else log.debug
    with state.main_process_first():  # llm:default converts its GGUF once, on rank 0
        backend = make_backend(
            data.frame, data.letters, backbone=backbone, train=train, causal_lm=config.causal_lm
        )
    causal_lm = config.causal_lm if backend.family == "causal_lm" else None
    stamp = fingerprint(
        train, backbone, seed, questions, valid, causal_lm=causal_lm, reading=reading
    )
    head = {"fingerprint": stamp, "family": backend.family, "n_questions": len(data.frame)}
    # One writer per run dir; a --fold job locks only its fold, so a job array runs.
    locked = out if fold is None else layout.fold_dir(out, fold)
    with OutLock(locked) if state.is_main_process else contextlib.nullcontext():
        work = _open_run(out, config, data, head, state, overwrite=overwrite)
        from train.tokenized import TokenizedTables

        # Tokenized once on the first fold trained (or read from the cache), then shared.
        tokens = TokenizedTables(
            backend, data.letters, train.tokenize_cache, first=state.main_process_first
        )
        trained = []
        for index in plan:
            if layout.is_finished(work, index):
                where = layout.fold_dir(work, index)
                print_("fold %d: finished already (%s), skipped", index, where)
                continue
            trained.append(
                train_one(
                    index,
                    data,
                    backend,
                    tokens,
                    work,
                    state,
                    train=train,
                    seed=seed,
                    backbone=backbone,
                )
            )
            state.wait_for_everyone()
        if state.is_main_process:
            _finish_run(work, config, data, {**head, "tokenized": tokens.summary()}, state)
            if work != out:
                layout.replace_run(work, out)
    return trained


def make_backend(
    frame: pd.DataFrame,
    letters: list[str],
    *,
    backbone: str,
    train: TrainConfig,
    causal_lm: CausalLMConfig,
) -> FoldBackend:
    """The causal-LM backend when ``backbone`` (``models.backbone``) is one (``llm:...`` or
    a folder whose config is ``*ForCausalLM``), else the multiple-choice encoder one;
    either checks its settings here, before the run dir is touched."""
    from train.causal import CausalBackend, causal_backbone_path

    path = causal_backbone_path(backbone)
    if path is not None:
        return CausalBackend(
            path, frame, letters, backbone=backbone, train=train, causal_lm=causal_lm
        )
    from train.model import EncoderBackend

    return EncoderBackend(letters, backbone=backbone, train=train)


def _open_run(
    out: Path,
    config: SciqaConfig,
    data: TrainData,
    head: dict[str, Any],
    state: Any,
    *,
    overwrite: bool,
) -> Path:
    """Refuse an ``out`` that holds another run (unless ``overwrite``), and write the
    manifest with the fingerprint before any fold starts; returns the folder the folds
    are trained in.

    ``overwrite`` never clears ``out`` first: the new run is trained in its partial
    sibling (resumed there after a kill) and replaces ``out`` when its folds finish, so
    the old run stays usable until then.
    """
    with state.main_process_first():
        # Rank 0 checks and writes first; the others then see its fingerprint and agree.
        stamp = head["fingerprint"]
        work = out
        if overwrite and layout.holds_run(out):
            work = partial_dir(out)
            if state.is_main_process and layout.stored_fingerprint(work) != stamp:
                fresh_partial(out)
        layout.check_run_dir(work, stamp, overwrite=False)
        if state.is_main_process:
            extra = {**head, "folds": config.train.folds}
            write_run_files(work, "train", config, inputs=data.inputs, extra=extra)
    return work


def _finish_run(
    out: Path, config: SciqaConfig, data: TrainData, head: dict[str, Any], state: Any
) -> None:
    """Rank 0, after the folds: ``oof.parquet`` from every finished fold, the final
    manifest and the summary table on stdout."""
    folds = config.train.folds
    oof = layout.collect_oof(out)
    folds_done = {f: layout.read_metrics(out, f) for f in layout.finished_folds(out)}
    oof_score = oof_scores(oof, data.labels, data.letters)
    extra = {
        **head,
        "n_valid_file": len(data.valid_frame) if data.valid_frame is not None else None,
        "folds": folds,
        "finished_folds": sorted(folds_done),
        "oof_rows": 0 if oof is None else len(oof),
        "oof": oof_score,
        "world_size": state.num_processes,
        "device": str(state.device),
        "fold_metrics": {str(f): _summary(m) for f, m in folds_done.items()},
    }
    write_run_files(out, "train", config, inputs=data.inputs, extra=extra)
    print(summary_table(folds_done, oof_score, folds))


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
    data: TrainData,
    backend: FoldBackend,
    tokens: TokenizedTables,
    out: Path,
    state: Any,
    *,
    train: TrainConfig,
    seed: int,
    backbone: str,
) -> dict[str, Any]:
    """Encode, train, save and score fold ``index`` of ``data``; rank 0 writes its directory.

    ``backbone`` (``models.backbone``) is recorded in the fold's ``sciqa_model.json``."""
    from transformers import set_seed

    from train.trackers import tracking_env
    from train.trainer import train_fold

    train_frame, valid_frame = data.splits[index]
    letters = data.letters
    fold_dir = layout.fold_dir(out, index)
    label = f"fold {index}"
    train_table, valid_table = data.tables()
    train_split = tokens.split(train_table, train_frame)
    valid_split = tokens.split(valid_table, valid_frame)
    backend.report(train_split, f"{label} train")
    backend.report(valid_split, f"{label} valid")
    if state.is_main_process:
        log.info("%s: %d train / %d valid questions", label, len(train_split), len(valid_split))

    set_seed(seed)  # a new head (or LoRA) starts the same in every process
    model = backend.load_model()
    started = time.perf_counter()
    with tracking_env(train.report_to, out, label.replace(" ", "_")):
        outcome = train_fold(
            model,
            backend.tokenizer,
            train_split,
            valid_split,
            train=train,
            letters=letters,
            output_dir=fold_dir / layout.CHECKPOINTS,
            torn_dir=fold_dir / layout.TORN,
            seed=seed,
            label=label,
            **backend.fold_options(),
        )
    metrics = {"fold": index, **outcome.metrics, "wall_seconds": time.perf_counter() - started}
    if outcome.is_main:
        backend.save(outcome.model, fold_dir)
        follow_umask(fold_dir)
        info = {"n_options": len(letters), "letters": letters, "fold": index, "backbone": backbone}
        info.update(backend.model_info())  # family, max_length, use_context (+ prompt)
        answers = valid_frame[ANSWER].tolist()
        oof = layout.oof_frame(valid_split.ids, index, outcome.valid_logits, letters, answers)
        layout.finish_fold(fold_dir, info, oof, metrics)
        _log_fold(label, metrics)
    return metrics


def _log_fold(label: str, metrics: dict[str, Any]) -> None:
    log.info(
        "%s: MAP@3 %.4f  accuracy %.4f  best epoch %s  %.0fs",
        label,
        metrics["map_at_3"],
        metrics["accuracy"],
        metrics["best_epoch"],
        metrics["wall_seconds"],
    )

"""One fold through the HF ``Trainer``: train, early-stop on MAP@3, keep the best epoch.

Everything distributed is the Trainer's (through accelerate): the same code runs as one
process or under ``torchrun``/``accelerate launch`` as DDP. Files are written by the
world-process-zero only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorForMultipleChoice,
    EarlyStoppingCallback,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from sciqa.config import TrainConfig
from sciqa.metrics import accuracy, map_at_3, top3_letters
from train.checkpoints import resume_point
from train.dataset import Split
from train.heap import heap_trim_callbacks
from train.model import resolve_precision

log = logging.getLogger(__name__)
METRIC = "map_at_3"
Evaluation = tuple[np.ndarray, dict[str, float]]  # one evaluation's logits and metrics


class LengthGroupedTrainer(Trainer):
    """Trainer whose training batches hold questions of similar token length.

    The stock ``group_by_length`` measures ``len(input_ids)``, which for multiple choice
    is the option count; here the lengths come from the encoder.
    """

    def __init__(self, *args: Any, train_lengths: list[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths
        # *ForMultipleChoice forward() takes **kwargs but returns a per-batch mean loss that
        # ignores num_items_in_batch; left True, the Trainer would skip dividing by the
        # accumulation steps and multiply by the world size (too-large gradients and logged
        # losses under DDP or grad_accum > 1).
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.train_lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=self.train_lengths,
        )


class EvalLine(TrainerCallback):
    """One log line per evaluation: epoch, eval loss, MAP@3, accuracy."""

    def __init__(self, label: str) -> None:
        self.label = label

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            log.info(
                "%s epoch %.2f: eval loss %.4f  MAP@3 %.4f  accuracy %.4f",
                self.label,
                state.epoch or 0.0,
                metrics.get("eval_loss", float("nan")),
                metrics.get(f"eval_{METRIC}", float("nan")),
                metrics.get("eval_accuracy", float("nan")),
            )


class StepProgress(TrainerCallback):
    """The Trainer's progress as :func:`sciqa.progress.progress` bars: tqdm on a terminal,
    a plain line a minute in a log (``make exam > exam.log``), where the Trainer's own tqdm
    bars would pile up as one line of carriage returns. Main process only."""

    def __init__(self, label: str, bar: Callable[..., Any] | None = None) -> None:
        from sciqa.progress import progress

        self.label, self.bar = label, bar or progress
        self.steps: Any = None
        self.done = 0
        self.batches: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.steps = self.bar(state.max_steps, f"{self.label} train", unit="step")
            self.done = state.global_step  # a resumed run starts part way
            self.steps.update(self.done)

    def on_step_end(self, args, state, control, **kwargs):
        if self.steps is not None:
            self.steps.update(state.global_step - self.done)
            self.done = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero or eval_dataloader is None:
            return
        if self.batches is None:
            total = len(eval_dataloader)
            self.batches = self.bar(total, f"{self.label} eval", unit="batch", leave=False)
        self.batches.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_batches()

    def on_predict(self, args, state, control, **kwargs):
        self._close_batches()

    def on_train_end(self, args, state, control, **kwargs):
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def _close_batches(self) -> None:
        if self.batches is not None:
            self.batches.close()
            self.batches = None


def metrics_for(letters: list[str]):
    """``compute_metrics`` scoring logits with :mod:`sciqa.metrics`."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        top3 = top3_letters(np.asarray(prediction.predictions))
        labels = [letters[i] for i in np.asarray(prediction.label_ids).reshape(-1)]
        return {METRIC: map_at_3(labels, top3), "accuracy": accuracy(labels, top3)}

    return compute


def training_arguments(
    train: TrainConfig,
    output_dir: Path,
    seed: int,
    *,
    cpu_bf16: bool = False,
    run_name: str | None = None,
) -> TrainingArguments:
    bf16, fp16 = resolve_precision(train.precision, cpu_bf16=cpu_bf16)
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=train.epochs,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # < 1 means a ratio of the total steps
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=train.gradient_checkpointing,
        # Non-reentrant checkpointing works with frozen embeddings (no input grads needed).
        activation_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,  # with load_best_model_at_end: the best and the latest are kept
        load_best_model_at_end=True,
        metric_for_best_model=METRIC,
        greater_is_better=True,
        logging_strategy="steps",
        disable_tqdm=True,  # StepProgress draws the bars (readable in a log too)
        logging_steps=train.logging_steps,
        report_to=list(train.report_to),  # where they write: train.trackers.tracking_env
        run_name=run_name,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=train.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without use_cpu, accelerate ignores a torchrun launch on CPU (no gloo DDP).
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        average_tokens_across_devices=False,  # see LengthGroupedTrainer: mean loss per batch
        # A frozen lower stack or LoRA leaves no unused parameters that require grad.
        ddp_find_unused_parameters=False,
    )


@dataclass
class FoldOutcome:
    metrics: dict[str, Any]  # what goes to metrics.json
    valid_logits: np.ndarray  # (n_valid, n_options), in the validation split's order
    model: Any
    is_main: bool


def train_fold(
    model: Any,
    tokenizer: Any,
    train_split: Split,
    valid_split: Split,
    *,
    train: TrainConfig,
    letters: list[str],
    output_dir: Path,
    torn_dir: Path,
    seed: int,
    label: str,
    trainer_class: type[LengthGroupedTrainer] = LengthGroupedTrainer,
    collator: Any = None,
    trainer_kwargs: dict[str, Any] | None = None,
    cpu_bf16: bool = False,
) -> FoldOutcome:
    """Train one fold; resume from the newest complete ``checkpoint-*`` under
    ``output_dir`` if any (torn ones are moved into ``torn_dir``: train.checkpoints).

    The defaults train an ``AutoModelForMultipleChoice``; another model family passes its
    Trainer subclass (its loss), collator, extra Trainer arguments and ``cpu_bf16``.
    """
    run_name = label.replace(" ", "_")  # the trackers' name for this fold
    args = training_arguments(train, output_dir, seed, cpu_bf16=cpu_bf16, run_name=run_name)
    evaluations: list[Evaluation] = []  # this process's, in order
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=collator if collator is not None else _mc_collator(tokenizer, args),
        train_dataset=train_split.features,
        eval_dataset=valid_split.features,
        processing_class=tokenizer,
        compute_metrics=_metrics_keeping(letters, evaluations),
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience),
            EvalLine(label),
            StepProgress(label),
            *heap_trim_callbacks(train.heap_trim_steps, on_cpu=args.device.type == "cpu"),
        ],
        train_lengths=train_split.lengths if train.group_by_length else None,
        **(trainer_kwargs or {}),
    )
    # One process looks (and moves torn checkpoints) first; the others then find the same.
    with args.main_process_first(desc="choosing the checkpoint to resume from"):
        last = resume_point(output_dir, torn_dir, label)
    result = trainer.train(resume_from_checkpoint=last)
    history = eval_history(trainer.state.log_history)
    best = max(history, key=lambda e: e[METRIC]) if history else None
    kept = best_evaluation(history, evaluations, resumed=last is not None)
    logits, scores = _valid_scores(trainer, valid_split, best, kept)
    metrics = {
        METRIC: scores[METRIC],
        "accuracy": scores["accuracy"],
        "eval_loss": scores["loss"],
        "best_epoch": best["epoch"] if best else None,
        "epochs": history,
        "train_seconds": result.metrics.get("train_runtime"),
        "samples_per_second": result.metrics.get("train_samples_per_second"),
        "resumed_from": last,
        "n_train": len(train_split),
        "n_valid": len(valid_split),
        "world_size": args.world_size,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
    }
    return FoldOutcome(metrics, logits, trainer.model, trainer.is_world_process_zero())


def _mc_collator(tokenizer: Any, args: TrainingArguments) -> DataCollatorForMultipleChoice:
    """The multiple-choice collator; bf16/fp16 pad to multiples of 8 (tensor cores like them)."""
    pad8 = 8 if (args.bf16 or args.fp16) else None
    return DataCollatorForMultipleChoice(tokenizer, pad_to_multiple_of=pad8)


def _metrics_keeping(
    letters: list[str], evaluations: list[Evaluation]
) -> Callable[[EvalPrediction], dict[str, float]]:
    """:func:`metrics_for` that also appends each evaluation's logits to ``evaluations``."""
    compute = metrics_for(letters)

    def compute_and_keep(prediction: EvalPrediction) -> dict[str, float]:
        metrics = compute(prediction)
        evaluations.append((np.asarray(prediction.predictions, dtype=np.float64), metrics))
        return metrics

    return compute_and_keep


def eval_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch, eval loss, MAP@3 and accuracy of each evaluation in the Trainer's log."""
    return [
        {
            "epoch": entry["epoch"],
            "eval_loss": entry["eval_loss"],
            METRIC: entry[f"eval_{METRIC}"],
            "accuracy": entry["eval_accuracy"],
        }
        for entry in log_history
        if f"eval_{METRIC}" in entry
    ]


def _valid_scores(
    trainer: Trainer,
    valid_split: Split,
    best: dict[str, Any] | None,
    kept: np.ndarray | None,
) -> tuple[np.ndarray, dict[str, float]]:
    """The loaded (best) model's validation logits and its MAP@3, accuracy and loss: those
    of the ``best`` evaluation when its logits were ``kept``, else predicted again."""
    if kept is not None and best is not None:
        # The best epoch's weights are the ones loaded now: its evaluation already holds
        # the validation logits, so the validation set is not scored a second time.
        return kept, {METRIC: best[METRIC], "accuracy": best["accuracy"], "loss": best["eval_loss"]}
    prediction = trainer.predict(valid_split.features)
    logits = np.asarray(prediction.predictions, dtype=np.float64)
    return logits, {k: prediction.metrics[f"test_{k}"] for k in (METRIC, "accuracy", "loss")}


def best_evaluation(
    history: list[dict[str, Any]],
    evaluations: list[Evaluation],
    *,
    resumed: bool,
) -> np.ndarray | None:
    """The logits of the evaluation whose checkpoint ``load_best_model_at_end`` loaded, when
    this process ran every evaluation (``evaluations``, in the order of ``history``);
    ``None`` means: predict again."""
    if resumed or not history or len(evaluations) != len(history):
        return None
    # The Trainer keeps the first of equal best scores (it replaces only on a strict gain).
    index = max(range(len(history)), key=lambda i: (history[i][METRIC], -i))
    logits, metrics = evaluations[index]
    if metrics[METRIC] != history[index][METRIC]:  # not the same evaluation: be safe
        return None
    return logits

"""Causal LMs trained as multiple-choice option scorers, on the encoder path's folds.

``models.backbone = llm:<default|path|Hub name>`` (or a folder whose config is a
``*ForCausalLM``) takes this path. Questions are encoded by
:func:`sciqa.scoring.llm_prompts.encode_for_llm` with the ``causal_lm`` section, every option's
whole sequence is scored by :func:`sciqa.scoring.llm_scoring.full_scores` (cloze log-probability,
letter logit or yes-minus-no) and the loss is cross-entropy over a question's option
scores. Infer re-encodes with the saved ``PromptSpec`` and scores with the same module, so
a fold's out-of-fold logits are what infer computes for those questions.

Imported only by the ``sciqa train`` command body, so torch/transformers load lazily.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sciqa.assets.llm import (
    causal_lm_path,
    load_causal_lm,
    load_causal_tokenizer,
    quantization_kwargs,
)
from sciqa.config import DEFAULT, CausalLMConfig, TrainConfig
from sciqa.errors import AssetError, ConfigError
from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm
from sciqa.scoring.llm_scoring import ScoreHead, collate_full, full_features, full_scores
from sciqa.weights import check_weights
from train.dataset import CUT, LENGTH, OVERLONG, Split, as_columns, code_digest, flags
from train.model import mergeable, resolve_precision
from train.trainer import LengthGroupedTrainer

log = logging.getLogger(__name__)
FAMILY = "causal_lm"


def causal_backbone_path(name: str) -> str | None:
    """What to load when ``models.backbone = name`` is a causal LM, else ``None``.

    ``default`` stays the packaged MiniLM encoder; ``llm:default`` is the packaged SmolLM2.
    """
    if name == DEFAULT:
        return None
    try:
        return causal_lm_path(name)
    except AssetError as exc:  # prepare_model names models.llm: say which key is wrong
        reason = str(exc)
        if reason.startswith("models.llm = "):
            reason = reason.partition(": ")[2]
        raise AssetError(f"models.backbone = {name!r}: {reason}") from None


def check_settings(train: TrainConfig, causal: CausalLMConfig) -> None:
    """Refuse ``train``/``causal_lm`` settings this path cannot honour, before any work."""
    if train.freeze_layers:
        raise ConfigError(
            f"train.freeze_layers = {train.freeze_layers}: freezing layers is for encoder "
            "backbones; with a causal LM use train.lora=true to train few parameters"
        )
    resolve_precision(train.precision, cpu_bf16=True)
    quantization_kwargs(causal.load_in, causal.device_map)  # 4/8-bit or device_map on a CPU
    if causal.load_in != "none" and not train.lora:
        raise ConfigError(
            f"causal_lm.load_in = {causal.load_in!r}: quantised weights cannot be trained "
            "directly; set train.lora=true (adapters) or causal_lm.load_in=none"
        )


class OptionScoringTrainer(LengthGroupedTrainer):
    """Cross-entropy over the option scores of each question.

    ``compute_loss`` returns ``{"logits": scores}`` with ``return_outputs``, so the stock
    ``prediction_step`` yields ``(n, C)`` logits and the ``labels`` it read from the batch:
    ``metrics_for``'s MAP@3, early stopping and the best checkpoint work as for encoders.
    """

    def __init__(self, *args: Any, head: ScoreHead, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = head
        # The Trainer infers label names from the model's forward signature; ours are the
        # collator's question labels whatever the architecture (or a peft wrapper) says.
        self.label_names = ["labels"]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        batch = dict(inputs)  # prediction_step reads labels from inputs after this call
        labels = batch.pop("labels")
        scores = full_scores(model, batch, self.head)  # uses score_len and norm from batch
        loss = torch.nn.functional.cross_entropy(scores, labels)
        return (loss, {"logits": scores}) if return_outputs else loss


def add_causal_lora(model: Any, train: TrainConfig, *, quantized: bool) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        # Casts norms to fp32 and freezes the base; checkpointing stays the Trainer's job.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=train.lora_target_modules or "all-linear",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"train.lora_target_modules: {str(exc).splitlines()[0]}") from None


class CausalBackend:
    """The causal-LM part of a fold (``train.commands.FoldBackend``)."""

    family = FAMILY

    def __init__(
        self,
        path: str,
        frame: pd.DataFrame,
        letters: list[str],
        *,
        backbone: str,
        train: TrainConfig,
        causal_lm: CausalLMConfig,
    ) -> None:
        """``path``: what to load for ``models.backbone = backbone``
        (:func:`causal_backbone_path`); ``frame``: the training questions."""
        check_settings(train, causal_lm)
        check_weights(path)  # a cut copy fails before the run dir is written
        defaults = TrainConfig()
        if (train.max_length, train.use_context) != (defaults.max_length, defaults.use_context):
            log.warning(
                "train.max_length/use_context shape encoder inputs; a causal LM reads "
                "causal_lm.max_length=%d and causal_lm.use_context=%s",
                causal_lm.max_length,
                causal_lm.use_context,
            )
        self.path = path
        self.train = train
        self.causal_lm = causal_lm
        self.letters = letters
        self.name = backbone
        self.tokenizer = load_causal_tokenizer(path)
        self.spec = PromptSpec.from_config(causal_lm, self.tokenizer, self.name)
        # One question is enough to find the letter / yes-no token ids, and to fail now if
        # the tokenizer splits them (LLMPromptError) rather than after the run dir is written.
        probe = encode_for_llm(
            self.tokenizer, frame.head(1), self.spec, letters=letters, name=self.name
        )
        self.head = ScoreHead.of(probe)
        # A 4/8-bit base cannot take merged weights without rounding them away.
        self.adapter_only = causal_lm.load_in != "none"

    def encode_batch(self, frame: pd.DataFrame) -> dict[str, list[Any]]:
        enc = encode_for_llm(self.tokenizer, frame, self.spec, letters=self.letters, name=self.name)
        columns = as_columns(full_features(enc))
        columns[LENGTH] = enc.lengths
        columns[OVERLONG] = flags(len(frame), enc.overlong_rows)
        columns[CUT] = flags(len(frame), enc.cut_rows)
        return columns

    def encoding_key(self) -> dict[str, Any]:
        import sciqa.scoring.llm_prompts
        import sciqa.scoring.llm_scoring
        import train.dataset

        modules = (sciqa.scoring.llm_prompts, sciqa.scoring.llm_scoring, train.dataset)
        return {
            "family": FAMILY,
            "prompt": self.spec.to_meta(),
            "letters": self.letters,
            "code": code_digest(*modules),
        }

    def report(self, split: Split, name: str) -> None:
        spec = self.spec
        if split.cut:
            log.info(
                "%s: context cut to fit causal_lm.max_length=%d in %d question(s)",
                name,
                spec.max_length,
                split.cut,
            )
        if split.overlong:
            log.warning(
                "%s: %d question(s) do not fit causal_lm.max_length=%d even without context; "
                "they were kept whole (longer sequences)",
                name,
                split.overlong,
                spec.max_length,
            )

    def load_model(self) -> Any:
        # fp32 master weights whatever the checkpoint's dtype; bf16 comes from autocast.
        model = load_causal_lm(
            self.path,
            dtype=torch.float32,
            load_in=self.causal_lm.load_in,
            device_map=self.causal_lm.device_map,
        )
        if self.train.freeze_embeddings:  # tied models freeze their output head with it
            model.get_input_embeddings().requires_grad_(False)
        if self.train.lora:
            model = add_causal_lora(model, self.train, quantized=self.adapter_only)
        return model

    def fold_options(self) -> dict[str, Any]:
        return {
            "trainer_class": OptionScoringTrainer,
            # A partial, not a lambda: DataLoader workers may need to pickle it.
            "collator": functools.partial(collate_full, pad_id=self.tokenizer.pad_token_id),
            "trainer_kwargs": {"head": self.head},
            "cpu_bf16": True,
        }

    def save(self, model: Any, directory: Path) -> None:
        if self.adapter_only:
            model.save_pretrained(directory)  # adapter_config.json + adapter weights
        else:
            mergeable(model).save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "family": FAMILY,
            "prompt": self.spec.to_meta(),
            "max_length": self.spec.max_length,
            "use_context": self.spec.use_context,
        }
        if self.adapter_only:
            info.update(adapter=True, base=self.path)
        return info

"""The backbone: load any ``AutoModelForMultipleChoice`` checkpoint, freeze, add LoRA.

Imported only by the ``sciqa train`` command body, so torch/transformers load lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForMultipleChoice, AutoTokenizer, PreTrainedModel

from sciqa.assets.registry import ModelSource, resolve_model
from sciqa.config import TrainConfig
from sciqa.errors import ConfigError, SciqaError
from sciqa.weights import check_weights, loading_weights
from train.dataset import Split, code_digest, mc_columns

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def backbone_source(name: str) -> ModelSource:
    """Where ``models.backbone = name`` points: the packaged MiniLM, a directory or a Hub
    name."""
    return resolve_model(name, "backbone")


def _unreachable(name: str, exc: Exception) -> SciqaError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SciqaError(
        f"models.backbone = {name!r}: not a local directory and cannot be loaded from the "
        f"Hugging Face Hub (offline only local paths or 'default' work): {reason}"
    )


def load_tokenizer(source: ModelSource) -> Any:
    try:
        return AutoTokenizer.from_pretrained(source.name_or_path)
    except (OSError, ValueError) as exc:
        raise _unreachable(source.name_or_path, exc) from None


def load_backbone(source: ModelSource, train: TrainConfig) -> PreTrainedModel:
    """The multiple-choice model, with freezing, checkpointing and LoRA as configured."""
    try:
        with loading_weights(source.name_or_path):
            model = AutoModelForMultipleChoice.from_pretrained(source.name_or_path)
    except (OSError, ValueError) as exc:
        raise _unreachable(source.name_or_path, exc) from None
    if train.freeze_embeddings:
        for param in model.base_model.get_input_embeddings().parameters():
            param.requires_grad = False
        embeddings = getattr(model.base_model, "embeddings", None)
        if embeddings is not None:  # position/type embeddings and their LayerNorm too
            for param in embeddings.parameters():
                param.requires_grad = False
    if train.freeze_layers:
        layers = encoder_layers(model)
        if train.freeze_layers > len(layers):
            raise ConfigError(
                f"train.freeze_layers = {train.freeze_layers}: the backbone has only "
                f"{len(layers)} encoder layers"
            )
        for layer in layers[: train.freeze_layers]:
            for param in layer.parameters():
                param.requires_grad = False
    if train.lora:
        model = add_lora(model, train)
    return model


def encoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The transformer blocks of BERT/RoBERTa/ELECTRA/DeBERTa-style encoders, bottom first."""
    encoder = getattr(model.base_model, "encoder", None)
    for name in ("layer", "layers"):
        layers = getattr(encoder, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ConfigError(
        f"train.freeze_layers: cannot find the encoder layers of {type(model).__name__}; "
        "set train.freeze_layers = 0"
    )


def add_lora(model: PreTrainedModel, train: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=train.lora_target_modules,
        # The multiple-choice head is new: train it fully and save it with the adapter.
        modules_to_save=["classifier"],
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"train.lora_target_modules: {str(exc).splitlines()[0]}") from None


def mergeable(model: Any) -> PreTrainedModel:
    """A plain model to ``save_pretrained``: LoRA adapters merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def cpu_supports_bf16() -> bool:
    """Whether this CPU has bf16 instructions (x86 AVX512-BF16/AMX, Arm BF16): there
    bf16 autocast runs natively instead of being emulated at a loss."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no cheap way to tell, so no bf16
        return False
    flags = {
        word
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for word in line.partition(":")[2].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, *, cpu_bf16: bool = False) -> tuple[bool, bool]:
    """``(bf16, fp16)`` for TrainingArguments; GPU-only settings fail on a CPU machine.

    DeBERTa-v3 overflows in fp16 in its attention (NaN losses reported by Kaggle teams), so
    ``auto`` picks bf16 where the GPU supports it and fp32 otherwise, never fp16.
    ``cpu_bf16`` (the causal-LM path) also allows bf16 autocast on a CPU with bf16
    instructions, and makes ``auto`` pick it there; the encoder path keeps fp32 on CPUs
    so its measured figures stay comparable.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision = {precision!r}: use one of {', '.join(PRECISIONS)}")
    cuda = torch.cuda.is_available()
    cpu_ok = cpu_bf16 and not cuda and cpu_supports_bf16()
    if (precision == "fp16" and not cuda) or (precision == "bf16" and not (cuda or cpu_ok)):
        need, none = "a CUDA GPU", "none is visible"
        if cpu_bf16 and precision == "bf16":
            need += " or a CPU with bf16 instructions (avx512_bf16, amx_bf16)"
            none = "this machine has neither"
        raise ConfigError(
            f"train.precision = {precision!r} needs {need} and {none}; "
            "use train.precision=auto or fp32 on this machine"
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision = 'bf16': this GPU has no bf16; use fp16 or fp32")
    if precision == "auto":
        return ((cuda and torch.cuda.is_bf16_supported()) or cpu_ok, False)
    return (precision == "bf16", precision == "fp16")


def save_model_dir(model: Any, tokenizer: Any, directory: Path) -> None:
    """``save_pretrained`` of model and tokenizer, loadable by the Auto classes offline."""
    mergeable(model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


class EncoderBackend:
    """The ``AutoModelForMultipleChoice`` path of ``sciqa train`` (see ``train.commands``:
    what a backend provides for one fold)."""

    family = "mc"

    def __init__(self, letters: list[str], *, backbone: str, train: TrainConfig) -> None:
        resolve_precision(train.precision)  # fail before any work on a GPU-only setting
        self.train = train
        self.letters = letters
        self.source = backbone_source(backbone)
        check_weights(self.source.name_or_path)  # a cut copy fails before the run dir is written
        self.tokenizer = load_tokenizer(self.source)

    def encode_batch(self, frame: Any) -> dict[str, list[Any]]:
        return mc_columns(
            self.tokenizer,
            frame,
            max_length=self.train.max_length,
            use_context=self.train.use_context,
            letters=self.letters,
        )

    def encoding_key(self) -> dict[str, Any]:
        import sciqa.scoring.mc_encoding
        import train.dataset

        return {
            "family": self.family,
            "max_length": self.train.max_length,
            "use_context": self.train.use_context,
            "letters": self.letters,
            "code": code_digest(sciqa.scoring.mc_encoding, train.dataset),
        }

    def report(self, split: Split, name: str) -> None:
        if split.overlong:
            log.warning(
                "%s: %d question(s) do not fit train.max_length=%d even without context; "
                "their question/option text was truncated",
                name,
                split.overlong,
                self.train.max_length,
            )

    def load_model(self) -> Any:
        return load_backbone(self.source, self.train)

    def fold_options(self) -> dict[str, Any]:
        return {}  # train_fold's defaults: the stock Trainer loss and the MC collator

    def save(self, model: Any, directory: Path) -> None:
        save_model_dir(model, self.tokenizer, directory)

    def model_info(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "max_length": self.train.max_length,
            "use_context": self.train.use_context,
        }

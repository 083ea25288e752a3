"""Model families: all that infer does differently for an encoder and a causal LM.

A member's family (``ModelSpec.family``: ``mc`` or ``causal_lm``, from its
``sciqa_model.json`` or its ``llm:`` argument) says how it loads its tokenizer, encodes
the questions, loads onto one device, what its cache key adds and why it may not be
split over ``infer.devices``. :func:`open_member` puts a member on its devices. Nothing
else in infer asks which family a member is.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import ValidationError

from infer.errors import InferError
from infer.models import ModelSpec
from infer.predictors.base import Encoded, Predictor
from infer.predictors.causal import CausalPredictor, load_llm
from infer.predictors.devices import resolve_devices, resolve_dtype
from infer.predictors.encoder import EncoderPredictor, load_model, load_tokenizer
from infer.predictors.offload.predictor import StreamedPredictor, refuse_unstreamable
from infer.predictors.offload.stream import open_streamer
from infer.predictors.sharded import ShardedPredictor
from sciqa.config import CausalLMConfig, InferConfig
from sciqa.errors import SciqaError
from sciqa.scoring.mc_encoding import encode_questions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loading:
    """How this run loads its members: ``infer`` and ``causal_lm``, resolved once."""

    infer: InferConfig
    causal: CausalLMConfig
    devices: list[torch.device]
    dtype: torch.dtype
    clock: Callable[[], float]

    @classmethod
    def resolve(
        cls, infer: InferConfig, causal: CausalLMConfig, clock: Callable[[], float]
    ) -> Loading:
        """The devices and dtype the config names, checked against this machine."""
        devices = resolve_devices(infer.device, infer.devices)
        return cls(infer, causal, devices, resolve_dtype(infer.dtype, devices[0]), clock)

    def causal_dtype(self, spec: ModelSpec) -> torch.dtype:
        """The dtype a causal LM runs in: ``infer.dtype``, except that ``auto`` on a CPU
        with bf16 keeps a model stored in bf16 (``llm:qwen``'s folder) in bf16. Upcast to
        fp32 it would load at three times the memory (11 GB for Qwen-1.5B) and score 4x
        slower; smaller packaged LLMs are stored in fp32 and stay so."""
        if self.infer.dtype != "auto" or self.devices[0].type != "cpu":
            return self.dtype
        from sciqa.assets.convert import cpu_has_bf16

        if stored_dtype(spec.path) == "bfloat16" and cpu_has_bf16():
            return torch.bfloat16
        return self.dtype


def stored_dtype(path: Any) -> str | None:
    """The dtype a model folder's ``config.json`` says its weights are saved in."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


class Family(ABC):
    """One model family's answers; :data:`FAMILIES` holds one object per family."""

    name: str  # ModelSpec.family, as sciqa_model.json and the pack manifest spell it

    @abstractmethod
    def encoding_key(self, spec: ModelSpec) -> tuple:
        """What decides its inputs besides the tokenizer: equal keys share one encoding."""

    @abstractmethod
    def load_tokenizer(self, spec: ModelSpec) -> Any: ...

    def prepare(self, spec: ModelSpec, tokenizer: Any, causal: CausalLMConfig) -> None:
        """Settle how ``spec`` encodes, once its tokenizer is loaded."""
        return  # an encoder has nothing to settle

    @abstractmethod
    def encode(
        self, spec: ModelSpec, tokenizer: Any, frame: pd.DataFrame, letters: list[str]
    ) -> Encoded: ...

    @abstractmethod
    def load(
        self, spec: ModelSpec, tokenizer: Any, device: torch.device, loading: Loading
    ) -> Predictor:
        """``spec`` loaded on ``device``: its predictor there."""

    def cache_inputs(self, spec: ModelSpec, loading: Loading) -> list[str]:
        """Its logits cache key's parts besides the questions, model, rotation and rows
        (read before :meth:`prepare`)."""
        encoding = repr(self.encoding_key(spec))
        return [str(spec.max_length), str(spec.use_context), str(loading.dtype), encoding]

    def not_split(self, spec: ModelSpec, causal: CausalLMConfig) -> str | None:
        """Why ``spec`` runs once instead of split over ``infer.devices``, or None."""
        return None


class EncoderFamily(Family):
    """``AutoModelForMultipleChoice`` checkpoints: a ``sciqa train`` fold, a Kaggle run."""

    name = "mc"

    def encoding_key(self, spec: ModelSpec) -> tuple:
        return ("mc", spec.max_length, spec.use_context)

    def load_tokenizer(self, spec: ModelSpec) -> Any:
        return load_tokenizer(spec.path)

    def encode(
        self, spec: ModelSpec, tokenizer: Any, frame: pd.DataFrame, letters: list[str]
    ) -> Encoded:
        enc = encode_questions(
            tokenizer, frame, spec.max_length, use_context=spec.use_context, letters=letters
        )
        return Encoded(enc.features, enc.lengths, overlong=enc.overlong)

    def load(
        self, spec: ModelSpec, tokenizer: Any, device: torch.device, loading: Loading
    ) -> Predictor:
        model = load_model(spec.path, device, loading.dtype, loading.infer.attention)
        return EncoderPredictor(model, tokenizer, device, loading.infer.batch_size, loading.clock)


class CausalFamily(Family):
    """Causal LMs scoring options (``llm:NAME``, causal ``sciqa train`` folds): the
    ``causal_lm`` section, with a member's ``llm:NAME?key=value`` overrides."""

    name = "causal_lm"

    def encoding_key(self, spec: ModelSpec) -> tuple:
        return ("causal_lm", repr(spec.prompt), tuple(spec.overrides.items()))

    def config(self, spec: ModelSpec, causal: CausalLMConfig) -> CausalLMConfig:
        """The ``causal_lm`` section with this member's overrides."""
        if not spec.overrides:
            return causal
        try:
            return CausalLMConfig.model_validate({**causal.model_dump(), **spec.overrides})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise InferError(f"{spec.arg}: causal_lm.{where}: {error['msg']}") from None

    def load_tokenizer(self, spec: ModelSpec) -> Any:
        from sciqa.assets.llm import load_causal_tokenizer

        try:
            return load_causal_tokenizer(str(spec.path), local_only=True)
        except SciqaError as exc:
            raise InferError(str(exc)) from None

    def prepare(self, spec: ModelSpec, tokenizer: Any, causal: CausalLMConfig) -> None:
        """``llm:NAME``: its prompt from the config (a fold keeps the one it trained with)."""
        if spec.prompt is not None:
            return
        from sciqa.scoring.llm_prompts import PromptSpec

        try:
            spec.prompt = PromptSpec.from_config(self.config(spec, causal), tokenizer, spec.name)
        except SciqaError as exc:
            raise InferError(str(exc)) from None

    def encode(
        self, spec: ModelSpec, tokenizer: Any, frame: pd.DataFrame, letters: list[str]
    ) -> Encoded:
        from sciqa.scoring.llm_prompts import encode_for_llm

        try:
            enc = encode_for_llm(tokenizer, frame, spec.prompt, letters=letters, name=spec.name)
        except SciqaError as exc:
            raise InferError(str(exc)) from None
        if enc.truncated:
            log.info("%s: context cut to fit for %d question(s)", spec.name, enc.truncated)
        return Encoded(enc, enc.lengths, overlong=enc.overlong, truncated=enc.truncated)

    def load(
        self, spec: ModelSpec, tokenizer: Any, device: torch.device, loading: Loading
    ) -> Predictor:
        cfg, attention = self.config(spec, loading.causal), loading.infer.attention
        args = (tokenizer.pad_token_id, cfg.batch_size, cfg.prefix_cache, loading.clock)
        if cfg.offload == "layers":
            refuse_unstreamable(spec.path, cfg, spec.meta)
            streamer = open_streamer(spec.path, device, loading.causal_dtype(spec), cfg, attention)
            return StreamedPredictor(streamer, *args)
        model = load_llm(spec.path, device, loading.causal_dtype(spec), cfg, attention, spec.meta)
        kernels = {"shared_head": cfg.shared_head, "onednn_fp32": cfg.onednn_fp32}
        return CausalPredictor(model, *args, **kernels)

    def cache_inputs(self, spec: ModelSpec, loading: Loading) -> list[str]:
        """llm:NAME members add the config their prompt is made from."""
        parts = super().cache_inputs(spec, loading)
        parts[2] = str(loading.causal_dtype(spec))
        if spec.prompt is None:
            parts.append(self.config(spec, loading.causal).model_dump_json())
        return parts

    def not_split(self, spec: ModelSpec, causal: CausalLMConfig) -> str | None:
        """``causal_lm.device_map`` already spreads it over the GPUs."""
        try:
            device_map = self.config(spec, causal).device_map
        except InferError:
            return None  # a bad override is reported when the member loads
        if not device_map:
            return None
        return (
            f"causal_lm.device_map={device_map!r} spreads it over the GPUs itself, "
            "so it runs once, not split over infer.devices"
        )


FAMILIES: dict[str, Family] = {f.name: f for f in (EncoderFamily(), CausalFamily())}


def family_of(spec: ModelSpec) -> Family:
    return FAMILIES[spec.family]


def not_split(spec: ModelSpec, loading: Loading) -> str | None:
    """Why a member is not split over ``infer.devices``, or None."""
    if len(loading.devices) < 2:
        return None
    return family_of(spec).not_split(spec, loading.causal)


def member_devices(spec: ModelSpec, loading: Loading) -> list[torch.device]:
    """The devices a member's questions are split over."""
    return loading.devices[:1] if not_split(spec, loading) else loading.devices


def open_member(spec: ModelSpec, tokenizer: Any, loading: Loading) -> Predictor:
    """``spec`` loaded on each of its devices, one copy per device."""
    if reason := not_split(spec, loading):
        log.info("%s: %s", spec.name, reason)
    family = family_of(spec)
    return ShardedPredictor.build(
        lambda device: family.load(spec, tokenizer, device, loading),
        member_devices(spec, loading),
        loading.clock,
    )

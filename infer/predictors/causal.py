"""Run one causal LM as an option scorer (:class:`~infer.predictors.base.Predictor`).

Questions are sorted longest first and batched like the encoder path; each batch goes
through :func:`sciqa.scoring.llm_scoring.score_rows` (the prefix KV cache reused for
every option when ``causal_lm.prefix_cache`` is on; with ``causal_lm.shared_head`` too,
the prompt start every question shares runs once per loaded model, in a
:class:`~sciqa.scoring.shared_head.HeadCache`). A half-precision batch with non-finite
scores is re-run in fp32 and the model stays in fp32. An fp32 model on CPU runs its
linears through oneDNN (``causal_lm.onednn_fp32``, :mod:`infer.predictors.kernels`).

A model too large for memory streams one layer at a time instead
(``causal_lm.offload = layers``): :mod:`infer.predictors.offload.predictor`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infer.errors import InferError
from infer.predictors.base import BatchedPredictor
from infer.predictors.kernels import fp32_kernels
from sciqa.config import CausalLMConfig
from sciqa.errors import SciqaError
from sciqa.scoring.llm_prompts import LLMEncoded
from sciqa.scoring.llm_scoring import ScoreHead, score_rows
from sciqa.scoring.shared_head import HeadCache
from sciqa.weights import loading_weights

log = logging.getLogger(__name__)


def adapter_base(path: Path, meta: dict[str, Any] | None) -> str | None:
    """The base model a LoRA adapter fold loads under (named in its ``sciqa_model.json``),
    or None when ``path`` is a full model."""
    if not (meta or {}).get("adapter"):
        return None
    base = str((meta or {}).get("base", ""))
    if not base:
        raise InferError(f"{path}: an adapter fold without a 'base' in its sciqa_model.json")
    return base


def load_llm(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    cfg: CausalLMConfig,
    attention: str,
    meta: dict[str, Any] | None = None,
) -> Any:
    """The causal LM on ``device`` (or spread by ``causal_lm.device_map``), offline.

    A fold saved as a LoRA adapter (trained over a 4/8-bit base) loads its base, named in
    ``sciqa_model.json``, then the adapter on top with peft.
    """
    from sciqa.assets.llm import load_causal_lm

    base = adapter_base(path, meta)
    device_map = cfg.device_map
    if cfg.load_in != "none" and not device_map and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        device_map = {"": index}  # a quantized copy lands on its own GPU, not on cuda:0
    try:
        model = load_causal_lm(
            base or str(path),
            dtype=dtype,
            attention=attention,
            load_in=cfg.load_in,
            device_map=device_map,
            local_only=True,
        )
    except SciqaError as exc:
        raise InferError(str(exc)) from None
    if base is not None:
        from peft import PeftModel

        with loading_weights(path):
            model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    if cfg.load_in == "none" and not cfg.device_map:
        model = model.to(device)
    return model.eval()


class CausalPredictor(BatchedPredictor):
    """A loaded causal LM; ``logits`` takes an :class:`LLMEncoded` as its features."""

    def __init__(
        self,
        model: Any,
        pad_id: int,
        batch_size: int,
        prefix_cache: bool,
        clock: Callable[[], float] = time.perf_counter,
        *,
        shared_head: bool = True,
        onednn_fp32: bool = True,
    ):
        self.model, self.pad_id, self.batch_size = model, pad_id, batch_size
        self.prefix_cache, self.clock = prefix_cache, clock
        self.heads = HeadCache() if shared_head else None
        self.onednn_fp32 = onednn_fp32

    def _score(self, enc: LLMEncoded, rows: list[int], head: ScoreHead) -> torch.Tensor:
        with fp32_kernels(self.model, self.onednn_fp32):
            return score_rows(
                self.model,
                enc,
                rows,
                head,
                self.pad_id,
                prefix_cache=self.prefix_cache,
                heads=self.heads,
            )

    def _scores(self, enc: LLMEncoded, rows: list[int], head: ScoreHead) -> torch.Tensor:
        scores = self._score(enc, rows, head)
        if not torch.isfinite(scores).all() and self.model.dtype != torch.float32:
            log.warning("non-finite scores in %s; switching this model to fp32", self.model.dtype)
            self.model = self.model.float()
            scores = self._score(enc, rows, head)
        return scores

    def n_options(self, features: LLMEncoded) -> int:
        return features.n_options

    def score_batch(
        self, features: LLMEncoded, lengths: list[int], rows: np.ndarray
    ) -> tuple[np.ndarray, int, float]:
        began = self.clock()
        scores = self._scores(features, rows.tolist(), ScoreHead.of(features)).numpy()
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        # Same unit as the encoder path (questions x options x longest), so the budget's
        # seconds-per-token transfers between model families.
        tokens = len(rows) * features.n_options * max(lengths[i] for i in rows)
        return scores, tokens, began

    def close(self) -> None:
        device = self.model.device
        del self.model
        if device.type == "cuda":
            torch.cuda.empty_cache()

"""Run one causal LM as an option scorer (:class:`~infer.predictors.base.Predictor`).

Questions are sorted longest first and batched like the encoder path; each batch goes
through :func:`sciqa.scoring.llm_scoring.score_rows` (the prefix KV cache reused for
every option when ``causal_lm.prefix_cache`` is on). A half-precision batch with
non-finite scores is re-run in fp32 and the model stays in fp32.

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
from tqdm.auto import tqdm

from infer.errors import InferError
from infer.predictors.base import BatchTiming, OnBatch, Predictor, length_order
from sciqa.config import CausalLMConfig
from sciqa.errors import SciqaError
from sciqa.scoring.llm_prompts import LLMEncoded
from sciqa.scoring.llm_scoring import ScoreHead, score_rows

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

        model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    if cfg.load_in == "none" and not cfg.device_map:
        model = model.to(device)
    return model.eval()


class CausalPredictor(Predictor):
    """A loaded causal LM; ``logits`` takes an :class:`LLMEncoded` as its features."""

    def __init__(
        self,
        model: Any,
        pad_id: int,
        batch_size: int,
        prefix_cache: bool,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.model, self.pad_id, self.batch_size = model, pad_id, batch_size
        self.prefix_cache, self.clock = prefix_cache, clock

    @property
    def unit(self) -> int:
        """Questions scored per call of :meth:`_score`, timed as one batch."""
        return self.batch_size

    def _score(self, enc: LLMEncoded, rows: list[int], head: ScoreHead) -> torch.Tensor:
        return score_rows(self.model, enc, rows, head, self.pad_id, prefix_cache=self.prefix_cache)

    def _scores(self, enc: LLMEncoded, rows: list[int], head: ScoreHead) -> torch.Tensor:
        scores = self._score(enc, rows, head)
        if not torch.isfinite(scores).all() and self.model.dtype != torch.float32:
            log.warning("non-finite scores in %s; switching this model to fp32", self.model.dtype)
            self.model = self.model.float()
            scores = self._score(enc, rows, head)
        return scores

    def logits(
        self,
        features: LLMEncoded,
        lengths: list[int],
        *,
        rows: np.ndarray | None = None,
        desc: str = "",
        on_batch: OnBatch | None = None,
    ) -> np.ndarray:
        """``(n, n_options)`` float32 scores; rows not in ``rows`` are NaN."""
        head = ScoreHead.of(features)
        n_options = features.n_options
        out = np.full((len(features), n_options), np.nan, dtype=np.float32)
        order = length_order(lengths, rows)
        with tqdm(total=len(order), desc=desc, unit="q", leave=False) as bar:
            for start in range(0, len(order), self.unit):
                chunk = order[start : start + self.unit]
                began = self.clock()
                out[chunk] = self._scores(features, chunk.tolist(), head).numpy()
                if self.model.device.type == "cuda":
                    torch.cuda.synchronize(self.model.device)
                bar.update(len(chunk))
                if on_batch is not None:
                    # Same unit as the encoder path (questions x options x longest), so the
                    # budget's seconds-per-token transfers between model families.
                    tokens = len(chunk) * n_options * max(lengths[i] for i in chunk)
                    on_batch(BatchTiming(len(chunk), tokens, self.clock() - began))
        return out

    def close(self) -> None:
        device = self.model.device
        del self.model
        if device.type == "cuda":
            torch.cuda.empty_cache()

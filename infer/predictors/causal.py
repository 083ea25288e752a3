"""Run one causal LM as an option scorer, with the same interface as ``Predictor``.

Questions are sorted longest first and batched like the encoder path; each batch goes
through :func:`sciqa.scoring.llm_scoring.score_rows` (the prefix KV cache reused for
every option when ``causal_lm.prefix_cache`` is on). A half-precision batch with
non-finite scores is re-run in fp32 and the model stays in fp32.

With ``causal_lm.offload = layers`` the model is a
:class:`infer.predictors.offload.stream.LayerStreamer` and the unit is a *group* of
``offload_group`` questions: every micro-batch of ``batch_size`` questions of the group
becomes a :class:`~infer.predictors.offload.stream.Job` built by the same
``sciqa.scoring.llm_scoring`` helpers, and the whole group goes through each layer while
it is loaded. The budget times the first group like any first batch.
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
from infer.predictors.encoder import BatchTiming, length_order
from sciqa.errors import SciqaError
from sciqa.scoring.llm_prompts import LLMEncoded
from sciqa.scoring.llm_scoring import ScoreHead, score_rows

log = logging.getLogger(__name__)


def load_llm(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    cfg: Any,
    attention: str,
    meta: dict[str, Any] | None = None,
) -> Any:
    """The causal LM on ``device`` (or spread by ``causal_lm.device_map``), offline.

    A fold saved as a LoRA adapter (trained over a 4/8-bit base) loads its base, named in
    ``sciqa_model.json``, then the adapter on top with peft.
    """
    from sciqa.assets.llm import load_causal_lm

    adapter = bool((meta or {}).get("adapter"))
    base = str((meta or {}).get("base", "")) if adapter else str(path)
    if adapter and not base:
        raise InferError(f"{path}: an adapter fold without a 'base' in its sciqa_model.json")
    if cfg.offload == "layers":
        return _streamer(path, device, dtype, cfg, attention, adapter)
    device_map = cfg.device_map
    if cfg.load_in != "none" and not device_map and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        device_map = {"": index}  # a quantized copy lands on its own GPU, not on cuda:0
    try:
        model = load_causal_lm(
            base,
            dtype=dtype,
            attention=attention,
            load_in=cfg.load_in,
            device_map=device_map,
            local_only=True,
        )
    except SciqaError as exc:
        raise InferError(str(exc)) from None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    if cfg.load_in == "none" and not cfg.device_map:
        model = model.to(device)
    return model.eval()


def _streamer(
    path: Path, device: torch.device, dtype: torch.dtype, cfg: Any, attention: str, adapter: bool
) -> Any:
    if adapter:
        raise InferError(
            f"{path}: causal_lm.offload = layers streams full checkpoints, not LoRA adapter "
            "folds; merge the adapter into its base (peft merge_and_unload) and save that"
        )
    if cfg.load_in != "none" or cfg.device_map:
        key = "causal_lm.load_in" if cfg.load_in != "none" else "causal_lm.device_map"
        raise InferError(
            f"{key}: causal_lm.offload = layers reads plain fp32/bf16/fp16 weights one layer "
            f"at a time and does not combine with {key.split('.')[1]}; leave it unset"
        )
    from infer.predictors.offload.stream import open_streamer

    return open_streamer(Path(path), device, dtype, cfg, attention)


def streamed_scores(
    streamer: Any,
    enc: LLMEncoded,
    rows: list[int],
    head: ScoreHead,
    pad_id: int,
    batch_size: int,
    prefix_cache: bool,
) -> torch.Tensor:
    """``(len(rows), C)`` float32 scores of ``rows`` from one sweep of a streamed model, in
    micro-batches of ``batch_size``; pmi's conditional and bare halves share the sweep."""
    from sciqa.scoring.llm_scoring import _bare, _summed

    if enc.uncond_suffixes and not prefix_cache:
        raise ValueError("pmi scoring runs through the prefix cache")
    halves = [_summed(enc), _bare(enc)] if enc.uncond_suffixes else [enc]
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    jobs = [_job(half, chunk, head, pad_id, prefix_cache) for half in halves for chunk in chunks]
    scores = [s.float().cpu() for s in streamer.run(jobs)]
    parts = [torch.cat(scores[h * len(chunks) : (h + 1) * len(chunks)]) for h in range(len(halves))]
    return parts[0] - parts[1] if len(parts) == 2 else parts[0]


def _job(enc: LLMEncoded, rows: list[int], head: ScoreHead, pad_id: int, cache: bool) -> Any:
    """One micro-batch as the two model calls of ``cached_scores`` (or the one of
    ``full_scores``); its ``finish`` turns the logits into scores with the same code."""
    from infer.predictors.offload.stream import Job
    from sciqa.scoring.llm_scoring import (
        collate_full,
        full_features,
        full_from_logits,
        full_inputs,
        prefix_inputs,
        suffix_from_logits,
        suffix_inputs,
    )

    def on(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in tensors.items()}

    if not cache:
        batch = collate_full(full_features(enc, rows), pad_id)
        inputs, keep = full_inputs(batch, head)
        return Job(
            inputs, keep, lambda logits, _: full_from_logits(logits, on(batch, logits.device), head)
        )
    first = prefix_inputs(enc, rows, pad_id, "cpu")
    if head.mode == "letter":
        return Job(first, 1, lambda logits, _: head.from_last(logits[:, -1]))
    second = suffix_inputs(enc, rows, first["attention_mask"], pad_id)

    def finish(last: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        assert logits is not None
        return suffix_from_logits(enc, rows, head, last[:, -1], logits, on(second, logits.device))

    return Job(first, 1, finish, second, enc.n_options)


class LLMPredictor:
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
        self.streamed = bool(getattr(model, "streams_layers", False))
        # Streamed: a whole group per sweep of the weights; resident: one batch per call.
        self.unit = model.group_size if self.streamed else batch_size

    def _score(self, enc: LLMEncoded, rows: list[int], head: ScoreHead) -> torch.Tensor:
        if self.streamed:
            return streamed_scores(
                self.model, enc, rows, head, self.pad_id, self.batch_size, self.prefix_cache
            )
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
        on_batch: Callable[[BatchTiming], None] | None = None,
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
        if self.streamed:
            self.model.close()
        del self.model
        if device.type == "cuda":
            torch.cuda.empty_cache()

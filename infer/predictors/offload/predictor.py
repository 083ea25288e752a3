"""``causal_lm.offload = layers``: a causal LM scored one loaded layer at a time.

:class:`StreamedPredictor` is the causal predictor over a
:class:`~infer.predictors.offload.stream.LayerStreamer` instead of a resident model: its
unit is a *group* of ``offload_group`` questions, every micro-batch of ``batch_size``
questions of the group becomes a :class:`~infer.predictors.offload.stream.Job` built by
the same ``sciqa.scoring.llm_scoring`` helpers, and the whole group goes through each
layer while it is loaded. The budget times the first group like any first batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from infer.errors import InferError
from infer.predictors.causal import CausalPredictor, adapter_base
from infer.predictors.offload.stream import Job
from sciqa.config import CausalLMConfig
from sciqa.scoring.llm_prompts import LLMEncoded
from sciqa.scoring.llm_scoring import ScoreHead


def refuse_unstreamable(path: Path, cfg: CausalLMConfig, meta: dict[str, Any] | None) -> None:
    """A one-line refusal for what streaming cannot read: an adapter fold, quantized or
    device-mapped loading."""
    if adapter_base(path, meta) is not None:
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


class StreamedPredictor(CausalPredictor):
    """A causal predictor whose ``model`` is a
    :class:`~infer.predictors.offload.stream.LayerStreamer`: one sweep of the weights per
    group of questions."""

    @property
    def unit(self) -> int:
        return self.model.group_size

    def _score(self, enc: LLMEncoded, rows: list[int], head: ScoreHead) -> torch.Tensor:
        return streamed_scores(
            self.model, enc, rows, head, self.pad_id, self.batch_size, self.prefix_cache
        )

    def close(self) -> None:
        self.model.close()
        super().close()


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

"""Run a causal LM that does not fit in memory, one decoder layer at a time.

``causal_lm.offload = layers`` (the Kaggle LLM Science Exam's 70B-on-two-T4s method):
the model is built on the meta device (accelerate's ``init_empty_weights``), and a
*group* of questions goes through it part by part. For each part (embeddings, decoder
layer 0..N-1, final norm + head) its weights are read from the per-layer split
(:mod:`infer.predictors.offload.split`) into the empty module (``set_module_tensor_to_device``), the
hidden states of every question of the group pass through it, and its weights go back
to the meta device before the next part is read. With ``offload_prefetch`` the next
part is read on a thread while this one computes, so at most two parts are held.

Only the model's own modules run (its decoder layers, rotary embedding, norm and
``lm_head``, the masks from ``transformers.masking_utils``), in the order its
``forward`` calls them; nothing of attention or the MLP is re-implemented. The shared
prefix of a question (context + question) passes a layer once; its KV cache for that
layer is repeated per option, the options' suffixes pass the same layer on top of it,
and the KV is dropped: no layer's cache outlives the layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from infer.predictors.offload.layout import Part, modules_of, parts_of, skeleton
from infer.predictors.offload.split import DTYPES, LayerSplit, ensure_split
from sciqa.config import CausalLMConfig

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One micro-batch: a first pass, optionally a second on top of its KV cache.

    ``first``/``second``: ``input_ids``, ``attention_mask``, ``position_ids`` (the shape
    ``sciqa.scoring.llm_scoring`` builds for the model's own forward). The first pass's KV is
    repeated ``repeat`` times per row for the second. ``finish(first_logits,
    second_logits)`` gets the logits of the first pass's last ``keep`` positions and of
    every second-pass position as soon as the head has run, and returns what the job
    yields (its scores): vocabulary-sized logits never wait for the other jobs.
    """

    first: dict[str, torch.Tensor]
    keep: int
    finish: Callable[[torch.Tensor, torch.Tensor | None], Any]
    second: dict[str, torch.Tensor] | None = None
    repeat: int = 1


@dataclass
class _Pass:
    hidden: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]
    masks: dict[str, Any] = field(default_factory=dict)  # per attention kind, built lazily


@dataclass
class StreamStats:
    sweeps: int = 0  # passes over all the weights (one per group)
    bytes_read: int = 0  # weight bytes read from the split
    read_seconds: float = 0.0  # time spent reading weights (on the prefetch thread or not)
    wait_seconds: float = 0.0  # of which the computation waited for
    compute_seconds: float = 0.0  # time spent computing
    tokens: int = 0  # token positions pushed through every layer (all sweeps)
    peak_weight_bytes: int = 0  # most weight bytes held at once (modules + prefetched part)


class LayerStreamer:
    """Stands in for the model in ``StreamedPredictor``: ``device``, ``dtype``, ``float()``."""

    def __init__(
        self,
        model: Any,
        split: LayerSplit,
        device: torch.device,
        dtype: torch.dtype,
        *,
        group_size: int = 64,
        activations: str = "device",
        prefetch: bool = True,
    ):
        self.model, self.split, self.device, self.dtype = model, split, device, dtype
        self.config = model.config
        self.embed, self.layers, self.norm, self.rotary, self.head = modules_of(model)
        self.rotary.to(device)  # its buffers are real (init_empty_weights leaves buffers)
        self.group_size = group_size
        self.store = device if activations == "device" else torch.device("cpu")
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="layer-prefetch") if prefetch else None
        self.stats = StreamStats()
        self._pending: Future | None = None
        self._pending_bytes = 0

    def float(self) -> LayerStreamer:
        """fp32 from now on (weights are cast as they are read), as ``model.float()``."""
        self.dtype = torch.float32
        return self

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    # --- weights ----------------------------------------------------------------

    def _read(self, part: Part) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        device = self.device
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        began = time.perf_counter()
        # safetensors' CPU tensors can sit at unaligned addresses (seen: 40 mod 64), on
        # which the CPU matmul kernels ran 8x slower here; a copy is aligned. Copied one
        # tensor at a time, so a part is never held twice while it is read.
        aligned = device.type == "cpu"
        with safe_open(str(self.split.path(part)), framework="pt", device=str(device)) as f:
            tensors = {
                name: f.get_tensor(name).clone() if aligned else f.get_tensor(name)
                for name in part.tensors
            }
        self.stats.read_seconds += time.perf_counter() - began  # one reader at a time
        return tensors

    def _take(self, k: int) -> dict[str, torch.Tensor]:
        """Part ``k``'s tensors (prefetched or read now); starts reading part ``k + 1``."""
        parts = self.split.parts
        began = time.perf_counter()
        pending, self._pending = self._pending, None
        tensors = pending.result() if pending is not None else self._read(parts[k])
        self.stats.wait_seconds += time.perf_counter() - began
        self.stats.bytes_read += self.split.sizes[k]
        if self.pool is not None and k + 1 < len(parts):
            self._pending = self.pool.submit(self._read, parts[k + 1])
            self._pending_bytes = self.split.sizes[k + 1]
        return tensors

    def _materialise(self, tensors: dict[str, torch.Tensor]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name, value in tensors.items():
            set_module_tensor_to_device(
                self.model, name, self.device, value=value, dtype=self.dtype, clear_cache=False
            )

    def _release(self, part: Part) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name in part.tensors:
            set_module_tensor_to_device(self.model, name, "meta", clear_cache=False)

    def held_bytes(self) -> int:
        """Weight bytes materialised now: the modules' non-meta parameters plus the part
        being prefetched (counted whole from the moment its read starts)."""
        held = sum(
            p.numel() * p.element_size() for p in self.model.parameters() if p.device.type != "meta"
        )
        return held + (self._pending_bytes if self._pending is not None else 0)

    # --- the forward, part by part ----------------------------------------------

    def run(self, jobs: list[Job]) -> list[Any]:
        """Every job through every part; what each job's ``finish`` returned, in order."""
        parts = self.split.parts
        states: list[tuple[_Pass, _Pass | None]] = []
        results: list[Any] = []
        self.stats.sweeps += 1
        for job in jobs:
            self.stats.tokens += job.first["input_ids"].numel()
            self.stats.tokens += job.second["input_ids"].numel() if job.second else 0
        try:
            for k, part in enumerate(parts):
                self._materialise(self._take(k))
                self.stats.peak_weight_bytes = max(self.stats.peak_weight_bytes, self.held_bytes())
                began = time.perf_counter()
                with torch.inference_mode():
                    if k == 0:
                        states = [self._embed(job) for job in jobs]
                    elif k <= len(self.layers):
                        for job, state in zip(jobs, states, strict=True):
                            self._layer(k - 1, job, *state)
                    else:
                        results = [self._finish(j, *st) for j, st in zip(jobs, states, strict=True)]
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.stats.compute_seconds += time.perf_counter() - began
                self._release(part)
        except BaseException:  # an error mid-sweep: drop what is read or being read
            if self._pending is not None:
                self._pending.cancel() or self._pending.exception()
                self._pending = None
            for part in parts:
                self._release(part)
            raise
        return results

    def _embed(self, job: Job) -> tuple[_Pass, _Pass | None]:
        def one(inputs: dict[str, torch.Tensor]) -> _Pass:
            ids = inputs["input_ids"].to(self.device)
            hidden = self.embed(ids)
            positions = inputs["position_ids"].to(self.device)
            rotary = self.rotary(hidden, positions)
            mask = inputs["attention_mask"].to(self.device)
            return _Pass(hidden.to(self.store), mask, positions, rotary)

        return one(job.first), (one(job.second) if job.second is not None else None)

    def _kind(self, i: int) -> str:
        kinds = getattr(self.config, "layer_types", None)
        if kinds:
            return kinds[i]
        return (
            "sliding_attention"
            if getattr(self.config, "sliding_window", None)
            else "full_attention"
        )

    def _mask(self, step: _Pass, hidden: torch.Tensor, cache: Any, i: int) -> Any:
        """The 4D mask the model's forward would build for this pass (same for every layer
        of one attention kind; built at the first such layer, sized against its cache)."""
        kind = self._kind(i)
        if kind not in step.masks:
            from transformers.masking_utils import (
                create_causal_mask,
                create_sliding_window_causal_mask,
            )

            build = (
                create_sliding_window_causal_mask
                if kind == "sliding_attention"
                else (create_causal_mask)
            )
            step.masks[kind] = build(
                config=self.config,
                inputs_embeds=hidden,
                attention_mask=step.mask,
                cache=cache,
                position_ids=step.positions,
                layer_idx=i,
            )
        return step.masks[kind]

    def _layer(self, i: int, job: Job, first: _Pass, second: _Pass | None) -> None:
        from transformers import DynamicCache

        layer = self.layers[i]
        # A cache of this layer alone: the prefix's KV lives only while this layer is loaded.
        cache = DynamicCache(config=self.config) if second is not None else None
        for step in (first, second):
            if step is None:
                continue
            hidden = step.hidden.to(self.device)
            out = layer(
                hidden,
                attention_mask=self._mask(step, hidden, cache, i),
                position_embeddings=step.rotary,
                position_ids=step.positions,
                cache=cache,
                use_cache=cache is not None,
            )
            step.hidden = (out[0] if isinstance(out, tuple) else out).to(self.store)
            if step is first and cache is not None:
                cache.layers[i].batch_repeat_interleave(job.repeat)
        del cache

    def _finish(self, job: Job, first: _Pass, second: _Pass | None) -> Any:
        def logits(hidden: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(hidden.to(self.device)))

        last = logits(first.hidden[:, -job.keep :])
        return job.finish(last, logits(second.hidden) if second is not None else None)


def open_streamer(
    path: Path, device: torch.device, dtype: torch.dtype, cfg: CausalLMConfig, attention: str
) -> LayerStreamer:
    """The streamer for checkpoint (or split) ``path``: splits it first if needed."""
    if cfg.offload_dtype != "auto":
        dtype = getattr(torch, DTYPES[cfg.offload_dtype])
    name = {v: k for k, v in DTYPES.items()}[str(dtype).removeprefix("torch.")]
    model = skeleton(path, dtype, attention)
    parts, tied = parts_of(model)
    began = time.perf_counter()
    split = ensure_split(Path(path), parts, name, cfg.offload_dir, tied)
    log.info(
        "layer split %s: %d parts, %.1f MB (%.1fs)",
        split.folder,
        len(parts),
        sum(split.sizes) / 1e6,
        time.perf_counter() - began,
    )
    return LayerStreamer(
        model,
        split,
        device,
        dtype,
        group_size=cfg.offload_group,
        activations=cfg.offload_activations,
        prefetch=cfg.offload_prefetch,
    )

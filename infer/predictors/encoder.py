"""Run one multiple-choice model over encoded questions, fast.

Inputs are sorted by length (longest first, so a memory problem shows at once and the
progress bar's estimate is pessimistic), batched, padded per batch to that batch's own
longest sequence, run under ``torch.inference_mode`` and put back in question order.
On a GPU the model runs in bf16 (fp16 where bf16 is missing); a half-precision batch
whose logits overflow is re-run in fp32 and the model stays in fp32 from then on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForMultipleChoice, AutoTokenizer

from infer.errors import InferError

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Interrupted(Exception):
    """The time budget ran out between two batches."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def tokenizer_fingerprint(path: Path) -> str:
    """Hash of the tokenizer files: folds of one run share it, so tokenize once.

    A Hub-named model has no local files to hash; its name tells tokenizers apart.
    """
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        file = path / name
        if file.is_file():
            found = True
            digest.update(name.encode())
            digest.update(file.read_bytes())
    if not found:
        digest.update(str(path).encode())
    return digest.hexdigest()


def load_tokenizer(path: Path) -> Any:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InferError(f"{path}: cannot load its tokenizer: {reason}") from None


def load_model(path: Path, device: torch.device, dtype: torch.dtype, attention: str) -> Any:
    """Load offline, in ``dtype``, with ``attention`` (SDPA) or eager where unsupported."""
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    try:
        try:
            model = AutoModelForMultipleChoice.from_pretrained(
                path, attn_implementation=attention, **kwargs
            )
        except (ValueError, ImportError) as exc:
            if "attn" not in str(exc).lower() and "attention" not in str(exc).lower():
                raise
            log.info("%s: %s attention unsupported, using eager", path.name, attention)
            model = AutoModelForMultipleChoice.from_pretrained(
                path, attn_implementation="eager", **kwargs
            )
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InferError(f"{path}: cannot load as a multiple-choice model: {reason}") from None
    return model.to(device).eval()


def length_order(lengths: list[int], rows: np.ndarray | None = None) -> np.ndarray:
    """Row indices longest first (stable, so equal lengths keep file order)."""
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    keys = np.asarray(lengths)[rows]
    return rows[np.argsort(-keys, kind="stable")]


def padded_tokens(
    lengths: list[int], n_options: int, batch_size: int, rows: np.ndarray | None = None
) -> int:
    """Tokens the sorted, per-batch-padded run will process: what its cost scales with.

    >>> padded_tokens([5, 9, 7], n_options=2, batch_size=2)
    46
    """
    order = length_order(lengths, rows)
    sizes = np.asarray(lengths)[order]
    return int(
        sum(
            len(sizes[i : i + batch_size]) * n_options * sizes[i]
            for i in range(0, len(sizes), batch_size)
        )
    )


def pad_batch(tokenizer: Any, features: list[dict[str, Any]], multiple_of: int | None) -> dict:
    """B questions x C options -> padded ``(B, C, L)`` tensors, L = this batch's longest.

    ``DataCollatorForMultipleChoice`` does the same but needs a label on every row,
    which test questions do not have.
    """
    n_options = len(features[0]["input_ids"])
    flat = [
        {key: values[i] for key, values in feature.items() if key != "labels"}
        for feature in features
        for i in range(n_options)
    ]
    batch = tokenizer.pad(flat, padding=True, pad_to_multiple_of=multiple_of, return_tensors="pt")
    return {key: value.view(len(features), n_options, -1) for key, value in batch.items()}


@dataclass
class BatchTiming:
    questions: int
    tokens: int  # padded tokens in the batch (B x C x L): what the cost scales with
    seconds: float


class Predictor:
    """One loaded model and its tokenizer; ``close()`` frees it before the next one."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        batch_size: int,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.model = model
        self.clock = clock
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        # Tensor cores want multiples of 8; on CPU it only adds padding.
        self.multiple_of = 8 if device.type == "cuda" else None

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        logits = self.model(**batch).logits.float()
        if not torch.isfinite(logits).all() and self.model.dtype != torch.float32:
            log.warning("non-finite logits in %s; switching this model to fp32", self.model.dtype)
            self.model = self.model.float()
            logits = self.model(**batch).logits.float()
        return logits

    def logits(
        self,
        features: list[dict[str, Any]],
        lengths: list[int],
        *,
        rows: np.ndarray | None = None,
        desc: str = "",
        on_batch: Callable[[BatchTiming], None] | None = None,
    ) -> np.ndarray:
        """``(n, n_options)`` float32 logits; rows not in ``rows`` are NaN.

        ``on_batch`` sees each batch's timing and may raise :class:`Interrupted`.
        """
        n_options = len(features[0]["input_ids"])
        out = np.full((len(features), n_options), np.nan, dtype=np.float32)
        order = length_order(lengths, rows)
        with (
            torch.inference_mode(),
            tqdm(total=len(order), desc=desc, unit="q", leave=False) as bar,
        ):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = pad_batch(self.tokenizer, [features[i] for i in chunk], self.multiple_of)
                began = self.clock()
                out[chunk] = self._forward(batch).cpu().numpy()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                bar.update(len(chunk))
                if on_batch is not None:
                    tokens = int(batch["input_ids"].numel())
                    on_batch(BatchTiming(len(chunk), tokens, self.clock() - began))
        return out

    def close(self) -> None:
        """Drop the model so the next one has the memory (one model at a time)."""
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

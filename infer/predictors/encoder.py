"""Run one multiple-choice model over encoded questions, fast.

Inputs are sorted by length (longest first, so a memory problem shows at once and the
progress bar's estimate is pessimistic), batched, padded per batch to that batch's own
longest sequence, run under ``torch.inference_mode`` and put back in question order.
On a GPU the model runs in bf16 (fp16 where bf16 is missing); a half-precision batch
whose logits overflow is re-run in fp32 and the model stays in fp32 from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForMultipleChoice, AutoTokenizer

from infer.errors import InferError
from infer.predictors.base import BatchedPredictor
from sciqa.weights import loading_weights

log = logging.getLogger(__name__)


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
        with loading_weights(path):
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


class EncoderPredictor(BatchedPredictor):
    """One loaded multiple-choice model and its tokenizer (:class:`Predictor`)."""

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

    def n_options(self, features: list[dict[str, Any]]) -> int:
        return len(features[0]["input_ids"])

    def score_batch(
        self, features: list[dict[str, Any]], lengths: list[int], rows: np.ndarray
    ) -> tuple[np.ndarray, int, float]:
        with torch.inference_mode():
            batch = pad_batch(self.tokenizer, [features[i] for i in rows], self.multiple_of)
            began = self.clock()
            scores = self._forward(batch).cpu().numpy()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return scores, int(batch["input_ids"].numel()), began

    def close(self) -> None:
        """Drop the model so the next one has the memory (one model at a time)."""
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

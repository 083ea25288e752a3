"""The one interface every predictor implements, and the small types they share.

A predictor holds one loaded member and turns encoded questions into option logits.
Four implement :class:`Predictor`: :class:`~infer.predictors.encoder.EncoderPredictor`
(a multiple-choice encoder), :class:`~infer.predictors.causal.CausalPredictor` (a
causal LM scoring options), :class:`~infer.predictors.offload.predictor.StreamedPredictor`
(a causal LM streamed one layer at a time) and
:class:`~infer.predictors.sharded.ShardedPredictor` (any of them, one copy per device).
:class:`~infer.predictors.cached.CachedPredictor` puts any of them behind the logits
cache. Which one a member gets is its family's choice (:mod:`infer.predictors.families`).

This module needs no torch.

>>> length_order([5, 9, 7]).tolist()
[1, 2, 0]
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sciqa.progress import progress


class Interrupted(Exception):
    """The time budget ran out between two batches."""


@dataclass
class BatchTiming:
    questions: int
    tokens: int  # padded tokens in the batch (B x C x L): what the cost scales with
    seconds: float


OnBatch = Callable[[BatchTiming], None]


@dataclass(frozen=True)
class Encoded:
    """One TTA pass's questions as a member's family encoded them."""

    features: Any  # what the member's predictor reads (its ``logits``' ``features``)
    lengths: list[int]  # tokens of each question's longest sequence: sorting and cost
    overlong: int = 0  # questions too long even without their context
    truncated: int = 0  # causal LMs: questions whose context was cut to fit


class Predictor(Protocol):
    """One loaded member that scores encoded questions (the shape of lm-eval's ``LM``).

    ``logits(features, lengths, *, rows=None, desc="", on_batch=None)`` returns an
    ``(n, n_options)`` float32 array, one row per question of ``features`` in their order.
    ``features`` is what the member's family encoded (:attr:`Encoded.features`: the
    tokenized options of a multiple-choice encoder, or a causal LM's
    ``sciqa.scoring.llm_prompts.LLMEncoded``); ``lengths[i]`` is question ``i``'s longest
    sequence in tokens, which decides the batches (longest first, ``batch_size``
    questions each, padded per batch). Only the questions in ``rows`` (all when None) are
    scored; the other rows are NaN. ``desc`` labels the progress bar. ``on_batch`` sees a
    :class:`BatchTiming` after every batch and may raise :class:`Interrupted` to stop the
    pass between two batches; the exception reaches the caller and the partial logits are
    dropped.

    ``warm_up(features, lengths)`` scores one question, untimed, so that lazy kernel
    set-up does not inflate the first timed batch. ``report()`` says what it did, for the
    manifest: per device, the questions it scored and its busy seconds. ``close()`` frees
    the model before the next member loads. ``batch_size`` is the questions per batch:
    what a pass is cut into, so what :class:`~infer.predictors.sharded.ShardedPredictor`
    deals out to its devices.

    Implementations subclass it for the defaults of ``warm_up`` and ``report``; a test's
    fake need not (a protocol is matched by shape).
    """

    batch_size: int

    def logits(
        self,
        features: Any,
        lengths: list[int],
        *,
        rows: np.ndarray | None = None,
        desc: str = "",
        on_batch: OnBatch | None = None,
    ) -> np.ndarray: ...

    def warm_up(self, features: Any, lengths: list[int]) -> None:
        self.logits(features, lengths, rows=np.array([0]), desc="warm-up")

    def report(self) -> list[dict[str, Any]]:
        return []  # one device's predictor keeps no count: its ShardedPredictor does

    def close(self) -> None: ...


class BatchedPredictor(Predictor):
    """One model on one device, batch by batch: the loop the encoder and causal
    predictors share.

    ``logits`` takes the questions longest first, :attr:`unit` at a time, has
    :meth:`score_batch` score them and puts the scores back in question order (NaN for
    the rows not asked for); ``on_batch`` sees each batch's padded tokens and the seconds
    since :meth:`score_batch` started its clock (``clock``).
    """

    clock: Callable[[], float]

    @property
    def unit(self) -> int:
        """Questions per call of :meth:`score_batch`, timed as one batch."""
        return self.batch_size

    @abstractmethod
    def n_options(self, features: Any) -> int: ...

    @abstractmethod
    def score_batch(
        self, features: Any, lengths: list[int], rows: np.ndarray
    ) -> tuple[np.ndarray, int, float]:
        """``(len(rows), n_options)`` scores of ``rows``, the padded tokens they took,
        and the clock's reading when the timed part began."""

    def logits(
        self,
        features: Any,
        lengths: list[int],
        *,
        rows: np.ndarray | None = None,
        desc: str = "",
        on_batch: OnBatch | None = None,
    ) -> np.ndarray:
        """``(n, n_options)`` float32 scores; rows not in ``rows`` are NaN."""
        out = np.full((len(lengths), self.n_options(features)), np.nan, dtype=np.float32)
        order = length_order(lengths, rows)
        with progress(len(order), desc, leave=False) as bar:
            for start in range(0, len(order), self.unit):
                chunk = order[start : start + self.unit]
                scores, tokens, began = self.score_batch(features, lengths, chunk)
                out[chunk] = scores
                bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(BatchTiming(len(chunk), tokens, self.clock() - began))
        return out


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

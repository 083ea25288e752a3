"""The logits cache: any predictor behind ``OUT_DIR/cache/`` (lm-eval's ``CachingLM``).

A member scores one array per TTA pass. Each is stored in the original option order
under a key of everything its logits depend on (:class:`PassKey`), so a rerun reads
the passes already scored and scores only the others, and a run over other devices
reuses them too. The predictor is opened on the first pass that is not stored: a
member whose passes all are is never loaded.

Unlike ``CachingLM``, whose requests carry their inputs, a pass is asked for by its
rotation with its encoding deferred: encoding needs the member's tokenizer, and a
cached member loads nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infer.outputs import cache_path, save_npy
from infer.plan.tta import unpermute
from infer.predictors.base import Encoded, OnBatch, Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassKey:
    """Where one member's passes are stored: ``cache/<name>-<hash of the parts>.npy``."""

    out_dir: Path
    name: str
    model: list[str]  # the questions' hash, the checkpoint's fingerprint
    inputs: list[str]  # how its inputs were encoded and run (family, dtype, ...)
    n_questions: int  # the rows of every pass

    def file(self, perm: np.ndarray, rows: np.ndarray | None) -> Path:
        """The file of the pass showing the options in ``perm``'s order, on ``rows``."""
        rows_key = "all" if rows is None else ",".join(map(str, rows.tolist()))
        parts = [*self.model, str(perm.tolist()), rows_key, *self.inputs]
        return cache_path(self.out_dir, self.name, parts)


def read_pass(file: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The pass stored in ``file``; None when there is none. A file that is not such a
    pass (cut short or damaged by a copy: writes are atomic, so never by a kill) is set
    aside as ``*.torn`` with a warning, and the pass is scored again."""
    if not file.is_file():
        return None
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        problem = f"cannot be read ({str(exc).strip() or type(exc).__name__})"
    else:
        if array.shape == shape and np.issubdtype(array.dtype, np.floating):
            return array
        problem = f"holds a {array.dtype} array of shape {array.shape}, not {shape}"
    torn = file.with_suffix(".torn")
    os.replace(file, torn)
    log.warning("%s: %s; set aside as %s, scoring this pass again", file, problem, torn.name)
    return None


class CachedPredictor:
    """A member's passes, each read from the cache or scored by its predictor and stored.

    ``load`` opens the member's :class:`Predictor`; it is called on the first pass not in
    the cache, and :attr:`predictor` is None until then.
    """

    def __init__(self, load: Callable[[], Predictor], key: PassKey):
        self._load, self.key = load, key
        self.predictor: Predictor | None = None

    def logits(
        self,
        perm: np.ndarray,
        encoded: Callable[[], Encoded],
        *,
        rows: np.ndarray | None = None,
        desc: str = "",
        on_batch: OnBatch | None = None,
    ) -> np.ndarray:
        """The logits of the pass showing the options in ``perm``'s order, mapped back to
        the original order; ``encoded()`` gives that pass's inputs when it is scored.
        ``rows``, ``desc`` and ``on_batch`` as for :meth:`Predictor.logits`."""
        file = self.key.file(perm, rows)
        stored = read_pass(file, (self.key.n_questions, len(perm)))
        if stored is not None:
            return stored
        if self.predictor is None:
            self.predictor = self._load()
        enc = encoded()
        raw = self.predictor.logits(
            enc.features, enc.lengths, rows=rows, desc=desc, on_batch=on_batch
        )
        logits = unpermute(raw, perm)
        save_npy(logits, file)
        return logits

    def close(self) -> None:
        if self.predictor is not None:
            self.predictor.close()

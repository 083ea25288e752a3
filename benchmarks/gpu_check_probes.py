"""What the steps of ``benchmarks/gpu_check.py`` measure with: table rows, peak memory,
the fp16 loss scaler's skipped steps, a logger's warnings, bf16-vs-fp32 agreement.

>>> row(2.0, "x", "note")["status"]
'ok'
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


class CheckFailed(Exception):
    """A step ran but what it checks did not hold."""


def row(figure: float, unit: str, detail: str = "", **extra: Any) -> dict[str, Any]:
    return {"figure": float(figure), "unit": unit, "detail": detail, "status": "ok", **extra}


def guarded(check: Callable[[], dict[str, dict]], names: list[str]) -> dict[str, dict]:
    """Rows of ``check``, or its error on each of ``names``, so one failed check of a step
    does not hide the others."""
    try:
        return check()
    except Exception as exc:  # reported in the table, with the traceback in the log
        logging.getLogger("gpu_check").exception("check failed")
        reason = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
        return {name: {"status": reason} for name in names}


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """Peak GPU memory allocated since :func:`reset_peak`; on CPU the process's peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@contextmanager
def scaler_watch() -> Iterator[dict[str, int]]:
    """fp16's overflow handling in train, exercised and counted.

    The Trainer's fp16 is dynamic loss scaling: a step whose gradients hold inf/NaN is
    skipped and the scale halved (``GradScaler.update`` lowers the scale exactly then).
    One overflow is injected (an inf gradient before the first unscale) so that path runs
    even when the model's own gradients never overflow; skips beyond it are natural.
    """
    from torch.amp import GradScaler

    stats = {"steps": 0, "skipped": 0, "injected": 0}
    update, unscale = GradScaler.update, GradScaler.unscale_

    def counted_update(self: Any, new_scale: Any = None) -> None:
        before = self.get_scale() if self.is_enabled() else None
        update(self, new_scale)
        if before is not None:
            stats["steps"] += 1
            stats["skipped"] += int(self.get_scale() < before)

    def poisoned_unscale(self: Any, optimizer: Any) -> None:
        if self.is_enabled() and not stats["injected"]:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
            first = next((g for g in grads if g is not None), None)
            if first is not None:
                first.fill_(float("inf"))
                stats["injected"] = 1
        unscale(self, optimizer)

    GradScaler.update, GradScaler.unscale_ = counted_update, poisoned_unscale
    try:
        yield stats
    finally:
        GradScaler.update, GradScaler.unscale_ = update, unscale


@contextmanager
def warnings_of(logger: str, text: str) -> Iterator[list[str]]:
    """Messages containing ``text`` that ``logger`` emits inside the block."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.append(record.getMessage())

    handler = Catch(logging.WARNING)
    logging.getLogger(logger).addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger(logger).removeHandler(handler)


def environment() -> dict[str, str]:
    """Versions, and the GPU where this step has imported torch already (the torchrun step
    has not: importing it only for this would cost seconds)."""
    from importlib.metadata import version

    env = {"torch": version("torch"), "transformers": version("transformers")}
    if "torch" in sys.modules:
        import torch

        gpu = torch.cuda.is_available()
        env["gpu"] = torch.cuda.get_device_name(0) if gpu else "none (CPU)"
    return env


def agreement(full: np.ndarray, half: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement, and what it must be read against: with random weights the options'
    logits can differ by less than bf16's rounding, and then agreement is near chance."""
    same = float(np.mean(full.argmax(1) == half.argmax(1))) * 100
    ordered = np.sort(full, axis=1)
    margin = float(np.median(ordered[:, -1] - ordered[:, -2]))
    diff = float(np.max(np.abs(full - half)))
    r = float(np.corrcoef(full.ravel(), half.ravel())[0, 1]) if full.std() > 0 else float("nan")
    detail = (
        f"{len(full)} q; max |logit diff| {diff:.1e} vs median fp32 top-1 margin {margin:.1e}"
        f" (random weights: a margin below the diff makes top-1 a coin toss); r = {r:.4f}"
    )
    return row(same, "% same top-1", detail)

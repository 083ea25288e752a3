"""glibc's heap under CPU training: what a step freed leaves the process now and then.

glibc serves a block above its mmap threshold from a mapping of its own, unmapped on
free, and a smaller one from the heap, where freed memory stays with the process. The
threshold rises to the size of each mapped block freed (up to 32 MiB), so after the first
step most activations come from the heap, and batches of varied lengths leave it full of
holes that later batches cannot reuse: it grows. SmolLM2-135M trained with context on
1,567 questions held 12.3 GB after its first steps and 24 GB at step ~145 of 196, where
the OOM killer stopped it (docs/exam.md). ``malloc_trim`` hands the holes' pages back;
every 10 steps the same run finished, peaking at 22.4 GB where a long batch followed
short ones. Handing pages back costs page faults when they are used again: trimming every
step ran 21 steps where no trimming ran 28 (peak 13.3 GB so far), and keeping
activations mapped (a fixed 1 MiB threshold) 15.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)


def heap_trimmer() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)``, or ``None`` off glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: bool(trim(0))


class HeapTrim(TrainerCallback):
    """Every ``every`` optimiser steps, and after each evaluation, returns the heap's free
    pages to the system (``train.heap_trim_steps``)."""

    def __init__(self, every: int, trim: Callable[[], bool]) -> None:
        self.every, self.trim = every, trim

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self.trim()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trim()


def heap_trim_callbacks(every: int, *, on_cpu: bool) -> list[HeapTrim]:
    """``[HeapTrim]`` when training on a CPU with glibc and ``every`` > 0, else ``[]``:
    a GPU's activations live in the caching allocator, not on this heap."""
    trim = heap_trimmer() if on_cpu and every > 0 else None
    if trim is None:
        return []
    log.debug("glibc heap trimmed every %d step(s)", every)
    return [HeapTrim(every, trim)]

"""Fixtures the infer tests share: questions, the tiny causal LM, the infer CLI, and fakes
that run_infer takes through its ``clock`` and ``open_member`` seams.

The fakes wrap the member a run really loads (``infer.predictors.families.open_member``):
:class:`Spy` sees each batch's timing in the thread that ran it, :class:`Slow` makes a
batch take 0.01 s per padded token on :class:`FakeClock`, the only time that passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from infer.models import ModelSpec
from infer.predictors.base import BatchTiming, Predictor
from sciqa.io import write_questions
from tests.builders import WORDS, build_tiny_llama, make_questions


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A tiny random Llama over :data:`~tests.builders.WORDS`, built once."""
    return build_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny", [" ".join(WORDS)] * 3)


@pytest.fixture
def qfile(tmp_path) -> Path:
    """Ten labelled questions (4 batches of 3)."""
    return write_questions(make_questions(), tmp_path / "questions.csv")


@pytest.fixture
def cli() -> Callable[..., Any]:
    """``sciqa infer ARGS...`` through the CLI; the result has ``exit_code``, ``output``."""
    from sciqa.cli import app

    return lambda *args: CliRunner().invoke(app, ["infer", *args])


@pytest.fixture
def cli_small(cli) -> Callable[..., Any]:
    """:func:`cli` with batches of 4 questions (encoders)."""
    return lambda *args: cli(*args, "--set", "infer.batch_size=4")


# --- fakes for run_infer(open_member=...) -------------------------------------------


class FakeClock:
    """Time moves only when a batch runs. Each worker thread has its own time line, from
    the main thread's time when the thread started; a parallel section costs the main
    thread its slowest worker's time, counted once the main thread has joined them all.

    The time lines are keyed by thread and opened and closed by the main thread's
    ``Thread.start``/``join`` (the ``clock`` fixture patches both): a worker that finished
    before its sibling started, as happens under load, must not push that sibling's time
    line after its own, and a reused thread id must not continue an old line."""

    def __init__(self):
        self.now = 0.0
        self.lines: dict[threading.Thread, float] = {}  # open time lines, by worker
        self.closed: set[threading.Thread] = set()  # joined by the main thread
        self.lock = threading.RLock()

    @staticmethod
    def _main() -> bool:
        return threading.current_thread() is threading.main_thread()

    def _fold(self) -> None:
        """The main thread moves past every joined worker's time line."""
        ends = [self.lines.pop(t) for t in self.closed if t in self.lines]
        self.now = max([self.now, *ends])
        self.closed.clear()

    def _line(self) -> threading.Thread:
        me = threading.current_thread()
        self.lines.setdefault(me, self.now)  # a thread started without the patch
        return me

    def __call__(self) -> float:
        with self.lock:
            if self._main():
                self._fold()
                return self.now
            return self.lines[self._line()]

    def spend(self, seconds: float) -> None:
        with self.lock:
            if self._main():
                self._fold()
                self.now += seconds
            else:
                self.lines[self._line()] += seconds

    def started(self, thread: threading.Thread) -> None:
        with self.lock:
            if self._main():
                self._fold()
                self.lines[thread] = self.now

    def joined(self, thread: threading.Thread) -> None:
        with self.lock:
            if self._main() and not thread.is_alive():
                self.closed.add(thread)


class Spy:
    """A loaded member whose batches first go through ``hook(spec, timing)``, in the
    thread that ran them; the run's own ``on_batch`` sees the timing the hook returns."""

    def __init__(self, member: Predictor, spec: ModelSpec, hook: Callable[..., BatchTiming]):
        self.member, self.spec, self.hook = member, spec, hook
        self.batch_size = member.batch_size

    def logits(self, features, lengths, *, rows=None, desc="", on_batch=None) -> np.ndarray:
        def hooked(timing: BatchTiming) -> None:
            timing = self.hook(self.spec, timing)
            if on_batch is not None:
                on_batch(timing)

        return self.member.logits(features, lengths, rows=rows, desc=desc, on_batch=hooked)

    def warm_up(self, features, lengths) -> None:
        self.member.warm_up(features, lengths)

    def report(self) -> list[dict[str, Any]]:
        return self.member.report()

    def close(self) -> None:
        self.member.close()


class Slow(Spy):
    """An encoder member whose batches take ``per_token(spec)`` seconds per padded token
    on ``clock``, the warm-up too (one question, padded to its own length)."""

    def __init__(
        self,
        member: Predictor,
        spec: ModelSpec,
        clock: FakeClock,
        per_token: Callable[[ModelSpec], float],
    ):
        super().__init__(member, spec, self._spend)
        self.clock, self.per_token = clock, per_token(spec)

    def _spend(self, spec: ModelSpec, timing: BatchTiming) -> BatchTiming:
        seconds = timing.tokens * self.per_token
        self.clock.spend(seconds)
        return BatchTiming(timing.questions, timing.tokens, seconds)

    def warm_up(self, features, lengths) -> None:
        super().warm_up(features, lengths)
        n_options = len(features[0]["input_ids"])
        self.clock.spend(n_options * lengths[0] * self.per_token)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    start, join = threading.Thread.start, threading.Thread.join

    def started(thread: threading.Thread) -> None:
        clock.started(thread)
        start(thread)

    def joined(thread: threading.Thread, timeout: float | None = None) -> None:
        join(thread, timeout)
        clock.joined(thread)

    monkeypatch.setattr(threading.Thread, "start", started)
    monkeypatch.setattr(threading.Thread, "join", joined)
    return clock


@pytest.fixture
def slow(clock) -> Callable[..., Callable]:
    """``slow(per_token=...)``: an ``open_member`` whose members are :class:`Slow` on
    ``clock``; ``per_token`` is seconds, or seconds per member spec."""

    def make(per_token: float | Callable[[ModelSpec], float] = 0.01) -> Callable:
        from infer.predictors.families import open_member

        rate = per_token if callable(per_token) else (lambda spec: per_token)

        def open_slow(spec, tokenizer, loading) -> Slow:
            return Slow(open_member(spec, tokenizer, loading), spec, clock, rate)

        return open_slow

    return make


@pytest.fixture
def spy() -> Callable[..., Callable]:
    """``spy(hook)``: an ``open_member`` whose members are :class:`Spy` with ``hook``."""

    def make(hook: Callable[[ModelSpec, BatchTiming], BatchTiming]) -> Callable:
        from infer.predictors.families import open_member

        def open_spied(spec, tokenizer, loading) -> Spy:
            return Spy(open_member(spec, tokenizer, loading), spec, hook)

        return open_spied

    return make


def never_load(spec, tokenizer, loading):
    raise AssertionError(f"{spec.name}: a cached model was loaded again")


@pytest.fixture
def no_loading() -> Callable:
    """An ``open_member`` that fails: the run must take every pass from the cache."""
    return never_load

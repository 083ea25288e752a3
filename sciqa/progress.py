"""Progress bars that also read well in a log file.

On a terminal this is tqdm as usual. Written to a file or a pipe (``make exam >
exam.log``, a batch job), tqdm would redraw one line with carriage returns, which a log
shows as one ever-growing line. There the bar stays quiet for its first ``LOG_EVERY``
seconds (a short step, or one that fails at once, adds nothing to the log) and then
prints a plain line at most that often, with the count, the rate and the time left, and
one when it ends. The rate is over the last ``RATE_WINDOW`` lines, not since the start:
a resumed run answers its cached items in a burst, and a rate that averaged that burst in
would promise a time left that keeps growing.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

LOG_EVERY = 60.0  # seconds between lines when the stream is not a terminal
RATE_WINDOW = 5  # lines the rate is measured over (~5 minutes at LOG_EVERY)


class LogProgress:
    """tqdm's ``update``/``close``/context protocol, as a line every ``every`` seconds."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        stream: TextIO,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.every, self.clock = every, clock
        self.n = 0
        self.began = self.last = clock()
        self.lines = 0
        # (time, count) at the start and at each line; the rate spans the oldest kept.
        self.marks: deque[tuple[float, int]] = deque([(self.began, 0)], maxlen=RATE_WINDOW)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every:
            self._line()

    def close(self) -> None:
        if self.lines:  # a long step: say that it ended
            self._line()
            self.lines = 0

    def _line(self) -> None:
        now = self.clock()
        elapsed = now - self.began
        since, counted = self.marks[0]
        rate = (self.n - counted) / (now - since) if now > since else 0.0
        self.marks.append((now, self.n))
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        share = 100 * self.n / self.total if self.total else 100.0
        self.stream.write(
            f"{self.desc}: {self.n}/{self.total} {self.unit} ({share:.0f}%), "
            f"{rate * 60:.1f} {self.unit}/min, {_clock(elapsed)} elapsed, ~{_clock(left)} left\n"
        )
        self.stream.flush()
        self.last = now
        self.lines += 1

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quiet_library_bars(
    stream: TextIO | None = None, environ: MutableMapping[str, str] | None = None
) -> None:
    """In a log, turn off the Hugging Face libraries' own tqdm bars (loading weights,
    ``datasets.map``, writing shards): each would add a line of carriage returns, and the
    long steps have this module's bars. On a terminal, and where the user set the
    variables, nothing changes. Call before transformers or datasets is imported."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    if not stream.isatty():
        for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            environ.setdefault(name, "1")


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: no rate yet
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress(
    total: int, desc: str, unit: str = "q", stream: TextIO | None = None, leave: bool = True
) -> Any:
    """A bar over ``total`` items on stderr (or ``stream``): tqdm on a terminal (``leave``:
    keep it on screen when done), plain lines (:class:`LogProgress`) in a log."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave)
    return LogProgress(total, desc, unit, stream)

"""Data parallel over devices: one question shard and one model copy per device.

``infer.devices = ["cuda:0", "cuda:1"]`` splits every pass's questions into one shard
per device and scores the shards concurrently, each on its own copy of the member;
the logits go back into their question rows, so the result is the one-device run's.

Shards are whole batches of the one-device run: questions sorted longest first, cut
into batches of ``batch_size``, each batch (longest first) given to the device with the
fewest padded tokens so far. A device's shard, sorted again, is then cut into exactly
the same batches, so every question is padded with the same neighbours as on one
device, and the busiest device's padded tokens are what a pass's wall time scales with
(the budget plans on them).

Workers are threads, not processes (benchmarks/infer.py measures both): torch releases
the GIL inside every kernel, the encoded questions are shared instead of pickled,
nothing is re-imported or re-tokenized, and the budget's per-batch callback runs in
this process. CPU workers split the intra-op threads between them
(``torch.set_num_threads`` is per thread), so ``["cpu", "cpu"]`` on 2 cores runs two
single-threaded copies instead of oversubscribing the cores.

>>> [r.tolist() for r in shard_rows([5, 9, 7, 1, 3], batch_size=2, n_shards=2)]
[[1, 2], [0, 3, 4]]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from infer.predictors.base import (
    BatchTiming,
    Interrupted,
    OnBatch,
    Predictor,
    length_order,
    padded_tokens,
)

log = logging.getLogger(__name__)


class _Stopped(Interrupted):
    """A worker stopped because another one stopped first."""


def shard_rows(
    lengths: Sequence[int],
    rows: np.ndarray | None = None,
    *,
    batch_size: int,
    n_shards: int,
) -> list[np.ndarray]:
    """Row indices per shard: whole batches of the one-device order, balanced by
    padded tokens (sorted ascending; empty shards when there are fewer batches)."""
    order = length_order(list(lengths), rows)
    sizes = np.asarray(lengths)
    load = [0] * n_shards
    shards: list[list[np.ndarray]] = [[] for _ in range(n_shards)]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        target = load.index(min(load))  # ties: the lowest device index
        shards[target].append(batch)
        load[target] += len(batch) * int(sizes[batch[0]])  # longest first: batch[0] is widest
    return [np.sort(np.concatenate(s)) if s else np.array([], dtype=int) for s in shards]


def busiest_tokens(
    lengths: Sequence[int],
    n_options: int,
    batch_size: int,
    rows: np.ndarray | None,
    n_shards: int,
) -> int:
    """Padded tokens of the busiest shard: a parallel pass's wall time scales with it.

    >>> busiest_tokens([5, 9, 7, 1], 2, batch_size=1, rows=None, n_shards=2)
    24
    """
    shards = shard_rows(lengths, rows, batch_size=batch_size, n_shards=n_shards)
    return max(padded_tokens(list(lengths), n_options, batch_size, s) for s in shards if len(s))


@dataclass
class Worker:
    """One device's copy of the member and what it scored."""

    device: torch.device
    predictor: Predictor
    threads: int | None = None  # intra-op threads for a CPU worker; None = leave as is
    questions: int = 0  # question-passes scored
    seconds: float = 0.0  # busy time, all passes

    def report(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "questions": self.questions,
            "seconds": round(self.seconds, 2),
        }


def cpu_threads(devices: list[torch.device]) -> int | None:
    """Intra-op threads per CPU worker so N workers share the cores, not fight over them."""
    n_cpu = sum(d.type == "cpu" for d in devices)
    if n_cpu < 2:
        return None
    return max(1, torch.get_num_threads() // n_cpu)


class ShardedPredictor(Predictor):
    """N single-device predictors behind the one-predictor interface (:class:`Predictor`).

    ``logits`` splits the rows with :func:`shard_rows`, runs every shard in its own
    thread and writes each shard's logits into its rows. ``on_batch`` is called under a
    lock; when it (or a worker) raises, the other workers stop at their next batch and
    the first error is raised (a real error before an :class:`Interrupted`).
    """

    def __init__(self, workers: list[Worker], clock: Callable[[], float] = time.perf_counter):
        self.workers, self.clock = workers, clock

    @classmethod
    def build(
        cls,
        make: Callable[[torch.device], Predictor],
        devices: list[torch.device],
        clock: Callable[[], float] = time.perf_counter,
    ) -> ShardedPredictor:
        """One predictor per device, loaded one after the other: ``from_pretrained``
        swaps process-wide state (the default dtype, the init functions) while it loads."""
        threads = cpu_threads(devices)
        workers: list[Worker] = []
        try:
            for device in devices:
                predictor = make(device)
                workers.append(Worker(device, predictor, threads if device.type == "cpu" else None))
        except BaseException:
            for worker in workers:
                worker.predictor.close()
            raise
        return cls(workers, clock)

    @property
    def devices(self) -> list[torch.device]:
        return [w.device for w in self.workers]

    @property
    def batch_size(self) -> int:
        return self.workers[0].predictor.batch_size

    def warm_up(self, features: Any, lengths: list[int]) -> None:
        """One untimed question on every device (lazy kernel set-up, per device)."""
        self._parallel(
            lambda worker, _: worker.predictor.warm_up(features, lengths),
            [(worker, None) for worker in self.workers],
        )

    def logits(
        self,
        features: Any,
        lengths: list[int],
        *,
        rows: np.ndarray | None = None,
        desc: str = "",
        on_batch: OnBatch | None = None,
    ) -> np.ndarray:
        """``(n, n_options)`` float32 logits; rows not in ``rows`` are NaN."""
        if len(self.workers) == 1:  # no thread, no lock: exactly the one-device path
            return self._score(self.workers[0], features, lengths, rows, desc, on_batch)
        shards = shard_rows(lengths, rows, batch_size=self.batch_size, n_shards=len(self.workers))
        busy = [(w, s) for w, s in zip(self.workers, shards, strict=True) if len(s)]
        if not busy:
            return self._score(self.workers[0], features, lengths, rows, desc, on_batch)
        lock, stop = threading.Lock(), threading.Event()

        def guarded(timing: BatchTiming) -> None:
            with lock:
                if stop.is_set():
                    raise _Stopped("another device stopped")
                if on_batch is not None:
                    try:
                        on_batch(timing)
                    except BaseException:
                        stop.set()  # before the lock is released: no other batch slips in
                        raise

        def run(worker: Worker, shard: np.ndarray) -> np.ndarray:
            label = f"{desc} [{self.workers.index(worker)}: {worker.device}]"
            return self._score(worker, features, lengths, shard, label, guarded)

        parts = self._parallel(run, busy, stop)
        out = next(iter(parts))
        for (_, shard), part in zip(busy[1:], parts[1:], strict=True):
            out[shard] = part[shard]
        return out

    def _score(
        self,
        worker: Worker,
        features: Any,
        lengths: list[int],
        rows: np.ndarray | None,
        desc: str,
        on_batch: OnBatch | None,
    ) -> np.ndarray:
        began = self.clock()
        try:
            out = worker.predictor.logits(
                features, lengths, rows=rows, desc=desc, on_batch=on_batch
            )
        finally:
            worker.seconds += self.clock() - began
        worker.questions += len(lengths) if rows is None else len(rows)
        return out

    def _parallel(
        self,
        fn: Callable[[Worker, Any], Any],
        jobs: list[tuple[Worker, Any]],
        stop: threading.Event | None = None,
    ) -> list:
        """``fn(worker, arg)`` for every job, one thread each; results in order, first
        error raised."""
        stop = stop or threading.Event()
        if len(jobs) == 1:
            return [fn(*jobs[0])]
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException] = []  # in the order they happened

        def target(i: int) -> None:
            worker, arg = jobs[i]
            try:
                if worker.threads is not None:
                    torch.set_num_threads(worker.threads)  # this thread only
                if worker.device.type == "cuda":
                    with torch.cuda.device(worker.device):
                        results[i] = fn(worker, arg)
                else:
                    results[i] = fn(worker, arg)
            except BaseException as exc:  # handed to the caller below
                errors.append(exc)
                stop.set()

        threads = [
            threading.Thread(target=target, args=(i,), name=f"sciqa-infer-{i}", daemon=True)
            for i in range(len(jobs))
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        finally:
            stop.set()  # Ctrl-C while waiting: the workers stop at their next batch
            for thread in threads:
                thread.join()
        # The cause, not the echo: a real error, else the stop's reason, else the echo.
        for kind in (lambda e: not isinstance(e, Interrupted), lambda e: type(e) is Interrupted):
            for error in errors:
                if kind(error):
                    raise error
        if errors:
            raise errors[0]
        return results

    def report(self) -> list[dict[str, Any]]:
        return [w.report() for w in self.workers]

    def close(self) -> None:
        for worker in self.workers:
            worker.predictor.close()

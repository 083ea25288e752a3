"""`sciqa gen` under faults, run as a user runs it (a subprocess against the scripted fake
server, data_gen.fake_server): SIGKILL mid-requests keeps the previous OUT whole and the
rerun writes what an uninterrupted run writes without paying for a stored reply again;
two gens at once: the second is refused."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_gen.cache import request_key
from data_gen.fake_server import FakeLLM, write_fake_passages
from sciqa.cli import app

OUTPUTS = ("q.csv", "q.rejected.jsonl", "README.md", "config.yaml", "manifest.json")
# gen against the fake server, fast (as tests/data_gen/conftest.py's FAST); 2 in flight
FAST = (
    "llm.model=fake-model",
    "llm.sdk_retries=0",
    "llm.backoff_base=0.01",
    "llm.backoff_retries=8",
    "llm.timeout=5",
    "llm.concurrency=2",
    "gen.dedup=false",
    "gen.answerability_filter=false",
    "gen.too_easy_filter=false",
)
ENV = {**os.environ, "OPENAI_API_KEY": "test-key"}
# ~10% of requests answered 429 and ~20% of bodies a malformed reply (then re-asked)
CHAOS = {"rate_429": 0.1, "rate_malformed": 0.2, "seed": 3}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def _args(passages: Path, out: Path, fake: FakeLLM, n: int) -> list[str]:
    sets = [a for s in (f"llm.base_url={fake.base_url}", *FAST) for a in ("--set", s)]
    return ["gen", str(passages), "--out", str(out), "--n", str(n), *sets]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sciqa", *args]


def _wait(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def _cached(cache: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(cache)) as db:
        return {key for (key,) in db.execute("SELECT key FROM replies")}


def _names(folder: Path) -> list[str]:
    """The files in ``folder``, SQLite's own -wal/-shm beside the cache left out."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("q.cache.sqlite-"))


@pytest.mark.slow  # ~10 s: four gen runs, two of them fresh processes
def test_sigkill_mid_requests_keeps_the_old_out_and_the_rerun_pays_nothing_twice(tmp_path):
    passages = write_fake_passages(tmp_path / "p.parquet", 12)
    out = tmp_path / "gen" / "q.csv"
    with FakeLLM(**CHAOS) as reference_server:  # the uninterrupted run, for comparison
        done = CliRunner().invoke(
            app, _args(passages, tmp_path / "ref" / "q.csv", reference_server, 12)
        )
        assert done.exit_code == 0, done.output
    reference = _files(tmp_path / "ref")

    with FakeLLM(latency=0.15, **CHAOS) as fake:
        first = CliRunner().invoke(app, _args(passages, out, fake, 4))  # the previous good run
        assert first.exit_code == 0, first.output
        before = _files(out.parent)
        first_requests = len(fake.requests)

        killed = subprocess.Popen(
            _command(*_args(passages, out, fake, 12)), env=ENV, stderr=subprocess.DEVNULL
        )
        _wait(lambda: len(fake.answered) >= 8)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert _files(out.parent) == before  # the previous run's five files, untouched
        assert _names(out.parent) == sorted(
            [*OUTPUTS, "q.cache.sqlite", ".q.csv.lock", ".manifest.json.lock"]
        )  # nothing half-written: only the cache (and the dead run's locks) changed
        cached = _cached(out.with_name("q.cache.sqlite"))
        at_kill = len(fake.requests)

        rerun = subprocess.run(
            _command(*_args(passages, out, fake, 12)),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rerun.returncode == 0, rerun.stderr
        resent = {request_key(body) for body in fake.requests[at_kill:]}
        twice = {key for key, count in fake.answered.items() if count > 1}
    assert "taking over the lock of a run that did not finish" in rerun.stderr
    assert not resent & cached  # no stored reply was asked for again
    # Answered twice: only what was in flight at the kill (answered, never stored), plus
    # what the first, 4-passage run had stored (it shares the cache: cache hits, not sends)
    assert len(twice) <= 2
    assert _files(out.parent)["q.csv"] == reference["q.csv"]
    assert _files(out.parent)["q.rejected.jsonl"] == reference["q.rejected.jsonl"]
    assert _names(out.parent) == sorted([*OUTPUTS, "q.cache.sqlite"])
    assert first_requests > 4  # the chaos was on: 429s and re-asks were sent


def test_two_gens_at_once_the_second_is_refused_naming_the_first(tmp_path):
    passages = write_fake_passages(tmp_path / "p.parquet", 6)
    out = tmp_path / "gen" / "q.csv"
    with FakeLLM(latency=0.5) as fake:
        running = subprocess.Popen(
            _command(*_args(passages, out, fake, 6)),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait(lambda: len(fake.requests) > 0)
        same = CliRunner().invoke(app, _args(passages, out, fake, 6))
        sibling = CliRunner().invoke(app, _args(passages, out.with_name("b.csv"), fake, 6))
        stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 0, stderr
    for result, path in ((same, out), (sibling, out.parent / "manifest.json")):
        assert result.exit_code == 1
        line = result.output.strip()
        assert line.startswith(
            f"error: {path}: another sciqa run is writing it (pid {running.pid} "
        )
        assert f"--out {out}" in line and "\n" not in line
    assert "kept: 6 questions" in stdout
    assert not out.with_name("b.csv").exists()
    assert len(fake.requests) == 6  # the refused runs asked nothing

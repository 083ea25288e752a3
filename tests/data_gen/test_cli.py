"""`sciqa gen` as a user runs it: one-line errors, and resume after the process is killed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from typer.testing import CliRunner

from data_gen.cache import request_key
from data_gen.fake_server import FakeLLM, write_fake_passages
from sciqa.cli import app
from sciqa.io import read_questions

NOWHERE = "http://127.0.0.1:9/v1"  # nothing listens there: an error comes before a request


def test_missing_key_is_a_one_line_error(passages_file, tmp_path, monkeypatch, fake_args):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["gen", str(passages_file), "--out", str(tmp_path / "q.csv"), "--n", "2"]
    result = CliRunner().invoke(app, [*args, *fake_args(NOWHERE)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: environment variable OPENAI_API_KEY (llm.api_key_env) is not set: export the "
        "API key there (any non-empty value for local servers that check none)"
    ]
    assert not (tmp_path / "q.csv").exists()


def test_passages_without_text_is_a_one_line_error(tmp_path, fake_args):
    bad = tmp_path / "p.csv"
    bad.write_text("passage_id,title\n1,Atom\n")
    args = ["gen", str(bad), "--out", str(tmp_path / "q.csv")]
    result = CliRunner().invoke(app, [*args, *fake_args(NOWHERE)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {bad}: missing column(s) 'text'")
    assert len(result.output.strip().splitlines()) == 1


def test_killed_run_resumes_without_repeating_answered_requests(tmp_path, fake_args):
    passages = write_fake_passages(tmp_path / "p.parquet", 8)
    out = tmp_path / "gen" / "q.parquet"
    env = {**os.environ, "OPENAI_API_KEY": "k"}
    with FakeLLM(latency=0.3) as fake:
        command = [sys.executable, "-m", "sciqa", "gen", str(passages), "--out", str(out)]
        command += ["--n", "8", *fake_args(fake.base_url, "llm.concurrency=2")]
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while sum(fake.answered.values()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not out.exists()
        with sqlite3.connect(out.with_name("q.cache.sqlite")) as db:
            cached = {key for (key,) in db.execute("SELECT key FROM replies")}
        assert 2 <= len(cached) < 8  # a reply in flight at the kill is not stored
        first_run = len(fake.requests)

        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
        resent = fake.requests[first_run:]
    assert not {request_key(b) for b in fake.requests[first_run:]} & cached
    assert len(resent) == 8 - len(cached)
    frame = read_questions(out, require_answer=True)
    assert sorted(frame["id"]) == [f"gen-p{i}-0" for i in range(8)]
    assert f"{len(cached)} from cache" in finished.stdout

"""What `sciqa gen` leaves on disk when things go wrong: one writer per OUT and per folder,
OUT + rejects + card + manifest always from one run, and a damaged reply cache named in one
line."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import data_gen.commands
from data_gen.cache import ReplyCache
from data_gen.commands import rejected_path
from data_gen.fake_server import FakeLLM
from sciqa.cli import app
from sciqa.errors import DiskFullError, SciqaError
from sciqa.outdir import OutLock

OUTPUTS = ("q.csv", "q.rejected.jsonl", "README.md", "config.yaml", "manifest.json")


def _gen(passages: Path, out: Path, fake: FakeLLM, fake_args, *extra: str):
    args = ["gen", str(passages), "--out", str(out), "--n", "3", *extra]
    return CliRunner().invoke(app, [*args, *fake_args(fake.base_url)])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --- --out ------------------------------------------------------------------------------


def test_out_that_is_a_folder_is_one_line_before_any_request(passages_file, tmp_path, fake_args):
    folder = tmp_path / "q.csv"  # a folder with a table's name: the suffix check passes it
    folder.mkdir()
    with FakeLLM() as fake:
        line = _one_error_line(_gen(passages_file, folder, fake, fake_args))
    assert line == f"error: {folder}: --out is an existing folder; give a file path"
    assert fake.requests == []


def test_out_inside_a_file_is_one_line(passages_file, tmp_path, fake_args):
    (tmp_path / "notes").write_text("x")
    with FakeLLM() as fake:
        line = _one_error_line(_gen(passages_file, tmp_path / "notes" / "q.csv", fake, fake_args))
    assert f"{tmp_path / 'notes'}: is a file" in line
    assert fake.requests == []


# --- one writer -------------------------------------------------------------------------


def test_second_gen_into_the_same_out_is_refused_naming_the_holder(
    passages_file, tmp_path, fake_args
):
    out = tmp_path / "gen" / "q.csv"
    with FakeLLM() as fake, OutLock(out, command="sciqa gen p.parquet --out gen/q.csv"):
        line = _one_error_line(_gen(passages_file, out, fake, fake_args))
    assert line.startswith(f"error: {out}: another sciqa run is writing it (pid {os.getpid()}")
    assert "`sciqa gen p.parquet --out gen/q.csv`" in line
    assert fake.requests == [] and not out.exists()


def test_two_gens_in_one_folder_do_not_share_its_manifest(passages_file, tmp_path, fake_args):
    """config.yaml/manifest.json sit beside OUT, so a gen into b.csv while one writes a.csv
    would leave a manifest describing only one of them: refused, naming the file and run."""
    folder = tmp_path / "gen"
    with FakeLLM() as fake, OutLock(folder / "manifest.json", command="sciqa gen --out a.csv"):
        line = _one_error_line(_gen(passages_file, folder / "b.csv", fake, fake_args))
    assert line.startswith(f"error: {folder / 'manifest.json'}: another sciqa run is writing")
    assert "`sciqa gen --out a.csv`" in line and fake.requests == []


# --- OUT, rejects and manifest from one run ---------------------------------------------


def test_a_failure_while_writing_leaves_the_previous_run_whole(
    passages_file, tmp_path, fake_args, monkeypatch
):
    out = tmp_path / "gen" / "q.csv"
    with FakeLLM({"T0": ["malformed"]}) as fake:
        assert _gen(passages_file, out, fake, fake_args).exit_code == 0
        before = _snapshot(out.parent)

        def fail(*args, **kwargs):
            raise SciqaError("disk trouble while writing the manifest")

        monkeypatch.setattr(data_gen.commands, "write_run_files", fail)
        result = _gen(passages_file, out, fake, fake_args, "--set", "gen.reask_budget=0")
    assert _one_error_line(result) == "error: disk trouble while writing the manifest"
    assert _snapshot(out.parent) == before  # old code: OUT and rejects were already new
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([*OUTPUTS, "q.cache.sqlite"])


def test_a_manifest_present_always_describes_the_questions_beside_it(
    passages_file, tmp_path, fake_args, monkeypatch
):
    """A kill between the final renames (simulated: one of them fails) leaves no manifest,
    never the previous run's manifest beside this run's questions."""
    out = tmp_path / "q.csv"
    with FakeLLM() as fake:
        assert _gen(passages_file, out, fake, fake_args).exit_code == 0
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst) == rejected_path(out):
                raise OSError("killed here")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="killed here"):
            data_gen.commands._publish(out, *_run_parts(out), counts={"run": 2}, card="card")
    assert not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.glob(".q.csv.*"))


def _run_parts(out: Path):
    import pandas as pd

    from sciqa.config import load_config

    kept = pd.read_csv(out, dtype=str, keep_default_na=False)
    return kept, [], load_config(None, []), []


def test_written_files_follow_the_umask(passages_file, tmp_path, fake_args):
    out = tmp_path / "gen" / "q.csv"
    previous = os.umask(0o022)
    try:
        with FakeLLM() as fake:
            assert _gen(passages_file, out, fake, fake_args).exit_code == 0
    finally:
        os.umask(previous)
    assert {name: (out.parent / name).stat().st_mode & 0o777 for name in OUTPUTS} == dict.fromkeys(
        OUTPUTS, 0o644
    )


# --- the reply cache ----------------------------------------------------------------------


def _filled_cache(path: Path, rows: int = 200) -> Path:
    cache = ReplyCache(path)
    for i in range(rows):
        cache.put(f"k{i}", {"i": i}, {"text": "x" * 400, "usage": {}})
    cache.close()
    return path


def test_a_truncated_cache_is_one_line_before_any_request(passages_file, tmp_path, fake_args):
    out = tmp_path / "q.csv"
    cache = _filled_cache(out.with_name("q.cache.sqlite"))
    with open(cache, "r+b") as handle:
        handle.truncate(cache.stat().st_size // 2)
    with FakeLLM() as fake:
        line = _one_error_line(_gen(passages_file, out, fake, fake_args))
    assert line.startswith(
        f"error: {cache}: damaged reply cache (database disk image is malformed)"
    )
    assert "move it away to start a new one" in line
    assert fake.requests == [] and cache.stat().st_size > 0  # refused, never replaced


def test_a_damaged_page_is_found_on_opening(tmp_path):
    cache = _filled_cache(tmp_path / "c.sqlite")
    with open(cache, "r+b") as handle:  # page 2 on: the first table's b-tree
        handle.seek(4096)
        handle.write(b"\xff" * 4096)
    with pytest.raises(SciqaError, match="damaged reply cache"):
        ReplyCache(cache)


def test_a_damaged_reply_is_asked_again_with_a_warning(tmp_path, caplog):
    cache = _filled_cache(tmp_path / "c.sqlite", rows=2)
    with sqlite3.connect(cache) as db:
        db.execute("UPDATE replies SET response='{\"cut' WHERE key='k1'")
    opened = ReplyCache(cache)
    assert opened.get("k0") is not None
    assert opened.get("k1") is None  # a miss: asked again, the new reply replaces the row
    assert f"{cache}: the stored reply to request k1 is damaged; asking again" in caplog.text


def test_a_full_disk_while_storing_a_reply_is_one_line(tmp_path):
    cache = ReplyCache(tmp_path / "c.sqlite")
    cache._db.execute("PRAGMA max_page_count=8")  # what a full disk looks like to SQLite
    with pytest.raises(DiskFullError, match=r"c.sqlite: no space left on device"):
        for i in range(100):
            cache.put(f"k{i}", {}, {"text": "x" * 4000, "usage": {}})


def test_version_is_still_checked(tmp_path):
    cache = _filled_cache(tmp_path / "c.sqlite", rows=1)
    with sqlite3.connect(cache) as db:
        db.execute("UPDATE meta SET value='9' WHERE name='version'")
    with pytest.raises(SciqaError, match="reply cache version 9"):
        ReplyCache(cache)

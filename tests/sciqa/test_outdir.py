"""Output folders: one writer at a time, swapped in whole, files readable by others."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sciqa import outdir
from sciqa.errors import DiskFullError
from sciqa.io import atomic_path, follow_umask, write_json, write_table

HOLD = textwrap.dedent(
    """
    import sys, time
    from sciqa.outdir import OutLock
    lock = OutLock(sys.argv[1], command="sciqa infer q.csv m --out x")
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def _holder(out: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_gets_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out, 30)
    try:
        with pytest.raises(outdir.OutLocked) as caught:
            outdir.OutLock(out).acquire()
    finally:
        proc.kill()
        proc.wait()
    message = str(caught.value)
    assert "\n" not in message
    assert f"pid {proc.pid}" in message and "sciqa infer q.csv m --out x" in message


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    proc = _holder(out, 30)
    proc.kill()  # SIGKILL: no cleanup, the lock file stays behind
    proc.wait()
    assert outdir.lock_path(out).exists()
    with caplog.at_level(logging.WARNING, logger="sciqa.outdir"), outdir.OutLock(out):
        holder = json.loads(outdir.lock_path(out).read_text())
        assert holder["pid"] == os.getpid()
    assert f"pid {proc.pid}" in caplog.text and "did not finish" in caplog.text
    assert not outdir.lock_path(out).exists()  # a clean exit leaves no file


def test_lock_is_reentrant_per_run_only_after_release(tmp_path):
    out = tmp_path / "out"
    with outdir.OutLock(out), pytest.raises(outdir.OutLocked):
        outdir.OutLock(out).acquire()
    with outdir.OutLock(out):
        pass


def test_lock_on_a_full_disk_is_one_line_and_not_held(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = os.pwrite

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(DiskFullError) as caught:
        outdir.OutLock(out).acquire()
    assert str(caught.value).startswith(f"{outdir.lock_path(out)}: no space left on device")
    monkeypatch.setattr(os, "pwrite", real)
    with outdir.OutLock(out):  # the failed attempt holds nothing
        pass


def test_publish_swaps_whole_folders(tmp_path):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = outdir.fresh_partial(out)
    (staging / "new.txt").write_text("new")
    outdir.publish(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert not staging.exists()


def test_publish_without_exchange_and_recover_after_a_kill(tmp_path, monkeypatch):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = outdir.fresh_partial(out)
    (staging / "new.txt").write_text("new")
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)
    outdir.publish(staging, out)
    assert (out / "new.txt").read_text() == "new"
    # Killed between the two renames: out is gone, the old folder waits beside it.
    os.rename(out, tmp_path / ".idx.old")
    outdir.recover(out)
    assert (out / "new.txt").read_text() == "new"


def test_fresh_partial_clears_a_leftover(tmp_path):
    out = tmp_path / "idx"
    leftover = outdir.partial_dir(out)
    leftover.mkdir()
    (leftover / "half.faiss").write_bytes(b"x")
    assert list(outdir.fresh_partial(out).iterdir()) == []


def test_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    with pytest.raises(outdir.OutDirError, match="existing file, not a folder"):
        outdir.check_out_dir(path)
    with pytest.raises(outdir.OutDirError, match="existing folder"):
        outdir.check_out_file(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = [
            write_json({"a": 1}, tmp_path / "m.json"),
            write_table(pd.DataFrame({"id": ["1"]}), tmp_path / "t.csv"),
        ]
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.write_bytes(b"\0")
        paths.append(tmp_path / "w.bin")
    finally:
        os.umask(old)
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    def fill(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    target = tmp_path / "submission.csv"
    with pytest.raises(DiskFullError) as caught, atomic_path(target) as tmp:
        fill(tmp)
    assert str(caught.value).startswith(f"{target}: no space left on device (")
    assert "GB free on" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_a_read_only_lock_location_warns_and_runs_unguarded(tmp_path, monkeypatch, caplog):
    out = tmp_path / "working"
    real_open = os.open

    def read_only(path, *args, **kwargs):  # as /kaggle/.working.lock may be
        if str(path).endswith(outdir.LOCK):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with caplog.at_level(logging.WARNING, logger="sciqa.outdir"), outdir.OutLock(out):
        pass
    assert f"cannot create {outdir.lock_path(out)}" in caplog.text


def test_follow_umask_opens_up_what_libraries_save_privately(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir(mode=0o700)
    (folder / "model.safetensors").write_bytes(b"x")
    os.chmod(folder / "model.safetensors", 0o600)  # as transformers' save_pretrained leaves it
    (folder / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(folder / "run.sh", 0o700)
    old = os.umask(0o022)
    try:
        follow_umask(folder)
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (folder / "run.sh").stat().st_mode & 0o777 == 0o755

"""``sciqa infer`` under faults: one run's story per OUT_DIR, one writer, a full disk, a
damaged logits cache, a kill between members.

The fast tests drive :func:`infer.commands.run_infer` with tiny saved models and the infer
fakes (a member that raises in its first batch stands in for a kill); the SIGKILL test
runs the real CLI in a subprocess and kills it between members.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sciqa.io import read_questions, write_questions
from sciqa.outdir import OutLock
from sciqa.submission import read_submission
from tests.builders import INFER_SMALL, load_logits, make_config, make_model, make_questions

pytest.importorskip("torch")
pytest.importorskip("transformers")

from infer.commands import run_infer
from tests.infer.conftest import Spy

# What a finished run leaves, bytes compared (cache/ is content-keyed and shared).
RUN_FILES = ("submission.csv", "scores.json", "manifest.json", "config.yaml")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    """Two tiny members, run in this order (equal weights keep the file order)."""
    base = tmp_path_factory.mktemp("members")
    return [str(make_model(base / "m1", 1)), str(make_model(base / "m2", 2))]


@pytest.fixture
def first(tmp_path) -> Path:
    """The questions of the earlier run: ten."""
    return write_questions(make_questions(10), tmp_path / "first.csv")


@pytest.fixture
def second(tmp_path) -> Path:
    """The questions of the later run: twelve others."""
    return write_questions(make_questions(12, seed=5), tmp_path / "second.csv")


def cli(*args: str):
    from sciqa.cli import app

    return CliRunner().invoke(app, list(args))


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a run in ``out`` (not cache/, not previous/), by relative path."""
    files = [out / name for name in RUN_FILES] + sorted((out / "logits").glob("*"))
    return {str(f.relative_to(out)): f.read_bytes() for f in files if f.is_file()}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def infer(questions: Path, models: list[str], out: Path, **fakes) -> dict:
    return run_infer(questions, models, out, make_config(*INFER_SMALL), **fakes)


def loads(record: list[str], dies_in: str | None = None) -> Callable:
    """An ``open_member`` that notes which members load; ``dies_in``'s first batch
    raises KeyboardInterrupt (a kill that the process sees)."""
    from infer.predictors.families import open_member

    def hook(spec, timing):
        if spec.name == dies_in:
            raise KeyboardInterrupt
        return timing

    def opened(spec, tokenizer, loading):
        record.append(spec.name)
        return Spy(open_member(spec, tokenizer, loading), spec, hook)

    return opened


def assert_one_story(out: Path, questions: Path, done: list[str]) -> None:
    """Every file in ``out`` is of the run of ``questions`` whose finished members are
    ``done``: the manifest, the submission's rows, the logits' ids and files agree."""
    ids = read_questions(questions)["id"].astype(str).tolist()
    m = manifest(out)
    assert m["inputs"][0]["path"] == str(questions)
    assert read_submission(out / "submission.csv")["id"].tolist() == ids
    assert json.loads((out / "logits" / "ids.json").read_text()) == ids
    logits = load_logits(out)
    assert sorted(logits) == sorted([*done, "ensemble"])
    assert all(a.shape[0] == len(ids) for a in logits.values())
    rows = {r["model"]: r["status"] for r in m["models"] if r["model"] != "ensemble"}
    assert {name for name, status in rows.items() if status in ("done", "cached")} == set(done)


# --- one story per OUT_DIR ------------------------------------------------------------


def test_a_new_run_moves_the_earlier_one_to_previous(first, second, models, tmp_path, caplog):
    out = tmp_path / "out"
    infer(first, models, out)
    earlier = snapshot(out)
    with pytest.raises(KeyboardInterrupt):  # until its first member is done, OUT_DIR is kept
        infer(second, models, out, open_member=loads([], dies_in="m1"))
    assert snapshot(out) == earlier and not (out / "previous").exists()

    with pytest.raises(KeyboardInterrupt):
        infer(second, models, out, open_member=loads([], dies_in="m2"))
    assert snapshot(out / "previous") == earlier
    assert_one_story(out, second, done=["m1"])
    assert manifest(out)["status"] == "stopped"
    assert not (out / "scores.json").exists()  # scores are of a finished run only
    assert "moved to" in caplog.text and "other questions" in caplog.text

    result = cli("eval", str(out), str(second), "--resamples", "50")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"note: {out}: the sciqa infer run that wrote it did not")
    assert "1 of 2 members scored" in result.output


def test_the_rerun_loads_only_unfinished_members_and_matches(first, second, models, tmp_path):
    out, reference = tmp_path / "out", tmp_path / "reference"
    infer(first, models, out)
    with pytest.raises(KeyboardInterrupt):
        infer(second, models, out, open_member=loads([], dies_in="m2"))
    loaded: list[str] = []
    infer(second, models, out, open_member=loads(loaded))
    assert loaded == ["m2"]
    infer(second, models, reference)
    assert (out / "submission.csv").read_text() == (reference / "submission.csv").read_text()
    for name, array in load_logits(reference).items():
        np.testing.assert_allclose(load_logits(out)[name], array, rtol=1e-6)
    assert manifest(out)["status"] == "finished"
    assert manifest(out)["run_id"] == manifest(reference)["run_id"]
    assert_one_story(out, second, done=["m1", "m2"])
    assert (out / "previous" / "submission.csv").is_file()  # the resume kept previous/


def test_rerunning_the_same_run_keeps_out_dir_and_drops_what_it_has_not_redone(
    first, models, tmp_path
):
    out = tmp_path / "out"
    infer(first, models, out)
    run_id, finished = manifest(out)["run_id"], snapshot(out)
    for path in (out / "cache").glob("m2-*"):  # m2 is scored again, and dies doing so
        path.unlink()
    with pytest.raises(KeyboardInterrupt):
        infer(first, models, out, open_member=loads([], dies_in="m2"))
    assert not (out / "previous").exists()
    assert manifest(out)["run_id"] == run_id
    assert_one_story(out, first, done=["m1"])
    assert not (out / "scores.json").exists()  # it scored m2 too
    assert snapshot(out)["logits/m1.npy"] == finished["logits/m1.npy"]


def test_run_id_is_recorded_with_what_it_is_made_of(first, models, tmp_path):
    out = tmp_path / "out"
    infer(first, models, out)
    m = manifest(out)
    assert m["status"] == "finished" and len(m["run_id"]) == 16
    made_of = m["run_id_of"]
    assert made_of["questions"].startswith("sha256:")
    assert [p["name"] for p in made_of["members"]] == ["m1", "m2"]
    assert {"ensemble", "tta", "time_budget"} <= set(made_of["settings"])
    run_id = m["run_id"]
    run_infer(first, models, out, make_config(*INFER_SMALL, "infer.batch_size=5"))
    assert manifest(out)["run_id"] == run_id  # speed settings do not change the outputs
    run_infer(first, models, out, make_config(*INFER_SMALL, "infer.tta=2"))
    assert manifest(out)["run_id"] != run_id


# --- one writer, --out, a full disk ---------------------------------------------------


def test_a_second_writer_exits_with_one_line_naming_the_holder(first, models, tmp_path):
    out = tmp_path / "out"
    with OutLock(out, command="sciqa infer first.csv m1 m2 --out out"):
        result = cli("infer", str(first), *models, "--out", str(out))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: {out}: another sciqa run is writing it")
    assert f"pid {os.getpid()}" in result.output and "sciqa infer first.csv" in result.output
    assert not out.exists()


def test_a_read_only_lock_location_runs_unguarded_with_a_warning(
    first, models, tmp_path, monkeypatch, caplog
):
    real_open = os.open

    def read_only(path, *args, **kwargs):  # as /kaggle/.working.lock may be
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    out = tmp_path / "out"
    infer(first, models, out)
    assert manifest(out)["status"] == "finished"
    assert f"cannot create {tmp_path / '.out.lock'}" in caplog.text


def test_out_that_is_a_file_is_one_line_before_anything_loads(first, models, tmp_path, monkeypatch):
    out = tmp_path / "out.csv"
    out.write_text("keep me\n")
    monkeypatch.setitem(sys.modules, "infer.commands", None)  # importing it would fail
    result = cli("infer", str(first), *models, "--out", str(out))
    assert result.exit_code == 1
    assert result.output == (
        f"error: {out}: --out is an existing file, not a folder; give a folder path "
        "(it is created) or move the file away\n"
    )
    assert out.read_text() == "keep me\n"


def _no_space_on(target: Callable[[Path], bool], monkeypatch) -> None:
    """``os.replace`` onto a path ``target`` picks fails as on a full disk: the moment an
    atomic write lands."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if target(Path(dst)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_full_disk_at_the_first_write_is_one_line_and_keeps_the_submission(
    first, second, models, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    infer(first, models, out)
    earlier = snapshot(out)
    _no_space_on(lambda dst: dst.parent == out / "cache", monkeypatch)
    result = cli("infer", str(second), *models, "--out", str(out))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = _error_lines(result.output)
    assert f"{out / 'cache'}/m1-" in line and "no space left on device" in line
    assert snapshot(out) == earlier


def test_full_disk_after_the_take_over_keeps_the_previous_submission(
    first, second, models, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    infer(first, models, out)
    earlier = snapshot(out)
    _no_space_on(lambda dst: dst == out / "submission.csv", monkeypatch)
    result = cli("infer", str(second), *models, "--out", str(out))
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: {out / 'submission.csv'}: no space left on device")
    assert snapshot(out / "previous") == earlier
    assert manifest(out)["status"] == "stopped"
    assert json.loads((out / "logits" / "ids.json").read_text()) == [f"q{i:02d}" for i in range(12)]


def _mount_tiny_tmpfs(folder: Path) -> None:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s filesystem, then free ``leave`` bytes."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        handle.truncate(handle.tell() - leave)


@pytest.mark.parametrize(
    ("leave", "fails_on"),
    [(0, ".out.lock"), (4096, "out/cache/m1-")],  # a page: the lock fits, the logits not
    ids=["full", "one-page-left"],
)
def test_a_really_full_disk_is_one_line_and_keeps_the_submission(
    first, second, models, tmp_path, leave, fails_on
):
    disk = tmp_path / "disk"
    _mount_tiny_tmpfs(disk)
    try:
        out = disk / "out"
        infer(first, models, out)
        earlier = snapshot(out)
        _fill(disk, leave)
        result = cli("infer", str(second), *models, "--out", str(out))
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        (line,) = _error_lines(result.output)
        assert line.startswith(f"error: {disk / fails_on}")
        assert "no space left on device" in line
        assert snapshot(out) == earlier
        assert not list(out.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- a damaged logits cache -------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:60]),  # cut short
        lambda path: np.save(path, np.zeros((3, 5), dtype=np.float32)),  # other rows
        lambda path: path.write_bytes(b"not an array"),
    ],
    ids=["truncated", "wrong-shape", "garbage"],
)
def test_damaged_cache_file_is_set_aside_and_scored_again(first, models, tmp_path, caplog, damage):
    out = tmp_path / "out"
    infer(first, models, out)
    finished = snapshot(out)
    (torn,) = (out / "cache").glob("m2-*.npy")
    damage(torn)
    loaded: list[str] = []
    infer(first, models, out, open_member=loads(loaded))
    assert loaded == ["m2"]
    assert f"{torn}:" in caplog.text and f"set aside as {torn.stem}.torn" in caplog.text
    assert torn.with_suffix(".torn").is_file()
    assert np.load(torn).shape == (10, 5)
    assert snapshot(out)["submission.csv"] == finished["submission.csv"]


# --- a real kill between members --------------------------------------------------------


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_between_members_leaves_one_story_and_resumes(tmp_path, models):
    first = write_questions(make_questions(20), tmp_path / "first.csv")
    second = write_questions(make_questions(300, seed=5), tmp_path / "second.csv")
    out, reference = tmp_path / "out", tmp_path / "reference"
    infer(first, models, out)
    earlier = snapshot(out)
    command = [sys.executable, "-m", "sciqa", "infer", str(second), *models, "--out", str(out)]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / ".out.lock", process)
        second_writer = cli("infer", str(second), *models, "--out", str(out))
        assert second_writer.exit_code == 1
        assert f"another sciqa run is writing it (pid {process.pid}" in second_writer.output
        _wait_for(out / "previous" / "manifest.json", process)  # it took OUT_DIR over
        _wait_for(out / "submission.csv", process)  # m1's ensemble: m2 is under way
        time.sleep(0.05)  # past the manifest's update, which follows at once
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    assert manifest(out)["status"] == "running", "killed too late: m2 had finished"
    assert_one_story(out, second, done=["m1"])
    assert snapshot(out / "previous") == earlier
    assert not list(out.rglob("*.tmp"))
    killed = cli("eval", str(out), str(second), "--resamples", "50")
    assert killed.exit_code == 0, killed.output
    assert "did not finish (status 'running', 1 of 2 members scored)" in killed.output

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the lock of a run that did not finish" in rerun.stderr
    statuses = [r["status"] for r in manifest(out)["models"][:2]]
    assert statuses == ["cached", "done"]  # m1 came from the cache, only m2 loaded
    infer(second, models, reference)
    assert (out / "submission.csv").read_text() == (reference / "submission.csv").read_text()
    for name, array in load_logits(reference).items():
        np.testing.assert_allclose(load_logits(out)[name], array, rtol=1e-6)
    assert snapshot(out / "previous") == earlier
    finished = cli("eval", str(out), str(second), "--resamples", "50")
    assert finished.exit_code == 0 and "note:" not in finished.output

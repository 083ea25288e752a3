"""`sciqa pack`, `report` and `eval` under faults, run as a user runs them (subprocesses):
pack SIGKILLed mid-copy keeps the previous bundle whole and the rerun builds the same bundle
as an uninterrupted pack; an --out of the wrong kind is one line and touches nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sciqa.cli import app
from sciqa.runs import file_digest
from tests.builders import make_run
from tests.infer.test_pack import CORE, write_wheel

SHARD = 48 * 2**20  # a fold's extra weights file: big enough that copying it takes a while


@pytest.fixture
def wheel(tmp_path) -> Path:
    return write_wheel(tmp_path / "wheel", "sciqa", "0.1.0", CORE, requires_python=">=3.11")


def _pack_args(run: Path, out: Path, wheel: Path, *extra: str) -> list[str]:
    return ["pack", str(run), "--out", str(out), "--set", f"pack.sciqa_wheel={wheel}", *extra]


def _sciqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "sciqa", *args]


def _digests(bundle: Path) -> dict[str, str]:
    """Every file's sha256 but the two that carry the pack's time (predict.sh, manifest)."""
    skip = {"predict.sh", "manifest.json"}
    files = (p for p in bundle.rglob("*") if p.is_file() and p.name not in skip)
    return {p.relative_to(bundle).as_posix(): file_digest(p) for p in files}


def _members(bundle: Path) -> list[dict]:
    return json.loads((bundle / "manifest.json").read_text())["members"]


@pytest.mark.slow  # ~15 s: three packs (one killed) copying ~100 MB each
def test_pack_killed_mid_copy_keeps_the_old_bundle_and_the_rerun_builds_the_same(tmp_path, wheel):
    run = make_run(tmp_path / "run_a", 1)
    for fold in run.glob("fold_*"):
        with open(fold / "spm.model", "wb") as handle:  # copied like any tokenizer file
            handle.write(b"\x01" * SHARD)
    out = tmp_path / "bundle"
    old = CliRunner().invoke(app, _pack_args(run / "fold_0", out, wheel))
    assert old.exit_code == 0, old.output
    old_digests, old_members = _digests(out), _members(out)

    partial = tmp_path / ".bundle.partial"
    killed = subprocess.Popen(
        _sciqa(*_pack_args(run, out, wheel, "--overwrite")), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (partial / "models").exists():
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert partial.is_dir()  # killed while building, before the swap
    assert _digests(out) == old_digests and _members(out) == old_members  # old bundle whole

    again = subprocess.run(
        _sciqa(*_pack_args(run, out, wheel, "--overwrite")), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "taking over the lock of a run that did not finish" in again.stderr
    assert not partial.exists() and not list(tmp_path.glob(".bundle.*"))
    reference = tmp_path / "reference"
    fresh = CliRunner().invoke(app, _pack_args(run, reference, wheel))
    assert fresh.exit_code == 0, fresh.output
    assert _digests(out) == _digests(reference)
    assert _members(out) == _members(reference)
    assert len(_members(out)) == 2


@pytest.fixture
def taken(tmp_path) -> dict[str, Path]:
    file = tmp_path / "taken"
    file.write_text("mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"file": file, "folder": folder}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            lambda t: ["pack", "runs/none", "--out", str(t["file"])],
            "error: --out {file}: exists and is not a folder; choose another --out",
        ),
        (
            lambda t: ["report", "runs/none", "--out", str(t["file"])],
            "error: {file}: --out is an existing file, not a folder; give a folder path "
            "(it is created) or move the file away",
        ),
        (
            lambda t: ["eval", "sub.csv", "labels.csv", "--json", str(t["folder"])],
            "error: {folder}: --json is an existing folder; give a file path",
        ),
    ],
    ids=["pack", "report", "eval"],
)
def test_an_out_of_the_wrong_kind_is_one_line_and_touches_nothing(taken, args, message):
    done = subprocess.run(_sciqa(*args(taken)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [message.format(**taken)]
    assert taken["file"].read_text() == "mine" and not any(taken["folder"].iterdir())
    assert sorted(p.name for p in taken["file"].parent.iterdir()) == ["folder", "taken"]

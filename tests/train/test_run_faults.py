"""A train run dir never loses a good run and never has two writers (issue 21)."""

from __future__ import annotations

import json
import os
import sys

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner

from sciqa.cli import app
from sciqa.outdir import OutLock, OutLocked, partial_dir
from train.commands import run_train


def _fingerprint(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["fingerprint"]


def test_overwrite_killed_midway_keeps_the_old_run_and_resumes(run_files, bert_config, request):
    questions, out = run_files(12)
    run_train(questions, out, bert_config("train.folds=2"))
    old_oof = pd.read_parquet(out / "oof.parquet")
    old_print = _fingerprint(out)
    (out / "notes.txt").write_text("mine")
    new = bert_config("train.folds=2", "train.learning_rate=0.001")

    finish = request.getfixturevalue("kill_after_checkpoint")
    with pytest.raises(KeyboardInterrupt):  # the new run is killed in its first fold
        run_train(questions, out, new, overwrite=True)
    # The old run is whole and still the one OUT describes.
    assert _fingerprint(out) == old_print
    pd.testing.assert_frame_equal(pd.read_parquet(out / "oof.parquet"), old_oof)
    assert all((out / f"fold_{i}" / "metrics.json").is_file() for i in (0, 1))
    assert partial_dir(out).is_dir()

    finish()  # let training finish
    trained = run_train(questions, out, new, overwrite=True)
    assert [m["fold"] for m in trained] == [0, 1]
    assert _fingerprint(out) != old_print
    assert not partial_dir(out).exists()
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: carried over
    assert len(pd.read_parquet(out / "oof.parquet")) == 12


def test_overwrite_resume_skips_the_folds_the_killed_run_finished(run_files, bert_config):
    questions, out = run_files(12)
    run_train(questions, out, bert_config("train.folds=2"))
    new = bert_config("train.folds=2", "train.learning_rate=0.001")
    run_train(questions, out, new, fold=0, overwrite=True)  # published: OUT holds fold 0
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0"]
    trained = run_train(questions, out, new, fold=1)
    assert [m["fold"] for m in trained] == [1]


def test_second_writer_is_refused_naming_the_holder(run_files, bert_config):
    questions, out = run_files(12)
    holder = OutLock(out, command="sciqa train q.csv --out run")
    with holder, pytest.raises(OutLocked, match=r"sciqa train q\.csv --out run"):
        run_train(questions, out, bert_config("train.folds=2"))
    assert not (out / "manifest.json").exists()


def test_fold_jobs_lock_only_their_fold(run_files, bert_config):
    questions, out = run_files(12)
    with OutLock(out / "fold_0"):  # another --fold 0 job
        trained = run_train(questions, out, bert_config("train.folds=2"), fold=1)
        assert [m["fold"] for m in trained] == [1]
        with pytest.raises(OutLocked):
            run_train(questions, out, bert_config("train.folds=2"), fold=0)


def test_out_that_is_a_file_is_one_line_before_torch(run_files, monkeypatch):
    questions, out = run_files(12)
    out.write_text("keep me\n")
    for name in ("torch", "transformers", "accelerate"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any would fail
    result = CliRunner().invoke(app, ["train", str(questions), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {out}: --out is an existing file, not a folder; give a folder path "
        "(it is created) or move the file away\n"
    )
    assert out.read_text() == "keep me\n"


def test_fold_files_are_readable_by_others_under_umask_022(run_files, bert_config):
    questions, out = run_files(12)
    old = os.umask(0o022)
    try:
        run_train(questions, out, bert_config("train.folds=2"), fold=0)
    finally:
        os.umask(old)
    private = [p for p in out.rglob("*") if not p.stat().st_mode & 0o004]
    assert private == []
    assert (out / "fold_0" / "model.safetensors").stat().st_mode & 0o777 == 0o644

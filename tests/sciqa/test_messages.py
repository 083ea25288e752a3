"""Commands refuse bad arguments at once: before torch & co. are imported and before
any input is loaded, with one line that says what to change (issue 21, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sciqa.cli import app
from sciqa.io import write_table
from sciqa.submission import make_submission
from tests.builders import train_questions


@pytest.fixture
def refused_fast(fresh_interpreter):
    """``run(*argv)``: `sciqa ARGV` in a fresh interpreter; it must exit 1 without having
    imported torch & co. Returns its stderr."""

    def run(*argv: object) -> str:
        done = fresh_interpreter(
            f"import runpy, sys\nsys.argv = ['sciqa', *{[str(a) for a in argv]!r}]\n"
            "runpy.run_module('sciqa', run_name='__main__')\n"
        )
        assert done.returncode == 1, done.stderr
        assert not done.heavy, done.heavy
        return done.stderr.strip()

    return run


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    return write_table(train_questions(12), tmp_path / "q.csv")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "0"], "error: --folds 0: train.folds: Input should be greater than or"),
        (["--set", "train.max_length=0"], "error: config: train.max_length: Input should be"),
        (["--folds", "3", "--fold", "3"], "error: --fold 3: out of range; with --folds 3 use 0..2"),
        (["--folds", "1"], "error: --folds 1 trains on everything and needs --valid FILE"),
        (
            ["--folds", "3", "--valid", "{q}"],
            "error: --valid FILE goes with --folds 1 (a full fit); the 3 folds validate on "
            "their own rows: drop --valid or use --folds 1",
        ),
    ],
)
def test_train_refuses_bad_arguments_before_importing_torch(
    refused_fast, labelled, tmp_path, args, message
):
    args = [a.format(q=labelled) for a in args]
    stderr = refused_fast("train", labelled, "--out", tmp_path / "run", *args)
    assert stderr.startswith(message) and "\n" not in stderr
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_bad_questions_file_before_importing_torch(refused_fast, tmp_path):
    bad = write_table(train_questions(12).drop(columns="answer"), tmp_path / "q.csv")
    stderr = refused_fast("train", bad, "--out", tmp_path / "run")
    assert stderr.startswith(f"error: {bad}: missing column(s) 'answer'")


@pytest.mark.parametrize("out", ["x.txt", "folder"])
def test_retrieve_checks_out_before_reading_the_index(refused_fast, labelled, tmp_path, out):
    (tmp_path / "folder").mkdir()
    out = tmp_path / out
    stderr = refused_fast("retrieve", labelled, "--index", tmp_path / "no-index", "--out", out)
    expected = (
        "--out is an existing folder; give a file path"
        if out.is_dir()
        else "unsupported file type '.txt'"
    )
    assert stderr.startswith(f"error: {out}: {expected}")


def test_gen_and_benchmark_check_out_first(refused_fast, tmp_path):
    out = tmp_path / "q.txt"
    stderr = refused_fast("gen", tmp_path / "no-passages.parquet", "--out", out)
    assert stderr.startswith(f"error: {out}: unsupported file type '.txt'")
    stderr = refused_fast("benchmark", "no-such-set", out)
    assert stderr.startswith(f"error: {out}: unsupported file type '.txt'")


def test_eval_refuses_repeated_letters_naming_file_row_and_value(tmp_path, questions):
    labels = write_table(questions, tmp_path / "labels.csv")
    submission = write_table(
        make_submission(["0", "1", "2"], ["A A A", "B", "C"]), tmp_path / "sub.csv"
    )
    result = CliRunner().invoke(app, ["eval", str(submission), str(labels)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {submission}: row 1, id=0, column 'prediction': 'A A A' repeats 'A'; "
        "give each letter once, best first, e.g. 'B A D'"
    )

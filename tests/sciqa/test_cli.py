import json

import pytest
from typer.testing import CliRunner

from sciqa.cli import app
from sciqa.io import write_table
from sciqa.submission import make_submission

runner = CliRunner()


@pytest.fixture
def files(tmp_path, questions):
    labels = write_table(questions, tmp_path / "train.csv")  # answers A, B, B
    submission = write_table(
        make_submission(["0", "1", "2"], ["A B C", "A B C", "C D E"]), tmp_path / "sub.csv"
    )
    return labels, submission


def test_eval_prints_and_writes_scores(tmp_path, files):
    labels, submission = files
    out = tmp_path / "scores" / "eval.json"
    result = runner.invoke(app, ["eval", str(submission), str(labels), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "MAP@3 0.5000  accuracy 0.3333  questions 3" in result.output
    data = json.loads(out.read_text())
    ci = data.pop("map_at_3_ci")  # added beside the historical keys, which stay as they were
    assert data == {
        "n_questions": 3,
        "map_at_3": pytest.approx(0.5),
        "accuracy": pytest.approx(1 / 3),
    }
    # Per-question AP 1, 1/2, 0: resampling 3 questions spans all of 0..1.
    assert ci == {"low": 0.0, "high": 1.0, "confidence": 0.95, "n_resamples": 10_000, "seed": 0}
    assert "MAP@3 95% interval 0.0000 to 1.0000 (bootstrap over questions" in result.output


def test_eval_bad_labels_give_one_line_error(tmp_path, files, questions):
    _, submission = files
    bad = write_table(questions.assign(answer=["A", "F", "B"]), tmp_path / "bad.csv")
    result = runner.invoke(app, ["eval", str(submission), str(bad)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {bad}: row 2, id=1, column 'answer': 'F' is not one of A, B, C, D, E"
    ]


def test_eval_requires_labels(tmp_path, files, questions):
    _, submission = files
    unlabelled = write_table(questions.drop(columns="answer"), tmp_path / "test.csv")
    result = runner.invoke(app, ["eval", str(submission), str(unlabelled)])
    assert result.exit_code == 1
    assert "missing column(s) 'answer'" in result.output


def test_validate_summarises_a_good_file(files):
    labels, _ = files
    result = runner.invoke(app, ["validate", str(labels), "--labelled"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{labels}: ok, 3 questions, options A-E, labelled"


def test_config_shows_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = 5\n")
    result = runner.invoke(app, ["config", "-c", str(path), "--set", "models.llm=/m/llm"])
    assert result.exit_code == 0, result.output
    assert "seed: 5" in result.output
    assert "llm: /m/llm" in result.output
    bad = runner.invoke(app, ["config", "--set", "models.lm=x"])
    assert bad.exit_code == 1
    assert "unknown key 'models.lm'" in bad.output


@pytest.fixture
def help_without_heavy_imports(fresh_interpreter):
    """``run(*argv)``: `sciqa ARGV --help` in a fresh interpreter; fails if torch & co.
    were imported. Returns the help text."""

    def run(*argv: str) -> str:
        done = fresh_interpreter(
            f"import runpy, sys\nsys.argv = ['sciqa', *{list(argv)!r}, '--help']\n"
            "runpy.run_module('sciqa', run_name='__main__')\n"
        )
        assert done.returncode == 0, done.stderr
        assert "sciqa.cli" in done.modules  # the help did come from the CLI
        assert not done.heavy, done.heavy
        return done.stdout

    return run


@pytest.mark.parametrize("stage", ["gen", "serve-llm", "index", "retrieve", "train", "infer"])
def test_stage_help_runs_without_heavy_imports(stage, help_without_heavy_imports):
    assert "--config" in help_without_heavy_imports(stage)


def test_pack_help_needs_no_torch(help_without_heavy_imports):
    assert "--platform" in help_without_heavy_imports("pack")


def test_console_entry_point_runs_without_heavy_imports(help_without_heavy_imports):
    stdout = help_without_heavy_imports()
    assert "eval" in stdout

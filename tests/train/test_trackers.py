"""train.report_to: the HF Trainer's TensorBoard and MLflow integrations, writing local
files under RUN_DIR/tracking/ and never reaching the network."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from sciqa.cli import app  # noqa: E402
from sciqa.config import load_config  # noqa: E402
from sciqa.errors import ConfigError  # noqa: E402
from sciqa.io import write_table  # noqa: E402
from tests.builders import train_questions  # noqa: E402
from train.commands import run_train  # noqa: E402
from train.trackers import OFFLINE, check_trackers, tracking_env  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network is blocked in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_tensorboard_and_mlflow_log_each_fold_to_local_files(
    tmp_path, no_network, monkeypatch, run_files, bert_config
):
    if not all(importlib.util.find_spec(p) for p in ("mlflow", "tensorboard")):
        pytest.skip("needs the [track] extra")  # find_spec: importing mlflow here would
    # start its telemetry client before the run disables it. MLflow also turns telemetry
    # off under pytest or CI, which would hide a run that forgets to: look like a user.
    fresh = "mlflow" not in sys.modules
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.delenv("CI", raising=False)
    questions, out = run_files(16)
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", *OFFLINE)}
    cfg = bert_config("train.report_to=tensorboard,mlflow", "train.folds=2")
    run_train(questions, out, cfg)
    assert no_network == []
    assert {k: os.environ.get(k) for k in before} == before  # the fold's settings are undone

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for fold in (0, 1):
        metrics = json.loads((out / f"fold_{fold}" / "metrics.json").read_text())
        events = EventAccumulator(str(out / "tracking" / "tensorboard" / f"fold_{fold}"))
        events.Reload()
        curve = [e.value for e in events.Scalars("eval/map_at_3")]
        assert curve == pytest.approx([e["map_at_3"] for e in metrics["epochs"]])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(out / "tracking" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("sciqa")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["fold_0", "fold_1"]
    for name, run in runs.items():
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "eval_map_at_3")
        assert [m.value for m in history] == pytest.approx(
            [e["map_at_3"] for e in metrics["epochs"]]
        )
        assert run.data.params["learning_rate"] == str(cfg.train.learning_rate)
    if fresh:  # first imported inside the run, so only the run's settings turned it off
        from mlflow.telemetry.client import get_telemetry_client
        from mlflow.telemetry.utils import _IS_IN_CI_ENV_OR_TESTING

        assert not _IS_IN_CI_ENV_OR_TESTING
        assert get_telemetry_client() is None


def test_report_to_does_not_change_the_fingerprint(tmp_path, run_files, bert_config):
    pytest.importorskip("tensorboard")
    questions, out = run_files(12)
    run_train(
        questions,
        out,
        bert_config("train.folds=2"),
        fold=0,
    )
    # Turning a tracker on for the second fold resumes the same run, not a refusal.
    run_train(
        questions,
        out,
        bert_config("train.report_to=tensorboard", "train.folds=2"),
    )
    assert not (out / "tracking" / "tensorboard" / "fold_0").exists()
    assert any((out / "tracking" / "tensorboard" / "fold_1").glob("events.out.tfevents.*"))


def test_tracking_env_keeps_the_users_locations_and_turns_telemetry_off(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///elsewhere")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    with tracking_env(["tensorboard", "mlflow"], tmp_path, "fold_3"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "file:///elsewhere"
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
        assert os.environ["DO_NOT_TRACK"] == "true"
        assert os.environ["TENSORBOARD_LOGGING_DIR"].endswith("tracking/tensorboard/fold_3")
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    with tracking_env(["none"], tmp_path, "fold_0"):
        assert "TENSORBOARD_LOGGING_DIR" not in os.environ


def test_a_tracker_that_is_not_installed_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"mlflow is not installed; pip install -e '\.\[track\]'"):
        check_trackers(["mlflow"])
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'"):
        check_trackers(["tensorbored"])
    check_trackers(["none"])


def test_cli_refuses_a_missing_tracker_before_writing(tmp_path, monkeypatch, tiny_bert):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in {"tensorboard", "tensorboardX"} else real(name, *a),
    )
    questions = write_table(train_questions(8), tmp_path / "q.csv")
    args = ["train", str(questions), "--out", str(tmp_path / "run"), "--folds", "2"]
    args += ["--set", f"models.backbone={tiny_bert}", "--set", "train.report_to=tensorboard"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: train.report_to: tensorboard is not installed; "
        "pip install -e '.[track]' (make install does)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("none", ["none"]), ("tensorboard", ["tensorboard"]), ("[tensorboard]", ["tensorboard"]),
     (" MLflow, tensorboard ", ["mlflow", "tensorboard"]), ("", ["none"])],
)  # fmt: skip
def test_report_to_accepts_a_name_a_list_or_commas(value, expected):
    assert load_config(None, [f"train.report_to={value}"]).train.report_to == expected


@pytest.mark.parametrize(
    ("value", "message"), [("all", "'all' is not allowed"), ("none,mlflow", "cannot be combined")]
)
def test_report_to_refuses_all_and_none_with_others(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"train.report_to={value}"])

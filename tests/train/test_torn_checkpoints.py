"""A kill while the Trainer writes a checkpoint leaves it torn. The rerun moves it aside
with a warning naming it, resumes from the complete checkpoint before it (or from the
start) and ends exactly where an uninterrupted run ends."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sciqa.io import write_table  # noqa: E402
from tests.builders import cut_in_half, train_questions  # noqa: E402
from train.checkpoints import checkpoint_problem  # noqa: E402
from train.commands import run_train  # noqa: E402

# Three epochs of 2 steps; a learning rate that moves the tiny model, so the logits and
# the history of a resumed run can differ from an uninterrupted one.
SETTINGS = (
    "train.epochs=3",
    "train.early_stopping_patience=5",
    "train.learning_rate=0.01",
    "train.folds=2",
)
# How the second checkpoint is torn, and the start of the reason the warning gives.
TEARS = {
    "trainer_state.json missing": (
        lambda ck: (ck / "trainer_state.json").unlink(),
        "no trainer_state.json",
    ),
    "trainer_state.json cut": (
        lambda ck: cut_in_half(ck / "trainer_state.json"),
        "trainer_state.json is cut short",
    ),
    "model.safetensors cut": (
        lambda ck: cut_in_half(ck / "model.safetensors"),
        "model.safetensors: ",  # then its size and the size its header gives
    ),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, bert_config):
    """Fold 0 trained without a kill: its metrics and out-of-fold logits."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    questions = write_table(train_questions(16), directory / "q.csv")
    [metrics] = run_train(questions, directory / "run", bert_config(*SETTINGS), fold=0)
    return metrics, _oof(directory / "run")


def _oof(run: Path) -> np.ndarray:
    return pd.read_parquet(run / "fold_0" / "oof.parquet")[list("ABCD")].to_numpy()


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rpartition("-")[2])


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("train")
    ]


@pytest.mark.parametrize("tear", TEARS)
def test_torn_newest_checkpoint_is_set_aside_and_the_one_before_resumed(
    tear, run_files, bert_config, kill_in_second_save, uninterrupted, caplog
):
    damage, reason = TEARS[tear]
    questions, out = run_files(16)
    config = bert_config(*SETTINGS)
    finish = kill_in_second_save(damage)
    with pytest.raises(KeyboardInterrupt):
        run_train(questions, out, config, fold=0)
    checkpoints = out / "fold_0" / "checkpoints"
    complete, torn = sorted(checkpoints.glob("checkpoint-*"), key=_step)
    assert checkpoint_problem(complete) is None
    assert checkpoint_problem(torn).startswith(reason)

    finish()
    with caplog.at_level(logging.INFO, logger="train"):
        [resumed] = run_train(questions, out, config, fold=0)
    aside = out / "fold_0" / "torn-checkpoints" / torn.name
    [warning] = _warnings(caplog)
    assert f"fold 0: {torn} is incomplete ({reason}" in warning
    assert f"moved to {aside}" in warning
    assert aside.is_dir()  # kept for a look, not deleted
    assert resumed["resumed_from"] == str(complete)
    metrics, logits = uninterrupted
    assert resumed["epochs"] == metrics["epochs"]  # the history from the checkpoint, then on
    np.testing.assert_allclose(_oof(out), logits, atol=1e-6)


def test_torn_only_checkpoint_means_training_from_the_start(
    run_files, bert_config, kill_after_checkpoint, uninterrupted, caplog
):
    questions, out = run_files(16)
    config = bert_config(*SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        run_train(questions, out, config, fold=0)
    [checkpoint] = (out / "fold_0" / "checkpoints").glob("checkpoint-*")
    cut_in_half(checkpoint / "optimizer.pt")

    kill_after_checkpoint()  # undo: the rerun may finish
    with caplog.at_level(logging.INFO, logger="train"):
        [trained] = run_train(questions, out, config, fold=0)
    torn_line, none_left = _warnings(caplog)
    assert f"{checkpoint} is incomplete (optimizer.pt: " in torn_line
    assert "no zip directory at its end: cut short" in torn_line
    assert none_left.startswith("fold 0: no complete checkpoint left in ")
    assert trained["resumed_from"] is None
    metrics, logits = uninterrupted
    assert trained["epochs"] == metrics["epochs"]
    np.testing.assert_allclose(_oof(out), logits, atol=1e-6)

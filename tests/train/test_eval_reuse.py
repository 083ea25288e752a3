"""A fold's validation set is scored once per epoch, not once more after training: the
best epoch's evaluation logits are its out-of-fold logits."""

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciqa.io import read_table  # noqa: E402
from train.commands import run_train  # noqa: E402
from train.trainer import best_evaluation  # noqa: E402


@pytest.mark.parametrize("epochs", [1, 3])
def test_oof_logits_come_from_the_best_evaluation_without_predicting_again(
    tmp_path,
    fold_logits,
    monkeypatch,
    epochs,
    run_files,
    bert_config,
):
    def refuse(*args, **kwargs):
        raise AssertionError("the validation set was scored again after training")

    monkeypatch.setattr(transformers.Trainer, "predict", refuse)
    questions, out = run_files(16)
    config = bert_config(f"train.epochs={epochs}", "train.learning_rate=0.01", "train.folds=2")
    run_train(questions, out, config, fold=0)
    oof = pd.read_parquet(out / "oof.parquet")
    rows = read_table(questions).set_index("id").loc[oof["id"]].reset_index()
    # The saved (best) model gives exactly the logits written as out-of-fold.
    np.testing.assert_allclose(
        fold_logits(out / "fold_0", rows, 48), oof[list("ABCD")].to_numpy(), atol=1e-4
    )


def test_best_evaluation_is_the_first_best_and_refuses_what_it_cannot_match():
    logits = [np.full((2, 4), float(k)) for k in range(3)]
    history = [{"map_at_3": s} for s in (0.5, 0.7, 0.7)]
    runs = [(a, {"map_at_3": h["map_at_3"]}) for a, h in zip(logits, history, strict=True)]
    assert best_evaluation(history, runs, resumed=False)[0, 0] == 1.0
    assert best_evaluation(history, runs, resumed=True) is None  # earlier evals not seen
    assert best_evaluation(history, runs[:2], resumed=False) is None
    assert best_evaluation([], [], resumed=False) is None
    wrong = [*runs[:1], (logits[1], {"map_at_3": 0.1}), runs[2]]
    assert best_evaluation(history, wrong, resumed=False) is None

"""sciqa infer end to end on tiny random BERT multiple-choice models saved in the test."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sciqa.io import read_table, write_questions
from sciqa.metrics import top3_letters
from sciqa.submission import read_submission

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from infer.commands import run_infer  # noqa: E402
from infer.errors import BudgetError, InferError  # noqa: E402
from tests.builders import (  # noqa: E402
    INFER_SMALL,
    LETTERS,
    cut_in_half,
    make_config,
    make_model,
    make_questions,
    make_run,
)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {"a": make_run(base / "run_a", 1), "b": make_run(base / "run_b", 2)}


def _reference_logits(model_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    """The seed notebook's way: file order, one question at a time, no sorting."""
    from sciqa.scoring.mc_encoding import encode_questions

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForMultipleChoice.from_pretrained(model_dir).eval()
    enc = encode_questions(tok, frame, 64, use_context=True)
    collate = transformers.DataCollatorForMultipleChoice(tok)
    out = []
    with torch.no_grad():
        for feature in enc.features:
            batch = {k: v for k, v in collate([feature]).items() if k != "labels"}
            out.append(model(**batch).logits[0].numpy())
    return np.array(out)


def test_single_model_matches_unsorted_reference(qfile, runs, tmp_path):
    fold = runs["a"] / "fold_0"
    result = run_infer(qfile, [str(fold)], tmp_path / "out", make_config(*INFER_SMALL))
    logits = np.load(tmp_path / "out" / "logits" / "run_a-fold_0.npy")
    ids = json.loads((tmp_path / "out" / "logits" / "ids.json").read_text())
    frame = read_table(qfile)
    assert ids == frame["id"].tolist()
    np.testing.assert_allclose(logits, _reference_logits(fold, frame), atol=1e-4)
    sub = read_submission(tmp_path / "out" / "submission.csv")
    ensemble = np.load(tmp_path / "out" / "logits" / "ensemble.npy")
    assert sub["prediction"].tolist() == top3_letters(ensemble)
    assert (ensemble.argmax(axis=1) == logits.argmax(axis=1)).all()
    names = [r["model"] for r in result["models"]]
    assert names == ["run_a-fold_0", "ensemble"]
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert 0 <= scores["models"][-1]["map_at_3"] <= 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stage"] == "infer" and (tmp_path / "out" / "config.yaml").is_file()


def test_run_dir_expands_and_ensemble_is_weighted_mean(qfile, runs, tmp_path):
    out = tmp_path / "out"
    run_infer(
        qfile,
        [str(runs["a"])],
        out,
        make_config(*INFER_SMALL, "infer.ensemble=logits", "infer.weights=1,3"),
    )
    a = np.load(out / "logits" / "run_a-fold_0.npy")
    b = np.load(out / "logits" / "run_a-fold_1.npy")
    ens = np.load(out / "logits" / "ensemble.npy")
    np.testing.assert_allclose(ens, (a + 3 * b) / 4, atol=1e-5)


def test_glob_and_kaggle_style_dirs_without_meta(qfile, tmp_path):
    for i in range(2):
        make_model(tmp_path / "kaggle" / f"run_{i}", 50 + i, meta=False)
    result = run_infer(
        qfile, [str(tmp_path / "kaggle" / "run_*")], tmp_path / "out", make_config(*INFER_SMALL)
    )
    assert [r["model"] for r in result["models"]] == ["run_0", "run_1", "ensemble"]


def test_tta_runs_rotations_and_averages(qfile, runs, tmp_path):
    fold = runs["a"] / "fold_0"
    out = tmp_path / "out"
    run_infer(qfile, [str(fold)], out, make_config(*INFER_SMALL, "infer.tta=3"))
    frame = read_table(qfile)
    from infer.plan.tta import permute_options, rotations, unpermute

    expected = np.mean(
        [
            unpermute(_reference_logits(fold, permute_options(frame, LETTERS, p)), p)
            for p in rotations(5, 3)
        ],
        axis=0,
    )
    np.testing.assert_allclose(np.load(out / "logits" / "run_a-fold_0.npy"), expected, atol=1e-4)


def test_weights_auto_fits_on_oof(qfile, runs, tmp_path):
    result = run_infer(
        qfile,
        [str(runs["a"]), str(runs["b"])],
        tmp_path / "out",
        make_config(*INFER_SMALL, "infer.weights=auto"),
    )
    fit = result["weights_fit"]
    assert fit["oof_questions"] == 12
    weights = [r["weight"] for r in result["models"][:-1]]
    assert len(weights) == 4 and abs(sum(weights) - 1) < 1e-9
    # Folds of one run share its weight evenly.
    assert weights[0] == pytest.approx(weights[1]) and weights[2] == pytest.approx(weights[3])


def test_weights_auto_refuses_different_oof_ids(qfile, runs, tmp_path):
    other = make_run(tmp_path / "run_c", 3, questions=make_questions(12, seed=99).iloc[:8])
    with pytest.raises(InferError, match="must be trained on the same questions"):
        run_infer(
            qfile,
            [str(runs["a"]), str(other)],
            tmp_path / "out",
            make_config(*INFER_SMALL, "infer.weights=auto"),
        )
    assert not (tmp_path / "out").exists()


def test_offline_with_sockets_blocked(qfile, runs, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is blocked in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    run_infer(qfile, [str(runs["a"])], tmp_path / "out", make_config(*INFER_SMALL, "infer.tta=2"))
    assert len(read_submission(tmp_path / "out" / "submission.csv")) == 10


def test_resume_skips_finished_models(qfile, runs, tmp_path, no_loading):
    out = tmp_path / "out"
    run_infer(qfile, [str(runs["a"])], out, make_config(*INFER_SMALL, "infer.tta=2"))
    first = (out / "submission.csv").read_text()
    config = make_config(*INFER_SMALL, "infer.tta=2")
    result = run_infer(qfile, [str(runs["a"])], out, config, open_member=no_loading)
    assert {r["status"] for r in result["models"][:-1]} == {"cached"}
    assert (out / "submission.csv").read_text() == first


def test_kill_mid_run_leaves_valid_submission(qfile, runs, tmp_path, spy):
    out = tmp_path / "out"
    batches = []

    def dies_in_the_second_model(spec, timing):
        batches.append(timing)
        if len(batches) > 4:  # 10 questions / batch 3 = 4 batches for the first model
            raise KeyboardInterrupt
        return timing

    with pytest.raises(KeyboardInterrupt):
        config = make_config(*INFER_SMALL)
        run_infer(qfile, [str(runs["a"])], out, config, open_member=spy(dies_in_the_second_model))
    sub = read_submission(out / "submission.csv")
    assert sub["id"].tolist() == read_table(qfile)["id"].tolist()
    assert all(len(p.split()) == 3 for p in sub["prediction"])
    assert not list(out.glob(".*.tmp"))


# Time moves only in batches, by their padded tokens (as on real hardware): conftest's
# clock and slow members.


def _pass_seconds(qfile, runs, tmp_path, clock, slow) -> float:
    fold = [str(runs["a"] / "fold_0")]
    config = make_config(*INFER_SMALL)
    result = run_infer(qfile, fold, tmp_path / "t", config, clock=clock, open_member=slow())
    return result["models"][0]["seconds"]


@pytest.mark.parametrize(
    ("budget_passes", "passes"),
    [(5.0, [2, 2]), (2.6, [1, 1]), (1.5, [1, 0])],
)
def test_time_budget_drops_tta_then_models(
    qfile, runs, tmp_path, clock, slow, budget_passes, passes
):
    budget = budget_passes * _pass_seconds(qfile, runs, tmp_path, clock, slow)
    result = run_infer(
        qfile,
        [str(runs["a"])],
        tmp_path / "out",
        make_config(
            *INFER_SMALL, "infer.budget_margin=0", "infer.tta=2", f"infer.time_budget={budget:.3f}s"
        ),
        clock=clock,
        open_member=slow(),
    )
    assert [r.get("passes", 0) for r in result["models"][:-1]] == passes
    sub = read_submission(tmp_path / "out" / "submission.csv")
    assert len(sub) == 10 and all(len(p.split()) == 3 for p in sub["prediction"])
    assert result["plans"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plans"] == result["plans"]


def test_budget_too_small_writes_nothing(qfile, runs, tmp_path, clock, slow):
    budget = 0.1 * _pass_seconds(qfile, runs, tmp_path, clock, slow)
    out = tmp_path / "out"
    with pytest.raises(BudgetError, match="too small for even one model"):
        config = make_config(*INFER_SMALL, f"infer.time_budget={budget:.3f}s")
        run_infer(qfile, [str(runs["a"])], out, config, clock=clock, open_member=slow())
    assert not out.exists()


def test_cascade_sends_unsure_questions_to_expensive_models(qfile, runs, tmp_path):
    big = make_model(tmp_path / "big", 7)
    # Make "big" more expensive by weight-file size only: cheap = the run's folds.
    shutil.copy(big / "model.safetensors", big / "extra.safetensors")
    result = run_infer(
        qfile,
        [str(runs["a"] / "fold_0"), str(big)],
        tmp_path / "out",
        make_config(*INFER_SMALL, "infer.cascade_cheap=1", "infer.cascade_fraction=0.3"),
    )
    cascade = result["cascade"]
    assert cascade["cheap"] == ["run_a-fold_0"] and cascade["expensive"] == ["big"]
    assert cascade["escalated"] == 3
    big_logits = np.load(tmp_path / "out" / "logits" / "big.npy")
    assert (~np.isnan(big_logits).any(axis=1)).sum() == 3
    assert len(read_submission(tmp_path / "out" / "submission.csv")) == 10


# --- bad input: one line, exit 1, nothing written ---------------------------------------


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, q, r: [q], "no MODEL_DIR"),
        (lambda d, q, r: [q, str(d)], "not a model"),
        (lambda d, q, r: [q, str(d / "missing")], "no such model directory"),
        (lambda d, q, r: [q, str(d / "nomatch*")], "matches nothing"),
        (lambda d, q, r: [q, str(r), "--weights", "1"], "1 weight(s) for 2 model(s)"),
        (lambda d, q, r: [q, str(r), "--weights", "1,-1"], ">= 0"),
        (lambda d, q, r: [q, str(r), "--weights", "1,x"], "expected 'auto'"),
        (lambda d, q, r: [q, str(r), "--tta", "9"], "distinct rotations"),
        (lambda d, q, r: [q, str(r), "--time-budget", "soon"], "expected a positive duration"),
    ],
)
def test_bad_input_one_line_error(tmp_path, qfile, runs, cli_small, make_args, message):
    out = tmp_path / "out"
    result = cli_small(*make_args(tmp_path, str(qfile), runs["a"]), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_cut_weights_are_one_line_naming_the_file(tmp_path, qfile, runs, cli_small, weights):
    model = tmp_path / "model"
    shutil.copytree(runs["a"] / "fold_0", model)
    if weights == "pytorch_model.bin":  # the same model as torch.save writes it
        from safetensors.torch import load_file

        torch.save(load_file(model / "model.safetensors"), model / weights)
        (model / "model.safetensors").unlink()
        assert run_infer(qfile, [str(model)], tmp_path / "whole", make_config(*INFER_SMALL))
    cut = cut_in_half(model / weights)
    out = tmp_path / "out"
    result = cli_small(str(qfile), str(model), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {cut}: truncated or corrupt weights (")
    assert result.output.endswith("; re-copy the model folder or re-train it\n")
    assert result.output.count("\n") == 1
    assert not out.exists()


def test_bad_questions_and_duplicate_ids(tmp_path, runs, cli_small):
    frame = make_questions()
    frame.loc[3, "id"] = frame.loc[2, "id"]
    path = tmp_path / "dup.csv"
    frame.to_csv(path, index=False)
    result = cli_small(str(path), str(runs["a"]), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "duplicate id" in result.output


def test_option_count_mismatch(tmp_path, runs, cli_small):
    frame = make_questions().drop(columns=["E"])
    frame["answer"] = "A"
    path = write_questions(frame, tmp_path / "four.csv")
    result = cli_small(str(path), str(runs["a"]), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "trained on 5 options" in result.output


def test_failed_rerun_keeps_previous_submission(qfile, runs, tmp_path, cli_small):
    out = tmp_path / "out"
    run_infer(qfile, [str(runs["a"])], out, make_config(*INFER_SMALL))
    before = (out / "submission.csv").read_text()
    result = cli_small(str(qfile), str(runs["a"]), "--weights", "1,2,3", "--out", str(out))
    assert result.exit_code == 1
    assert (out / "submission.csv").read_text() == before


def test_cli_prints_table(qfile, runs, tmp_path, cli_small):
    result = cli_small(str(qfile), str(runs["a"]), "--out", str(tmp_path / "out"), "--tta", "2")
    assert result.exit_code == 0, result.output
    assert "| ensemble |" in result.output and "MAP@3" in result.output


def test_unfinished_folds_are_skipped(qfile, tmp_path):
    run = make_run(tmp_path / "run", 4)
    (run / "fold_1" / "metrics.json").unlink()  # still training
    result = run_infer(qfile, [str(run)], tmp_path / "out", make_config(*INFER_SMALL))
    assert [r["model"] for r in result["models"]] == ["run-fold_0", "ensemble"]


def test_weights_auto_reads_labels_from_the_train_manifest(qfile, tmp_path):
    train = make_questions(12, seed=99)
    train_file = write_questions(train, tmp_path / "train.csv")
    run = make_run(tmp_path / "run", 5, questions=train)
    oof = pd.read_parquet(run / "oof.parquet").drop(columns=["answer"])
    oof.to_parquet(run / "oof.parquet")
    (run / "manifest.json").write_text(json.dumps({"inputs": [{"path": str(train_file)}]}))
    result = run_infer(
        qfile, [str(run)], tmp_path / "out", make_config(*INFER_SMALL, "infer.weights=auto")
    )
    assert result["weights_fit"]["oof_questions"] == 12
    # A run over two files (ARC-Easy + generated): the labels come from both.
    write_questions(train.iloc[:5], tmp_path / "a.csv")
    write_questions(train.iloc[5:], tmp_path / "b.csv")
    both = [{"path": str(tmp_path / "a.csv")}, {"path": str(tmp_path / "b.csv")}]
    (run / "manifest.json").write_text(json.dumps({"inputs": both}))
    result = run_infer(
        qfile, [str(run)], tmp_path / "out4", make_config(*INFER_SMALL, "infer.weights=auto")
    )
    assert result["weights_fit"]["oof_questions"] == 12
    (run / "manifest.json").unlink()
    with pytest.raises(InferError, match=r"infer\.oof_labels"):
        run_infer(
            qfile, [str(run)], tmp_path / "out2", make_config(*INFER_SMALL, "infer.weights=auto")
        )
    result = run_infer(
        qfile,
        [str(run)],
        tmp_path / "out3",
        make_config(*INFER_SMALL, f"infer.oof_labels={train_file}", "infer.weights=auto"),
    )
    assert result["weights_fit"]["oof_questions"] == 12


def test_weights_auto_refuses_models_outside_a_run(qfile, tmp_path):
    make_model(tmp_path / "run_0", 3, meta=False)
    with pytest.raises(InferError, match="no member is inside one"):
        run_infer(
            qfile,
            [str(tmp_path / "run_0")],
            tmp_path / "out",
            make_config(*INFER_SMALL, "infer.weights=auto"),
        )


def test_zero_shot_member_is_scored_on_the_oof_questions_for_the_fit(qfile, tmp_path):
    """A member outside any run (zero-shot) is scored on the run's labelled questions in
    OUT/oof/ and weighted on those logits, as a run is on its oof.parquet."""
    train = make_questions(12, seed=99)
    train_file = write_questions(train, tmp_path / "train.csv")
    run = make_run(tmp_path / "run", 5, questions=train)
    (run / "manifest.json").write_text(json.dumps({"inputs": [{"path": str(train_file)}]}))
    lone = make_model(tmp_path / "lone", 7, meta=False)
    config = make_config(*INFER_SMALL, "infer.weights=auto")
    result = run_infer(qfile, [str(run), str(lone)], tmp_path / "out", config)
    fit = result["weights_fit"]
    assert fit["oof_questions"] == 12 and set(fit["zero_shot_oof"]) == {"lone"}
    # Its OOF logits are exactly what infer gives on the training questions.
    direct = run_infer(train_file, [str(lone)], tmp_path / "direct", make_config(*INFER_SMALL))
    single = fit["single_run_map_at_3"]["lone"]
    assert single == pytest.approx(direct["models"][0]["map_at_3"])
    oof_logits = np.load(tmp_path / "out" / "oof" / "logits" / "lone.npy")
    np.testing.assert_allclose(oof_logits, np.load(tmp_path / "direct" / "logits" / "lone.npy"))
    weights = {r["model"]: r["weight"] for r in result["models"][:-1]}
    assert abs(sum(weights.values()) - 1) < 1e-9 and set(weights) == {
        "run-fold_0",
        "run-fold_1",
        "lone",
    }
    assert weights["run-fold_0"] == pytest.approx(weights["run-fold_1"])
    # A rerun reads the member's OOF pass from OUT/oof/'s cache instead of recomputing.
    cached = sorted((tmp_path / "out" / "oof" / "cache").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = run_infer(qfile, [str(run), str(lone)], tmp_path / "out", config)
    assert again["weights_fit"]["run_weights"] == fit["run_weights"]
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


def test_zero_shot_member_without_labelled_questions_is_one_line(qfile, tmp_path):
    run = make_run(tmp_path / "run", 5)  # no manifest: nothing names the OOF questions
    lone = make_model(tmp_path / "lone", 7, meta=False)
    with pytest.raises(InferError, match=r"zero-shot members cannot be scored.*oof_labels"):
        run_infer(
            qfile,
            [str(run), str(lone)],
            tmp_path / "out",
            make_config(*INFER_SMALL, "infer.weights=auto"),
        )


@pytest.mark.gpu
def test_gpu_half_precision_agrees_with_cpu(qfile, runs, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fold = str(runs["a"] / "fold_0")
    run_infer(qfile, [fold], tmp_path / "cpu", make_config(*INFER_SMALL, "infer.device=cpu"))
    result = run_infer(
        qfile, [fold], tmp_path / "gpu", make_config(*INFER_SMALL, "infer.device=cuda")
    )
    assert result["dtype"] in {"bfloat16", "float16"}
    cpu = np.load(tmp_path / "cpu" / "logits" / "run_a-fold_0.npy")
    gpu = np.load(tmp_path / "gpu" / "logits" / "run_a-fold_0.npy")
    np.testing.assert_allclose(gpu, cpu, atol=5e-2)

"""sciqa train on tiny random models built here (no downloads): folds, encoding, the
run-dir contract, resume, the DeBERTa-v2 path, torchrun DDP and every bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from sciqa.cli import app  # noqa: E402
from sciqa.errors import SciqaError  # noqa: E402
from sciqa.io import read_table, write_table  # noqa: E402
from sciqa.metrics import map_at_3, top3_letters  # noqa: E402
from tests.builders import TRAIN_SMALL, cut_in_half, train_questions  # noqa: E402
from train.commands import run_train  # noqa: E402
from train.dataset import mc_columns  # noqa: E402
from train.folds import fold_indices, groups_of  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, bert_config):
    """One 2-fold tiny run shared by the contract tests."""
    directory = tmp_path_factory.mktemp("run")
    questions = write_table(train_questions(24), directory / "q.csv")
    out = directory / "run"
    run_train(questions, out, bert_config("train.folds=2"))
    return questions, out


# --- folds ------------------------------------------------------------------------------


def test_folds_are_disjoint_stratified_and_grouped():
    frame = train_questions(60, groups=20)
    seen, answers = [], frame["answer"].value_counts(normalize=True)
    groups = groups_of(frame)
    for train, valid in fold_indices(frame, 3, seed=1):
        assert not set(train) & set(valid)
        assert not set(groups[train]) & set(groups[valid])  # no chunk straddles the split
        share = frame["answer"].iloc[valid].value_counts(normalize=True)
        assert (share.reindex(answers.index, fill_value=0) - answers).abs().max() < 0.15
        seen.extend(valid)
    assert sorted(seen) == list(range(60))  # every row validated exactly once


def test_rows_without_source_id_are_their_own_group():
    frame = train_questions(6).assign(source_id=["s", "s", "", None, "t", "t"])
    assert list(groups_of(frame)) == [
        "src:s",
        "src:s",
        "id:q002",
        "id:q003",
        "src:t",
        "src:t",
    ]


def test_truncation_cuts_context_never_question_or_option(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    frame = train_questions(4)
    frame["context"] = " ".join(["energy"] * 500)
    columns = mc_columns(tokenizer, frame, max_length=32, use_context=True, letters=list("ABCD"))
    for row, option_ids in enumerate(columns["input_ids"]):
        question = tokenizer(frame["prompt"][row], add_special_tokens=False)["input_ids"]
        for letter, ids in zip("ABCD", option_ids, strict=True):
            option = tokenizer(frame[letter][row], add_special_tokens=False)["input_ids"]
            assert len(ids) == 32
            assert ids[1 : 1 + len(question)] == question
            assert ids[-1 - len(option) : -1] == option
    assert columns["length"] == [32] * 4 and columns["overlong"] == [False] * 4


# --- the run dir contract -----------------------------------------------------------------


def test_tiny_run_writes_the_contract_and_reloads_to_the_oof_logits(finished_run, fold_logits):
    questions, out = finished_run
    frame = read_table(questions)
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", "A", "B", "C", "D", "answer"]
    assert sorted(oof["id"]) == sorted(frame["id"])  # each question validated once
    # The labels travel with the logits, so infer's --weights auto needs no other file.
    assert oof["answer"].tolist() == frame.set_index("id")["answer"].loc[oof["id"]].tolist()
    assert (out / "config.yaml").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished_folds"] == [0, 1] and manifest["oof_rows"] == 24
    answers = frame.set_index("id")["answer"].loc[oof["id"]].tolist()
    expected = map_at_3(answers, top3_letters(oof[list("ABCD")].to_numpy()))
    assert manifest["oof"]["map_at_3"] == pytest.approx(expected)

    for fold in (0, 1):
        directory = out / f"fold_{fold}"
        assert not (directory / "checkpoints").exists()  # only the best model is kept
        info = json.loads((directory / "sciqa_model.json").read_text())
        assert info == {
            "format": "sciqa-mc/1",
            "max_length": 48,
            "use_context": True,
            "n_options": 4,
            "letters": ["A", "B", "C", "D"],
            "fold": fold,
            "backbone": info["backbone"],
            "family": "mc",
        }
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["n_train"] + metrics["n_valid"] == 24
        assert 0 <= metrics["map_at_3"] <= 1 and metrics["best_epoch"] == 1
        assert len(metrics["epochs"]) == 1 and metrics["samples_per_second"] > 0

        part = oof[oof["fold"] == fold]
        rows = frame.set_index("id").loc[part["id"]].reset_index()
        logits = fold_logits(directory, rows, info["max_length"])
        np.testing.assert_allclose(logits, part[list("ABCD")].to_numpy(), atol=1e-4)


def test_rerun_skips_finished_folds(finished_run, bert_config):
    questions, out = finished_run
    stamp = (out / "fold_0" / "metrics.json").stat().st_mtime_ns
    assert (
        run_train(
            questions,
            out,
            bert_config("train.folds=2"),
        )
        == []
    )
    assert (out / "fold_0" / "metrics.json").stat().st_mtime_ns == stamp


def test_different_config_is_refused_unless_overwrite(finished_run, tiny_bert, tmp_path):
    questions, out = finished_run
    args = ["train", str(questions), "--out", str(out), "--folds", "2"]
    for override in (*TRAIN_SMALL, f"models.backbone={tiny_bert}", "train.learning_rate=0.1"):
        args += ["--set", override]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "already holds a run with a different train.learning_rate;" in result.output
    assert "--overwrite" in result.output


def test_overwrite_replaces_the_run(tmp_path, run_files, bert_config):
    questions, out = run_files(12)
    run_train(
        questions,
        out,
        bert_config("train.folds=2"),
        fold=1,
    )
    (out / "fold_1" / "stale.txt").write_text("x")
    config = bert_config("train.learning_rate=0.001", "train.folds=2")
    with pytest.raises(SciqaError, match=r"different train\.learning_rate;"):
        run_train(questions, out, config, fold=1)
    trained = run_train(questions, out, config, fold=1, overwrite=True)
    assert [m["fold"] for m in trained] == [1]
    assert not (out / "fold_1" / "stale.txt").exists()


def test_single_fold_and_full_fit_with_valid_file(tmp_path, bert_config):
    questions = write_table(train_questions(12), tmp_path / "q.csv")
    valid = write_table(train_questions(8).assign(id=lambda f: "v" + f["id"]), tmp_path / "v.csv")
    out = tmp_path / "full"
    run_train(
        questions,
        out,
        bert_config("train.folds=1"),
        valid=valid,
    )
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof["id"]) == [f"vq{i:03d}" for i in range(8)] and set(oof["fold"]) == {0}

    out = tmp_path / "one"
    trained = run_train(
        questions,
        out,
        bert_config("train.folds=3"),
        fold=2,
    )
    assert [m["fold"] for m in trained] == [2]
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_2"]


def test_resume_after_a_kill_continues_from_the_checkpoint(
    tmp_path, kill_after_checkpoint, run_files, bert_config
):
    questions, out = run_files(16)
    config = bert_config("train.epochs=2", "train.early_stopping_patience=5", "train.folds=2")
    with pytest.raises(KeyboardInterrupt):
        run_train(questions, out, config)
    checkpoints = list((out / "fold_0" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (out / "fold_0" / "metrics.json").exists()

    kill_after_checkpoint()  # undo: the rerun may finish
    trained = run_train(questions, out, config)
    assert [m["fold"] for m in trained] == [0, 1]
    assert trained[0]["resumed_from"] == str(checkpoints[0])
    assert trained[1]["resumed_from"] is None
    assert [e["epoch"] for e in trained[0]["epochs"]] == [1.0, 2.0]  # history survived


# --- backbones ----------------------------------------------------------------------------


def test_deberta_v2_random_init_path_trains_saves_and_reloads(
    tmp_path, tiny_deberta, run_files, deberta_config
):
    from transformers import AutoModelForMultipleChoice, DebertaV2ForMultipleChoice

    questions, out = run_files(12)
    config = deberta_config(
        "train.freeze_embeddings=true", "train.freeze_layers=1", "train.folds=2"
    )
    trained = run_train(questions, out, config)
    assert len(trained) == 2
    model = AutoModelForMultipleChoice.from_pretrained(out / "fold_0")
    assert isinstance(model, DebertaV2ForMultipleChoice)
    # Frozen parts really stayed at their initial values.
    start = AutoModelForMultipleChoice.from_pretrained(tiny_deberta)
    torch.testing.assert_close(
        model.deberta.embeddings.word_embeddings.weight,
        start.deberta.embeddings.word_embeddings.weight,
    )
    trained_layer = model.deberta.encoder.layer[1].output.dense.weight
    assert not torch.equal(trained_layer, start.deberta.encoder.layer[1].output.dense.weight)


def test_lora_adapters_are_merged_into_a_plain_model(tmp_path, run_files, bert_config):
    from transformers import AutoModelForMultipleChoice

    questions, out = run_files(12)
    config = bert_config(
        "train.lora=true", "train.lora_target_modules=[query,value]", "train.folds=2"
    )
    run_train(questions, out, config, fold=0)
    model = AutoModelForMultipleChoice.from_pretrained(out / "fold_0")
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_torchrun_two_processes_train_one_model_saved_once(tmp_path, tiny_bert):
    questions = write_table(train_questions(16), tmp_path / "q.csv")
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    command += ["2", "-m", "sciqa", "train", str(questions), "--out", str(out)]
    command += ["--folds", "2", "--fold", "0", "--set", f"models.backbone={tiny_bert}"]
    command += ["--set", "train.epochs=1", "--set", "train.batch_size=2"]
    command += ["--set", f"train.tokenize_cache={tmp_path / 'tokenized'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["n_train"] == 8 and metrics["n_valid"] == 8
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2
    assert done.stderr.count("fold 0: MAP@3") == 1  # only rank 0 reports and writes
    assert len(list((out / "fold_0").glob("*.safetensors"))) == 1
    assert len(pd.read_parquet(out / "oof.parquet")) == metrics["n_valid"]
    # Rank 0 tokenized; rank 1 waited, then read its cache file.
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 1
    assert done.stderr.count("questions tokenized in") == 1
    assert done.stderr.count("questions read from") == 1


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (lambda f: f.drop(columns="answer"), [], "missing column(s) 'answer'"),
        (lambda f: f.assign(answer=["", *f["answer"][1:]]), [], "empty answer"),
        (lambda f: f.assign(answer=["F", *f["answer"][1:]]), [], "'F' is not one of A, B"),
        (lambda f: f.head(3), ["--folds", "5"], "fewer than --folds 5"),
        (lambda f: f.assign(source_id="one"), ["--folds", "2"], "1 source_id groups"),
        (lambda f: f, ["--folds", "3", "--fold", "3"], "--fold 3: out of range"),
        (lambda f: f, ["--folds", "1"], "needs --valid FILE"),
        (lambda f: f, ["--set", "train.precision=bf16"], "needs a CUDA GPU"),
        (lambda f: f, ["--set", "train.precision=fp8"], "train.precision = 'fp8'"),
        (lambda f: f, ["--set", "models.backbone=nobody/no-such-model"], "models.backbone"),
        (lambda f: f, ["--set", "models.backbone=./missing"], "no such file or directory"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(refused, tiny_bert, change, args, message):
    if torch.cuda.is_available() and "bf16" in args:
        pytest.skip("a GPU is present")
    output = refused(change(train_questions(12)), tiny_bert, *args)
    assert output.startswith("error:") and message in output


def test_unreachable_hub_backbone_says_offline_needs_local_paths(refused):
    output = refused(train_questions(12), "nobody/no-such-model")
    assert "offline only local paths" in output


def test_backbone_with_cut_weights_is_one_line_naming_the_file(refused, tiny_bert, tmp_path):
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_bert, backbone)
    cut = cut_in_half(backbone / "model.safetensors")
    output = refused(train_questions(12), str(backbone))
    assert output.startswith(f"error: {cut}: truncated or corrupt weights (")
    assert output.endswith("; re-copy the model folder or re-train it\n")
    assert not (tmp_path / "run").exists()  # refused before the run dir is written


def test_valid_file_with_other_option_count_is_refused(refused, tiny_bert, tmp_path):
    write_table(train_questions(6, n_options=3), tmp_path / "v.csv")
    args = ("--folds", "1", "--valid", str(tmp_path / "v.csv"))
    output = refused(train_questions(12), tiny_bert, *args)
    assert "same option count" in output


def test_several_training_files_train_as_one_table(tmp_path, bert_config):
    """ARC-Easy + generated questions: the files are concatenated, every row is out of
    fold once, the manifest names each file and the fingerprint holds each digest."""
    first = write_table(train_questions(12), tmp_path / "a.csv")
    second = write_table(train_questions(8).assign(id=lambda f: "g" + f["id"]), tmp_path / "g.csv")
    out = tmp_path / "run"
    run_train([first, second], out, bert_config("train.folds=2"))
    oof = pd.read_parquet(out / "oof.parquet")
    assert sorted(oof["id"]) == sorted(
        [f"q{i:03d}" for i in range(12)] + [f"gq{i:03d}" for i in range(8)]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    paths = [entry["path"] if isinstance(entry, dict) else entry for entry in manifest["inputs"]]
    assert [os.path.basename(p) for p in paths] == ["a.csv", "g.csv"]
    assert len(manifest["fingerprint"]["questions"]) == 2
    assert manifest["n_questions"] == 20


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (train_questions(6, n_options=3).assign(id=lambda f: "g" + f["id"]), "same option count"),
        (train_questions(6), "id 'q000' is also in"),
    ],
)
def test_a_second_training_file_that_does_not_fit_is_refused(
    refused, tiny_bert, tmp_path, other, message
):
    write_table(other, tmp_path / "other.csv")
    output = refused(train_questions(12), tiny_bert, str(tmp_path / "other.csv"))
    assert output.startswith(f"error: {tmp_path / 'other.csv'}: ") and message in output

"""sciqa train with a causal LM backbone, on a tiny random Llama built here (no downloads):
the run-dir contract infer reads, cloze/letter/yes_no training, LoRA merging, a loss that
must fall on a learnable task, precision on CPUs, and every bad input."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer  # noqa: E402
from sciqa.errors import ConfigError, SciqaError  # noqa: E402
from sciqa.io import read_table, write_table  # noqa: E402
from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm  # noqa: E402
from sciqa.scoring.llm_scoring import ScoreHead, score_rows  # noqa: E402
from tests.builders import (  # noqa: E402
    CAUSAL_TRAIN_SMALL,
    build_tiny_llama,
    cut_in_half,
    make_config,
    train_questions,
)
from tests.builders import TRAIN_WORDS as WORDS  # noqa: E402
from train.commands import run_train  # noqa: E402

RIGHT = "frozen salt crystal"  # the learnable task's answer, always the same tokens


def learnable_questions(n: int = 40) -> pd.DataFrame:
    """The right option is always RIGHT, at a varying letter: a model can learn it."""
    frame = train_questions(n, seed=1).drop(columns="context")
    for i in range(n):
        frame.loc[i, frame.loc[i, "answer"]] = RIGHT
    return frame


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    texts = [" ".join(WORDS), RIGHT, *train_questions(8)["context"]]
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), texts))


@pytest.fixture(scope="session")
def llama_config(tiny_llama, tokenize_cache):
    """The tiny Llama with the small causal train preset, plus ``--set`` overrides."""
    preset = (f"models.backbone={tiny_llama}", *CAUSAL_TRAIN_SMALL, tokenize_cache)
    return lambda *extra: make_config(*preset, *extra)


@pytest.fixture(scope="module")
def cloze_run(tmp_path_factory, llama_config):
    """A 2-fold full fine-tune in fp32, shared by the contract tests."""
    directory = tmp_path_factory.mktemp("cloze")
    questions = write_table(train_questions(24), directory / "q.csv")
    out = directory / "run"
    run_train(
        questions,
        out,
        llama_config("train.precision=fp32", "train.folds=2"),
    )
    return questions, out


def test_cloze_run_writes_the_contract_and_reloads_to_the_oof_logits(cloze_run):
    questions, out = cloze_run
    frame = read_table(questions)
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", "A", "B", "C", "D", "answer"]
    assert sorted(oof["id"]) == sorted(frame["id"])  # each question validated once
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "causal_lm" and manifest["finished_folds"] == [0, 1]
    assert manifest["fingerprint"]["causal_lm"]["mode"] == "cloze"

    for fold in (0, 1):
        directory = out / f"fold_{fold}"
        config = json.loads((directory / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert not (directory / "checkpoints").exists()
        info = json.loads((directory / "sciqa_model.json").read_text())
        assert info["family"] == "causal_lm" and info["letters"] == list("ABCD")
        assert info["prompt"]["mode"] == "cloze" and info["prompt"]["max_length"] == 48
        assert info["max_length"] == 48 and info["use_context"] is True
        assert "adapter" not in info
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["precision"] == "fp32" and metrics["best_epoch"] == 1

        # What infer does: the saved fold, the saved prompt, the KV-cached scorer.
        tokenizer = load_causal_tokenizer(str(directory))
        model = load_causal_lm(str(directory), dtype=torch.float32).eval()
        part = oof[oof["fold"] == fold]
        rows = frame.set_index("id").loc[part["id"]].reset_index()
        spec = PromptSpec.from_meta(info["prompt"])
        enc = encode_for_llm(tokenizer, rows, spec, letters=info["letters"])
        assert enc.truncated > 0  # the contexts were cut, the same way in both stages
        scores = score_rows(model, enc, range(len(rows)), ScoreHead.of(enc), tokenizer.pad_token_id)
        np.testing.assert_allclose(scores.numpy(), part[list("ABCD")].to_numpy(), atol=1e-4)


def test_changed_causal_lm_section_is_refused_but_infer_only_keys_resume(cloze_run, llama_config):
    questions, out = cloze_run
    config = llama_config("train.precision=fp32", "causal_lm.mode=letter", "train.folds=2")
    with pytest.raises(SciqaError, match=r"different causal_lm\.mode;"):
        run_train(questions, out, config)
    config = llama_config("train.precision=fp32", "causal_lm.batch_size=2", "train.folds=2")
    assert run_train(questions, out, config) == []  # finished folds skipped


def test_resume_after_a_kill_continues_from_the_checkpoint(
    tmp_path, kill_after_checkpoint, run_files, llama_config
):
    questions, out = run_files(12)
    config = llama_config("train.epochs=2", "train.early_stopping_patience=5", "train.folds=2")
    with pytest.raises(KeyboardInterrupt):
        run_train(questions, out, config, fold=0)
    checkpoints = list((out / "fold_0" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1

    kill_after_checkpoint()  # undo: the rerun may finish
    [trained] = run_train(questions, out, config, fold=0)
    assert trained["resumed_from"] == str(checkpoints[0])
    assert [e["epoch"] for e in trained["epochs"]] == [1.0, 2.0]


def test_torn_lora_checkpoint_is_set_aside_and_the_one_before_resumed(
    run_files, llama_config, kill_in_second_save, caplog
):
    questions, out = run_files(12)
    config = llama_config(
        "train.lora=true", "train.epochs=3", "train.early_stopping_patience=5", "train.folds=2"
    )
    finish = kill_in_second_save(lambda ck: cut_in_half(ck / "adapter_model.safetensors"))
    with pytest.raises(KeyboardInterrupt):
        run_train(questions, out, config, fold=0)
    complete, torn = sorted(
        (out / "fold_0" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:])
    )

    finish()
    with caplog.at_level(logging.INFO, logger="train"):
        [trained] = run_train(questions, out, config, fold=0)
    ours = [r for r in caplog.records if r.name.startswith("train")]  # not transformers'
    [warning] = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert f"{torn} is incomplete (adapter_model.safetensors: " in warning
    assert (out / "fold_0" / "torn-checkpoints" / torn.name).is_dir()
    assert trained["resumed_from"] == str(complete)
    assert [e["epoch"] for e in trained["epochs"]] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("mode", ["letter", "yes_no"])
def test_letter_and_yes_no_modes_train_with_one_oof_column_per_letter(
    tmp_path, mode, run_files, llama_config
):
    from train.model import cpu_supports_bf16

    questions, out = run_files(20, n_options=5)
    run_train(
        questions,
        out,
        llama_config(f"causal_lm.mode={mode}", "train.folds=2"),
    )
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", *"ABCDE", "answer"] and len(oof) == 20
    assert np.isfinite(oof[list("ABCDE")].to_numpy()).all()
    info = json.loads((out / "fold_0" / "sciqa_model.json").read_text())
    assert info["prompt"]["mode"] == mode and info["prompt"]["chat"] is True  # auto: has one
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    cpu_bf16 = cpu_supports_bf16() and not torch.cuda.is_available()
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "fp32")  # train.precision=auto


def test_lora_is_merged_into_a_plain_model_whose_weights_changed(
    tmp_path, tiny_llama, run_files, llama_config
):
    questions, out = run_files(12)
    config = llama_config("train.lora=true", "train.learning_rate=0.01", "train.folds=2")
    run_train(questions, out, config, fold=0)
    directory = out / "fold_0"
    assert not list(directory.glob("adapter_*"))
    model = load_causal_lm(str(directory), dtype=torch.float32)
    base = load_causal_lm(tiny_llama, dtype=torch.float32)
    assert not any("lora" in name for name, _ in model.named_parameters())
    layer, start = model.model.layers[0], base.model.layers[0]
    assert not torch.equal(layer.self_attn.q_proj.weight, start.self_attn.q_proj.weight)
    assert not torch.equal(layer.mlp.down_proj.weight, start.mlp.down_proj.weight)  # all-linear
    # LoRA trains adapters only: what has none stays at its initial value.
    torch.testing.assert_close(model.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_loss_falls_on_a_learnable_task(tmp_path, tiny_llama, llama_config):
    frame = learnable_questions()
    questions = write_table(frame, tmp_path / "q.csv")
    out = tmp_path / "run"
    config = llama_config(
        "train.epochs=3",
        "train.learning_rate=0.01",
        "train.warmup_ratio=0",
        "train.early_stopping_patience=5",
        "train.precision=fp32",
        "train.folds=2",
    )
    run_train(questions, out, config, fold=0)
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())

    # The untrained model's loss on the same validation questions.
    oof = pd.read_parquet(out / "oof.parquet")
    rows = frame.set_index("id").loc[oof["id"]].reset_index()
    tokenizer = load_causal_tokenizer(tiny_llama)
    spec = PromptSpec.from_config(config.causal_lm, tokenizer, "tiny")
    enc = encode_for_llm(tokenizer, rows, spec)
    base = load_causal_lm(tiny_llama, dtype=torch.float32).eval()
    scores = score_rows(base, enc, range(len(rows)), ScoreHead.of(enc), tokenizer.pad_token_id)
    start = torch.nn.functional.cross_entropy(scores, torch.tensor(enc.labels)).item()

    losses = [e["eval_loss"] for e in metrics["epochs"]]
    assert len(losses) == 3
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * start, (start, losses)
    assert metrics["accuracy"] == 1.0, metrics


# --- precision ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU rules")
def test_cpu_bf16_only_for_causal_lms_and_only_on_cpus_that_have_it(monkeypatch):
    from train import model as model_module

    resolve = model_module.resolve_precision
    monkeypatch.setattr(model_module, "cpu_supports_bf16", lambda: True)
    assert resolve("auto", cpu_bf16=True) == (True, False)
    assert resolve("bf16", cpu_bf16=True) == (True, False)
    assert resolve("auto") == (False, False)  # the encoder path keeps fp32 on CPUs
    with pytest.raises(ConfigError, match="needs a CUDA GPU and none is visible"):
        resolve("bf16")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve("fp16", cpu_bf16=True)
    monkeypatch.setattr(model_module, "cpu_supports_bf16", lambda: False)
    assert resolve("auto", cpu_bf16=True) == (False, False)
    with pytest.raises(ConfigError, match=r"bf16 instructions .* this machine has neither"):
        resolve("bf16", cpu_bf16=True)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["causal_lm.load_in=4bit", "train.lora=true"], "causal_lm.load_in: 4/8-bit loading"),
        (["causal_lm.device_map=auto"], "causal_lm.device_map: 4/8-bit loading and device_map"),
        (["train.freeze_layers=1"], "train.freeze_layers = 1: freezing layers is for encoder"),
        (["train.precision=fp16"], "train.precision = 'fp16' needs a CUDA GPU"),
        (["causal_lm.mode=letter", "causal_lm.chat_template=on"], "has no chat template"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, tiny_llama, refused, sets, message):
    if torch.cuda.is_available() and "freeze" not in sets[0]:
        pytest.skip("a GPU is present")
    if "chat_template" in sets[-1]:  # a model without a chat template
        texts = [" ".join(WORDS)]
        tiny_llama = str(build_tiny_llama(tmp_path / "nochat", texts, chat=False))
    output = refused(train_questions(12), tiny_llama, sets=sets)
    assert output.startswith("error:") and message in output


def test_unknown_llm_path_names_the_backbone_key(refused):
    output = refused(train_questions(12), "llm:./no-such-model")
    assert "models.backbone = 'llm:./no-such-model': no such file or directory" in output


def test_letter_mode_with_a_tokenizer_that_splits_letters_is_refused(tmp_path, refused):
    # 256 bytes + 3 special tokens: no merges, so " A" is two tokens ("Ġ", "A").
    tiny = build_tiny_llama(tmp_path / "bytes", [" ".join(WORDS)], chat=False, vocab=259)
    output = refused(train_questions(12), str(tiny), sets=["causal_lm.mode=letter"])
    assert "the tokenizer splits ' A' into 2 tokens" in output
    assert "use causal_lm.mode=cloze" in output


def test_the_qwen_lora_recipe_trains_a_letter_scorer_that_infer_reads(
    tmp_path, tiny_llama, tokenize_cache
):
    """configs/llm_qwen_lora.yaml as shipped, with the 1.5B backbone swapped for the tiny
    Llama (the recipe's CPU smoke test): LoRA adapters in letter mode, merged on save,
    and the fold scored by sciqa infer with the prompt it was trained with."""
    from pathlib import Path

    from infer.commands import run_infer
    from sciqa.config import load_config

    recipe = Path(__file__).resolve().parents[2] / "configs" / "llm_qwen_lora.yaml"
    shipped = load_config(recipe)
    assert shipped.models.backbone == "llm:qwen" and shipped.train.lora
    assert shipped.causal_lm.mode == "letter"
    small = [f"models.backbone={tiny_llama}", "train.batch_size=4", "causal_lm.max_length=48"]
    config = load_config(recipe, [*small, "train.folds=2", tokenize_cache])
    questions = write_table(learnable_questions(16), tmp_path / "q.csv")
    run_train(questions, tmp_path / "run", config, fold=0)
    fold = tmp_path / "run" / "fold_0"
    info = json.loads((fold / "sciqa_model.json").read_text())
    assert info["family"] == "causal_lm" and info["prompt"]["mode"] == "letter"
    assert not list(fold.glob("adapter_*"))  # merged: infer loads a plain model
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["epochs"] and np.isfinite(metrics["epochs"][-1]["map_at_3"])
    result = run_infer(questions, [str(fold)], tmp_path / "out", load_config(recipe, small))
    assert result["models"][0]["questions"] == 16

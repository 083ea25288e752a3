from pathlib import Path

import pytest

from sciqa.config import SciqaConfig, dump_config, load_config
from sciqa.errors import ConfigError


def test_defaults_without_a_file():
    config = load_config()
    assert config == SciqaConfig()
    assert config.models.backbone == "default"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.toml", 'seed = 7\n[models]\nbackbone = "microsoft/deberta-v3-large"\n'),
        ("c.yaml", "seed: 7\nmodels:\n  backbone: microsoft/deberta-v3-large\n"),
    ],
)
def test_file_then_cli_overrides(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    config = load_config(path)
    assert (config.seed, config.models.backbone) == (7, "microsoft/deberta-v3-large")
    config = load_config(path, ["seed=8", "models.backbone=/ckpt/deberta"])
    assert (config.seed, config.models.backbone) == (8, "/ckpt/deberta")
    assert config.models.embedding == "default"


def test_override_values_keep_their_text():
    config = load_config(None, ["models.llm=no", "models.embedding=1.0"])
    assert (config.models.llm, config.models.embedding) == ("no", "1.0")


def test_dump_round_trips(tmp_path):
    config = load_config(None, ["seed=3", "data.corpus=/data/wiki"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("[models]\nbackbon = 'x'\n", [], r"c\.toml: unknown key 'models\.backbon'"),
        ("seed = 'many'\n", [], r"c\.toml: seed: Input should be a valid integer"),
        ("seed = \n", [], r"c\.toml: not valid TOML"),
        ("", ["modles.llm=x"], r"unknown key 'modles'"),
        ("", ["seed"], r"--set 'seed': expected section\.key=value"),
        ("seed = 3\n", ["seed.x=1"], r"'seed' is a value, not a section"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, overrides, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_missing_or_unknown_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"must be \.toml, \.yaml or \.yml"):
        load_config(tmp_path / "c.json")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_length=0", r"config: train\.max_length: .*greater than or equal to 8"),
        ("train.folds=0", r"train\.folds: .*greater than or equal to 1"),
        ("train.epochs=0", r"train\.epochs: .*greater than 0"),
        ("train.learning_rate=-1e-5", r"train\.learning_rate: .*greater than 0"),
        ("train.warmup_ratio=1", r"train\.warmup_ratio: .*less than 1"),
        ("train.batch_size=0", r"train\.batch_size: "),
        ("train.eval_batch_size=0", r"train\.eval_batch_size: "),
        ("train.grad_accum=0", r"train\.grad_accum: "),
        ("train.weight_decay=-0.1", r"train\.weight_decay: "),
        ("train.max_grad_norm=-1", r"train\.max_grad_norm: "),
        ("train.freeze_layers=-1", r"train\.freeze_layers: "),
        ("train.lora_r=0", r"train\.lora_r: "),
        ("train.lora_alpha=0", r"train\.lora_alpha: "),
        ("train.lora_dropout=1", r"train\.lora_dropout: "),
        ("train.early_stopping_patience=0", r"train\.early_stopping_patience: "),
        ("train.logging_steps=0", r"train\.logging_steps: "),
        ("train.dataloader_workers=-1", r"train\.dataloader_workers: "),
        ("seed=-1", r"config: seed: .*greater than or equal to 0"),
        ("gen.science_min_similarity=2", r"gen\.science_min_similarity: .*less than or equal to 1"),
        ("llm.server_port=70000", r"llm\.server_port: .*less than or equal to 65535"),
        (
            "retrieval.chunk_overlap=200",
            r"config: retrieval: chunk_overlap \(200\) must be smaller than chunk_words \(200\); "
            r"lower retrieval\.chunk_overlap$",
        ),
        ("retrieval.min_chunk_words=201", r"retrieval: min_chunk_words \(201\) is more than"),
        (
            "retrieval.k=51",
            r"retrieval: k \(51\) is more than the hits fused \(dense_candidates 50, "
            r"bm25_candidates 50\); raise those or lower k$",
        ),
    ],
)
def test_out_of_range_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_k_is_checked_against_the_retrievers_in_use():
    assert load_config(None, ["retrieval.k=60", "retrieval.dense_candidates=60"]).retrieval.k == 60
    with pytest.raises(ConfigError, match=r"k \(60\) is more than the hits fused \(bm25_cand"):
        load_config(None, ["retrieval.k=60", "retrieval.dense_candidates=60", "retrieval.dense=no"])


def test_bounds_keep_the_shipped_configs_and_defaults_valid():
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "configs").glob("*.*")):
        if not path.name.startswith("gen_prompts"):  # generation prompts, not a config
            load_config(path)
    assert load_config(None, ["train.warmup_ratio=0", "train.max_grad_norm=0"]).train.folds == 5

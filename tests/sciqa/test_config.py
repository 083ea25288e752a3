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

"""Typed configuration: one TOML or YAML file, overridden by ``--set section.key=value``.

Every default is listed once, here. Unknown keys are errors, so a typo never silently
falls back to a default. Later stages add their own section models.

>>> load_config(None, ["models.backbone=microsoft/deberta-v3-large"]).models.backbone
'microsoft/deberta-v3-large'
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sciqa.errors import ConfigError

DEFAULT = "default"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Section):
    """Model names: ``default`` = the offline package-shipped asset (docs/assets.md),
    otherwise a local directory or a Hugging Face Hub name."""

    embedding: str = DEFAULT  # sentence-transformers encoder for retrieval
    backbone: str = (
        DEFAULT  # AutoModelForMultipleChoice checkpoint, e.g. microsoft/deberta-v3-large
    )
    llm: str = DEFAULT  # instruction-following LLM that writes questions in data_gen
    reranker: str | None = None  # optional cross-encoder over fused retrieval hits; None = off


class DataConfig(_Section):
    corpus: str = DEFAULT  # Wikipedia articles (dir or file); default = package-shipped sample


# --- Stage sections. Each stage owns its class below; keep one key per line with a
# one-line comment, defaults that run offline on a 2-core CPU.


class RetrievalConfig(_Section):
    """``sciqa index`` / ``sciqa retrieve``."""


class TrainConfig(_Section):
    """``sciqa train``."""


class InferConfig(_Section):
    """``sciqa infer``."""


class GenConfig(_Section):
    """``sciqa gen``: question generation."""


class LLMConfig(_Section):
    """The OpenAI-compatible endpoint ``sciqa gen`` talks to."""


class SciqaConfig(_Section):
    runs_dir: Path = Path("runs")  # every run writes runs/<stage>/<name>/
    seed: int = 42  # one seed for folds, sampling and model init
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    gen: GenConfig = GenConfig()
    llm: LLMConfig = LLMConfig()


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: top level must be a mapping of sections")
            return data
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {reason}") from None
    raise ConfigError(f"{path}: config must be .toml, .yaml or .yml")


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    # Scalars stay strings for pydantic to coerce ("7" -> int for an int field, but a
    # model named "1.0" stays "1.0"); only lists/mappings need parsing.
    raw = raw.strip()
    value: Any = raw
    if raw and raw[0] in "[{":
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {override!r}: value is not a valid list/mapping") from None
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {where!r}; run `sciqa config` to see the valid keys"
    return f"{source}: {where}: {first['msg']}"


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> SciqaConfig:
    """Defaults, then ``path`` (TOML/YAML), then each ``overrides`` item in order."""
    data = _read_file(Path(path)) if path is not None else {}
    for override in overrides or []:
        _apply_override(data, override)
    source = str(path) if path is not None else "config"
    try:
        return SciqaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def dump_config(config: SciqaConfig) -> str:
    """YAML of the resolved config, as written next to every run's outputs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

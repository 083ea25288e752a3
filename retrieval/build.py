"""``sciqa index``: corpus -> passages -> faiss + BM25 -> a complete index folder.

Three ways to build (see :mod:`retrieval.index_dir` for the layout):

* one machine: :func:`build_index` does everything;
* many machines: :func:`train_shared` once (only for factories that need training),
  :func:`build_shard` for each ``i/n`` in any job array, then :func:`merge_shards`.

Each reads the ``retrieval`` section plus the other values it needs, passed on their
own: ``embedding`` (``models.embedding``), ``seed``, and ``write_run``, which writes a
folder's ``config.yaml`` and ``manifest.json`` (the command binds it to its resolved
config). Every build removes the old manifest first and writes the new one last, so an
interrupted build never leaves a folder that loads as a complete index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from retrieval import dense, index_dir, lexical
from retrieval.chunking import chunk_corpus, passage_texts
from retrieval.context import check_template
from retrieval.corpus import read_corpus
from retrieval.embed import embedding_dim, encode, encode_blocks, load_encoder
from retrieval.errors import CorpusError, IndexDirError, RetrievalInputError
from sciqa.config import RetrievalConfig
from sciqa.io import read_table, write_json, write_table
from sciqa.runs import MANIFEST, file_digest


class RunWriter(Protocol):
    """Writes ``folder/config.yaml`` and then ``folder/manifest.json`` (``extra`` added):
    :func:`sciqa.runs.write_run_files` bound to the command's resolved config."""

    def __call__(
        self, folder: Path, stage: str, *, inputs: Sequence[Path] = (), extra: dict[str, Any]
    ) -> Path: ...


@dataclass
class Corpus:
    """Passages of a corpus plus what identifies it (files, digests, article count)."""

    passages: pd.DataFrame
    files: list[Path]
    digests: list[str]
    n_articles: int


def load_passages(corpus_path: Path, settings: RetrievalConfig) -> Corpus:
    check_template(settings.passage_template, "passage_template", ("title", "text"))
    articles, files = read_corpus(corpus_path)
    passages = chunk_corpus(
        articles, settings.chunk_words, settings.chunk_overlap, settings.min_chunk_words
    )
    if passages.empty:
        raise CorpusError(
            f"{corpus_path}: no passage has retrieval.min_chunk_words "
            f"({settings.min_chunk_words}) words or more"
        )
    return Corpus(passages, files, [file_digest(f) for f in files], len(articles))


def _remove_manifest(folder: Path) -> None:
    (folder / MANIFEST).unlink(missing_ok=True)


def _embed_into(
    index: Any, model: Any, texts: list[str], settings: RetrievalConfig, offset: int = 0
) -> float:
    """Embed ``texts`` block by block into ``index`` (ids from ``offset``); seconds spent."""
    started = time.perf_counter()
    for start, vectors in encode_blocks(
        model,
        texts,
        block=settings.encode_block,
        prefix=settings.passage_prefix,
        batch_size=settings.batch_size,
        devices=settings.encode_devices,
    ):
        dense.add(index, vectors, offset + start)
    return time.perf_counter() - started


def _trained_index(model: Any, texts: list[str], settings: RetrievalConfig, seed: int) -> Any:
    """An empty index from the factory, trained on a seeded sample when it needs it."""
    index = dense.new_index(embedding_dim(model), settings.faiss_factory)
    if dense.needs_training(index):
        rows = dense.sample_rows(len(texts), settings.train_sample, seed)
        sample = encode(
            model,
            [texts[i] for i in rows],
            prefix=settings.passage_prefix,
            batch_size=settings.batch_size,
            devices=settings.encode_devices,
            show_progress_bar=True,
        )
        dense.train(index, sample)
    return index


def _fingerprint(
    corpus: Corpus, settings: RetrievalConfig, embedding: str, seed: int
) -> tuple[dict[str, Any], str]:
    """The build settings (:func:`retrieval.index_dir.build_settings`) and their fingerprint
    with the corpus."""
    recipe = index_dir.build_settings(settings, embedding, seed)
    return recipe, index_dir.fingerprint(recipe, corpus.digests)


def _corpus_extra(corpus: Corpus, recipe: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {
        "format": index_dir.FORMAT,
        "format_version": index_dir.FORMAT_VERSION,
        "fingerprint": fingerprint,
        "settings": recipe,
        "counts": {"articles": corpus.n_articles, "passages": len(corpus.passages)},
    }


def _embedding_info(model: Any, embedding: str, settings: RetrievalConfig) -> dict[str, Any]:
    return {
        "model": embedding,
        "dim": embedding_dim(model),
        "query_prefix": settings.query_prefix,
        "passage_prefix": settings.passage_prefix,
    }


def _write_bm25(passages: pd.DataFrame, folder: Path, settings: RetrievalConfig) -> float:
    started = time.perf_counter()
    retriever = lexical.build(
        passage_texts(passages, settings.passage_template),
        method=settings.bm25_method,
        k1=settings.bm25_k1,
        b=settings.bm25_b,
        stemmer=settings.bm25_stemmer,
        stopwords=settings.bm25_stopwords,
    )
    lexical.save(retriever, folder / index_dir.BM25)
    return time.perf_counter() - started


def _check_enabled(settings: RetrievalConfig) -> None:
    if not (settings.dense or settings.bm25):
        raise RetrievalInputError(
            "retrieval.dense and retrieval.bm25 are both false: enable at least one"
        )


def build_index(
    corpus_path: Path,
    out: Path,
    settings: RetrievalConfig,
    *,
    embedding: str,
    seed: int,
    write_run: RunWriter,
    force: bool = False,
) -> dict[str, Any]:
    """Build a complete index in ``out``; skipped when ``out`` already holds the same one.

    Returns the manifest (with ``"skipped": True`` when nothing was rebuilt).
    """
    _check_enabled(settings)
    started = time.perf_counter()
    corpus = load_passages(corpus_path, settings)
    recipe, fingerprint = _fingerprint(corpus, settings, embedding, seed)
    existing = index_dir.read_manifest(out) if out.is_dir() else None
    if not force and existing and existing.get("fingerprint") == fingerprint:
        try:
            return {**index_dir.check_index(out), "skipped": True}
        except IndexDirError:
            pass  # damaged: rebuild below
    out.mkdir(parents=True, exist_ok=True)
    _remove_manifest(out)

    write_table(corpus.passages, out / index_dir.PASSAGES)
    files = [index_dir.PASSAGES]
    extra = _corpus_extra(corpus, recipe, fingerprint)
    timings: dict[str, float] = {}
    if settings.dense:
        model = load_encoder(embedding, settings.device)
        texts = passage_texts(corpus.passages, settings.passage_template)
        train_started = time.perf_counter()
        index = _trained_index(model, texts, settings, seed)
        timings["train_s"] = time.perf_counter() - train_started
        timings["embed_s"] = _embed_into(index, model, texts, settings)
        timings["passages_per_s"] = len(texts) / max(timings["embed_s"], 1e-9)
        dense.write(index, out / index_dir.DENSE)
        files.append(index_dir.DENSE)
        extra["embedding"] = _embedding_info(model, embedding, settings)
        extra["faiss"] = {"factory": settings.faiss_factory, "ntotal": index.ntotal}
    if settings.bm25:
        timings["bm25_s"] = _write_bm25(corpus.passages, out, settings)
        files.append(index_dir.BM25)
    timings["total_s"] = time.perf_counter() - started
    extra.update(files=index_dir.file_sizes(out, files), timings=timings)
    write_run(out, "index", inputs=corpus.files, extra=extra)
    return index_dir.check_index(out)


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``; shards are numbered from 0."""
    head, sep, tail = text.partition("/")
    try:
        shard, n_shards = int(head), int(tail)
    except ValueError:
        shard, n_shards = -1, 0
    if not sep or n_shards < 1 or not 0 <= shard < n_shards:
        raise RetrievalInputError(
            f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4"
        )
    return shard, n_shards


def shard_bounds(n_rows: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Contiguous row range of one shard; the shards cover every row exactly once."""
    return n_rows * shard // n_shards, n_rows * (shard + 1) // n_shards


def train_shared(
    corpus_path: Path, out: Path, settings: RetrievalConfig, *, embedding: str, seed: int
) -> Path:
    """Train the empty faiss index every shard adds into (``out/trained.faiss``)."""
    corpus = load_passages(corpus_path, settings)
    model = load_encoder(embedding, settings.device)
    texts = passage_texts(corpus.passages, settings.passage_template)
    index = _trained_index(model, texts, settings, seed)
    out.mkdir(parents=True, exist_ok=True)
    _remove_manifest(out)
    dense.write(index, out / index_dir.TRAINED)
    _, fingerprint = _fingerprint(corpus, settings, embedding, seed)
    write_json({"fingerprint": fingerprint}, out / f"{index_dir.TRAINED}.json")
    return out / index_dir.TRAINED


def _shared_trained(out: Path, fingerprint: str, factory: str) -> Any:
    path = out / index_dir.TRAINED
    if not path.is_file():
        raise IndexDirError(
            f"{out}: retrieval.faiss_factory = {factory!r} needs training; run "
            f"`sciqa index CORPUS --out {out} --train` once before the shards"
        )
    meta_path = path.with_name(f"{index_dir.TRAINED}.json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if meta.get("fingerprint") != fingerprint:
        raise IndexDirError(
            f"{path}: trained for another corpus or settings; re-run `sciqa index CORPUS "
            f"--out {out} --train` with the same corpus and config as the shards"
        )
    return dense.read(path, mmap=False)


def build_shard(
    corpus_path: Path,
    out: Path,
    settings: RetrievalConfig,
    shard: int,
    n_shards: int,
    *,
    embedding: str,
    seed: int,
    write_run: RunWriter,
) -> Path:
    """Embed rows ``shard_bounds(...)`` of the passages into ``out/shards/i-of-n/``."""
    if not settings.dense:
        raise RetrievalInputError(
            "--shard builds the dense index; BM25 alone needs no shards (drop --shard)"
        )
    started = time.perf_counter()
    corpus = load_passages(corpus_path, settings)
    recipe, fingerprint = _fingerprint(corpus, settings, embedding, seed)
    model = load_encoder(embedding, settings.device)
    index = dense.new_index(embedding_dim(model), settings.faiss_factory)
    if dense.needs_training(index):
        index = _shared_trained(out, fingerprint, settings.faiss_factory)
    lo, hi = shard_bounds(len(corpus.passages), shard, n_shards)
    folder = index_dir.shard_dir(out, shard, n_shards)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_manifest(folder)
    part = corpus.passages.iloc[lo:hi]
    write_table(part, folder / index_dir.PASSAGES)
    texts = passage_texts(part, settings.passage_template)
    embed_s = _embed_into(index, model, texts, settings, offset=lo)
    dense.write(index, folder / index_dir.DENSE)
    extra = _corpus_extra(corpus, recipe, fingerprint)
    extra.update(
        shard={"index": shard, "of": n_shards, "rows": [lo, hi]},
        embedding=_embedding_info(model, embedding, settings),
        timings={"embed_s": embed_s, "total_s": time.perf_counter() - started},
    )
    return write_run(folder, "index-shard", inputs=corpus.files, extra=extra)


def _shard_manifests(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    folders = sorted((out / index_dir.SHARDS).glob("*-of-*"))
    if not folders:
        raise IndexDirError(f"{out}: no shards to merge; build them with --shard i/n first")
    n_shards = int(folders[0].name.split("-of-")[1])
    found = []
    for shard in range(n_shards):
        folder = index_dir.shard_dir(out, shard, n_shards)
        manifest = index_dir.read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            raise IndexDirError(
                f"{folder}: shard {shard}/{n_shards} is missing or unfinished; run "
                f"`sciqa index CORPUS --out {out} --shard {shard}/{n_shards}`"
            )
        found.append((folder, manifest))
    prints = {m["fingerprint"] for _, m in found}
    if len(prints) > 1:
        raise IndexDirError(
            f"{out}: shards were built from different corpora or settings; rebuild them "
            "all with the same corpus and config"
        )
    return found


def merge_shards(out: Path, settings: RetrievalConfig, *, write_run: RunWriter) -> dict[str, Any]:
    """Merge ``out/shards/*`` into one complete index in ``out``."""
    started = time.perf_counter()
    shards = _shard_manifests(out)
    first = shards[0][1]
    _remove_manifest(out)
    passages = pd.concat([read_table(f / index_dir.PASSAGES) for f, _ in shards], ignore_index=True)
    passages["chunk"] = passages["chunk"].astype("int64")
    if len(passages) != first["counts"]["passages"]:
        raise IndexDirError(
            f"{out}: shards hold {len(passages)} passages, the corpus has "
            f"{first['counts']['passages']}; rebuild the missing shards"
        )
    write_table(passages, out / index_dir.PASSAGES)
    trained = out / index_dir.TRAINED
    if not trained.is_file():  # Flat and other untrained factories: start from empty
        empty = dense.new_index(first["embedding"]["dim"], first["settings"]["faiss_factory"])
        trained = out / f".{index_dir.TRAINED}.empty"
        dense.write(empty, trained)
    dense.merge(trained, [f / index_dir.DENSE for f, _ in shards], out / index_dir.DENSE)
    if trained.name.endswith(".empty"):
        trained.unlink()
    files = [index_dir.PASSAGES, index_dir.DENSE]
    if (out / dense.IVF_DATA).exists():
        files.append(dense.IVF_DATA)
    timings = {"bm25_s": _write_bm25(passages, out, settings) if settings.bm25 else 0.0}
    if settings.bm25:
        files.append(index_dir.BM25)
    timings["merge_s"] = time.perf_counter() - started
    extra = {
        key: first[key]
        for key in ("format", "format_version", "fingerprint", "settings", "counts", "embedding")
    }
    extra["settings"] = {**extra["settings"], "bm25": settings.bm25}
    ntotal = int(dense.read(out / index_dir.DENSE, mmap=True).ntotal)
    extra.update(
        faiss={"factory": first["settings"]["faiss_factory"], "ntotal": ntotal},
        shards=len(shards),
        corpus_inputs=first.get("inputs", []),
        files=index_dir.file_sizes(out, files),
        timings=timings,
    )
    write_run(out, "index-merge", extra=extra)
    return index_dir.check_index(out)

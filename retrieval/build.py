"""``sciqa index``: corpus -> passages -> faiss + BM25 -> a complete index folder.

Three ways to build (see :mod:`retrieval.index_dir` for the layout):

* one machine: :func:`build_index` does everything;
* many machines (:mod:`retrieval.shards`): ``train_shared`` once (only for factories that
  need training), ``build_shard`` for each ``i/n`` in any job array, then ``merge_shards``.

Each reads the ``retrieval`` section plus the other values it needs, passed on their
own: ``embedding`` (``models.embedding``), ``seed``, and ``write_run``, which writes a
folder's ``config.yaml`` and ``manifest.json`` (the command binds it to its resolved
config).

Nothing is lost to a failed rebuild: the corpus, the model and the faiss factory are
checked before OUT is touched, the new index is built whole in ``.OUT.partial`` with its
manifest written last, and :func:`sciqa.outdir.publish` swaps it in only then. A kill or
an error at any point leaves the previous index in OUT, complete and usable. One build
writes an OUT at a time (:class:`sciqa.outdir.OutLock`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
from sciqa.io import write_table
from sciqa.outdir import OutLock, fresh_partial, publish
from sciqa.runs import file_digest


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


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """An empty ``.OUT.partial`` to build the next ``out`` in, published when the block
    ends; on an error it is removed and ``out`` is left as it was."""
    staging = fresh_partial(out)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, out)


def embed_into(
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


def empty_index(model: Any, settings: RetrievalConfig) -> Any:
    """An empty index from ``retrieval.faiss_factory`` (a bad string fails here, before
    anything is written)."""
    return dense.new_index(embedding_dim(model), settings.faiss_factory)


def train_index(
    index: Any, model: Any, texts: list[str], settings: RetrievalConfig, seed: int
) -> Any:
    """``index``, trained on a seeded sample of ``texts`` when its factory needs it."""
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


def fingerprint_of(
    corpus: Corpus, settings: RetrievalConfig, embedding: str, seed: int
) -> tuple[dict[str, Any], str]:
    """The build settings (:func:`retrieval.index_dir.build_settings`) and their fingerprint
    with the corpus."""
    recipe = index_dir.build_settings(settings, embedding, seed)
    return recipe, index_dir.fingerprint(recipe, corpus.digests)


def corpus_extra(corpus: Corpus, recipe: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {
        "format": index_dir.FORMAT,
        "format_version": index_dir.FORMAT_VERSION,
        "fingerprint": fingerprint,
        "settings": recipe,
        "counts": {"articles": corpus.n_articles, "passages": len(corpus.passages)},
    }


def embedding_info(model: Any, embedding: str, settings: RetrievalConfig) -> dict[str, Any]:
    return {
        "model": embedding,
        "dim": embedding_dim(model),
        "query_prefix": settings.query_prefix,
        "passage_prefix": settings.passage_prefix,
    }


def write_bm25(passages: pd.DataFrame, folder: Path, settings: RetrievalConfig) -> float:
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


def _existing_fingerprint(out: Path) -> str | None:
    try:
        manifest = index_dir.read_manifest(out) if out.is_dir() else None
    except IndexDirError:
        return None  # a damaged manifest: rebuild
    return manifest.get("fingerprint") if manifest else None


def _write_parts(
    folder: Path, corpus: Corpus, model: Any, index: Any, settings: RetrievalConfig, seed: int
) -> tuple[list[str], dict[str, float]]:
    """Passages, then the dense and BM25 parts asked for, into ``folder``; their file
    names and timings."""
    write_table(corpus.passages, folder / index_dir.PASSAGES)
    files = [index_dir.PASSAGES]
    timings: dict[str, float] = {}
    if index is not None:
        texts = passage_texts(corpus.passages, settings.passage_template)
        train_started = time.perf_counter()
        train_index(index, model, texts, settings, seed)
        timings["train_s"] = time.perf_counter() - train_started
        timings["embed_s"] = embed_into(index, model, texts, settings)
        timings["passages_per_s"] = len(texts) / max(timings["embed_s"], 1e-9)
        dense.write(index, folder / index_dir.DENSE)
        files.append(index_dir.DENSE)
    if settings.bm25:
        timings["bm25_s"] = write_bm25(corpus.passages, folder, settings)
        files.append(index_dir.BM25)
    return files, timings


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
    out = index_dir.real_dir(out)
    with OutLock(out):
        started = time.perf_counter()
        index_dir.check_replaceable(out)
        corpus = load_passages(corpus_path, settings)
        recipe, fingerprint = fingerprint_of(corpus, settings, embedding, seed)
        if not force and _existing_fingerprint(out) == fingerprint:
            try:
                return {**index_dir.check_index(out), "skipped": True}
            except IndexDirError:
                pass  # damaged: rebuild below
        model = load_encoder(embedding, settings.device) if settings.dense else None
        index = empty_index(model, settings) if settings.dense else None
        extra = corpus_extra(corpus, recipe, fingerprint)
        with staged(out) as staging:
            files, timings = _write_parts(staging, corpus, model, index, settings, seed)
            if index is not None:
                extra["embedding"] = embedding_info(model, embedding, settings)
                extra["faiss"] = {"factory": settings.faiss_factory, "ntotal": index.ntotal}
            timings["total_s"] = time.perf_counter() - started
            extra.update(files=index_dir.file_sizes(staging, files), timings=timings)
            write_run(staging, "index", inputs=corpus.files, extra=extra)
        return index_dir.check_index(out)

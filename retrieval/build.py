"""``sciqa index``: corpus -> passages -> faiss + BM25 -> a complete index folder.

Three ways to build (see :mod:`retrieval.index_dir` for the layout):

* one machine: :func:`build_index` does everything;
* many machines (:mod:`retrieval.shards`): ``train_shared`` once (only for factories that
  need training), ``build_shard`` for each ``i/n`` in any job array, then ``merge_shards``.

Each reads the ``retrieval`` section plus the other values it needs, passed on their
own: ``embedding`` (``models.embedding``), ``seed``, and ``write_run``, which writes a
folder's ``config.yaml`` and ``manifest.json`` (the command binds it to its resolved
config).

The corpus is read as a stream (:mod:`retrieval.ingest`): one pass writes the passages
and BM25's token ids, embedding reads the passages back in blocks, so memory grows with
the index, not with the text.

Nothing is lost to a failed rebuild: the new index is built whole in ``.OUT.partial``
(the corpus read first, then the model and the faiss factory checked) with its manifest
written last, and :func:`sciqa.outdir.publish` swaps it in only then. A kill or
an error at any point leaves the previous index in OUT, complete and usable. One build
writes an OUT at a time (:class:`sciqa.outdir.OutLock`).
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from retrieval import dense, index_dir, lexical
from retrieval.chunking import passage_texts
from retrieval.context import check_template
from retrieval.corpus_sources import Source, corpus_sources
from retrieval.embed import embedding_dim, encode, encode_blocks, load_encoder
from retrieval.errors import CorpusError, IndexDirError, RetrievalInputError
from retrieval.ingest import Ingested, ingest, passage_blocks, texts_at
from sciqa.config import RetrievalConfig
from sciqa.outdir import OutLock, fresh_partial, publish


class RunWriter(Protocol):
    """Writes ``folder/config.yaml`` and then ``folder/manifest.json`` (``extra`` added):
    :func:`sciqa.runs.write_run_files` bound to the command's resolved config."""

    def __call__(
        self, folder: Path, stage: str, *, inputs: Sequence[Path] = (), extra: dict[str, Any]
    ) -> Path: ...


@dataclass
class Corpus:
    """A corpus as a build sees it before reading it: its sources and their digests."""

    name: str  # as given: a path or an hf: name
    sources: list[Source]
    digests: list[str]

    @property
    def files(self) -> list[Path]:
        """Its local files (a manifest's inputs; a Hub corpus has none)."""
        return [source.path for source in self.sources if source.path is not None]


def open_corpus(corpus: str | Path, settings: RetrievalConfig) -> Corpus:
    """The corpus's sources and digests (files are hashed, not parsed), after checking
    the passage template."""
    check_template(settings.passage_template, "passage_template", ("title", "text"))
    sources = corpus_sources(corpus)
    return Corpus(str(corpus), sources, [source.digest() for source in sources])


def ingested(corpus: Corpus, done: Ingested, settings: RetrievalConfig) -> Ingested:
    """``done``, unless no passage came out of the corpus."""
    if done.passages == 0:
        raise CorpusError(
            f"{corpus.name}: no passage has retrieval.min_chunk_words "
            f"({settings.min_chunk_words}) words or more"
        )
    return done


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
    index: Any, model: Any, passages: Path, settings: RetrievalConfig, total: int
) -> float:
    """Embed ``passages.parquet`` block by block into ``index`` (ids = row numbers in that
    file); seconds spent."""
    started = time.perf_counter()
    blocks = (
        passage_texts(frame, settings.passage_template)
        for frame in passage_blocks(passages, settings.encode_block)
    )
    for start, vectors in encode_blocks(
        model,
        blocks,
        total=total,
        prefix=settings.passage_prefix,
        batch_size=settings.batch_size,
        devices=settings.encode_devices,
    ):
        dense.add(index, vectors, start)
    return time.perf_counter() - started


def empty_index(model: Any, settings: RetrievalConfig) -> Any:
    """An empty index from ``retrieval.faiss_factory`` (a bad string fails here, before
    anything is written)."""
    return dense.new_index(embedding_dim(model), settings.faiss_factory)


def train_index(
    index: Any,
    model: Any,
    blocks: Callable[[], Iterable[pd.DataFrame]],
    total: int,
    settings: RetrievalConfig,
    seed: int,
) -> Any:
    """``index``, trained when its factory needs it on a seeded sample of the ``total``
    passages that ``blocks()`` streams."""
    if dense.needs_training(index):
        rows = dense.sample_rows(total, settings.train_sample, seed)
        sample = encode(
            model,
            texts_at(blocks(), rows, settings.passage_template),
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


def corpus_extra(
    corpus: Corpus, done: Ingested, recipe: dict[str, Any], fingerprint: str
) -> dict[str, Any]:
    extra = {
        "format": index_dir.FORMAT,
        "format_version": index_dir.FORMAT_VERSION,
        "fingerprint": fingerprint,
        "settings": recipe,
        "counts": {"articles": done.articles, "passages": done.passages},
    }
    if not corpus.files:  # a Hub corpus: its data files (URLs pinned to a commit)
        extra["corpus"] = {"name": corpus.name, "data_files": corpus.digests}
    return extra


def embedding_info(model: Any, embedding: str, settings: RetrievalConfig) -> dict[str, Any]:
    return {
        "model": embedding,
        "dim": embedding_dim(model),
        "query_prefix": settings.query_prefix,
        "passage_prefix": settings.passage_prefix,
    }


def write_bm25(tokens: lexical.TokenIds, folder: Path, settings: RetrievalConfig) -> float:
    started = time.perf_counter()
    retriever = lexical.build(
        tokens, method=settings.bm25_method, k1=settings.bm25_k1, b=settings.bm25_b
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
    folder: Path, corpus: Corpus, embedding: str, settings: RetrievalConfig, seed: int
) -> tuple[Ingested, list[str], dict[str, float], dict[str, Any]]:
    """Passages (one pass over the corpus), then the dense and BM25 parts asked for, into
    ``folder``; what was read, the file names, timings and the dense part's manifest
    entries. The corpus is read before the model is loaded, so its errors come first."""
    started = time.perf_counter()
    path = folder / index_dir.PASSAGES
    done = ingested(corpus, ingest(corpus.sources, path, settings, bm25=settings.bm25), settings)
    files = [index_dir.PASSAGES]
    timings = {"read_s": time.perf_counter() - started}
    extra: dict[str, Any] = {}
    if settings.dense:
        model = load_encoder(embedding, settings.device)
        index = empty_index(model, settings)
        train_started = time.perf_counter()
        blocks = functools.partial(passage_blocks, path, settings.encode_block)
        train_index(index, model, blocks, done.passages, settings, seed)
        timings["train_s"] = time.perf_counter() - train_started
        timings["embed_s"] = embed_into(index, model, path, settings, done.passages)
        timings["passages_per_s"] = done.passages / max(timings["embed_s"], 1e-9)
        dense.write(index, folder / index_dir.DENSE)
        files.append(index_dir.DENSE)
        extra["embedding"] = embedding_info(model, embedding, settings)
        extra["faiss"] = {"factory": settings.faiss_factory, "ntotal": index.ntotal}
    if done.tokens is not None:
        timings["bm25_s"] = write_bm25(done.tokens, folder, settings)
        files.append(index_dir.BM25)
    return done, files, timings, extra


def build_index(
    corpus_path: str | Path,
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
        corpus = open_corpus(corpus_path, settings)
        recipe, fingerprint = fingerprint_of(corpus, settings, embedding, seed)
        if not force and _existing_fingerprint(out) == fingerprint:
            try:
                return {**index_dir.check_index(out), "skipped": True}
            except IndexDirError:
                pass  # damaged: rebuild below
        with staged(out) as staging:
            done, files, timings, parts = _write_parts(staging, corpus, embedding, settings, seed)
            extra = {**corpus_extra(corpus, done, recipe, fingerprint), **parts}
            timings["total_s"] = time.perf_counter() - started
            extra.update(files=index_dir.file_sizes(staging, files), timings=timings)
            write_run(staging, "index", inputs=corpus.files, extra=extra)
        return index_dir.check_index(out)

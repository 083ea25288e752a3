"""Corpus -> ``passages.parquet``, a batch of articles at a time, and back in blocks.

A build streams the corpus once: each batch of articles is chunked, appended to
``passages.parquet`` as a row group and, for BM25, tokenised into
:class:`retrieval.lexical.TokenIds`. Embedding then reads the passages back from that
file ``encode_block`` rows at a time. So what a build holds grows with the index (token
ids, vectors), never with the text.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retrieval import lexical
from retrieval.chunking import CHUNK, PASSAGE_COLUMNS, chunk_corpus, passage_texts
from retrieval.corpus import article_batches
from retrieval.corpus_sources import Source
from sciqa.config import RetrievalConfig
from sciqa.io import atomic_path


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [(name, pa.int64() if name == CHUNK else pa.string()) for name in PASSAGE_COLUMNS]
    )


def bm25_tokens(settings: RetrievalConfig) -> lexical.TokenIds:
    """An empty token store with the index's BM25 tokenisation settings."""
    return lexical.TokenIds(settings.bm25_stemmer, settings.bm25_stopwords)


class PassageWriter:
    """``passages.parquet`` written a frame at a time, renamed into place on a clean exit;
    each frame's texts also go to ``tokens`` (for BM25) when given."""

    def __init__(self, path: Path, template: str, tokens: lexical.TokenIds | None) -> None:
        self.path, self.template, self.tokens = path, template, tokens
        self.rows = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> PassageWriter:
        import pyarrow.parquet as pq

        tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = self._stack.enter_context(pq.ParquetWriter(tmp, _schema()))
        return self

    def add(self, passages: pd.DataFrame) -> None:
        import pyarrow as pa

        if passages.empty:
            return
        table = pa.Table.from_pandas(passages, schema=_schema(), preserve_index=False)
        self._writer.write_table(table)
        if self.tokens is not None:
            self.tokens.add(passage_texts(passages, self.template))
        self.rows += len(passages)

    def __exit__(self, *exc: object) -> bool | None:
        return self._stack.__exit__(*exc)


def passages_of(
    sources: Sequence[Source], settings: RetrievalConfig
) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(articles, passages)`` of each batch of ``sources``' articles, with a progress bar."""
    batches = article_batches(sources)
    first = next(batches, None)  # a corpus error is then the only line printed
    if first is None:
        return
    with tqdm(desc="read + chunk", unit="article") as bar:
        for articles in itertools.chain([first], batches):
            bar.update(len(articles))
            yield (
                len(articles),
                chunk_corpus(
                    articles, settings.chunk_words, settings.chunk_overlap, settings.min_chunk_words
                ),
            )


@dataclass
class Ingested:
    """What one pass over a corpus wrote."""

    articles: int  # articles with text that were read (all of them, for a row range)
    passages: int  # rows of passages.parquet
    tokens: lexical.TokenIds | None


def ingest(
    sources: Sequence[Source],
    path: Path,
    settings: RetrievalConfig,
    *,
    bm25: bool,
    rows: tuple[int, int] | None = None,
) -> Ingested:
    """Write the passages of ``sources`` (only rows ``[lo, hi)`` when ``rows`` is given)
    to ``path``; with ``bm25``, their token ids too."""
    tokens = bm25_tokens(settings) if bm25 else None
    articles, position = 0, 0
    with PassageWriter(path, settings.passage_template, tokens) as writer:
        for n_articles, passages in passages_of(sources, settings):
            articles += n_articles
            if rows is not None:
                lo, hi = rows
                start = position
                position += len(passages)
                passages = passages.iloc[max(lo - start, 0) : max(hi - start, 0)]
            writer.add(passages)
    return Ingested(articles, writer.rows, tokens)


def count_passages(sources: Sequence[Source], settings: RetrievalConfig) -> int:
    return sum(len(passages) for _, passages in passages_of(sources, settings))


def passage_blocks(path: Path, block: int) -> Iterator[pd.DataFrame]:
    """``passages.parquet`` back, ``block`` rows at a time."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(batch_size=block):
            yield batch.to_pandas()


def texts_at(blocks: Iterable[pd.DataFrame], rows: np.ndarray, template: str) -> list[str]:
    """The passage texts at sorted row numbers ``rows`` of a stream of passage frames
    (the seeded training sample of an IVF/PQ index)."""
    texts, start = [], 0
    for frame in blocks:
        wanted = rows[(rows >= start) & (rows < start + len(frame))] - start
        if len(wanted):
            texts.extend(passage_texts(frame.iloc[wanted], template))
        start += len(frame)
    return texts

"""Search an index folder: dense and/or BM25 candidates, fused, optionally reranked.

``Retriever.open(Path("runs/demo/index"), RetrievalConfig(), embedding="default")
.search(["Which gas do plants absorb? oxygen carbon dioxide"], top=3)`` gives three
:class:`~retrieval.fusion.Hit` s, best first, whose ``row`` indexes ``passages.parquet``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrieval import dense, index_dir, lexical
from retrieval.chunking import passage_texts
from retrieval.embed import embedding_dim, encode_queries, load_encoder
from retrieval.errors import IndexDirError, RetrievalInputError
from retrieval.fusion import Hit, fuse
from retrieval.rerank import load_reranker, rerank_scores
from sciqa.config import RetrievalConfig

DENSE, BM25 = "dense", "bm25"


@dataclass
class Retriever:
    """A loaded index plus the models that query it."""

    folder: Path
    settings: RetrievalConfig
    manifest: dict[str, Any]
    passages: pd.DataFrame
    faiss_index: Any = None
    encoder: Any = None
    bm25: Any = None
    reranker: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        folder: Path,
        settings: RetrievalConfig,
        *,
        embedding: str,
        reranker: str | None = None,
    ) -> Retriever:
        """Check the folder and load what ``retrieval.dense``/``bm25`` ask for: the
        ``embedding`` model (``models.embedding``) for dense search, the cross-encoder
        ``reranker`` (``models.reranker``) when one is named."""
        if not (settings.dense or settings.bm25):
            raise RetrievalInputError(
                "retrieval.dense and retrieval.bm25 are both false: enable at least one"
            )
        manifest = index_dir.check_index(folder)
        passages = index_dir.read_passages(folder)
        retriever = cls(folder, settings, manifest, passages)
        if settings.dense:
            retriever._load_dense(embedding)
        if settings.bm25:
            if index_dir.BM25 not in manifest.get("files", {}):
                raise IndexDirError(
                    f"{folder}: index has no BM25 part (built with retrieval.bm25 = false); "
                    "rebuild it or use --set retrieval.bm25=false"
                )
            retriever.bm25 = lexical.load(folder / index_dir.BM25, mmap=settings.mmap)
        if reranker:
            retriever.reranker = load_reranker(reranker, settings.device)
        return retriever

    def _load_dense(self, embedding: str) -> None:
        if index_dir.DENSE not in self.manifest.get("files", {}):
            raise IndexDirError(
                f"{self.folder}: index has no dense part (built with retrieval.dense = false); "
                "rebuild it or use --set retrieval.dense=false"
            )
        index_dir.check_model(self.manifest, embedding, self.folder)
        settings = self.settings
        self.faiss_index = dense.read(self.folder / index_dir.DENSE, mmap=settings.mmap)
        dense.set_search_params(self.faiss_index, settings.nprobe, settings.ef_search)
        self.encoder = load_encoder(embedding, settings.device)
        index_dir.check_dim(self.manifest, embedding_dim(self.encoder), self.folder)
        if self.faiss_index.d != self.manifest["embedding"]["dim"]:
            raise IndexDirError(
                f"{self.folder / index_dir.DENSE}: {self.faiss_index.d}-d, the manifest says "
                f"{self.manifest['embedding']['dim']}-d; rebuild the index"
            )

    def _dense_hits(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        settings = self.settings
        started = time.perf_counter()
        vectors = encode_queries(self.encoder, queries, settings)
        self._tick("encode_s", started)
        started = time.perf_counter()
        parts = [
            dense.search(self.faiss_index, vectors[i : i + settings.query_batch], self._k(DENSE))
            for i in range(0, len(vectors), settings.query_batch)
        ]
        self._tick("faiss_s", started)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _bm25_hits(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        scores, rows = lexical.search(
            self.bm25,
            queries,
            self._k(BM25),
            stemmer=self.manifest["settings"]["bm25_stemmer"],
            stopwords=self.manifest["settings"]["bm25_stopwords"],
        )
        self._tick("bm25_s", started)
        scores = np.where(scores > 0, scores, np.nan)  # no query word matched: not a hit
        return scores, np.where(np.isnan(scores), -1, rows)

    def _k(self, name: str) -> int:
        return self.settings.dense_candidates if name == DENSE else self.settings.bm25_candidates

    def _tick(self, key: str, started: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started

    def search(self, queries: Sequence[str], top: int) -> list[list[Hit]]:
        """The ``top`` best hits per query, fused (and reranked when a reranker is set)."""
        settings = self.settings
        ranked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.faiss_index is not None:
            scores, rows = self._dense_hits(queries)
            ranked[DENSE] = (rows, scores)
        if self.bm25 is not None:
            scores, rows = self._bm25_hits(queries)
            ranked[BM25] = (rows, scores)
        weights = {DENSE: settings.dense_weight, BM25: settings.bm25_weight}
        started = time.perf_counter()
        hits = [
            fuse({name: (r[i], s[i]) for name, (r, s) in ranked.items()}, weights, settings.rrf_k)
            for i in range(len(queries))
        ]
        self._tick("fuse_s", started)
        if self.reranker is not None:
            hits = self._rerank(queries, hits)
        return [h[:top] for h in hits]

    def _rerank(self, queries: Sequence[str], hits: list[list[Hit]]) -> list[list[Hit]]:
        settings = self.settings
        started = time.perf_counter()
        heads = [h[: settings.rerank_candidates] for h in hits]
        texts = self.texts([[hit.row for hit in head] for head in heads])
        scores = rerank_scores(self.reranker, queries, texts, settings.batch_size)
        reranked = []
        for head, head_scores, rest in zip(heads, scores, hits, strict=True):
            for hit, score in zip(head, head_scores, strict=True):
                hit.scores["rerank"] = float(score)
            order = sorted(head, key=lambda h: -h.scores["rerank"])
            reranked.append(order + rest[len(head) :])
        self._tick("rerank_s", started)
        return reranked

    def texts(self, rows: Sequence[Sequence[int]]) -> list[list[str]]:
        """Passage texts (title kept) for rows of ``passages.parquet``."""
        template = self.manifest["settings"]["passage_template"]  # as built, not as set now
        flat = [r for group in rows for r in group]
        looked_up = passage_texts(self.passages.iloc[flat], template) if flat else []
        out, start = [], 0
        for group in rows:
            out.append(looked_up[start : start + len(group)])
            start += len(group)
        return out

"""BM25 with ``bm25s``: sparse scores precomputed at index time, memory-mapped on load.

Tokenisation (lower-case words, stopwords, PyStemmer stem) is the same for passages and
queries because both go through :func:`tokenize` with the settings stored in the
index manifest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexDirError


def _stemmer(language: str | None) -> Any:
    if not language:
        return None
    import Stemmer

    return Stemmer.Stemmer(language)


def tokenize(texts: Sequence[str], stemmer: str | None, stopwords: str | None) -> Any:
    """Token lists as strings: unknown query words are simply not in the vocabulary."""
    import bm25s

    return bm25s.tokenize(
        list(texts),
        stopwords=stopwords or [],
        stemmer=_stemmer(stemmer),
        return_ids=False,
        show_progress=len(texts) > 10_000,
    )


def build(
    texts: Sequence[str],
    *,
    method: str,
    k1: float,
    b: float,
    stemmer: str | None,
    stopwords: str | None,
) -> Any:
    import bm25s

    retriever = bm25s.BM25(method=method, k1=k1, b=b)
    retriever.index(tokenize(texts, stemmer, stopwords), show_progress=len(texts) > 10_000)
    return retriever


def save(retriever: Any, folder: Path) -> None:
    """Save into ``folder`` atomically (written beside it, then renamed into place)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    retriever.save(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load(folder: Path, *, mmap: bool) -> Any:
    import bm25s

    try:
        return bm25s.BM25.load(str(folder), mmap=mmap)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IndexDirError(
            f"{folder}: cannot load the BM25 index ({reason}); rebuild it with `sciqa index`"
        ) from None


def search(
    retriever: Any,
    queries: Sequence[str],
    k: int,
    *,
    stemmer: str | None,
    stopwords: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)``, each ``(n, k)``, best first; rows are passage row numbers."""
    k = min(k, int(retriever.scores["num_docs"]))
    tokens = tokenize(queries, stemmer, stopwords)
    rows, scores = retriever.retrieve(tokens, k=k, show_progress=len(queries) > 1000)
    return np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)

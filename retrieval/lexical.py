"""BM25 with ``bm25s``: sparse scores precomputed at index time, memory-mapped on load.

Tokenisation (lower-case words, stopwords, PyStemmer stem) is the same for passages and
queries: queries go through :func:`tokenize`, passages through bm25s's ``Tokenizer`` with
the same settings (those stored in the index manifest), batch by batch into
:class:`TokenIds`, so an index of millions of passages never holds their text at once.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
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


class TokenIds:
    """What BM25 needs of a corpus without its text: every passage's token ids, in one
    vocabulary grown batch by batch, kept as int32 arrays (4 bytes a token).

    The tokenisation is :func:`tokenize`'s (lower case, words of 2+ letters, stopwords,
    stem), so queries match; bm25s builds from it as from its own ``Tokenized``.
    """

    def __init__(self, stemmer: str | None, stopwords: str | None) -> None:
        from bm25s.tokenization import Tokenizer

        self._tokenizer = Tokenizer(stopwords=stopwords or [], stemmer=_stemmer(stemmer))
        self._ids: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []

    def add(self, texts: Sequence[str]) -> None:
        docs = self._tokenizer.tokenize(
            list(texts), update_vocab=True, show_progress=False, allow_empty=False
        )
        self._lengths.append(np.fromiter(map(len, docs), np.int64, len(docs)))
        self._ids.append(np.fromiter(itertools.chain.from_iterable(docs), np.int32))

    def __len__(self) -> int:
        return sum(len(lengths) for lengths in self._lengths)

    def __iter__(self) -> Iterator[list[int]]:
        # One array each, so bm25s's three passes walk them without the batch lists.
        if len(self._ids) > 1:
            self._ids, self._lengths = [np.concatenate(self._ids)], [np.concatenate(self._lengths)]
        if not self._ids:
            return
        ids, ends = self._ids[0], np.cumsum(self._lengths[0])
        for start, end in zip(itertools.chain([0], ends), ends, strict=False):
            yield ids[start:end].tolist()

    def vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab_dict()


def build(
    tokens: TokenIds,
    *,
    method: str,
    k1: float,
    b: float,
) -> Any:
    import bm25s
    from bm25s.tokenization import Tokenized

    retriever = bm25s.BM25(method=method, k1=k1, b=b)
    corpus = Tokenized(ids=tokens, vocab=tokens.vocab())
    retriever.index(corpus, show_progress=len(tokens) > 10_000)
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

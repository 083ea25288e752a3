"""A corpus of articles as a stream of ``article_id, title, text`` batches.

Accepted (:mod:`retrieval.corpus_sources` reads each): the packaged Wikipedia sample
(``data.corpus = "default"``), a JSONL / parquet / CSV file with a ``text`` column
(``title`` and ``id`` optional), wikiextractor output, a folder of such files (read
recursively, in sorted order, so the same folder always gives the same ids), e.g. the
Hugging Face Wikipedia dump's parquet shards, a ``save_to_disk`` folder, or
``hf:OWNER/NAME[:CONFIG][@SPLIT]`` streamed from the Hub.

Nothing holds the whole corpus: articles arrive a batch at a time, and what is kept per
article across batches is an 8-byte hash of its id (to refuse an id used twice).

>>> normalise_text("  Light: 3.0\\u00a010⁸ m/s\\n\\n in vacuum ")
'Light: 3.0 10⁸ m/s in vacuum'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from retrieval.corpus_sources import Source, corpus_sources, missing_text
from retrieval.errors import CorpusError
from sciqa.assets.registry import CORPUS as PACKAGED_CORPUS
from sciqa.assets.registry import packaged_path

ARTICLE_ID = "article_id"
TITLE = "title"
TEXT = "text"
COLUMNS = (ARTICLE_ID, TITLE, TEXT)

_SPACE = re.compile(r"\s+")
# Control characters other than whitespace; \s handles tabs and newlines.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def normalise_text(text: object) -> str:
    """NFC, no control characters, single spaces. Numbers, units and symbols are kept:
    NFKC would turn ``m²`` into ``m2`` and ``10⁸`` into ``108``."""
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def _content_hash(title: str, text: str) -> str:
    return hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]


def _id_hash(article_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(article_id.encode(), digest_size=8).digest(), "little")


def _stem(label: str) -> str:
    return PurePosixPath(label.split("?")[0]).stem  # a path or a data file's URL


def _normalised(frame: pd.DataFrame, source: Source, seen: set[str]) -> pd.DataFrame:
    """One raw frame as ``article_id, title, text``: normalised, empty texts and articles
    already in ``seen`` (same title and text, same source) dropped.

    Ids are the corpus's own ``id`` where it has one, else ``<stem>:<sha1 of title+text>``;
    both are stable: the same corpus always gives the same ids.
    """
    if TEXT not in frame.columns:
        raise missing_text(source.label, list(frame.columns))
    frame = frame.reset_index(drop=True)
    titles = frame[TITLE] if TITLE in frame.columns else pd.Series([""] * len(frame))
    titles, texts = titles.map(normalise_text), frame[TEXT].map(normalise_text)
    own = frame["id"] if "id" in frame.columns else pd.Series([None] * len(frame))
    stem, rows = _stem(source.label), []
    for title, text, given in zip(titles, texts, own, strict=True):
        content = _content_hash(title, text)
        if not text or content in seen:
            continue
        seen.add(content)
        given = "" if given is None or pd.isna(given) else str(given).strip()
        rows.append((given or f"{stem}:{content}", title, text))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _batches(sources: Sequence[Source]) -> Iterator[pd.DataFrame]:
    for source in sources:
        seen: set[str] = set()  # content hashes of this source: duplicates are dropped
        for frame in source.frames():
            if frame.empty and TEXT not in frame.columns:  # an empty file: nothing to add
                continue
            batch = _normalised(frame, source, seen)
            if not batch.empty:
                yield batch


def article_batches(sources: Sequence[Source]) -> Iterator[pd.DataFrame]:
    """Normalised ``article_id, title, text`` batches of ``sources``, in order.

    Raises :class:`CorpusError` naming the source when one cannot be read, and at the
    end when no article had text or an id appears twice.
    """
    hashes: list[np.ndarray] = []
    for batch in _batches(sources):
        hashes.append(np.fromiter(map(_id_hash, batch[ARTICLE_ID]), np.uint64, len(batch)))
        yield batch
    if not hashes:
        where = sources[0].label if len(sources) == 1 else "the corpus"
        raise CorpusError(f"{where}: corpus has no usable text (every 'text' value is empty)")
    ordered = np.sort(np.concatenate(hashes))
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        # Rare and fatal: read the corpus again for the id to name.
        wanted = int(repeated[0])
        first = next(
            i for batch in _batches(sources) for i in batch[ARTICLE_ID] if _id_hash(i) == wanted
        )
        raise CorpusError(
            f"article id {first!r} appears in more than one row/file of the corpus; "
            "make the 'id' column unique or drop it"
        )


def read_corpus(corpus: str | Path) -> tuple[pd.DataFrame, list[Source]]:
    """The whole of a small corpus in one frame, and its sources (tests, small tools;
    ``sciqa index`` streams with :func:`article_batches`)."""
    sources = corpus_sources(corpus)
    frames = list(article_batches(sources))
    return pd.concat(frames, ignore_index=True), sources


def default_corpus_path() -> Path:
    """Where the packaged Wikipedia sample lives (for ``data.corpus = "default"``)."""
    return packaged_path(PACKAGED_CORPUS)

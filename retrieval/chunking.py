"""Split articles into overlapping passages on sentence boundaries.

Each passage is a window of whole sentences of at most ``chunk_words`` words; the next
window starts with the last sentences of the previous one, up to ``chunk_overlap``
words, so a fact that straddles a boundary is whole in at least one passage. A single
sentence longer than the window is cut into word runs. Ids are ``<article_id>#<chunk>``
(``chunk`` = 0-based position of the window in its article), so the same corpus and
settings always give the same ids.

>>> windows(["One two three.", "Four five.", "Six seven eight."], chunk_words=5, overlap=2)
['One two three. Four five.', 'Four five. Six seven eight.']
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pandas as pd

from retrieval.corpus import ARTICLE_ID, TEXT, TITLE
from retrieval.errors import RetrievalInputError

PASSAGE_ID = "passage_id"
CHUNK = "chunk"
PASSAGE_COLUMNS = (PASSAGE_ID, TITLE, TEXT, ARTICLE_ID, CHUNK)

# A sentence ends at . ! or ? (optionally followed by a closing quote/bracket) before
# whitespace and an upper-case letter, digit or opening quote. "3.5 m" and "e.g. water"
# stay whole because no capital follows; a few abbreviations before names split, which
# only moves a window boundary.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``; decimals and lower-case continuations do not split.

    >>> split_sentences("It is 3.5 m long. Water boils at 100 °C! Why?")
    ['It is 3.5 m long.', 'Water boils at 100 °C!', 'Why?']
    """
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _fit(sentences: list[str], chunk_words: int) -> list[list[str]]:
    """Sentences as word lists; one longer than the window becomes several."""
    pieces = []
    for sentence in sentences:
        words = sentence.split()
        for start in range(0, len(words), chunk_words):
            pieces.append(words[start : start + chunk_words])
    return pieces


def windows(sentences: list[str], chunk_words: int, overlap: int) -> list[str]:
    """Greedy windows of whole sentences; each after the first repeats <= overlap words."""
    pieces = _fit(sentences, chunk_words)
    chunks, start = [], 0
    while start < len(pieces):
        end, size = start, 0
        while end < len(pieces) and size + len(pieces[end]) <= chunk_words:
            size += len(pieces[end])
            end += 1
        chunks.append(" ".join(word for piece in pieces[start:end] for word in piece))
        if end >= len(pieces):
            break
        # Step back over trailing sentences while they fit in the overlap, but always
        # move forward at least one sentence so the loop ends.
        back, carried = end, 0
        while back - 1 > start and carried + len(pieces[back - 1]) <= overlap:
            back -= 1
            carried += len(pieces[back])
        start = back
    return chunks


def chunk_article(text: str, chunk_words: int, overlap: int) -> list[str]:
    """One article's passages (a short article is one passage, unchanged)."""
    if len(text.split()) <= chunk_words:
        return [text]
    return windows(split_sentences(text), chunk_words, overlap)


def _rows(
    articles: pd.DataFrame, chunk_words: int, overlap: int, min_words: int
) -> Iterator[tuple[str, str, str, str, int]]:
    columns = zip(articles[ARTICLE_ID], articles[TITLE], articles[TEXT], strict=True)
    for article_id, title, text in columns:
        for position, chunk in enumerate(chunk_article(text, chunk_words, overlap)):
            if len(chunk.split()) >= min_words:
                yield f"{article_id}#{position}", title, chunk, article_id, position


def chunk_corpus(
    articles: pd.DataFrame, chunk_words: int, overlap: int, min_words: int = 1
) -> pd.DataFrame:
    """``passage_id, title, text, article_id, chunk`` for every article, in corpus order
    (one batch of a corpus at a time: :mod:`retrieval.ingest`)."""
    if overlap >= chunk_words:
        raise RetrievalInputError(
            f"retrieval.chunk_overlap ({overlap}) must be smaller than retrieval.chunk_words "
            f"({chunk_words}); lower it with --set retrieval.chunk_overlap=N"
        )
    rows = list(_rows(articles, chunk_words, overlap, min_words))
    frame = pd.DataFrame(rows, columns=list(PASSAGE_COLUMNS))
    frame[CHUNK] = frame[CHUNK].astype("int64")
    return frame


def passage_texts(passages: pd.DataFrame, template: str) -> list[str]:
    """What is embedded and BM25-indexed: the title kept with every chunk."""
    return [
        template.format(title=t, text=x)
        for t, x in zip(passages[TITLE], passages[TEXT], strict=True)
    ]

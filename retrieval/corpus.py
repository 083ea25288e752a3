"""Read a corpus of articles into one table: ``article_id, title, text``.

Accepted: the packaged Wikipedia sample (``data.corpus = "default"``), a JSONL / parquet /
CSV file with a ``text`` column (``title`` and ``id`` optional; wikiextractor's JSON
output qualifies), or a folder of such files (read recursively, in sorted order, so the
same folder always gives the same ids). wikiextractor's extension-less ``wiki_00`` files
are read as JSONL.

>>> normalise_text("  Light: 3.0\\u00a010⁸ m/s\\n\\n in vacuum ")
'Light: 3.0 10⁸ m/s in vacuum'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import pandas as pd

from retrieval.errors import CorpusError
from sciqa.assets.registry import CORPUS as PACKAGED_CORPUS
from sciqa.assets.registry import packaged_path, packaged_wikipedia
from sciqa.io import FORMATS, read_table

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


def corpus_files(path: Path) -> list[Path]:
    """The files a corpus path stands for: itself, or the readable files under a folder."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CorpusError(f"{path}: no such file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _readable(p))
    if not files:
        raise CorpusError(
            f"{path}: folder holds no corpus files ({', '.join(sorted(FORMATS))} or wiki_NN)"
        )
    return files


def _readable(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    return (
        path.suffix.lower() in FORMATS or path.suffix.lower() == ".json" or _is_wikiextractor(path)
    )


def _is_wikiextractor(path: Path) -> bool:
    return path.suffix == "" and path.name.startswith("wiki_")


def _read_file(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".json":
        # The packaged sample's layout: {key: {"title", "extract", ...}}.
        try:
            return packaged_wikipedia(path)
        except Exception as exc:
            raise CorpusError(f"{path}: cannot be read as a corpus: {exc}") from None
    if _is_wikiextractor(path):
        try:
            return pd.read_json(path, lines=True, dtype=False)
        except ValueError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise CorpusError(f"{path}: cannot be read as JSONL: {reason}") from None
    return read_table(path)


def _article_ids(frame: pd.DataFrame, source: Path) -> pd.Series:
    """The corpus's own ``id`` when present and unique, else a content hash.

    Both are stable: the same corpus always gives the same ids.
    """
    if "id" in frame.columns:
        ids = frame["id"].astype(str).str.strip()
        if ids.ne("").all() and ids.is_unique:
            return ids
    stem = source.stem
    return pd.Series(
        [f"{stem}:{_content_hash(t, x)}" for t, x in zip(frame[TITLE], frame[TEXT], strict=True)],
        index=frame.index,
    )


def _content_hash(title: str, text: str) -> str:
    return hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]


def read_file_articles(path: Path) -> pd.DataFrame:
    """One corpus file as ``article_id, title, text``, normalised, empty texts dropped."""
    frame = _read_file(path)
    if frame.empty and TEXT not in frame.columns:  # an empty file: nothing to add
        return pd.DataFrame(columns=list(COLUMNS))
    if TEXT not in frame.columns:
        found = ", ".join(repr(str(c)) for c in frame.columns) or "no columns"
        raise CorpusError(
            f"{path}: missing column 'text' (the article body); found {found}. "
            "A corpus needs 'text' and, ideally, 'title'"
        )
    frame = frame.reset_index(drop=True)
    titles = frame[TITLE] if TITLE in frame.columns else pd.Series([""] * len(frame))
    out = pd.DataFrame({TITLE: titles.map(normalise_text), TEXT: frame[TEXT].map(normalise_text)})
    if "id" in frame.columns:
        out["id"] = frame["id"]
    out = out[out[TEXT] != ""].drop_duplicates(subset=[TITLE, TEXT])
    out.insert(0, ARTICLE_ID, _article_ids(out, path))
    return out[list(COLUMNS)].reset_index(drop=True)


def read_corpus(path: Path) -> tuple[pd.DataFrame, list[Path]]:
    """All articles under ``path`` and the files they came from.

    Raises :class:`CorpusError` naming the file when nothing usable is found.
    """
    files = corpus_files(path)
    frames = [read_file_articles(file) for file in files]
    articles = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    if articles.empty:
        raise CorpusError(f"{path}: corpus has no usable text (every 'text' value is empty)")
    duplicated = articles[ARTICLE_ID].duplicated()
    if duplicated.any():
        first = articles[ARTICLE_ID][duplicated].iloc[0]
        raise CorpusError(
            f"{path}: article id {first!r} appears in more than one row/file; "
            "make the 'id' column unique or drop it"
        )
    return articles, files


def default_corpus_path() -> Path:
    """Where the packaged Wikipedia sample lives (for ``data.corpus = "default"``)."""
    return packaged_path(PACKAGED_CORPUS)

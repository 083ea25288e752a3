"""Where a corpus's articles come from, read in batches: one :class:`Source` per file or
data file, so no more than a batch of text is ever held at once.

A source yields raw frames of at most :data:`BATCH` rows holding the columns it has of
``id, title, text`` (:mod:`retrieval.corpus` normalises them). What each form is read with:

* parquet (``.parquet``, ``.pq``), e.g. the Hugging Face Wikipedia dump's ``id, url,
  title, text`` shards: pyarrow, batch by batch, only those three columns;
* JSONL, and wikiextractor's ``--json`` ``wiki_NN`` files: pandas, in chunks;
* wikiextractor's default ``wiki_NN`` files (``<doc id=.. url=.. title=..>`` blocks): here;
* CSV: pandas, in chunks; the packaged sample (``.json``): whole (10k short articles);
* a ``datasets`` ``save_to_disk`` folder: its memory-mapped arrow files, one source each;
* ``hf:OWNER/NAME[:CONFIG][@SPLIT]``: streamed from the Hub, one source per data file
  (:func:`sciqa.hf_datasets.stream_split`).

Sources are in a fixed order (a folder: its files sorted), so ``--shard i/n`` can give each
job a contiguous run of them and the same corpus always gives the same ids.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from retrieval.errors import CorpusError
from sciqa.assets.registry import packaged_wikipedia
from sciqa.errors import SciqaError
from sciqa.hf_datasets import HF, is_dataset_source, load_split, stream_split
from sciqa.runs import file_digest

BATCH = 1_000  # articles per frame: a few MB of Wikipedia text
KEPT = ("id", "title", "text")
PARQUET = (".parquet", ".pq")
SUFFIXES = (*PARQUET, ".jsonl", ".csv", ".json")


@dataclass(frozen=True)
class Source:
    """One file or data file of a corpus."""

    label: str  # what errors and manifests name: a path or a data file's URL
    read: Callable[[], Iterator[pd.DataFrame]]
    path: Path | None = None  # a local file: hashed for the fingerprint, listed as input
    identity: str = ""  # else what stands for its bytes (a URL pinned to a commit)
    kind: str = "a corpus"  # what it is read as, for errors: parquet, jsonl, ...

    def digest(self) -> str:
        return file_digest(self.path) if self.path is not None else self.identity

    def frames(self) -> Iterator[pd.DataFrame]:
        """Raw frames; a parser's complaint becomes one line naming this source."""
        try:
            yield from self.read()
        except SciqaError:
            raise
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CorpusError(f"{self.label}: cannot be read as {self.kind}: {reason}") from None


def corpus_sources(corpus: str | Path) -> list[Source]:
    """The sources ``corpus`` stands for: an ``hf:`` name, a save_to_disk folder, a file,
    or a folder of files (recursive, sorted)."""
    text = str(corpus)
    if text.startswith(HF):
        return _hub_sources(text)
    if is_dataset_source(text):
        return _saved_sources(text)
    path = Path(corpus)
    if path.is_file():
        return [_file_source(path)]
    if not path.is_dir():
        raise CorpusError(f"{path}: no such file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _readable(p))
    if not files:
        raise CorpusError(
            f"{path}: folder holds no corpus files ({', '.join(SUFFIXES)} or wiki_NN)"
        )
    return [_file_source(file) for file in files]


def missing_text(label: str, columns: list[str]) -> CorpusError:
    found = ", ".join(repr(str(c)) for c in columns) or "no columns"
    return CorpusError(
        f"{label}: missing column 'text' (the article body); found {found}. "
        "A corpus needs 'text' and, ideally, 'title'"
    )


def _readable(path: Path) -> bool:
    return not path.name.startswith(".") and (
        path.suffix.lower() in SUFFIXES or _is_wikiextractor(path)
    )


def _is_wikiextractor(path: Path) -> bool:
    return path.suffix == "" and path.name.startswith("wiki_")


def _file_source(path: Path) -> Source:
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        read, kind = _parquet, "parquet"
    elif suffix == ".json":  # the packaged sample's layout: {key: {"title", "extract"}}
        read, kind = _packaged, "the packaged corpus"
    elif suffix == ".csv":
        read, kind = _csv, "csv"
    elif _is_wikiextractor(path) and _first_char(path) == "<":
        read, kind = _wikiextractor_docs, "wikiextractor output"
    else:  # .jsonl and wikiextractor --json
        read, kind = _jsonl, "jsonl"
    return Source(str(path), functools.partial(read, path), path=path, kind=kind)


def _parquet(path: Path) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as file:
        names = file.schema_arrow.names
        if "text" not in names:  # checked before any row is read
            raise missing_text(str(path), names)
        columns = [name for name in KEPT if name in names]
        for batch in file.iter_batches(batch_size=BATCH, columns=columns):
            yield batch.to_pandas()


def _jsonl(path: Path) -> Iterator[pd.DataFrame]:
    try:
        with pd.read_json(path, lines=True, dtype=False, chunksize=BATCH) as reader:
            yield from reader
    except ValueError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CorpusError(f"{path}: cannot be read as jsonl: {reason}") from None


def _csv(path: Path) -> Iterator[pd.DataFrame]:
    # utf-8-sig: spreadsheet exports start with a BOM that would rename the first column.
    options = {"dtype": str, "keep_default_na": False, "encoding": "utf-8-sig"}
    try:
        with pd.read_csv(path, chunksize=BATCH, **options) as reader:
            yield from reader
    except pd.errors.EmptyDataError:
        raise CorpusError(f"{path}: file is empty (no header row)") from None


def _packaged(path: Path) -> Iterator[pd.DataFrame]:
    try:
        yield packaged_wikipedia(path)
    except SciqaError as exc:
        raise CorpusError(f"{path}: cannot be read as a corpus: {exc}") from None


def _first_char(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.strip()[0]
    return ""


_DOC = re.compile(r"<doc\s([^>]*)>")
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')


def _wikiextractor_docs(path: Path) -> Iterator[pd.DataFrame]:
    """wikiextractor's default output: ``<doc id="12" url=".." title="Anarchism">``, the
    title again on the first line, the text, ``</doc>``."""
    rows: list[dict[str, str]] = []
    doc: dict[str, str] | None = None
    lines: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if doc is None:
                match = _DOC.fullmatch(stripped)
                if match is None and stripped:
                    raise CorpusError(
                        f"{path}: line {number}: expected <doc id=.. title=..>, found "
                        f"{stripped[:40]!r}; give wikiextractor output as it wrote it"
                    )
                doc, lines = (dict(_ATTRIBUTE.findall(match.group(1))), []) if match else (None, [])
            elif stripped == "</doc>":
                if lines and lines[0].strip() == doc.get("title", ""):
                    lines = lines[1:]
                rows.append(
                    {
                        "id": doc.get("id", ""),
                        "title": doc.get("title", ""),
                        "text": "\n".join(lines),
                    }
                )
                doc = None
                if len(rows) == BATCH:
                    yield pd.DataFrame(rows)
                    rows = []
            else:
                lines.append(line.rstrip("\n"))
    if doc is not None:
        raise CorpusError(
            f"{path}: <doc id={doc.get('id', '')!r}> has no </doc> (a truncated file?); "
            "rerun wikiextractor or drop the file"
        )
    if rows:
        yield pd.DataFrame(rows)


def _dataset_frames(dataset: Any) -> Iterator[pd.DataFrame]:
    """A datasets ``Dataset`` or ``IterableDataset``, batch by batch, as frames."""
    columns = dataset.column_names
    if columns is not None:
        dataset = dataset.select_columns([name for name in KEPT if name in columns])
    for batch in dataset.iter(batch_size=BATCH):
        yield pd.DataFrame(batch)


def _checked_columns(label: str, columns: list[str] | None) -> None:
    if columns is not None and "text" not in columns:
        raise missing_text(label, columns)


def _saved_sources(folder: str) -> list[Source]:
    import datasets

    split = load_split(folder)
    _checked_columns(folder, split.column_names)
    files = [Path(entry["filename"]) for entry in split.cache_files]

    def read(file: Path) -> Iterator[pd.DataFrame]:
        return _dataset_frames(datasets.Dataset.from_file(str(file)))

    return [Source(str(file), functools.partial(read, file), path=file) for file in files]


def _hub_sources(source: str) -> list[Source]:
    stream, files = stream_split(source)
    return hub_shards(source, stream, files)


def hub_shards(source: str, stream: Any, files: list[str]) -> list[Source]:
    """One source per shard of a streamed split (one data file each)."""
    _checked_columns(source, stream.column_names)
    n = stream.num_shards
    labels = files if len(files) == n else [f"{source} shard {k}/{n}" for k in range(n)]
    return [
        Source(
            label,
            functools.partial(_dataset_frames, stream.shard(num_shards=n, index=k)),
            identity=label,
        )
        for k, label in enumerate(labels)
    ]

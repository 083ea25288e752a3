"""A table of questions tokenized once: ``datasets.Dataset.map`` over its rows, cached on
disk under a fingerprint of everything the token ids depend on.

The second fold of a run selects its rows from the table the first fold tokenized; a
resume, a rerun and a ``--fold I`` job read the cache file instead of tokenizing again::

    <train.tokenize_cache>/<fingerprint>.arrow    default ~/.cache/sciqa/tokenized

The fingerprint (:func:`fingerprint`) hashes the tokenizer (datasets' ``Hasher``: its
vocabulary, normaliser, special tokens, chat template), the backend's encoding settings
(max_length, use_context, the prompt template, the option letters), the source of the
modules that encode, and the rows' text. Change any one and the table is tokenized anew
into another file; old files stay until the folder is deleted (nothing else reads it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from sciqa.errors import SciqaError
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT
from train.dataset import CUT, LENGTH, OVERLONG, Split

if TYPE_CHECKING:
    from datasets import Dataset, Features

log = logging.getLogger("train")
FORMAT = "sciqa-tokenized/1"  # bump when the cached columns change meaning
# Arrow types of the columns the backends write; anything else is left to arrow (int64).
COLUMN_TYPES = {
    "input_ids": ("list", "list", "int32"),
    "attention_mask": ("list", "list", "int8"),
    "token_type_ids": ("list", "list", "int8"),
    "labels": ("int64",),
    "score_len": ("list", "int32"),
    "norm": ("list", "float64"),
    LENGTH: ("int32",),
    OVERLONG: ("bool",),
    CUT: ("bool",),
}


class RowEncoder(Protocol):
    """What a fold backend gives this module (``train.commands.FoldBackend`` has it)."""

    tokenizer: Any

    def encode_batch(self, frame: pd.DataFrame) -> dict[str, list[Any]]: ...

    def encoding_key(self) -> dict[str, Any]: ...  # settings + code the ids depend on


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sciqa/tokenized`` (``~/.cache/sciqa/tokenized``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sciqa" / "tokenized"


def source_columns(frame: pd.DataFrame, letters: list[str]) -> list[str]:
    """The columns an encoding reads, in a fixed order: the rest of a table is not hashed."""
    return [c for c in (ID, PROMPT, CONTEXT, *letters, ANSWER) if c in frame.columns]


def rows_digest(frame: pd.DataFrame) -> str:
    """sha256 over the column names and every row's values, in order."""
    digest = hashlib.sha256(json.dumps(list(frame.columns)).encode())
    rows = pd.util.hash_pandas_object(frame.astype(object), index=False)
    digest.update(rows.to_numpy().tobytes())
    return digest.hexdigest()


def fingerprint(encoder: RowEncoder, frame: pd.DataFrame) -> str:
    """What a tokenized ``frame`` depends on, as 32 hex digits (a cache file name).

    ``frame`` holds only the :func:`source_columns`.
    """
    from datasets.fingerprint import Hasher

    parts = {
        "format": FORMAT,
        "tokenizer": Hasher.hash(encoder.tokenizer),
        "encoding": encoder.encoding_key(),
        "rows": rows_digest(frame),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def column_features(columns: list[str]) -> Features | None:
    """Compact arrow types (int32 ids, int8 masks) when every column is known, else
    ``None`` (arrow infers them)."""
    import datasets
    from datasets import Features, Value

    if any(c not in COLUMN_TYPES for c in columns):
        return None
    nested = getattr(datasets, "List", None) or datasets.Sequence  # List: datasets >= 4

    def build(spec: tuple[str, ...]) -> Any:
        return nested(build(spec[1:])) if spec[0] == "list" else Value(spec[0])

    return Features({ID: Value("string"), **{c: build(COLUMN_TYPES[c]) for c in columns}})


@dataclass
class Tokenized:
    """One table's rows as encoded by a backend, with their ids."""

    dataset: Dataset  # ID, the collator's keys, LENGTH and OVERLONG / CUT flags
    fingerprint: str
    file: Path
    cached: bool  # read from the cache file, not tokenized now
    seconds: float
    position: dict[str, int] = field(default_factory=dict)  # id -> row

    def __post_init__(self) -> None:
        self.position = {qid: i for i, qid in enumerate(self.dataset[ID])}

    def split(self, frame: pd.DataFrame) -> Split:
        """The rows of ``frame`` (a subset of the table, by id), in ``frame``'s order."""
        ids = frame[ID].astype(str).tolist()
        rows = [self.position[qid] for qid in ids]
        chosen = self.dataset.select(rows)
        info = [c for c in (ID, LENGTH, OVERLONG, CUT) if c in chosen.column_names]
        flags = {c: sum(chosen[c]) for c in (OVERLONG, CUT) if c in chosen.column_names}
        features = chosen.remove_columns(info)
        lengths = list(chosen[LENGTH])
        return Split(ids, features, lengths, flags.get(OVERLONG, 0), flags.get(CUT, 0))

    def summary(self) -> dict[str, Any]:
        return {
            "rows": len(self.dataset),
            "fingerprint": self.fingerprint,
            "file": str(self.file),
            "cached": self.cached,
            "seconds": round(self.seconds, 2),
        }


def tokenize_table(
    encoder: RowEncoder,
    table: pd.DataFrame,
    letters: list[str],
    cache_dir: Path,
    *,
    desc: str = "tokenizing",
) -> Tokenized:
    """``table`` encoded by ``encoder.encode_batch`` through ``Dataset.map``, read from
    ``cache_dir`` when the same fingerprint was tokenized before."""
    from datasets import Dataset

    frame = table[source_columns(table, letters)].reset_index(drop=True)
    stamp = fingerprint(encoder, frame)
    file = _writable(cache_dir) / f"{stamp}.arrow"
    cached = file.is_file()
    started = time.perf_counter()
    source = Dataset.from_pandas(frame, preserve_index=False)

    def encode(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        return encoder.encode_batch(pd.DataFrame(dict(batch)))  # a LazyBatch: read it all

    def run(features: Features | None) -> Dataset:
        return source.map(
            encode,
            batched=True,
            remove_columns=[c for c in frame.columns if c != ID],
            features=features,
            new_fingerprint=stamp,
            cache_file_name=str(file),
            load_from_cache_file=True,
            desc=desc,
        )

    def compact() -> Features | None:  # one question encoded names the columns
        return column_features(list(encoder.encode_batch(frame.head(1))))

    try:
        dataset = run(None if cached else compact())  # a cache file holds its types
    except (OSError, ValueError) as exc:  # a cache file cut short or damaged since
        if not cached:
            raise
        log.warning("%s: unreadable (%s); tokenizing again", file, exc)
        file.unlink(missing_ok=True)
        cached = False
        dataset = run(compact())
    seconds = time.perf_counter() - started
    how = f"read from {file}" if cached else f"tokenized in {seconds:.1f}s, cached in {file}"
    log.info("%d questions %s", len(dataset), how)
    return Tokenized(dataset, stamp, file, cached, seconds)


def _writable(cache_dir: Path) -> Path:
    cache_dir = cache_dir.expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SciqaError(
            f"train.tokenize_cache = {cache_dir}: cannot create it ({exc.strerror or exc}); "
            "set train.tokenize_cache to a writable folder"
        ) from None
    if not os.access(cache_dir, os.W_OK):
        raise SciqaError(
            f"train.tokenize_cache = {cache_dir}: not writable; set train.tokenize_cache "
            "to a writable folder"
        )
    return cache_dir


class TokenizedTables:
    """The tables of a run, each tokenized on first use and kept for the next folds."""

    def __init__(
        self,
        encoder: RowEncoder,
        letters: list[str],
        cache_dir: Path | None,
        *,
        first: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        """``first``: a context in which the main process tokenizes before the others
        read its cache file (``PartialState.main_process_first``)."""
        self.encoder = encoder
        self.letters = letters
        self.cache_dir = cache_dir or default_cache_dir()
        self.first = first
        self._done: dict[int, tuple[pd.DataFrame, Tokenized]] = {}

    def split(self, table: pd.DataFrame, frame: pd.DataFrame) -> Split:
        """``frame``'s rows (taken from ``table``), encoded."""
        key = id(table)  # the table is held below, so its id is not reused meanwhile
        if key not in self._done:
            with self.first():
                done = tokenize_table(self.encoder, table, self.letters, self.cache_dir)
            self._done[key] = (table, done)
        return self._done[key][1].split(frame)

    def summary(self) -> list[dict[str, Any]]:
        """Per table tokenized by this process: rows, fingerprint, file, cached, seconds."""
        return [done.summary() for _, done in self._done.values()]

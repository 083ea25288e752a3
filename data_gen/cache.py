"""SQLite request cache: one row per request key, committed as soon as its reply arrives.
The ``llm:`` judge's verdicts live beside the replies (table ``judged``), so a rerun, or a
larger ``--n`` over the same passages, judges only questions it has not judged before.

The key is a hash of everything that decides the reply (model, messages, generation
params, response format/schema), so a rerun after a crash sends only the requests with
no row yet, and editing a template invalidates only the requests it renders differently.
WAL mode keeps committed rows safe if the process is killed mid-write.

A damaged file (a truncated copy, a disk fault) is checked for on opening and refused in
one line, never replaced: its rows are money already spent, and ``sqlite3 .recover`` may
still save them. A full disk while storing a reply is one line too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sciqa.errors import DiskFullError, SciqaError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_CREATE = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,      -- the request body as sent (JSON)
    response TEXT NOT NULL,     -- the chat.completion as received (JSON)
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS judged (
    key TEXT PRIMARY KEY,       -- hash of the judge and the prompt's token ids
    logits TEXT NOT NULL,       -- the option letters' logits (JSON list)
    created REAL NOT NULL
);
"""


def request_key(body: dict[str, Any]) -> str:
    """Stable hash of a request body (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ReplyCache:
    """``get``/``put`` chat completions by request key; every ``put`` is its own commit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise SciqaError(f"{self.path}: the reply cache is a folder; set gen.cache to a file")
        self._db = sqlite3.connect(self.path, isolation_level=None)
        with self._errors():
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Structure checked up front (O(rows), milliseconds): a damaged cache found
            # halfway through a run would stop it after requests were paid for.
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._db.executescript(_CREATE)
            row = self._db.execute("SELECT value FROM meta WHERE name='version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise SciqaError(
                f"{self.path}: reply cache version {row[0]}, this sciqa reads "
                f"{SCHEMA_VERSION}; move it away or set gen.cache to a new file"
            )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """sqlite's errors as one line naming the file and what to do."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "full" in text:  # SQLITE_FULL: "database or disk is full"
                raise DiskFullError.at(self.path) from None
            if "locked" in text:  # another process held the write lock past the timeout
                raise SciqaError(
                    f"{self.path}: reply cache locked by another process; wait for it or "
                    "set gen.cache to another file"
                ) from None
            self._db.close()
            raise SciqaError(
                f"{self.path}: damaged reply cache ({text}); restore it, salvage it with "
                "`sqlite3 FILE .recover`, or move it away to start a new one (its requests "
                "are then paid again)"
            ) from None

    def get(self, key: str) -> dict[str, Any] | None:
        with self._errors():
            row = self._db.execute("SELECT response FROM replies WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            log.warning(
                "%s: the stored reply to request %s is damaged; asking again", self.path, key
            )
            return None

    def has(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already answered."""
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._errors():
                rows = self._db.execute(f"SELECT key FROM replies WHERE key IN ({marks})", chunk)
                found.update(r[0] for r in rows)
        return found

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        usage = response.get("usage") or {}
        row = (
            key,
            json.dumps(request, ensure_ascii=False),
            json.dumps(response, ensure_ascii=False),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            time.time(),
        )
        with self._errors():
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)", row)

    def judged(self, keys: Iterable[str]) -> dict[str, list[float]]:
        """The stored letter logits of the judged prompts among ``keys``."""
        keys = list(keys)
        found: dict[str, list[float]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._errors():
                rows = self._db.execute(
                    f"SELECT key, logits FROM judged WHERE key IN ({marks})", chunk
                )
                found.update((key, json.loads(logits)) for key, logits in rows)
        return found

    def put_judged(self, logits: dict[str, list[float]]) -> None:
        """Store a batch of judged prompts as it is scored: a killed judge loses one batch."""
        now = time.time()
        rows = [(key, json.dumps(values), now) for key, values in logits.items()]
        with self._errors():
            self._db.executemany("INSERT OR REPLACE INTO judged VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

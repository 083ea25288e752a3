"""SQLite request cache: one row per request key, committed as soon as its reply arrives.

The key is a hash of everything that decides the reply (model, messages, generation
params, response format/schema), so a rerun after a crash sends only the requests with
no row yet, and editing a template invalidates only the requests it renders differently.
WAL mode keeps committed rows safe if the process is killed mid-write.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sciqa.errors import SciqaError

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
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_CREATE)
            row = self._db.execute("SELECT value FROM meta WHERE name='version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SciqaError(f"{self.path}: not a usable reply cache ({exc}); delete it") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise SciqaError(
                f"{self.path}: reply cache version {row[0]}, this sciqa reads "
                f"{SCHEMA_VERSION}; move it away or set gen.cache to a new file"
            )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT response FROM replies WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def has(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already answered."""
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key FROM replies WHERE key IN ({marks})", chunk)
            found.update(r[0] for r in rows)
        return found

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        usage = response.get("usage") or {}
        self._db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                json.dumps(request, ensure_ascii=False),
                json.dumps(response, ensure_ascii=False),
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

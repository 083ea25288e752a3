"""Read and write the tables stages hand each other: CSV, parquet or JSONL, by suffix.

CSV cells are read as text with no NA guessing, so an option such as ``"None"`` or
``"NA"`` stays a string and ids keep their leading zeros.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from sciqa.errors import DISK_FULL, DiskFullError, SchemaError, SciqaError
from sciqa.hf_datasets import is_dataset_source, read_split
from sciqa.layouts import Layout, to_sciqa
from sciqa.schema import validate_questions

log = logging.getLogger("sciqa")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}


def table_format(path: str | os.PathLike[str]) -> str:
    """Format name for ``path``'s suffix; raises naming the supported suffixes."""
    if Path(path).is_dir():  # else a folder reads as "unsupported file type ''"
        raise SciqaError(f"{path}: is a directory, expected a .csv/.parquet/.jsonl file")
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        supported = ", ".join(sorted(FORMATS))
        raise SciqaError(f"{path}: unsupported file type {suffix!r}; use one of {supported}")
    return FORMATS[suffix]


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a table, turning parser failures into a one-line error naming the file."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise SciqaError(f"{path}: file not found")
    try:
        if fmt == "csv":
            # utf-8-sig: spreadsheet exports start with a BOM that would rename "id".
            return pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig"
            )
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, dtype=False)
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{path}: file is empty (no header row)") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        # pyarrow's and pandas' messages can span lines; keep the first.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaError(f"{path}: cannot be read as {fmt}: {reason}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A crash or Ctrl-C mid-write leaves the old file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file 0600 and the rename keeps that; give it the mode open() would.
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise DiskFullError.at(path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def follow_umask(path: str | os.PathLike[str]) -> Path:
    """Give ``path`` (a file, or a folder and all inside it) the modes ``open()`` and
    ``mkdir`` would under the umask: libraries save through private temporary files
    (transformers' ``model.safetensors`` lands 0600), which other users cannot read."""
    path, mask = Path(path), current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        executable = item.is_dir() or item.stat().st_mode & 0o111
        os.chmod(item, (0o777 if executable else 0o666) & ~mask)
    return path


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write indented JSON atomically (numpy scalars and paths become plain values)."""
    return write_text(json.dumps(data, indent=2, default=_json_default) + "\n", path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if hasattr(value, "tolist"):  # numpy array
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` atomically: a crash mid-write never leaves a truncated file."""
    fmt = table_format(path)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        elif fmt == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    return Path(path)


def read_questions(
    source: str | os.PathLike[str],
    *,
    require_answer: bool = False,
    layout: Layout | None = None,
) -> pd.DataFrame:
    """Load and validate questions (see :mod:`sciqa.schema` for the columns): a table
    file, a ``datasets`` save_to_disk folder (``FOLDER[@SPLIT]``) or a Hub dataset
    (``hf:OWNER/NAME[:CONFIG][@SPLIT]``, :mod:`sciqa.hf_datasets`), in any layout
    :mod:`sciqa.layouts` knows (``layout``: the config's, else the default config's)."""
    name = os.fspath(source)
    dataset = is_dataset_source(name)
    if not dataset and Path(name).is_dir():
        raise SciqaError(
            f"{name}: is a directory but not a datasets save_to_disk folder (no state.json or "
            "dataset_dict.json); pass a .csv/.parquet/.jsonl file, such a folder or hf:OWNER/NAME"
        )
    raw = read_split(name) if dataset else read_table(name)
    mapped = to_sciqa(raw, name, layout or Layout.default(), strict=dataset)
    if mapped.dropped:
        log.warning(
            "%s: %d questions left out, their option count is not the other %d's "
            "(one option count per table)",
            name,
            mapped.dropped,
            len(mapped.frame),
        )
    return validate_questions(mapped.frame, name, require_answer=require_answer)


def write_questions(
    frame: pd.DataFrame, path: str | os.PathLike[str], *, require_answer: bool = False
) -> Path:
    """Validate then write, so a stage never hands a broken file to the next one."""
    return write_table(validate_questions(frame, str(path), require_answer=require_answer), path)

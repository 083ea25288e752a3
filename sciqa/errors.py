"""Errors that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class SciqaError(Exception):
    """Bad input or configuration that the user can fix; the message says what to do."""


class SchemaError(SciqaError, ValueError):
    """A questions/submission file does not match the documented columns."""


class ConfigError(SciqaError, ValueError):
    """A config file or CLI override is invalid."""


class AssetError(SciqaError, RuntimeError):
    """A default offline model or corpus cannot be found."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(SciqaError, OSError):
    """A write ran out of space: a user-fixable fault, reported as one line."""

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> DiskFullError:
        return cls(f"{path}: no space left on device ({free_space(path)}); {FREE_HINT}")


FREE_HINT = "free some space (or write elsewhere) and rerun: finished work is kept"


def free_space(path: str | os.PathLike[str]) -> str:
    """``"1.2 GB free on /data"`` for the filesystem holding ``path``."""
    folder = existing_folder(path)
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 1e9:.2f} GB free on {folder}"


def existing_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` or its nearest existing parent: where a file about to be written will land."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder

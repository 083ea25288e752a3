"""Output folders that never tell two stories: one writer at a time, built aside, swapped
in whole.

Every command that writes a folder (or a file other runs read) takes :class:`OutLock` on
it first, so a second writer stops with one line naming the first. A long-lived folder
(an index, a bundle) is built in :func:`partial_dir`, a sibling, and :func:`publish`
swaps it in by one ``rename``: until then the previous good folder stays whole and
usable, and a kill leaves at worst a ``.NAME.partial`` sibling that the next run clears
or resumes.

::

    PARENT/NAME/            the output readers see
    PARENT/.NAME.lock       holder: pid, host, command, start time (while a run writes)
    PARENT/.NAME.partial/   the next NAME, while it is being built
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from sciqa.errors import DISK_FULL, DiskFullError, SciqaError

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # suffix of the sibling a folder is built in
OLD = ".old"  # suffix of the folder being replaced, during a non-atomic swap
LOCK = ".lock"
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # where no lock file can be made


class OutDirError(SciqaError):
    """An output path that cannot be written as asked (a file where a folder goes...)."""


class OutLocked(SciqaError):
    """Another live run writes the same output."""


def _sibling(out: Path, suffix: str) -> Path:
    return out.parent / f".{out.name}{suffix}"


def partial_dir(out: str | os.PathLike[str]) -> Path:
    """Where the next ``out`` is built: a sibling on the same filesystem, so the final
    rename is atomic."""
    return _sibling(Path(out), PARTIAL)


def lock_path(out: str | os.PathLike[str]) -> Path:
    return _sibling(Path(out), LOCK)


def check_out_dir(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``out`` must be a folder or not exist yet; checked before anything is loaded."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutDirError(
            f"{out}: {flag} is an existing file, not a folder; give a folder path "
            "(it is created) or move the file away"
        )
    if out.parent.exists() and not out.parent.is_dir():
        raise OutDirError(f"{out.parent}: is a file, so {flag} {out} cannot be created in it")
    return out


def check_out_file(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``out`` must be a file path (existing or not), never a folder."""
    out = Path(out)
    if out.is_dir():
        raise OutDirError(f"{out}: {flag} is an existing folder; give a file path")
    return out


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holder_text(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on {holder.get('host')}, "
        f"`{holder.get('command')}`, since {holder.get('started')}"
    )


class OutLock:
    """An advisory lock on an output path, held for the life of one run.

    ``flock`` is released by the kernel when its holder dies however it dies, so a lock
    is never stuck; the holder's details in the file only serve the messages. A file
    left by a dead run is taken over with a warning naming it.
    """

    def __init__(self, out: str | os.PathLike[str], command: str | None = None):
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.command = command or " ".join(["sciqa", *sys.argv[1:]])
        self._fd: int | None = None

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take()
        except OSError as exc:
            if exc.errno not in READ_ONLY:
                raise
            # The lock goes beside OUT (e.g. /kaggle/.working.lock): a read-only parent
            # must not stop a run that could write OUT itself.
            log.warning(
                "%s: cannot create %s (%s); running without a guard against a second writer",
                self.out,
                self.path,
                exc.strerror,
            )
        recover(self.out)

    def _take(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutLocked(
                    f"{self.out}: another sciqa run is writing it ({_holder_text(holder)}); "
                    "wait for it to finish or use another --out"
                ) from None
            # The previous holder may have unlinked the file between our open and flock:
            # then we hold a lock nobody else can see; start again on the new file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_holder(fd)
        if stale.get("pid"):
            log.warning(
                "%s: taking over the lock of a run that did not finish (%s)",
                self.out,
                _holder_text(stale),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as exc:
            os.close(fd)  # an fd left open would hold the lock until the process exits
            if exc.errno in DISK_FULL:
                raise DiskFullError.at(self.path) from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so the file's presence means "a run died".
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    raw = os.pread(fd, 4096, 0)
    try:
        holder = json.loads(raw.decode()) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    if holder.get("pid") and holder.get("host") == socket.gethostname():
        holder["alive"] = process_alive(int(holder["pid"]))
    return holder if isinstance(holder, dict) else {}


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(staging: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Make the finished ``staging`` folder visible as ``out``, replacing the old one.

    Readers see the old folder or the new one, never a mix: an atomic exchange where the
    kernel offers one, else two renames whose gap :func:`recover` repairs.
    """
    staging, out = Path(staging), Path(out)
    if not out.exists():
        os.rename(staging, out)
        return out
    if _exchange(staging, out):
        shutil.rmtree(staging)  # now holds the old folder
        return out
    old = _sibling(out, OLD)
    if old.exists():
        shutil.rmtree(old)
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old)
    return out


def recover(out: str | os.PathLike[str]) -> None:
    """Undo a swap killed between its two renames (see :func:`publish`)."""
    out = Path(out)
    old = _sibling(out, OLD)
    if not old.exists():
        return
    if out.exists():
        shutil.rmtree(old)
    else:
        os.rename(old, out)
        log.warning("%s: restored from %s after an interrupted swap", out, old)


def fresh_partial(out: str | os.PathLike[str]) -> Path:
    """An empty :func:`partial_dir` for ``out`` (a leftover from a killed run is removed)."""
    staging = partial_dir(out)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)  # mkdir, not mkdtemp: the folder follows the umask
    return staging

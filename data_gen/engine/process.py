"""Run a local server process until a block exits: start, wait for ``/health``, stop.

The server runs in its own process group, so stopping it also stops its worker
processes (vLLM's engine core); SIGTERM to ``sciqa`` unwinds like Ctrl-C and stops it too.
Its output goes to ``<cache dir>/logs/<name>-<port>.log``; a start that fails is reported
with the log line that best says why.

Example: ``with run_server(command, name=..., port=port, log=log, startup_timeout=60) as
base_url: ...`` gives ``http://127.0.0.1:<port>/v1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sciqa.assets.registry import default_cache_dir
from sciqa.errors import SciqaError

HOST = "127.0.0.1"
STOP_SECONDS = 30  # after SIGTERM, before SIGKILL
# The line that says why a server died: the last error line, else the last line. vLLM
# ends a failed start with a generic "See root cause above" that names nothing.
_ERROR_LINE = re.compile(r"\w*(Error|Exception)\b|\berror:|\bfailed\b", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?([A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]+\]\s*)?")


class ServerError(SciqaError):
    """The embedded LLM server could not be prepared or started, or died while serving."""


# base_url -> (process, name, log) of the servers running now: a client whose requests
# fail asks :func:`server_died` whether to wait and retry or to stop at once.
_RUNNING: dict[str, tuple[subprocess.Popen, str, Path]] = {}


def server_died(base_url: str) -> str | None:
    """Why the server this process started at ``base_url`` is gone (its exit code and the
    log line that says why), or None while it runs (or when it is not ours)."""
    entry = _RUNNING.get(base_url)
    if entry is None or entry[0].poll() is None:
        return None
    process, name, log = entry
    last = last_log_line(log.read_text(encoding="utf-8", errors="replace"))
    return f"{name} died (exit {process.returncode}): {last} (full log: {log})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def claim_port(port: int) -> int:
    """``port`` if nothing listens there (0 = any free port); a one-line error if taken."""
    if not port:
        return free_port()
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ServerError(
                f"llm.server_port {port}: the port is taken on {HOST}; stop what uses it "
                "or set llm.server_port=0 (any free port)"
            ) from None
    return port


def last_log_line(text: str) -> str:
    """The line of a server's log that best says why it stopped (prefixes removed)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln) and "root cause above" not in ln]
    line = errors[-1] if errors else (lines[-1] if lines else "no output")
    return _LOG_PREFIX.sub("", line)[:300]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def log_path(name: str, port: int, cache_dir: Path | None = None) -> Path:
    folder = (cache_dir or default_cache_dir()) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{port}.log"


@contextlib.contextmanager
def run_server(
    command: list[str],
    *,
    name: str,
    port: int,
    log: Path,
    startup_timeout: float,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``command`` (a server listening on ``port``), wait for ``/health``, yield its
    ``/v1`` base_url; stop it and its children when the block exits (also on Ctrl-C and
    SIGTERM, which unwinds like Ctrl-C)."""
    root = f"http://{HOST}:{port}"
    with open(log, "w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(f"{root}/health"):
            if process.poll() is not None:
                last = last_log_line(log.read_text(encoding="utf-8", errors="replace"))
                raise ServerError(f"{name} exited while starting: {last} (full log: {log})")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{name} did not answer {root}/health within {startup_timeout:.0f}s; "
                    f"raise llm.server_startup_timeout (log: {log})"
                )
            time.sleep(0.5)
        _RUNNING[f"{root}/v1"] = (process, name, log)
        yield f"{root}/v1"
    finally:
        _RUNNING.pop(f"{root}/v1", None)
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``STOP_SECONDS``."""
    for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its children (vLLM's engine core) may not be yet.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt

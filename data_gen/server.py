"""The embedded OpenAI-compatible LLM server on 127.0.0.1: vLLM CPU, or ``transformers serve``.

``llm.server = vllm`` (default) runs the engine of :mod:`data_gen.engine` from its own
virtual environment: continuous batching and grammar-constrained JSON.
``llm.server = transformers`` runs ``transformers serve`` from this environment: one
request at a time, ``response_format`` ignored. Neither can serve the packaged GGUF
directly, so it is converted once into a safetensors folder in a cache dir and that
folder is served. The server runs in its own process group, so stopping it also stops
the engine's worker processes. Imports of torch/transformers happen inside functions.

Example: ``with embedded_server(config) as (base_url, model): ...`` gives
``http://127.0.0.1:<port>/v1`` and the model name to send.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sciqa.assets.llm import default_cache_dir, prepare_model
from sciqa.config import SciqaConfig
from sciqa.errors import SciqaError

HOST = "127.0.0.1"
STOP_SECONDS = 30  # after SIGTERM, before SIGKILL
# The line that says why a server died: the last error line, else the last line. vLLM
# ends a failed start with a generic "See root cause above" that names nothing.
_ERROR_LINE = re.compile(r"\w*(Error|Exception)\b|\berror:|\bfailed\b", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?([A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]+\]\s*)?")


class ServerError(SciqaError):
    """The embedded LLM server could not be prepared or started."""


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
        yield f"{root}/v1"
    finally:
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


def _transformers_cli() -> list[str]:
    script = Path(sys.executable).parent / "transformers"
    if script.is_file():
        return [str(script)]
    found = shutil.which("transformers")
    if found is None:
        raise ServerError(
            "`transformers` CLI not found: install the gen extra (pip install 'sciqa[gen]')"
        )
    return [found]


@contextlib.contextmanager
def serve(model: str, *, port: int = 0, startup_timeout: float = 300.0) -> Iterator[str]:
    """Run ``transformers serve MODEL`` on 127.0.0.1; yield its ``/v1`` base_url."""
    port = claim_port(port)
    command = [
        *_transformers_cli(),
        *("serve", model, "--host", HOST, "--port", str(port), "--device", "cpu"),
        *("--log-level", "warning"),
    ]
    log = log_path("transformers-serve", port)
    with run_server(
        command,
        name=f"`transformers serve {model}`",
        port=port,
        log=log,
        startup_timeout=startup_timeout,
    ) as base_url:
        yield base_url


@contextlib.contextmanager
def serve_engine(model: str, config: SciqaConfig) -> Iterator[str]:
    """Run the vLLM CPU engine on ``model`` (a folder); yield its ``/v1`` base_url."""
    from data_gen.engine import engine_command, engine_environ, engine_python

    llm = config.llm
    python = engine_python(llm)
    port = claim_port(llm.server_port)
    command = engine_command(
        python,
        model,
        port,
        compile_model=llm.engine_compile,
        max_model_len=llm.engine_max_model_len,
    )
    log = log_path("vllm", port, llm.server_cache_dir)
    print(f"starting the vLLM CPU engine on {model} (log: {log})", file=sys.stderr)
    with run_server(
        command,
        name="the vLLM engine",
        port=port,
        log=log,
        startup_timeout=llm.server_startup_timeout,
        env=engine_environ(llm),
    ) as base_url:
        yield base_url


def check_model_folder(folder: str, key: str = "models.llm") -> None:
    """A local folder the engine can load: it has a ``config.json``."""
    path = Path(folder).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ServerError(
            f"{key} = {folder}: not a model folder (no config.json); give a folder written "
            "by save_pretrained, a .gguf file or a Hub name"
        )


@contextlib.contextmanager
def embedded_server(config: SciqaConfig) -> Iterator[tuple[str, str]]:
    """Prepare ``models.llm`` and serve it; yield ``(base_url, model name to request)``."""
    llm = config.llm
    if llm.server == "vllm":
        from data_gen.engine import SERVED_NAME, engine_python

        engine_python(llm)  # not installed: say so before a GGUF conversion
    model = prepare_model(config.models.llm, llm.server_cache_dir)
    check_model_folder(model)
    if llm.server == "vllm":
        with serve_engine(model, config) as base_url:
            yield base_url, SERVED_NAME
        return
    with serve(model, port=llm.server_port, startup_timeout=llm.server_startup_timeout) as url:
        yield url, model


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever(config: SciqaConfig, echo: Callable[[str], Any]) -> None:
    """``sciqa serve-llm``: start the embedded server, print its base_url, wait for Ctrl-C.

    SIGTERM stops it the same way (see :func:`run_server`).
    """
    with embedded_server(config) as (base_url, model):
        echo(f"base_url {base_url}")
        echo(f"model    {model}")
        echo(f"use it:  sciqa gen ... --set llm.base_url={base_url} --set llm.model={model}")
        echo("Ctrl-C stops the server")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            echo("stopping")

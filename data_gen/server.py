"""The embedded OpenAI-compatible LLM server: ``transformers serve`` on 127.0.0.1.

``transformers serve`` cannot serve the packaged GGUF directly (its GGUF config lacks
``architectures``), so the GGUF is converted once into a safetensors folder in a cache
dir and that folder is served. Imports of torch/transformers happen inside functions.

Example: ``with embedded_server(config) as (base_url, model): ...`` gives
``http://127.0.0.1:<port>/v1`` and the model name to send.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sciqa.config import SciqaConfig
from sciqa.errors import SciqaError
from sciqa.llm_assets import prepare_model

HOST = "127.0.0.1"
LOG_TAIL = 2000  # characters of the server's log quoted when it fails to start


class ServerError(SciqaError):
    """The embedded LLM server could not be prepared or started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


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
    """Run ``transformers serve MODEL`` on 127.0.0.1; yield its ``/v1`` base_url.

    Waits for ``/health``; the server is stopped when the block exits (also on Ctrl-C).
    """
    port = port or free_port()
    root = f"http://{HOST}:{port}"
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 (closed in finally)
    command = [
        *_transformers_cli(),
        "serve",
        model,
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    # SIGTERM (kill, CI timeouts) unwinds like Ctrl-C, so the child server is stopped too.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(f"{root}/health"):
            if process.poll() is not None:
                log.seek(0)
                tail = log.read()[-LOG_TAIL:].strip().splitlines()
                last = tail[-1] if tail else "no output"
                raise ServerError(f"`transformers serve {model}` exited: {last}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"`transformers serve` did not answer {root}/health within "
                    f"{startup_timeout:.0f}s; raise llm.server_startup_timeout"
                )
            time.sleep(0.5)
        yield f"{root}/v1"
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def embedded_server(config: SciqaConfig) -> Iterator[tuple[str, str]]:
    """Prepare ``models.llm`` and serve it; yield ``(base_url, model name to request)``."""
    model = prepare_model(config.models.llm, config.llm.server_cache_dir)
    with serve(
        model, port=config.llm.server_port, startup_timeout=config.llm.server_startup_timeout
    ) as base_url:
        yield base_url, model


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever(config: SciqaConfig, echo: Callable[[str], Any]) -> None:
    """``sciqa serve-llm``: start the embedded server, print its base_url, wait for Ctrl-C.

    SIGTERM stops it the same way (see :func:`serve`).
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

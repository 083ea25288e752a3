"""The LLM endpoint that ``sciqa gen`` asks and ``sciqa serve-llm`` serves: :func:`serve_llm`.

``llm.base_url`` set: that OpenAI-compatible server, as it is. Otherwise ``models.llm`` is
made a local folder (the packaged GGUF is converted once, see :mod:`sciqa.assets.llm`)
and served on 127.0.0.1 by ``llm.server`` until the block exits:

- ``vllm`` (default, :mod:`data_gen.engine.vllm_cpu`): vLLM's CPU build from its own
  virtual environment; continuous batching and grammar-constrained JSON.
- ``transformers`` (:mod:`data_gen.engine.transformers_serve`): ``transformers serve`` from
  this environment; one request at a time, ``response_format`` ignored.

Both run under :func:`data_gen.engine.process.run_server` (own process group, ``/health``
polled, stopped with their children). Imports of torch/transformers happen inside functions.

Example: ``with serve_llm(config.llm, config.models.llm) as endpoint: endpoint.base_url``
is ``http://127.0.0.1:<port>/v1`` for the embedded engine.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_gen.engine.process import ServerError
from data_gen.engine.transformers_serve import serve_transformers
from data_gen.engine.vllm_cpu import SERVED_NAME, engine_python, serve_vllm
from sciqa.assets.llm import prepare_model
from sciqa.config import DEFAULT, LLMConfig
from sciqa.errors import SciqaError

LOCAL_KEY = "sciqa-local"  # the embedded server checks no key; the SDK wants one
PACKAGED_LLM = "SmolLM2-135M-Instruct"  # what models.llm = default serves


@dataclass(frozen=True)
class Endpoint:
    """A ready OpenAI-compatible endpoint and how to ask it."""

    base_url: str
    model: str  # the model name to send
    api_key: str = field(repr=False)
    backend: str  # llm.backend, or what the embedded server is
    concurrency: int  # requests in flight: llm.concurrency, 1 for transformers serve
    label: str  # the writing model's short name: questions' source is gen:<label>


def api_key(llm: LLMConfig) -> str:
    """The key from the environment variable named by ``llm.api_key_env``."""
    name = llm.api_key_env
    key = os.environ.get(name, "").strip()
    if not key:
        raise SciqaError(
            f"environment variable {name} (llm.api_key_env) is not set: export the API key "
            f"there (any non-empty value for local servers that check none)"
        )
    return key


def check_model_folder(folder: str, key: str = "models.llm") -> None:
    """A local folder the engine can load: it has a ``config.json``."""
    path = Path(folder).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ServerError(
            f"{key} = {folder}: not a model folder (no config.json); give a folder written "
            "by save_pretrained, a .gguf file or a Hub name"
        )


def _label(llm: LLMConfig, model: str) -> str:
    """The short name of the model that answers (``models.llm`` when it is served as is)."""
    if llm.model == DEFAULT:
        return Path(model).stem if model != DEFAULT else PACKAGED_LLM
    return Path(llm.model).name if os.sep in llm.model else llm.model


@contextlib.contextmanager
def serve_llm(llm: LLMConfig, model: str) -> Iterator[Endpoint]:
    """A ready endpoint for the ``llm`` section and ``model`` (``models.llm``).

    ``llm.base_url`` set: that server; ``llm.model`` must name a model it serves and the
    key is read from ``llm.api_key_env``. Otherwise ``model`` is served on 127.0.0.1 by
    ``llm.server`` and stopped when the block exits; requests name ``llm.model`` if set,
    else the name the server answers to. Every failure to get there (no key, engine not
    installed, no model folder, port taken, server died while starting) is a one-line
    :class:`~sciqa.errors.SciqaError`.
    """
    label = _label(llm, model)
    if llm.base_url != DEFAULT:
        if llm.model == DEFAULT:
            raise SciqaError(
                f"llm.model is 'default' but llm.base_url is {llm.base_url}: set llm.model to "
                "a model that server serves (e.g. gpt-4o-mini)"
            )
        yield Endpoint(llm.base_url, llm.model, api_key(llm), llm.backend, llm.concurrency, label)
        return
    python = engine_python(llm) if llm.server == "vllm" else None  # before a GGUF conversion
    folder = prepare_model(model, llm.server_cache_dir)
    check_model_folder(folder)
    named = llm.model if llm.model != DEFAULT else None
    if python is not None:
        with serve_vllm(llm, folder, python) as base_url:
            yield Endpoint(
                base_url, named or SERVED_NAME, LOCAL_KEY, "vllm", llm.concurrency, label
            )
        return
    # transformers serve (no continuous batching) generates one reply at a time: parallel
    # requests would only queue there and run into llm.timeout, so send them one by one.
    port, timeout = llm.server_port, llm.server_startup_timeout
    with serve_transformers(folder, port=port, startup_timeout=timeout) as base_url:
        yield Endpoint(base_url, named or folder, LOCAL_KEY, "generic", 1, label)


def serve_forever(llm: LLMConfig, model: str, echo: Callable[[str], Any]) -> None:
    """``sciqa serve-llm``: serve ``model`` on 127.0.0.1, print its base_url, wait for Ctrl-C.

    Always the embedded server (``llm.base_url`` and ``llm.model`` are not read), so what
    it prints is the name that server answers to. SIGTERM stops it the same way (see
    :func:`~data_gen.engine.process.run_server`).
    """
    embedded = llm.model_copy(update={"base_url": DEFAULT, "model": DEFAULT})
    with serve_llm(embedded, model) as endpoint:
        echo(f"base_url {endpoint.base_url}")
        echo(f"model    {endpoint.model}")
        echo(
            f"use it:  sciqa gen ... --set llm.base_url={endpoint.base_url} "
            f"--set llm.model={endpoint.model}"
        )
        echo("Ctrl-C stops the server")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            echo("stopping")

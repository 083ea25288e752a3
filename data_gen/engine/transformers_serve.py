"""``llm.server = transformers``: ``transformers serve`` from this environment.

No engine venv is needed, but it answers one request at a time (no continuous batching)
and ignores ``response_format``. It serves a model folder or Hub name on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from data_gen.engine.process import HOST, ServerError, claim_port, log_path, run_server


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
def serve_transformers(
    model: str, *, port: int = 0, startup_timeout: float = 300.0
) -> Iterator[str]:
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

"""The ``sciqa`` command. The package only wires commands: ``app`` (the Typer app and
shared options), then ``evidence`` (eval, report, validate, audit), ``setup`` (config,
assets, benchmark) and ``stages`` (gen, serve-llm, index, retrieve, train, infer, pack:
the only module that imports a stage). Each command imports what it needs inside its
body, so ``sciqa --help`` stays fast and needs no torch, faiss or openai.
"""

from sciqa.cli import evidence, setup, stages  # noqa: F401  (they register the commands)
from sciqa.cli.app import app
from sciqa.progress import quiet_library_bars

quiet_library_bars()

__all__ = ["app"]

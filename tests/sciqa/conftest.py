"""Fixtures the kernel tests share: Python code run in a fresh interpreter, with the
heavy libraries it imported (the kernel and ``sciqa --help`` must import none)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# The stage runtimes (extras ml, retrieval, gen, report): never loaded by the kernel.
HEAVY = frozenset({"torch", "faiss", "openai", "transformers", "matplotlib", "datasets"})

# Runs argv[1] as a script, then writes every module loaded (even after SystemExit).
_WRAPPER = """\
import json, sys
code, out = sys.argv[1], sys.argv[2]
try:
    exec(compile(code, "<fresh>", "exec"), {"__name__": "__fresh__"})
finally:
    with open(out, "w") as handle:
        json.dump(sorted(sys.modules), handle)
"""


@dataclass(frozen=True)
class FreshRun:
    returncode: int
    stdout: str
    stderr: str
    modules: frozenset[str]  # every module loaded, dotted names

    @property
    def heavy(self) -> set[str]:
        """The :data:`HEAVY` packages (or any of their submodules) that were imported."""
        return {name.split(".")[0] for name in self.modules} & HEAVY


@pytest.fixture
def fresh_interpreter(tmp_path: Path) -> Callable[[str], FreshRun]:
    """``run(code)``: ``code`` in a new ``python`` process, from the repository root."""
    root = Path(__file__).resolve().parents[2]
    calls = iter(range(1_000_000))

    def run(code: str) -> FreshRun:
        out = tmp_path / f"modules_{next(calls)}.json"
        done = subprocess.run(
            [sys.executable, "-c", _WRAPPER, code, str(out)],
            capture_output=True,
            text=True,
            cwd=root,
        )
        modules = frozenset(json.loads(out.read_text())) if out.exists() else frozenset()
        return FreshRun(done.returncode, done.stdout, done.stderr, modules)

    return run

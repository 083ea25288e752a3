"""The layout rules of the kernel (the modules directly under ``sciqa/`` and the
``sciqa/cli/`` package).

Importing a kernel module loads none of the stage runtimes (torch, faiss, openai,
transformers, matplotlib), so ``sciqa`` and ``sciqa --help`` work with the core
dependencies only; and nothing under ``sciqa/`` imports a stage package (``data_gen``,
``retrieval``, ``train``, ``infer``) except ``sciqa/cli/stages.py``, which dispatches to
them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sciqa"
STAGES = frozenset({"data_gen", "retrieval", "train", "infer"})
CLI_STAGES = PACKAGE / "cli" / "stages.py"
MAY_IMPORT_STAGES = {CLI_STAGES}


def kernel_modules() -> list[str]:
    """Dotted names of the modules directly under sciqa/ and in sciqa/cli/ (a package's
    ``__init__`` is the package's own name)."""
    names = []
    for path in sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "cli").glob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_code(module: str) -> str:
    """Python that imports ``module`` as a user would."""
    if module == "sciqa":  # the package, then each name it exports lazily
        return "import sciqa\nfor name in sciqa.__all__:\n    getattr(sciqa, name)\n"
    if module == "sciqa.__main__":  # runs the CLI when imported: ask it for its help
        return (
            "import sys\nsys.argv = ['sciqa', '--help']\n"
            "try:\n    import sciqa.__main__\n"
            "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        )
    return f"import {module}\n"


def test_the_kernel_is_what_the_layout_says():
    modules = kernel_modules()
    assert {"sciqa", "sciqa.cli", "sciqa.cli.stages", "sciqa.config", "sciqa.io"} <= set(modules)
    assert "sciqa.evaluation" not in modules  # subpackages are not kernel modules


@pytest.mark.parametrize("module", kernel_modules())
def test_importing_a_kernel_module_loads_no_stage_runtime(module, fresh_interpreter):
    done = fresh_interpreter(import_code(module))
    assert done.returncode == 0, done.stderr
    # (sciqa.__main__ leaves sys.modules when its import ends in SystemExit: its CLI stays)
    assert (module if module != "sciqa.__main__" else "sciqa.cli") in done.modules
    assert not done.heavy, f"importing {module} imported {sorted(done.heavy)}"


def called_name(call: ast.Call) -> str | None:
    """``f`` for ``f(...)`` and ``x.f(...)``."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree`` at any depth (inside functions
    and branches too), and of ``import_module("name")`` or ``__import__("name")``.
    Relative imports stay inside sciqa, so they are left out."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and called_name(node) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def stage_imports(path: Path) -> list[str]:
    """``path:line imports module`` for each import of a stage package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in imported_names(tree)
        if name.split(".")[0] in STAGES
    ]


def test_imported_names_sees_every_form_of_import():
    code = (
        "import infer.outputs\nfrom train import commands\nfrom . import io\n"
        "def later():\n    from retrieval.text import queries\n"
        "    importlib.import_module('data_gen.server')\n    __import__('os')\n"
        "if True:\n    import numpy as np, infer\n"
    )
    assert imported_names(ast.parse(code)) == [
        (1, "infer.outputs"),
        (2, "train"),
        (5, "retrieval.text"),
        (6, "data_gen.server"),
        (7, "os"),
        (9, "infer"),
        (9, "numpy"),
    ]


def test_only_the_cli_imports_stage_packages():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20 and set(files) >= MAY_IMPORT_STAGES
    problems = [p for path in files if path not in MAY_IMPORT_STAGES for p in stage_imports(path)]
    assert problems == []
    # The scan sees the CLI's imports, all inside its commands: one of every stage.
    assert {p.split()[-1].split(".")[0] for p in stage_imports(CLI_STAGES)} == STAGES

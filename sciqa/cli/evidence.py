"""Commands that score and check results: ``sciqa eval``, ``report``, ``validate``, ``audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sciqa.cli.app import (
    QUESTIONS_HELP,
    ColumnsOpt,
    ConfigOpt,
    ResamplesOpt,
    SeedOpt,
    SetOpt,
    app,
    columns_flag,
    user_errors,
)
from sciqa.errors import SciqaError


@app.command("eval")
@user_errors
def eval_(
    submission: Annotated[
        Path,
        typer.Argument(
            help="submission.csv (id,prediction 'B A D'), or a sciqa infer OUT dir / train run "
            "dir: every member's logits and the ensemble are scored."
        ),
    ],
    labels: Annotated[Path, typer.Argument(help=f"Labelled questions: {QUESTIONS_HELP}.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option("--against", help="Another submission: paired interval of the difference."),
    ] = None,
    resamples: ResamplesOpt = 10_000,
    seed: SeedOpt = 0,
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score a submission against labelled questions: MAP@3 (95% bootstrap interval), accuracy.
    (--seed seeds the bootstrap; the config's seed places a distractors preset's answers.)"""
    from sciqa.config import load_config
    from sciqa.layouts import Layout
    from sciqa.outdir import check_out_file

    layout = Layout.of(load_config(config, set_, columns_flag(columns)))

    if json_out is not None:
        check_out_file(json_out, "--json")
    from sciqa.evaluation.evaluate import evaluate_dir, evaluate_submission, format_eval

    if submission.is_dir():
        if against is not None:
            raise SciqaError("--against compares two submission files, not a directory")
        result = evaluate_dir([submission], labels, n_resamples=resamples, seed=seed, layout=layout)
    else:
        result = evaluate_submission(
            submission, labels, against=against, n_resamples=resamples, seed=seed, layout=layout
        )
    typer.echo("\n".join(format_eval(result, str(submission))))
    if json_out is not None:
        from sciqa.io import write_json

        write_json(result, json_out)


@app.command()
@user_errors
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
    from sciqa.outdir import check_out_dir

    check_out_dir(out)  # before matplotlib is imported and the runs are read
    from sciqa.evaluation.report.data import verdict
    from sciqa.evaluation.report.html import write_report

    page, data = write_report(runs, out, labels=labels, n_resamples=resamples, seed=seed)
    typer.echo(verdict(data["ensemble_minus_best"]))
    typer.echo(f"{page}: {len(data['plots'])} plots, {data['questions']} questions")


@app.command()
@user_errors
def validate(
    path: Annotated[Path, typer.Argument(help=f"Questions: {QUESTIONS_HELP}.")],
    require_answer: Annotated[
        bool, typer.Option("--labelled", help="Also require a valid 'answer' on every row.")
    ] = False,
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check questions against the schema (after any layout preset) and summarise them."""
    from sciqa.config import load_config
    from sciqa.io import read_questions
    from sciqa.layouts import Layout
    from sciqa.schema import ANSWER, option_letters

    layout = Layout.of(load_config(config, set_, columns_flag(columns)))
    frame = read_questions(path, require_answer=require_answer, layout=layout)
    letters = option_letters(frame.columns)
    labelled = ANSWER in frame.columns and frame[ANSWER].astype(bool).all()
    typer.echo(
        f"{path}: ok, {len(frame)} questions, options {letters[0]}-{letters[-1]}, "
        f"{'labelled' if labelled else 'unlabelled'}"
    )


@app.command()
@user_errors
def audit(
    questions: Annotated[Path, typer.Argument(help=f"Labelled questions: {QUESTIONS_HELP}.")],
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
    columns: ColumnsOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Bias audit: answer letters, shortcut baselines' MAP@3 vs chance, flagged questions."""
    from sciqa.config import load_config
    from sciqa.outdir import check_out_file

    if json_out is not None:
        check_out_file(json_out, "--json")
    from sciqa.evaluation.audit import audit_questions, format_report, load_for_audit
    from sciqa.io import write_json
    from sciqa.layouts import Layout

    cfg = load_config(config, set_, columns_flag(columns))
    frame, texts, baselines = load_for_audit(
        str(questions), str(passages) if passages else None, baseline, Layout.of(cfg)
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

"""``sciqa report``: one static HTML page, its PNG plots and ``report.json`` in REPORT_DIR.

The page links only files beside it (no CDN, no script), so it opens offline, from a
Kaggle output folder or a zip, in any browser.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from sciqa.evaluation.evidence import Evidence, load_evidence, oof_evidence
from sciqa.evaluation.intervals import N_RESAMPLES, SEED
from sciqa.evaluation.report.data import verdict
from sciqa.io import write_json, write_text
from sciqa.outdir import OutLock, check_out_dir

PAGE = "index.html"
DATA = "report.json"

CAPTIONS = {
    "map_intervals": (
        "Each point is a system's MAP@3 on these questions; the bar is its 95% percentile "
        "bootstrap interval (questions resampled with replacement). Overlapping bars do not "
        "settle a comparison: the title's paired interval does, as it resamples the same "
        "questions for both systems. An ensemble is worth its cost when that interval lies above 0."
    ),
    "correlation": (
        "Left: rank correlation between members of the probability each gives the correct "
        "option, question by question. Near 1, two members find the same questions easy and "
        "hard and averaging them gains little; lower values are the diversity an ensemble "
        "feeds on. Right: how often both members miss the same question at top-1 "
        "(the diagonal is each member's own error rate)."
    ),
    "reliability": (
        "Questions binned by the top-1 probability (softmax of the scores); bars show the "
        "top-1 accuracy in each bin. Bars under the diagonal are over-confident, above it "
        "under-confident. ECE is the question-weighted mean gap. Calibration matters for "
        "probability averaging and for a cascade that escalates the least confident "
        "questions. In logits or zscore mode the scale of the softmax is arbitrary: read the "
        "order of the bins, not the gap."
    ),
    "by_letter": (
        "Left: top-1 accuracy on the questions whose answer is each letter (Wilson 95% "
        "intervals). Right: how often each letter is the answer vs how often it is picked "
        "first. A letter picked far more often than it is right is a position bias; "
        "option-permutation TTA (--tta) averages it out."
    ),
    "by_source": (
        "Top-1 accuracy (Wilson 95%) and MAP@3 per value of the questions' source column, "
        "the largest groups first: where the model is weak, and whether a validation set "
        "stands for the test."
    ),
    "oof_correlation": (
        "The same two measures on the out-of-fold predictions of the sciqa train runs whose "
        "folds are members here: each training question scored by the fold that held it "
        "out. These are the predictions --weights auto fits on, so they explain its choice."
    ),
    "weights": "Each member's share of the ensemble (its weight over the sum of weights).",
    "budget": (
        "Left: TTA passes per model in the first and last plan of the time budget, and the "
        "passes that ran (a plan is remade after each model's first timed batch). Right: the "
        "seconds each model took (grey: loading), end to end against the budget and its "
        "reserve margin."
    ),
    "learning_curves": (
        "Validation MAP@3 after each epoch per fold; the checkpoint of the best epoch is kept."
    ),
}
TITLES = {
    "map_intervals": "MAP@3 with 95% intervals",
    "correlation": "Member-member correlation",
    "reliability": "Reliability of the top-1 probability",
    "by_letter": "Accuracy by answer letter",
    "by_source": "Accuracy by source",
    "oof_correlation": "Out-of-fold correlation of the train runs behind the members",
    "weights": "Ensemble weights",
    "budget": "Time budget: plan vs what ran",
    "learning_curves": "Learning curves",
}
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.ensemble td { font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
.caption, .note { color: #555; font-size: 0.92rem; max-width: 52rem; }
.verdict { font-size: 1.05rem; padding: 0.5rem 0.8rem; background: #f6f6f6; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _systems_table(data: dict[str, Any]) -> str:
    rows, classes = [], []
    for s in data["systems"]:
        ci = s.get("map_at_3_ci")
        interval = f"{ci['low']:.4f} to {ci['high']:.4f}" if ci else "-"
        weight = _num(s["weight"], 3) if s["weight"] is not None else "-"
        rows.append([s["model"], weight, s["questions"], _num(s.get("map_at_3")), interval,
                     _num(s.get("accuracy"))])  # fmt: skip
        classes.append("ensemble" if s["ensemble"] else "")
    header = ["model", "weight", "questions", "MAP@3", "95% interval", "accuracy"]
    return _table(header, rows, classes)


def _budget_table(plan: dict[str, Any]) -> str:
    rows = [
        [r["model"], _num(r["weight"], 3), r["first_plan"] if r["first_plan"] is not None else "-",
         r["last_plan"] if r["last_plan"] is not None else "-", r["passes"] or 0,
         _num(r["seconds"], 1), r["status"]]
        for r in plan["models"]
    ]  # fmt: skip
    limit = plan.get("time_budget_seconds")
    head = (
        f"Budget {limit:.0f}s (reserve margin {plan.get('budget_margin') or 0:.0%}), "
        if limit
        else "No time budget, "
    )
    head += f"elapsed {_num(plan.get('elapsed_seconds'), 1)}s, TTA {plan.get('tta')}."
    header = ["model", "weight", "first plan", "last plan", "passes run", "seconds", "status"]
    return f'<p class="note">{_e(head)}</p>' + _table(header, rows)


def _folds_table(data: dict[str, Any]) -> str:
    rows = [
        [f["model"], f["fold"], f["questions"], _num(f["map_at_3"]),
         f"{f['map_at_3_ci']['low']:.4f} to {f['map_at_3_ci']['high']:.4f}"]
        for f in data["folds"]
    ]  # fmt: skip
    return _table(["run", "fold", "held-out questions", "MAP@3", "95% interval"], rows)


def _weights_fit(fit: dict[str, Any] | None) -> str:
    """What ``--weights auto`` did, from infer's manifest: its method and OOF scores."""
    if not fit:
        return ""
    singles = ", ".join(
        f"{Path(run).name} {score:.4f}" for run, score in fit.get("single_run_map_at_3", {}).items()
    )
    text = (
        f"Weights fitted by {fit.get('method', '?')} on {fit.get('oof_questions', '?')} "
        f"out-of-fold questions: OOF MAP@3 {_num(fit.get('oof_map_at_3'))} (single runs: "
        f"{singles}). The OOF score of the fitted ensemble is optimistic: the weights were "
        "chosen on those same questions."
    )
    return f'<p class="note">{_e(text)}</p>'


def _section(key: str, image: Path | None, extra: str = "") -> str:
    if image is None:
        return ""
    return (
        f"<h2>{_e(TITLES[key])}</h2>\n{extra}"
        f'<img src="{_e(image.name)}" alt="{_e(TITLES[key])}">\n'
        f'<p class="caption">{_e(CAPTIONS[key])}</p>\n'
    )


def _name(ev: Evidence) -> str:
    names = [("/".join(p.resolve().parts[-2:])) for p in ev.sources]
    return " + ".join(names)


def render(ev: Evidence, data: dict[str, Any], images: dict[str, Path | None]) -> str:
    """The page: summary, verdict, then one section per plot that has something to show."""
    what = "sciqa infer output" if ev.kind == "infer" else "sciqa train run(s), out-of-fold"
    sources = ", ".join(str(s) for s in ev.sources)
    manifest = ev.manifest
    facts = [
        f"{what}: {sources}",
        f"{data['questions']} questions, options {ev.letters[0]}-{ev.letters[-1]}",
        f"intervals: percentile bootstrap over questions, {data['n_resamples']} resamples, "
        f"seed {data['seed']}",
    ]
    if manifest.get("created"):
        facts.append(f"run created {manifest['created']}, git {manifest.get('git_sha') or '?'}")
    if data["ensemble_note"]:
        facts.append(f"ensemble: {data['ensemble_note']}")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sciqa report: {_e(_name(ev))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>sciqa report: {_e(_name(ev))}</h1>",
        "<ul>" + "".join(f"<li>{_e(f)}</li>" for f in facts) + "</ul>",
        f'<p class="verdict">{_e(verdict(data["ensemble_minus_best"]))}</p>',
        _systems_table(data),
    ]
    if data["folds"]:
        parts.append("<h2>Folds</h2>" + _folds_table(data))
    parts.append(_section("map_intervals", images.get("map_intervals")))
    if data["correlation"] is None:
        parts.append(
            '<h2>Member-member correlation</h2><p class="note">One member only: nothing to '
            "correlate. Report several <code>sciqa train</code> run dirs trained on the same "
            "questions, or an infer OUT dir with several members.</p>"
        )
    parts.append(_section("correlation", images.get("correlation")))
    parts.append(_section("oof_correlation", images.get("oof_correlation")))
    for key in ("reliability", "by_letter", "by_source"):
        parts.append(_section(key, images.get(key)))
    parts.append(_section("weights", images.get("weights"), _weights_fit(data["weights_fit"])))
    if data["by_source"] == []:
        parts.append('<p class="note">No <code>source</code> column in the labels.</p>')
    if data["budget"] is not None:
        parts.append(_section("budget", images.get("budget"), _budget_table(data["budget"])))
    parts.append(_section("learning_curves", images.get("learning_curves")))
    parts.append(
        f'<p class="note">All numbers: <a href="{DATA}">{DATA}</a>. Written by '
        "<code>sciqa report</code>; the page needs no network and no script.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_report(
    paths: list[Path],
    out: Path,
    *,
    labels: Path | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[Path, dict[str, Any]]:
    """Read the run(s), write REPORT_DIR/index.html + PNGs + report.json; returns the page.

    One report at a time writes ``out`` (:class:`~sciqa.outdir.OutLock`); every file is
    written atomically, the page last, and a plot this run has no data for is removed, so
    the folder never shows another run's picture beside this run's page.
    """
    check_out_dir(out)
    with OutLock(out):
        return _write_report(paths, out, labels, n_resamples, seed)


def _write_report(
    paths: list[Path], out: Path, labels: Path | None, n_resamples: int, seed: int
) -> tuple[Path, dict[str, Any]]:
    from sciqa.evaluation.report import plots
    from sciqa.evaluation.report.data import collect, correlation

    ev = load_evidence(paths, labels)
    data = collect(ev, n_resamples=n_resamples, seed=seed)
    oof = None
    if ev.kind == "infer":
        oof, why = oof_evidence(ev)
        data["oof_correlation"] = correlation(oof) if oof is not None else None
        data["oof_correlation_note"] = why
    out.mkdir(parents=True, exist_ok=True)
    focus = data["focus"]
    images = {
        "map_intervals": plots.map_intervals(
            data["systems"], data["ensemble_minus_best"], out / "map_intervals.png"
        ),
        "correlation": plots.correlation(data["correlation"], out / "correlation.png"),
        "oof_correlation": plots.correlation(
            data.get("oof_correlation"), out / "oof_correlation.png"
        ),
        "reliability": plots.reliability(data["reliability"], out / "reliability.png"),
        "by_letter": plots.by_letter(data["by_letter"], focus, out / "by_letter.png"),
        "by_source": plots.by_source(data["by_source"], focus, out / "by_source.png"),
        "weights": plots.weights(data["weights"], out / "weights.png"),
        "budget": plots.budget(data["budget"], out / "budget.png"),
        "learning_curves": plots.learning_curves(
            data["learning_curves"], out / "learning_curves.png"
        ),
    }
    data["plots"] = {k: v.name for k, v in images.items() if v is not None}
    for name in (f"{k}.png" for k, v in images.items() if v is None):
        (out / name).unlink(missing_ok=True)  # an earlier report's, for data this one lacks
    write_json(data, out / DATA)
    page = write_text(render(ev, data, images), out / PAGE)
    return page, data

"""`sciqa eval DIR`, `sciqa report`: tiny infer OUT dirs and train run dirs built here
with the stages' own writers, so the reader is checked against the real file layout."""

from __future__ import annotations

import functools
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from infer import outputs
from infer.ensemble.combine import combine
from sciqa.cli import app
from sciqa.config import load_config
from sciqa.evaluation.evidence import load_evidence
from sciqa.evaluation.intervals import average_precisions_from_logits, paired_bootstrap
from sciqa.evaluation.report.data import collect, correlation, reliability
from sciqa.io import write_questions
from sciqa.metrics import map_at_3, top3_letters
from sciqa.outdir import OutLock
from sciqa.runs import ENSEMBLE, write_run_files
from sciqa.submission import make_submission, write_submission
from tests.builders import LETTERS, make_questions, make_run

runner = CliRunner()


# Labelled questions with a source column (for by_source); their text plays no part here.
labelled_questions = functools.partial(
    make_questions, context_words=None, sources=("arc-easy", "openbookqa", "openbookqa")
)


def noisy_logits(answers: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Random scores with the correct option pushed up by ``skill``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(answers), len(LETTERS)))
    logits[np.arange(len(answers)), answers] += skill
    return logits.astype(np.float32)


def make_infer_dir(
    root: Path, n: int = 120, *, labelled_input: bool = True, weights_fit: dict | None = None
) -> Path:
    """What `sciqa infer` leaves: logits/*.npy + ids.json, submission, manifest, config."""
    frame = labelled_questions(n)
    answers = frame["answer"].map(LETTERS.index).to_numpy()
    questions = root / "questions.csv"
    write_questions(frame if labelled_input else frame.drop(columns="answer"), questions)
    out = root / "out"
    ids = frame["id"].tolist()
    members = {
        "run_a-fold_0": noisy_logits(answers, 1.5, 1),
        "run_a-fold_1": noisy_logits(answers, 1.2, 2),
        "llm-default": noisy_logits(answers, 0.8, 3),
    }
    weights = {"run_a-fold_0": 2.0, "run_a-fold_1": 1.0, "llm-default": 1.0}
    for name, logits in members.items():
        outputs.write_logits(out, ids, name, logits)
    ensemble = combine(list(members.values()), list(weights.values()), "probs")
    outputs.write_logits(out, ids, ENSEMBLE, ensemble)
    outputs.write_predictions(out, ids, ensemble)
    rows = [
        {"model": name, "path": f"/runs/{name}", "weight": weights[name], "status": "done",
         "passes": 2, "seconds": 10.0 + i, "load_seconds": 1.5}
        for i, name in enumerate(members)
    ]  # fmt: skip
    rows[-1].update(status="stopped: time budget spent", passes=1)
    rows.append({"model": "ensemble", "weight": None, "seconds": 33.0})
    extra = {
        "questions": n,
        "ensemble_mode": "probs",
        "tta": 2,
        "models": rows,
        "time_budget_seconds": 40.0,
        "elapsed_seconds": 38.2,
        "plans": [
            {"at_seconds": 3.0, "passes": {"run_a-fold_0": 2, "run_a-fold_1": 2, "llm-default": 2}},
            {"at_seconds": 25.0, "passes": {"run_a-fold_1": 2, "llm-default": 1}},
        ],
        "weights_fit": weights_fit,
    }
    config = load_config(None, ["infer.time_budget=40s", "infer.tta=2"])
    write_run_files(out, "infer", config, inputs=[questions], extra=extra)
    return out


def make_train_run(root: Path, frame: pd.DataFrame, skill: float, seed: int, folds: int = 2):
    """A `sciqa train` run dir: oof.parquet with answers, fold_<i>/metrics.json, manifest."""
    from train.run_dir import oof_frame

    questions = write_questions(frame, root.parent / "train.csv")
    answers = frame["answer"].map(LETTERS.index).to_numpy()
    logits = noisy_logits(answers, skill, seed)
    fold_of = np.arange(len(frame)) % folds
    parts = [
        oof_frame(frame["id"][fold_of == f].tolist(), f, logits[fold_of == f], LETTERS,
                  frame["answer"][fold_of == f].tolist())
        for f in range(folds)
    ]  # fmt: skip
    root.mkdir(parents=True)
    pd.concat(parts, ignore_index=True).to_parquet(root / "oof.parquet")
    for f in range(folds):
        (root / f"fold_{f}").mkdir()
        epochs = [{"epoch": e, "eval_loss": 1.6 - 0.1 * e, "map_at_3": 0.5 + 0.05 * e,
                   "accuracy": 0.3} for e in (1, 2, 3)]  # fmt: skip
        metrics = {"map_at_3": 0.6, "best_epoch": 3, "epochs": epochs, "n_valid": 10}
        (root / f"fold_{f}" / "metrics.json").write_text(json.dumps(metrics))
    write_run_files(root, "train", load_config(), inputs=[questions], extra={"folds": folds})
    return root


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in {"a", "link"}:
            self.links.append(attrs.get("href"))
        if tag == "script":
            self.scripts += 1


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


# --- sciqa eval -------------------------------------------------------------------------


def test_eval_infer_dir_scores_members_and_ensemble(tmp_path):
    out = make_infer_dir(tmp_path)
    labels = tmp_path / "questions.csv"
    result = runner.invoke(
        app,
        ["eval", str(out), str(labels), "--json", str(tmp_path / "e.json"), "--resamples", "500"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert [m["model"] for m in data["models"]] == [
        "run_a-fold_0", "run_a-fold_1", "llm-default", "ensemble"
    ]  # fmt: skip
    # The top-level keys are the ensemble's and agree with scoring its submission.csv.
    frame = labelled_questions(120)
    ensemble = np.load(out / "logits" / "ensemble.npy")
    assert data["map_at_3"] == pytest.approx(map_at_3(frame["answer"], top3_letters(ensemble)))
    sub = runner.invoke(app, ["eval", str(out / "submission.csv"), str(labels)])
    assert f"MAP@3 {data['map_at_3']:.4f}" in sub.output
    assert result.output.splitlines()[-2] == sub.output.splitlines()[0]
    # The paired difference is ensemble minus the best member, on the same questions.
    diff = data["ensemble_minus_best"]
    assert diff["best_member"] == "run_a-fold_0"
    answers = frame["answer"].map(LETTERS.index).to_numpy()
    best = np.load(out / "logits" / "run_a-fold_0.npy")
    expected = paired_bootstrap(
        average_precisions_from_logits(ensemble, answers),
        average_precisions_from_logits(best, answers),
        n_resamples=500,
    )
    assert (diff["estimate"], diff["low"], diff["high"]) == pytest.approx(
        (expected.estimate, expected.low, expected.high)
    )
    assert "Ensemble minus best member (run_a-fold_0)" in result.output


def test_eval_submission_prints_interval_and_compares_against_another(tmp_path):
    frame = labelled_questions(200, seed=4)
    labels = write_questions(frame, tmp_path / "labels.csv")
    answers = frame["answer"].map(LETTERS.index).to_numpy()
    good = write_submission(
        make_submission(frame["id"], top3_letters(noisy_logits(answers, 2.0, 5))),
        tmp_path / "good.csv",
    )
    weak = write_submission(
        make_submission(frame["id"], top3_letters(noisy_logits(answers, 0.2, 6))),
        tmp_path / "weak.csv",
    )
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["eval", str(good), str(labels), "--against", str(weak), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    # Historical keys stay; the interval and the comparison are added beside them.
    assert {"n_questions", "map_at_3", "accuracy"} <= set(data)
    ci = data["map_at_3_ci"]
    assert ci["low"] < data["map_at_3"] < ci["high"] and ci["n_resamples"] == 10_000
    diff = data["against"]["difference"]
    assert diff["estimate"] == pytest.approx(data["map_at_3"] - data["against"]["map_at_3"])
    assert diff["low"] > 0  # a clearly better submission is found better
    lines = result.output.splitlines()
    assert lines[0].startswith(f"MAP@3 {data['map_at_3']:.4f}  accuracy")
    assert lines[1].startswith("MAP@3 95% interval ")
    assert lines[-1].endswith("above 0")
    same = runner.invoke(app, ["eval", str(good), str(labels), "--against", str(good)])
    assert "+0.0000 MAP@3, paired 95% interval +0.0000 to +0.0000, includes 0" in same.output


def test_eval_resamples_and_seed_are_options(tmp_path):
    frame = labelled_questions(50)
    labels = write_questions(frame, tmp_path / "labels.csv")
    sub = write_submission(make_submission(frame["id"], ["A B C"] * 50), tmp_path / "s.csv")
    outs = []
    for seed in ("0", "0", "1"):
        path = tmp_path / f"e{len(outs)}.json"
        runner.invoke(app, ["eval", str(sub), str(labels), "--resamples", "300", "--seed", seed,
                            "--json", str(path)])  # fmt: skip
        outs.append(json.loads(path.read_text())["map_at_3_ci"])
    assert outs[0] == outs[1] and outs[0] != outs[2]
    assert outs[0]["n_resamples"] == 300


# --- sciqa report -----------------------------------------------------------------------


def test_report_of_an_infer_dir_writes_an_offline_page_with_plots(tmp_path):
    fit = {"method": "greedy selection", "oof_questions": 90, "oof_map_at_3": 0.61,
           "single_run_map_at_3": {"/runs/run_a": 0.58}}  # fmt: skip
    out = make_infer_dir(tmp_path, weights_fit=fit)
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", str(out), "--out", str(report), "--resamples", "300"])
    assert result.exit_code == 0, result.output
    page = parse_page(report / "index.html")
    expected = {"map_intervals.png", "correlation.png", "reliability.png", "by_letter.png",
                "by_source.png", "weights.png", "budget.png"}  # fmt: skip
    assert set(page.images) == expected
    for image in page.images:
        assert (report / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Offline: only files beside the page, no script.
    assert page.scripts == 0
    assert all(not str(link).startswith(("http", "//")) for link in page.images + page.links)
    data = json.loads((report / "report.json").read_text())
    assert data["kind"] == "infer" and data["questions"] == 120
    assert [r["model"] for r in data["budget"]["models"]] == [
        "run_a-fold_0", "run_a-fold_1", "llm-default"
    ]  # fmt: skip
    llm = data["budget"]["models"][-1]
    assert (llm["first_plan"], llm["last_plan"], llm["passes"]) == (2, 1, 1)
    assert data["budget"]["budget_margin"] == pytest.approx(0.05)
    shares = [w["share"] for w in data["weights"]]
    assert shares == pytest.approx([0.5, 0.25, 0.25])
    assert {r["source"] for r in data["by_source"]} == {"arc-easy", "openbookqa"}
    assert sum(r["questions"] for r in data["by_letter"]) == 120
    text = (report / "index.html").read_text()
    assert "Ensemble minus best member (run_a-fold_0)" in text
    assert "stopped: time budget spent" in text
    assert "on 90 out-of-fold questions: OOF MAP@3 0.6100 (single runs: run_a 0.5800)" in text


def test_report_of_train_runs_correlates_their_oof(tmp_path):
    frame = labelled_questions(90, seed=2)
    a = make_train_run(tmp_path / "runs" / "deberta", frame, 1.5, 1)
    b = make_train_run(tmp_path / "runs" / "smollm2", frame, 1.0, 2)
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", str(a), str(b), "--out", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    assert data["kind"] == "train"
    assert [s["model"] for s in data["systems"]] == ["deberta", "smollm2", "ensemble"]
    assert data["correlation"]["members"] == ["deberta", "smollm2"]
    assert len(data["folds"]) == 4 and sum(f["questions"] for f in data["folds"]) == 180
    assert {"learning_curves.png", "correlation.png"} <= set(
        parse_page(report / "index.html").images
    )
    assert "source" in data["by_source"][0]  # read from the run's training file


def test_report_of_one_train_run_says_there_is_nothing_to_correlate(tmp_path):
    run = make_train_run(tmp_path / "run", labelled_questions(40), 1.0, 1)
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", str(run), "--out", str(report)])
    assert result.exit_code == 0, result.output
    text = (report / "index.html").read_text()
    assert "One member only: nothing to correlate" in text
    assert "No ensemble of two or more members" in result.output


# --- the numbers --------------------------------------------------------------------------


def test_reliability_bins_match_a_hand_count(tmp_path):
    out = make_infer_dir(tmp_path)
    ev = load_evidence([out])
    rel = reliability(ev.ensemble, ev.answers)
    probs = np.exp(ev.ensemble.logits)  # probs mode: ensemble.npy holds log-probabilities
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == ev.answers
    inside = (conf >= 0.3) & (conf < 0.4)
    row = rel["bins"][3]
    assert row["questions"] == inside.sum()
    assert row["accuracy"] == pytest.approx(correct[inside].mean())
    assert sum(b["questions"] for b in rel["bins"]) == len(conf)
    assert rel["accuracy"] == pytest.approx(correct.mean())


def test_correlation_of_a_member_with_its_copy_is_one(tmp_path):
    out = make_infer_dir(tmp_path)
    np.save(out / "logits" / "copy.npy", np.load(out / "logits" / "run_a-fold_0.npy") * 3)
    ev = load_evidence([out])
    corr = correlation(ev)
    i, j = corr["members"].index("run_a-fold_0"), corr["members"].index("copy")
    assert corr["spearman"][i][j] > 0.97  # a temperature barely moves the ranks
    assert corr["spearman"][i][corr["members"].index("llm-default")] < 0.9


# --- bad input --------------------------------------------------------------------------


def _error(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_dir_without_logits_or_oof_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _error(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert "neither a sciqa infer OUT dir" in line
    assert not (tmp_path / "r").exists()


def test_members_whose_ids_do_not_match_are_refused(tmp_path):
    out = make_infer_dir(tmp_path)
    np.save(out / "logits" / "other.npy", np.zeros((7, 5), dtype=np.float32))
    line = _error(["report", str(out), "--out", str(tmp_path / "r")])
    assert "other.npy: shape (7, 5) does not match the 120 ids" in line
    frame = labelled_questions(30)
    a = make_train_run(tmp_path / "a" / "run", frame, 1.0, 1)
    b = make_train_run(tmp_path / "b" / "run", frame.iloc[:20], 1.0, 2)
    line = _error(["report", str(a), str(b), "--out", str(tmp_path / "r2")])
    assert "10 ids differ" in line and "same questions" in line


def test_missing_labels_are_refused_with_what_to_do(tmp_path):
    out = make_infer_dir(tmp_path, labelled_input=False)
    line = _error(["report", str(out), "--out", str(tmp_path / "r")])
    assert "no 'answer' on every row; pass --labels FILE" in line
    labels = write_questions(labelled_questions(120), tmp_path / "labels.csv")
    ok = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "r"), "--labels",
                             str(labels), "--resamples", "200"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    short = write_questions(labelled_questions(100), tmp_path / "short.csv")
    line = _error(["eval", str(out), str(short)])
    assert "no label for 20 of 120 scored ids" in line


def test_eval_against_needs_a_submission_not_a_dir(tmp_path):
    out = make_infer_dir(tmp_path)
    line = _error(["eval", str(out), str(tmp_path / "questions.csv"), "--against", str(out)])
    assert "--against compares two submission files" in line


def test_report_reads_a_real_infer_run_with_a_time_budget(tmp_path):
    """End to end on what `sciqa infer` really writes (tiny random models)."""
    pytest.importorskip("torch")
    from infer.commands import run_infer

    frame = make_questions(12, seed=5).assign(source=["arc"] * 6 + ["obqa"] * 6)
    questions = write_questions(frame, tmp_path / "q.csv")
    run = make_run(tmp_path / "run_a", 1, questions=frame)
    out = tmp_path / "out"
    run_infer(
        questions,
        [str(run)],
        out,
        load_config(None, ["infer.batch_size=4", "infer.time_budget=1h", "infer.tta=2"]),
    )
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", str(out), "--out", str(report), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    by_name = {s["model"]: s for s in data["systems"]}
    members = [row["model"] for row in scores["models"]]
    assert members == ["run_a-fold_0", "run_a-fold_1", "ensemble"]
    for row in scores["models"]:  # the report agrees with infer's own scores.json
        assert by_name[row["model"]]["map_at_3"] == pytest.approx(row["map_at_3"])
        assert by_name[row["model"]]["accuracy"] == pytest.approx(row["accuracy"])
    budget = data["budget"]
    assert budget["time_budget_seconds"] == 3600 and budget["plans"]
    assert [r["passes"] for r in budget["models"]] == [2, 2]
    assert {r["source"] for r in data["by_source"]} == {"arc", "obqa"}
    assert "budget.png" in parse_page(report / "index.html").images


def test_a_member_that_scored_some_questions_is_scored_on_those(tmp_path):
    """A cascade's expensive member (NaN rows = not scored) never wins 'best member'."""
    out = make_infer_dir(tmp_path)
    partial = np.load(out / "logits" / "llm-default.npy").copy()
    partial[:80] = np.nan  # scored only the 40 least confident questions
    np.save(out / "logits" / "llm-default.npy", partial)
    ev = load_evidence([out])
    data = collect(ev, n_resamples=200)
    row = next(s for s in data["systems"] if s["model"] == "llm-default")
    aps = average_precisions_from_logits(partial[80:], ev.answers[80:])
    assert row["questions"] == 40 and row["map_at_3"] == pytest.approx(aps.mean())
    assert data["ensemble_minus_best"]["best_member"] == "run_a-fold_0"
    corr = data["correlation"]
    i = corr["members"].index("llm-default")
    fold0 = np.load(out / "logits" / "run_a-fold_0.npy")[80:].argmax(axis=1)
    both = (fold0 != ev.answers[80:]) & (partial[80:].argmax(axis=1) != ev.answers[80:])
    assert corr["both_wrong"][0][i] == pytest.approx(both.mean())
    assert -1 <= corr["spearman"][0][i] <= 1  # a correlation, not None
    json.dumps(data, allow_nan=False)  # report.json stays strict JSON


def test_report_of_an_infer_dir_adds_the_oof_correlation_of_its_train_runs(tmp_path):
    out = make_infer_dir(tmp_path)
    frame = labelled_questions(60, seed=7)
    runs = [make_train_run(tmp_path / "runs" / name, frame, skill, seed)
            for name, skill, seed in (("deberta", 1.5, 1), ("smollm2", 1.0, 2))]  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    for row, run in zip(manifest["models"], [runs[0], runs[0], runs[1]], strict=False):
        row["path"] = str(run / "fold_0")
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", str(out), "--out", str(report), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text())
    assert data["oof_correlation"]["members"] == ["deberta", "smollm2"]
    assert "oof_correlation.png" in parse_page(report / "index.html").images
    plain = make_infer_dir(tmp_path / "plain")
    runner.invoke(app, ["report", str(plain), "--out", str(tmp_path / "r2"), "--resamples", "50"])
    data = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert data["oof_correlation"] is None
    assert data["oof_correlation_note"] == "0 train run(s) with oof.parquet behind the members"


# --- where the output goes ------------------------------------------------------------------


def test_out_that_is_a_file_is_one_line_before_the_runs_are_read(tmp_path):
    taken = tmp_path / "report.html"
    taken.write_text("mine")
    line = _error(["report", str(tmp_path / "no-such-run"), "--out", str(taken)])
    assert line == (
        f"error: {taken}: --out is an existing file, not a folder; give a folder path "
        "(it is created) or move the file away"
    )
    assert taken.read_text() == "mine"


def test_eval_json_that_is_a_folder_is_one_line_before_scoring(tmp_path):
    (tmp_path / "scores").mkdir()
    line = _error(
        ["eval", str(tmp_path / "no-such.csv"), "x.csv", "--json", str(tmp_path / "scores")]
    )
    assert line == f"error: {tmp_path / 'scores'}: --json is an existing folder; give a file path"


def test_a_second_report_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    out = make_infer_dir(tmp_path)
    report = tmp_path / "report"
    with OutLock(report, command="sciqa report runs/infer --out report"):
        line = _error(["report", str(out), "--out", str(report), "--resamples", "50"])
    assert line.startswith(f"error: {report}: another sciqa run is writing it (pid {os.getpid()}")
    assert "`sciqa report runs/infer --out report`" in line and not report.exists()


def test_a_plot_the_new_report_lacks_is_removed_not_left_from_the_old(tmp_path):
    report = tmp_path / "report"
    trained = make_train_run(tmp_path / "run", labelled_questions(40), 1.0, 1)
    args = ["--out", str(report), "--resamples", "50"]
    assert runner.invoke(app, ["report", str(trained), *args]).exit_code == 0
    assert (report / "learning_curves.png").exists()
    umask = os.umask(0o022)
    try:
        result = runner.invoke(app, ["report", str(make_infer_dir(tmp_path / "i")), *args])
    finally:
        os.umask(umask)
    assert result.exit_code == 0, result.output
    images = set(parse_page(report / "index.html").images)
    assert {p.name for p in report.glob("*.png")} == images  # no learning_curves.png
    assert {(report / name).stat().st_mode & 0o777 for name in images} == {0o644}

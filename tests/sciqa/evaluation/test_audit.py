"""The bias audit (sciqa/evaluation/audit.py, chance.py): exact MAP@3 of the shortcut
baselines on sets built to have them, chance on sets built not to, the flags, gen's
use of it against the fake server, and every bad input as a one-line error."""

from __future__ import annotations

import itertools
import json
import string

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from data_gen.commands import rejected_path, run_gen, summary
from data_gen.fake_server import FakeLLM, write_fake_passages
from data_gen.postprocess import filter_shortcuts
from sciqa.cli import app
from sciqa.config import load_config
from sciqa.evaluation.audit import STOPWORDS, audit_questions, load_for_audit
from sciqa.evaluation.chance import chance_map_at_3, chance_sd, chi2_sf, tie_aware_ap
from sciqa.metrics import average_precision_at_3
from sciqa.schema import validate_questions
from tests.builders import make_questions

VOCAB = [  # 3-letter made-up words; "not", "can", ... are function words the audit skips
    w
    for w in map("".join, itertools.product("bcdfgklmnprstvz", "aeiou", "bcdfgklmnprstvz"))
    if w not in STOPWORDS
][:400]


def question_set(n: int, k: int, seed: int, make_row) -> pd.DataFrame:
    """``n`` labelled questions; ``make_row(rng, k) -> (prompt, options, context)``,
    answers are spread evenly over the letters and shuffled."""
    rng = np.random.default_rng(seed)
    letters = list(string.ascii_uppercase[:k])
    answers = rng.permutation(np.arange(n) % k)
    rows = []
    for i in range(n):
        prompt, options, context = make_row(rng, k)  # the last option is the correct one
        order = options[:-1]
        rng.shuffle(order)
        order.insert(int(answers[i]), options[-1])
        rows.append(
            {"id": f"q{i}", "prompt": prompt, **dict(zip(letters, order, strict=True))}
            | {"answer": letters[answers[i]], "context": context, "source_id": f"p{i}"}
        )
    return validate_questions(pd.DataFrame(rows), require_answer=True)


def words(rng, count: int) -> str:
    return " ".join(rng.choice(VOCAB, count, replace=False))


def longest_row(rng, k):
    """The correct option is always the longest, 2x the others (three words vs six)."""
    options = [words(rng, 3) for _ in range(k - 1)] + [words(rng, 6)]
    return "Which option is right?", options, ""


def overlap_row(rng, k):
    """Options of equal length; the correct one repeats two words of the question and
    three of the passage, the others none."""
    drawn = list(rng.choice(VOCAB, 28, replace=False))
    prompt, context = " ".join(drawn[:8]), " ".join(drawn[8:])
    pool = [w for w in VOCAB if w not in drawn]
    distractors = [" ".join(rng.choice(pool, 5, replace=False)) for _ in range(k - 1)]
    correct = " ".join(prompt.split()[:2] + context.split()[:3])
    return prompt, [*distractors, correct], context


# --- chance and ties against brute force ----------------------------------------------


def brute_force_ap(scores: np.ndarray, answer: int) -> float:
    """Mean AP@3 over every ranking that sorts ``scores`` descending (ties in any order)."""
    letters = string.ascii_uppercase[: len(scores)]
    aps = [
        average_precision_at_3(letters[answer], [letters[i] for i in order])
        for order in itertools.permutations(range(len(scores)))
        if all(scores[a] >= scores[b] for a, b in itertools.pairwise(order))
    ]
    return float(np.mean(aps))


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_tie_aware_ap_matches_brute_force_and_chance(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 3, size=(40, k)).astype(float)  # many ties
    answer = rng.integers(0, k, size=40)
    expected = [brute_force_ap(s, a) for s, a in zip(scores, answer, strict=True)]
    assert tie_aware_ap(scores, answer) == pytest.approx(expected)
    flat = np.zeros((k, k))
    all_ranks = [brute_force_ap(np.arange(k, 0, -1), a) for a in range(k)]
    assert tie_aware_ap(flat, np.arange(k)) == pytest.approx([np.mean(all_ranks)] * k)
    assert chance_map_at_3(k) == pytest.approx(np.mean(all_ranks))
    assert chance_sd(k) == pytest.approx(np.std(all_ranks))


def test_chance_of_five_and_four_options():
    assert chance_map_at_3(5) == pytest.approx((1 + 1 / 2 + 1 / 3) / 5)
    assert round(chance_map_at_3(5), 3) == 0.367 and round(chance_map_at_3(4), 3) == 0.458


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        *[(3.841, 1, 0.05), (5.991, 2, 0.05), (7.815, 3, 0.05), (9.488, 4, 0.05)],
        *[(11.070, 5, 0.05), (12.592, 6, 0.05), (1.0, 1, 0.3173), (2.0, 2, np.exp(-1))],
        *[(0.0, 3, 1.0), (40.0, 4, 4e-8)],
    ],
)
def test_chi2_survival_matches_tables(x, df, p):
    assert chi2_sf(x, df) == pytest.approx(p, abs=2e-4)


# --- the audit on sets with known answers ---------------------------------------------


def test_longest_always_right_scores_one_and_every_question_is_flagged():
    frame = question_set(200, 5, seed=0, make_row=longest_row)
    report = audit_questions(frame, passages=None)
    longest = report["baselines"]["longest"]
    assert longest["map_at_3"] == 1.0 and longest["top1"] == 1.0
    assert longest["ci95"] == [1.0, 1.0] and longest["verdict"] == "above chance"
    assert longest["chance"] == pytest.approx(0.3667, abs=1e-4)
    assert longest["flagged"] == 200 and report["flagged"]["by_shortcut"] == {"longest": 200}
    flag = report["flags"][0]
    assert flag["shortcut"] == "longest" and flag["margin"] >= 1.5
    assert "is the longest option" in flag["detail"]
    assert report["baselines"]["passage_overlap"] == {
        "skipped": "no passages (no 'context' column; give --passages FILE)"
    }
    assert report["answer_letters"]["counts"] == dict.fromkeys("ABCDE", 40)
    assert report["answer_letters"]["balanced"] and report["answer_letters"]["p_value"] == 1.0


def test_overlap_baselines_score_one_and_equal_lengths_score_exact_chance():
    frame = question_set(100, 4, seed=1, make_row=overlap_row)
    report = audit_questions(frame, passages=frame["context"])
    base = report["baselines"]
    assert base["question_overlap"]["map_at_3"] == 1.0
    assert base["passage_overlap"]["map_at_3"] == 1.0
    # Every option has 5 words of 3 letters: lengths tie, so "longest" is chance exactly.
    assert base["longest"]["map_at_3"] == pytest.approx(chance_map_at_3(4), abs=1e-4)
    assert base["longest"]["verdict"] == "at chance" and base["longest"]["flagged"] == 0
    assert base["question_overlap"]["flagged"] == 100  # margin 2 words = the threshold
    assert base["passage_overlap"]["flagged"] == 100
    stricter = audit_questions(frame, passages=frame["context"], overlap_margin=3)
    assert stricter["baselines"]["question_overlap"]["flagged"] == 0
    assert stricter["baselines"]["passage_overlap"]["flagged"] == 100


@pytest.mark.parametrize("k", [4, 5])
def test_random_set_is_at_chance_for_every_baseline(k):
    # Random words: no feature knows the answer, lengths and overlaps are independent of it.
    frame = make_questions(1500, n_options=k, seed=2)
    report = audit_questions(frame, passages=frame["context"])
    assert report["options"] == k
    assert list(report["baselines"]) == ["longest", "question_overlap", "passage_overlap"]
    for name, result in report["baselines"].items():
        low, high = result["chance_band95"]
        assert low < result["map_at_3"] < high, name
        assert result["verdict"] == "at chance", name
        assert result["ci95"][0] <= result["map_at_3"] <= result["ci95"][1], name


def test_unbalanced_letters_fail_the_chi_square():
    frame = make_questions(100, seed=3)
    rng = np.random.default_rng(0)
    frame["answer"] = rng.choice(["A", "A", "A", "B"], len(frame))  # labels no longer balanced
    letters = audit_questions(frame)["answer_letters"]
    assert letters["counts"]["C"] == letters["counts"]["D"] == letters["counts"]["E"] == 0
    assert not letters["balanced"] and letters["p_value"] < 1e-6 and letters["df"] == 4


def test_length_flag_threshold_and_detail():
    frame = validate_questions(
        pd.DataFrame(
            {
                "id": ["a", "b"],
                "prompt": ["q?", "q?"],
                "A": ["x" * 15, "x" * 12],
                "B": ["y" * 10, "y" * 10],
                "C": ["z" * 9, "z" * 15],
                "answer": ["A", "C"],
            }
        ),
        require_answer=True,
    )
    flags = audit_questions(frame, length_ratio=1.5)["flags"]
    assert [(f["id"], f["margin"]) for f in flags] == [("a", 1.5)]
    assert flags[0]["detail"] == "correct A is the longest option, 1.50x the next (15 vs 10 chars)"
    assert audit_questions(frame, length_ratio=1.6)["flags"] == []


# --- gen: the step and the manifest ----------------------------------------------------


def shortcut_mix() -> pd.DataFrame:
    """Five questions the longest option answers (ratios 3.0 .. 1.6), five whose correct
    option is the shortest (AP 0): longest-option MAP@3 0.5 vs chance 0.367."""
    rows = []
    for i, ratio in enumerate([3.0, 2.5, 2.0, 1.8, 1.6]):
        options = ["w" * int(10 * ratio), *(c * 10 for c in "bcde")]
        rows.append(dict(zip("ABCDE", options, strict=True)) | {"id": f"long{i}"})
    for i in range(5):
        options = ["a" * 5, *(c * (10 + i) for c in "bcde")]
        rows.append(dict(zip("ABCDE", options, strict=True)) | {"id": f"short{i}"})
    frame = pd.DataFrame(rows).assign(prompt="q?", answer="A", context="", source_id="p")
    return validate_questions(frame, require_answer=True)


def test_rebalance_drops_largest_margins_until_chance_and_drop_drops_all():
    frame = shortcut_mix()
    gen = load_config(None, ["gen.audit_action=rebalance"]).gen
    kept, drops = filter_shortcuts(frame, gen)
    # 5/10 -> 4/9 -> 3/8 (all above 0.367) -> 2/7 = 0.286: three dropped.
    assert [d["id"] for d in drops] == ["long0", "long1", "long2"]
    assert {d["reason"] for d in drops} == {"shortcut_longest"} and len(kept) == 7
    assert drops[0]["detail"].startswith("correct A is the longest option, 3.00x")
    gen.audit_action = "drop"
    assert len(filter_shortcuts(frame, gen)[1]) == 5
    gen.audit_action = "report"
    kept, drops = filter_shortcuts(frame, gen)
    assert drops == [] and len(kept) == 10


def test_passage_overlap_is_acted_on_only_when_listed():
    frame = question_set(20, 5, seed=4, make_row=overlap_row)
    frame["prompt"] = "q?"  # only the passage overlap remains a shortcut
    gen = load_config(None, ["gen.audit_action=drop"]).gen
    assert filter_shortcuts(frame, gen)[1] == []
    gen.audit_shortcuts = ["passage_overlap"]
    kept, drops = filter_shortcuts(frame, gen)
    assert kept.empty and {d["reason"] for d in drops} == {"shortcut_passage_overlap"}


GEN = [
    "llm.model=fake-model",
    "llm.sdk_retries=0",
    "llm.timeout=5",
    "gen.dedup=false",
    "gen.answerability_filter=false",
    "gen.too_easy_filter=false",
]


def gen_run(tmp_path, fake, *overrides):
    passages = write_fake_passages(tmp_path / "p.parquet", 6)
    config = load_config(None, [f"llm.base_url={fake.base_url}", *GEN, *overrides])
    config.gen.n = 6
    return run_gen(passages, tmp_path / "gen" / "q.csv", config)


def test_gen_writes_the_audit_of_what_it_keeps(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    # The fake server's correct option ("The passage's claim on T3", 25 chars) is always
    # the longest, 1.56x its distractors ("T3 fact number 1", 16 chars).
    with FakeLLM() as fake:
        counts = gen_run(tmp_path, fake)
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    audit = manifest["audit"]
    assert audit == counts["audit"] and "audit" not in manifest["postprocess"]
    assert audit["questions"] == 6 and audit["options"] == 5
    assert audit["baselines"]["longest"]["map_at_3"] == 1.0
    assert audit["baselines"]["longest"]["flagged"] == 6
    assert "skipped" not in audit["baselines"]["passage_overlap"]  # context = the passage
    assert "flags" not in audit and manifest["postprocess"]["kept"] == 6
    assert "longest 1.000 (above chance)" in summary(counts).splitlines()[-1]
    assert summary(counts).splitlines()[-1].startswith("audit (kept): letters p=")
    assert manifest["audit_generated"]["questions"] == 6  # nothing filtered here: the same

    result = CliRunner().invoke(app, ["audit", str(tmp_path / "gen" / "q.csv")])
    assert result.exit_code == 0, result.output
    assert "longest           1.0000" in result.output


def test_gen_drops_flagged_questions_by_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeLLM() as fake:
        counts = gen_run(tmp_path, fake, "gen.audit_action=drop")
    post = counts["postprocess"]
    assert post["dropped_by_reason"] == {"shortcut_longest": 6} and post["kept"] == 0
    assert counts["audit"] == {"skipped": "no questions kept"}
    assert "audit (kept): no questions kept" in summary(counts).splitlines()
    # ...while the writer's replies are still audited: the shortcut that dropped them
    generated = counts["audit_generated"]
    assert generated["questions"] == 6 and generated["baselines"]["longest"]["flagged"] == 6
    assert "audit (valid replies, before filters): letters p=" in summary(counts)
    rejects = rejected_path(tmp_path / "gen" / "q.csv").read_text().splitlines()
    assert [json.loads(r)["reason"] for r in rejects] == ["shortcut_longest"] * 6


# --- the command and its errors --------------------------------------------------------


def test_cli_prints_the_table_and_writes_json_with_passages_file(tmp_path):
    frame = question_set(50, 5, seed=5, make_row=overlap_row)
    questions = tmp_path / "q.parquet"
    frame.drop(columns="context").to_parquet(questions)
    passages = tmp_path / "passages.csv"
    frame[["source_id", "context"]].set_axis(["passage_id", "text"], axis=1).to_csv(passages)
    out = tmp_path / "audit.json"
    args = ["audit", str(questions), "--passages", str(passages), "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--show", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{questions}: 50 questions, 5 options, chance MAP@3 0.3667")
    assert "passage_overlap   1.0000" in result.output and "above chance" in result.output
    report = json.loads(out.read_text())
    assert report["baselines"]["passage_overlap"]["map_at_3"] == 1.0
    assert len(report["flags"]) == 100 and report["questions_file"] == str(questions)
    assert sum(line.startswith("  ") for line in result.output.splitlines()) == 2  # --show 1


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ({}, [], "{q}: file not found"),
        ({"q": "id,prompt,answer\n1,Why?,A\n"}, [], "{q}: missing column(s) 'A', 'B'; found"),
        (
            {"q": "id,prompt,A,B\n1,Why?,x,y\n"},
            [],
            "{q}: no 'answer' column (found 'id', 'prompt', 'A', 'B'); "
            "the audit needs labelled questions",
        ),
        (
            {"q": "id,prompt,A,B,answer\n1,Why?,x,y,A\n2,How?,x,y,\n"},
            [],
            "{q}: row 2, id=2, column 'answer': empty answer",
        ),
        (
            {"q": "id,prompt,A,B,answer\n1,Why?,x,y,A\n"},
            ["--baseline", "passage_overlap"],
            "{q}: column 'context' is missing, so the passage_overlap baseline has no passage",
        ),
        (
            {"q": "id,prompt,A,B,answer\n1,Why?,x,y,A\n"},
            ["--baseline", "shortest"],
            "--baseline: unknown baseline(s) shortest; choose from longest",
        ),
        (
            {"q": "id,prompt,A,B,answer\n1,Why?,x,y,A\n", "p": "passage_id,title\n1,T\n"},
            ["--passages", "{p}"],
            "{p}: missing column(s) 'text'; found 'passage_id', 'title'",
        ),
        (
            {"q": "id,prompt,A,B,answer\n1,Why?,x,y,A\n", "p": "passage_id,text\n1,T\n"},
            ["--passages", "{p}"],
            "{q}: no 'source_id' column to join --passages {p} on",
        ),
        (
            {
                "q": "id,prompt,A,B,answer,source_id\n1,Why?,x,y,A,9\n",
                "p": "passage_id,text\n1,T\n",
            },
            ["--passages", "{p}"],
            "{q}: row 1, id=1, column 'source_id': '9' is not a passage_id in {p}",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_and_column(tmp_path, files, extra, message):
    paths = {"q": tmp_path / "q.csv", "p": tmp_path / "p.csv"}
    for key, text in files.items():
        write(paths[key], text)
    names = {k: str(v) for k, v in paths.items()}
    args = ["audit", names["q"], *(a.format(**names) for a in extra)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(**names)), lines


def test_context_column_is_used_and_blank_context_counts_as_missing(tmp_path):
    frame = question_set(20, 4, seed=6, make_row=overlap_row)
    path = tmp_path / "q.jsonl"
    frame.to_json(path, orient="records", lines=True)
    _, passages, baselines = load_for_audit(str(path))
    assert list(passages) == list(frame["context"]) and "passage_overlap" in baselines
    frame.assign(context="  ").to_json(path, orient="records", lines=True)
    assert load_for_audit(str(path))[1] is None


def test_blank_passages_count_as_chance_and_are_reported():
    frame = question_set(40, 5, seed=7, make_row=overlap_row)
    frame.loc[20:, "context"] = ""
    result = audit_questions(frame, passages=frame["context"])["baselines"]["passage_overlap"]
    assert result["with_passage"] == 20
    assert result["map_at_3"] == pytest.approx((20 * 1.0 + 20 * chance_map_at_3(5)) / 40, abs=1e-4)

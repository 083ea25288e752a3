"""The filter step (data_gen.postprocess) and its scorers (data_gen.scorers): balanced
letters, duplicates, leaks, answerability and too-easy questions, alone and in run_gen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_gen.fake_server import FakeLLM
from data_gen.postprocess import (
    balance_letters,
    filter_too_easy,
    filter_unanswerable,
    letter_counts,
    remove_duplicates,
    remove_leaks,
)
from sciqa.errors import SciqaError
from sciqa.io import read_questions

LETTERS = ["A", "B", "C", "D", "E"]


class FixedScorer:
    """Returns preset probabilities (with context, without context)."""

    name = "fixed"

    def __init__(self, with_context, without_context):
        self.tables = {True: np.asarray(with_context), False: np.asarray(without_context)}

    def probabilities(self, frame, *, use_context):
        return self.tables[use_context][: len(frame)]


def questions(n: int) -> pd.DataFrame:
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Question {i} about topic{i}?",
            "A": f"right{i}",
            "B": f"b{i}",
            "C": f"c{i}",
            "D": f"d{i}",
            "E": f"e{i}",
            "answer": "A",
            "context": f"ctx {i}",
            "source": "gen:x",
            "source_id": f"p{i}",
        }
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def test_balance_letters_keeps_each_correct_option():
    balanced = balance_letters(questions(10), seed=0)
    assert letter_counts(balanced) == {letter: 2 for letter in LETTERS}
    for i, row in balanced.iterrows():
        assert row[row["answer"]] == f"right{i}"
        assert sorted(row[LETTERS]) == sorted(questions(10).loc[i, LETTERS])


def test_exact_and_near_duplicates_are_dropped(hash_encoder):
    frame = questions(4)
    frame.loc[1, "prompt"] = "QUESTION 0 about topic0 ?"  # exact after normalising
    frame.loc[2, "prompt"] = "Question 0 about topic0? indeed"
    frame.loc[2, "A"] = "right0"
    kept, drops = remove_duplicates(frame, hash_encoder, threshold=0.8)
    assert list(kept["id"]) == ["q0", "q3"]
    assert [d["reason"] for d in drops] == ["duplicate_exact", "duplicate_near"]


def test_leakage_against_excluded_file(hash_encoder):
    frame = questions(3)
    evaluation = questions(1).assign(id="kaggle-7", prompt="question 2 about topic2")
    kept, drops = remove_leaks(frame, {"test.csv": evaluation}, hash_encoder, 0.99)
    assert list(kept["id"]) == ["q0", "q1"]
    assert drops[0]["reason"] == "leak" and "test.csv id=kaggle-7" in drops[0]["detail"]


def test_answerability_and_too_easy_filters():
    frame = questions(3)  # answer A everywhere
    with_ctx = [[0.9, 0.1, 0, 0, 0], [0.1, 0.9, 0, 0, 0], [0.6, 0.4, 0, 0, 0]]
    without = [[0.95, 0.05, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.3, 0.7, 0, 0, 0]]
    scorer = FixedScorer(with_ctx, without)
    kept, drops = filter_unanswerable(frame, scorer)
    assert list(kept["id"]) == ["q0", "q2"] and drops[0]["id"] == "q1"
    scorer = FixedScorer(with_ctx, [without[0], without[2]])
    kept, drops = filter_too_easy(kept, scorer, confidence=0.6)
    assert list(kept["id"]) == ["q2"] and drops[0]["reason"] == "too_easy"


def test_filters_in_the_pipeline_are_counted(passages_file, tmp_path, run_fake, hash_encoder):
    # With the passage, every other question's pick (B) misses the label (A); without
    # it, the first remaining one is answered with p = 0.9 (too easy).
    with_ctx = np.tile([[0.2, 0.8, 0, 0, 0], [0.9, 0.1, 0, 0, 0]], (3, 1))
    without = np.array([[0.9, 0.1, 0, 0, 0]] + [[0.3, 0.7, 0, 0, 0]] * 2)
    with FakeLLM() as fake:
        counts = run_fake(
            passages_file,
            tmp_path / "q.csv",
            fake,
            "gen.answerability_filter=true",
            "gen.too_easy_filter=true",
            encoder=hash_encoder,  # not MiniLM: keeps the test fast
            scorer=FixedScorer(with_ctx, without),
        )
    post = counts["postprocess"]
    assert post["dropped_by_reason"] == {"unanswerable": 3, "too_easy": 1}
    assert post["kept"] == 2 and len(read_questions(tmp_path / "q.csv")) == 2


@pytest.mark.assets
def test_trained_model_directory_scores_options(tmp_path):
    """gen.scorer = a `sciqa train`-style checkpoint folder (tiny random BERT here)."""
    from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

    from data_gen.scorers import TrainedScorer
    from sciqa.assets.registry import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default", "embedding").name_or_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForMultipleChoice(config).save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    probs = TrainedScorer(str(tmp_path / "ckpt")).probabilities(questions(3), use_context=True)
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(SciqaError, match="not a model directory"):
        TrainedScorer(str(tmp_path / "missing"))


def test_the_nearest_excluded_question_is_reported_for_the_kept_ones(hash_encoder):
    """The closest remaining train/test pair is named, with its cosine, so a split's
    separation is evidence rather than a claim."""
    from data_gen.postprocess import nearest_excluded

    frame = questions(3)
    evaluation = questions(2).assign(id=["t0", "t1"], prompt=["question 1 about topic1?", "zz"])
    near = nearest_excluded(frame, {"test.csv": evaluation}, hash_encoder)
    assert near["id"] == "q1" and near["nearest"] == "test.csv id=t0"
    assert near["excluded"] == 2 and near["cosine"] == pytest.approx(1.0)
    far = nearest_excluded(
        frame.iloc[[0, 2]].reset_index(drop=True), {"t": evaluation}, hash_encoder
    )
    assert far["cosine"] < near["cosine"]
    assert nearest_excluded(frame, {}, hash_encoder) is None


def test_max_questions_keeps_the_first_that_pass_so_smaller_sets_nest():
    """gen.max_questions takes the first N that pass, in passage order, before the
    letters are balanced: the 2-question set is inside the 4-question one."""
    from data_gen.postprocess import postprocess
    from tests.builders import make_config

    frame = questions(6)
    frame.loc[1, "prompt"] = frame.loc[0, "prompt"]  # a duplicate is not counted
    sets = {}
    for n in (2, 4, 9):
        gen = make_config(f"gen.max_questions={n}").gen
        kept, drops, counts = postprocess(frame, gen, seed=3)
        sets[n] = set(kept["id"])
        assert counts["passed"] == 5 and counts["kept"] == min(n, 5)
        assert [d["reason"] for d in drops] == ["duplicate_exact"]
    assert sets[2] == {"q0", "q2"} and sets[4] == {"q0", "q2", "q3", "q4"}
    assert sets[9] == {"q0", "q2", "q3", "q4", "q5"}

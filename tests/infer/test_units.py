"""infer's arithmetic on hand-made arrays: ensemble, TTA, OOF weights, budget, cascade."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from infer.ensemble.combine import combine, margin, parse_weights
from infer.ensemble.fit import greedy_weights, map3_from_logits
from infer.errors import InferError
from infer.plan.budget import Budget, Candidate, CostModel, make_plan, parse_duration
from infer.plan.cascade import escalate
from infer.plan.tta import permute_options, rotation, rotations, unpermute
from sciqa.metrics import map_at_3, softmax, top3_letters


def test_combine_logits_is_weighted_mean():
    a = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    b = np.array([[3.0, 3.0, 0.0], [1.0, 0.0, 1.0]])
    got = combine([a, b], [1, 3], "logits")
    np.testing.assert_allclose(got, (a + 3 * b) / 4, rtol=1e-6)


def test_combine_probs_averages_softmax_and_returns_log():
    a = np.array([[10.0, 0.0]])  # very sure of A
    b = np.array([[0.0, 0.1]])  # barely prefers B
    got = combine([a, b], [1, 1], "probs")
    expected = np.log((softmax(a) + softmax(b)) / 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Logit scale no longer decides: mean logits would say A by far, probs too, but closer.
    assert got[0, 0] > got[0, 1]


def test_combine_skips_unscored_rows_and_renormalises():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[np.nan, np.nan], [4.0, 0.0]])
    got = combine([a, b], [1, 1], "logits")
    np.testing.assert_allclose(got[0], a[0])  # only a scored row 0
    np.testing.assert_allclose(got[1], (a[1] + b[1]) / 2)
    assert np.isnan(combine([b], [1], "logits")[0]).all()


@pytest.mark.parametrize(("text", "expected"), [("equal", [1, 1]), ("1, 0.5", [1, 0.5])])
def test_parse_weights(text, expected):
    assert parse_weights(text, 2, ["a", "b"]) == expected


@pytest.mark.parametrize("text", ["1", "1,2,3", "1,-2", "0,0", "a,b", "1,nan"])
def test_parse_weights_rejects(text):
    with pytest.raises(InferError):
        parse_weights(text, 2, ["a", "b"])


@pytest.mark.parametrize("n_options", [2, 4, 5, 7])
def test_tta_unpermutation_is_exact(n_options):
    rng = np.random.default_rng(n_options)
    letters = [chr(65 + i) for i in range(n_options)]
    frame = pd.DataFrame(
        {"id": ["q0", "q1"], "prompt": ["p", "p"], "answer": [letters[1], letters[-1]]}
        | {letter: [f"opt{i}-0", f"opt{i}-1"] for i, letter in enumerate(letters)}
    )
    # A "model" that scores each option by its text: position must not matter.
    option_score = {f"opt{i}-{r}": rng.normal() for i in range(n_options) for r in range(2)}
    original = frame[letters].map(option_score.get).to_numpy()
    for perm in rotations(n_options, n_options):
        shown = permute_options(frame, letters, perm)
        scores = shown[letters].map(option_score.get).to_numpy()
        np.testing.assert_array_equal(unpermute(scores, perm), original)
        # The answer follows its option to the new slot.
        for r in range(2):
            assert shown.loc[r, shown.loc[r, "answer"]] == frame.loc[r, frame.loc[r, "answer"]]


def test_rotations_are_distinct_and_bounded():
    perms = rotations(5, 5)
    assert len({tuple(p) for p in perms}) == 5
    assert rotation(5, 0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InferError, match="distinct rotations"):
        rotations(4, 5)


@pytest.mark.parametrize("seed", range(5))
def test_map3_from_logits_matches_reference(seed):
    rng = np.random.default_rng(seed)
    logits = rng.integers(-2, 3, size=(50, 5)).astype(float)  # many ties
    labels = rng.integers(0, 5, size=50)
    expected = map_at_3([chr(65 + y) for y in labels], top3_letters(logits))
    assert map3_from_logits(logits, labels) == pytest.approx(expected)


def test_greedy_weights_prefer_the_informative_model():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    good = rng.normal(size=(200, 5))
    good[np.arange(200), labels] += 2.0
    noise = rng.normal(size=(200, 5))
    weights, score = greedy_weights([noise, good], labels, "probs", rounds=20)
    assert weights[1] > weights[0] and weights.sum() == pytest.approx(1)
    assert score >= map3_from_logits(good, labels)


def test_greedy_weights_never_worse_than_best_single():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=100)
    arrays = [rng.normal(size=(100, 4)) + 0.8 * np.eye(4)[labels] * i for i in range(3)]
    _, score = greedy_weights(arrays, labels, "logits", rounds=10)
    assert score >= max(map3_from_logits(a, labels) for a in arrays)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("8h30m", 30600), ("45m", 2700), ("90s", 90), ("1.5h", 5400), ("3600", 3600)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0s", "5x", "h", "1h 2"])
def test_parse_duration_rejects(text):
    with pytest.raises(InferError):
        parse_duration(text)


def test_plan_drops_tta_before_models_and_lowest_weight_first():
    cands = [Candidate("a", 1.0, 2, 10), Candidate("b", 3.0, 2, 10), Candidate("c", 2.0, 2, 10)]
    assert make_plan(cands, 3, 1000) == {"a": 3, "b": 3, "c": 3}
    assert make_plan(cands, 3, 70) == {"a": 2, "b": 2, "c": 2}
    assert make_plan(cands, 3, 36) == {"a": 1, "b": 1, "c": 1}
    assert make_plan(cands, 3, 30) == {"a": 0, "b": 1, "c": 1}
    assert make_plan(cands, 3, 12) == {"a": 0, "b": 1, "c": 0}


def test_plan_counts_finished_passes_as_free():
    cands = [Candidate("a", 1.0, 0, 10, done_passes=2)]
    assert make_plan(cands, 2, 0) == {"a": 2}


def test_plan_drops_a_model_too_big_alone_even_with_high_weight():
    cands = [Candidate("huge", 5.0, 0, 100), Candidate("small", 1.0, 0, 10)]
    assert make_plan(cands, 1, 50) == {"huge": 0, "small": 1}


def test_cost_model_scales_unmeasured_by_weight_bytes():
    costs = CostModel()
    assert costs.estimate("x", 100, 1000) is None
    costs.observe("x", tokens=1000, seconds=2.0, load_seconds=1.0, weight_bytes=100)
    assert costs.estimate("x", 100, 500) == (1.0, 1.0)
    assert costs.estimate("y", 300, 1000) == (3.0, 6.0)


def test_budget_counts_down_with_margin():
    now = [0.0]
    budget = Budget(100, margin=0.1, clock=lambda: now[0])
    assert budget.remaining() == 90
    now[0] = 95
    assert budget.expired()
    assert not Budget(None).expired()


def test_escalate_picks_lowest_margins():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.7, 0.3], [0.5, 0.5]])
    assert escalate(np.log(probs), 0.5).tolist() == [1, 3]
    assert escalate(np.log(probs), 1.0).tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(margin(np.log(probs)), [0.8, 0.1, 0.4, 0.0], atol=1e-9)


def test_softmax_rows_sum_to_one_and_keep_nan_rows():
    out = softmax(np.array([[1000.0, 0.0], [np.nan, np.nan]]))
    assert out[0].sum() == pytest.approx(1) and np.isnan(out[1]).all()


def test_all_permutations_roundtrip():
    perms = [np.array(p) for p in itertools.permutations(range(4))]
    x = np.arange(8.0).reshape(2, 4)
    for perm in perms:
        np.testing.assert_array_equal(unpermute(x[:, perm], perm), x)

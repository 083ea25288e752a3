import random

import numpy as np
import pytest

from sciqa.metrics import accuracy, average_precision_at_3, map_at_3, top3_letters


def reference_map_at_3(labels, predictions):
    """The textbook formula: sum_k P(k) * rel(k) over the first 3 ranks, where only the
    first occurrence of the single correct label is relevant."""
    total = 0.0
    for label, prediction in zip(labels, predictions, strict=True):
        letters = prediction.split()[:3]
        relevant = [
            letter == label and label not in letters[:k] for k, letter in enumerate(letters)
        ]
        total += sum(sum(relevant[: k + 1]) / (k + 1) * relevant[k] for k in range(len(letters)))
    return total / len(labels)


@pytest.mark.parametrize(
    ("label", "prediction", "expected"),
    [
        ("A", "A B C", 1.0),
        ("B", "A B C", 1 / 2),
        ("C", "A B C", 1 / 3),
        ("D", "A B C", 0.0),
        ("D", "A B C D", 0.0),  # rank 4 is past the cut-off
        ("A", "A A A", 1.0),  # counted once, not 1 + 1 + 1
        ("B", "A B B", 1 / 2),
        ("B", "", 0.0),
        ("C", "C", 1.0),
        ("E", ["B", "E"], 1 / 2),
    ],
)
def test_average_precision_hand_computed(label, prediction, expected):
    assert average_precision_at_3(label, prediction) == pytest.approx(expected)


def test_map_at_3_is_the_mean_over_questions():
    # (1 + 1/2 + 1/3 + 0) / 4 = 11/24
    labels = ["A", "B", "C", "D"]
    preds = ["A B C", "A B C", "A B C", "A B C"]
    assert map_at_3(labels, preds) == pytest.approx(11 / 24)


def test_map_at_3_matches_reference_on_random_cases():
    rng = random.Random(0)
    letters = list("ABCDE")
    labels = [rng.choice(letters) for _ in range(500)]
    preds = [" ".join(rng.choices(letters, k=rng.randint(0, 5))) for _ in labels]
    assert map_at_3(labels, preds) == pytest.approx(reference_map_at_3(labels, preds))


def test_map_at_3_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        map_at_3(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="no questions"):
        map_at_3([], [])


def test_accuracy_uses_first_letter_only():
    assert accuracy(["A", "B", "C"], ["A B C", "A B C", ""]) == pytest.approx(1 / 3)


def test_top3_letters_orders_by_score():
    logits = np.array([[0.1, 2.0, -1.0, 0.5, 0.3], [5, 4, 3, 2, 1]])
    assert top3_letters(logits) == ["B D E", "A B C"]


def test_top3_letters_breaks_ties_by_option_order():
    assert top3_letters([[1.0, 1.0, 1.0, 1.0, 1.0]]) == ["A B C"]
    assert top3_letters([[0.0, 3.0, 3.0, 0.0, 3.0]]) == ["B C E"]


def test_top3_letters_follows_number_of_options():
    assert top3_letters([[1.0, 3.0]]) == ["B A"]
    assert top3_letters([[0, 0, 0, 0, 0, 0, 9.0]]) == ["G A B"]


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[]], [[1.0, float("nan"), 0.0]]])
def test_top3_letters_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        top3_letters(bad)


def test_top3_then_map_at_3_round_trip():
    logits = np.array([[9, 0, 0, 0, 0], [0, 0, 1, 9, 0], [0, 0, 0, 0, 0]], dtype=float)
    assert map_at_3(["A", "C", "E"], top3_letters(logits)) == pytest.approx((1 + 1 / 2 + 0) / 3)

import numpy as np
import pytest

from sciqa.evaluation.intervals import (
    average_precisions,
    average_precisions_from_logits,
    bootstrap_interval,
    bootstrap_many,
    paired_bootstrap,
)
from sciqa.metrics import map_at_3, top3_letters


def reference_interval(values, n_resamples, seed, confidence=0.95):
    """The textbook percentile bootstrap, one resample at a time."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = [float(np.mean(values[rng.integers(0, n, size=(1, n))[0]])) for _ in range(n_resamples)]
    tail = (1 - confidence) / 2 * 100
    return np.percentile(means, [tail, 100 - tail])


def aps_of(n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.choice([1.0, 0.5, 1 / 3, 0.0], size=n, p=[0.55, 0.2, 0.1, 0.15])


@pytest.mark.parametrize("n", [1, 7, 200])
@pytest.mark.parametrize("seed", [0, 3])
def test_bootstrap_matches_slow_reference_loop(n, seed, monkeypatch):
    # Small blocks so the vectorised path crosses several block boundaries. The block
    # size is a private memory bound with no public seam (the results must not depend
    # on it), and the real one (4M cells) only splits 101 resamples past 40k questions.
    monkeypatch.setattr("sciqa.evaluation.intervals._CELLS_PER_BLOCK", 3 * n)
    values = aps_of(n, seed=seed + 10)
    ci = bootstrap_interval(values, n_resamples=101, seed=seed)
    low, high = reference_interval(values, 101, seed)
    assert (ci.low, ci.high) == pytest.approx((low, high))
    assert ci.estimate == pytest.approx(values.mean())
    assert ci.n_questions == n and ci.n_resamples == 101


@pytest.mark.parametrize("seed", range(5))
def test_interval_contains_the_point_and_is_seeded(seed):
    values = aps_of(300, seed=seed)
    ci = bootstrap_interval(values, n_resamples=2000, seed=seed)
    assert ci.low < ci.estimate < ci.high
    assert bootstrap_interval(values, n_resamples=2000, seed=seed) == ci
    assert bootstrap_interval(values, n_resamples=2000, seed=seed + 100) != ci


def test_fewer_questions_give_a_wider_interval():
    values = aps_of(4000)
    wide = bootstrap_interval(values[:100], n_resamples=2000)
    narrow = bootstrap_interval(values, n_resamples=2000)
    assert wide.high - wide.low > 3 * (narrow.high - narrow.low)


def test_confidence_widens_the_interval():
    values = aps_of(500)
    ci90 = bootstrap_interval(values, n_resamples=2000, confidence=0.90)
    ci99 = bootstrap_interval(values, n_resamples=2000, confidence=0.99)
    assert ci99.low < ci90.low and ci99.high > ci90.high


def test_paired_difference_of_identical_systems_is_zero():
    values = aps_of(250)
    diff = paired_bootstrap(values, values, n_resamples=500)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert not diff.excludes_zero()


def test_paired_interval_is_narrower_than_unpaired_and_finds_a_small_gain():
    # B is A with an eighth of its misses turned into hits: a small, real gain shared
    # questions hide in two separate intervals but a paired bootstrap sees.
    a = aps_of(600, seed=4)
    b = a.copy()
    misses = np.flatnonzero(a < 1.0)
    b[misses[: len(misses) // 8]] = 1.0
    diff = paired_bootstrap(b, a, n_resamples=2000)
    ci_a = bootstrap_interval(a, n_resamples=2000)
    ci_b = bootstrap_interval(b, n_resamples=2000)
    assert diff.estimate == pytest.approx(b.mean() - a.mean())
    assert diff.excludes_zero() and diff.low > 0
    assert diff.high - diff.low < 0.75 * (ci_a.high - ci_a.low)
    assert ci_b.low < ci_a.high  # side by side, the two intervals overlap


def test_paired_needs_aligned_questions():
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap(np.ones(3), np.ones(4))


def test_bootstrap_many_equals_one_at_a_time():
    values = np.stack([aps_of(150, seed=s) for s in range(3)], axis=1)
    many = bootstrap_many(values, n_resamples=300, seed=7)
    assert len(many) == 3
    for j, ci in enumerate(many):
        one = bootstrap_interval(values[:, j], n_resamples=300, seed=7)
        assert (ci.estimate, ci.low, ci.high) == pytest.approx((one.estimate, one.low, one.high))


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [
        ([], {}, "no questions"),
        ([0.5, np.nan], {}, "NaN"),
        ([1.0], {"n_resamples": 0}, "n_resamples"),
        ([1.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_input_is_refused(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(values, **kwargs)


def test_ap_from_logits_agrees_with_letters_including_ties():
    rng = np.random.default_rng(0)
    # Coarse integer scores make ties common: both paths must break them alike.
    logits = rng.integers(0, 3, size=(400, 5)).astype(float)
    answers = rng.integers(0, 5, size=400)
    labels = ["ABCDE"[i] for i in answers]
    top3 = top3_letters(logits)
    from_logits = average_precisions_from_logits(logits, answers)
    assert from_logits.tolist() == average_precisions(labels, top3).tolist()
    assert from_logits.mean() == pytest.approx(map_at_3(labels, top3))


def test_ap_from_logits_refuses_answers_out_of_range():
    with pytest.raises(ValueError, match=r"0\.\.2"):
        average_precisions_from_logits(np.zeros((1, 3)), np.array([3]))


def test_interval_formats_for_humans():
    ci = bootstrap_interval([1.0, 0.0, 0.5, 0.5], n_resamples=100)
    assert str(ci).startswith("0.5000 (95% CI ")

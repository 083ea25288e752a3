"""Ensemble weights fitted on OOF logits: logistic stacking and the nested-CV choice."""

import numpy as np
import pytest

from infer.ensemble.combine import combine
from infer.ensemble.fit import (
    fit_weights,
    greedy_weights,
    map3_from_logits,
    outer_folds,
    select_weights,
    stack_weights,
)
from sciqa.metrics import softmax


def member(labels, signal, rng, c=4):
    """Scores where the right option gets ``signal`` on top of unit Gaussian noise."""
    scores = rng.normal(size=(len(labels), c))
    scores[np.arange(len(labels)), labels] += signal
    return scores


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_stacking_keeps_the_informative_member_and_drops_noise(rng):
    y = rng.integers(0, 4, 600)
    good, noise = member(y, 2.0, rng), member(y, 0.0, rng)
    for mode in ("logits", "zscore", "probs"):
        weights, temperature = stack_weights([noise, good, noise[::-1]], y, mode)
        assert weights.sum() == pytest.approx(1.0)
        assert weights[1] > 0.8, (mode, weights)
        assert temperature > 0


def test_stacking_combines_complementary_members(rng):
    y = rng.integers(0, 4, 800)
    a, b = member(y, 1.0, rng), member(y, 1.0, rng)
    weights, _ = stack_weights([a, b], y, "logits")
    assert 0.3 < weights[0] < 0.7
    both = map3_from_logits(combine([a, b], weights, "logits"), y)
    assert both > max(map3_from_logits(a, y), map3_from_logits(b, y)) + 0.02


@pytest.mark.parametrize("mode", ["logits", "zscore", "probs"])
def test_the_combination_stacking_fits_is_a_weighted_mean_in_its_space(rng, mode):
    """Stacking optimises ``combine``'s own maths: check that against the formula."""
    y = rng.integers(0, 4, 50)
    arrays = [member(y, 1.0, rng), member(y, 0.5, rng) * 3]
    weights = np.array([0.3, 0.7])

    def space(a):
        if mode == "probs":
            return softmax(a)
        if mode == "zscore":
            return (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
        return a

    reference = sum(w * space(a) for w, a in zip(weights, arrays, strict=True)) / weights.sum()
    reference = np.log(reference) if mode == "probs" else reference
    np.testing.assert_allclose(combine(arrays, weights, mode), reference, rtol=1e-5, atol=1e-6)


def test_fit_weights_methods(rng):
    y = rng.integers(0, 4, 200)
    arrays = [member(y, 0.2, rng), member(y, 2.0, rng)]
    assert fit_weights("best", arrays, y, "logits").tolist() == [0.0, 1.0]
    assert fit_weights("equal", arrays, y, "logits").tolist() == [0.5, 0.5]
    greedy = fit_weights("greedy", arrays, y, "logits", rounds=5)
    assert greedy.sum() == pytest.approx(1.0) and greedy[1] >= 0.5
    with pytest.raises(ValueError, match="unknown weighting method 'mean'"):
        fit_weights("mean", arrays, y, "logits")


def test_outer_folds_partition_every_question_once():
    fold = outer_folds(103, 5, seed=1)
    assert sorted(np.bincount(fold).tolist()) == [20, 20, 21, 21, 21]
    assert not np.array_equal(fold, outer_folds(103, 5, seed=2))


def test_nested_cv_scores_weights_on_questions_they_were_not_fitted_on(rng):
    """Pure-noise members: greedy selection fitted and scored on the same questions looks
    better than chance; its nested-CV score does not."""
    y = rng.integers(0, 4, 240)
    arrays = [member(y, 0.0, rng) for _ in range(8)]
    chance = (1 + 1 / 2 + 1 / 3) / 4
    in_sample = greedy_weights(arrays, y, "logits", rounds=20)[1]
    selection = select_weights(arrays, y, "logits", folds=4, rounds=20)
    assert in_sample > chance + 0.04
    assert selection.nested_map_at_3["greedy"] < min(in_sample - 0.03, chance + 0.02)
    assert set(selection.nested_map_at_3) == {"best", "equal", "greedy", "stack"}
    # The held-out scores are what the nested MAP@3 was computed from.
    for method, scores in selection.held_out_scores.items():
        assert map3_from_logits(scores, y) == pytest.approx(selection.nested_map_at_3[method])


def test_select_prefers_the_method_that_generalises(rng):
    y = rng.integers(0, 4, 400)
    good = member(y, 1.5, rng)
    arrays = [good, *(member(y, 0.0, rng) for _ in range(5))]
    selection = select_weights(arrays, y, "logits", folds=5)
    assert selection.method != "equal"  # equal weights drown the one good member in noise
    assert selection.weights[0] > 0.8
    assert selection.report()["chosen"] == selection.method
    two = [member(y, 1.0, rng), member(y, 1.0, rng)]
    assert select_weights(two, y, "logits").method in {"equal", "stack"}


def test_select_needs_enough_questions(rng):
    y = rng.integers(0, 4, 7)
    with pytest.raises(ValueError, match="too few for 5 outer folds"):
        select_weights([member(y, 1.0, rng)], y, "logits")


def _informative_oof(run, signal, seed):
    """Rewrite a run's oof.parquet so its logits favour the answer by ``signal``."""
    import pandas as pd

    oof = pd.read_parquet(run / "oof.parquet")
    letters = list("ABCDE")
    y = oof["answer"].map(letters.index).to_numpy()
    scores = member(y, signal, np.random.default_rng(seed), c=len(letters))
    oof[letters] = scores
    oof.to_parquet(run / "oof.parquet")
    return run


@pytest.mark.parametrize("method", ["stack", "select"])
def test_infer_fits_weights_on_the_runs_oof(tmp_path, method):
    pytest.importorskip("torch")
    from infer.commands import run_infer
    from infer.errors import InferError
    from sciqa.io import write_questions
    from tests.builders import INFER_SMALL, make_config, make_questions, make_run

    train = make_questions(60, seed=7, context_words=None)
    good = _informative_oof(make_run(tmp_path / "good", 1, questions=train), 3.0, 1)
    noise = _informative_oof(make_run(tmp_path / "noise", 2, questions=train), 0.0, 2)
    qfile = write_questions(make_questions(6), tmp_path / "q.csv")
    result = run_infer(
        qfile,
        [str(noise), str(good)],
        tmp_path / "out",
        make_config(*INFER_SMALL, "infer.ensemble=logits", f"infer.weights={method}"),
    )
    fit = result["weights_fit"]
    assert fit["oof_questions"] == 60
    weights = {r["model"]: r["weight"] for r in result["models"][:-1]}
    assert weights["good-fold_0"] == pytest.approx(weights["good-fold_1"])
    assert weights["good-fold_0"] > 4 * weights["noise-fold_0"]
    assert fit["oof_map_at_3"] > fit["single_run_map_at_3"][str(noise)]
    if method == "select":
        assert fit["chosen"] in {"best", "greedy", "stack"}
        assert set(fit["nested_cv_map_at_3"]) == {"best", "equal", "greedy", "stack"}
        with pytest.raises(InferError, match=r"too few for infer\.weight_folds=40"):
            run_infer(
                qfile,
                [str(good)],
                tmp_path / "out2",
                make_config(*INFER_SMALL, "infer.weight_folds=40", "infer.weights=select"),
            )

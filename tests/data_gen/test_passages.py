"""Passage selection (data_gen.passages): the split by article and sizes that extend."""

from __future__ import annotations

import pandas as pd
import pytest

from data_gen.passages import article_split, select_passages
from sciqa.errors import SciqaError
from tests.builders import make_config


def passages(n_articles: int, per_article: int = 3) -> pd.DataFrame:
    """Science passages: ``per_article`` chunks of each of ``n_articles`` articles."""
    rows = [
        {
            "passage_id": f"a{a}#{c}",
            "title": f"Article {a}",
            "text": f"The physics of article {a}, chunk {c}: " + "energy and matter " * 12,
        }
        for a in range(n_articles)
        for c in range(per_article)
    ]
    return pd.DataFrame(rows)


def test_train_and_test_never_share_an_article_whatever_the_seed():
    frame = passages(200)
    split = {}
    for side, seed in (("test", 1), ("train", 2), ("train", 3)):
        gen = make_config(f"gen.articles={side}", "gen.test_articles=0.25").gen
        chosen, counts = select_passages(frame, 30, gen, seed)
        split.setdefault(side, set()).update(chosen["title"])
        assert counts[f"{side}_articles"] < counts["science"]
    assert split["test"] and split["train"] and not split["test"] & split["train"]
    # Every chunk of an article is on one side, and about the asked share is test.
    test = article_split(frame["title"], 0.25)
    by_article = pd.Series(test).groupby(frame["title"]).nunique()
    assert (by_article == 1).all()
    assert 0.15 < test.mean() < 0.35


def test_a_larger_n_extends_a_smaller_one():
    frame = passages(100, per_article=1)
    gen = make_config("gen.articles=train").gen
    small, _ = select_passages(frame, 20, gen, 7)
    large, _ = select_passages(frame, 40, gen, 7)
    assert large["passage_id"].tolist()[:20] == small["passage_id"].tolist()


def test_too_few_passages_in_the_split_names_it():
    gen = make_config("gen.articles=test", "gen.test_articles=0.1").gen
    with pytest.raises(SciqaError, match=r"in the test articles of gen\.articles"):
        select_passages(passages(20, per_article=1), 15, gen, 0)

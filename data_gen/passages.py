"""Read ``passages.parquet`` (``passage_id, title, text``) and pick the ones to ask about.

Selection is seeded: the same file, config and seed pick the same passages, so a rerun
renders the same requests and hits the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import numpy as np
import pandas as pd

from sciqa.config import GenConfig
from sciqa.errors import SciqaError
from sciqa.io import read_table
from sciqa.schema import describe_missing

PASSAGE_ID = "passage_id"
TITLE = "title"
TEXT = "text"
COLUMNS = (PASSAGE_ID, TITLE, TEXT)


def read_passages(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a passages file, checking its columns; ids become strings, blanks are dropped."""
    frame = read_table(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SciqaError(
            f"{path}: {describe_missing(missing, frame.columns)}; "
            "give the passages.parquet that `sciqa index` writes (passage_id, title, text)"
        )
    frame = frame[list(COLUMNS)].copy()
    frame[PASSAGE_ID] = frame[PASSAGE_ID].astype(str)
    frame[TITLE] = frame[TITLE].fillna("").astype(str)
    frame[TEXT] = frame[TEXT].fillna("").astype(str)
    frame = frame[frame[TEXT].str.strip().astype(bool)]
    duplicated = frame[PASSAGE_ID].duplicated()
    if duplicated.any():
        first = frame[PASSAGE_ID][duplicated].iloc[0]
        raise SciqaError(f"{path}: column 'passage_id': duplicate id {first!r}; ids must be unique")
    return frame.reset_index(drop=True)


def keyword_mask(frame: pd.DataFrame, keywords: list[str]) -> np.ndarray:
    """Rows whose title or text contains any keyword as a whole word (case-insensitive)."""
    if not keywords:
        return np.ones(len(frame), dtype=bool)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, keywords)) + r")s?\b", re.IGNORECASE)
    joined = frame[TITLE] + "\n" + frame[TEXT]
    return joined.map(lambda text: bool(pattern.search(text))).to_numpy()


def embedding_mask(frame: pd.DataFrame, config: GenConfig, encoder: Any) -> np.ndarray:
    """Rows whose passage embedding is close enough to one of the seed questions."""
    seeds = encoder.encode(config.science_seed_questions, normalize_embeddings=True)
    texts = (frame[TITLE] + ". " + frame[TEXT]).tolist()
    vectors = encoder.encode(texts, normalize_embeddings=True, batch_size=64)
    return (np.asarray(vectors) @ np.asarray(seeds).T).max(axis=1) >= config.science_min_similarity


def article_split(titles: pd.Series, test_share: float) -> np.ndarray:
    """True where an article falls in the test split: the first 8 bytes of the title's
    sha256 as a fraction of 2**64 below ``test_share``. Every passage of an article lands
    on the same side, whatever the seed or the file it comes from."""

    def share(title: str) -> float:
        digest = hashlib.sha256(title.strip().casefold().encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return titles.map(share).to_numpy() < test_share


def select_passages(
    frame: pd.DataFrame,
    n: int,
    config: GenConfig,
    seed: int,
    *,
    source: str = "passages",
    encoder: Any = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """``n`` passages drawn with ``seed`` among those long enough and science-like.

    Returns them with the counts of each step; raises naming the counts when fewer than
    ``n`` qualify.
    """
    counts = {"passages": len(frame)}
    words = frame[TEXT].str.split().str.len()
    frame = frame[words >= config.min_passage_words]
    counts["long_enough"] = len(frame)
    if config.science_filter == "keywords":
        frame = frame[keyword_mask(frame, config.science_keywords)]
    elif config.science_filter == "embedding" and len(frame):
        if encoder is None:
            raise ValueError("science_filter = embedding needs an encoder")
        frame = frame[embedding_mask(frame, config, encoder)]
    counts["science"] = len(frame)
    if config.articles != "all":
        test = article_split(frame[TITLE], config.test_articles)
        frame = frame[test if config.articles == "test" else ~test]
        counts[f"{config.articles}_articles"] = len(frame)
    if n > len(frame):
        raise SciqaError(
            f"{source}: --n {n} passages asked for but only {len(frame)} qualify "
            f"({counts['passages']} read, {counts['long_enough']} with >= "
            f"{config.min_passage_words} words, {counts['science']} pass "
            f"gen.science_filter={config.science_filter}{_split_note(counts, config)}); "
            "lower --n or relax the filter"
        )
    # A seeded permutation's first n: --n 500 draws --n 250's passages and 250 more, so a
    # larger set extends a smaller one and reuses its cached replies.
    chosen = frame.sample(n=n, random_state=seed).reset_index(drop=True)
    counts["selected"] = len(chosen)
    return chosen, counts


def _split_note(counts: dict[str, int], config: GenConfig) -> str:
    if config.articles == "all":
        return ""
    kept = counts[f"{config.articles}_articles"]
    return f", {kept} in the {config.articles} articles of gen.articles"

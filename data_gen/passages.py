"""Read ``passages.parquet`` (``passage_id, title, text``) and pick the ones to ask about.

Selection is seeded: the same file, config and seed pick the same passages, so a rerun
renders the same requests and hits the cache.
"""

from __future__ import annotations

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
    if n > len(frame):
        raise SciqaError(
            f"{source}: --n {n} passages asked for but only {len(frame)} qualify "
            f"({counts['passages']} read, {counts['long_enough']} with >= "
            f"{config.min_passage_words} words, {counts['science']} pass "
            f"gen.science_filter={config.science_filter}); lower --n or relax the filter"
        )
    chosen = frame.sample(n=n, random_state=seed).reset_index(drop=True)
    counts["selected"] = len(chosen)
    return chosen, counts

"""Zero-shot option scoring with a sentence embedding model: no training, no labels.

Each option is scored by the cosine between the question (optionally with its
retrieved context) and the option. The baseline that every trained model must beat,
the scorer behind ``data_gen``'s answerability/too-easy filters and the fixed probe
behind the retrieval benchmark. The model is passed in, so this module imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sciqa.schema import CONTEXT, PROMPT, option_letters
from sciqa.scoring.mc_encoding import first_segment


def option_scores(
    model: Any,
    frame: pd.DataFrame,
    *,
    use_context: bool = False,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Cosine of each question (+ context) with each of its options: ``(n, n_options)``.

    ``model`` is a ``sentence_transformers.SentenceTransformer``.
    """
    letters = option_letters(frame.columns)
    contexts = (
        frame[CONTEXT].fillna("").astype(str)
        if use_context and CONTEXT in frame.columns
        else pd.Series([""] * len(frame), index=frame.index)
    )
    queries = [first_segment(p, c) for p, c in zip(frame[PROMPT], contexts, strict=True)]
    options = frame[letters].astype(str).to_numpy()
    kwargs = {
        "normalize_embeddings": True,
        "batch_size": batch_size,
        "show_progress_bar": show_progress_bar,
    }
    query_vecs = model.encode(queries, **kwargs)
    option_vecs = model.encode(options.ravel().tolist(), **kwargs).reshape(*options.shape, -1)
    return np.einsum("nd,nod->no", query_vecs, option_vecs)

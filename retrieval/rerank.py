"""Optional cross-encoder reranking of the fused candidates (``models.reranker``).

3rd place in the Kaggle competition gained about +0.015 MAP@3 by rescoring retrieved
passages with a cross-encoder. No cross-encoder ships offline, so this is off unless
``models.reranker`` names a local folder or a Hub model such as
``cross-encoder/ms-marco-MiniLM-L6-v2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalInputError


def load_reranker(name: str, device: str | None = None) -> Any:
    from sentence_transformers import CrossEncoder

    path = Path(name).expanduser()
    target = str(path) if path.exists() else name
    try:
        return CrossEncoder(target, device=device)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise RetrievalInputError(
            f"models.reranker = {name!r} cannot be loaded: {reason}; "
            "name a local cross-encoder folder, or unset it to skip reranking"
        ) from None


def rerank_scores(
    model: Any, queries: Sequence[str], candidates: Sequence[Sequence[str]], batch_size: int
) -> list[np.ndarray]:
    """Cross-encoder score of each (query, candidate) pair, one array per query.

    All pairs go through one ``predict`` call so batches are full (and length-sorted by
    sentence-transformers) across queries.
    """
    pairs = [(q, c) for q, cands in zip(queries, candidates, strict=True) for c in cands]
    if not pairs:
        return [np.zeros(0, dtype=np.float32) for _ in queries]
    flat = np.asarray(
        model.predict(pairs, batch_size=batch_size, show_progress_bar=len(pairs) > 2000),
        dtype=np.float32,
    ).reshape(len(pairs), -1)[:, -1]  # 2-label models: the last (relevant) logit
    out, start = [], 0
    for cands in candidates:
        out.append(flat[start : start + len(cands)])
        start += len(cands)
    return out

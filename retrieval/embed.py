"""Sentence-transformers encoding for passages and queries.

``SentenceTransformer.encode`` already sorts its inputs by length, batches and restores
the order, so padding is minimal; this module adds the prefixes from config (e5's
``"query: "`` / ``"passage: "``, bge's instruction), L2 normalisation for cosine search,
blocks (so 50M passages never sit in memory at once) and the multi-process pool that
sentence-transformers starts for several GPUs (``retrieval.encode_devices``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from retrieval.errors import IndexDirError
from sciqa.assets.registry import resolve_model
from sciqa.config import RetrievalConfig


def load_encoder(name: str, device: str | None) -> Any:
    """The sentence-transformers model ``name`` (``models.embedding``) on ``device``
    (``retrieval.device``).

    Loaded once per process: index, retrieve and the benchmark ask for it repeatedly.
    """
    source = resolve_model(name, "embedding")
    try:
        return _cached_encoder(source.name_or_path, device)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise IndexDirError(f"models.embedding = {name!r} cannot be loaded: {reason}") from None


@functools.lru_cache(maxsize=2)
def _cached_encoder(name_or_path: str, device: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name_or_path, device=device)


def embedding_dim(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or (
        model.get_sentence_embedding_dimension  # sentence-transformers < 6
    )
    dim = getter()
    if dim is None:  # models without a pooling layer report none; measure it
        dim = int(model.encode(["x"]).shape[1])
    return int(dim)


def encode(
    model: Any,
    texts: Sequence[str],
    *,
    prefix: str = "",
    batch_size: int = 64,
    devices: Sequence[str] = (),
    pool: Any = None,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """``(len(texts), dim)`` float32, L2-normalised, in the order of ``texts``."""
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "normalize_embeddings": True,
        "convert_to_numpy": True,
        "show_progress_bar": show_progress_bar,
    }
    if prefix:
        kwargs["prompt"] = prefix
    if pool is not None:
        kwargs["pool"] = pool
    elif len(devices) > 1:
        kwargs["device"] = list(devices)
    vectors = model.encode(list(texts), **kwargs)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def encode_blocks(
    model: Any,
    blocks: Iterable[Sequence[str]],
    *,
    total: int,
    prefix: str = "",
    batch_size: int = 64,
    devices: Sequence[str] = (),
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, vectors)`` for each block of texts (``total`` of them in all, for
    the progress bar); ``start`` counts the texts of the blocks before.

    With two or more ``devices`` one pool serves every block (starting it per block
    would reload the model each time).
    """
    from tqdm.auto import tqdm

    pool = model.start_multi_process_pool(list(devices)) if len(devices) > 1 else None
    try:
        with tqdm(total=total, desc="embed", unit="passage") as bar:
            start = 0
            for part in blocks:
                vectors = encode(
                    model,
                    part,
                    prefix=prefix,
                    batch_size=batch_size,
                    pool=pool,
                    show_progress_bar=len(part) >= 1000,  # batches within a big block
                )
                yield start, vectors
                start += len(part)
                bar.update(len(part))
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)


def encode_queries(model: Any, queries: Sequence[str], settings: RetrievalConfig) -> np.ndarray:
    return encode(
        model,
        queries,
        prefix=settings.query_prefix,
        batch_size=settings.batch_size,
        devices=settings.encode_devices,
        show_progress_bar=len(queries) > 1000,
    )

"""The dense index: one faiss factory string from config, cosine via inner product.

Vectors are L2-normalised before they get here, so ``METRIC_INNER_PRODUCT`` ranks by
cosine. Factories that need training (IVF, PQ, OPQ) are trained on a seeded sample.
faiss ids are the passages' row numbers in ``passages.parquet``.

Sharded builds follow faiss's ``contrib/ondisk`` recipe: train one empty index, let every
shard add its vectors (with their global row numbers as ids) into its own file, then
``merge_ondisk`` the inverted lists into one ``.ivfdata`` file that is memory-mapped at
search time. Flat indexes merge with ``merge_from``.

A full disk is one line, not a faiss traceback: :func:`write` reads faiss's "write
error ... (No space left on device)", and :func:`merge` checks the room for the merged
inverted lists first, because ``merge_ondisk`` grows its file by ``ftruncate`` and writes
through a memory map, where a full disk kills the process with SIGBUS instead of raising.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexDirError, RetrievalInputError
from retrieval.index_dir import IVF_DATA
from sciqa.errors import DISK_FULL, FREE_HINT, DiskFullError, free_space
from sciqa.io import atomic_path

# faiss prefixes its messages with the C++ function and source line; users need the rest.
_FAISS_PREFIX = re.compile(r"^Error in .*? at \S+:\d+: ")


def _reason(exc: RuntimeError) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return _FAISS_PREFIX.sub("", lines[-1])[:300]


def new_index(dim: int, factory: str) -> Any:
    """An empty index from ``factory``; a bad string fails naming the config key."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise RetrievalInputError(
            f"retrieval.faiss_factory = {factory!r} is not a valid faiss factory string "
            f"for dimension {dim}: {_reason(exc)}"
        ) from None


def needs_training(index: Any) -> bool:
    return not index.is_trained


def is_ivf(index: Any) -> bool:
    import faiss

    return faiss.try_extract_index_ivf(index) is not None


def train(index: Any, sample: np.ndarray) -> None:
    """Train on ``sample`` (faiss warns, but works, when it is small for the factory)."""
    if len(sample) == 0:
        raise RetrievalInputError("cannot train the faiss index on zero vectors")
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def add(index: Any, vectors: np.ndarray, start: int) -> None:
    """Add vectors whose passage rows are ``start, start + 1, ...``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if is_ivf(index):
        index.add_with_ids(vectors, np.arange(start, start + len(vectors), dtype=np.int64))
    else:  # sequential ids; shards of a Flat index are merged back in row order
        index.add(vectors)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted, seeded sample of row numbers for training (all rows if n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def write(index: Any, path: Path) -> None:
    """Write atomically: a temp file beside ``path``, renamed on success."""
    import faiss

    with atomic_path(path) as tmp:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as exc:
            raise _write_error(exc, path) from None


def _write_error(exc: RuntimeError, path: Path) -> Exception:
    """faiss reports a failed ``fwrite`` as a RuntimeError ending in ``(strerror)``."""
    reason = _reason(exc)
    if any(os.strerror(code) in reason for code in DISK_FULL):
        return DiskFullError.at(path)
    return IndexDirError(f"{path}: cannot write the faiss index ({reason})")


def _check_room(shards: Sequence[Path], ivfdata: Path) -> None:
    """The merged lists take about what the shards' files take; refuse before faiss
    starts writing them through a memory map (a full disk there is a SIGBUS)."""
    need = sum(s.stat().st_size for s in shards)
    if shutil.disk_usage(ivfdata.parent).free < need:
        raise DiskFullError(
            f"{ivfdata}: not enough space for the merged inverted lists (about "
            f"{need / 1e9:.2f} GB needed, {free_space(ivfdata)}); {FREE_HINT}"
        )


def read(path: Path, *, mmap: bool) -> Any:
    """Load an index; ``mmap`` maps flat codes / inverted lists instead of reading them."""
    import faiss

    # ONDISK_SAME_DIR: a merged index finds its .ivfdata beside it even after the
    # folder was moved or copied to another machine.
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    # A merged index keeps its lists in .ivfdata, which faiss always maps itself; adding
    # IO_FLAG_MMAP to such an index loads but crashes on search (faiss 1.15), so not there.
    if mmap and not (path.parent / IVF_DATA).exists():
        flags |= faiss.IO_FLAG_MMAP
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise IndexDirError(
            f"{path}: cannot read the faiss index ({_reason(exc)}); rebuild it with `sciqa index`"
        ) from None


def set_search_params(index: Any, nprobe: int, ef_search: int) -> None:
    """Apply ``nprobe`` / ``efSearch`` where the index type has them."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = ef_search
    base = faiss.downcast_index(index.index if hasattr(index, "chain") else index)
    if hasattr(base, "hnsw"):
        base.hnsw.efSearch = ef_search


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)``, each ``(n, k)``; missing hits are row -1."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def merge(
    trained: Path,
    shards: Sequence[Path],
    out: Path,
    *,
    offsets: Sequence[int],
    final: Path | None = None,
) -> None:
    """One index from shard files: ``merge_ondisk`` for IVF, ``merge_from`` otherwise.

    Each shard numbers its vectors from 0; ``offsets`` are the rows of the shards before
    it (an IVF index's ids are shifted by them; other indexes number in merge order).
    ``final``: where ``out`` will be once its folder is published (default ``out``); an
    IVF index records its ``.ivfdata`` path beside it.
    """
    import faiss

    index = read(trained, mmap=False)
    if is_ivf(index):
        from faiss.contrib.ondisk import merge_ondisk

        ivfdata = out.parent / IVF_DATA
        _check_room(shards, ivfdata)
        with atomic_path(ivfdata) as tmp_data:
            merge_ondisk(index, [str(s) for s in shards], str(tmp_data))
            _shift_ids(faiss.extract_index_ivf(index).invlists, shards, offsets)
        # The index points at the .ivfdata by path; re-point it at the final name.
        invlists = faiss.extract_index_ivf(index).invlists
        faiss.downcast_InvertedLists(invlists).filename = str((final or out).parent / IVF_DATA)
        write(index, out)
        return
    for shard in shards:
        part = read(shard, mmap=False)
        try:
            index.merge_from(part)  # ids follow on: shards are merged in row order
        except RuntimeError:
            raise RetrievalInputError(
                f"faiss index type {type(index).__name__} cannot be merged from shards; "
                "use a Flat, PQ or IVF retrieval.faiss_factory for sharded builds"
            ) from None
    write(index, out)


def _shift_ids(merged: Any, shards: Sequence[Path], offsets: Sequence[int]) -> None:
    """Add each shard's offset to its ids in the merged lists, in place: merge_ondisk
    puts list j's entries of shard 0 first, then shard 1's, and so on. (Its own
    ``shift_ids`` shifts by other amounts than the rows before, faiss 1.15.)"""
    import faiss

    sizes = np.zeros((len(shards), merged.nlist), dtype=np.int64)
    for row, shard in enumerate(shards):
        part = faiss.read_index(str(shard), faiss.IO_FLAG_MMAP)  # owns the lists read below
        lists = faiss.extract_index_ivf(part).invlists
        sizes[row] = [lists.list_size(j) for j in range(merged.nlist)]
    shifts = np.asarray(offsets, dtype=np.int64)
    for j in range(merged.nlist):
        n = merged.list_size(j)
        if n and shifts.any():
            ids = faiss.rev_swig_ptr(merged.get_ids(j), n)
            ids += np.repeat(shifts, sizes[:, j])

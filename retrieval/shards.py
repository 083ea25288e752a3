"""Sharded ``sciqa index`` builds: ``--train`` once, ``--shard i/n`` per job, ``--merge``.

Everything lives in OUT, so the merge finds its inputs where the shards left them::

    OUT/trained.faiss(.json)       --train: the empty trained index every shard adds into
    OUT/shards/00003-of-00008/     --shard 3/8: passages, vectors and manifest of one slice
    OUT/{passages.parquet,...}     --merge: the index readers load

A kill at any point leaves OUT as it was or as the step made it, never half of each:

* a shard is built in ``shards/.00003-of-00008.partial`` and renamed into place whole,
  so a shard folder is complete or absent (one without a manifest, left by an older
  sciqa, is unfinished: the merge refuses it and rerunning that shard replaces it);
* the merge builds the next OUT in ``.OUT.partial``: the merged files, plus hard links to
  (copies where links are refused) ``shards/`` and ``trained.faiss``, so the new OUT can
  be merged again; one swap then publishes it. Until that swap the old OUT, its index
  and the merge's inputs are untouched, so a failed or killed merge loses nothing and a
  rerun starts over from the same inputs;
* ``--train`` writes ``trained.faiss`` beside a previous index without disturbing it
  (the merged index does not read ``trained.faiss``); its fingerprint file is removed
  first and written last, so a kill in between sends the shards back to ``--train``.

Locks: ``--train`` and ``--merge`` lock OUT; each shard job locks only its own shard
folder, so a job array writes many shards of one OUT at once, and the merge locks every
shard it reads, so no shard is rewritten under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from retrieval import dense, index_dir
from retrieval.build import (
    RunWriter,
    corpus_extra,
    embed_into,
    embedding_info,
    empty_index,
    fingerprint_of,
    load_passages,
    staged,
    train_index,
    write_bm25,
)
from retrieval.chunking import passage_texts
from retrieval.embed import load_encoder
from retrieval.errors import IndexDirError, RetrievalInputError
from sciqa.config import RetrievalConfig
from sciqa.io import read_table, write_json, write_table
from sciqa.outdir import OutLock
from sciqa.runs import MANIFEST


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``; shards are numbered from 0."""
    head, sep, tail = text.partition("/")
    try:
        shard, n_shards = int(head), int(tail)
    except ValueError:
        shard, n_shards = -1, 0
    if not sep or n_shards < 1 or not 0 <= shard < n_shards:
        raise RetrievalInputError(
            f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4"
        )
    return shard, n_shards


def shard_bounds(n_rows: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Contiguous row range of one shard; the shards cover every row exactly once."""
    return n_rows * shard // n_shards, n_rows * (shard + 1) // n_shards


def train_shared(
    corpus_path: Path, out: Path, settings: RetrievalConfig, *, embedding: str, seed: int
) -> Path:
    """Train the empty faiss index every shard adds into (``out/trained.faiss``)."""
    with OutLock(out):
        corpus = load_passages(corpus_path, settings)
        model = load_encoder(embedding, settings.device)
        texts = passage_texts(corpus.passages, settings.passage_template)
        index = train_index(empty_index(model, settings), model, texts, settings, seed)
        _, fingerprint = fingerprint_of(corpus, settings, embedding, seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / index_dir.TRAINED_META).unlink(missing_ok=True)
        dense.write(index, out / index_dir.TRAINED)
        write_json({"fingerprint": fingerprint}, out / index_dir.TRAINED_META)
    return out / index_dir.TRAINED


def _shared_trained(out: Path, fingerprint: str, factory: str) -> Any:
    path = out / index_dir.TRAINED
    if not path.is_file():
        raise IndexDirError(
            f"{out}: retrieval.faiss_factory = {factory!r} needs training; run "
            f"`sciqa index CORPUS --out {out} --train` once before the shards"
        )
    meta_path = out / index_dir.TRAINED_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except ValueError:
        meta = {}
    if meta.get("fingerprint") != fingerprint:
        raise IndexDirError(
            f"{path}: trained for another corpus or settings (or its training did not "
            f"finish); re-run `sciqa index CORPUS --out {out} --train` with the same "
            "corpus and config as the shards"
        )
    return dense.read(path, mmap=False)


def build_shard(
    corpus_path: Path,
    out: Path,
    settings: RetrievalConfig,
    shard: int,
    n_shards: int,
    *,
    embedding: str,
    seed: int,
    write_run: RunWriter,
) -> Path:
    """Embed rows ``shard_bounds(...)`` of the passages into ``out/shards/i-of-n/``."""
    if not settings.dense:
        raise RetrievalInputError(
            "--shard builds the dense index; BM25 alone needs no shards (drop --shard)"
        )
    folder = index_dir.shard_dir(out, shard, n_shards)
    with OutLock(folder):
        started = time.perf_counter()
        corpus = load_passages(corpus_path, settings)
        recipe, fingerprint = fingerprint_of(corpus, settings, embedding, seed)
        model = load_encoder(embedding, settings.device)
        index = empty_index(model, settings)
        if dense.needs_training(index):
            index = _shared_trained(out, fingerprint, settings.faiss_factory)
        lo, hi = shard_bounds(len(corpus.passages), shard, n_shards)
        part = corpus.passages.iloc[lo:hi]
        with staged(folder) as staging:
            write_table(part, staging / index_dir.PASSAGES)
            texts = passage_texts(part, settings.passage_template)
            embed_s = embed_into(index, model, texts, settings, offset=lo)
            dense.write(index, staging / index_dir.DENSE)
            extra = corpus_extra(corpus, recipe, fingerprint)
            extra.update(
                shard={"index": shard, "of": n_shards, "rows": [lo, hi]},
                embedding=embedding_info(model, embedding, settings),
                timings={"embed_s": embed_s, "total_s": time.perf_counter() - started},
            )
            write_run(staging, "index-shard", inputs=corpus.files, extra=extra)
    return folder / MANIFEST


def _shard_count(out: Path) -> int:
    counts = index_dir.shard_counts(out)
    if not counts:
        raise IndexDirError(f"{out}: no shards to merge; build them with --shard i/n first")
    return counts[0]


def _shard_manifests(out: Path, n_shards: int) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for shard in range(n_shards):
        folder = index_dir.shard_dir(out, shard, n_shards)
        manifest = index_dir.read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            raise IndexDirError(
                f"{folder}: shard {shard}/{n_shards} is missing or unfinished; run "
                f"`sciqa index CORPUS --out {out} --shard {shard}/{n_shards}`"
            )
        found.append((folder, manifest))
    prints = {m["fingerprint"] for _, m in found}
    if len(prints) > 1:
        raise IndexDirError(
            f"{out}: shards were built from different corpora or settings; rebuild them "
            "all with the same corpus and config"
        )
    return found


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links (or across devices): copy
        shutil.copy2(src, dst)


def _carry_inputs(out: Path, staging: Path) -> None:
    """The merge's inputs, into the next OUT: hard links, so nothing is copied and the
    old OUT keeps its own until the swap."""
    hidden = shutil.ignore_patterns(".*")  # a shard being built, lock files
    shutil.copytree(
        out / index_dir.SHARDS,
        staging / index_dir.SHARDS,
        ignore=hidden,
        copy_function=_link_or_copy,
    )
    for name in (index_dir.TRAINED, index_dir.TRAINED_META):
        if (out / name).is_file():
            _link_or_copy(str(out / name), str(staging / name))


def _merge_dense(out: Path, staging: Path, shards: list[Path], first: dict[str, Any]) -> None:
    trained = out / index_dir.TRAINED
    if not trained.is_file():  # Flat and other untrained factories: start from empty
        empty = dense.new_index(first["embedding"]["dim"], first["settings"]["faiss_factory"])
        trained = staging / f".{index_dir.TRAINED}.empty"
        dense.write(empty, trained)
    dense.merge(
        trained,
        [f / index_dir.DENSE for f in shards],
        staging / index_dir.DENSE,
        final=out / index_dir.DENSE,
    )
    if trained.parent == staging:
        trained.unlink()


def merge_shards(out: Path, settings: RetrievalConfig, *, write_run: RunWriter) -> dict[str, Any]:
    """Merge ``out/shards/*`` into one complete index in ``out``."""
    out = index_dir.real_dir(out)
    with OutLock(out), contextlib.ExitStack() as shard_locks:
        started = time.perf_counter()
        index_dir.check_replaceable(out)
        n_shards = _shard_count(out)
        for shard in range(n_shards):
            shard_locks.enter_context(OutLock(index_dir.shard_dir(out, shard, n_shards)))
        shards = _shard_manifests(out, n_shards)
        first = shards[0][1]
        folders = [f for f, _ in shards]
        passages = pd.concat(
            [read_table(f / index_dir.PASSAGES) for f in folders], ignore_index=True
        )
        passages["chunk"] = passages["chunk"].astype("int64")
        if len(passages) != first["counts"]["passages"]:
            raise IndexDirError(
                f"{out}: shards hold {len(passages)} passages, the corpus has "
                f"{first['counts']['passages']}; rebuild the missing shards"
            )
        with staged(out) as staging:
            _carry_inputs(out, staging)
            write_table(passages, staging / index_dir.PASSAGES)
            _merge_dense(out, staging, folders, first)
            files = [index_dir.PASSAGES, index_dir.DENSE]
            if (staging / index_dir.IVF_DATA).exists():
                files.append(index_dir.IVF_DATA)
            timings = {"bm25_s": write_bm25(passages, staging, settings) if settings.bm25 else 0.0}
            if settings.bm25:
                files.append(index_dir.BM25)
            timings["merge_s"] = time.perf_counter() - started
            keys = ("format", "format_version", "fingerprint", "settings", "counts", "embedding")
            extra = {key: first[key] for key in keys}
            extra["settings"] = {**extra["settings"], "bm25": settings.bm25}
            ntotal = int(dense.read(staging / index_dir.DENSE, mmap=True).ntotal)
            extra.update(
                faiss={"factory": first["settings"]["faiss_factory"], "ntotal": ntotal},
                shards=len(shards),
                corpus_inputs=first.get("inputs", []),
                files=index_dir.file_sizes(staging, files),
                timings=timings,
            )
            write_run(staging, "index-merge", extra=extra)
        return index_dir.check_index(out)

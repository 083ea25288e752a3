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

from retrieval import dense, index_dir
from retrieval.build import (
    RunWriter,
    corpus_extra,
    embed_into,
    embedding_info,
    empty_index,
    fingerprint_of,
    ingested,
    open_corpus,
    staged,
    train_index,
    write_bm25,
)
from retrieval.embed import load_encoder
from retrieval.errors import IndexDirError, RetrievalInputError
from retrieval.ingest import (
    Ingested,
    PassageWriter,
    bm25_tokens,
    count_passages,
    ingest,
    passage_blocks,
    passages_of,
)
from sciqa.config import RetrievalConfig
from sciqa.io import write_json
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
    """Contiguous range of one shard; the shards cover every row exactly once."""
    return n_rows * shard // n_shards, n_rows * (shard + 1) // n_shards


def train_shared(
    corpus_path: str | Path, out: Path, settings: RetrievalConfig, *, embedding: str, seed: int
) -> Path:
    """Train the empty faiss index every shard adds into (``out/trained.faiss``)."""
    with OutLock(out):
        corpus = open_corpus(corpus_path, settings)
        model = load_encoder(embedding, settings.device)
        total = count_passages(corpus.sources, settings)

        def blocks() -> Any:
            return (passages for _, passages in passages_of(corpus.sources, settings))

        index = train_index(empty_index(model, settings), model, blocks, total, settings, seed)
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
    corpus_path: str | Path,
    out: Path,
    settings: RetrievalConfig,
    shard: int,
    n_shards: int,
    *,
    embedding: str,
    seed: int,
    write_run: RunWriter,
) -> Path:
    """Embed one shard of the corpus into ``out/shards/i-of-n/``.

    With at least ``n_shards`` sources (files, data files) the shard is a contiguous run of
    them and reads nothing else; with fewer, it is a contiguous range of the passages,
    found by chunking the whole corpus (``"by": "rows"``). Vector ids are the shard's own
    row numbers: the merge shifts them by the rows of the shards before.
    """
    if not settings.dense:
        raise RetrievalInputError(
            "--shard builds the dense index; BM25 alone needs no shards (drop --shard)"
        )
    folder = index_dir.shard_dir(out, shard, n_shards)
    with OutLock(folder):
        started = time.perf_counter()
        corpus = open_corpus(corpus_path, settings)
        recipe, fingerprint = fingerprint_of(corpus, settings, embedding, seed)
        sources, rows, where = corpus.sources, None, {}
        if len(sources) >= n_shards:
            lo, hi = shard_bounds(len(sources), shard, n_shards)
            sources, where = sources[lo:hi], {"by": "files", "range": [lo, hi]}
        else:
            rows = shard_bounds(count_passages(sources, settings), shard, n_shards)
            where = {"by": "rows", "range": list(rows)}
        with staged(folder) as staging:
            path = staging / index_dir.PASSAGES
            done = ingest(sources, path, settings, bm25=False, rows=rows)
            if where["by"] == "files":
                done = ingested(corpus, done, settings)
            model = load_encoder(embedding, settings.device)
            index = empty_index(model, settings)
            if dense.needs_training(index):
                index = _shared_trained(out, fingerprint, settings.faiss_factory)
            embed_s = embed_into(index, model, path, settings, done.passages)
            dense.write(index, staging / index_dir.DENSE)
            extra = corpus_extra(corpus, done, recipe, fingerprint)
            extra.update(
                shard={"index": shard, "of": n_shards, **where},
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
    for folder, manifest in found:
        if "by" not in manifest.get("shard", {}):  # numbered its vectors corpus-wide
            raise IndexDirError(
                f"{folder}: built by an older sciqa; rebuild every shard with this one"
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


def _merge_dense(
    out: Path, staging: Path, shards: list[Path], first: dict[str, Any], rows: list[int]
) -> None:
    trained = out / index_dir.TRAINED
    if not trained.is_file():  # Flat and other untrained factories: start from empty
        empty = dense.new_index(first["embedding"]["dim"], first["settings"]["faiss_factory"])
        trained = staging / f".{index_dir.TRAINED}.empty"
        dense.write(empty, trained)
    dense.merge(
        trained,
        [f / index_dir.DENSE for f in shards],
        staging / index_dir.DENSE,
        offsets=[sum(rows[:k]) for k in range(len(rows))],
        final=out / index_dir.DENSE,
    )
    if trained.parent == staging:
        trained.unlink()


def _merge_passages(folders: list[Path], staging: Path, settings: RetrievalConfig) -> Ingested:
    """The shards' passages, in shard order, into one ``passages.parquet`` (and BM25's
    token ids), a block at a time."""
    tokens = bm25_tokens(settings) if settings.bm25 else None
    path = staging / index_dir.PASSAGES
    with PassageWriter(path, settings.passage_template, tokens) as writer:
        for folder in folders:
            for block in passage_blocks(folder / index_dir.PASSAGES, settings.encode_block):
                writer.add(block)
    return Ingested(0, writer.rows, tokens)


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
        with staged(out) as staging:
            _carry_inputs(out, staging)
            done = _merge_passages(folders, staging, settings)
            rows = [m["counts"]["passages"] for _, m in shards]
            _merge_dense(out, staging, folders, first, rows)
            files = [index_dir.PASSAGES, index_dir.DENSE]
            if (staging / index_dir.IVF_DATA).exists():
                files.append(index_dir.IVF_DATA)
            timings = {"bm25_s": 0.0}
            if done.tokens is not None:
                timings["bm25_s"] = write_bm25(done.tokens, staging, settings)
                files.append(index_dir.BM25)
            timings["merge_s"] = time.perf_counter() - started
            keys = ("format", "format_version", "fingerprint", "settings", "embedding")
            extra = {key: first[key] for key in keys if key in first}
            by_files = first["shard"]["by"] == "files"  # else each shard read every article
            counts = [m["counts"]["articles"] for _, m in shards]
            extra["counts"] = {
                "articles": sum(counts) if by_files else counts[0],
                "passages": done.passages,
            }
            if "corpus" in first:
                extra["corpus"] = first["corpus"]
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

"""What ``sciqa index`` and ``sciqa retrieve`` run (the CLI only parses arguments)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from retrieval import build, index_dir, shards
from retrieval.context import build_context, queries, token_counter
from retrieval.corpus import default_corpus_path
from retrieval.errors import RetrievalInputError
from retrieval.search import BM25, DENSE, Retriever
from sciqa.assets.registry import resolve_corpus, resolve_model
from sciqa.config import DEFAULT, SciqaConfig
from sciqa.hf_datasets import HF
from sciqa.io import read_questions, table_format, write_questions, write_table
from sciqa.layouts import Layout
from sciqa.outdir import OutLock, check_out_dir, check_out_file
from sciqa.runs import MANIFEST, write_run_files
from sciqa.schema import CONTEXT, ID

AUDIT_SUFFIX = ".retrieval.parquet"


def corpus_path(corpus: str | Path | None, configured: str) -> str | Path:
    """CORPUS argument, else ``configured`` (``data.corpus``; ``default`` = the packaged
    sample); an ``hf:`` name is passed on as it is."""
    if corpus is not None:
        return corpus
    if configured == DEFAULT:
        return default_corpus_path()
    if configured.startswith(HF):
        return configured
    return resolve_corpus(configured)


def run_index(
    corpus: str | Path | None,
    out: Path,
    config: SciqaConfig,
    *,
    shard: str | None = None,
    train: bool = False,
    merge: bool = False,
    force: bool = False,
) -> str:
    """Build (or train / shard / merge) an index; returns a one-line summary."""
    check_out_dir(out)
    if sum([shard is not None, train, merge]) > 1:
        raise RetrievalInputError("use only one of --shard, --train and --merge")
    settings, write_run = config.retrieval, functools.partial(write_run_files, config=config)
    if merge:
        manifest = shards.merge_shards(out, settings, write_run=write_run)
        return f"{out}: merged {manifest['shards']} shards, {_counts(manifest)}"
    path = corpus_path(corpus, config.data.corpus)
    embedding, seed = config.models.embedding, config.seed
    if train:
        trained = shards.train_shared(path, out, settings, embedding=embedding, seed=seed)
        return f"{trained}: trained; now build the shards"
    if shard is not None:
        i, n = shards.parse_shard(shard)
        shards.build_shard(
            path, out, settings, i, n, embedding=embedding, seed=seed, write_run=write_run
        )
        return f"{index_dir.shard_dir(out, i, n)}: shard {i}/{n} done"
    manifest = build.build_index(
        path, out, settings, embedding=embedding, seed=seed, write_run=write_run, force=force
    )
    if manifest.get("skipped"):
        return f"{out}: up to date ({_counts(manifest)}); --force rebuilds it"
    seconds = manifest["timings"]["total_s"]
    return f"{out}: {_counts(manifest)} in {seconds:.1f}s"


def _counts(manifest: dict[str, Any]) -> str:
    counts = manifest["counts"]
    parts = [f"{counts['passages']} passages from {counts['articles']} articles"]
    if "faiss" in manifest:
        parts.append(f"faiss {manifest['faiss']['factory']}")
    if index_dir.BM25 in manifest.get("files", {}):
        parts.append("BM25")
    return ", ".join(parts)


def _measure(unit: str, backbone: str) -> Callable[[str], int]:
    """How ``retrieval.context_budget`` is counted: characters, or ``backbone``'s tokens."""
    if unit == "chars":
        return len
    from transformers import AutoTokenizer

    source = resolve_model(backbone, "backbone")
    tokenizer = AutoTokenizer.from_pretrained(
        source.name_or_path, **source.from_pretrained_kwargs()
    )
    return token_counter(tokenizer)


def audit_path(out: Path) -> Path:
    """``OUT``'s sibling ``<stem>.retrieval.parquet``."""
    return out.with_name(f"{out.stem}{AUDIT_SUFFIX}")


def audit_table(ids: list[str], hits: list[list[Any]], retriever: Retriever) -> pd.DataFrame:
    passage_ids = retriever.passages["passage_id"].to_numpy()
    rows = [
        {
            ID: qid,
            "rank": rank,
            "passage_id": passage_ids[hit.row],
            "dense_score": hit.scores.get(DENSE, float("nan")),
            "bm25_score": hit.scores.get(BM25, float("nan")),
            "fused_score": hit.fused,
            "rerank_score": hit.scores.get("rerank", float("nan")),
        }
        for qid, question_hits in zip(ids, hits, strict=True)
        for rank, hit in enumerate(question_hits, start=1)
    ]
    return pd.DataFrame(rows)


def attach_context(
    frame: pd.DataFrame, retriever: Retriever, k: int, *, backbone: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` with ``context`` set from the top ``k`` passages, and the audit table.

    With ``retrieval.context_unit = tokens`` the budget counts ``backbone``'s tokens
    (``models.backbone``, the model that will read the context)."""
    settings = retriever.settings
    hits = retriever.search(queries(frame, settings.query_template), top=k)
    texts = retriever.texts([[hit.row for hit in question] for question in hits])
    measure = _measure(settings.context_unit, backbone)
    budget = settings.context_budget
    frame = frame.copy()
    frame[CONTEXT] = [build_context(t, budget, measure) for t in texts]
    return frame, audit_table(frame[ID].tolist(), hits, retriever)


def run_retrieve(questions: Path, index: Path, out: Path, config: SciqaConfig) -> str:
    """``sciqa retrieve``: write OUT (questions + context) and its audit parquet."""
    table_format(check_out_file(out))  # a bad --out fails before the index is loaded
    with OutLock(out):
        return _retrieve(questions, index, out, config)


def _retrieve(questions: Path, index: Path, out: Path, config: SciqaConfig) -> str:
    started = time.perf_counter()
    k = config.retrieval.k  # >= 1: the config checks it
    frame = read_questions(questions, layout=Layout.of(config))
    retriever = Retriever.open(
        index, config.retrieval, embedding=config.models.embedding, reranker=config.models.reranker
    )
    if k > len(retriever.passages):
        raise RetrievalInputError(
            f"--k {k}: the index {index} holds only {len(retriever.passages)} passages"
        )
    frame, audit = attach_context(frame, retriever, k, backbone=config.models.backbone)
    write_questions(frame, out)
    write_table(audit, audit_path(out))
    seconds = time.perf_counter() - started
    empty = int((frame[CONTEXT] == "").sum())
    write_run_files(
        config.runs_dir / "retrieval" / out.stem,
        "retrieve",
        config,
        inputs=[questions, index / MANIFEST],
        extra={
            "outputs": [str(out), str(audit_path(out))],
            "index": str(index),
            "counts": {"questions": len(frame), "k": k, "empty_contexts": empty},
            "timings": {
                "total_s": seconds,
                "questions_per_s": len(frame) / seconds,
                **retriever.timings,
            },
        },
    )
    return f"{out}: context for {len(frame)} questions (k={k}) in {seconds:.1f}s"

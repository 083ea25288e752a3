"""Retrieval benchmark: build speed, query speed, 1M-vector scale, and MAP@3 effect.

Prints markdown tables (copied into docs/retrieval.md). Run it as a module from the
repository root (``python benchmarks/retrieval.py`` would put ``benchmarks/`` first on
``sys.path``, where this file hides the ``retrieval`` package). Needs a built index:

    sciqa index --out runs/demo/index
    python -m benchmarks.retrieval --index runs/demo/index [--scale-n 1000000]

Parts:
  build    passages/s of MiniLM on a random sample of the corpus's passages, encoded
           length-sorted (sentence-transformers' encode on the whole list) vs naive
           dataset order (one encode call per batch), plus the index's recorded build time;
  queries  questions/s of dense, BM25 and hybrid retrieval for >= 2,000 queries
           (ARC-Challenge + ARC-Easy + OpenBookQA questions, repeated to reach the count);
  scale    a 1M-vector set made from the index's real MiniLM passage vectors (each new
           vector = a real passage vector + U(0, 0.5) x a second one + Gaussian noise of
           norm ~0.6, renormalised: a dense cloud clustered around real topics); real ARC/OBQA query
           vectors; exact Flat vs IVF-PQ factories: bytes/vector, build s, q/s, and recall against
           exact search two ways: R@10 (share of queries whose true nearest neighbour is
           in the top 10, the faiss wiki's measure) and 10-recall@10 (top-10 overlap);
  quality  MAP@3 of the fixed zero-shot scorer (sciqa.scoring.zero_shot.option_scores, MiniLM)
           on ARC-Challenge and OpenBookQA with no / dense / BM25 / hybrid context,
           plus (part "probe") a second probe that scores options against the context.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retrieval import dense
from retrieval.context import build_context, queries
from retrieval.embed import encode
from retrieval.search import Retriever
from sciqa.assets.question_sets import benchmark_questions
from sciqa.config import load_config
from sciqa.metrics import map_at_3, top3_letters
from sciqa.schema import option_letters
from sciqa.scoring.zero_shot import option_scores

SETS = ("arc-challenge", "arc-easy", "openbookqa")
MODES = {
    "dense": ["retrieval.bm25=false"],
    "bm25": ["retrieval.dense=false"],
    "hybrid": [],
}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict], title: str) -> str:
    """Markdown table (no tabulate dependency); columns = union of the rows' keys."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return f"\n### {title}\n\n" + "\n".join(lines) + "\n"


def bench_build(index: Path, model, n: int, batch_size: int, seed: int) -> str:
    passages = pd.read_parquet(index / "passages.parquet")
    sample = passages.sample(n=min(n, len(passages)), random_state=seed)
    texts = (sample["title"] + "\n" + sample["text"]).tolist()
    encode(model, texts[:batch_size], batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    sorted_vecs = encode(model, texts, batch_size=batch_size)
    sorted_s = time.perf_counter() - started
    started = time.perf_counter()
    naive = np.concatenate(
        [
            encode(model, texts[i : i + batch_size], batch_size=batch_size)
            for i in range(0, len(texts), batch_size)
        ]
    )
    naive_s = time.perf_counter() - started
    assert np.allclose(sorted_vecs, naive, atol=1e-4)  # same vectors, only the order differs
    manifest = pd.read_json(index / "manifest.json", typ="series")
    timings = manifest["timings"]
    rows = [
        {
            "what": f"naive dataset order ({len(texts)} passages)",
            "passages/s": len(texts) / naive_s,
        },
        {"what": f"length-sorted ({len(texts)} passages)", "passages/s": len(texts) / sorted_s},
        {"what": "ratio sorted / naive", "passages/s": naive_s / sorted_s},
        {
            "what": f"default corpus build: {manifest['counts']['passages']} passages, "
            f"total {timings['total_s']:.0f} s (embed {timings['embed_s']:.0f} s, "
            f"BM25 {timings['bm25_s']:.1f} s)",
            "passages/s": timings["passages_per_s"],
        },
    ]
    return table(rows, "Build (MiniLM-L6, batch 64)")


def load_sets(limit: int) -> dict[str, pd.DataFrame]:
    sets = {name: benchmark_questions(name)[0] for name in SETS}
    return {name: frame.head(limit) if limit else frame for name, frame in sets.items()}


def bench_queries(index: Path, sets: dict[str, pd.DataFrame], n_queries: int, k: int):
    """q/s per mode; also returns each mode's hits for the real questions."""
    frames = list(sets.values())
    real = [q for f in frames for q in queries(f, load_config().retrieval.query_template)]
    repeated = (real * (n_queries // len(real) + 1))[: max(n_queries, len(real))]
    rows, hits_by_mode, retrievers = [], {}, {}
    for mode, overrides in MODES.items():
        config = load_config(None, overrides)
        retriever = Retriever.open(index, config.retrieval, embedding=config.models.embedding)
        retriever.search(repeated[:32], top=k)  # warm-up (model, mmap pages)
        retriever.timings.clear()
        started = time.perf_counter()
        hits = retriever.search(repeated, top=k)
        seconds = time.perf_counter() - started
        row = {"mode": mode, "queries": len(repeated), "seconds": seconds}
        row["queries/s"] = len(repeated) / seconds
        row.update({f"{key}": value for key, value in retriever.timings.items()})
        rows.append(row)
        hits_by_mode[mode] = hits[: len(real)]
        retrievers[mode] = retriever
    return table(rows, f"Queries over the default corpus (k={k})"), hits_by_mode, retrievers


def synthetic_vectors(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around real ones: base[i] + u * base[j] + noise, renormalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        first = base[rng.integers(0, len(base), m)]
        second = base[rng.integers(0, len(base), m)]
        mix = rng.uniform(0.0, 0.5, (m, 1)).astype(np.float32)
        noise = rng.standard_normal((m, base.shape[1]), dtype=np.float32)
        noise *= 0.6 / np.sqrt(base.shape[1])  # noise norm ~0.6 of a unit vector
        block = first + mix * second + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)


def bench_scale(
    index: Path,
    query_vecs: np.ndarray,
    n: int,
    factories: list[str],
    nprobes: list[int],
    seed: int,
    train_sample: int,
) -> str:
    import faiss

    flat = dense.read(index / "dense.faiss", mmap=False)
    base = flat.reconstruct_n(0, flat.ntotal)
    started = time.perf_counter()
    vectors = synthetic_vectors(base, n, seed)
    print(f"scale: {n} vectors made in {time.perf_counter() - started:.1f}s", flush=True)
    k = 10
    rows, truth = [], None
    for factory in ["Flat", *factories]:
        started = time.perf_counter()
        idx = dense.new_index(vectors.shape[1], factory)
        if not idx.is_trained:
            rows_ = dense.sample_rows(n, train_sample, seed)
            idx.train(vectors[rows_])
        for start in range(0, n, 200_000):
            dense.add(idx, vectors[start : start + 200_000], start)
        build_s = time.perf_counter() - started
        size = index_bytes(idx) / n
        print(f"scale: {factory} built in {build_s:.1f}s, {size:.1f} B/vector", flush=True)
        for nprobe in nprobes if factory != "Flat" else [0]:
            if nprobe:
                dense.set_search_params(idx, nprobe, 128)
            idx.search(query_vecs[:20], k)  # warm-up
            started = time.perf_counter()
            _, found = idx.search(query_vecs, k)
            seconds = time.perf_counter() - started
            if truth is None:
                truth = found
            overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)])
            first_nn = np.mean([t[0] in f for f, t in zip(found, truth, strict=True)])
            rows.append(
                {
                    "factory": factory,
                    "nprobe": nprobe or "-",
                    "bytes/vector": size,
                    "build s": build_s,
                    "queries/s": len(query_vecs) / seconds,
                    "R@10 (1-NN in top 10)": first_nn,
                    "10-recall@10 (overlap)": overlap,
                }
            )
        del idx
    threads = faiss.omp_get_max_threads()
    title = f"Scale: {n:,} vectors, 384-d, {len(query_vecs)} real queries, {threads} threads"
    return table(rows, title)


def context_probe(model, frame: pd.DataFrame) -> np.ndarray:
    """Second probe: cosine of each "question + option" with the retrieved context.

    Unlike the zero-shot scorer it cannot fall back on the question alone, so it shows
    whether the context holds what separates the options.
    """
    letters = option_letters(frame.columns)
    options = frame[letters].astype(str).to_numpy()
    pairs = [f"{p} {o}" for p, row in zip(frame["prompt"], options, strict=True) for o in row]
    pair_vecs = encode(model, pairs, batch_size=64).reshape(len(frame), len(letters), -1)
    ctx_vecs = encode(model, frame["context"].tolist(), batch_size=64)
    return np.einsum("nd,nod->no", ctx_vecs, pair_vecs)


def bench_quality(sets, hits_by_mode, retrievers, model, k: int, probe_too: bool) -> str:
    config = load_config()
    offsets, start = {}, 0
    for name, frame in sets.items():
        offsets[name] = (start, start + len(frame))
        start += len(frame)
    rows = []
    for name in ("arc-challenge", "openbookqa"):
        frame = sets[name]
        lo, hi = offsets[name]
        row = {"set": f"{name} ({len(frame)})", "probe": "zero-shot"}
        probe = {"set": row["set"], "probe": "context vs question+option", "no context": "-"}
        scores = option_scores(model, frame)
        row["no context"] = map_at_3(frame["answer"].tolist(), top3_letters(scores))
        for mode, hits in hits_by_mode.items():
            texts = retrievers[mode].texts([[h.row for h in q] for q in hits[lo:hi]])
            with_ctx = frame.copy()
            with_ctx["context"] = [
                build_context(t, config.retrieval.context_budget, len) for t in texts
            ]
            scores = option_scores(model, with_ctx, use_context=True)
            row[mode] = map_at_3(frame["answer"].tolist(), top3_letters(scores))
            if probe_too:
                scores = context_probe(model, with_ctx)
                probe[mode] = map_at_3(frame["answer"].tolist(), top3_letters(scores))
        rows.append(row)
        if probe_too:
            rows.append(probe)
    return table(rows, f"Quality: zero-shot MiniLM MAP@3 with k={k} passages of context")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Path("runs/demo/index"))
    parser.add_argument("--build-sample", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--scale-n", type=int, default=1_000_000)
    parser.add_argument("--factories", default="IVF1024,PQ96;IVF1024,PQ96x4fs;IVF1024,PQ192x4fs")
    parser.add_argument("--nprobe", default="16,64")
    parser.add_argument("--train-sample", type=int, default=50_000, help="IVF/PQ training")
    parser.add_argument("--parts", default="build,queries,scale,quality,probe")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=0, help="questions per set (0 = all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    config = load_config()
    print(
        f"# Retrieval benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPU cores)",
        flush=True,
    )

    retriever = Retriever.open(args.index, config.retrieval, embedding=config.models.embedding)
    model = retriever.encoder
    k = config.retrieval.k
    if "build" in parts:
        print(bench_build(args.index, model, args.build_sample, 64, args.seed), flush=True)
    sets = load_sets(args.limit)
    if parts & {"queries", "quality"}:
        report, hits, retrievers = bench_queries(args.index, sets, args.queries, k)
        print(report, flush=True)
    if "scale" in parts:
        real = [q for f in sets.values() for q in queries(f, config.retrieval.query_template)]
        query_vecs = encode(model, real[:1000], batch_size=64)
        factories = [f for f in args.factories.split(";") if f]
        nprobes = [int(x) for x in args.nprobe.split(",")]
        print(
            bench_scale(
                args.index,
                query_vecs,
                args.scale_n,
                factories,
                nprobes,
                args.seed,
                args.train_sample,
            ),
            flush=True,
        )
    if "quality" in parts:
        probe = "probe" in parts
        print(bench_quality(sets, hits, retrievers, model, k, probe), flush=True)


if __name__ == "__main__":
    main()

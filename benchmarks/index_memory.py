"""Peak memory of ``sciqa index`` against corpus size: does it grow with the text?

Builds corpora in the Hugging Face Wikipedia dump layout (``id, url, title, text``
parquet shards of 10,000 articles) from the packaged articles, repeated with new ids, and
runs ``python -m sciqa index DUMP --out OUT`` on each in a subprocess, reading its peak
RSS from ``os.wait4``. Prints a markdown table (copied into docs/retrieval.md).

Run it as a module from the repository root::

    python -m benchmarks.index_memory --sizes 10000 100000 [--baseline DIR] [--dense]

``--baseline DIR``: a checkout of another sciqa (e.g. ``git archive`` of the commit before
streamed corpora) run on the same corpora, for a ratio measured in the same run.
Default settings except ``retrieval.dense=false`` (BM25 + reading + chunking: the part
that holds text); ``--dense`` adds a dense build at the smallest size (MiniLM on CPU is
about 10 passages/s: 10,000 articles take ~20 min).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from sciqa.assets.registry import packaged_wikipedia

FILE_ARTICLES = 10_000
REPO = Path(__file__).resolve().parent.parent


def write_dump(folder: Path, n: int) -> int:
    """``n`` articles in parquet shards of FILE_ARTICLES; returns the text bytes."""
    base = packaged_wikipedia()
    folder.mkdir(parents=True, exist_ok=True)
    text_bytes = 0
    for k, start in enumerate(range(0, n, FILE_ARTICLES)):
        rows = range(start, min(start + FILE_ARTICLES, n))
        picked = base.iloc[[i % len(base) for i in rows]]
        repeat = [i // len(base) for i in rows]
        frame = pd.DataFrame(
            {
                "id": [str(i) for i in rows],
                "url": [f"https://en.wikipedia.org/wiki?curid={i}" for i in rows],
                # a new title per copy: the same (title, text) in one file would be dropped
                "title": [
                    f"{t} ({r})" if r else t for t, r in zip(picked["title"], repeat, strict=True)
                ],
                "text": picked["text"].tolist(),
            }
        )
        text_bytes += int(frame["text"].str.len().sum())
        frame.to_parquet(folder / f"train-{k:05d}-of-{-(-n // FILE_ARTICLES):05d}.parquet")
    return text_bytes


def peak_rss(code: Path, corpus: Path, out: Path, sets: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one ``sciqa index`` run of the sciqa at ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-m", "sciqa", "index", str(corpus), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=code, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # ru_maxrss is KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--baseline", type=Path, help="another sciqa checkout to compare")
    parser.add_argument("--dense", action="store_true", help="also dense at the smallest size")
    parser.add_argument("--work", type=Path, help="where corpora and indexes go (default: tmp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="index-memory-"))
    codes = {"streamed (this)": REPO} | ({"baseline": args.baseline} if args.baseline else {})
    runs = [(n, ["retrieval.dense=false"]) for n in args.sizes]
    if args.dense:
        runs.append((min(args.sizes), []))
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    print("| articles | text MB | mode | sciqa | peak RSS MiB | s |")
    print("|---|---|---|---|---|---|")
    for n, sets in runs:
        corpus = work / f"dump-{n}"
        text_bytes = write_dump(corpus, n) if not corpus.exists() else 0
        text_mb = text_bytes / 1e6 if text_bytes else float("nan")
        mode = "BM25 only" if sets else "dense + BM25"
        for name, code in codes.items():
            out = work / f"index-{n}-{name.split()[0]}-{'bm25' if sets else 'hybrid'}"
            rss, seconds = peak_rss(code, corpus, out, sets)
            print(f"| {n:,} | {text_mb:.1f} | {mode} | {name} | {rss:,.0f} | {seconds:.0f} |")
            sys.stdout.flush()
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()

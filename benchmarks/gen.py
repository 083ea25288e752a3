"""Benchmark ``sciqa gen``; prints markdown tables (copied into docs/data_gen.md).

1. Throughput against the fake OpenAI-compatible server with a fixed 200 ms latency:
   questions/minute at concurrency 1 vs 16 (target >= 12x).
2. Kill-and-resume: ``sciqa gen`` in a subprocess is SIGKILLed mid-run and rerun; how many
   requests whose replies were already cached were sent again (target 0).
3. Replies rejected by reason with the packaged SmolLM2-135M through the embedded
   ``transformers serve`` (``--smol-passages``, 0 skips it: a few minutes per 10 passages
   on 2 shared cores).

    .venv/bin/python benchmarks/gen.py --smol-passages 12
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from data_gen.cache import request_key
from data_gen.commands import run_gen
from data_gen.fake_server import FakeLLM, write_fake_passages
from sciqa.assets import packaged_wikipedia
from sciqa.config import load_config

NO_FILTERS = [
    "gen.dedup=false",
    "gen.answerability_filter=false",
    "gen.too_easy_filter=false",
    "gen.science_filter=off",
]


def wiki_passages(path: Path) -> Path:
    """The packaged Wikipedia sample as passages (id = hash of the title)."""
    frame = packaged_wikipedia()
    frame["passage_id"] = [hashlib.sha1(t.encode()).hexdigest()[:12] for t in frame["title"]]
    frame[["passage_id", "title", "text"]].to_parquet(path)
    return path


def throughput(work: Path, n: int) -> list[str]:
    passages = write_fake_passages(work / "fake.parquet", n)
    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    import openai  # noqa: F401  (imported once here, not inside the first timed run)

    # The fake server runs in its own process, as a real endpoint would: in this process
    # it would compete with the client for the GIL.
    server = subprocess.Popen(
        [sys.executable, "-m", "data_gen.fake_server", "--latency", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    base_url = server.stdout.readline().strip()
    rates, totals = {}, {}
    for concurrency in (1, 16):
        endpoint = [f"llm.base_url={base_url}", "llm.model=fake"]
        config = load_config(None, [*endpoint, f"llm.concurrency={concurrency}", *NO_FILTERS])
        start = time.perf_counter()
        counts = run_gen(passages, work / f"c{concurrency}" / "q.parquet", config, n=n)
        seconds = time.perf_counter() - start
        kept = counts["postprocess"]["kept"]
        rates[concurrency] = kept / counts["seconds"]["generate"] * 60
        totals[concurrency] = kept / seconds * 60
    server.terminate()
    server.wait()
    return [
        "| concurrency | questions | questions/minute (requests) | (whole command) |",
        "|---:|---:|---:|---:|",
        f"| 1 | {n} | {rates[1]:.0f} | {totals[1]:.0f} |",
        f"| 16 | {n} | {rates[16]:.0f} | {totals[16]:.0f} |",
        f"| **ratio 16 vs 1** | | **{rates[16] / rates[1]:.1f}x** | "
        f"{totals[16] / totals[1]:.1f}x |",
    ]


def kill_and_resume(work: Path, n: int) -> list[str]:
    passages = write_fake_passages(work / "resume.parquet", n)
    out = work / "resume" / "q.parquet"
    env = {**os.environ, "OPENAI_API_KEY": "benchmark"}
    with FakeLLM(latency=0.2) as fake:
        sets = [f"--set={s}" for s in [*NO_FILTERS, f"llm.base_url={fake.base_url}"]]
        command = [
            *(sys.executable, "-m", "sciqa", "gen", str(passages), "--out", str(out)),
            *("--n", str(n), "--set=llm.model=fake", "--set=llm.concurrency=4", *sets),
        ]
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        while sum(fake.answered.values()) < n // 2:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with sqlite3.connect(out.with_name("q.cache.sqlite")) as db:
            cached = {key for (key,) in db.execute("SELECT key FROM replies")}
        before = len(fake.requests)
        subprocess.run(command, env=env, check=True, capture_output=True)
        second = {request_key(b) for b in fake.requests[before:]}
    kept = len(pd.read_parquet(out))
    return [
        "| answered before kill | cached before kill | sent on rerun | repeated (cached) | "
        "questions written |",
        "|---:|---:|---:|---:|---:|",
        f"| {sum(fake.answered.values()) - len(second)} | {len(cached)} | {len(second)} | "
        f"**{len(second & cached)}** | {kept} (of {n}) |",
    ]


def smollm(work: Path, n: int, max_tokens: int) -> list[str]:
    passages = wiki_passages(work / "wiki.parquet")
    config = load_config(
        None,
        [f"gen.max_tokens={max_tokens}", "gen.reask_budget=0"],
    )
    start = time.perf_counter()
    counts = run_gen(passages, work / "smol" / "q.parquet", config, n=n)
    seconds = time.perf_counter() - start
    replies, post = counts["replies"], counts["postprocess"]
    total = max(replies["replies"], 1)
    lines = [
        f"SmolLM2-135M-Instruct via transformers serve, {n} passages, max_tokens {max_tokens}, "
        f"no re-asks, {seconds:.0f} s including server start",
        "",
        "| outcome | replies | share |",
        "|---|---:|---:|",
        f"| valid | {replies['valid']} | {replies['valid'] / total:.0%} |",
    ]
    for reason, count in replies["rejected_by_reason"].items():
        lines.append(f"| rejected: {reason} | {count} | {count / total:.0%} |")
    for reason, count in post["dropped_by_reason"].items():
        lines.append(f"| valid, then dropped: {reason} | {count} | {count / total:.0%} |")
    lines.append(f"| **kept** | **{post['kept']}** | {post['kept'] / total:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=128, help="per throughput run")
    parser.add_argument("--resume-questions", type=int, default=24)
    parser.add_argument("--smol-passages", type=int, default=12, help="0 skips SmolLM2")
    parser.add_argument("--smol-max-tokens", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("## Throughput (fake server, 200 ms latency)\n")
        print("\n".join(throughput(work, args.questions)) + "\n")
        print("## Kill and resume\n")
        print("\n".join(kill_and_resume(work, args.resume_questions)) + "\n")
        if args.smol_passages:
            print("## SmolLM2 replies by outcome\n")
            print("\n".join(smollm(work, args.smol_passages, args.smol_max_tokens)))


if __name__ == "__main__":
    main()

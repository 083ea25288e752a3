"""Soak ``sciqa gen`` and ``sciqa infer`` under SIGKILL; prints markdown tables (README,
Reliability).

1. gen against the scripted fake server (``data_gen.fake_server``: 10% of requests answered
   HTTP 429, 5% of request bodies a malformed reply), SIGKILLed a random 1-4 s (seeded)
   after each attempt's first request, ``--kills`` times, then rerun to the end. Compared
   with an uninterrupted run: the kept questions and the rejects, byte for byte; and every
   request an attempt sent is checked against the reply cache as it stood when that attempt
   started: one whose reply was already stored is a repeated paid request (target 0).
   Replies in flight at a kill (answered by the server, never stored) are counted apart:
   they are paid twice, at most ``llm.concurrency`` per kill, and no client can avoid it.
2. infer over tiny random encoders (one member per model dir), SIGKILLed as soon as an
   attempt has finished a member (its logits appear on disk; plus 0-50 ms, seeded),
   ``--kills`` times, then rerun to the end; ``submission.csv`` and every member's logits
   compared with an uninterrupted run's, and every member pass whose logits an attempt
   found in infer's cache but scored again is counted (target 0).

Sized for 2 CPU cores: a few minutes at the defaults.

    .venv/bin/python -m benchmarks.faults --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen.cache import request_key
from data_gen.fake_server import FakeLLM, write_fake_passages

ROOT = Path(__file__).resolve().parents[1]
GEN_SETTINGS = [
    "llm.model=fake",
    "llm.concurrency=4",
    "llm.sdk_retries=0",  # 429s go to our own backoff, kept short here
    "llm.backoff_base=0.05",
    "llm.backoff_retries=8",
    "gen.dedup=false",
    "gen.answerability_filter=false",
    "gen.too_easy_filter=false",
]
CONCURRENCY = 4
LATENCY = 0.5  # seconds per reply: the soak's requests take long enough to be killed
KILL_AFTER = (1.0, 4.0)  # seconds after an attempt's first request


@dataclass
class Soak:
    """One command's soak: what was done to it and how its result compares."""

    command: str
    kills: int
    reruns: int
    repeated: int | None  # work paid again although its result was stored
    in_flight: int | None  # replies paid twice: answered while the client was being killed
    identical: bool
    seconds: float
    reference_seconds: float
    detail: str


def _env() -> dict[str, str]:
    """The subprocesses import this checkout's sciqa, offline, with a key for the fake."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OPENAI_API_KEY": "soak",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _sciqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "sciqa", *args]


def _wait_for(process: subprocess.Popen, condition: Callable[[], bool]) -> bool:
    """True once ``condition`` holds; False if the process ended first."""
    while not condition():
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    return True


def _kill(process: subprocess.Popen) -> bool:
    """SIGKILL it; False if it had already finished."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


# --- gen ------------------------------------------------------------------------------------


def _stored(cache: Path) -> set[str]:
    if not cache.exists():
        return set()
    with contextlib.closing(sqlite3.connect(cache)) as db:
        return {key for (key,) in db.execute("SELECT key FROM replies")}


def _gen_command(passages: Path, out: Path, fake: FakeLLM, n: int) -> list[str]:
    sets = [f"--set={s}" for s in (*GEN_SETTINGS, f"llm.base_url={fake.base_url}")]
    return _sciqa("gen", str(passages), "--out", str(out), "--n", str(n), *sets)


def _gen_outputs(out: Path) -> tuple[bytes, bytes]:
    return out.read_bytes(), out.with_name(f"{out.stem}.rejected.jsonl").read_bytes()


def gen_soak(work: Path, kills: int, seed: int) -> Soak:
    """``sciqa gen`` killed ``kills`` times mid-requests, then run to the end."""
    # Enough work that no attempt finishes before its kill: an attempt sends at most
    # CONCURRENCY / LATENCY requests a second for at most KILL_AFTER[1] seconds.
    n = math.ceil(kills * KILL_AFTER[1] * CONCURRENCY / LATENCY) + 8
    work.mkdir(parents=True, exist_ok=True)
    passages = write_fake_passages(work / "passages.parquet", n)
    chaos = {"rate_429": 0.10, "rate_malformed": 0.05, "seed": seed}
    env, draw = _env(), random.Random(seed)

    started = time.perf_counter()
    reference = work / "reference" / "q.csv"
    with FakeLLM(**chaos) as fake:
        subprocess.run(_gen_command(passages, reference, fake, n), env=env, check=True,
                       capture_output=True)  # fmt: skip
    reference_seconds = time.perf_counter() - started

    out = work / "soak" / "q.csv"
    cache = out.with_name("q.cache.sqlite")
    done_kills = attempts = repeated = 0
    started = time.perf_counter()
    with FakeLLM(latency=LATENCY, **chaos) as fake:
        while True:
            attempts += 1
            stored, sent_before = _stored(cache), len(fake.requests)
            process = subprocess.Popen(
                _gen_command(passages, out, fake, n),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            asked = functools.partial(lambda before: len(fake.requests) > before, sent_before)
            if done_kills < kills and _wait_for(process, asked):
                time.sleep(draw.uniform(*KILL_AFTER))
                done_kills += _kill(process)
            _, stderr = process.communicate()
            sent = fake.requests[sent_before:]
            repeated += sum(request_key(body) in stored for body in sent)
            if process.returncode == 0:
                break
            if process.returncode != -signal.SIGKILL:
                raise RuntimeError(f"sciqa gen failed:\n{stderr.decode()[-2000:]}")
        paid_twice = sum(count - 1 for count in fake.answered.values())
    seconds = time.perf_counter() - started
    identical = _gen_outputs(out) == _gen_outputs(reference)
    return Soak(
        "gen",
        done_kills,
        attempts - 1,
        repeated,
        paid_twice,
        identical,
        seconds,
        reference_seconds,
        f"{n} passages, {len(fake.requests)} requests sent "
        f"({sum(fake.answered.values())} answered, the rest 429), concurrency {CONCURRENCY}, "
        f"{LATENCY:.1f} s per reply",
    )


# --- infer -----------------------------------------------------------------------------------

WORDS = ["the", "a", "of", "energy", "cell", "atom", "light", "force", "water", "heat"]


def tiny_member(folder: Path, seed: int) -> Path:
    """A random 1-layer BertForMultipleChoice saved like a sciqa train fold."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join([*specials, *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(specials) + len(WORDS), hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
    )  # fmt: skip
    transformers.BertForMultipleChoice(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    meta = {"format": "sciqa-mc/1", "max_length": 64, "use_context": True, "n_options": 5,
            "letters": list("ABCDE"), "fold": 0, "backbone": "tiny-bert"}  # fmt: skip
    (folder / "sciqa_model.json").write_text(json.dumps(meta))
    return folder


def _questions(path: Path, n: int, seed: int) -> Path:
    import pandas as pd

    rng = np.random.default_rng(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS, size=words))

    rows = [{"id": f"q{i}", "prompt": text(8), **{c: text(3) for c in "ABCDE"},
             "answer": "ABCDE"[i % 5], "context": text(20)} for i in range(n)]  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _infer_outputs(out: Path) -> dict[str, np.ndarray | bytes]:
    found: dict[str, np.ndarray | bytes] = {"submission.csv": (out / "submission.csv").read_bytes()}
    for path in sorted((out / "logits").glob("*.npy")):
        found[path.name] = np.load(path)
    return found


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, bytes):
            if value != b[key]:
                return False
        elif not np.array_equal(value, b[key], equal_nan=True):
            return False
    return True


def _npy_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.npy")} if folder.exists() else set()


def _cached_passes(folder: Path) -> dict[Path, tuple[int, int]]:
    """infer's per-pass logits cache (``cache/<member>-<key>.npy``): path -> identity."""
    found = {}
    for path in _npy_files(folder):
        if path.parent.name == "cache":
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found[path] = (stat.st_ino, stat.st_mtime_ns)
    return found


def infer_soak(work: Path, kills: int, seed: int) -> Soak:
    """``sciqa infer`` killed ``kills`` times between members, then run to the end."""
    members = [tiny_member(work / "models" / f"m{i:02d}", seed * 100 + i) for i in range(kills + 2)]
    questions = _questions(work / "questions.csv", 60, seed)
    env, draw = _env(), random.Random(seed)

    def command(out: Path) -> list[str]:
        return _sciqa("infer", str(questions), *map(str, members), "--out", str(out))

    started = time.perf_counter()
    reference = work / "infer_reference" / "out"
    subprocess.run(command(reference), env=env, check=True, capture_output=True)
    reference_seconds = time.perf_counter() - started

    out = work / "infer_soak" / "out"
    out.parent.mkdir(parents=True)
    seen: set[Path] = set()  # every logits file any attempt has written, wherever it was
    done_kills = attempts = 0
    started = time.perf_counter()
    rescored = 0
    while True:
        attempts += 1
        cached = _cached_passes(out.parent)
        process = subprocess.Popen(
            command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # A member is finished once a logits file no attempt wrote before appears.
        finished = functools.partial(lambda old: bool(_npy_files(out.parent) - old), set(seen))
        if done_kills < kills and _wait_for(process, finished):
            time.sleep(draw.uniform(0, 0.05))
            done_kills += _kill(process)
        _, stderr = process.communicate()
        seen |= _npy_files(out.parent)
        now = _cached_passes(out.parent)
        rescored += sum(now.get(path, ident) != ident for path, ident in cached.items())
        if process.returncode == 0:
            break
        if process.returncode != -signal.SIGKILL:
            raise RuntimeError(f"sciqa infer failed:\n{stderr.decode()[-2000:]}")
    seconds = time.perf_counter() - started
    identical = _same(_infer_outputs(out), _infer_outputs(reference))
    detail = (
        f"{len(members)} tiny members, 60 questions; repeated = member passes whose cached "
        "logits an attempt found and scored again"
    )
    return Soak("infer", done_kills, attempts - 1, rescored, None, identical, seconds,
                reference_seconds, detail)  # fmt: skip


def table(rows: list[Soak]) -> list[str]:
    lines = [
        "| command | kills | reruns | repeated paid requests (or passes) | paid twice (in "
        "flight at a kill) | identical outputs | seconds (killed + rerun) | "
        "seconds (uninterrupted) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        repeated = "n/a" if r.repeated is None else f"**{r.repeated}**"
        in_flight = "n/a" if r.in_flight is None else str(r.in_flight)
        lines.append(
            f"| {r.command} | {r.kills} | {r.reruns} | {repeated} | {in_flight} | "
            f"{'yes' if r.identical else '**no**'} | {r.seconds:.0f} | {r.reference_seconds:.0f} |"
        )
    return lines + [""] + [f"- {r.command}: {r.detail}" for r in rows]


def main(argv: list[str] | None = None) -> list[Soak]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per command (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="kill times, faults, models")
    parser.add_argument("--skip-gen", action="store_true")
    parser.add_argument("--skip-infer", action="store_true")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    print(
        f"## Soak: SIGKILL x {args.kills}, seed {args.seed} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f})\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="sciqa-soak-") as tmp:
        if not args.skip_gen:
            rows.append(gen_soak(Path(tmp) / "gen", args.kills, args.seed))
        if not args.skip_infer:
            rows.append(infer_soak(Path(tmp) / "infer", args.kills, args.seed))
    print("\n".join(table(rows)), flush=True)
    return rows


if __name__ == "__main__":
    main()

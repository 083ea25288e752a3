"""Benchmark ``sciqa train``'s cached tokenization (train.tokenized): first vs cached.

Questions: the packaged ARC-Easy, OpenBookQA and ARC-Challenge questions repeated with
new ids to ``--questions`` rows, each with ~``--context-words`` words of the packaged
Wikipedia sample as context (about 400 MiniLM tokens at 300 words). For each family (the
packaged MiniLM encoder, ``train.max_length=512``; the packaged SmolLM2 tokenizer in
cloze mode, ``causal_lm.max_length=640``), one process measures:

- **per fold, before**: what every fold cost before the cache: ``encode_questions`` /
  ``encode_for_llm`` of the fold's train + valid rows (all rows), in memory;
- **first**: tokenize the table through ``Dataset.map`` into an empty cache folder, then
  select fold 0's train and valid rows;
- **next fold**: select fold 1's rows from the table already tokenized;
- **cached (rerun)**: what a resume / rerun does: a new ``TokenizedTables`` reads the
  cache file, then selects fold 0's rows.

    .venv/bin/python benchmarks/tokenize_cache.py [--questions 10000] [--families mc,causal_lm]

Prints markdown tables; figures go to docs/train.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `train` package it benchmarks.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from sciqa.assets.question_sets import benchmark_questions  # noqa: E402
from sciqa.assets.registry import packaged_wikipedia  # noqa: E402
from sciqa.config import CausalLMConfig, TrainConfig  # noqa: E402
from sciqa.schema import option_letters  # noqa: E402

FOLDS = 5


def questions_with_context(n: int, context_words: int) -> pd.DataFrame:
    """``n`` benchmark questions (repeated with new ids), each with Wikipedia context."""
    base = pd.concat(
        [benchmark_questions(name)[0] for name in ("arc-easy", "openbookqa", "arc-challenge")],
        ignore_index=True,
    )
    repeats = -(-n // len(base))
    frame = pd.concat(
        [base.assign(id=base["id"] + f"~{r}") for r in range(repeats)], ignore_index=True
    ).head(n)
    words = " ".join(packaged_wikipedia()["text"]).split()
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(words) - context_words, size=n)
    frame["context"] = [" ".join(words[s : s + context_words]) for s in starts]
    return frame.reset_index(drop=True)


def fold_rows(frame: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    order = np.random.default_rng(1).permutation(len(frame))
    parts = np.array_split(order, FOLDS)
    return [
        (frame.iloc[np.concatenate(parts[:k] + parts[k + 1 :])], frame.iloc[parts[k]])
        for k in range(FOLDS)
    ]


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def encoder_backend(letters: list[str]):
    from train.model import EncoderBackend

    return EncoderBackend(letters, backbone="default", train=TrainConfig(max_length=512))


def causal_backend(frame: pd.DataFrame, letters: list[str]):
    from sciqa.assets.llm import causal_lm_path
    from train.causal import CausalBackend

    path = causal_lm_path("llm:default")
    return CausalBackend(
        path,
        frame,
        letters,
        backbone="llm:default",
        train=TrainConfig(),
        causal_lm=CausalLMConfig(max_length=640),
    )


def before(backend, rows: pd.DataFrame) -> None:
    """The encoding a fold did before the cache, in memory, as the encoder gives it."""
    backend.encode_batch(rows)


def measure(name: str, backend, frame: pd.DataFrame) -> dict[str, float]:
    from train.tokenized import TokenizedTables

    letters = option_letters(frame.columns)
    folds = fold_rows(frame)
    (train0, valid0), (train1, valid1) = folds[0], folds[1]
    _, old = timed(lambda: (before(backend, train0), before(backend, valid0)))
    with tempfile.TemporaryDirectory(prefix="tokbench-") as cache:
        tokens = TokenizedTables(backend, letters, Path(cache))
        _, first = timed(lambda: (tokens.split(frame, train0), tokens.split(frame, valid0)))
        _, nxt = timed(lambda: (tokens.split(frame, train1), tokens.split(frame, valid1)))
        rerun = TokenizedTables(backend, letters, Path(cache))
        split, cached = timed(lambda: (rerun.split(frame, train0), rerun.split(frame, valid0)))
        assert rerun.summary()[0]["cached"], "the rerun tokenized again"
        assert list(split[1].features[:3]["input_ids"]) == list(
            tokens.split(frame, valid0).features[:3]["input_ids"]
        )
        size = sum(f.stat().st_size for f in Path(cache).glob("*.arrow"))
        lengths = np.array(tokens.split(frame, frame).lengths)
    return {
        "name": name,
        "old": old,
        "first": first,
        "next": nxt,
        "cached": cached,
        "size_mb": size / 2**20,
        "tokens": float(lengths.mean()),
    }


def collate_epoch(frame: pd.DataFrame, batch: int = 8) -> tuple[float, float]:
    """Seconds to collate one epoch of ``frame`` (MiniLM, DataCollatorForMultipleChoice, in
    batches of ``batch``) from Python lists (before) and from the cached Dataset (now)."""
    from transformers import DataCollatorForMultipleChoice

    from sciqa.scoring.mc_encoding import encode_questions
    from train.tokenized import TokenizedTables

    letters = option_letters(frame.columns)
    backend = encoder_backend(letters)
    collate = DataCollatorForMultipleChoice(backend.tokenizer)
    rows = encode_questions(backend.tokenizer, frame, 512, letters=letters).features
    with tempfile.TemporaryDirectory(prefix="tokbench-") as cache:
        dataset = TokenizedTables(backend, letters, Path(cache)).split(frame, frame).features
        spans = [list(range(i, min(i + batch, len(frame)))) for i in range(0, len(frame), batch)]

        def epoch(fetch) -> None:  # DataLoader's way: rows of a batch, then the collator
            for span in spans:
                collate(fetch(span))

        _, lists = timed(epoch, lambda span: [dict(rows[i]) for i in span])
        _, arrow = timed(epoch, dataset.__getitems__)
        assert dataset[0]["input_ids"] == rows[0]["input_ids"]
    return lists, arrow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--context-words", type=int, default=300)
    parser.add_argument("--families", default="mc,causal_lm")
    parser.add_argument("--collate", type=int, default=2000, help="questions; 0 = skip")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    frame = questions_with_context(args.questions, args.context_words)
    letters = option_letters(frame.columns)
    rows = []
    for family in filter(None, args.families.split(",")):
        if family == "mc":
            backend = encoder_backend(letters)
            rows.append(measure("MiniLM encoder, max_length 512", backend, frame))
        else:
            backend = causal_backend(frame, letters)
            rows.append(measure("SmolLM2 cloze, max_length 640", backend, frame))

    if rows:
        table(rows, frame, letters, args.context_words, load)
    if args.collate:
        lists, arrow = collate_epoch(frame.head(args.collate))
        print(
            f"\nCollating one epoch of {args.collate} questions (MiniLM, batches of 8): "
            f"{lists:.1f} s from Python lists (before), {arrow:.1f} s from the cached "
            f"Dataset ({arrow / lists:.2f}x); load average {os.getloadavg()[0]:.1f}."
        )


def table(rows, frame, letters, context_words, load) -> None:
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"\n## Tokenization: first vs cached ({len(frame)} questions, {len(letters)} options, "
        f"~{context_words} words of context)\n"
    )
    print(f"{now}, {os.cpu_count()} CPU cores, load average {load:.1f} at start\n")
    print(
        "| tokenizer | tokens/question (longest option) | per fold before | first (tokenize "
        "+ write cache) | next fold | cached (rerun) | first / cached | cache file |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['tokens']:.0f} | {r['old']:.1f} s | {r['first']:.1f} s "
            f"| {r['next']:.2f} s | {r['cached']:.2f} s | {r['first'] / r['cached']:.0f}x "
            f"| {r['size_mb']:.0f} MB |"
        )
    print(
        f"\nA {FOLDS}-fold run: before {FOLDS} x 'per fold before'; now 'first' + "
        f"{FOLDS - 1} x 'next fold', and a rerun or resume 'cached' + {FOLDS - 1} x 'next fold'."
    )
    for r in rows:
        old_run = FOLDS * r["old"]
        new_run = r["first"] + (FOLDS - 1) * r["next"]
        rerun = r["cached"] + (FOLDS - 1) * r["next"]
        print(
            f"- {r['name']}: {old_run:.0f} s before, {new_run:.0f} s first run, {rerun:.1f} s rerun"
        )


if __name__ == "__main__":
    main()

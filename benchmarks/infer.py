"""Benchmark ``sciqa infer``'s predictor against the seed notebook's inference loop.

Same model (the packaged MiniLM as a ``BertForMultipleChoice``; its classifier head is
random, which does not change speed), same questions (ARC-Challenge), one process:

* seed: tokenized questions in file order, fixed batch size,
  ``DataCollatorForMultipleChoice``, fp32, ``torch.no_grad`` (the Kaggle seed notebook);
* sciqa fp32: ``infer.predictors.encoder.EncoderPredictor`` (sorted by length, padded per batch,
  ``inference_mode``, SDPA), fp32 — identical logits;
* sciqa bf16: the same in bf16 (on CPUs with AVX512-BF16/AMX; logits differ slightly).

Without context and with long context: ``--context-file`` (questions with a ``context``
column, e.g. from ``sciqa retrieve``) or, by default, ~300 words of packaged Wikipedia
attached to each question. Optionally (``--run-dir``) MAP@3 of single folds vs the
ensemble vs ensemble + TTA through ``sciqa infer`` itself.

``--devices`` adds the ``infer.devices`` table: the same questions on 1 worker (all
intra-op threads) vs 2 CPU workers (half the threads each) as threads (what
``infer.devices`` ships, ``infer.predictors.sharded.ShardedPredictor``) and as processes (a
persistent spawned process per worker, shards sent over a pipe), q/s ratio, logits
compared with the 1-worker run; set-up (spawn + import + load) is timed apart.

    .venv/bin/python benchmarks/infer.py --limit 295
    .venv/bin/python benchmarks/infer.py --skip-speed --devices --limit 200
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Run as a script, this file's folder comes first on sys.path and its name would hide
# the `infer` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModelForMultipleChoice,
    AutoTokenizer,
    DataCollatorForMultipleChoice,
)

from infer.predictors.encoder import EncoderPredictor, load_model
from infer.predictors.sharded import ShardedPredictor, cpu_threads, shard_rows
from sciqa.assets.question_sets import benchmark_questions
from sciqa.assets.registry import packaged_wikipedia, resolve_model
from sciqa.io import read_questions
from sciqa.scoring.mc_encoding import encode_questions


def wikipedia_context(frame: pd.DataFrame, words: int, seed: int) -> pd.DataFrame:
    """Attach ~``words`` words of random packaged Wikipedia leads to each question."""
    wiki = packaged_wikipedia()
    wiki = wiki[wiki["topic"].str.contains("science|Biology|Technology|Mathematics", case=False)]
    texts = wiki["text"].tolist()
    rng = np.random.default_rng(seed)
    contexts = []
    for _ in range(len(frame)):
        parts, count = [], 0
        while count < words:
            text = texts[int(rng.integers(len(texts)))]
            parts.append(text)
            count += len(text.split())
        contexts.append(" ".join(" ".join(parts).split()[:words]))
    return frame.assign(context=contexts)


def seed_loop(model, tokenizer, features, batch_size: int) -> np.ndarray:
    """The seed notebook: file order, fixed batch, DataCollatorForMultipleChoice, fp32."""
    collate = DataCollatorForMultipleChoice(tokenizer)
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            chunk = [dict(f, labels=0) for f in features[start : start + batch_size]]
            batch = collate(chunk)
            batch.pop("labels")
            out.append(model(**batch).logits.float().numpy())
    return np.concatenate(out)


def flops_per_token(config, seq_len: int) -> float:
    """Forward FLOPs per token: 2 x non-embedding params + the attention matmuls.

    Per layer: QKV+output projections 4 d^2 and the MLP 2 d d_ff weights (x2 FLOPs per
    multiply-add), plus QK^T and attention x V, 2 x 2 x seq_len x d.
    """
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (2 * (4 * d * d + 2 * d * ff) + 4 * seq_len * d)


def padded(lengths: np.ndarray, n_options: int, batch_size: int, order: np.ndarray) -> tuple:
    """(padded tokens, sum over tokens of their sequence length) for batches in ``order``."""
    tokens = attn = 0
    for i in range(0, len(order), batch_size):
        chunk = lengths[order[i : i + batch_size]]
        width = int(chunk.max())
        tokens += len(chunk) * n_options * width
        attn += len(chunk) * n_options * width * width
    return tokens, attn


def time_it(fn):
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def speed_rows(model_dir: Path, frame: pd.DataFrame, label: str, args) -> list[dict]:
    """Each method ``--repeats`` times, interleaved (seed, fp32, bf16, seed, ...), median.

    Interleaving spreads the noise of a shared CPU evenly over the methods.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = encode_questions(tokenizer, frame, args.max_length, use_context=True)
    n = len(frame)
    lengths = np.array(enc.lengths)
    c = enc.n_options
    seed_model = AutoModelForMultipleChoice.from_pretrained(model_dir).eval()
    cfg = seed_model.config
    cpu = torch.device("cpu")
    predictors = {
        name: EncoderPredictor(
            load_model(model_dir, cpu, dtype, "sdpa"), tokenizer, cpu, args.batch_size
        )
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }

    def gflops(order: np.ndarray) -> float:
        tokens, attn = padded(lengths, c, args.batch_size, order)
        per_token = flops_per_token(cfg, 0)
        attention = 4 * cfg.hidden_size * cfg.num_hidden_layers * attn
        return (tokens * per_token + attention) / 1e9

    methods = {
        "seed loop (file order, fp32)": lambda feats, lens: seed_loop(
            seed_model, tokenizer, feats, args.batch_size
        ),
        **{
            f"sciqa infer predictor ({name}, sorted)": (
                lambda feats, lens, p=p: p.logits(feats, lens)
            )
            for name, p in predictors.items()
        },
    }
    warm = args.batch_size
    for run in methods.values():
        run(enc.features[:warm], enc.lengths[:warm])
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    logits: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in methods.items():
            logits[name], secs = time_it(lambda run=run: run(enc.features, enc.lengths))
            seconds[name].append(secs)
    file_order = np.arange(n)
    sorted_order = np.argsort(-lengths, kind="stable")
    seed_name = next(iter(methods))
    seed_s = float(np.median(seconds[seed_name]))
    rows = []
    for name in methods:
        secs = float(np.median(seconds[name]))
        order = file_order if name == seed_name else sorted_order
        rows.append(
            {
                "inputs": label,
                "method": name,
                "q/s": n / secs,
                "seconds (median)": secs,
                "speedup": seed_s / secs,
                "GFLOP/s": gflops(order) / secs,
                "max |dlogit|": float(np.abs(logits[name] - logits[seed_name]).max()),
            }
        )
    print(
        f"{label}: {n} questions, tokens per option sequence mean {lengths.mean():.0f}, "
        f"max {lengths.max()}; padded GFLOP seed {gflops(file_order):.0f}, "
        f"sorted {gflops(sorted_order):.0f}; seconds per repeat "
        + "; ".join(f"{k}: {[round(x, 1) for x in v]}" for k, v in seconds.items()),
        flush=True,
    )
    return rows


def backbone_as_mc(folder: Path) -> Path:
    """The packaged MiniLM saved as a BertForMultipleChoice dir (random classifier head)."""
    source = resolve_model("default", "backbone").name_or_path
    torch.manual_seed(0)
    AutoModelForMultipleChoice.from_pretrained(source).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def to_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def map_rows(run_dir: Path, questions: Path, out: Path, tta: int) -> list[dict]:
    """MAP@3 of each fold, the ensemble and the ensemble + TTA via run_infer."""
    from infer.commands import run_infer
    from sciqa.config import load_config

    config = load_config(None, ["infer.batch_size=16"])
    plain = run_infer(questions, [str(run_dir)], out, config)
    # Same OUT_DIR: the TTA run takes pass 1 of every fold from the cache.
    config.infer.tta = tta
    with_tta = run_infer(questions, [str(run_dir)], out, config)
    rows = [
        {"model": r["model"], "MAP@3": r["map_at_3"], "accuracy": r["accuracy"]}
        for r in plain["models"]
        if "map_at_3" in r
    ]
    ens = with_tta["models"][-1]
    rows.append(
        {"model": f"ensemble + TTA x{tta}", "MAP@3": ens["map_at_3"], "accuracy": ens["accuracy"]}
    )
    return rows


def two_input_table(
    rows_for, model_dir: Path, frame: pd.DataFrame, with_ctx: pd.DataFrame, ctx_label: str, args
) -> None:
    """One table of ``rows_for`` (speed_rows, devices_rows): the questions without
    context, then the first ``--context-limit`` with it."""
    bare = frame.drop(columns=["context"], errors="ignore")
    rows = rows_for(model_dir, bare, "no context", args)
    rows += rows_for(model_dir, with_ctx.iloc[: args.context_limit], ctx_label, args)
    print(to_markdown(rows), flush=True)


def _process_worker(conn, model_dir: str, features, threads: int, batch_size: int) -> None:
    """One worker process: load the model once, then score the rows it is sent."""
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(Path(model_dir), cpu, torch.float32, "sdpa")
    predictor = EncoderPredictor(model, tokenizer, cpu, batch_size)
    lengths = [len(f["input_ids"][0]) for f in features]
    conn.send("ready")
    while (rows := conn.recv()) is not None:
        conn.send(predictor.logits(features, lengths, rows=rows))


class ProcessWorkers:
    """N spawned processes, one model copy each: the alternative to worker threads."""

    def __init__(self, model_dir: Path, features, n: int, threads: int, batch_size: int):
        context = mp.get_context("spawn")  # fork is unsafe once CUDA or OpenMP started
        self.pipes, self.procs = [], []
        for _ in range(n):
            here, there = context.Pipe()
            work = (there, str(model_dir), features, threads, batch_size)
            proc = context.Process(target=_process_worker, args=work, daemon=True)
            proc.start()
            self.pipes.append(here)
            self.procs.append(proc)
        for pipe in self.pipes:
            assert pipe.recv() == "ready"

    def logits(self, lengths, batch_size: int) -> np.ndarray:
        shards = shard_rows(lengths, batch_size=batch_size, n_shards=len(self.pipes))
        for pipe, shard in zip(self.pipes, shards, strict=True):
            pipe.send(shard)
        parts = [pipe.recv() for pipe in self.pipes]
        out = parts[0]
        for shard, part in zip(shards[1:], parts[1:], strict=True):
            out[shard] = part[shard]
        return out

    def close(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            pipe.send(None)
            proc.join()


def devices_rows(model_dir: Path, frame: pd.DataFrame, label: str, args) -> list[dict]:
    """1 worker vs 2 CPU workers (threads, processes) on the same questions."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = encode_questions(tokenizer, frame, args.max_length, use_context=True)
    n, cpu = len(frame), torch.device("cpu")
    total_threads = torch.get_num_threads()
    setup: dict[str, float] = {}

    def sharded(n_workers: int) -> ShardedPredictor:
        def make(device):
            model = load_model(model_dir, device, torch.float32, "sdpa")
            return EncoderPredictor(model, tokenizer, device, args.batch_size)

        return ShardedPredictor.build(make, [cpu] * n_workers)

    one, setup["1 worker"] = time_it(lambda: sharded(1))
    two, setup["2 worker threads"] = time_it(lambda: sharded(2))
    procs, setup["2 worker processes"] = time_it(
        lambda: ProcessWorkers(model_dir, enc.features, 2, total_threads // 2, args.batch_size)
    )
    methods = {
        "1 worker": lambda: one.logits(enc.features, enc.lengths),
        "2 worker threads": lambda: two.logits(enc.features, enc.lengths),
        "2 worker processes": lambda: procs.logits(enc.lengths, args.batch_size),
    }
    one.warm_up(enc.features, enc.lengths)
    two.warm_up(enc.features, enc.lengths)
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    logits: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in methods.items():
            logits[name], secs = time_it(run)
            seconds[name].append(secs)
    procs.close()
    base = float(np.median(seconds["1 worker"]))
    rows = []
    for name in methods:
        secs = float(np.median(seconds[name]))
        threads = total_threads if name == "1 worker" else cpu_threads([cpu, cpu])
        diff = float(np.abs(logits[name] - logits["1 worker"]).max())
        rows.append(
            {
                "inputs": f"{label} ({n} q)",
                "workers": name,
                "threads each": threads,
                "q/s": n / secs,
                "seconds (median)": secs,
                "ratio vs 1 worker": base / secs,
                "max abs dlogit": diff,
                "bitwise": bool(np.array_equal(logits[name], logits["1 worker"])),
                "set-up s": setup[name],
            }
        )
    print(
        f"{label}: {n} questions; seconds per repeat "
        + "; ".join(f"{k}: {[round(x, 1) for x in v]}" for k, v in seconds.items()),
        flush=True,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=295, help="questions (ARC-Challenge: 295)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--context-limit", type=int, default=80, help="questions with context")
    parser.add_argument("--context-words", type=int, default=300)
    parser.add_argument("--context-file", type=Path, default=None)
    parser.add_argument("--run-dir", type=Path, default=None, help="a sciqa train run dir")
    parser.add_argument("--tta", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings, median")
    parser.add_argument("--skip-speed", action="store_true", help="only the MAP@3 table")
    parser.add_argument("--devices", action="store_true", help="1 vs 2 CPU workers table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    full, _ = benchmark_questions("arc-challenge")
    frame = full.iloc[: args.limit].reset_index(drop=True)
    if args.context_file is not None:
        with_ctx = read_questions(args.context_file).iloc[: args.limit].reset_index(drop=True)
        ctx_label = f"with context ({args.context_file.name})"
    else:
        with_ctx = wikipedia_context(frame, args.context_words, seed=0)
        ctx_label = f"with ~{args.context_words} words of packaged Wikipedia"
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}", flush=True)
    if not args.skip_speed or args.devices:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = backbone_as_mc(Path(tmp) / "minilm-mc")  # one for both tables
            if not args.skip_speed:
                two_input_table(speed_rows, model_dir, frame, with_ctx, ctx_label, args)
            if args.devices:
                two_input_table(devices_rows, model_dir, frame, with_ctx, ctx_label, args)
    if args.run_dir is not None:
        questions = args.context_file or Path(tempfile.mkdtemp()) / "arc.csv"
        if args.context_file is None:
            full.to_csv(questions, index=False)  # MAP@3 on every question
        out = Path(tempfile.mkdtemp(prefix="sciqa-infer-bench-"))
        print(to_markdown(map_rows(args.run_dir, questions, out, args.tta)))


if __name__ == "__main__":
    main()

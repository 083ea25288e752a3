"""Benchmark causal-LM option scoring with the packaged SmolLM2-135M-Instruct, CPU.

1. ``quality``: zero-shot MAP@3 / accuracy of every scoring mode (cloze with each
   normalisation, letter, yes_no) on ARC-Challenge, OpenBookQA and ARC-Easy, with and
   without retrieved context (``{set}_ctx.csv`` from ``sciqa retrieve`` in ``--data``).
2. ``speed``: the shared-prefix KV cache vs scoring every option's full sequence, on
   questions with context: same scores (max abs difference) and questions/s, runs
   interleaved, median of ``--repeats``.
3. ``members``: MAP@3 of ``sciqa infer`` over given MODEL_DIR arguments one by one and
   ensembled (``--members runs/bench/llm_train llm:default runs/demo/train``).
4. ``stream``: the resident model vs ``causal_lm.offload = layers`` on the same questions,
   each in a fresh process: scoring time, peak RSS (and peak CUDA memory), the most weight
   bytes held at once while streaming, per-part read and compute time, and whether the
   scores agree (max abs difference, same top-3).
5. ``reader``: letter mode, today's path vs the shared prompt head run once per model, in
   fp32 and bf16: q/s, speed-ups, top-1 agreement, max score difference, FLOP/s against
   the CPU's bf16 peak (:mod:`benchmarks.llm_reader`).

    .venv/bin/python -m benchmarks.llm quality --data runs/demo --limit 295
    .venv/bin/python -m benchmarks.llm speed --data runs/demo --limit 60
    .venv/bin/python -m benchmarks.llm members --questions runs/demo/arc_challenge_ctx.csv \
        --members runs/bench/llm_train llm:default
    sciqa benchmark arc-challenge runs/bench/arc_challenge.csv
    .venv/bin/python -m benchmarks.llm stream --questions runs/bench/arc_challenge.csv --dtype fp32
    .venv/bin/python -m benchmarks.llm reader --questions runs/bench/arc_challenge.csv --limit 64

Prints markdown tables; figures go to docs/llm.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Run as a script, this file's folder comes first on sys.path and would hide `infer`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.llm_reader import reader  # noqa: E402
from sciqa.assets.question_sets import benchmark_questions  # noqa: E402
from sciqa.config import load_config  # noqa: E402
from sciqa.io import read_questions  # noqa: E402
from sciqa.metrics import accuracy, map_at_3, top3_letters  # noqa: E402
from sciqa.schema import option_letters  # noqa: E402

SETS = ("arc_challenge", "openbookqa", "arc_easy")
VARIANTS = {  # label -> causal_lm overrides
    "cloze mean": ["causal_lm.mode=cloze", "causal_lm.normalise=mean"],
    "cloze chars": ["causal_lm.mode=cloze", "causal_lm.normalise=chars"],
    "cloze pmi": ["causal_lm.mode=cloze", "causal_lm.normalise=pmi"],
    "letter": ["causal_lm.mode=letter"],
    "yes_no": ["causal_lm.mode=yes_no"],
}


def load_set(name: str, data: Path | None, context: bool, limit: int | None) -> pd.DataFrame | None:
    """A benchmark set, from ``data/{name}[_ctx].csv`` when there, else exported."""
    file = data / f"{name}{'_ctx' if context else ''}.csv" if data else None
    if file is not None and file.is_file():
        frame = read_questions(file)
    elif context:
        return None
    else:
        frame = benchmark_questions(name.replace("_", "-"))[0]
    return frame.head(limit) if limit else frame


class Scorer:
    """SmolLM2 loaded once; scores frames through the same path as ``sciqa infer``."""

    def __init__(self, name: str, dtype: str, batch_size: int):
        import torch

        from infer.predictors.causal import CausalPredictor
        from sciqa.assets.llm import causal_lm_path, load_causal_lm, load_causal_tokenizer

        path = causal_lm_path(name)
        self.tokenizer = load_causal_tokenizer(path)
        torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        self.model = load_causal_lm(path, dtype=torch_dtype).eval()
        self.batch_size = batch_size
        self.predictor = lambda cache: CausalPredictor(
            self.model, self.tokenizer.pad_token_id, batch_size, cache
        )

    def encode(self, frame: pd.DataFrame, overrides: list[str]):
        from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm

        cfg = load_config(None, overrides).causal_lm
        spec = PromptSpec.from_config(cfg, self.tokenizer, "smollm2")
        return encode_for_llm(self.tokenizer, frame, spec, letters=option_letters(frame.columns))

    def scores(self, enc, cache: bool = True) -> tuple[np.ndarray, float]:
        began = time.perf_counter()
        out = self.predictor(cache).logits(enc, enc.lengths)
        return out, time.perf_counter() - began


def score(frame: pd.DataFrame, logits: np.ndarray) -> tuple[float, float]:
    top3 = top3_letters(logits)  # letters A.. in column order, as the frames use
    answers = frame["answer"].tolist()
    return map_at_3(answers, top3), accuracy(answers, top3)


def quality(args: argparse.Namespace) -> None:
    scorer = Scorer(args.model, args.dtype, args.batch_size)
    print("| set | context | scoring | MAP@3 | accuracy | seconds | q/s | context cut |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        for context in {"no": [False], "yes": [True], "both": [False, True]}[args.context]:
            frame = load_set(name, args.data, context, args.limit)
            if frame is None:
                print(f"| {name} | yes | (no {name}_ctx.csv in {args.data}) | | | | | |")
                continue
            for label in args.variants:
                overrides = [*VARIANTS[label], f"causal_lm.use_context={context}"]
                enc = scorer.encode(frame, overrides)
                logits, seconds = scorer.scores(enc)
                m, a = score(frame, logits)
                print(
                    f"| {name} | {'yes' if context else 'no'} | {label} | {m:.4f} | {a:.4f} "
                    f"| {seconds:.0f} | {len(frame) / seconds:.1f} | {enc.truncated} |",
                    flush=True,
                )


def speed(args: argparse.Namespace) -> None:
    scorer = Scorer(args.model, args.dtype, args.batch_size)
    frame = load_set(args.sets[0], args.data, True, args.limit)
    if frame is None:
        raise SystemExit(f"speed needs {args.sets[0]}_ctx.csv in --data (run sciqa retrieve)")
    print(
        f"| scoring ({args.dtype}) | tokens/question | cache s | full s | speed-up "
        "| max abs diff | same top-1 |"
    )
    print("|---|---|---|---|---|---|---|")
    for label in args.variants:
        enc = scorer.encode(frame, [*VARIANTS[label], "causal_lm.use_context=true"])
        if label == "cloze pmi":
            continue  # pmi runs through the cache only
        times: dict[bool, list[float]] = {True: [], False: []}
        outs: dict[bool, np.ndarray] = {}
        for _ in range(args.repeats):
            for cache in (True, False):  # interleaved: drift on a shared CPU hits both
                outs[cache], seconds = scorer.scores(enc, cache)
                times[cache].append(seconds)
        cached, full = statistics.median(times[True]), statistics.median(times[False])
        diff = float(np.nanmax(np.abs(outs[True] - outs[False])))
        tokens = float(np.mean(enc.lengths))
        same = float(np.mean(outs[True].argmax(1) == outs[False].argmax(1)))
        print(
            f"| {label} | {tokens:.0f} | {cached:.1f} | {full:.1f} | {full / cached:.2f}x "
            f"| {diff:.1e} | {same:.0%} |",
            flush=True,
        )


def members(args: argparse.Namespace) -> None:
    from infer.commands import run_infer

    cfg = load_config(args.config, args.set)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        result = run_infer(args.questions, args.members, Path(tmp) / "out", cfg)
        rows = result["models"]
    print("| member | weight | MAP@3 | accuracy | seconds |")
    print("|---|---|---|---|---|")
    for row in rows:
        nan = float("nan")
        m, a = row.get("map_at_3", nan), row.get("accuracy", nan)
        weight = row.get("weight") or "-"
        print(f"| {row['model']} | {weight} | {m:.4f} | {a:.4f} | {row.get('seconds', 0):.0f} |")


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stream_one(args: argparse.Namespace) -> None:
    """One side of ``stream``, alone in its process so its peak RSS is its own."""
    import json

    import torch

    from infer.predictors.causal import CausalPredictor, load_llm
    from infer.predictors.offload.predictor import StreamedPredictor
    from infer.predictors.offload.stream import open_streamer
    from sciqa.assets.llm import causal_lm_path, load_causal_tokenizer
    from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm

    frame = (
        read_questions(args.questions) if args.questions else load_set(SETS[0], None, False, None)
    )
    frame = frame.head(args.limit) if args.limit else frame
    sets = [f"causal_lm.offload={args.offload}", f"causal_lm.batch_size={args.batch_size}"]
    sets += [f"causal_lm.offload_group={args.group}", *args.set]
    cfg = load_config(None, sets).causal_lm
    path = causal_lm_path(args.model)
    tokenizer = load_causal_tokenizer(path)
    spec = PromptSpec.from_config(cfg, tokenizer, "bench")
    enc = encode_for_llm(tokenizer, frame, spec, letters=option_letters(frame.columns))
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    baseline = _rss_mb()
    began = time.perf_counter()
    if cfg.offload == "layers":
        model, kind = open_streamer(Path(path), device, dtype, cfg, "sdpa"), StreamedPredictor
    else:
        model, kind = load_llm(Path(path), device, dtype, cfg, "sdpa"), CausalPredictor
    loaded = time.perf_counter() - began
    predictor = kind(model, tokenizer.pad_token_id, cfg.batch_size, cfg.prefix_cache)
    began, cpu = time.perf_counter(), time.process_time()
    logits = predictor.logits(enc, enc.lengths)
    result = {
        "offload": args.offload,
        "questions": len(frame),
        "load_s": loaded,
        "score_s": time.perf_counter() - began,
        "cpu_s": time.process_time() - cpu,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
    }
    stats = getattr(model, "stats", None)
    if stats is not None:
        sizes = model.split.sizes
        result.update(
            parts=len(sizes),
            sweeps=stats.sweeps,
            peak_weight_mb=stats.peak_weight_bytes / 2**20,
            layer_mb=max(sizes[1:-1]) / 2**20,
            embed_mb=sizes[0] / 2**20,
            head_mb=sizes[-1] / 2**20,
            model_mb=sum(sizes) / 2**20,
            wait_s=stats.wait_seconds,
            read_s=stats.read_seconds,
            compute_s=stats.compute_seconds,
            tokens=stats.tokens,
            layer_params=sum(p.numel() for p in model.layers[0].parameters()),
        )
    else:
        result["model_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    np.save(args.logits_out, logits)
    print(json.dumps(result))


def stream(args: argparse.Namespace) -> None:
    import json
    import subprocess

    common = ["--model", args.model, "--dtype", args.dtype, "--device", args.device]
    common += ["--batch-size", str(args.batch_size), "--group", str(args.group)]
    common += [x for s in args.set for x in ("--set", s)]
    if args.questions:
        common += ["--questions", str(args.questions)]
    if args.limit:
        common += ["--limit", str(args.limit)]
    runs: dict[str, list[dict]] = {"split": [], "none": [], "layers": []}
    logits = {}
    # The split first, on one question, in a process of its own: the measured runs then
    # read warm files, and the split's one-time cost is reported apart. Then the two sides
    # alternate, each in a fresh process (its own peak RSS): a shared machine's load
    # drifts over minutes, and alternating spreads the drift over both.
    order = [("split", "layers")] + [("none", "none"), ("layers", "layers")] * args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        for label, offload in order:
            out = Path(tmp) / f"{label}.npy"
            cmd = [sys.executable, "-m", "benchmarks.llm", "stream-one", "--offload", offload]
            limit = ["--limit", "1"] if label == "split" else []
            done = subprocess.run(
                [*cmd, *common, *limit, "--logits-out", str(out)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            runs[label].append(json.loads(done.stdout.splitlines()[-1]))
            logits[label] = np.load(out)
    rows = {k: v[0] for k, v in runs.items()}
    top3 = top3_letters(logits["none"]) == top3_letters(logits["layers"])
    diff = float(np.nanmax(np.abs(logits["none"] - logits["layers"])))
    n = rows["none"]["questions"]
    print(f"{args.model}, {n} questions, {args.dtype}, {args.device}, batch {args.batch_size}, "
          f"group {args.group}, {args.repeats} run(s) per side, alternating; split once: "
          f"{rows['split']['load_s']:.1f}s")  # fmt: skip
    print()
    print(
        "| path | load s | score s (median) | CPU s (median) | q/s | peak RSS MB (after imports) "
        "| weights held at once MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("none", "layers"):
        r = rows[name]
        wall = statistics.median(x["score_s"] for x in runs[name])
        cpu = statistics.median(x["cpu_s"] for x in runs[name])
        peak = max(x["peak_rss_mb"] for x in runs[name])
        held = max(x.get("peak_weight_mb", x["model_mb"]) for x in runs[name])
        cuda = f", CUDA peak {r['cuda_peak_mb']:.0f}" if r.get("cuda_peak_mb") else ""
        print(
            f"| {'resident' if name == 'none' else 'streamed (offload=layers)'} "
            f"| {statistics.median(x['load_s'] for x in runs[name]):.1f} | {wall:.1f} "
            f"| {cpu:.1f} | {n / wall:.2f} | {peak:.0f} ({r['baseline_rss_mb']:.0f}){cuda} "
            f"| {held:.1f} |"
        )
    s = rows["layers"]
    layers = s["parts"] - 2
    read_rate = s["sweeps"] * s["model_mb"] / s["read_s"]
    # Decoder-layer compute only: 2 FLOPs per parameter per token, attention aside.
    flops = 2 * s["layer_params"] * s["tokens"] * layers
    print()
    print(f"scores: max abs difference {diff:.1e}, same top-3: {top3}")
    print(
        f"streamed: {s['sweeps']} sweeps x {s['parts']} parts; largest layer "
        f"{s['layer_mb']:.1f} MB, embeddings {s['embed_mb']:.1f} MB, norm + head "
        f"{s['head_mb']:.1f} MB, whole model {s['model_mb']:.1f} MB"
    )
    print(
        f"per sweep: reading {s['read_s'] / s['sweeps']:.2f}s ({read_rate:.0f} MB/s), waited for "
        f"{s['wait_s'] / s['sweeps']:.2f}s of it, computing {s['compute_s'] / s['sweeps']:.2f}s; "
        f"{s['tokens'] / s['sweeps']:.0f} token positions per layer per sweep, "
        f"{flops / s['compute_s'] / 1e9:.1f} GFLOP/s in the decoder layers"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what", choices=["quality", "speed", "members", "stream", "stream-one", "reader"]
    )
    parser.add_argument("--model", default="llm:default", help="llm:NAME to score with")
    parser.add_argument("--data", type=Path, default=Path("runs/demo"), help="*_ctx.csv folder")
    parser.add_argument("--sets", type=lambda s: s.split(","), default=list(SETS))
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--limit", type=int, default=None, help="first N questions per set")
    parser.add_argument("--context", choices=["no", "yes", "both"], default="both")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="speed, stream: runs per side")
    parser.add_argument("--questions", type=Path, help="members: labelled questions")
    parser.add_argument("--members", nargs="+", default=[], help="members: MODEL_DIR args")
    parser.add_argument("--config", "-c", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--device", default="cpu", help="stream: cpu, cuda, cuda:1")
    parser.add_argument("--group", type=int, default=64, help="stream: causal_lm.offload_group")
    parser.add_argument("--offload", choices=["none", "layers"], default="layers")
    parser.add_argument("--logits-out", type=Path, default=Path("stream_logits.npy"))
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="reader: torch threads (0: all)")
    parser.add_argument("--ghz", type=float, default=0.0, help="reader: clock for the peak")
    args = parser.parse_args()
    if args.what in ("stream", "stream-one"):
        args.dtype = args.dtype if "--dtype" in sys.argv else "fp32"
    commands = {"quality": quality, "speed": speed, "members": members, "stream": stream}
    commands["stream-one"] = stream_one
    commands["reader"] = reader
    commands[args.what](args)


if __name__ == "__main__":
    main()

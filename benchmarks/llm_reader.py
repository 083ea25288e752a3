"""``python -m benchmarks.llm reader``: today's letter-mode path vs the fast reader, one run.

Both sides score the same questions with the same loaded model through
:class:`~infer.predictors.causal.CausalPredictor` (sorted batches of ``--batch-size``):

- *old*: ``causal_lm.shared_head = false``, what ``sciqa infer Q "llm:NAME?mode=letter"``
  did before: one forward per batch over every question's whole prompt, left-padded;
- *new*: the prompt head every question shares (chat template's system prompt, the
  instructions) run once per model, only the tails per batch (``causal_lm.shared_head``),
  and fp32 linears through oneDNN (``causal_lm.onednn_fp32``).

Per dtype the sides alternate ``--repeats`` times (a shared CPU's load drifts; the median
is kept), after one untimed warm-up batch each. *Today's path* is old in fp32, what
``infer.dtype = auto`` picks on a CPU. FLOPs are estimated as 2 x decoder-layer parameters
x token positions run, padding included (attention scores and the one-row LM head left
out), against the CPU's bf16 peak: threads x clock x FLOPs per cycle of its widest bf16
unit (:func:`cpu_peak`, which states its assumption; ``--ghz`` gives the clock where
``/proc/cpuinfo`` shows only the nominal one), and against a bf16 GEMM measured in the same
run (:func:`gemm_ceiling`), what the kernel reaches on this machine under its current load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from infer.predictors.base import padded_tokens
from sciqa.config import load_config
from sciqa.io import read_questions
from sciqa.metrics import accuracy, top3_letters
from sciqa.schema import option_letters

DTYPES = ("fp32", "bf16")


def cpu_peak(
    threads: int, ghz: float = 0.0, cpuinfo: str | None = None
) -> tuple[float, float, str]:
    """``(bf16, fp32)`` peak FLOP/s of ``threads`` cores at ``ghz`` (0: the ``cpu MHz`` of
    ``/proc/cpuinfo``, which a VM may report below the boost clock), and the assumption.

    Two 512-bit FMA pipes per core: ``vdpbf16ps`` does 32 bf16 multiply-adds per lane set
    (64 FLOPs) and an fp32 FMA 16 (32 FLOPs), so 128 / 64 FLOPs per cycle; AMD Zen 4
    (family 25) splits 512-bit ops in two 256-bit halves (64 / 32); AMX tiles do 1024 bf16
    FLOPs per cycle; AVX2 only: 32 fp32, no native bf16 (bf16 = fp32 rate).

    >>> cpu_peak(2, 0, "flags : avx512f avx512_bf16\\ncpu family : 26\\ncpu MHz : 2500.0")[:2]
    (640000000000.0, 320000000000.0)
    """
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    mhz = ghz * 1000 or float(fields.get("cpu MHz", "0") or 0)
    clock = "given" if ghz else "/proc/cpuinfo"
    halved = fields.get("cpu family") == "25" and "AMD" in fields.get("vendor_id", "AMD")
    if "amx_bf16" in flags:
        bf16, fp32, unit = 1024, 64, "AMX tiles"
    elif "avx512_bf16" in flags:
        bf16, fp32 = (64, 32) if halved else (128, 64)
        unit = "avx512_bf16, 2 FMA pipes" + (" of 256 bits" if halved else " of 512 bits")
    elif "avx512f" in flags:
        bf16 = fp32 = 64
        unit = "avx512f, no bf16 unit"
    else:
        bf16 = fp32 = 32
        unit = "avx2, no bf16 unit"
    hz = mhz * 1e6
    note = (
        f"peak = {threads} threads x {mhz / 1000:.2f} GHz ({clock}) x "
        f"{bf16} bf16 / {fp32} fp32 FLOPs per cycle ({unit})"
    )
    return threads * hz * bf16, threads * hz * fp32, note


def gemm_ceiling(repeats: int = 8) -> float:
    """FLOP/s of the best of ``repeats`` bf16 ``F.linear`` calls shaped like a 1.5B model's
    MLP on 1024 token positions: what the matmul kernel reaches here, now."""
    import torch

    x = torch.randn(1024, 1536, dtype=torch.bfloat16)
    w = torch.randn(8960, 1536, dtype=torch.bfloat16)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            began = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - began)
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] / best


def decoder_params(model: Any) -> int:
    """Parameters every token position multiplies through: the decoder layers'."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return total - embed - (0 if tied else head.weight.numel())


def positions_run(enc: Any, batch_size: int, shared: bool) -> int:
    """Token positions the forwards compute, padding included."""
    if not shared or not enc.shared_head:
        return padded_tokens(enc.lengths, 1, batch_size)
    tails = [n - enc.shared_head for n in enc.lengths]
    return enc.shared_head + padded_tokens(tails, 1, batch_size)


def _load(path: str, dtype: str) -> Any:
    import torch

    from sciqa.assets.llm import load_causal_lm

    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    return load_causal_lm(path, dtype=torch_dtype).eval()


def reader(args: argparse.Namespace) -> None:
    import torch

    from infer.predictors.causal import CausalPredictor
    from sciqa.assets.llm import causal_lm_path, load_causal_tokenizer
    from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    path = causal_lm_path(args.model)
    if path is None:
        raise SystemExit(f"{args.model}: not a causal LM")
    frame = read_questions(args.questions) if args.questions else None
    if frame is None:
        from sciqa.assets.question_sets import benchmark_questions

        frame = benchmark_questions("arc-challenge")[0]
    frame = frame.head(args.limit) if args.limit else frame
    letters = option_letters(frame.columns)
    tokenizer = load_causal_tokenizer(path)
    cfg = load_config(None, ["causal_lm.mode=letter", *args.set]).causal_lm
    spec = PromptSpec.from_config(cfg, tokenizer, args.model)
    enc = encode_for_llm(tokenizer, frame, spec, letters=letters)
    answers = frame["answer"].tolist() if "answer" in frame.columns else None
    bf16_peak, fp32_peak, note = cpu_peak(threads, args.ghz)
    ceiling = gemm_ceiling()

    scores: dict[tuple[str, str], np.ndarray] = {}
    seconds: dict[tuple[str, str], float] = {}
    params = 0
    for dtype in args.dtypes:
        model = _load(path, dtype)
        params = decoder_params(model)
        sides = {
            side: CausalPredictor(
                model,
                tokenizer.pad_token_id,
                args.batch_size,
                True,
                shared_head=side == "new",
                onednn_fp32=side == "new",
            )
            for side in ("old", "new")
        }
        times: dict[str, list[float]] = {"old": [], "new": []}
        for predictor in sides.values():  # untimed: lazy kernel set-up, the head's KV
            predictor.logits(enc, enc.lengths, rows=np.arange(min(len(frame), args.batch_size)))
        for _ in range(args.repeats):
            for side, predictor in sides.items():
                began = time.perf_counter()
                scores[side, dtype] = predictor.logits(enc, enc.lengths)
                times[side].append(time.perf_counter() - began)
        for side in sides:
            seconds[side, dtype] = statistics.median(times[side])
        del sides, model

    today = ("old", "fp32") if ("old", "fp32") in seconds else ("old", args.dtypes[0])
    n = len(frame)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.model}: {n} questions, letter mode, {np.mean(enc.lengths):.0f} tokens each "
        f"(shared head {enc.shared_head}), batch {args.batch_size}, {threads} threads, "
        f"{args.repeats} run(s) per side alternating, median; load average {load:.1f}; "
        f"today's path = old {today[1]}"
    )
    print(f"{note}: bf16 {bf16_peak / 1e9:.0f} GFLOP/s, fp32 {fp32_peak / 1e9:.0f} GFLOP/s")
    print(
        f"FLOPs = 2 x {params / 1e6:.0f}M decoder-layer params x positions run; "
        f"bf16 GEMM ceiling measured now (1024x1536 @ 1536x8960): {ceiling / 1e9:.0f} GFLOP/s"
    )
    print()
    print(
        "| path | dtype | positions run | s | q/s | vs today | vs old same dtype "
        "| top-1 = old same dtype | top-1 = today | max abs diff vs old same dtype "
        "| max abs diff vs today | accuracy | GFLOP/s | % bf16 peak | % bf16 GEMM |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for side in ("old", "new"):
            s, out = seconds[side, dtype], scores[side, dtype]
            run = positions_run(enc, args.batch_size, side == "new")
            flops = 2 * params * run / s
            old = scores["old", dtype]
            same = float(np.mean(out.argmax(1) == old.argmax(1)))
            same_today = float(np.mean(out.argmax(1) == scores[today].argmax(1)))
            diff = float(np.max(np.abs(out - old)))
            diff_today = float(np.max(np.abs(out - scores[today])))
            acc = f"{accuracy(answers, top3_letters(out)):.3f}" if answers else "-"
            print(
                f"| {side} | {dtype} | {run} | {s:.1f} | {n / s:.2f} "
                f"| {seconds[today] / s:.2f}x | {seconds['old', dtype] / s:.2f}x | {same:.1%} "
                f"| {same_today:.1%} | {diff:.1e} | {diff_today:.1e} | {acc} "
                f"| {flops / 1e9:.0f} | {flops / bf16_peak:.0%} | {flops / ceiling:.0%} |",
                flush=True,
            )

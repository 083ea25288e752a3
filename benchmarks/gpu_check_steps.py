"""The steps of ``benchmarks/gpu_check.py``. Each runs in its own process (so a time box can
kill it) and returns table rows; every step calls the product's own functions:
``train.commands.run_train``, ``infer.commands.run_infer``,
``infer.predictors.encoder.EncoderPredictor``, ``infer.predictors.causal`` and ``sciqa train``
under torchrun.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check_models import (
    LETTERS,
    LLAMA_SHAPES,
    Sizes,
    build_llm,
    build_mc,
    make_questions,
)
from benchmarks.gpu_check_probes import (
    CheckFailed,
    agreement,
    environment,
    guarded,
    peak_gib,
    reset_peak,
    row,
    scaler_watch,
    warnings_of,
)

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CONFIG = ROOT / "configs" / "train_deberta_v3_large_gpu.yaml"
INFER_CONFIG = ROOT / "configs" / "infer_kaggle.toml"
# Pooler bias and classifier weight that make every logit about 1e4 x hidden size: past
# fp16's 65504 (inf), while the weights themselves and the fp32 logits stay finite, the
# case infer's fp32 fallback exists for.
OVERFLOW_BIAS, OVERFLOW_WEIGHT = 10.0, 1000.0


@dataclass
class Ctx:
    """Where a step reads and writes, and how big things are."""

    work: Path
    sizes: Sizes
    llm: str  # a LLAMA_SHAPES key

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def mc_dir(self) -> Path:
        return self.work / "mc_model"

    @property
    def llm_dir(self) -> Path:
        return self.work / f"llm_{self.llm}"

    def data(self, name: str) -> Path:
        return self.work / "data" / f"{name}.csv"


# --- steps ------------------------------------------------------------------------------


def step_build_mc(ctx: Ctx) -> dict[str, dict]:
    from sciqa.io import write_questions

    sizes = ctx.sizes
    began = time.perf_counter()
    params = build_mc(ctx.mc_dir, sizes, ctx.device)
    seconds = time.perf_counter() - began
    train = make_questions(sizes.n_train, sizes, seed=1)
    frames = {
        "train": train,
        "valid": make_questions(sizes.n_valid, sizes, seed=2),
        "test": make_questions(sizes.n_test, sizes, seed=3),
        "torchrun": train.head(sizes.n_torchrun),
    }
    for name, frame in frames.items():
        write_questions(frame, ctx.data(name), require_answer=True)
    shape = ", ".join(f"{k} {v}" for k, v in sizes.mc.items() if v)
    detail = f"DebertaV2ForMultipleChoice ({shape}), random, built + saved in {seconds:.0f}s"
    return {"MC model": row(params / 1e6, "M params", detail, seconds=seconds)}


def step_train(ctx: Ctx, precision: str) -> dict[str, dict]:
    import torch

    from sciqa.config import load_config
    from train.commands import run_train

    used = precision if torch.cuda.is_available() else "fp32"  # bf16/fp16 need CUDA here
    overrides = [f"models.backbone={ctx.mc_dir}", f"train.precision={used}", "train.epochs=1"]
    config = load_config(
        TRAIN_CONFIG, [*overrides, "train.logging_steps=1000", *ctx.sizes.overrides]
    )
    out = ctx.work / f"train_{precision}"
    reset_peak()
    began = time.perf_counter()
    with scaler_watch() as scaler:
        config.train.folds = 1
        run_train(ctx.data("train"), out, config, valid=ctx.data("valid"), overwrite=True)
    seconds = time.perf_counter() - began
    m = json.loads((out / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    t = config.train
    detail = (
        f"{m['precision']}; {m['n_train']} q x 5 x {t.max_length} tokens, batch {t.batch_size}"
        f" x accum {t.grad_accum}, {t.freeze_layers} layers frozen, checkpointing "
        f"{'on' if t.gradient_checkpointing else 'off'}; eval loss {m['eval_loss']:.3f}"
    )
    if scaler["steps"]:
        if scaler["injected"] and not scaler["skipped"]:
            raise CheckFailed("an inf gradient was injected but no fp16 step was skipped")
        natural = scaler["skipped"] - scaler["injected"]
        detail += (
            f"; loss scaler: {scaler['injected']} injected overflow skipped, {natural} "
            f"natural skip(s) of {scaler['steps']} steps"
        )
    name = f"train MC {precision}"
    return {name: row(m["samples_per_second"], "questions/s", detail, peak_gib=peak_gib(),
                      seconds=seconds)}  # fmt: skip


def _mc_inputs(ctx: Ctx, config: Any, n: int) -> tuple[Any, Any, Any]:
    from infer.predictors.devices import resolve_devices
    from infer.predictors.encoder import load_tokenizer
    from sciqa.io import read_questions
    from sciqa.scoring.mc_encoding import encode_questions

    tokenizer = load_tokenizer(ctx.mc_dir)
    frame = read_questions(ctx.data("test")).head(n)
    enc = encode_questions(tokenizer, frame, config.infer.max_length, letters=LETTERS)
    return tokenizer, enc, resolve_devices(config.infer.device, config.infer.devices)[0]


def check_fp16_fallback(ctx: Ctx, config: Any) -> dict[str, dict]:
    """infer/predictors/encoder.py's fallback: fp16 logits overflow -> re-run in fp32."""
    import torch

    from infer.predictors.encoder import EncoderPredictor, load_model

    tokenizer, enc, device = _mc_inputs(ctx, config, 2 * config.infer.batch_size)
    model = load_model(ctx.mc_dir, device, torch.float16, config.infer.attention)
    with torch.no_grad():
        model.pooler.dense.bias.fill_(OVERFLOW_BIAS)
        model.classifier.weight.fill_(OVERFLOW_WEIGHT)
        model.classifier.bias.zero_()
    predictor = EncoderPredictor(model, tokenizer, device, config.infer.batch_size)
    with warnings_of("infer.predictors.encoder", "non-finite logits") as switched:
        logits = predictor.logits(enc.features, enc.lengths)
    now = str(predictor.model.dtype).replace("torch.", "")
    if not switched or now != "float32" or not np.isfinite(logits).all():
        raise CheckFailed(f"no fp32 fallback: {len(switched)} switch(es), model {now}")
    detail = (
        f"pooler bias {OVERFLOW_BIAS:g}, classifier weights {OVERFLOW_WEIGHT:g}: fp16 logits "
        f"overflow, the model re-runs in fp32 and stays there; {len(logits)} q, logits finite"
    )
    return {"infer MC fp16 overflow": row(len(switched), "fp16->fp32 switch", detail)}


def check_mcagreement(ctx: Ctx, config: Any) -> dict[str, dict]:
    """Top-1 of the same weights in fp32 and bf16, through infer's EncoderPredictor."""
    import torch

    from infer.predictors.encoder import EncoderPredictor, load_model

    # A quarter of the questions: fp32 on the GPU runs at a fraction of bf16's speed.
    tokenizer, enc, device = _mc_inputs(ctx, config, max(16, ctx.sizes.n_test // 4))
    model = load_model(ctx.mc_dir, device, torch.float32, config.infer.attention)
    predictor = EncoderPredictor(model, tokenizer, device, config.infer.batch_size)
    full = predictor.logits(enc.features, enc.lengths)
    predictor.model = model.to(torch.bfloat16)
    half = predictor.logits(enc.features, enc.lengths)
    return {"MC bf16 vs fp32 top-1": agreement(full, half)}


def step_infer_mc(ctx: Ctx) -> dict[str, dict]:
    from infer.commands import run_infer
    from sciqa.config import load_config

    config = load_config(INFER_CONFIG, ["infer.weights=equal", *ctx.sizes.overrides])

    def speed() -> dict[str, dict]:
        reset_peak()
        result = run_infer(ctx.data("test"), [str(ctx.mc_dir)], ctx.work / "infer_mc", config)
        m = result["models"][0]
        per_pass = (m["seconds"] - m["load_seconds"]) / m["passes"]
        detail = (
            f"sciqa infer, configs/infer_kaggle.toml: {result['dtype']}, batch "
            f"{config.infer.batch_size}, {m['passes']} TTA passes, {result['questions']} q x 5"
            f" x {config.infer.max_length} tokens; load {m['load_seconds']:.1f}s"
        )
        return {"infer MC": row(result["questions"] / per_pass, "questions/s", detail,
                                peak_gib=peak_gib(), seconds=m["seconds"])}  # fmt: skip

    rows = guarded(speed, ["infer MC"])
    rows |= guarded(lambda: check_fp16_fallback(ctx, config), ["infer MC fp16 overflow"])
    rows |= guarded(lambda: check_mcagreement(ctx, config), ["MC bf16 vs fp32 top-1"])
    return rows


def step_torchrun(ctx: Ctx) -> dict[str, dict]:
    """``torchrun --nproc_per_node 1 -m sciqa train``: launch to first fold, and in all."""
    out = ctx.work / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "1", "-m", "sciqa", "train", str(ctx.data("torchrun"))]
    command += ["--out", str(out), "--folds", "1", "--valid", str(ctx.data("valid"))]
    command += ["-c", str(TRAIN_CONFIG), "--overwrite"]
    for override in [f"models.backbone={ctx.mc_dir}", "train.epochs=1", *ctx.sizes.overrides]:
        command += ["--set", override]
    began = time.perf_counter()
    first_fold = None
    lines: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)  # into this step's log
            lines.append(line)
            if first_fold is None and re.search(r"fold 0: \d+ train", line):
                first_fold = time.perf_counter() - began
    total = time.perf_counter() - began
    if proc.returncode != 0 or first_fold is None:
        tail = "".join(lines[-3:]).strip().replace("\n", " | ")
        raise CheckFailed(f"torchrun exit {proc.returncode}: {tail[-200:]}")
    world = json.loads((out / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    detail = (
        f"launch -> 'fold 0' line (imports, process group, tokenizer, encoding); whole run "
        f"{total:.0f}s ({world['n_train']} q, 1 epoch, save); world size {world['world_size']}"
    )
    return {"torchrun start-up": row(first_fold, "s", detail, seconds=total)}


def _llm_scores(predictor: Any, enc: Any, repeats: int) -> tuple[np.ndarray, float]:
    """Scores and the median seconds of ``repeats`` full passes, after a warm-up batch."""
    import torch

    predictor.logits(enc, enc.lengths, rows=np.arange(min(len(enc), predictor.batch_size)))
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        began = time.perf_counter()
        scores = predictor.logits(enc, enc.lengths)
        times.append(time.perf_counter() - began)
    return scores, statistics.median(times)


def check_prefix_cache(ctx: Ctx, config: Any) -> dict[str, dict]:
    """Cached vs full-sequence scoring (bf16), then the same weights in fp32."""
    import torch

    from infer.predictors.causal import CausalPredictor, load_llm
    from sciqa.assets.llm import load_causal_tokenizer
    from sciqa.io import read_questions
    from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm

    causal = config.causal_lm
    tokenizer = load_causal_tokenizer(str(ctx.llm_dir), local_only=True)
    spec = PromptSpec.from_config(causal, tokenizer, ctx.llm)
    enc = encode_for_llm(tokenizer, read_questions(ctx.data("llm")), spec, letters=LETTERS)
    device = torch.device(ctx.device)
    model = load_llm(ctx.llm_dir, device, torch.bfloat16, causal, config.infer.attention)
    pad = tokenizer.pad_token_id
    rows: dict[str, dict] = {}
    reset_peak()
    cached, t_cache = _llm_scores(CausalPredictor(model, pad, causal.batch_size, True), enc, 2)
    full, t_full = _llm_scores(CausalPredictor(model, pad, causal.batch_size, False), enc, 2)
    tokens = float(np.mean(enc.lengths))
    detail = f"bf16, {len(enc)} q x 5, ~{tokens:.0f} tokens each, median of 2, after a warm-up"
    rows["infer causal, full sequences"] = row(len(enc) / t_full, "questions/s", detail,
                                               peak_gib=peak_gib(), seconds=t_full)  # fmt: skip
    same = float(np.mean(cached.argmax(1) == full.argmax(1))) * 100
    diff = float(np.max(np.abs(cached - full)))
    detail = f"{t_full:.2f}s / {t_cache:.2f}s; max |score diff| {diff:.1e}, same top-1 {same:.0f}%"
    rows["prefix-cache speed-up"] = row(t_full / t_cache, "x", detail)
    predictor = CausalPredictor(model.float(), pad, causal.batch_size, True)
    fp32 = predictor.logits(enc, enc.lengths)
    rows["causal bf16 vs fp32 top-1"] = agreement(fp32, cached)
    return rows


def step_causal(ctx: Ctx) -> dict[str, dict]:
    from infer.commands import run_infer
    from sciqa.config import load_config
    from sciqa.io import write_questions

    sizes = ctx.sizes
    began = time.perf_counter()
    params = build_llm(ctx.llm_dir, ctx.llm, sizes, ctx.device)
    build_seconds = time.perf_counter() - began
    write_questions(make_questions(sizes.n_llm, sizes, seed=4), ctx.data("llm"))
    hidden, ffn, layers, heads, kv_heads, _ = LLAMA_SHAPES[ctx.llm]
    shape = f"{layers} layers, hidden {hidden}, ffn {ffn}, {heads}/{kv_heads} heads"
    rows = {"causal model": row(params / 1e9, "B params",
                                f"LlamaForCausalLM '{ctx.llm}' ({shape}), random, built + saved "
                                f"in {build_seconds:.0f}s", seconds=build_seconds)}  # fmt: skip
    config = load_config(INFER_CONFIG, ["infer.weights=equal", *sizes.overrides])

    def speed() -> dict[str, dict]:
        reset_peak()
        result = run_infer(ctx.data("llm"), [str(ctx.llm_dir)], ctx.work / "infer_llm", config)
        m = result["models"][0]
        per_pass = (m["seconds"] - m["load_seconds"]) / m["passes"]
        c = config.causal_lm
        detail = (
            f"sciqa infer (member = the model dir), {result['dtype']}, {c.mode}/{c.normalise}, "
            f"batch {c.batch_size}, max_length {c.max_length}, {m['passes']} TTA passes; "
            f"load {m['load_seconds']:.1f}s; context cut in {m.get('context_cut', 0)} q"
        )
        return {"infer causal, prefix cache": row(result["questions"] / per_pass, "questions/s",
                                                  detail, peak_gib=peak_gib(),
                                                  seconds=m["seconds"])}  # fmt: skip

    rows |= guarded(speed, ["infer causal, prefix cache"])
    names = ["infer causal, full sequences", "prefix-cache speed-up", "causal bf16 vs fp32 top-1"]
    rows |= guarded(lambda: check_prefix_cache(ctx, config), names)
    return rows


STEPS: dict[str, Callable[[Ctx], dict[str, dict]]] = {
    "build_mc": step_build_mc,
    "train_bf16": lambda ctx: step_train(ctx, "bf16"),
    "train_fp16": lambda ctx: step_train(ctx, "fp16"),
    "infer_mc": step_infer_mc,
    "torchrun": step_torchrun,
    "causal": step_causal,
}


def run_step(name: str, ctx: Ctx, result_file: Path) -> None:
    """Run one step and write ``{"rows": ..., "env": ...}`` to ``result_file``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = STEPS[name](ctx)
    for values in rows.values():
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                values[key] = None  # JSON has no NaN; the table shows "-"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps({"rows": rows, "env": environment()}, indent=1))

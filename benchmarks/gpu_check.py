"""GPU check: the production recipes on one GPU, in one prepared run of at most 8 minutes.

Runs the product's own code (``sciqa train`` / ``sciqa infer`` through ``run_train``,
``run_infer``, infer's predictors, and ``sciqa train`` under torchrun) with the settings of
``configs/train_deberta_v3_large_gpu.yaml`` and ``configs/infer_kaggle.toml`` on models
built from configs with random weights (nothing is downloaded): a DeBERTa-v3-large-shaped
``DebertaV2ForMultipleChoice`` (24 layers, hidden 1024, vocab 128100) with a tokenizer built
here, and a Llama-2-7B-shaped causal member (``--llm 3b``/``1b`` if 7B does not fit the
time); 5 options and contexts cut at 512 tokens, as on Kaggle. Prints one table:

- train questions/s and peak memory in bf16 and in fp16 (fp16 with its overflow
  handling, loss scaling: one injected inf gradient must be skipped, natural skips are
  counted);
- infer questions/s for the multiple-choice model and the causal member;
- infer's fp16-overflow fallback (logits forced to overflow: the model re-runs in fp32);
- the shared-prefix KV cache's speed-up over scoring full sequences;
- ``torchrun --nproc_per_node 1 -m sciqa train`` start-up;
- whether bf16 logits agree with fp32 on top-1 (MC model and causal member).

Every step runs in its own process with a time box, a share of ``--deadline``: a slow or
failed step is reported in its rows and the table still prints. Results also go to
``--out`` (table.md, results.json, logs.txt).

CPU smoke run (tiny sizes, the same steps; CI runs it through tests/benchmarks/test_gpu_check.py)::

    .venv/bin/python benchmarks/gpu_check.py --smoke

On the device machine (nvidia-h200) python3 has torch + CUDA, accelerate, tokenizers,
pandas, pyarrow, scikit-learn, typer, pyyaml, but no pydantic, and transformers 5.17, which
lacks ``TrainingArguments(activation_checkpointing=...)`` that train uses. Once, here, in
the repository root, fetch those as wheels in the versions ``make install`` put in .venv
(so the GPU runs what CI tests; about 16 MB)::

    echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 -d .whl $(.venv/bin/pip freeze \
        | grep -iE '^(transformers|pydantic|pydantic[-_]core|annotated[-_]types|typing[-_](inspection|extensions))==')

then the device tool's ``run`` with ``carry: [".whl"]`` and ``timeout_s: 480``, command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; python3 benchmarks/gpu_check.py --out $OUT --deadline 420

The table is the last thing printed (and $OUT/table.md); copy it into docs/train.md and
docs/infer.md with the date and GPU. Then give the machine back.
"""  # noqa: E501 (the device command is one line, to paste as it is)

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and its train.py / infer.py
# would hide the `train` and `infer` packages; the repository root must be there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# step, its time box (seconds of the GPU run; shares of --deadline), the steps it needs
PLAN = [
    ("build_mc", 35, ()),
    ("train_bf16", 70, ("build_mc",)),
    ("train_fp16", 70, ("build_mc",)),
    ("infer_mc", 65, ("build_mc",)),
    ("torchrun", 55, ("build_mc",)),
    ("causal", 155, ()),
]
ROWS = {  # what each step reports, in table order
    "build_mc": ["MC model"],
    "train_bf16": ["train MC bf16"],
    "train_fp16": ["train MC fp16"],
    "infer_mc": ["infer MC", "infer MC fp16 overflow", "MC bf16 vs fp32 top-1"],
    "torchrun": ["torchrun start-up"],
    "causal": [
        "causal model",
        "infer causal, prefix cache",
        "infer causal, full sequences",
        "prefix-cache speed-up",
        "causal bf16 vs fp32 top-1",
    ],
}
MIN_STEP_SECONDS = 5.0  # less time than this left: the step is skipped, not started
LOG_TAIL = 60_000  # characters of each step's log kept in OUT/logs.txt


def run_one(step: str, timeout: float, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``step`` in its own process group; kill the group at ``timeout``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step]
    command += ["--work", str(work)] + (["--smoke"] if args.smoke else ["--llm", args.llm])
    log = work / "logs" / f"{step}.log"
    result_file = work / "results" / f"{step}.json"
    began = time.monotonic()
    cpu_before = _children_cpu()
    env = dict(os.environ)
    if args.smoke:  # tiny models: one thread is faster, and spins less on a shared CPU
        env.setdefault("OMP_NUM_THREADS", "1")
    with log.open("w") as handle:
        proc = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and its children (torchrun)
            proc.wait()
            code = None
    spent = {"seconds": time.monotonic() - began, "cpu_seconds": _children_cpu() - cpu_before}
    if code is None:
        return {"status": f"timed out after {spent['seconds']:.0f}s", **spent}
    if code != 0 or not result_file.is_file():
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        last = lines[-1].strip()[:160] if lines else "no output"
        return {"status": f"failed (exit {code}): {last}", **spent}
    return {"status": "ok", **spent, **json.loads(result_file.read_text())}


def _children_cpu() -> float:
    """CPU seconds of waited-for children (a killed step's count too)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_all(args: argparse.Namespace, work: Path, out: Path | None) -> dict[str, Any]:
    """Every step within ``args.deadline``; the report after each (a kill keeps it)."""
    report: dict[str, Any] = {"rows": {}, "steps": {}, "env": {}, "mode": _mode(args)}
    report["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report["rows"] = {name: {"status": "not run"} for names in ROWS.values() for name in names}
    (work / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for i, (step, box, needs) in enumerate(PLAN):
        remaining = args.deadline - (time.monotonic() - started)
        # Each step's share of what is left, so time saved early flows to later steps
        # and a step that hangs still leaves the later ones their boxes' share.
        timeout = remaining * box / sum(b for _, b, _ in PLAN[i:])
        broken = [n for n in needs if report["steps"].get(n, {}).get("status") != "ok"]
        if broken:
            outcome = {"status": f"skipped: {broken[0]} did not finish", "seconds": 0.0}
        elif timeout < MIN_STEP_SECONDS:
            outcome = {"status": "skipped: no time left", "seconds": 0.0}
        else:
            print(f"gpu_check: {step} (up to {timeout:.0f}s) ...", flush=True)
            outcome = run_one(step, timeout, work, args)
        print(f"gpu_check: {step}: {outcome['status']} ({outcome['seconds']:.0f}s)", flush=True)
        keys = ("status", "seconds", "cpu_seconds")
        report["steps"][step] = {k: outcome[k] for k in keys if k in outcome}
        report["env"] = report["env"] or outcome.get("env", {})
        for name in ROWS[step]:
            got = outcome.get("rows", {}).get(name)
            got = got if got is not None else {"status": outcome["status"]}
            report["rows"][name] = {"seconds": outcome["seconds"], **got}
        report["seconds"] = round(time.monotonic() - started, 1)
        if out is not None:
            _write(out, report, work)
    return report


def _mode(args: argparse.Namespace) -> str:
    return "CPU smoke (tiny sizes)" if args.smoke else f"GPU sizes, causal member {args.llm}"


def _number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"


def format_table(report: dict[str, Any]) -> str:
    """The markdown table: one row per check, its figure or why there is none."""
    env = report.get("env") or {}
    head = (
        f"GPU check, {report.get('date', '')}: {report['mode']}; GPU {env.get('gpu', '?')}, "
        f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}; "
        f"{report.get('seconds', 0):.0f}s in all"
    )
    lines = [head, "", "| check | result | unit | peak GiB | seconds | notes |"]
    lines.append("|---|---|---|---|---|---|")
    for name, r in report["rows"].items():
        ok = r.get("status") == "ok"
        figure = _number(r.get("figure"), 2) if ok else "-"
        notes = r.get("detail", "") if ok else r.get("status", "")
        lines.append(
            f"| {name} | {figure} | {r.get('unit', '') if ok else ''} "
            f"| {_number(r.get('peak_gib'))} | {_number(r.get('seconds'), 0)} | {notes} |"
        )
    done = sum(r.get("status") == "ok" for r in report["rows"].values())
    lines += ["", f"{done} of {len(report['rows'])} checks ok."]
    return "\n".join(lines)


def _write(out: Path, report: dict[str, Any], work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(format_table(report) + "\n")
    with (out / "logs.txt").open("w") as handle:
        for log in sorted((work / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            handle.write(f"===== {log.stem} =====\n{text[-LOG_TAIL:]}\n")


def _work_dir(args: argparse.Namespace) -> Path:
    """``--work``, else a fresh folder: in /dev/shm for the GPU run when it has room
    (writing and re-reading a 13.5 GB 7B model is then memory-speed)."""
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return args.work
    base = None
    shm = Path("/dev/shm")
    if not args.smoke and shm.is_dir() and shutil.disk_usage(shm).free > 48 * 2**30:
        base = str(shm)
    return Path(tempfile.mkdtemp(prefix="sciqa-gpu-check-", dir=base))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (CI)")
    parser.add_argument("--out", type=Path, help="also write table.md, results.json, logs.txt")
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds for all steps")
    parser.add_argument("--llm", choices=["7b", "3b", "1b"], default="7b", help="causal shape")
    parser.add_argument("--work", type=Path, help="models and runs (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--step", choices=[s for s, _, _ in PLAN], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.llm = "tiny"

    from benchmarks.gpu_check_models import GPU, SMOKE

    if args.step:  # one step, in its own process (run_one)
        from benchmarks.gpu_check_steps import Ctx, run_step

        ctx = Ctx(args.work, SMOKE if args.smoke else GPU, args.llm)
        run_step(args.step, ctx, args.work / "results" / f"{args.step}.json")
        return 0
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible: run with --smoke on a CPU")
    work = _work_dir(args)
    print(f"gpu_check: {_mode(args)}; work folder {work}", flush=True)
    try:
        report = run_all(args, work, args.out)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + format_table(report))
    return 0 if all(r.get("status") == "ok" for r in report["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

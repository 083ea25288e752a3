"""Bias audit of science MCQ sets side by side; prints the markdown tables of docs/audit.md.

Columns: the packaged ARC-Easy, OpenBookQA and ARC-Challenge validation sets (``sciqa
benchmark``), SciQ validation (packaged too, with its ``support`` passage, so the passage
baseline runs; not exported by ``sciqa benchmark`` because of its non-commercial licence),
a set written by ``sciqa gen`` against the scripted fake server (labelled fake), and any
``--add NAME=FILE`` (e.g. a real generated set).

    .venv/bin/python benchmarks/audit.py
    .venv/bin/python benchmarks/audit.py --add generated=runs/demo/gen/questions.parquet
"""

from __future__ import annotations

import argparse
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data_gen.commands import run_gen
from data_gen.fake_server import FakeLLM, write_fake_passages
from sciqa.assets.question_sets import benchmark_questions
from sciqa.assets.registry import BENCHMARKS, packaged_path
from sciqa.config import load_config
from sciqa.evaluation.audit import BASELINES, audit_questions, context_passages, read_labelled
from sciqa.schema import validate_questions

RATIOS = (1.25, 1.5, 2.0)
MARGINS = (1, 2, 3)


def sciq(seed: int = 0) -> pd.DataFrame:
    """SciQ validation with options shuffled (the source lists the correct one apart) and
    its ``support`` passage as ``context`` (empty on some rows)."""
    folder = packaged_path(BENCHMARKS) / "sciq/none/validation"
    with pa.memory_map(str(next(folder.glob("data-*.arrow")))) as source:
        rows = pa.ipc.open_stream(source).read_all().to_pylist()
    rng = np.random.default_rng(seed)
    records = []
    for i, row in enumerate(rows):
        options = [
            row["correct_answer"],
            row["distractor1"],
            row["distractor2"],
            row["distractor3"],
        ]
        order = rng.permutation(4)
        records.append(
            {"id": f"sciq-{i}", "prompt": row["question"]}
            | {string.ascii_uppercase[j]: options[k] for j, k in enumerate(order)}
            | {"answer": "ABCD"[int(np.flatnonzero(order == 0)[0])], "context": row["support"]}
        )
    return validate_questions(pd.DataFrame(records), "sciq", require_answer=True)


def fake_generated(work: Path, n: int = 12) -> pd.DataFrame:
    """What ``sciqa gen`` keeps from the scripted fake server (not a real LLM)."""
    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    passages = write_fake_passages(work / "fake_passages.parquet", n)
    off = ["gen.dedup=false", "gen.answerability_filter=false", "gen.too_easy_filter=false"]
    with FakeLLM() as fake:
        config = load_config(None, [f"llm.base_url={fake.base_url}", "llm.model=fake", *off])
        config.gen.n = n
        run_gen(passages, work / "fake" / "q.csv", config)
    return read_labelled(str(work / "fake" / "q.csv"))


def audit(frame: pd.DataFrame, **thresholds: Any) -> dict[str, Any]:
    return audit_questions(frame, passages=context_passages(frame), **thresholds)


def main_table(reports: dict[str, dict[str, Any]]) -> str:
    names = list(reports)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(reports[n]) for n in names) + " |")

    row("questions", lambda r: str(r["questions"]))
    row("options (chance MAP@3)", lambda r: f"{r['options']} ({r['chance_map_at_3']:.3f})")
    row(
        "answer letters (chi-square p)",
        lambda r: (
            " ".join(str(c) for c in r["answer_letters"]["counts"].values())
            + f" (p={r['answer_letters']['p_value']:.2f})"
        ),
    )
    for name in BASELINES:

        def cell(r: dict[str, Any], name: str = name) -> str:
            b = r["baselines"][name]
            if "skipped" in b:
                return "no passage"
            mark = {"above chance": "**above**", "below chance": "below", "at chance": "at"}
            lo, hi = b["ci95"]
            part = (
                f" ({b['with_passage']} with one)"
                if b.get("with_passage", r["questions"]) < r["questions"]
                else ""
            )
            return f"{b['map_at_3']:.3f} [{lo:.3f}, {hi:.3f}] {mark[b['verdict']]}{part}"

        row(f"`{name}` MAP@3 [95% CI] vs chance", cell)
    for name in BASELINES:
        row(
            f"flagged by `{name}`",
            lambda r, name=name: (
                "—"
                if "skipped" in r["baselines"][name]
                else f"{100 * r['baselines'][name]['flagged'] / r['questions']:.1f}%"
            ),
        )
    row("flagged by any", lambda r: f"{100 * r['flagged']['share']:.1f}%")
    return "\n".join(lines)


def threshold_table(frames: dict[str, pd.DataFrame]) -> str:
    names = list(frames)
    lines = ["| flagged share | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for ratio in RATIOS:
        shares = [audit(f, length_ratio=ratio, resamples=1) for f in frames.values()]
        cells = [
            f"{100 * r['baselines']['longest']['flagged'] / r['questions']:.1f}%" for r in shares
        ]
        lines.append(f"| `longest`, ratio >= {ratio} | " + " | ".join(cells) + " |")
    for margin in MARGINS:
        shares = [audit(f, overlap_margin=margin, resamples=1) for f in frames.values()]
        cells = [
            f"{100 * r['baselines']['question_overlap']['flagged'] / r['questions']:.1f}%"
            for r in shares
        ]
        lines.append(f"| `question_overlap`, margin >= {margin} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", action="append", default=[], help="NAME=FILE, another column")
    args = parser.parse_args()
    frames = {
        "ARC-Easy": benchmark_questions("arc-easy")[0],
        "OpenBookQA": benchmark_questions("openbookqa")[0],
        "ARC-Challenge": benchmark_questions("arc-challenge")[0],
        "SciQ (with support passage)": sciq(),
    }
    with tempfile.TemporaryDirectory() as work:
        frames["fake server (not an LLM)"] = fake_generated(Path(work))
    for item in args.add:
        name, _, path = item.partition("=")
        frames[name] = read_labelled(path)
    print(main_table({name: audit(frame) for name, frame in frames.items()}))
    print()
    print(threshold_table(frames))


if __name__ == "__main__":
    main()

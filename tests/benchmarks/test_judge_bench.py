"""benchmarks/judge.py at its smallest: the twins it builds, the verdicts it counts, and a
run with a tiny random Llama as the judge on 4 SciQ questions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import judge as bench  # noqa: E402
from tests.builders import WORDS, build_tiny_llama  # noqa: E402


def test_twins_move_every_key_and_scramble_every_option():
    frame = bench.questions(6)
    assert (frame["context"] != "").all()
    wrong = bench.wrong_key_twins(frame)
    assert (wrong["answer"] != frame["answer"]).all()
    assert (wrong["prompt"] == frame["prompt"]).all()
    scrambled = bench.scrambled_twins(frame)
    for letter in "ABCD":
        for old, new in zip(frame[letter], scrambled[letter], strict=True):
            assert sorted(old.replace(" ", "")) == sorted(new.replace(" ", ""))
    assert (scrambled["answer"] == frame["answer"]).all()


def test_verdicts_count_what_the_filters_keep_and_drop():
    frame = bench.questions(4)
    key = frame["answer"].map("ABCD".index).to_numpy()
    confident = np.eye(4)[key] * 0.9 + 0.025  # p(key) = 0.925
    flat = np.full((4, 4), 0.25)
    run = {"name": "x", "with": confident, "without": flat, "nonsense": flat}
    v = bench.verdicts(run, frame, answerable=0.5, too_easy=0.6)
    assert v == {"kept": 1.0, "wrong_dropped": 1.0, "nonsense_dropped": 1.0, "easy": 0.0}
    v = bench.verdicts({**run, "without": confident}, frame, answerable=0.95, too_easy=0.6)
    assert (v["kept"], v["easy"]) == (0.0, 1.0)


def test_a_run_prints_the_table(tmp_path, capsys):
    pytest.importorskip("torch")
    tiny = build_tiny_llama(tmp_path / "tiny", [" ".join(WORDS)])
    args = ["--n", "4", "--scorers", f"llm:{tiny}", "--save", str(tmp_path / "p.json")]
    bench.main([*args, "--set", "gen.scorer_max_length=400"])  # the tiny model: 512 positions
    out = capsys.readouterr().out
    assert out.startswith("4 SciQ validation questions with their passage")
    assert f"| llm:{tiny} | **" in out and "| 0.9 |" in out
    assert (tmp_path / "p.json").is_file()

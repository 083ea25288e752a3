"""benchmarks/faults.py, the soak, at its smallest: gen and infer each SIGKILLed twice, then
compared with an uninterrupted run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import faults  # noqa: E402


@pytest.mark.slow  # ~1 min: a dozen sciqa processes started and killed
def test_soak_kills_and_reruns_to_the_uninterrupted_result(capsys):
    pytest.importorskip("torch")
    gen, infer = faults.main(["--kills", "2", "--seed", "1"])
    assert (gen.command, gen.kills, gen.reruns) == ("gen", 2, 2)
    assert gen.repeated == 0 and gen.identical
    assert gen.in_flight <= 2 * faults.CONCURRENCY  # only what a kill caught in flight
    assert (infer.command, infer.kills, infer.reruns) == ("infer", 2, 2) and infer.identical
    assert infer.repeated == 0  # no member pass found in the cache was scored again
    printed = capsys.readouterr().out
    assert (
        "| gen | 2 | 2 | **0** |" in printed and "| infer | 2 | 2 | **0** | n/a | yes |" in printed
    )


def test_kills_must_be_positive():
    with pytest.raises(SystemExit):
        faults.main(["--kills", "0"])

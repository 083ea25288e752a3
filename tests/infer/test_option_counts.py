"""Which checkpoints may answer questions with another option count than they trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from infer.errors import InferError
from infer.models import ModelSpec, check_letters
from sciqa.scoring.llm_prompts import PromptSpec

FOUR, FIVE = list("ABCD"), list("ABCDE")


def _spec(family: str, mode: str | None) -> ModelSpec:
    prompt = PromptSpec(mode=mode) if mode else None
    return ModelSpec(Path("m"), "m", 64, False, letters=FOUR, family=family, prompt=prompt)


def test_a_cloze_causal_lm_trained_on_four_options_answers_five():
    check_letters([_spec("causal_lm", "cloze")], FIVE, "exam.parquet")


@pytest.mark.parametrize(
    ("family", "mode"), [("mc", None), ("causal_lm", "letter"), ("causal_lm", None)]
)
def test_other_readers_refuse_another_option_count(family, mode):
    with pytest.raises(InferError, match=r"^m: trained on 4 options \(A-D\) but exam.parquet"):
        check_letters([_spec(family, mode)], FIVE, "exam.parquet")
    check_letters([_spec(family, mode)], FOUR, "exam.parquet")  # the same count is fine

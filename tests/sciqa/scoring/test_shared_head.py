"""The prompt head every question shares, run once per model (sciqa.scoring.shared_head)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from infer.predictors.causal import CausalPredictor  # noqa: E402
from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer  # noqa: E402
from sciqa.config import load_config  # noqa: E402
from sciqa.scoring.llm_prompts import PromptSpec, encode_for_llm  # noqa: E402
from sciqa.scoring.llm_scoring import ScoreHead, score_rows  # noqa: E402
from sciqa.scoring.shared_head import HeadCache  # noqa: E402
from tests.builders import build_tiny_llama  # noqa: E402

INSTRUCTIONS = "Read the question and the options, then answer with the letter of the best one.\n"
FRAME = pd.DataFrame(
    {
        "id": ["q1", "q2", "q3", "q4", "q5"],
        "prompt": [
            "What is water made of?",
            "Which planet is red?",
            "Why is the sky blue on a clear day when the sun is high above us?",
            "Is ice cold?",
            "Which gas do plants take in?",
        ],
        "A": ["hydrogen and oxygen", "Mars", "scattering of light", "yes", "carbon dioxide"],
        "B": ["salt", "Venus is the planet", "the sea", "no", "oxygen"],
        "C": ["iron", "Earth", "smoke", "maybe", "helium"],
        "D": ["gold dust", "Pluto", "paint on the sky", "never", "neon"],
        "answer": ["A", "A", "A", "A", "A"],
        "context": [
            "Water is a molecule of hydrogen and oxygen atoms. " * 20,  # a tail 5x the others
            "",
            "Rayleigh scattering of sunlight makes the sky blue.",
            "",
            "Plants take in carbon dioxide.",
        ],
    }
)
TEXTS = [INSTRUCTIONS, *FRAME[["prompt", "A", "B", "C", "D", "context"]].to_numpy().ravel()]


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> tuple[Path, object, object]:
    path = build_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny", TEXTS)
    return path, load_causal_tokenizer(str(path)), load_causal_lm(str(path)).eval()


def _spec(tok, mode: str, *overrides: str, instructions: bool = True) -> PromptSpec:
    """The mode's template, behind a fixed instruction (a head every question shares)."""
    cfg = load_config(None, [f"causal_lm.mode={mode}", *overrides]).causal_lm
    spec = PromptSpec.from_config(cfg, tok, "tiny")
    return replace(spec, template=INSTRUCTIONS + spec.template) if instructions else spec


def _encode(tok, mode: str, *overrides: str, instructions: bool = True, frame=FRAME):
    spec = _spec(tok, mode, *overrides, instructions=instructions)
    return encode_for_llm(tok, frame, spec, letters=list("ABCD"))


class ForwardSpy:
    """Records every forward of ``model``: its input length and whether it had a cache."""

    def __init__(self, model):
        self.calls: list[tuple[int, bool]] = []
        forward = model.forward

        def spy(*args, **kwargs):
            self.calls.append((kwargs["input_ids"].shape[1], kwargs.get("past_key_values")))
            return forward(*args, **kwargs)

        model.forward = spy
        self.undo = lambda: delattr(model, "forward")


@pytest.mark.parametrize("mode", ["letter", "cloze", "yes_no"])
def test_shared_head_scores_equal_the_full_path(llm, mode):
    _, tok, model = llm
    enc = _encode(tok, mode)
    shared = enc.shared_head
    assert INSTRUCTIONS.strip() in tok.decode(enc.prefixes[0][:shared])
    tails = [len(p) - shared for p in enc.prefixes]
    assert max(tails) > 5 * min(tails)  # per-question parts of very different lengths
    head, pad, rows = ScoreHead.of(enc), tok.pad_token_id, list(range(len(FRAME)))
    full = score_rows(model, enc, rows, head, pad, prefix_cache=False)
    heads = HeadCache()
    together = score_rows(model, enc, rows, head, pad, heads=heads)
    alone = torch.cat([score_rows(model, enc, [i], head, pad, heads=heads) for i in rows])
    assert heads.runs == 1
    torch.testing.assert_close(together, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone, full, atol=1e-4, rtol=1e-4)


def test_the_head_runs_once_per_model_across_batches_and_passes(llm):
    _, tok, model = llm
    enc = _encode(tok, "letter")
    rotated = _encode(
        tok, "letter", frame=FRAME.rename(columns=dict(zip("ABCD", "BCDA", strict=True)))
    )
    assert rotated.prefixes != enc.prefixes
    spy = ForwardSpy(model)
    try:
        predictor = CausalPredictor(model, tok.pad_token_id, 2, True)
        first = predictor.logits(enc, enc.lengths)
        predictor.logits(rotated, rotated.lengths)  # a second TTA pass: the same head
    finally:
        spy.undo()
    head_runs = [n for n, past in spy.calls if past is None]
    assert head_runs == [enc.shared_head]
    assert len(spy.calls) == 1 + 2 * 3  # the head, then 3 batches of 2 per pass
    widest_tail = max(enc.lengths) - enc.shared_head
    assert all(n <= widest_tail for n, past in spy.calls if past is not None)
    plain = CausalPredictor(model, tok.pad_token_id, 2, True, shared_head=False)
    np.testing.assert_allclose(first, plain.logits(enc, enc.lengths), atol=1e-4)


def test_prompts_without_a_common_start_take_the_plain_path(llm):
    _, tok, model = llm
    enc = _encode(tok, "letter", "causal_lm.chat_template=off", instructions=False)
    assert enc.shared_head == 0  # "Context: ..." and "Question: ..." share no token
    head, pad, rows = ScoreHead.of(enc), tok.pad_token_id, list(range(len(FRAME)))
    heads, spy = HeadCache(), ForwardSpy(model)
    try:
        scores = score_rows(model, enc, rows, head, pad, heads=heads)
    finally:
        spy.undo()
    assert heads.runs == 0 and [n for n, _ in spy.calls] == [max(enc.lengths)]
    full = score_rows(model, enc, rows, head, pad, prefix_cache=False)
    torch.testing.assert_close(scores, full, atol=1e-4, rtol=1e-4)


def test_rows_longer_than_a_sliding_window_take_the_plain_path(llm, monkeypatch):
    _, tok, model = llm
    enc = _encode(tok, "letter")
    heads = HeadCache()
    monkeypatch.setattr(model.config, "sliding_window", max(enc.lengths) - 1, raising=False)
    assert heads.usable(model, enc, range(len(FRAME))) == 0
    assert heads.usable(model, enc, [1]) == enc.shared_head  # q2 fits the window
